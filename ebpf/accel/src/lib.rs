//! User-space side of the lab's eBPF accelerators: one typed handle per accelerator that
//! loads its program object (built from `ebpf/programs` by this crate's build.rs), attaches,
//! configures, reads statistics, pins and detaches.
//!
//! Pinned objects live under `/sys/fs/bpf/<prefix>/<accelerator>/<scope>/<interface>/`
//! (cgroup accelerators use `cg<cgroup inode>` in place of the interface; see
//! [`pin::PinLayout`]) so that attachments outlive the process that made them and
//! `accel … detach` or `lab down` can find and remove them later.

pub mod afxdp;
pub mod cpu_balance;
mod error;
pub mod ethtool;
pub mod http_filter;
pub mod kernel_btf;
pub mod monitor;
pub mod netdev;
mod object;
pub mod pin;
pub mod sock_redirect;
pub mod udp_gen;
pub mod xdp_bench;

pub use error::Error;
pub use object::AttachMode;

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
