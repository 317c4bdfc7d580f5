//! The performance monitor's map layout.
//!
//! Tracepoint programs (tp_btf, or raw_tp on kernels without BTF) count per CPU into one
//! [`CpuCounters`] slot of [`COUNTERS_MAP`]; an optional XDP program counts frames at one
//! interface into [`IFACE_COUNTERS_MAP`]. User space sets the kernel's structure offsets, read
//! from its BTF, as the read-only global [`OFFSETS_GLOBAL`] when it loads the object, and fills
//! [`CONFIG_MAP`] (the interface scope) before attaching.

/// Name of the per-CPU array (one [`IfaceCounters`] slot) filled by the optional XDP program.
pub const IFACE_COUNTERS_MAP: &str = "IFACE_COUNTERS";
/// Name of the per-CPU array (one [`CpuCounters`] slot) filled by the tracepoint programs.
pub const COUNTERS_MAP: &str = "MONITOR_COUNTERS";
/// Name of the array (one [`Config`] slot) user space writes before attaching.
pub const CONFIG_MAP: &str = "MONITOR_CONFIG";
/// Name of the per-CPU array (one `u64` slot): when the running NET_RX softirq entered, in ns.
pub const SOFTIRQ_START_MAP: &str = "MONITOR_SOFTIRQ_START";
/// XDP program counting frames and bytes on the interface it is attached to.
pub const XDP_PROGRAM: &str = "monitor_xdp";

/// Softirq vector number of NET_RX (`enum { HI_SOFTIRQ, TIMER_SOFTIRQ, NET_TX_SOFTIRQ,
/// NET_RX_SOFTIRQ, ... }`, stable since 2.6).
pub const NET_RX_SOFTIRQ: u32 = 3;

/// One tracepoint the monitor attaches to, with its tp_btf and raw_tp program names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracepoint {
    /// The kernel tracepoint.
    pub name: &'static str,
    /// The tp_btf program.
    pub btf_program: &'static str,
    /// The raw_tp program (same code, for kernels without BTF).
    pub raw_program: &'static str,
    /// Whether attaching may fail because the kernel lacks the tracepoint.
    pub optional: bool,
}

const fn tracepoint(
    name: &'static str,
    btf_program: &'static str,
    raw_program: &'static str,
    optional: bool,
) -> Tracepoint {
    Tracepoint {
        name,
        btf_program,
        raw_program,
        optional,
    }
}

/// Every tracepoint the monitor counts on.
pub const TRACEPOINTS: [Tracepoint; 9] = [
    tracepoint(
        "netif_receive_skb",
        "monitor_netif_receive_skb",
        "monitor_raw_netif_receive_skb",
        false,
    ),
    tracepoint(
        "softirq_entry",
        "monitor_softirq_entry",
        "monitor_raw_softirq_entry",
        false,
    ),
    tracepoint(
        "softirq_exit",
        "monitor_softirq_exit",
        "monitor_raw_softirq_exit",
        false,
    ),
    tracepoint(
        "tcp_retransmit_skb",
        "monitor_tcp_retransmit_skb",
        "monitor_raw_tcp_retransmit_skb",
        false,
    ),
    tracepoint(
        "xdp_redirect",
        "monitor_xdp_redirect",
        "monitor_raw_xdp_redirect",
        false,
    ),
    tracepoint(
        "xdp_redirect_err",
        "monitor_xdp_redirect_err",
        "monitor_raw_xdp_redirect_err",
        false,
    ),
    // Older kernels report map redirects on these two instead of the two above.
    tracepoint(
        "xdp_redirect_map",
        "monitor_xdp_redirect_map",
        "monitor_raw_xdp_redirect_map",
        true,
    ),
    tracepoint(
        "xdp_redirect_map_err",
        "monitor_xdp_redirect_map_err",
        "monitor_raw_xdp_redirect_map_err",
        true,
    ),
    tracepoint(
        "xdp_exception",
        "monitor_xdp_exception",
        "monitor_raw_xdp_exception",
        false,
    ),
];

/// The cpumap kthread tracepoint (kernels without cpumap support lack it: optional).
pub const CPUMAP_TRACEPOINT: Tracepoint = tracepoint(
    "xdp_cpumap_kthread",
    "monitor_xdp_cpumap_kthread",
    "monitor_raw_xdp_cpumap_kthread",
    true,
);

/// What the XDP program saw on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Frames that reached the XDP hook.
    pub frames: u64,
    /// Their bytes (Ethernet header included, no FCS).
    pub bytes: u64,
}

/// What the tracepoint programs saw on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct CpuCounters {
    /// Packets handed to the stack (`netif_receive_skb`) on the scoped interface, or on every
    /// interface when unscoped.
    pub rx_packets: u64,
    /// Their bytes (`skb->len`: from the network header on; 0 when the kernel's offsets are
    /// unknown).
    pub rx_bytes: u64,
    /// NET_RX softirq runs.
    pub net_rx_softirqs: u64,
    /// Time spent in them, in ns.
    pub net_rx_softirq_ns: u64,
    /// TCP segments retransmitted (`tcp_retransmit_skb`), in every namespace.
    pub tcp_retransmits: u64,
    /// Successful XDP redirects (`xdp_redirect`, `xdp_redirect_map`).
    pub xdp_redirects: u64,
    /// Failed XDP redirects (`xdp_redirect_err`, `xdp_redirect_map_err`).
    pub xdp_redirect_errors: u64,
    /// XDP programs that aborted or returned an invalid action (`xdp_exception`).
    pub xdp_exceptions: u64,
    /// Batches run by cpumap kthreads (`xdp_cpumap_kthread`).
    pub cpumap_batches: u64,
    /// Frames those batches processed.
    pub cpumap_packets: u64,
    /// Frames they dropped.
    pub cpumap_drops: u64,
}

