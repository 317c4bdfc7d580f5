//! Checks of a whole topology, and address assignment from the pools.

use std::collections::HashMap;
use std::net::IpAddr;

use super::diag::{Sink, Span, Spanned};
use super::model::{Addressing, NodeKind, Topology};
use super::units::Cidr;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub(crate) const IFNAME_MAX: usize = 15;
const LAB_NAME_MAX: usize = 32;
const NODE_NAME_MAX: usize = 64;
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;
const IPV6_MIN_MTU: u32 = 1280;

/// Checks `topo`, reporting every problem to `sink`, and fills in pool addresses.
pub(crate) fn check(topo: &mut Topology, sink: &mut Sink) {
    check_names(topo, sink);
    check_nodes(topo, sink);
    check_links(topo, sink);
    assign_addresses(topo, sink);
    check_routes(topo, sink);
}

fn check_names(topo: &Topology, sink: &mut Sink) {
    let name = &topo.name;
    let valid = !name.value.is_empty()
        && name.value.len() <= LAB_NAME_MAX
        && !name.value.starts_with('-')
        && name
            .value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        sink.error(
            "topology::bad_name",
            name.span,
            format!("bad lab name `{}`", name.value),
        )
        .help(format!(
            "use lowercase letters, digits, `_` and `-` (not first), at most {LAB_NAME_MAX} bytes"
        ));
    }
    for node in &topo.nodes {
        let n = &node.name;
        let valid = !n.value.is_empty()
            && n.value.len() <= NODE_NAME_MAX
            && n.value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            sink.error(
                "topology::bad_name",
                n.span,
                format!("bad node name `{}`", n.value),
            )
            .help(format!(
                "use letters, digits, `-` and `_`, at most {NODE_NAME_MAX} bytes"
            ));
        }
    }
}

fn check_nodes(topo: &Topology, sink: &mut Sink) {
    let mut host: Option<Span> = None;
    for node in &topo.nodes {
        let kind = &node.kind;
        match &kind.value {
            NodeKind::Vm {
                kernel,
                cpus,
                memory,
            } => crate::node::vm::check(kernel.as_deref(), *cpus, *memory, kind.span, sink),
            NodeKind::Container { image, .. } => {
                if image.is_none() {
                    sink.error(
                        "topology::container_image",
                        kind.span,
                        format!("container node `{}` has no `image`", node.name.value),
                    )
                    .help("e.g. image = \"disgrafs-lab/base\" (built by `lab images build`)");
                }
            }
            NodeKind::Bridge => {
                if let Err(why) = ifname(&node.name.value) {
                    sink.error(
                        "topology::bad_ifname",
                        node.name.span,
                        format!(
                            "bridge `{}` cannot be a device name: {why}",
                            node.name.value
                        ),
                    )
                    .help("a bridge's device is named after its node");
                }
            }
            NodeKind::Host => {
                if let Some(first) = host {
                    sink.error(
                        "topology::second_host",
                        node.name.span,
                        "only one node can be the host",
                    )
                    .label(first, "the host is already this node");
                }
                host = Some(node.name.span);
                if node.forwarding || !node.routes.is_empty() {
                    sink.error(
                        "topology::host_routing",
                        node.name.span,
                        format!(
                            "node `{}` is the host: the lab does not change the host's \
                             forwarding or routes",
                            node.name.value
                        ),
                    );
                }
            }
            NodeKind::Netns => {}
        }
    }
}

/// Checks an interface name the way the kernel does.
pub(crate) fn ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("it is empty".into())
    } else if name.len() > IFNAME_MAX {
        Err(format!(
            "it is {} bytes long, the kernel allows {IFNAME_MAX}",
            name.len()
        ))
    } else if name == "." || name == ".." || name == "lo" {
        Err(format!("`{name}` is reserved"))
    } else if name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()) {
        Err("it contains `/`, `:` or a space".into())
    } else {
        Ok(())
    }
}

fn check_links(topo: &Topology, sink: &mut Sink) {
    let names: Vec<&str> = topo.nodes.iter().map(|n| n.name.value.as_str()).collect();
    let mut used: HashMap<(&str, &str), Span> = HashMap::new();
    for link in &topo.links {
        for end in &link.endpoints {
            if topo.node(&end.node.value).is_none() {
                let shown: Vec<&str> = names.iter().take(10).copied().collect();
                let more = if names.len() > shown.len() {
                    ", …"
                } else {
                    ""
                };
                sink.error(
                    "topology::unknown_node",
                    end.node.span,
                    format!("unknown node `{}`", end.node.value),
                )
                .help(format!("nodes: {}{more}", shown.join(", ")));
            }
            if let Err(why) = ifname(&end.iface.value) {
                sink.error(
                    "topology::bad_ifname",
                    end.iface.span,
                    format!("bad interface name `{}`: {why}", end.iface.value),
                );
            }
            let key = (end.node.value.as_str(), end.iface.value.as_str());
            if let Some(first) = used.get(&key) {
                sink.error(
                    "topology::endpoint_reused",
                    end.iface.span,
                    format!("`{}:{}` is used by two links", key.0, key.1),
                )
                .label(end.iface.span, "used again here")
                .label(*first, "first used here");
            } else {
                used.insert(key, end.iface.span);
            }
        }
        if let Some(mtu) = &link.mtu
            && !MTU_RANGE.contains(&mtu.value)
        {
            sink.error(
                "topology::bad_mtu",
                mtu.span,
                format!("MTU {} is out of range", mtu.value),
            )
            .help(format!("use {} to {}", MTU_RANGE.start(), MTU_RANGE.end()));
        }
    }
}

