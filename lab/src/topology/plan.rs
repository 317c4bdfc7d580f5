//! The plan: a checked topology as an ordered list of kernel resources.
//!
//! # Naming
//!
//! Every kernel object a lab makes is named from a *prefix* (`dgl` by default, see [`Prefix`])
//! and the lab name, so that labs that are up at once never collide and `lab down` can find a
//! lab's objects from their names alone:
//!
//! - the namespace of node `N` in lab `L` is `<prefix>-L.N` (e.g. `dgl-two-hosts.client`): lab
//!   and node names contain no `.`, so every namespace of lab `L` starts with `<prefix>-L.`,
//!   and every namespace of the prefix with `<prefix>-`;
//! - inside a lab namespace, interfaces keep the names written in the file (`eth0`) and a
//!   bridge's device is named after its node; all are checked to fit the kernel's 15 bytes;
//! - interfaces in the host's namespace (links to a `host` node) are named
//!   `<tag>-<n>`, where the tag ([`lab_tag`]) is the prefix plus 4 hex digits of a hash of the
//!   lab name and `n` counts host interfaces in link order (e.g. `dgl3f9a-0`): at most
//!   4 + 4 + 1 + 6 = 15 bytes. Two lab names can share a tag (1 in 65536): `lab up` must
//!   refuse a lab whose tag is already used by a lab that is up.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::model::{Impairment, NodeKind, Pools, Topology};
use super::units::Cidr;
use crate::node::vm::{self, VmNic, VmRoute, VmSpec};

/// The start of every kernel name of a lab: 1 to 4 lowercase letters or digits, first a letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// Checks `prefix`.
    pub fn new(prefix: &str) -> Result<Self, String> {
        let valid = (1..=4).contains(&prefix.len())
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(Prefix(prefix.to_owned()))
        } else {
            Err(format!(
                "bad prefix `{prefix}`: use 1 to 4 lowercase letters or digits, first a letter"
            ))
        }
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix("dgl".to_owned())
    }
}

/// Choices that shape a plan beyond the topology.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Start of every kernel name.
    pub prefix: Prefix,
    /// Run the services of `[deploy]` in containers: each netns node with services becomes a
    /// container of [`crate::deploy::NODE_IMAGE`], which the services' containers join.
    pub service_containers: bool,
}

/// A 16-bit hash of a lab name (FNV-1a, folded).
pub(crate) fn lab_hash(name: &str) -> u16 {
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    ((hash >> 16) ^ (hash & 0xffff)) as u16
}

/// The tag of lab `name`: the prefix and 4 hex digits of a 16-bit hash of the name (FNV-1a,
/// folded), e.g. `dgl3f9a`.
pub fn lab_tag(prefix: &Prefix, name: &str) -> String {
    format!("{}{:04x}", prefix.as_str(), lab_hash(name))
}

/// A network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Netns {
    /// The host's own namespace (of the process running `lab`).
    Root,
    /// A named namespace under `/run/netns`.
    Named(String),
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Root => f.write_str("(host)"),
            Netns::Named(name) => f.write_str(name),
        }
    }
}

/// One end of a veth pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethEnd {
    /// The namespace the end is created in.
    pub ns: Netns,
    /// Its kernel name in that namespace.
    pub dev: String,
    /// The node it belongs to.
    pub node: String,
    /// The interface name in the file.
    pub iface: String,
}

