//! HTTP request filter at XDP: parses Ethernet (up to two VLAN tags), IPv4 (options) or IPv6
//! (extension headers), TCP (options) and the HTTP/1.x request line at the start of the TCP
//! payload, then applies the policy in maps (see `ebpf_common::http_filter` for the layout
//! and the exact grammar). Everything it does not recognise passes.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_load_bytes,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use ebpf_common::http_filter::{
    ACTION_ALLOW, ACTION_MONITOR, Counters, HTTP_VERSION_PREFIX, MAX_IPV6_EXT_HEADERS,
    MAX_PATH_ENTRIES, MAX_PORTS, MAX_RULES, MAX_VLAN_TAGS, METHOD_CONNECT, METHOD_DELETE,
    METHOD_GET, METHOD_HEAD, METHOD_MAX, METHOD_OPTIONS, METHOD_OTHER, METHOD_PATCH, METHOD_POST,
    METHOD_PUT, METHOD_TRACE, NO_RULE, PATH_MAX, PathKey, PathRule, PortPolicy, RuleName,
    VERDICT_ALLOW, VERDICT_DROP, VERDICT_MALFORMED, VERDICT_MONITOR, VERDICT_NOT_REQUEST,
    VERDICT_OTHER, VERDICT_REQUEST, pack_token,
};
use ebpf_programs::with_percpu_slot;

#[map]
static HF_PORTS: HashMap<u16, PortPolicy> = HashMap::with_max_entries(MAX_PORTS, 0);

#[map]
static HF_PATHS: LpmTrie<PathKey, PathRule> = LpmTrie::with_max_entries(MAX_PATH_ENTRIES, 0);

#[map]
static HF_RULE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_RULES, 0);

#[map]
static HF_RULE_NAMES: Array<RuleName> = Array::with_max_entries(MAX_RULES, 0);

#[map]
static HF_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU work area, bytes at fixed offsets: a `Key<PathKey>` (packed, alignment 1) whose
/// path bytes are loaded straight from the packet, followed by room for the `" HTTP/1."` after
/// a short target ([`WINDOW`] bytes from [`PATH_OFFSET`]); the payload bounds at
/// [`BOUNDS_OFFSET`].
#[map]
static HF_SCRATCH: PerCpuArray<[u8; SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Offsets are masked with this before packet access: it bounds them for the verifier and is
/// above any linear XDP buffer, so no real offset changes.
const OFFSET_MASK: usize = 0x3fff;
/// Offset of the path bytes in the scratch value: after the LPM prefix length (4), port (2).
const PATH_OFFSET: usize = 6;
/// Target bytes loaded: a full-length path plus `" HTTP/1."`.
const WINDOW: usize = PATH_MAX + HTTP_VERSION_PREFIX.len();
/// Target bytes copied first; the rest of the window follows only for long targets.
const FIRST_LOAD: usize = 64;
/// Target bytes scanned within the first copy: a terminator before this index leaves room for
/// the `" HTTP/1."` after it.
const FIRST_SCAN: usize = FIRST_LOAD - HTTP_VERSION_PREFIX.len();
/// Method token and its space.
const HEAD_LEN: usize = METHOD_MAX + 1;
/// Payload start and end offsets (two u64), stored and read back with a volatile load: values
/// read from a map are unknown to the verifier, so every header path (VLANs, IP versions,
/// extension headers) reaches the request parser in the same state and is verified once.
const BOUNDS_OFFSET: usize = (PATH_OFFSET + WINDOW).next_multiple_of(8);
const SCRATCH_LEN: usize = BOUNDS_OFFSET + 16;
const _: () =
    assert!(size_of::<Key<PathKey>>() + HTTP_VERSION_PREFIX.len() == PATH_OFFSET + WINDOW);

/// Filters HTTP requests by method and path prefix; passes everything else.
#[xdp]
pub fn http_filter(ctx: XdpContext) -> u32 {
    let (verdict, rule) = classify(&ctx);
    with_percpu_slot(&HF_COUNTERS, |c| {
        c.packets += 1;
        match verdict {
            VERDICT_MALFORMED => c.parse_failures += 1,
            VERDICT_REQUEST | VERDICT_ALLOW | VERDICT_DROP => c.http_requests += 1,
            VERDICT_MONITOR => {
                c.http_requests += 1;
                c.monitored += 1;
            }
            _ => {}
        }
        if verdict == VERDICT_DROP {
            c.dropped += 1;
        } else {
            c.passed += 1;
        }
        c.last_verdict = verdict;
        c.last_rule = rule;
    });
    if rule != NO_RULE
        && let Some(hits) = HF_RULE_HITS.get_ptr_mut(rule)
    {
        // SAFETY: this CPU's slot, valid for the program's run; only this CPU writes it.
        unsafe { *hits += 1 };
    }
    if verdict == VERDICT_DROP {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Drops every frame: the floor the benchmark measures the filter against.
#[xdp]
pub fn http_filter_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Reads a `T` at `off` bytes into the frame, if it lies within it.
#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let off = off & OFFSET_MASK;
    let at = ctx.data() + off;
    if at + size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: the bytes lie inside the frame, checked just above.
    Some(unsafe { (at as *const T).read_unaligned() })
}

#[inline(always)]
fn load_be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    load::<[u8; 2]>(ctx, off).map(u16::from_be_bytes)
}

/// The verdict and matched rule id for one frame.
#[inline(always)]
fn classify(ctx: &XdpContext) -> (u32, u32) {
    let Some(mut ethertype) = load_be16(ctx, 12) else {
        return (VERDICT_MALFORMED, NO_RULE);
    };
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = load_be16(ctx, off + 2) else {
            return (VERDICT_MALFORMED, NO_RULE);
        };
        ethertype = inner;
        off += 4;
    }
    let l4 = match ethertype {
        ETH_P_IPV4 => ipv4(ctx, off),
        ETH_P_IPV6 => ipv6(ctx, off),
        _ => Err(VERDICT_OTHER),
    };
    match l4 {
        Ok((tcp, end)) => tcp_segment(ctx, tcp, end),
        Err(verdict) => (verdict, NO_RULE),
    }
}

