//! The lab's netlink layer: a thin, typed layer over rtnetlink for the apply stage.
//!
//! - [`Netns`]: named network namespaces under `/run/netns` (visible to `ip netns`), created,
//!   entered on a dedicated thread, and deleted (the kernel then removes their devices in one
//!   batch).
//! - [`Netlink`]: one rtnetlink connection bound to one namespace. A connection made from a
//!   thread inside a namespace stays bound to it, so one process holds connections into many
//!   namespaces at once; clones share the socket and any number of requests may be in flight.
//!   It creates veth pairs straight into their namespaces, bridges, addresses (DAD off), routes
//!   and netem qdiscs ([`Netem`]).
//! - [`Netns::create_tap`]: persistent tap devices for VM nodes (the `TUNSETIFF` ioctl).
//!
//! Nothing here runs `ip` or `tc`. Everything is async on Tokio: the runtime needs I/O enabled.

mod error;
mod link;
mod netem;
mod netlink;
mod netns;
mod route;
mod tap;

pub use error::Error;
pub use link::{LinkInfo, LinkRef, Veth};
pub use netem::{Netem, Probability};
pub use netlink::Netlink;
pub use netns::Netns;
pub use route::Route;

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
