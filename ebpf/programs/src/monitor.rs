//! Performance monitor: per-CPU counters from kernel tracepoints — packets and bytes entering
//! the stack (optionally of one interface), NET_RX softirq time, TCP retransmits, XDP
//! redirects, redirect errors and exceptions, cpumap kthread work — and an optional XDP
//! frame counter on one interface.
//!
//! Every tracepoint program exists twice: as tp_btf (kernels with BTF) and as raw_tp (without),
//! with the same body except on `netif_receive_skb`, where only tp_btf can read the skb; user
//! space loads one of each pair. Neither needs tracefs.
#![no_std]
#![no_main]

use core::{ffi::c_void, ptr::read_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map, raw_tracepoint, xdp},
    maps::{Array, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, XdpContext},
};
use ebpf_common::monitor::{
    Config, CpuCounters, IfaceCounters, KernelOffsets, NET_RX_SOFTIRQ, UNKNOWN_OFFSET,
};
use ebpf_programs::with_percpu_slot;

#[map]
static IFACE_COUNTERS: PerCpuArray<IfaceCounters> = PerCpuArray::with_max_entries(1, 0);

#[map]
static MONITOR_COUNTERS: PerCpuArray<CpuCounters> = PerCpuArray::with_max_entries(1, 0);

#[map]
static MONITOR_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static MONITOR_SOFTIRQ_START: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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

/// Argument `n` of a tracepoint: both tp_btf and raw_tp contexts are arrays of u64.
#[inline(always)]
fn arg(ctx: *mut c_void, n: usize) -> u64 {
    // SAFETY: the verifier checks the read against the tracepoint's argument count.
    unsafe { *(ctx as *const u64).add(n) }
}

/// The running kernel's structure offsets: set by user space at load time in this read-only
/// global, so the verifier sees constants (required for plain loads through the tp_btf
/// program's typed `sk_buff` pointer).
#[unsafe(no_mangle)]
static MONITOR_OFFSETS: KernelOffsets = KernelOffsets::UNKNOWN;

/// Reads a `T` at `base + offset` through a BTF-typed kernel pointer: a plain load, which the
/// verifier checks against the structure's BTF and makes fault-safe (a bad pointer reads 0).
#[inline(always)]
fn load_at<T: Copy>(base: u64, offset: u32) -> T {
    // SAFETY: tp_btf only, where `base` is a typed kernel pointer and `offset` a constant to
    // the verifier; it rejects a load outside the structure.
    unsafe { *((base + offset as u64) as *const T) }
}

/// tp_btf on `netif_receive_skb(struct sk_buff *skb)`: counts the packet and its bytes when
/// it is in scope, reading the skb, its device and the device's namespace with plain loads.
#[inline(always)]
fn on_netif_receive_skb(ctx: *mut c_void) -> i32 {
    let skb = arg(ctx, 0);
    // SAFETY: a read of this object's own read-only global.
    let offset = |field: &u32| unsafe { read_volatile(field) };
    let skb_len = offset(&MONITOR_OFFSETS.skb_len);
    let skb_dev = offset(&MONITOR_OFFSETS.skb_dev);
    let dev_ifindex = offset(&MONITOR_OFFSETS.dev_ifindex);
    let dev_nd_net = offset(&MONITOR_OFFSETS.dev_nd_net);
    let net_inum = offset(&MONITOR_OFFSETS.net_inum);
    let Some(config) = MONITOR_CONFIG.get(0) else {
        return 0;
    };
    if config.ifindex != 0 {
        if skb_dev == UNKNOWN_OFFSET || dev_ifindex == UNKNOWN_OFFSET {
            return 0;
        }
        let dev: u64 = load_at(skb, skb_dev);
        if dev == 0 || load_at::<u32>(dev, dev_ifindex) != config.ifindex {
            return 0;
        }
        if config.netns_inum != 0 {
            if dev_nd_net == UNKNOWN_OFFSET || net_inum == UNKNOWN_OFFSET {
                return 0;
            }
            let net: u64 = load_at(dev, dev_nd_net);
            if net == 0 || load_at::<u32>(net, net_inum) != config.netns_inum {
                return 0;
            }
        }
    }
    let len = if skb_len == UNKNOWN_OFFSET {
        0
    } else {
        load_at::<u32>(skb, skb_len) as u64
    };
    with_percpu_slot(&MONITOR_COUNTERS, |c| {
        c.rx_packets += 1;
        c.rx_bytes += len;
    });
    0
}

/// raw_tp on `netif_receive_skb`: without BTF nothing in the skb can be read cheaply, so the
/// packet is counted unscoped and without bytes (what user space configures for raw_tp).
#[inline(always)]
fn on_netif_receive_skb_raw(_ctx: *mut c_void) -> i32 {
    with_percpu_slot(&MONITOR_COUNTERS, |c| c.rx_packets += 1);
    0
}

