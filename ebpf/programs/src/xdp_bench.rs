//! Benchmark helpers at XDP. `xdp_bench_gen` is a traffic generator: run through
//! `BPF_PROG_TEST_RUN` in live-frames mode, it sends every frame out of the interface whose
//! index is in `XB_TARGET` (`bpf_redirect`), or drops it in place when that is 0 (the
//! generator's own cost). `xdp_bench_drop` drops every frame: the floor an XDP program on a
//! receiving interface is measured against.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_redirect,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
// The panic handler.
use ebpf_programs as _;

#[map]
static XB_TARGET: Array<u32> = Array::with_max_entries(1, 0);

/// Sends the frame out of `XB_TARGET`'s interface, or drops it.
#[xdp]
pub fn xdp_bench_gen(_ctx: XdpContext) -> u32 {
    match XB_TARGET.get(0).copied() {
        None | Some(0) => xdp_action::XDP_DROP,
        // SAFETY: a helper taking plain values.
        Some(ifindex) => unsafe { bpf_redirect(ifindex, 0) as u32 },
    }
}

/// Drops every frame.
#[xdp]
pub fn xdp_bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
