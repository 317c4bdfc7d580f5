//! Reads containerlab's `.clab.yml` into the same model as the TOML format.
//!
//! Supported: node kinds `linux` (a container node when it has an `image`, with `cmd` as a
//! string or a list; a network namespace without one), `bridge` and `host`; `defaults`,
//! `kinds` and `groups` inheritance (node > group > kind > defaults); node `exec`; links in the
//! brief (`endpoints: ["a:eth1", "b:eth1"]`) and extended (`type: veth`, `type: host`) formats
//! with `mtu`. Other recognised settings give warnings; unknown fields are errors. Links get no
//! addresses: containerlab users set them with `exec`.

use super::diag::{Sink, Span, Spanned};
use super::model::{Addressing, Endpoint, Link, Node, NodeKind, Topology};
use super::value::{self, Fields, Kind, Value};
use super::{default_pools, endpoint};

const TOP: &[&str] = &["name", "topology"];
const TOP_UNSUPPORTED: &[&str] = &["prefix", "mgmt", "settings"];
const TOPOLOGY: &[&str] = &["nodes", "links", "kinds", "defaults", "groups"];
const NODE: &[&str] = &["kind", "group", "image", "cmd", "exec"];
const NODE_UNSUPPORTED: &[&str] = &[
    "aliases",
    "auto-remove",
    "binds",
    "cap-add",
    "certificate",
    "components",
    "config",
    "cpu",
    "cpu-set",
    "devices",
    "dns",
    "entrypoint",
    "enforce-startup-config",
    "env",
    "env-files",
    "extras",
    "healthcheck",
    "image-pull-policy",
    "labels",
    "license",
    "memory",
    "mgmt-ipv4",
    "mgmt-ipv6",
    "network-mode",
    "ports",
    "publish",
    "restart-policy",
    "runtime",
    "shm-size",
    "stages",
    "startup-config",
    "startup-delay",
    "suppress-startup-config",
    "sysctls",
    "type",
    "user",
    "wait-for",
];
const LINK: &[&str] = &["endpoints", "type", "endpoint", "host-interface", "mtu"];
const LINK_UNSUPPORTED: &[&str] = &["vars", "labels"];
const ENDPOINT: &[&str] = &["node", "interface"];
const ENDPOINT_UNSUPPORTED: &[&str] = &["mac", "vars"];
const KINDS: &str = "linux, bridge, host";

/// Node settings from one table: a node, a group, a kind or the defaults.
#[derive(Default)]
struct Layer {
    kind: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    cmd: Option<Spanned<Vec<String>>>,
    exec: Option<Vec<Spanned<String>>>,
}

fn layer(value: &Value, what: &str, sink: &mut Sink) -> Layer {
    let Some(mut fields) = Fields::of(value, what, sink) else {
        return Layer::default();
    };
    let text = |fields: &mut Fields<'_>, name: &str, sink: &mut Sink| {
        fields
            .get(name)
            .and_then(|v| value::string(v, &format!("`{name}`"), sink))
    };
    let kind = text(&mut fields, "kind", sink);
    let group = text(&mut fields, "group", sink);
    let image = text(&mut fields, "image", sink);
    let cmd = fields
        .get("cmd")
        .and_then(|v| value::command(v, "`cmd`", sink));
    let exec = fields
        .get("exec")
        .map(|v| value::strings(v, "`exec`", sink));
    fields.finish(sink, what, NODE, NODE_UNSUPPORTED);
    Layer {
        kind,
        group,
        image,
        cmd,
        exec,
    }
}

fn named_layers(
    value: Option<&Value>,
    what: &str,
    sink: &mut Sink,
) -> Vec<(Spanned<String>, Layer)> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(mut fields) = Fields::of(value, &format!("`{what}`"), sink) else {
        return Vec::new();
    };
    fields
        .rest()
        .map(|(key, v)| {
            (
                key.clone(),
                layer(v, &format!("{what} `{}`", key.value), sink),
            )
        })
        .collect()
}