/// One step of a plan. Each step names the namespace it acts in; steps run in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Create the named namespace `ns` (bind-mounted under `/run/netns`).
    CreateNamespace {
        /// Namespace name.
        ns: String,
        /// The node it holds.
        node: String,
    },
    /// Start a container (network mode none) of `image` named `ns`, labelled with the lab's
    /// prefix, lab and node, and name its network namespace `ns` (as `CreateNamespace` does).
    StartContainer {
        /// Namespace name, also the container's name.
        ns: String,
        /// The node it runs.
        node: String,
        /// The lab, for the container's labels.
        lab: String,
        /// The kernel-name prefix, for the container's labels.
        prefix: String,
        /// Image reference, e.g. `disgrafs-lab/base`.
        image: String,
        /// Command replacing the image's, program and arguments (empty: the image's).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        cmd: Vec<String>,
    },
    /// Write `value` to the sysctl `key` inside `ns`.
    Sysctl {
        /// Namespace.
        ns: Netns,
        /// Dotted key, e.g. `net.ipv4.ip_forward`.
        key: String,
        /// Value.
        value: String,
    },
    /// Create a Linux bridge device.
    CreateBridge {
        /// Namespace.
        ns: Netns,
        /// Device name.
        dev: String,
        /// The bridge node.
        node: String,
    },
    /// Create a veth pair with each end straight in its namespace.
    CreateVeth {
        /// First end (the link's first endpoint).
        a: VethEnd,
        /// Second end.
        b: VethEnd,
        /// MTU of both ends, if not the default.
        #[serde(skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
    },
    /// Make `dev` a port of `bridge`.
    Enslave {
        /// Namespace.
        ns: Netns,
        /// The port.
        dev: String,
        /// The bridge device.
        bridge: String,
    },
    /// Add an address to `dev`.
    AddAddress {
        /// Namespace.
        ns: Netns,
        /// Device.
        dev: String,
        /// Address with prefix length.
        address: Cidr,
        /// Skip duplicate address detection (`IFA_F_NODAD`), so IPv6 works at once.
        nodad: bool,
    },
    /// Add a netem root qdisc on the egress of `dev`.
    AddNetem {
        /// Namespace.
        ns: Netns,
        /// Device.
        dev: String,
        /// What to impair.
        netem: Impairment,
    },
    /// Set `dev` up.
    SetUp {
        /// Namespace.
        ns: Netns,
        /// Device.
        dev: String,
    },
    /// Add a static route.
    AddRoute {
        /// Namespace.
        ns: Netns,
        /// Destination network.
        to: Cidr,
        /// Gateway.
        via: IpAddr,
    },
    /// Create a persistent tap device (a VM node's network card).
    CreateTap {
        /// Namespace.
        ns: Netns,
        /// Device name.
        dev: String,
        /// The VM node.
        node: String,
        /// MTU (the link's), if not the default; the bridge to the link's veth end follows
        /// its ports.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
    },
    /// Boot a VM node's QEMU in its namespace and configure the guest.
    StartVm(Box<VmSpec>),
    /// Run `command` with `sh -c` inside the node.
    Exec {
        /// Namespace.
        ns: Netns,
        /// The node.
        node: String,
        /// Shell command.
        command: String,
    },
}

/// What removes what a step made, when removing its namespace does not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Undo {
    /// Delete a named namespace (and so every device in it).
    DeleteNamespace {
        /// Namespace name.
        ns: String,
    },
    /// Remove a container (and its processes) and the namespace name pointing at it.
    RemoveContainer {
        /// The container's name, also its namespace's.
        name: String,
    },
    /// Delete a device (a veth end in the host's namespace; its peer goes with it).
    DeleteLink {
        /// Namespace.
        ns: Netns,
        /// Device.
        dev: String,
    },
    /// Kill a VM node's QEMU and remove its run directory.
    StopVm {
        /// The VM node.
        node: String,
    },
}

impl Step {
    /// The (namespace, node) a step makes for a node: every node other than `host` gets one.
    pub fn node_namespace(&self) -> Option<(&str, &str)> {
        match self {
            Step::CreateNamespace { ns, node } | Step::StartContainer { ns, node, .. } => {
                Some((ns.as_str(), node.as_str()))
            }
            _ => None,
        }
    }

