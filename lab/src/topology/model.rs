//! The topology model, shared by the TOML and containerlab readers.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::diag::{Span, Spanned};
use super::units::{Cidr, Nanos, Percent, Rate};

/// Which syntax a topology file is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The lab's own TOML format.
    Toml,
    /// containerlab's `.clab.yml`.
    Containerlab,
}

impl Format {
    /// Guesses from the file name: `.yml`/`.yaml` are containerlab, anything else TOML.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => Format::Containerlab,
            _ => Format::Toml,
        }
    }
}

/// A checked topology: every name resolves, and every link has its addresses.
#[derive(Clone, Debug)]
pub struct Topology {
    /// The lab name (`[a-z0-9_-]`, at most 32 bytes).
    pub name: Spanned<String>,
    /// The nodes, in file order.
    pub nodes: Vec<Node>,
    /// The links, in file order.
    pub links: Vec<Link>,
    /// Where addresses omitted in the file come from.
    pub pools: Pools,
    /// Services started in its nodes (`[deploy]`).
    pub deploy: Vec<crate::deploy::Deployment>,
}

impl Topology {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name.value == name)
    }
}

/// A node of the topology.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its name, unique in the topology.
    pub name: Spanned<String>,
    /// What it is.
    pub kind: Spanned<NodeKind>,
    /// Shell commands run inside the node, in order, once it is wired.
    pub exec: Vec<Spanned<String>>,
    /// Static routes.
    pub routes: Vec<Route>,
    /// Whether the node forwards IPv4 and IPv6 packets (a router).
    pub forwarding: bool,
}

/// The kinds of node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A network namespace of its own.
    Netns,
    /// A Linux bridge, in a network namespace of its own.
    Bridge,
    /// The host's own (root) network namespace.
    Host,
    /// A QEMU virtual machine.
    Vm {
        /// Kernel version from `vm-images/kernels.toml`.
        kernel: Option<String>,
        /// Virtual CPUs.
        cpus: Option<u32>,
        /// Memory in MiB.
        memory: Option<u32>,
    },
    /// A container started from `image`, its network namespace wired like a netns node's.
    Container {
        /// The image to run.
        image: Option<String>,
        /// The command replacing the image's, as program and arguments (`None`: the image's).
        cmd: Option<Vec<String>>,
    },
}

impl NodeKind {
    /// The name used in files.
    pub fn name(&self) -> &'static str {
        match self {
            NodeKind::Netns => "netns",
            NodeKind::Bridge => "bridge",
            NodeKind::Host => "host",
            NodeKind::Vm { .. } => "vm",
            NodeKind::Container { .. } => "container",
        }
    }
}

/// A static route.
#[derive(Clone, Debug)]
pub struct Route {
    /// Destination network (`default` is `0.0.0.0/0` or `::/0`, after the gateway's family).
    pub to: Spanned<Cidr>,
    /// Gateway.
    pub via: Spanned<IpAddr>,
}

/// One end of a link: `node:interface`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The node's name.
    pub node: Spanned<String>,
    /// The interface name inside the node.
    pub iface: Spanned<String>,
}

/// A point-to-point link (a veth pair).
#[derive(Clone, Debug)]
pub struct Link {
    /// The whole link entry.
    pub span: Span,
    /// Its two ends.
    pub endpoints: [Endpoint; 2],
    /// Addresses as written.
    pub addressing: Addressing,
    /// Addresses of each end after checking (pool addresses filled in; none on bridge ports).
    pub addresses: [Vec<Cidr>; 2],
    /// MTU of both ends.
    pub mtu: Option<Spanned<u32>>,
    /// Impairments on the egress of each end.
    pub impair: [Impairment; 2],
}

/// How a link's ends get their addresses.
#[derive(Clone, Debug)]
pub enum Addressing {
    /// From the pool.
    Pool,
    /// As written: one list per end that is not a bridge port.
    Explicit(Spanned<Vec<Vec<Spanned<Cidr>>>>),
    /// None (containerlab files: addresses come from `exec` commands).
    Unaddressed,
}

/// Impairments of one direction of a link, applied as a netem qdisc on an egress interface.
///
/// Serialized with units in the field names: `delay_ns`, `loss_pct`, `rate_bit_s`, …
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Impairment {
    /// Added delay.
    #[serde(rename = "delay_ns", skip_serializing_if = "Option::is_none")]
    pub delay: Option<Nanos>,
    /// Random variation of the delay.
    #[serde(rename = "jitter_ns", skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Nanos>,
    /// Packets dropped.
    #[serde(rename = "loss_pct", skip_serializing_if = "Option::is_none")]
    pub loss: Option<Percent>,
    /// Packets duplicated.
    #[serde(rename = "duplicate_pct", skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<Percent>,
    /// Packets sent at once, ahead of delayed ones.
    #[serde(rename = "reorder_pct", skip_serializing_if = "Option::is_none")]
    pub reorder: Option<Percent>,
    /// Packets with a flipped bit.
    #[serde(rename = "corrupt_pct", skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<Percent>,
    /// Rate limit in bits per second (netem's own rate).
    #[serde(rename = "rate_bit_s", skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

impl Impairment {
    /// Whether nothing is impaired.
    pub fn is_none(&self) -> bool {
        *self == Impairment::default()
    }
}

/// Address pools for links whose addresses are omitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pools {
    /// IPv4 pool; each segment gets a /24 (or larger for big bridges).
    pub ipv4: Cidr,
    /// IPv6 pool; each segment gets a /64.
    pub ipv6: Cidr,
}
