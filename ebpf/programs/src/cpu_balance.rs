//! CPU balancer at XDP: spreads the flows arriving on one interface over a weighted set of CPUs
//! through a cpumap, choosing the CPU by a symmetric 5-tuple hash and a slot table (see
//! `ebpf_common::cpu_balance` for the maps and the rule that keeps a flow on one CPU).
//! Non-IP frames and IP fragments pass on the receiving CPU.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, CpuMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use ebpf_common::cpu_balance::{
    Counters, FAMILY_V4, FAMILY_V6, FLOW_IDLE_NS, FlowKey, FlowState, MAX_CPUS, MAX_FLOWS, NO_CPU,
    SLOTS,
};
use ebpf_programs::with_percpu_slot;

#[map]
static CB_CPUS: CpuMap = CpuMap::with_max_entries(MAX_CPUS, 0);

#[map]
static CB_SLOTS: Array<u32> = Array::with_max_entries(SLOTS, 0);

#[map]
static CB_WEIGHTS: Array<u32> = Array::with_max_entries(MAX_CPUS, 0);

#[map]
static CB_FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map]
static CB_TARGET_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_CPUS, 0);

#[map]
static CB_LANDED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static CB_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const MAX_VLAN_TAGS: usize = 2;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPV6_FRAGMENT: u8 = 44;
/// Offsets are masked with this before packet access: it bounds them for the verifier and is
/// above any linear XDP buffer, so no real offset changes.
const OFFSET_MASK: usize = 0x3fff;

/// Why a frame is not balanced.
enum Skip {
    Other,
    Fragment,
}

/// Redirects IP flows to their CPU; passes everything else.
#[xdp]
pub fn cpu_balance(ctx: XdpContext) -> u32 {
    with_percpu_slot(&CB_COUNTERS, |c| c.packets += 1);
    let key = match flow_key(&ctx) {
        Ok(key) => key,
        Err(skip) => {
            with_percpu_slot(&CB_COUNTERS, |c| match skip {
                Skip::Other => c.passed_other += 1,
                Skip::Fragment => c.passed_fragment += 1,
            });
            return xdp_action::XDP_PASS;
        }
    };
    let cpu = choose_cpu(&key);
    if cpu == NO_CPU {
        with_percpu_slot(&CB_COUNTERS, |c| c.passed_no_cpu += 1);
        return xdp_action::XDP_PASS;
    }
    // On failure (no cpumap entry) the helper returns the low bits of the flags: XDP_PASS.
    match CB_CPUS.redirect(cpu, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => {
            with_percpu_slot(&CB_COUNTERS, |c| c.redirected += 1);
            if let Some(hits) = CB_TARGET_HITS.get_ptr_mut(cpu) {
                // SAFETY: this CPU's slot, valid for the program's run; only this CPU writes it.
                unsafe { *hits += 1 };
            }
            action
        }
        Err(_) => {
            with_percpu_slot(&CB_COUNTERS, |c| c.redirect_failed += 1);
            xdp_action::XDP_PASS
        }
    }
}

/// Runs on the target CPU for every frame the cpumap dequeues: counts it there, then lets the
/// cpumap build the skb and hand it to the stack.
#[xdp(map = "cpumap")]
pub fn cpu_balance_landed(_ctx: XdpContext) -> u32 {
    with_percpu_slot(&CB_LANDED, |n| *n += 1);
    xdp_action::XDP_PASS
}

/// The flow's CPU: the recorded one while the flow is busy and its CPU is in the set, else the
/// slot table's (recorded for the next frames).
#[inline(always)]
fn choose_cpu(key: &FlowKey) -> u32 {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let slot_cpu = || CB_SLOTS.get(key.slot()).copied().unwrap_or(NO_CPU);
    if let Some(state) = CB_FLOWS.get_ptr_mut(key) {
        // SAFETY: the entry's value, valid during the program's run. Other CPUs may write it
        // at the same time (both directions of a flow); each field is written whole.
        let state = unsafe { &mut *state };
        let busy = now.wrapping_sub(state.last_ns) < FLOW_IDLE_NS;
        state.last_ns = now;
        if busy && in_set(state.cpu) {
            return state.cpu;
        }
        let cpu = slot_cpu();
        if cpu != state.cpu {
            with_percpu_slot(&CB_COUNTERS, |c| c.moved_flows += 1);
            state.cpu = cpu;
        }
        return cpu;
    }
    let cpu = slot_cpu();
    with_percpu_slot(&CB_COUNTERS, |c| c.new_flows += 1);
    let state = FlowState {
        last_ns: now,
        cpu,
        pad: 0,
    };
    // A full table evicts its least recently used flow; a failed insert only means the next
    // frame looks the flow up in the slot table again.
    let _ = CB_FLOWS.insert(key, state, 0);
    cpu
}

#[inline(always)]
fn in_set(cpu: u32) -> bool {
    CB_WEIGHTS.get(cpu).is_some_and(|w| *w != 0)
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

/// `count` big-endian words of `bytes` from `from`, in a 4-word address (the rest 0).
#[inline(always)]
fn words<const N: usize>(bytes: &[u8; N], from: usize, count: usize) -> [u32; 4] {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < count && i < 4 && from + 4 * i + 4 <= N {
        let at = from + 4 * i;
        out[i] = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        i += 1;
    }
    out
}

/// The frame's flow key, or why it has none.
#[inline(always)]
fn flow_key(ctx: &XdpContext) -> Result<FlowKey, Skip> {
    let mut ethertype = load_be16(ctx, 12).ok_or(Skip::Other)?;
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = load_be16(ctx, off + 2).ok_or(Skip::Other)?;
        off += 4;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(ctx, off),
        ETH_P_IPV6 => ipv6(ctx, off),
        _ => Err(Skip::Other),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, ip: usize) -> Result<FlowKey, Skip> {
    let header = load::<[u8; 20]>(ctx, ip).ok_or(Skip::Other)?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || ihl < 20 {
        return Err(Skip::Other);
    }
    // More fragments, or a fragment offset: not a whole datagram.
    if u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0 {
        return Err(Skip::Fragment);
    }
    let protocol = header[9];
    let (sport, dport) = ports(ctx, protocol, ip + ihl)?;
    Ok(FlowKey::new(
        FAMILY_V4,
        protocol,
        words(&header, 12, 1),
        sport,
        words(&header, 16, 1),
        dport,
    ))
}

/// IPv6: ports are read only when TCP, UDP or SCTP follows the fixed header directly; other
/// next headers (extension headers) key the flow on addresses and next header alone.
#[inline(always)]
fn ipv6(ctx: &XdpContext, ip: usize) -> Result<FlowKey, Skip> {
    let header = load::<[u8; 40]>(ctx, ip).ok_or(Skip::Other)?;
    if header[0] >> 4 != 6 {
        return Err(Skip::Other);
    }
    let protocol = header[6];
    if protocol == IPV6_FRAGMENT {
        return Err(Skip::Fragment);
    }
    let (sport, dport) = ports(ctx, protocol, ip + 40)?;
    Ok(FlowKey::new(
        FAMILY_V6,
        protocol,
        words(&header, 8, 4),
        sport,
        words(&header, 24, 4),
        dport,
    ))
}

#[inline(always)]
fn ports(ctx: &XdpContext, protocol: u8, l4: usize) -> Result<(u16, u16), Skip> {
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP && protocol != IPPROTO_SCTP {
        return Ok((0, 0));
    }
    let p = load::<[u8; 4]>(ctx, l4).ok_or(Skip::Other)?;
    Ok((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