    /// What undoes this step, if anything must: steps inside a lab namespace are undone by
    /// deleting the namespace.
    pub fn undo(&self) -> Option<Undo> {
        match self {
            Step::CreateNamespace { ns, .. } => Some(Undo::DeleteNamespace { ns: ns.clone() }),
            Step::StartContainer { ns, .. } => Some(Undo::RemoveContainer { name: ns.clone() }),
            Step::CreateVeth { a, b, .. } => [a, b]
                .into_iter()
                .find(|end| end.ns == Netns::Root)
                .map(|end| Undo::DeleteLink {
                    ns: Netns::Root,
                    dev: end.dev.clone(),
                }),
            Step::CreateBridge {
                ns: Netns::Root,
                dev,
                ..
            } => Some(Undo::DeleteLink {
                ns: Netns::Root,
                dev: dev.clone(),
            }),
            Step::StartVm(spec) => Some(Undo::StopVm {
                node: spec.node.clone(),
            }),
            _ => None,
        }
    }
}

/// A lab's kernel resources, in creation order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The lab name.
    pub lab: String,
    /// The kernel-name prefix.
    pub prefix: String,
    /// The lab tag (see [`lab_tag`]).
    pub tag: String,
    /// Address pools the lab draws from.
    pub pools: Pools,
    /// Steps, in order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// Plans `topology` (checked by [`super::parse`] or [`super::load`]).
    pub fn new(topology: &Topology, options: &PlanOptions) -> Plan {
        let lab = &topology.name.value;
        let prefix = options.prefix.as_str();
        let tag = lab_tag(&options.prefix, lab);
        let ns_of = |node: &str| match topology.node(node).map(|n| &n.kind.value) {
            Some(NodeKind::Host) => Netns::Root,
            _ => Netns::Named(format!("{prefix}-{lab}.{node}")),
        };
        let is_vm = |node: &str| {
            topology
                .node(node)
                .is_some_and(|n| matches!(n.kind.value, NodeKind::Vm { .. }))
        };
        let mut steps = Vec::new();
        let sysctl = |ns: &Netns, key: &str, value: &str| Step::Sysctl {
            ns: ns.clone(),
            key: key.to_owned(),
            value: value.to_owned(),
        };

        for node in &topology.nodes {
            let Netns::Named(name) = ns_of(&node.name.value) else {
                continue;
            };
            let ns = Netns::Named(name.clone());
            let serves = topology
                .deploy
                .iter()
                .any(|d| d.node.value == node.name.value && !d.services.is_empty());
            steps.push(match &node.kind.value {
                NodeKind::Netns if serves && options.service_containers => Step::StartContainer {
                    ns: name,
                    node: node.name.value.clone(),
                    lab: lab.clone(),
                    prefix: prefix.to_owned(),
                    image: crate::deploy::NODE_IMAGE.to_owned(),
                    cmd: Vec::new(),
                },
                NodeKind::Container { image, cmd } => Step::StartContainer {
                    ns: name,
                    node: node.name.value.clone(),
                    lab: lab.clone(),
                    prefix: prefix.to_owned(),
                    image: image.clone().unwrap_or_default(),
                    cmd: cmd.clone().unwrap_or_default(),
                },
                _ => Step::CreateNamespace {
                    ns: name,
                    node: node.name.value.clone(),
                },
            });
            if matches!(steps.last(), Some(Step::StartContainer { .. })) {
                // The engine turns IPv6 off in a container without an IPv6 network.
                steps.push(sysctl(&ns, "net.ipv6.conf.all.disable_ipv6", "0"));
                steps.push(sysctl(&ns, "net.ipv6.conf.default.disable_ipv6", "0"));
            }
            steps.push(Step::SetUp {
                ns: ns.clone(),
                dev: "lo".to_owned(),
            });
            steps.push(sysctl(&ns, "net.ipv6.conf.all.accept_dad", "0"));
            steps.push(sysctl(&ns, "net.ipv6.conf.default.accept_dad", "0"));
            // IPv6 addresses survive `lab link down`/`up`, as IPv4 ones do.
            steps.push(sysctl(&ns, "net.ipv6.conf.all.keep_addr_on_down", "1"));
            steps.push(sysctl(&ns, "net.ipv6.conf.default.keep_addr_on_down", "1"));
            // Explicitly, for every node: a new namespace copies the host's IPv4 devconf
            // (`ip_forward` included), so on a host that forwards every node would. A VM
            // node's guest forwards by itself; its namespace only bridges.
            let forwarding = if node.forwarding && !is_vm(&node.name.value) {
                "1"
            } else {
                "0"
            };
            steps.push(sysctl(&ns, "net.ipv4.ip_forward", forwarding));
            steps.push(sysctl(&ns, "net.ipv6.conf.all.forwarding", forwarding));
        }
        let bridges: Vec<&str> = topology
            .nodes
            .iter()
            .filter(|n| n.kind.value == NodeKind::Bridge)
            .map(|n| n.name.value.as_str())
            .collect();
        for bridge in &bridges {
            steps.push(Step::CreateBridge {
                ns: ns_of(bridge),
                dev: (*bridge).to_owned(),
                node: (*bridge).to_owned(),
            });
        }

        // Each interface of a VM node: its veth end, a bridge and a tap in the node's namespace.
        let vm_ends: Vec<(Netns, String, String, usize, Option<u32>)> = {
            let mut count: std::collections::HashMap<&str, usize> = Default::default();
            topology
                .links
                .iter()
                .flat_map(|link| {
                    let mtu = link.mtu.as_ref().map(|m| m.value);
                    link.endpoints.iter().map(move |e| (e, mtu))
                })
                .filter(|(e, _)| is_vm(&e.node.value))
                .map(|(e, mtu)| {
                    let k = count.entry(e.node.value.as_str()).or_default();
                    *k += 1;
                    (
                        ns_of(&e.node.value),
                        e.node.value.clone(),
                        e.iface.value.clone(),
                        *k - 1,
                        mtu,
                    )
                })
                .collect()
        };
        for (ns, node, _, k, _) in &vm_ends {
            steps.push(Step::CreateBridge {
                ns: ns.clone(),
                dev: vm::bridge_name(*k),
                node: node.clone(),
            });
        }
        for (ns, node, _, k, mtu) in &vm_ends {
            steps.push(Step::CreateTap {
                ns: ns.clone(),
                dev: vm::tap_name(*k),
                node: node.clone(),
                mtu: *mtu,
            });
        }
        let mut host_ifaces = 0usize;
        let ends: Vec<[VethEnd; 2]> = topology
            .links
            .iter()
            .map(|link| {
                link.endpoints.each_ref().map(|e| {
                    let ns = ns_of(&e.node.value);
                    let dev = if ns == Netns::Root {
                        host_ifaces += 1;
                        format!("{tag}-{}", host_ifaces - 1)
                    } else {
                        e.iface.value.clone()
                    };
                    VethEnd {
                        ns,
                        dev,
                        node: e.node.value.clone(),
                        iface: e.iface.value.clone(),
                    }
                })
            })
            .collect();
        for (link, [a, b]) in topology.links.iter().zip(&ends) {
            steps.push(Step::CreateVeth {
                a: a.clone(),
                b: b.clone(),
                mtu: link.mtu.as_ref().map(|m| m.value),
            });
        }
        for end in ends.iter().flatten() {
            if bridges.contains(&end.node.as_str()) {
                steps.push(Step::Enslave {
                    ns: end.ns.clone(),
                    dev: end.dev.clone(),
                    bridge: end.node.clone(),
                });
            }
        }
        for (ns, _, iface, k, _) in &vm_ends {
            for dev in [iface.clone(), vm::tap_name(*k)] {
                steps.push(Step::Enslave {
                    ns: ns.clone(),
                    dev,
                    bridge: vm::bridge_name(*k),
                });
            }
        }
        // Links go up before they get addresses: an IPv6 address added to a link that is down
        // misses its first neighbour solicitation, so the first packet waits ~1 s for a retry.
        for bridge in &bridges {
            steps.push(Step::SetUp {
                ns: ns_of(bridge),
                dev: (*bridge).to_owned(),
            });
        }
        for (ns, _, _, k, _) in &vm_ends {
            for dev in [vm::bridge_name(*k), vm::tap_name(*k)] {
                steps.push(Step::SetUp {
                    ns: ns.clone(),
                    dev,
                });
            }
        }
        for end in ends.iter().flatten() {
            steps.push(Step::SetUp {
                ns: end.ns.clone(),
                dev: end.dev.clone(),
            });
        }
        for (link, pair) in topology.links.iter().zip(&ends) {
            for (end, addresses) in pair.iter().zip(&link.addresses) {
                if is_vm(&end.node) {
                    continue;
                }
                for address in addresses {
                    steps.push(Step::AddAddress {
                        ns: end.ns.clone(),
                        dev: end.dev.clone(),
                        address: *address,
                        nodad: address.is_ipv6(),
                    });
                }
            }
        }
        for (link, pair) in topology.links.iter().zip(&ends) {
            for (end, impair) in pair.iter().zip(&link.impair) {
                if !impair.is_none() {
                    steps.push(Step::AddNetem {
                        ns: end.ns.clone(),
                        dev: end.dev.clone(),
                        netem: impair.clone(),
                    });
                }
            }
        }
        for node in topology.nodes.iter().filter(|n| !is_vm(&n.name.value)) {
            for route in &node.routes {
                steps.push(Step::AddRoute {
                    ns: ns_of(&node.name.value),
                    to: route.to.value,
                    via: route.via.value,
                });
            }
        }
        for node in &topology.nodes {
            let NodeKind::Vm {
                kernel,
                cpus,
                memory,
            } = &node.kind.value
            else {
                continue;
            };
            let name = &node.name.value;
            let Netns::Named(ns) = ns_of(name) else {
                continue;
            };
            let mut nics = Vec::new();
            for (link, pair) in topology.links.iter().zip(&ends) {
                for (end, addresses) in pair.iter().zip(&link.addresses) {
                    if end.node == *name {
                        nics.push(VmNic {
                            tap: vm::tap_name(nics.len()),
                            iface: end.iface.clone(),
                            mac: vm::mac_address(lab, name, &end.iface),
                            addresses: addresses.clone(),
                            mtu: link.mtu.as_ref().map(|m| m.value),
                        });
                    }
                }
            }
            steps.push(Step::StartVm(Box::new(VmSpec {
                ns,
                node: name.clone(),
                kernel: kernel
                    .clone()
                    .unwrap_or_else(|| vm::DEFAULT_KERNEL.to_owned()),
                cpus: cpus.unwrap_or(vm::DEFAULT_CPUS),
                memory_mib: memory.unwrap_or(vm::DEFAULT_MEMORY_MIB),
                nics,
                routes: node
                    .routes
                    .iter()
                    .map(|r| VmRoute {
                        to: r.to.value,
                        via: r.via.value,
                    })
                    .collect(),
                forwarding: node.forwarding,
            })));
        }
        for node in &topology.nodes {
            for command in &node.exec {
                steps.push(Step::Exec {
                    ns: ns_of(&node.name.value),
                    node: node.name.value.clone(),
                    command: command.value.clone(),
                });
            }
        }
        Plan {
            lab: lab.clone(),
            prefix: prefix.to_owned(),
            tag,
            pools: topology.pools,
            steps,
        }
    }

    /// What removes the lab, in order: the reverse of creation, namespaces last.
    pub fn teardown(&self) -> Vec<Undo> {
        self.steps.iter().rev().filter_map(Step::undo).collect()
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(d) = self.delay {
            parts.push(format!("delay {d}"));
        }
        if let Some(j) = self.jitter {
            parts.push(format!("jitter {j}"));
        }
        for (name, value) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ] {
            if let Some(v) = value {
                parts.push(format!("{name} {v}"));
            }
        }
        if let Some(r) = self.rate {
            parts.push(format!("rate {r}"));
        }
        f.write_str(&parts.join(" "))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateNamespace { ns, node } => write!(f, "netns   {ns}  (node {node})"),
            Step::StartContainer {
                ns,
                node,
                image,
                cmd,
                ..
            } => {
                write!(f, "container {ns}  {image}")?;
                if !cmd.is_empty() {
                    write!(f, " {}", cmd.join(" "))?;
                }
                write!(f, "  (node {node})")
            }
            Step::Sysctl { ns, key, value } => write!(f, "sysctl  {ns}  {key}={value}"),
            Step::CreateBridge { ns, dev, .. } => write!(f, "bridge  {ns}  {dev}"),
            Step::CreateVeth { a, b, mtu } => {
                write!(
                    f,
                    "veth    {} {} ({}:{}) <-> {} {} ({}:{})",
                    a.ns, a.dev, a.node, a.iface, b.ns, b.dev, b.node, b.iface
                )?;
                match mtu {
                    Some(mtu) => write!(f, " mtu {mtu}"),
                    None => Ok(()),
                }
            }
            Step::Enslave { ns, dev, bridge } => write!(f, "master  {ns}  {dev} -> {bridge}"),
            Step::AddAddress {
                ns,
                dev,
                address,
                nodad,
            } => {
                let nodad = if *nodad { " nodad" } else { "" };
                write!(f, "addr    {ns}  {dev} {address}{nodad}")
            }
            Step::AddNetem { ns, dev, netem } => write!(f, "netem   {ns}  {dev} {netem}"),
            Step::SetUp { ns, dev } => write!(f, "up      {ns}  {dev}"),
            Step::AddRoute { ns, to, via } => write!(f, "route   {ns}  {to} via {via}"),
            Step::CreateTap { ns, dev, mtu, .. } => {
                write!(f, "tap     {ns}  {dev}")?;
                match mtu {
                    Some(mtu) => write!(f, " mtu {mtu}"),
                    None => Ok(()),
                }
            }
            Step::StartVm(spec) => {
                write!(
                    f,
                    "vm      {}  {} kernel {} cpus {} memory {}MiB",
                    spec.ns, spec.node, spec.kernel, spec.cpus, spec.memory_mib
                )?;
                for nic in &spec.nics {
                    write!(f, " {}={}", nic.iface, nic.tap)?;
                    for address in &nic.addresses {
                        write!(f, " {address}")?;
                    }
                }
                for route in &spec.routes {
                    write!(f, ", route {} via {}", route.to, route.via)?;
                }
                Ok(())
            }
            Step::Exec { ns, command, .. } => write!(f, "exec    {ns}  {command}"),
        }
    }
}

impl fmt::Display for Undo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undo::DeleteNamespace { ns } => write!(f, "delete netns {ns}"),
            Undo::RemoveContainer { name } => write!(f, "remove container {name}"),
            Undo::DeleteLink { ns, dev } => write!(f, "delete link  {ns}  {dev}"),
            Undo::StopVm { node } => write!(f, "stop vm      {node}"),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lab {}: prefix {}, tag {}, pools {} {}",
            self.lab, self.prefix, self.tag, self.pools.ipv4, self.pools.ipv6
        )?;
        writeln!(f, "up ({} steps):", self.steps.len())?;
        let width = self.steps.len().to_string().len();
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>width$}. {step}", i + 1)?;
        }
        let teardown = self.teardown();
        writeln!(f, "down ({} steps):", teardown.len())?;
        let width = teardown.len().to_string().len();
        for (i, undo) in teardown.iter().enumerate() {
            writeln!(f, "  {:>width$}. {undo}", i + 1)?;
        }
        Ok(())
    }
}