/// An L2 segment: one point-to-point link, or every link on a set of connected bridges.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Segment {
    Link(usize),
    Bridge(usize),
}

fn is_bridge(topo: &Topology, node: &str) -> bool {
    topo.node(node)
        .is_some_and(|n| n.kind.value == NodeKind::Bridge)
}

/// Groups links into segments: links on bridges joined by bridge-to-bridge links share one.
fn segments(topo: &Topology) -> Vec<Segment> {
    let bridges: Vec<&str> = topo
        .nodes
        .iter()
        .filter(|n| n.kind.value == NodeKind::Bridge)
        .map(|n| n.name.value.as_str())
        .collect();
    let index = |name: &str| bridges.iter().position(|b| *b == name);
    let mut parent: Vec<usize> = (0..bridges.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for link in &topo.links {
        if let [Some(a), Some(b)] = link.endpoints.each_ref().map(|e| index(&e.node.value)) {
            let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
            parent[ra] = rb;
        }
    }
    topo.links
        .iter()
        .enumerate()
        .map(
            |(i, link)| match link.endpoints.iter().find_map(|e| index(&e.node.value)) {
                Some(b) => Segment::Bridge(root(&mut parent, b)),
                None => Segment::Link(i),
            },
        )
        .collect()
}

fn assign_addresses(topo: &mut Topology, sink: &mut Sink) {
    let segment_of = segments(topo);
    // Explicit addresses: placed on the ends that are not bridge ports.
    let mut explicit: Vec<(Segment, Spanned<Cidr>)> = Vec::new();
    let mut ends_of: Vec<Vec<usize>> = Vec::new();
    let mut pending: Vec<(usize, usize, Vec<Cidr>)> = Vec::new();
    for (i, link) in topo.links.iter().enumerate() {
        let ends: Vec<usize> = (0..2)
            .filter(|&e| !is_bridge(topo, &link.endpoints[e].node.value))
            .collect();
        if let Addressing::Explicit(lists) = &link.addressing {
            if lists.value.len() != ends.len() {
                sink.error(
                    "topology::address_count",
                    lists.span,
                    format!(
                        "{} address entries for {} link ends that are not bridge ports",
                        lists.value.len(),
                        ends.len()
                    ),
                )
                .help("give one entry (an address or a list of addresses) per end, bridge ports excepted");
            } else {
                for (end, list) in ends.iter().zip(&lists.value) {
                    explicit.extend(list.iter().map(|c| (segment_of[i], c.clone())));
                    pending.push((i, *end, list.iter().map(|c| c.value).collect()));
                }
            }
        }
        ends_of.push(ends);
    }
    let mut reported: Vec<(Segment, Cidr)> = Vec::new();
    for (i, (seg_a, a)) in explicit.iter().enumerate() {
        for (seg_b, b) in &explicit[..i] {
            if reported.contains(&(*seg_a, a.value.network())) {
                break;
            }
            let clash = if seg_a == seg_b {
                (a.value.addr == b.value.addr).then_some(("is used twice", "already used here"))
            } else {
                a.value
                    .overlaps(&b.value)
                    .then_some(("overlaps a subnet of another link", "overlaps this one"))
            };
            if let Some((what, other)) = clash {
                sink.error("topology::overlap", a.span, format!("`{}` {what}", a.value))
                    .label(a.span, "this one")
                    .label(b.span, other);
                reported.push((*seg_a, a.value.network()));
            }
        }
    }
    let taken: Vec<Cidr> = explicit.iter().map(|(_, c)| c.value.network()).collect();

    // Segments in order of first appearance, with their pool links.
    let mut order: Vec<Segment> = Vec::new();
    for seg in &segment_of {
        if !order.contains(seg) {
            order.push(*seg);
        }
    }
    let mut allocator = Allocator {
        taken,
        pools: topo.pools,
    };
    for seg in order {
        let links: Vec<usize> = (0..topo.links.len())
            .filter(|&i| segment_of[i] == seg)
            .collect();
        let is_pool = |i: &usize| matches!(topo.links[*i].addressing, Addressing::Pool);
        let pool_links: Vec<usize> = links.iter().copied().filter(is_pool).collect();
        if pool_links.is_empty() {
            continue;
        }
        let explicit_link = links
            .iter()
            .find(|&&i| matches!(topo.links[i].addressing, Addressing::Explicit(_)));
        if let Some(&other) = explicit_link {
            sink.error(
                "topology::mixed_addressing",
                topo.links[pool_links[0]].span,
                "this link has no addresses, but another link on the same bridge has",
            )
            .label(topo.links[other].span, "addresses given here")
            .help("give addresses to every link on a bridge, or to none");
            continue;
        }
        let hosts: Vec<(usize, usize)> = pool_links
            .iter()
            .flat_map(|&i| ends_of[i].iter().map(move |&e| (i, e)))
            .collect();
        if hosts.is_empty() {
            continue;
        }
        let first = topo.links[pool_links[0]].span;
        let Some(v4) = allocator.ipv4(hosts.len()) else {
            sink.error(
                "topology::pool_exhausted",
                first,
                format!(
                    "the IPv4 pool {} has no room for this segment",
                    allocator.pools.ipv4
                ),
            );
            continue;
        };
        let small_mtu = pool_links.iter().any(|&i| {
            topo.links[i]
                .mtu
                .as_ref()
                .is_some_and(|m| m.value < IPV6_MIN_MTU)
        });
        let v6 = if small_mtu {
            None
        } else {
            let Some(v6) = allocator.ipv6() else {
                sink.error(
                    "topology::pool_exhausted",
                    first,
                    format!(
                        "the IPv6 pool {} has no room for this segment",
                        allocator.pools.ipv6
                    ),
                );
                continue;
            };
            Some(v6)
        };
        for (n, (link, end)) in hosts.into_iter().enumerate() {
            let host = n as u128 + 1;
            let mut addrs = vec![offset(v4, host)];
            addrs.extend(v6.map(|net| offset(net, host)));
            topo.links[link].addresses[end] = addrs;
        }
    }
    for (link, end, list) in pending {
        topo.links[link].addresses[end] = list;
    }
}

/// The address `host` places after the network of `net`, with `net`'s prefix.
fn offset(net: Cidr, host: u128) -> Cidr {
    let addr = match net.addr {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(host as u32)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(host)).into()),
    };
    Cidr {
        addr,
        prefix: net.prefix,
    }
}

