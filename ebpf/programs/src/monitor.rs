//! Performance monitor, first slice: per-CPU frame/byte counters at the XDP hook of one
//! interface, and per-CPU `netif_receive_skb` events from a BTF tracepoint (no tracefs needed).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{btf_tracepoint, map, xdp},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, XdpContext},
};
use ebpf_common::monitor::{IfaceCounters, StackCounters};
use ebpf_programs::with_percpu_slot;

#[map]
static IFACE_COUNTERS: PerCpuArray<IfaceCounters> = PerCpuArray::with_max_entries(1, 0);

#[map]
static STACK_COUNTERS: PerCpuArray<StackCounters> = PerCpuArray::with_max_entries(1, 0);

/// Counts every frame and its length, then lets it through unchanged.
#[xdp]
pub fn monitor_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    with_percpu_slot(&IFACE_COUNTERS, |c| {
        c.frames += 1;
        c.bytes += len;
    });
    xdp_action::XDP_PASS
}

/// Counts packets entering the stack, per CPU.
#[btf_tracepoint(function = "netif_receive_skb")]
pub fn monitor_netif_receive_skb(_ctx: BtfTracePointContext) -> i32 {
    with_percpu_slot(&STACK_COUNTERS, |c| c.netif_receive_skb += 1);
    0
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
