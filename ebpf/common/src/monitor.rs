//! The performance monitor's map layout.

/// Name of the per-CPU array (one [`IfaceCounters`] slot) filled by the XDP program.
pub const IFACE_COUNTERS_MAP: &str = "IFACE_COUNTERS";
/// Name of the per-CPU array (one [`StackCounters`] slot) filled by the tracepoint programs.
pub const STACK_COUNTERS_MAP: &str = "STACK_COUNTERS";
/// XDP program counting frames and bytes on the interface it is attached to.
pub const XDP_PROGRAM: &str = "monitor_xdp";
/// tp_btf program on `netif_receive_skb`.
pub const NETIF_RECEIVE_PROGRAM: &str = "monitor_netif_receive_skb";
/// The kernel tracepoint the [`NETIF_RECEIVE_PROGRAM`] attaches to.
pub const NETIF_RECEIVE_TRACEPOINT: &str = "netif_receive_skb";

/// What the XDP program saw on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Frames that reached the XDP hook.
    pub frames: u64,
    /// Their bytes (Ethernet header included, no FCS).
    pub bytes: u64,
}

/// What the kernel stack tracepoints saw on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackCounters {
    /// `netif_receive_skb` events: packets handed to the stack on this CPU (all interfaces).
    pub netif_receive_skb: u64,
}

// SAFETY: plain #[repr(C)] structs of u64 fields: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IfaceCounters {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for StackCounters {}
