//! Reads the lab's own TOML topology format.

use std::net::IpAddr;

use super::diag::{Sink, Span, Spanned};
use super::model::{Addressing, Impairment, Link, Node, NodeKind, Pools, Route, Topology};
use super::units::{Cidr, DURATION_UNITS, Nanos, Percent, RATE_UNITS, Rate};
use super::value::{self, Fields, Kind, Value};
use super::{default_pools, endpoint};

const TOP: &[&str] = &["name", "pool", "nodes", "links", "deploy"];
const POOL: &[&str] = &["ipv4", "ipv6"];
const NODE: &[&str] = &[
    "kind",
    "exec",
    "routes",
    "forwarding",
    "kernel",
    "cpus",
    "memory",
    "image",
    "cmd",
];
const VM_FIELDS: &[&str] = &["kernel", "cpus", "memory"];
const CONTAINER_FIELDS: &[&str] = &["image", "cmd"];
const KINDS: &str = "netns, bridge, host, vm, container";
const ROUTE: &[&str] = &["to", "via"];
const LINK: &[&str] = &["endpoints", "addresses", "mtu", "impair"];
const IMPAIR: &[&str] = &[
    "delay",
    "jitter",
    "loss",
    "duplicate",
    "reorder",
    "corrupt",
    "rate",
];

/// Reads a topology; `None` when even its name cannot be read.
pub(crate) fn read(root: &Value, sink: &mut Sink) -> Option<Topology> {
    let mut top = Fields::of(root, "the topology", sink)?;
    let name = match top.get("name") {
        Some(v) => value::string(v, "`name`", sink),
        None => {
            sink.error(
                "topology::missing_field",
                Span::new(0, 0),
                "the topology has no `name`",
            )
            .help("add a line like `name = \"my-lab\"` at the top");
            None
        }
    };
    let pool = top.get("pool").and_then(|v| pools(v, sink));
    let mut nodes = Vec::new();
    if let Some(table) = top.get("nodes")
        && let Some(mut entries) = Fields::of(table, "`nodes`", sink)
    {
        for (key, value) in entries.rest() {
            nodes.extend(node(key, value, sink));
        }
    }
    let mut links = Vec::new();
    if let Some(list) = top.get("links") {
        for item in value::array(list, "`links`", sink).unwrap_or_default() {
            links.extend(link(item, sink));
        }
    }
    let deploy = match top.get("deploy") {
        Some(v) => crate::deploy::read(v, Some(&nodes), sink),
        None => Some(Vec::new()),
    };
    top.finish(sink, "the topology", TOP, &[]);
    let name = name?;
    let defaults = default_pools(&name.value);
    let (ipv4, ipv6) = pool.unwrap_or_default();
    let pools = Pools {
        ipv4: ipv4.unwrap_or(defaults.ipv4),
        ipv6: ipv6.unwrap_or(defaults.ipv6),
    };
    Some(Topology {
        name,
        nodes,
        links,
        pools,
        deploy: deploy?,
    })
}

/// Reads `[pool]`: the IPv4 and IPv6 pools given (invalid ones are reported and left out).
fn pools(value: &Value, sink: &mut Sink) -> Option<(Option<Cidr>, Option<Cidr>)> {
    let mut fields = Fields::of(value, "`pool`", sink)?;
    let ipv4 = fields.get("ipv4").and_then(|v| pool(v, false, 24, sink));
    let ipv6 = fields.get("ipv6").and_then(|v| pool(v, true, 64, sink));
    fields.finish(sink, "`pool`", POOL, &[]);
    Some((ipv4, ipv6))
}

fn pool(value: &Value, v6: bool, max: u8, sink: &mut Sink) -> Option<Cidr> {
    let what = if v6 { "IPv6 pool" } else { "IPv4 pool" };
    let cidr = value::parsed::<Cidr>(value, what, "topology::bad_cidr", "", sink)?;
    if cidr.value.is_ipv6() != v6 || cidr.value.prefix > max {
        sink.error(
            "topology::bad_cidr",
            cidr.span,
            format!(
                "the {what} must be an {} network of prefix /{max} or shorter",
                if v6 { "IPv6" } else { "IPv4" }
            ),
        );
        return None;
    }
    Some(cidr.value.network())
}