/// Reads a containerlab topology; `None` when even its name cannot be read.
pub(crate) fn read(root: &Value, sink: &mut Sink) -> Option<Topology> {
    let mut top = Fields::of(root, "the topology", sink)?;
    let name = match top.get("name") {
        Some(v) => value::string(v, "`name`", sink),
        None => {
            sink.error(
                "topology::missing_field",
                Span::new(0, 0),
                "the topology has no `name`",
            );
            None
        }
    };
    let body = top.get("topology");
    top.finish(sink, "the file", TOP, TOP_UNSUPPORTED);
    let Some(body) = body else {
        sink.error(
            "topology::missing_field",
            Span::new(0, 0),
            "the file has no `topology` section",
        );
        return None;
    };
    let mut topo = Fields::of(body, "`topology`", sink)?;
    let defaults = topo
        .get("defaults")
        .map(|v| layer(v, "`defaults`", sink))
        .unwrap_or_default();
    let kinds = named_layers(topo.get("kinds"), "kind", sink);
    let groups = named_layers(topo.get("groups"), "group", sink);
    let node_layers = named_layers(topo.get("nodes"), "node", sink);
    let link_values = topo.get("links");
    topo.finish(sink, "`topology`", TOPOLOGY, &[]);

    let mut nodes = Vec::new();
    for (name, own) in &node_layers {
        let group = own
            .group
            .as_ref()
            .or(defaults.group.as_ref())
            .and_then(|g| {
                let found = groups.iter().find(|(n, _)| n.value == g.value);
                if found.is_none() {
                    sink.error(
                        "topology::unknown_group",
                        g.span,
                        format!("unknown group `{}`", g.value),
                    );
                }
                found.map(|(_, l)| l)
            });
        let kind = own
            .kind
            .as_ref()
            .or(group.and_then(|g| g.kind.as_ref()))
            .or(defaults.kind.as_ref());
        let Some(kind) = kind else {
            sink.error(
                "topology::missing_field",
                name.span,
                format!("node `{}` has no `kind`", name.value),
            )
            .help(format!(
                "set `kind` on the node, its group or in `defaults`: {KINDS}"
            ));
            continue;
        };
        let by_kind = kinds
            .iter()
            .find(|(n, _)| n.value == kind.value)
            .map(|(_, l)| l);
        let layers = [Some(own), group, by_kind, Some(&defaults)];
        let node_kind =
            match kind.value.as_str() {
                "linux" => {
                    let image = layers.into_iter().flatten().find_map(|l| l.image.clone());
                    let cmd = layers.into_iter().flatten().find_map(|l| l.cmd.clone());
                    match image {
                        Some(image) => NodeKind::Container {
                            image: Some(image.value),
                            cmd: cmd.map(|c| c.value),
                        },
                        None => {
                            sink.warning(
                            "topology::linux_without_image",
                            name.span,
                            format!(
                                "node `{}` of kind `linux` has no `image`: it runs as a network \
                                 namespace{}",
                                name.value,
                                if cmd.is_some() { ", and its `cmd` is ignored" } else { "" }
                            ),
                        );
                            NodeKind::Netns
                        }
                    }
                }
                "bridge" => NodeKind::Bridge,
                "host" => NodeKind::Host,
                other => {
                    sink.error(
                        "topology::unknown_kind",
                        kind.span,
                        format!("node kind `{other}` is not supported"),
                    )
                    .help(format!("supported kinds: {KINDS}"));
                    NodeKind::Netns
                }
            };
        let exec = layers
            .into_iter()
            .flatten()
            .find_map(|l| l.exec.clone())
            .unwrap_or_default();
        nodes.push(Node {
            name: name.clone(),
            kind: Spanned::new(node_kind, kind.span),
            exec,
            routes: Vec::new(),
            forwarding: false,
        });
    }
    let mut links = Vec::new();
    if let Some(list) = link_values {
        for item in value::array(list, "`links`", sink).unwrap_or_default() {
            links.extend(link(item, sink));
        }
    }
    let host_use = links
        .iter()
        .flat_map(|l: &Link| l.endpoints.iter())
        .find(|e| e.node.value == "host")
        .map(|e| e.node.span);
    if let Some(span) = host_use.filter(|_| !nodes.iter().any(|n| n.name.value == "host")) {
        nodes.push(Node {
            name: Spanned::new("host".to_owned(), span),
            kind: Spanned::new(NodeKind::Host, span),
            exec: Vec::new(),
            routes: Vec::new(),
            forwarding: false,
        });
    }
    let name = name?;
    let pools = default_pools(&name.value);
    Some(Topology {
        name,
        nodes,
        links,
        pools,
        deploy: Vec::new(),
    })
}