/// Hands out subnets of the pools that overlap nothing taken.
struct Allocator {
    taken: Vec<Cidr>,
    pools: super::model::Pools,
}

impl Allocator {
    /// The first free IPv4 subnet for `hosts` hosts (at least a /24's worth of prefix).
    fn ipv4(&mut self, hosts: usize) -> Option<Cidr> {
        let needed = (hosts as u64 + 2).next_power_of_two().max(256);
        let bits = needed.trailing_zeros() as u8;
        self.next(self.pools.ipv4, 32 - bits)
    }

    /// The first free IPv6 /64.
    fn ipv6(&mut self) -> Option<Cidr> {
        self.next(self.pools.ipv6, 64)
    }

    fn next(&mut self, pool: Cidr, prefix: u8) -> Option<Cidr> {
        if prefix < pool.prefix {
            return None;
        }
        let width: u32 = if pool.is_ipv6() { 128 } else { 32 };
        let step = 1u128.checked_shl(width - u32::from(prefix))?;
        let count = 1u128
            .checked_shl(u32::from(prefix - pool.prefix))
            .unwrap_or(u128::MAX)
            .min(1 << 20);
        let base = pool.network();
        for k in 0..count {
            let candidate = Cidr {
                prefix,
                ..offset(base, k * step)
            };
            if !self.taken.iter().any(|t| t.overlaps(&candidate)) {
                self.taken.push(candidate);
                return Some(candidate);
            }
        }
        None
    }
}

fn check_routes(topo: &Topology, sink: &mut Sink) {
    for node in &topo.nodes {
        let subnets: Vec<Cidr> = topo
            .links
            .iter()
            .flat_map(|l| {
                l.endpoints
                    .iter()
                    .zip(&l.addresses)
                    .filter(|(e, _)| e.node.value == node.name.value)
                    .flat_map(|(_, a)| a.iter().copied())
            })
            .collect();
        for route in &node.routes {
            if route.to.value.is_ipv6() != route.via.value.is_ipv6() {
                sink.error(
                    "topology::route_family",
                    route.via.span,
                    "the gateway and the destination are of different IP versions",
                )
                .label(route.to.span, "destination");
            } else if !subnets.iter().any(|s| s.contains(route.via.value)) {
                sink.error(
                    "topology::unreachable_gateway",
                    route.via.span,
                    format!(
                        "gateway `{}` is on no subnet of node `{}`",
                        route.via.value, node.name.value
                    ),
                );
            }
        }
    }
}