/// Skips an IPv4 header at `ip`: the TCP header offset and the end of the IP packet.
#[inline(always)]
fn ipv4(ctx: &XdpContext, ip: usize) -> Result<(usize, usize), u32> {
    let Some(header) = load::<[u8; 20]>(ctx, ip) else {
        return Err(VERDICT_MALFORMED);
    };
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header[0] >> 4 != 4 || ihl < 20 || total < ihl {
        return Err(VERDICT_MALFORMED);
    }
    let end = ip + total;
    if ctx.data() + (end & OFFSET_MASK) > ctx.data_end() || end > OFFSET_MASK {
        return Err(VERDICT_MALFORMED);
    }
    if u16::from_be_bytes([header[6], header[7]]) & 0x1fff != 0 || header[9] != IPPROTO_TCP {
        return Err(VERDICT_OTHER);
    }
    Ok((ip + ihl, end))
}

/// Skips an IPv6 header and its extension headers at `ip`: the TCP header offset and the end
/// of the IP packet.
#[inline(always)]
fn ipv6(ctx: &XdpContext, ip: usize) -> Result<(usize, usize), u32> {
    let Some(header) = load::<[u8; 40]>(ctx, ip) else {
        return Err(VERDICT_MALFORMED);
    };
    if header[0] >> 4 != 6 {
        return Err(VERDICT_MALFORMED);
    }
    let end = ip + 40 + usize::from(u16::from_be_bytes([header[4], header[5]]));
    if ctx.data() + (end & OFFSET_MASK) > ctx.data_end() || end > OFFSET_MASK {
        return Err(VERDICT_MALFORMED);
    }
    let mut next = header[6];
    let mut off = ip + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let is_ext = matches!(
            next,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT
        );
        // Every extension header is at least 8 bytes long.
        if is_ext && off + 8 > end {
            return Err(VERDICT_MALFORMED);
        }
        let len = match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some(ext) = load::<[u8; 2]>(ctx, off) else {
                    return Err(VERDICT_MALFORMED);
                };
                next = ext[0];
                (usize::from(ext[1]) + 1) * 8
            }
            IPV6_FRAGMENT => {
                let Some(frag) = load::<[u8; 4]>(ctx, off) else {
                    return Err(VERDICT_MALFORMED);
                };
                if u16::from_be_bytes([frag[2], frag[3]]) >> 3 != 0 {
                    return Err(VERDICT_OTHER);
                }
                next = frag[0];
                8
            }
            _ => break,
        };
        off += len;
        if off > end {
            return Err(VERDICT_MALFORMED);
        }
    }
    match next {
        IPPROTO_TCP => Ok((off, end)),
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT => Err(VERDICT_MALFORMED),
        _ => Err(VERDICT_OTHER),
    }
}

