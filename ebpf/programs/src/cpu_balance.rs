//! CPU balancer at XDP: spreads the flows arriving on one interface over a weighted set of CPUs
//! through a cpumap. A new flow (symmetric 5-tuple key) takes a slot of a table filled by
//! weight, in rotation or by hash, and keeps that CPU while it is busy (see
//! `ebpf_common::cpu_balance` for the maps and the rule that keeps a flow on one CPU).
//! Non-IP frames and IP fragments pass on the receiving CPU.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, CpuMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use ebpf_common::cpu_balance::{
    ASSIGN_ROTATION, Config, Counters, DRAINING, FAMILY_V4, FAMILY_V6, FLOW_IDLE_NS, FlowKey,
    FlowState, MAX_CPUS, MAX_FLOWS, NO_CPU, SLOTS,
};
use ebpf_programs::{
    parse::{
        ETH_P_IPV4, ETH_P_IPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPV6_FRAGMENT, IPV6_HLEN,
        Ipv4, Ipv6, ethernet, load,
    },
    with_percpu_slot,
};

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

#[map]
static CB_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static CB_ROTOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

const MAX_VLAN_TAGS: usize = 2;

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

/// The flow's CPU: the recorded one while that CPU is in the set — also once the flow went
/// idle, in rotation (its turn was taken; moving it would only unbalance the rotation) —, or
/// while the flow is busy and its CPU drains; else a newly assigned one (recorded for the next
/// frames). In hash mode an idle flow takes the slot of its hash again.
#[inline(always)]
fn choose_cpu(key: &FlowKey) -> u32 {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let config = CB_CONFIG.get(0).copied().unwrap_or(Config {
        flow_idle_ns: FLOW_IDLE_NS,
        assign: ASSIGN_ROTATION,
        pad: 0,
    });
    if let Some(state) = CB_FLOWS.get_ptr_mut(key) {
        // SAFETY: the entry's value, valid during the program's run. Other CPUs may write it
        // at the same time (both directions of a flow); each field is written whole.
        let state = unsafe { &mut *state };
        let busy = now.wrapping_sub(state.last_ns) < config.flow_idle_ns;
        state.last_ns = now;
        let stays = match CB_WEIGHTS.get(state.cpu).copied().unwrap_or(0) {
            0 => false,
            DRAINING => busy,
            _ => busy || config.assign == ASSIGN_ROTATION,
        };
        if stays {
            return state.cpu;
        }
        let cpu = assign(key, &config);
        if cpu != state.cpu {
            with_percpu_slot(&CB_COUNTERS, |c| {
                if busy {
                    c.moved_busy_flows += 1;
                } else {
                    c.moved_flows += 1;
                }
            });
            state.cpu = cpu;
        }
        return cpu;
    }
    let cpu = assign(key, &config);
    with_percpu_slot(&CB_COUNTERS, |c| c.new_flows += 1);
    let state = FlowState {
        last_ns: now,
        cpu,
        pad: 0,
    };
    // The other direction's first frame, on another CPU, may have recorded the flow since the
    // lookup: then that CPU stands. A full table evicts its least recently used flow.
    if CB_FLOWS.insert(key, state, u64::from(BPF_NOEXIST)).is_err()
        && let Some(recorded) = CB_FLOWS.get_ptr(key)
    {
        // SAFETY: the entry's value, valid during the program's run; a u32 read whole.
        return unsafe { (*recorded).cpu };
    }
    cpu
}

/// The CPU for a flow without one: the slot table entry of the receiving CPU's next turn, or
/// of the flow's hash.
#[inline(always)]
fn assign(key: &FlowKey, config: &Config) -> u32 {
    let slot = if config.assign == ASSIGN_ROTATION {
        let mut turn = 0;
        with_percpu_slot(&CB_ROTOR, |n| {
            turn = *n;
            *n = n.wrapping_add(1);
        });
        turn % SLOTS
    } else {
        key.slot()
    };
    CB_SLOTS.get(slot).copied().unwrap_or(NO_CPU)
}

/// The frame's flow key, or why it has none.
#[inline(always)]
fn flow_key(ctx: &XdpContext) -> Result<FlowKey, Skip> {
    match ethernet(ctx, MAX_VLAN_TAGS).ok_or(Skip::Other)? {
        (ETH_P_IPV4, off) => ipv4(ctx, off),
        (ETH_P_IPV6, off) => ipv6(ctx, off),
        _ => Err(Skip::Other),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, ip: usize) -> Result<FlowKey, Skip> {
    let header = Ipv4::at(ctx, ip).ok_or(Skip::Other)?;
    if !header.is_valid() {
        return Err(Skip::Other);
    }
    // More fragments, or a fragment offset: not a whole datagram.
    if header.is_fragment() {
        return Err(Skip::Fragment);
    }
    let protocol = header.protocol();
    let (sport, dport) = ports(ctx, protocol, ip + header.header_len())?;
    Ok(FlowKey::new(
        FAMILY_V4,
        protocol,
        [header.src(), 0, 0, 0],
        sport,
        [header.dst(), 0, 0, 0],
        dport,
    ))
}

/// IPv6: ports are read only when TCP, UDP or SCTP follows the fixed header directly; other
/// next headers (extension headers) key the flow on addresses and next header alone.
#[inline(always)]
fn ipv6(ctx: &XdpContext, ip: usize) -> Result<FlowKey, Skip> {
    let header = Ipv6::at(ctx, ip).ok_or(Skip::Other)?;
    if !header.is_valid() {
        return Err(Skip::Other);
    }
    let protocol = header.next_header();
    if protocol == IPV6_FRAGMENT {
        return Err(Skip::Fragment);
    }
    let (sport, dport) = ports(ctx, protocol, ip + IPV6_HLEN)?;
    Ok(FlowKey::new(
        FAMILY_V6,
        protocol,
        header.src(),
        sport,
        header.dst(),
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