/// `Self { field: $a.field.$op($b.field), .. }` over every [`CpuCounters`] field.
macro_rules! zip_cpu_counters {
    ($a:expr, $b:expr, $op:ident) => {
        CpuCounters {
            rx_packets: $a.rx_packets.$op($b.rx_packets),
            rx_bytes: $a.rx_bytes.$op($b.rx_bytes),
            net_rx_softirqs: $a.net_rx_softirqs.$op($b.net_rx_softirqs),
            net_rx_softirq_ns: $a.net_rx_softirq_ns.$op($b.net_rx_softirq_ns),
            tcp_retransmits: $a.tcp_retransmits.$op($b.tcp_retransmits),
            xdp_redirects: $a.xdp_redirects.$op($b.xdp_redirects),
            xdp_redirect_errors: $a.xdp_redirect_errors.$op($b.xdp_redirect_errors),
            xdp_exceptions: $a.xdp_exceptions.$op($b.xdp_exceptions),
            cpumap_batches: $a.cpumap_batches.$op($b.cpumap_batches),
            cpumap_packets: $a.cpumap_packets.$op($b.cpumap_packets),
            cpumap_drops: $a.cpumap_drops.$op($b.cpumap_drops),
        }
    };
}

impl CpuCounters {
    /// The field-by-field sum (over CPUs, say), saturating.
    #[must_use]
    pub const fn plus(&self, other: &Self) -> Self {
        zip_cpu_counters!(self, other, saturating_add)
    }

    /// What was counted since the snapshot `before`, field by field (a counter never goes
    /// back; one that seems to is 0).
    #[must_use]
    pub const fn since(&self, before: &Self) -> Self {
        zip_cpu_counters!(self, before, saturating_sub)
    }
}

/// The interface scope of packet counts, one slot written by user space before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Count only packets received on this interface index (0: every interface).
    pub ifindex: u32,
    /// ... in the network namespace with this inode number (0: any namespace).
    pub netns_inum: u32,
}

impl Config {
    /// Counts packets on every interface.
    pub const UNSCOPED: Self = Self {
        ifindex: 0,
        netns_inum: 0,
    };
}

/// Name of the read-only global ([`KernelOffsets`]) user space sets when it loads the object.
pub const OFFSETS_GLOBAL: &str = "MONITOR_OFFSETS";

/// Byte offsets in the running kernel's structures, read from its BTF and set as a read-only
/// global at load time: the verifier then knows them as constants, so the tp_btf program
/// reads the fields with plain loads instead of `bpf_probe_read_kernel` calls (one load each
/// instead of a helper call each: the per-packet cost that matters). [`UNKNOWN_OFFSET`] means
/// the BTF did not give the field, and the program does not read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `offsetof(struct sk_buff, len)`.
    pub skb_len: u32,
    /// `offsetof(struct sk_buff, dev)`.
    pub skb_dev: u32,
    /// `offsetof(struct net_device, ifindex)`.
    pub dev_ifindex: u32,
    /// `offsetof(struct net_device, nd_net)` (a `possible_net_t`, whose first field is the
    /// `struct net *`).
    pub dev_nd_net: u32,
    /// `offsetof(struct net, ns) + offsetof(struct ns_common, inum)`.
    pub net_inum: u32,
    /// Keeps the size a multiple of 8.
    pub reserved: u32,
}

/// Marks an offset the kernel's BTF did not give.
pub const UNKNOWN_OFFSET: u32 = u32::MAX;

impl KernelOffsets {
    /// No offsets: packets are counted without bytes and cannot be scoped.
    pub const UNKNOWN: Self = Self {
        skb_len: UNKNOWN_OFFSET,
        skb_dev: UNKNOWN_OFFSET,
        dev_ifindex: UNKNOWN_OFFSET,
        dev_nd_net: UNKNOWN_OFFSET,
        net_inum: UNKNOWN_OFFSET,
        reserved: 0,
    };

    /// Whether the offsets a scoped count reads are all known.
    pub const fn can_scope(&self) -> bool {
        self.skb_dev != UNKNOWN_OFFSET
            && self.dev_ifindex != UNKNOWN_OFFSET
            && self.dev_nd_net != UNKNOWN_OFFSET
            && self.net_inum != UNKNOWN_OFFSET
    }
}

// SAFETY: plain #[repr(C)] structs of u64 / u32 fields, sizes multiples of 8: no padding,
// every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IfaceCounters {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CpuCounters {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelOffsets {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_subtract_field_by_field() {
        let a = CpuCounters {
            rx_packets: 5,
            net_rx_softirq_ns: 100,
            cpumap_drops: 1,
            ..CpuCounters::default()
        };
        let b = CpuCounters {
            rx_packets: 2,
            net_rx_softirq_ns: 300,
            tcp_retransmits: 7,
            ..CpuCounters::default()
        };
        let sum = a.plus(&b);
        assert_eq!(
            (
                sum.rx_packets,
                sum.net_rx_softirq_ns,
                sum.tcp_retransmits,
                sum.cpumap_drops
            ),
            (7, 400, 7, 1)
        );
        assert_eq!(sum.since(&b), a);
        // A counter that went back (a CPU's slot replaced) counts as 0, not as a wrap.
        assert_eq!(a.since(&b).net_rx_softirq_ns, 0);
    }
}