fn node(key: &Spanned<String>, value: &Value, sink: &mut Sink) -> Option<Node> {
    let what = format!("node `{}`", key.value);
    let mut fields = Fields::of(value, &what, sink)?;
    let kind_value = fields.get("kind");
    let kind_name = kind_value.and_then(|v| value::string(v, "`kind`", sink));
    let kind_span = kind_name.as_ref().map_or(key.span, |k| k.span);
    let text = |fields: &mut Fields<'_>, name: &str, sink: &mut Sink| {
        fields
            .get(name)
            .and_then(|v| value::string(v, &format!("`{name}`"), sink))
            .map(|s| s.value)
    };
    let number = |fields: &mut Fields<'_>, name: &str, sink: &mut Sink| {
        fields
            .get(name)
            .and_then(|v| value::integer::<u32>(v, &format!("`{name}`"), sink))
            .map(|s| s.value)
    };
    let kind = match kind_name.as_ref().map_or("netns", |k| k.value.as_str()) {
        "netns" => NodeKind::Netns,
        "bridge" => NodeKind::Bridge,
        "host" => NodeKind::Host,
        "vm" => NodeKind::Vm {
            kernel: text(&mut fields, "kernel", sink),
            cpus: number(&mut fields, "cpus", sink),
            memory: number(&mut fields, "memory", sink),
        },
        "container" => NodeKind::Container {
            image: text(&mut fields, "image", sink),
            cmd: fields
                .get("cmd")
                .and_then(|v| value::command(v, "`cmd`", sink))
                .map(|c| c.value),
        },
        other => {
            sink.error(
                "topology::unknown_kind",
                kind_span,
                format!("unknown node kind `{other}`"),
            )
            .help(format!("expected one of: {KINDS}"));
            NodeKind::Netns
        }
    };
    for (fields_of, kind_of) in [(VM_FIELDS, "vm"), (CONTAINER_FIELDS, "container")] {
        if kind.name() == kind_of {
            continue;
        }
        for name in fields_of {
            if let Some(span) = fields.key_span(name) {
                fields.get(name);
                sink.error(
                    "topology::wrong_kind_field",
                    span,
                    format!("`{name}` applies only to nodes of kind `{kind_of}`"),
                );
            }
        }
    }
    let exec = fields
        .get("exec")
        .map(|v| value::strings(v, "`exec`", sink))
        .unwrap_or_default();
    let forwarding = fields
        .get("forwarding")
        .and_then(|v| value::boolean(v, "`forwarding`", sink))
        .unwrap_or(false);
    let routes = fields
        .get("routes")
        .and_then(|v| value::array(v, "`routes`", sink))
        .unwrap_or_default()
        .iter()
        .filter_map(|r| route(r, sink))
        .collect();
    fields.finish(sink, &what, NODE, &[]);
    Some(Node {
        name: key.clone(),
        kind: Spanned::new(kind, kind_span),
        exec,
        routes,
        forwarding,
    })
}

fn route(value: &Value, sink: &mut Sink) -> Option<Route> {
    let mut fields = Fields::of(value, "a route", sink)?;
    let to = fields
        .get("to")
        .and_then(|v| value::string(v, "`to`", sink));
    let via = fields.get("via").and_then(|v| {
        let text = value::string(v, "`via`", sink)?;
        match text.value.parse::<IpAddr>() {
            Ok(ip) => Some(Spanned::new(ip, text.span)),
            Err(_) => {
                sink.error(
                    "topology::bad_address",
                    text.span,
                    format!("`{}` is not an IP address", text.value),
                );
                None
            }
        }
    });
    let missing = fields.key_span("to").is_none() || fields.key_span("via").is_none();
    if missing {
        sink.error(
            "topology::missing_field",
            fields.span,
            "a route needs `to` and `via`",
        );
    }
    fields.finish(sink, "a route", ROUTE, &[]);
    let (Some(to), Some(via)) = (to, via) else {
        return None;
    };
    let dest = if to.value == "default" {
        let any = if via.value.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        };
        Cidr {
            addr: any,
            prefix: 0,
        }
    } else {
        match to.value.parse::<Cidr>() {
            Ok(cidr) => cidr.network(),
            Err(message) => {
                sink.error(
                    "topology::bad_cidr",
                    to.span,
                    format!("bad route destination: {message}"),
                )
                .help("write a network like `10.0.2.0/24`, or `default`");
                return None;
            }
        }
    };
    Some(Route {
        to: Spanned::new(dest, to.span),
        via,
    })
}

fn link(value: &Value, sink: &mut Sink) -> Option<Link> {
    let mut fields = Fields::of(value, "a link", sink)?;
    let span = fields.span;
    let endpoints = fields.get("endpoints").map(|v| {
        value::strings(v, "`endpoints`", sink)
            .into_iter()
            .filter_map(|e| endpoint(&e, sink))
            .collect::<Vec<_>>()
    });
    let endpoints_span = fields.get("endpoints").map_or(span, |v| v.span);
    let addressing = match fields.get("addresses") {
        Some(v) => addresses(v, sink).map_or(Addressing::Pool, Addressing::Explicit),
        None => Addressing::Pool,
    };
    let mtu = fields
        .get("mtu")
        .and_then(|v| value::integer::<u32>(v, "`mtu`", sink));
    let impair = fields.get("impair").map(|v| impairments(v, sink));
    fields.finish(sink, "a link", LINK, &[]);
    let Some(endpoints) = endpoints else {
        sink.error("topology::missing_field", span, "a link needs `endpoints`")
            .help("add `endpoints = [\"a:eth0\", \"b:eth0\"]`");
        return None;
    };
    let endpoints: [_; 2] = match endpoints.try_into() {
        Ok(pair) => pair,
        Err(list) => {
            if list.len() != 2 {
                sink.error(
                    "topology::endpoint_count",
                    endpoints_span,
                    format!("a link has exactly 2 endpoints, not {}", list.len()),
                );
            }
            return None;
        }
    };
    Some(Link {
        span,
        endpoints,
        addressing,
        addresses: Default::default(),
        mtu,
        impair: impair.flatten().unwrap_or_default(),
    })
}