/// Parses the TCP header at `tcp` (IP packet ending at `end`) and the request line after it.
#[inline(always)]
fn tcp_segment(ctx: &XdpContext, tcp: usize, end: usize) -> (u32, u32) {
    let Some(header) = load::<[u8; 20]>(ctx, tcp) else {
        return (VERDICT_MALFORMED, NO_RULE);
    };
    let doff = usize::from(header[12] >> 4) * 4;
    if doff < 20 || tcp + doff > end {
        return (VERDICT_MALFORMED, NO_RULE);
    }
    let port = u16::from_be_bytes([header[2], header[3]]);
    let Some(policy) = HF_PORTS.get_ptr(port) else {
        return (VERDICT_OTHER, NO_RULE);
    };
    // SAFETY: a map value, valid for the program's run; PortPolicy is plain data.
    let policy = unsafe { *policy };
    let Some(scratch) = HF_SCRATCH.get_ptr_mut(0) else {
        return (VERDICT_NOT_REQUEST, NO_RULE);
    };
    let scratch = scratch.cast::<u8>();
    // SAFETY: BOUNDS_OFFSET + 16 == SCRATCH_LEN: two u64 inside this CPU's scratch value.
    let (payload, end) = unsafe {
        let bounds = scratch.add(BOUNDS_OFFSET).cast::<u64>();
        bounds.write_unaligned((tcp + doff) as u64);
        bounds.add(1).write_unaligned(end as u64);
        (
            bounds.read_volatile() as usize & OFFSET_MASK,
            bounds.add(1).read_volatile() as usize & OFFSET_MASK,
        )
    };
    request(ctx, scratch, payload, end, port, &policy)
}

/// Recognises the request line of the payload `[payload, end)` and applies the policy.
#[inline(always)]
fn request(
    ctx: &XdpContext,
    scratch: *mut u8,
    payload: usize,
    end: usize,
    port: u16,
    policy: &PortPolicy,
) -> (u32, u32) {
    const NOT_REQUEST: (u32, u32) = (VERDICT_NOT_REQUEST, NO_RULE);
    // The shortest request line, `A / HTTP/1.`, has 11 bytes: a shorter payload is none, and
    // a longer one has the whole method window.
    if payload + HEAD_LEN > end {
        return NOT_REQUEST;
    }
    let Some(head) = load::<[u8; HEAD_LEN]>(ctx, payload) else {
        return NOT_REQUEST;
    };
    let mut token = 0u64;
    let mut method_len = 0;
    for (i, &byte) in head.iter().enumerate() {
        if byte == b' ' && i > 0 {
            method_len = i;
            break;
        }
        if !byte.is_ascii_uppercase() {
            return NOT_REQUEST;
        }
        token = (token << 8) | u64::from(byte);
    }
    if method_len == 0 {
        return NOT_REQUEST;
    }

    let target = payload + method_len + 1;
    if target >= end {
        return NOT_REQUEST;
    }
    // Written as 1 + min(n - 1, WINDOW - 1) so the verifier sees 1 <= window <= WINDOW.
    let window = (end - target - 1).min(WINDOW - 1) + 1;
    let key = scratch.cast::<Key<PathKey>>();
    // SAFETY: `scratch` is this CPU's map value, valid for the program's run; the path bytes
    // start PATH_OFFSET bytes in and WINDOW bytes fit before BOUNDS_OFFSET.
    let path = unsafe { scratch.add(PATH_OFFSET) };
    // Most targets are short: copy the first FIRST_LOAD bytes and scan them; copy the rest of
    // the window only when no terminator turned up early enough for " HTTP/1." to fit too.
    let first = (window - 1).min(FIRST_LOAD - 1) + 1;
    if !load_bytes(ctx, target, path, first) {
        return NOT_REQUEST;
    }
    let end_of_target = match scan(path, 0, FIRST_SCAN, window) {
        Scan::Terminator(i) => i,
        Scan::EndOfSegment => return NOT_REQUEST,
        Scan::Visible => {
            if window > FIRST_LOAD {
                let rest = (window - FIRST_LOAD - 1).min(WINDOW - FIRST_LOAD - 1) + 1;
                // SAFETY: FIRST_LOAD + rest <= WINDOW: inside the path window.
                let tail = unsafe { path.add(FIRST_LOAD) };
                if !load_bytes(ctx, target + FIRST_LOAD, tail, rest) {
                    return NOT_REQUEST;
                }
            }
            match scan(path, FIRST_SCAN, PATH_MAX + 1, window) {
                Scan::Terminator(i) => i,
                Scan::EndOfSegment => return NOT_REQUEST,
                // More than PATH_MAX visible bytes: a long target, judged on its first PATH_MAX.
                Scan::Visible => PATH_MAX + 1,
            }
        }
    };
    let target_len = if end_of_target > PATH_MAX {
        PATH_MAX
    } else {
        if end_of_target == 0 || end_of_target + HTTP_VERSION_PREFIX.len() > window {
            return NOT_REQUEST;
        }
        for (k, expected) in HTTP_VERSION_PREFIX.iter().enumerate() {
            // SAFETY: end_of_target + k < window, and those bytes were copied (a terminator
            // before FIRST_SCAN leaves room for 8 bytes within the first copy).
            if unsafe { *path.add(end_of_target + k) } != *expected {
                return NOT_REQUEST;
            }
        }
        end_of_target
    };

    let method = method_bit(token);
    if policy.allowed_methods & method == 0 {
        return (action_verdict(policy.method_action), policy.method_rule);
    }
    // SAFETY: `key` points at this CPU's scratch value, which starts with a Key<PathKey>
    // (alignment 1); the packed fields are written by value.
    let rule = unsafe {
        (*key).prefix_len = ((2 + target_len) * 8) as u32;
        (*key).data.port = port.to_be_bytes();
        HF_PATHS.get(&*key).copied()
    };
    match rule {
        Some(rule) => (action_verdict(rule.action), rule.rule),
        None => (VERDICT_REQUEST, NO_RULE),
    }
}

