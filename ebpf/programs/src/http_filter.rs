//! HTTP request filter at XDP: parses Ethernet (up to two VLAN tags), IPv4 (options) or IPv6
//! (extension headers), TCP (options) and the HTTP/1.x request line at the start of the TCP
//! payload, then applies the policy in maps (see `ebpf_common::http_filter` for the layout
//! and the exact grammar). Everything it does not recognise passes.
//!
//! The request line is read in place, eight bytes at a time (SWAR: one 64-bit load checks
//! eight bytes against a byte range); the path prefix trie is consulted only when the port's
//! head filter says a prefix may match, and only then are the target bytes copied into the
//! trie's key.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use ebpf_common::http_filter::{
    ACTION_ALLOW, ACTION_MONITOR, Counters, HTTP_VERSION_PREFIX, LOOKUP_SHORT, LOOKUP_TRIE,
    MAX_IPV6_EXT_HEADERS, MAX_PATH_ENTRIES, MAX_RULES, MAX_VLAN_TAGS, METHOD_CONNECT,
    METHOD_DELETE, METHOD_GET, METHOD_HEAD, METHOD_OPTIONS, METHOD_OTHER, METHOD_PATCH,
    METHOD_POST, METHOD_PUT, METHOD_TRACE, NO_RULE, PATH_MAX, PORT_NUMBERS, PORT_POLICY_SLOTS,
    PathKey, PathRule, PortPolicy, RuleName, VERDICT_ALLOW, VERDICT_DROP, VERDICT_MALFORMED,
    VERDICT_MONITOR, VERDICT_NOT_REQUEST, VERDICT_OTHER, VERDICT_REQUEST, VERDICTS, head_bit,
    pack_le,
};
use ebpf_programs::{
    parse::{
        ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPV6_DSTOPTS, IPV6_FRAGMENT, IPV6_HLEN, IPV6_HOPOPTS,
        IPV6_ROUTING, Ipv4, Ipv6, Ipv6Next, OFFSET_MASK, ethernet, ipv6_extensions, load,
        load_byte, load_le64,
    },
    with_percpu_slot,
};

#[map]
static HF_PORT_SLOTS: Array<u32> = Array::with_max_entries(PORT_NUMBERS, 0);

#[map]
static HF_PORTS: Array<PortPolicy> = Array::with_max_entries(PORT_POLICY_SLOTS, 0);

#[map]
static HF_PATHS: LpmTrie<PathKey, PathRule> = LpmTrie::with_max_entries(MAX_PATH_ENTRIES, 0);

#[map]
static HF_RULE_NAMES: Array<RuleName> = Array::with_max_entries(MAX_RULES, 0);

#[map]
static HF_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

#[map]
static HF_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU work area: the trie key, and a place to pass offsets through memory.
#[repr(C)]
struct Scratch {
    /// The LPM key: prefix length, port, target bytes.
    key: Key<PathKey>,
    /// Room for the last 8-byte store of a copy that ends just past the key.
    slack: [u8; 12],
    /// Offsets stored and read back with a volatile load: values read from a map are unknown
    /// to the verifier, so every path (VLAN tags, IP versions, extension headers, where the
    /// target ended) reaches the code after it in the same state and is verified once.
    launder: [u64; LAUNDER_SLOTS],
}

const LAUNDER_SLOTS: usize = 3;

/// Method token and its space.
const HEAD_LEN: usize = 9;
/// `" HTTP/1."` as a little-endian 8-byte load sees it.
const VERSION: u64 = pack_le(HTTP_VERSION_PREFIX);
/// A byte value repeated in each byte of a word.
const fn repeat(byte: u8) -> u64 {
    u64::from_le_bytes([byte; 8])
}
/// Eight-byte steps of the target scan: enough to see byte PATH_MAX.
const SCAN_CHUNKS: usize = PATH_MAX / 8 + 1;
const _: () = assert!(size_of::<Scratch>() == 296 && SCAN_CHUNKS * 8 > PATH_MAX);