fn addresses(value: &Value, sink: &mut Sink) -> Option<Spanned<Vec<Vec<Spanned<Cidr>>>>> {
    let items = value::array(value, "`addresses`", sink)?;
    let cidr = |v: &Value, sink: &mut Sink| {
        value::parsed::<Cidr>(
            v,
            "address",
            "topology::bad_cidr",
            "write an address with its prefix length, like `10.0.0.1/24` or `fd00::1/64`",
            sink,
        )
    };
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        let list = match &item.kind {
            Kind::Array(inner) => inner.iter().map(|v| cidr(v, sink)).collect::<Vec<_>>(),
            _ => vec![cidr(item, sink)],
        };
        ok &= list.iter().all(Option::is_some);
        out.push(list.into_iter().flatten().collect());
    }
    ok.then(|| Spanned::new(out, value.span))
}

/// Reads `impair`: one table for both directions, or one per endpoint.
pub(crate) fn impairments(value: &Value, sink: &mut Sink) -> Option<[Impairment; 2]> {
    match &value.kind {
        Kind::Array(items) if items.len() == 2 => {
            Some([impairment(&items[0], sink)?, impairment(&items[1], sink)?])
        }
        Kind::Array(items) => {
            sink.error(
                "topology::endpoint_count",
                value.span,
                format!(
                    "`impair` lists one table per endpoint (2), not {}",
                    items.len()
                ),
            );
            None
        }
        _ => impairment(value, sink).map(|i| [i.clone(), i]),
    }
}

/// Reads field `name` of `fields` as a value with a unit; `ok` turns false if it is bad.
fn unit<T: std::str::FromStr<Err = String>>(
    fields: &mut Fields<'_>,
    name: &str,
    (code, help): (&'static str, &str),
    ok: &mut bool,
    sink: &mut Sink,
) -> Option<Spanned<T>> {
    let parsed = value::parsed(fields.get(name)?, &format!("`{name}`"), code, help, sink);
    *ok &= parsed.is_some();
    parsed
}

/// Reads an impairment table.
fn impairment(value: &Value, sink: &mut Sink) -> Option<Impairment> {
    let mut fields = Fields::of(value, "`impair`", sink)?;
    let mut ok = true;
    let durations = format!("units: {DURATION_UNITS}");
    let duration = ("topology::bad_duration", durations.as_str());
    let percent = ("topology::bad_percentage", "write a percentage like `0.1%`");
    let rates = format!("units: {RATE_UNITS}");
    let f = &mut fields;
    let delay: Option<Spanned<Nanos>> = unit(f, "delay", duration, &mut ok, sink);
    let jitter: Option<Spanned<Nanos>> = unit(f, "jitter", duration, &mut ok, sink);
    let loss: Option<Spanned<Percent>> = unit(f, "loss", percent, &mut ok, sink);
    let duplicate: Option<Spanned<Percent>> = unit(f, "duplicate", percent, &mut ok, sink);
    let reorder: Option<Spanned<Percent>> = unit(f, "reorder", percent, &mut ok, sink);
    let corrupt: Option<Spanned<Percent>> = unit(f, "corrupt", percent, &mut ok, sink);
    let rate: Option<Spanned<Rate>> =
        unit(f, "rate", ("topology::bad_rate", &rates), &mut ok, sink);
    if fields.key_span("delay").is_none() {
        for name in ["jitter", "reorder"] {
            if let Some(span) = fields.key_span(name) {
                sink.error(
                    "topology::needs_delay",
                    span,
                    format!("`{name}` needs a `delay`"),
                );
                ok = false;
            }
        }
    }
    fields.finish(sink, "`impair`", IMPAIR, &[]);
    let value = |p: Option<Spanned<Percent>>| p.map(|p| p.value);
    ok.then(|| Impairment {
        delay: delay.map(|d| d.value),
        jitter: jitter.map(|j| j.value),
        loss: value(loss),
        duplicate: value(duplicate),
        reorder: value(reorder),
        corrupt: value(corrupt),
        rate: rate.map(|r| r.value),
    })
}
