//! The AF_XDP fast path's map layout: which UDP ports go to user space, the XDP sockets by
//! receive queue, and the program's per-CPU counters.
//!
//! # Maps
//! - [`PORTS_MAP`]: array of 65536 `u8` by UDP destination port; non-zero redirects.
//! - [`SOCKETS_MAP`]: XSKMAP by receive queue index, one AF_XDP socket per queue.
//! - [`COUNTERS_MAP`]: per-CPU array, one [`Counters`] slot.
//!
//! Frames of a chosen port on a queue without a socket, IP fragments and everything that is
//! not UDP over IPv4/IPv6 (without extension headers) pass to the kernel stack.

/// The XDP program.
pub const PROGRAM: &str = "afxdp";
/// Name of the port table.
pub const PORTS_MAP: &str = "AX_PORTS";
/// Name of the XSKMAP.
pub const SOCKETS_MAP: &str = "AX_SOCKETS";
/// Name of the per-CPU counters.
pub const COUNTERS_MAP: &str = "AX_COUNTERS";

/// Entries of [`PORTS_MAP`]: every UDP port.
pub const PORTS: u32 = 65536;
/// Entries of [`SOCKETS_MAP`]: the receive queues that can have a socket.
pub const MAX_QUEUES: u32 = 64;

/// What the XDP program did on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames that reached the program.
    pub packets: u64,
    /// Frames handed to an AF_XDP socket.
    pub redirected: u64,
    /// Frames of a chosen port whose queue has no socket (passed to the stack).
    pub no_socket: u64,
    /// Everything else, passed to the stack.
    pub passed: u64,
}

// SAFETY: a plain #[repr(C)] struct of u64 fields: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counters {}