/// How a scan of target bytes ended.
enum Scan {
    /// At a byte that is not visible ASCII, at this index.
    Terminator(usize),
    /// At the end of the copied window (the segment ends inside the target).
    EndOfSegment,
    /// At the end of the range, all bytes visible.
    Visible,
}

/// Scans `path[from..to]` (stopping at `window`) for the first byte outside `0x21..=0x7e`.
#[inline(always)]
fn scan(path: *const u8, from: usize, to: usize, window: usize) -> Scan {
    for i in from..to {
        if i >= window {
            return Scan::EndOfSegment;
        }
        // SAFETY: i < window <= WINDOW, and callers copied the bytes below `to` or `window`.
        let byte = unsafe { *path.add(i) };
        if !(0x21..=0x7e).contains(&byte) {
            return Scan::Terminator(i);
        }
    }
    Scan::Visible
}

/// Copies `len` (1..=WINDOW) frame bytes at `offset` to `dst` in the scratch value.
#[inline(always)]
fn load_bytes(ctx: &XdpContext, offset: usize, dst: *mut u8, len: usize) -> bool {
    // SAFETY: callers pass a destination with room for `len` bytes in the scratch value.
    unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (offset & OFFSET_MASK) as u32,
            dst.cast::<c_void>(),
            len as u32,
        ) == 0
    }
}

#[inline(always)]
fn action_verdict(action: u32) -> u32 {
    match action {
        ACTION_ALLOW => VERDICT_ALLOW,
        ACTION_MONITOR => VERDICT_MONITOR,
        _ => VERDICT_DROP,
    }
}

#[inline(always)]
fn method_bit(token: u64) -> u32 {
    const GET: u64 = pack_token(b"GET");
    const HEAD: u64 = pack_token(b"HEAD");
    const POST: u64 = pack_token(b"POST");
    const PUT: u64 = pack_token(b"PUT");
    const DELETE: u64 = pack_token(b"DELETE");
    const CONNECT: u64 = pack_token(b"CONNECT");
    const OPTIONS: u64 = pack_token(b"OPTIONS");
    const TRACE: u64 = pack_token(b"TRACE");
    const PATCH: u64 = pack_token(b"PATCH");
    match token {
        GET => METHOD_GET,
        HEAD => METHOD_HEAD,
        POST => METHOD_POST,
        PUT => METHOD_PUT,
        DELETE => METHOD_DELETE,
        CONNECT => METHOD_CONNECT,
        OPTIONS => METHOD_OPTIONS,
        TRACE => METHOD_TRACE,
        PATCH => METHOD_PATCH,
        _ => METHOD_OTHER,
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