/// Filters HTTP requests by method and path prefix; passes everything else.
#[xdp]
pub fn http_filter(ctx: XdpContext) -> u32 {
    let (verdict, rule) = classify(&ctx);
    with_percpu_slot(&HF_COUNTERS, |c| {
        c.verdicts[verdict as usize % VERDICTS] += 1;
        if rule != NO_RULE {
            c.rule_hits[rule as usize % MAX_RULES as usize] += 1;
        }
    });
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

/// The verdict and matched rule id for one frame.
#[inline(always)]
fn classify(ctx: &XdpContext) -> (u32, u32) {
    let Some((ethertype, off)) = ethernet(ctx, MAX_VLAN_TAGS) else {
        return (VERDICT_MALFORMED, NO_RULE);
    };
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
    let header = Ipv4::at(ctx, ip).ok_or(VERDICT_MALFORMED)?;
    if !header.is_valid() || header.total_len() < header.header_len() {
        return Err(VERDICT_MALFORMED);
    }
    let end = ip + header.total_len();
    if ctx.data() + (end & OFFSET_MASK) > ctx.data_end() || end > OFFSET_MASK {
        return Err(VERDICT_MALFORMED);
    }
    if header.is_later_fragment() || header.protocol() != IPPROTO_TCP {
        return Err(VERDICT_OTHER);
    }
    Ok((ip + header.header_len(), end))
}

/// Skips an IPv6 header and its extension headers at `ip`: the TCP header offset and the end
/// of the IP packet.
#[inline(always)]
fn ipv6(ctx: &XdpContext, ip: usize) -> Result<(usize, usize), u32> {
    let header = Ipv6::at(ctx, ip).ok_or(VERDICT_MALFORMED)?;
    if !header.is_valid() {
        return Err(VERDICT_MALFORMED);
    }
    let end = ip + IPV6_HLEN + header.payload_len();
    if ctx.data() + (end & OFFSET_MASK) > ctx.data_end() || end > OFFSET_MASK {
        return Err(VERDICT_MALFORMED);
    }
    match ipv6_extensions(
        ctx,
        header.next_header(),
        ip + IPV6_HLEN,
        end,
        MAX_IPV6_EXT_HEADERS,
    ) {
        Ipv6Next::Header(IPPROTO_TCP, tcp) => Ok((tcp, end)),
        Ipv6Next::Header(IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT, _)
        | Ipv6Next::Malformed => Err(VERDICT_MALFORMED),
        Ipv6Next::Header(..) | Ipv6Next::LaterFragment => Err(VERDICT_OTHER),
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
    let policy = match HF_PORT_SLOTS.get(u32::from(port)) {
        Some(&slot) if slot != 0 => HF_PORTS.get(slot),
        _ => None,
    };
    // A slot another port took over since this port's slot was read: the port has just left
    // the policy.
    let Some(policy) = policy.filter(|p| p.port == u32::from(port)) else {
        return (VERDICT_OTHER, NO_RULE);
    };
    let Some(scratch) = HF_SCRATCH.get_ptr_mut(0) else {
        return (VERDICT_NOT_REQUEST, NO_RULE);
    };
    // SAFETY: this CPU's scratch value, valid for the program's run.
    let scratch = unsafe { &mut *scratch };
    request(ctx, scratch, tcp + doff, end, port, policy)
}

/// `values` passed through the scratch value: the same numbers, unknown to the verifier.
#[inline(always)]
fn launder<const N: usize>(scratch: &mut Scratch, values: [usize; N]) -> [usize; N] {
    const { assert!(N <= LAUNDER_SLOTS) };
    let slots = scratch.launder.as_mut_ptr();
    let mut out = [0; N];
    for (i, (value, laundered)) in values.iter().zip(out.iter_mut()).enumerate() {
        // SAFETY: i < N <= LAUNDER_SLOTS: a u64 inside this CPU's scratch value.
        unsafe {
            slots.add(i).write_volatile(*value as u64);
            *laundered = slots.add(i).read_volatile() as usize & OFFSET_MASK;
        }
    }
    out
}

/// High bit of each byte of `x` outside `lo..=hi` (1 <= lo, hi <= 0x7e). Only the lowest set
/// bit is exact (borrows and carries run towards higher bytes), which is the one used.
#[inline(always)]
fn outside(x: u64, lo: u8, hi: u8) -> u64 {
    let below = x.wrapping_sub(repeat(lo)) & !x;
    let above = x.wrapping_add(repeat(0x7f - hi)) | x;
    (below | above) & repeat(0x80)
}

/// Index (0..8) of the lowest byte whose high bit is set in a non-zero `mask`.
#[inline(always)]
fn first_byte(mask: u64) -> usize {
    let lowest = (mask & mask.wrapping_neg()) >> 7;
    // `lowest` is 1 << 8i; the multiplication moves byte 7 - i of the constant, which is i, to
    // the top.
    (lowest.wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// The lowest `len` (1..=8) bytes of `x`.
#[inline(always)]
fn low_bytes(x: u64, len: usize) -> u64 {
    x & (u64::MAX >> (64 - 8 * len))
}

/// Recognises the request line of the payload `[payload, end)` and applies the policy.
#[inline(always)]
fn request(
    ctx: &XdpContext,
    scratch: &mut Scratch,
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
    let Some(head) = load_le64(ctx, payload) else {
        return NOT_REQUEST;
    };
    let not_upper = outside(head, b'A', b'Z');
    let (method_len, space) = if not_upper == 0 {
        (8, load_byte(ctx, payload + 8))
    } else {
        let i = first_byte(not_upper);
        (i, Some((head >> (8 * i)) as u8))
    };
    if method_len == 0 || space != Some(b' ') {
        return NOT_REQUEST;
    }
    let method = method_bit(low_bytes(head, method_len));

    let target = payload + method_len + 1;
    let Some((target_len, first)) = target_len(ctx, scratch, target, end) else {
        return NOT_REQUEST;
    };
    if policy.allowed_methods & method == 0 {
        return (action_verdict(policy.method_action), policy.method_rule);
    }
    let default = || {
        if policy.default_rule == NO_RULE {
            (VERDICT_REQUEST, NO_RULE)
        } else {
            (action_verdict(policy.default_action), policy.default_rule)
        }
    };
    match policy.lookup {
        LOOKUP_SHORT => {
            for short in policy.short.iter().take(policy.short_count as usize) {
                let len = short.len as usize;
                if target_len >= len && low_bytes(first, len) == short.value {
                    return (action_verdict(short.action), short.rule);
                }
            }
            return default();
        }
        LOOKUP_TRIE => {}
        _ => return default(),
    }
    let head_len = policy.head_len as usize;
    let bit = head_bit(low_bytes(first, head_len));
    if target_len < head_len || policy.heads[(bit as usize / 64) & 3] & (1 << (bit % 64)) == 0 {
        return default();
    }
    // Bytes past the port's longest prefix do not change the longest match.
    let key_len = target_len.min(policy.max_prefix_len as usize);
    let [target, key_len, end] = launder(scratch, [target, key_len, end]);
    if key_len == 0 || !copy_target(ctx, scratch, target, key_len, end) {
        return NOT_REQUEST;
    }
    scratch.key.prefix_len = ((2 + key_len) * 8) as u32;
    scratch.key.data.port = port.to_be_bytes();
    match HF_PATHS.get(&scratch.key) {
        Some(rule) => (action_verdict(rule.action), rule.rule),
        None => (VERDICT_REQUEST, NO_RULE),
    }
}

/// The length of the request target at `target` (segment ending at `end`) the policy sees:
/// the run of visible ASCII followed by `" HTTP/1."`, or the first PATH_MAX bytes of a longer
/// run, and the target's first 8 bytes; `None` when the payload is no request line.
#[inline(always)]
fn target_len(
    ctx: &XdpContext,
    scratch: &mut Scratch,
    target: usize,
    end: usize,
) -> Option<(usize, u64)> {
    // A target of at least one byte and the version after it, or a long target: 9 bytes.
    if target + 9 > end {
        return None;
    }
    let first = load_le64(ctx, target)?;
    let mut chunk = first;
    let mut terminator = None;
    let mut i = 0;
    for _ in 0..SCAN_CHUNKS {
        if i > 0 {
            if target + i + 8 > end {
                break;
            }
            chunk = load_le64(ctx, target + i)?;
        }
        let bad = outside(chunk, 0x21, 0x7e);
        if bad != 0 {
            terminator = Some(i + first_byte(bad));
            break;
        }
        i += 8;
    }
    let terminator = match terminator {
        Some(t) => t,
        None if i > PATH_MAX => return Some((PATH_MAX, first)),
        // Fewer than 8 bytes left: byte by byte.
        None => tail_terminator(ctx, target, i, end)?,
    };
    let [t, remaining] = launder(scratch, [terminator, end - target]);
    if t > PATH_MAX {
        return Some((PATH_MAX, first));
    }
    if t == 0 || t + 8 > remaining || load_le64(ctx, target + t)? != VERSION {
        return None;
    }
    Some((t, first))
}

/// Continues the scan of [`target_len`] byte by byte from index `from` (fewer than 8 bytes of
/// the segment, which ends at `end`, are left): the index of the first byte outside visible
/// ASCII, or an index past PATH_MAX when bytes up to PATH_MAX are all visible; `None` when the
/// segment ends first.
#[inline(always)]
fn tail_terminator(ctx: &XdpContext, target: usize, from: usize, end: usize) -> Option<usize> {
    for k in 0..8 {
        let i = from + k;
        if i > PATH_MAX {
            return Some(i);
        }
        if target + i >= end {
            return None;
        }
        let byte = load_byte(ctx, target + i)?;
        if !(0x21..=0x7e).contains(&byte) {
            return Some(i);
        }
    }
    None
}

/// Copies the `len` (1..=PATH_MAX) target bytes at `target` into the trie key, eight at a
/// time while the segment (ending at `end`) has them, then byte by byte.
#[inline(always)]
fn copy_target(
    ctx: &XdpContext,
    scratch: &mut Scratch,
    target: usize,
    len: usize,
    end: usize,
) -> bool {
    let path = scratch.key.data.path.as_mut_ptr();
    let mut i = 0;
    for _ in 0..SCAN_CHUNKS {
        if i >= len || target + i + 8 > end {
            break;
        }
        let Some(chunk) = load::<[u8; 8]>(ctx, target + i) else {
            return false;
        };
        // SAFETY: i < len <= PATH_MAX and i is a multiple of 8, so the 8 bytes end at most
        // 2 bytes past the path, inside `slack`.
        unsafe { path.add(i).cast::<[u8; 8]>().write_unaligned(chunk) };
        i += 8;
    }
    for _ in 0..7 {
        if i >= len {
            break;
        }
        let Some(byte) = load_byte(ctx, target + i) else {
            return false;
        };
        // SAFETY: i < len <= PATH_MAX: inside the path.
        unsafe { *path.add(i & 0xff) = byte };
        i += 1;
    }
    true
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
    const GET: u64 = pack_le(b"GET");
    const HEAD: u64 = pack_le(b"HEAD");
    const POST: u64 = pack_le(b"POST");
    const PUT: u64 = pack_le(b"PUT");
    const DELETE: u64 = pack_le(b"DELETE");
    const CONNECT: u64 = pack_le(b"CONNECT");
    const OPTIONS: u64 = pack_le(b"OPTIONS");
    const TRACE: u64 = pack_le(b"TRACE");
    const PATCH: u64 = pack_le(b"PATCH");
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