/// `softirq_entry(unsigned int vec_nr)`: notes when NET_RX started on this CPU.
#[inline(always)]
fn on_softirq_entry(ctx: *mut c_void) -> i32 {
    if arg(ctx, 0) as u32 == NET_RX_SOFTIRQ {
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        with_percpu_slot(&MONITOR_SOFTIRQ_START, |start| *start = now);
    }
    0
}

/// `softirq_exit(unsigned int vec_nr)`: adds the NET_RX run's time.
#[inline(always)]
fn on_softirq_exit(ctx: *mut c_void) -> i32 {
    if arg(ctx, 0) as u32 != NET_RX_SOFTIRQ {
        return 0;
    }
    let mut started = 0;
    with_percpu_slot(&MONITOR_SOFTIRQ_START, |start| {
        started = *start;
        *start = 0;
    });
    // A softirq already running when the monitor attached has no start: skip it.
    if started != 0 {
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        with_percpu_slot(&MONITOR_COUNTERS, |c| {
            c.net_rx_softirqs += 1;
            c.net_rx_softirq_ns += now.saturating_sub(started);
        });
    }
    0
}

#[inline(always)]
fn on_tcp_retransmit_skb(_ctx: *mut c_void) -> i32 {
    with_percpu_slot(&MONITOR_COUNTERS, |c| c.tcp_retransmits += 1);
    0
}

#[inline(always)]
fn on_xdp_redirect(_ctx: *mut c_void) -> i32 {
    with_percpu_slot(&MONITOR_COUNTERS, |c| c.xdp_redirects += 1);
    0
}

#[inline(always)]
fn on_xdp_redirect_err(_ctx: *mut c_void) -> i32 {
    with_percpu_slot(&MONITOR_COUNTERS, |c| c.xdp_redirect_errors += 1);
    0
}

#[inline(always)]
fn on_xdp_exception(_ctx: *mut c_void) -> i32 {
    with_percpu_slot(&MONITOR_COUNTERS, |c| c.xdp_exceptions += 1);
    0
}

/// `xdp_cpumap_kthread(int map_id, unsigned int processed, unsigned int drops, int sched, ...)`.
#[inline(always)]
fn on_xdp_cpumap_kthread(ctx: *mut c_void) -> i32 {
    let processed = arg(ctx, 1) as u32 as u64;
    let drops = arg(ctx, 2) as u32 as u64;
    with_percpu_slot(&MONITOR_COUNTERS, |c| {
        c.cpumap_batches += 1;
        c.cpumap_packets += processed;
        c.cpumap_drops += drops;
    });
    0
}

/// One tp_btf and one raw_tp program per tracepoint, running `$btf_body` and `$raw_body`
/// (the same function unless the raw_tp one must do without BTF).
macro_rules! tracepoint_programs {
    ($($tracepoint:tt => $btf:ident($btf_body:ident), $raw:ident($raw_body:ident);)*) => {$(
        #[doc = concat!("tp_btf on `", $tracepoint, "`.")]
        #[btf_tracepoint(function = $tracepoint)]
        pub fn $btf(ctx: BtfTracePointContext) -> i32 {
            $btf_body(ctx.as_ptr())
        }

        #[doc = concat!("raw_tp on `", $tracepoint, "`.")]
        #[raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $raw(ctx: RawTracePointContext) -> i32 {
            $raw_body(ctx.as_ptr())
        }
    )*};
}

tracepoint_programs! {
    "netif_receive_skb" => monitor_netif_receive_skb(on_netif_receive_skb),
        monitor_raw_netif_receive_skb(on_netif_receive_skb_raw);
    "softirq_entry" => monitor_softirq_entry(on_softirq_entry),
        monitor_raw_softirq_entry(on_softirq_entry);
    "softirq_exit" => monitor_softirq_exit(on_softirq_exit),
        monitor_raw_softirq_exit(on_softirq_exit);
    "tcp_retransmit_skb" => monitor_tcp_retransmit_skb(on_tcp_retransmit_skb),
        monitor_raw_tcp_retransmit_skb(on_tcp_retransmit_skb);
    "xdp_redirect" => monitor_xdp_redirect(on_xdp_redirect),
        monitor_raw_xdp_redirect(on_xdp_redirect);
    "xdp_redirect_err" => monitor_xdp_redirect_err(on_xdp_redirect_err),
        monitor_raw_xdp_redirect_err(on_xdp_redirect_err);
    "xdp_redirect_map" => monitor_xdp_redirect_map(on_xdp_redirect),
        monitor_raw_xdp_redirect_map(on_xdp_redirect);
    "xdp_redirect_map_err" => monitor_xdp_redirect_map_err(on_xdp_redirect_err),
        monitor_raw_xdp_redirect_map_err(on_xdp_redirect_err);
    "xdp_exception" => monitor_xdp_exception(on_xdp_exception),
        monitor_raw_xdp_exception(on_xdp_exception);
    "xdp_cpumap_kthread" => monitor_xdp_cpumap_kthread(on_xdp_cpumap_kthread),
        monitor_raw_xdp_cpumap_kthread(on_xdp_cpumap_kthread);
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