fn link(value: &Value, sink: &mut Sink) -> Option<Link> {
    let mut fields = Fields::of(value, "a link", sink)?;
    let span = fields.span;
    let kind = fields
        .get("type")
        .and_then(|v| value::string(v, "`type`", sink));
    let mtu = fields
        .get("mtu")
        .and_then(|v| value::integer::<u32>(v, "`mtu`", sink));
    let endpoints = match kind.as_ref().map(|k| k.value.as_str()) {
        None | Some("veth") => fields.get("endpoints").map(|v| {
            (
                v.span,
                value::array(v, "`endpoints`", sink)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| extended_endpoint(e, sink))
                    .collect::<Vec<_>>(),
            )
        }),
        Some("host") => {
            let missing = fields.key_span("endpoint").is_none()
                || fields.key_span("host-interface").is_none();
            let inner = fields
                .get("endpoint")
                .and_then(|e| extended_endpoint(e, sink));
            let host = fields
                .get("host-interface")
                .and_then(|v| value::string(v, "`host-interface`", sink));
            match (inner, host) {
                (Some(inner), Some(host)) => Some((
                    span,
                    vec![
                        inner,
                        Endpoint {
                            node: Spanned::new("host".to_owned(), host.span),
                            iface: host,
                        },
                    ],
                )),
                _ => {
                    if missing {
                        sink.error(
                            "topology::missing_field",
                            span,
                            "a link of type `host` needs `endpoint` and `host-interface`",
                        );
                    }
                    return None;
                }
            }
        }
        Some(other) => {
            let at = kind.as_ref().map_or(span, |k| k.span);
            sink.error(
                "topology::unsupported_link",
                at,
                format!("link type `{other}` is not supported"),
            )
            .help("supported link types: veth, host");
            return None;
        }
    };
    fields.finish(sink, "a link", LINK, LINK_UNSUPPORTED);
    let Some((list_span, endpoints)) = endpoints else {
        sink.error("topology::missing_field", span, "a link needs `endpoints`");
        return None;
    };
    let count = endpoints.len();
    let endpoints: [Endpoint; 2] = endpoints.try_into().ok().or_else(|| {
        sink.error(
            "topology::endpoint_count",
            list_span,
            format!("a link has exactly 2 endpoints, not {count}"),
        );
        None
    })?;
    for e in &endpoints {
        if matches!(e.node.value.as_str(), "mgmt-net" | "macvlan") {
            sink.error(
                "topology::unsupported_link",
                e.node.span,
                format!("`{}` endpoints are not supported", e.node.value),
            );
            return None;
        }
    }
    Some(Link {
        span,
        endpoints,
        addressing: Addressing::Unaddressed,
        addresses: Default::default(),
        mtu,
        impair: Default::default(),
    })
}

/// Reads `"node:iface"` or `{node: n, interface: i}`.
fn extended_endpoint(value: &Value, sink: &mut Sink) -> Option<Endpoint> {
    if !matches!(value.kind, Kind::Table(_)) {
        return value::string(value, "an endpoint", sink).and_then(|s| endpoint(&s, sink));
    }
    let mut fields = Fields::of(value, "an endpoint", sink)?;
    let missing = fields.key_span("node").is_none() || fields.key_span("interface").is_none();
    let node = fields
        .get("node")
        .and_then(|v| value::string(v, "`node`", sink));
    let iface = fields
        .get("interface")
        .and_then(|v| value::string(v, "`interface`", sink));
    let span = fields.span;
    fields.finish(sink, "an endpoint", ENDPOINT, ENDPOINT_UNSUPPORTED);
    match (node, iface) {
        (Some(node), Some(iface)) => Some(Endpoint { node, iface }),
        _ => {
            if missing {
                sink.error(
                    "topology::missing_field",
                    span,
                    "an endpoint needs `node` and `interface`",
                );
            }
            None
        }
    }
}
