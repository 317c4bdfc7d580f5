//! Reads a scenario file and checks it against its topology.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;

use accel::ethtool::Offload;

use super::{
    ACCELERATOR_KINDS, Accelerator, AcceleratorKind, Event, EventAction, Generator, LinkImpairment,
    LinkRef, MonitorMode, Scenario, Target, Variant, WORKLOAD_KINDS, Workload, WorkloadKind,
};
use crate::topology::diag::{Issue, Sink};
use crate::topology::value::{self, Fields, Value};
use crate::topology::{
    self, DURATION_UNITS, Diagnostics, LoadError, Nanos, NodeKind, Span, Spanned, Topology,
    toml_file, validate,
};

const TOP: &[&str] = &[
    "name",
    "topology",
    "seed",
    "repetitions",
    "warmup",
    "window",
    "deploy",
    "variants",
    "workloads",
    "events",
];
const VARIANT: &[&str] = &["name", "accelerators", "impair"];
const MONITOR: &[&str] = &["kind", "node", "iface", "xdp"];
const SOCK_REDIRECT: &[&str] = &["kind", "node", "ports", "min_size"];
/// Ports one socket redirect can scope (its port map's size).
const REDIRECT_PORTS: RangeInclusive<usize> = 1..=accel::sock_redirect::MAX_PORTS as usize;
const CPU_BALANCE: &[&str] = &["kind", "node", "iface", "cpus", "weights"];
const RPS: &[&str] = &["kind", "node", "iface", "cpus"];
/// Weights `accel::cpu_balance` accepts.
const WEIGHT: RangeInclusive<u64> = 0..=accel::cpu_balance::MAX_WEIGHT as u64;
const AFXDP: &[&str] = &["kind", "node", "iface", "ports", "cpus"];
const HTTP_FILTER: &[&str] = &["kind", "node", "iface", "mode", "policy"];
const OFFLOADS: &[&str] = &["kind", "node", "iface", "tx", "tso", "gso", "gro"];
const EVENT: &[&str] = &["at", "link", "set"];
const COMMON: &[&str] = &[
    "kind",
    "from",
    "to",
    "duration",
    "start",
    "from_cpus",
    "to_cpus",
];
const TCP_RR: &[&str] = &["size", "request", "response", "connections"];
const TCP_STREAM: &[&str] = &["message", "write", "connections"];
const UDP_ECHO: &[&str] = &["pps", "size", "generator"];
const HTTP_UPLOAD: &[&str] = &["size", "files", "connections"];
const HTTP_DOWNLOAD: &[&str] = &["size", "connections"];
const HTTP_SEARCH: &[&str] = &["query", "connections"];

const NAME_MAX: usize = 32;
const DEFAULT_REPETITIONS: u32 = 5;
const DEFAULT_WARMUP: Nanos = Nanos(1_000_000_000);
const DEFAULT_WINDOW: Nanos = Nanos(5_000_000_000);
/// Largest message of a TCP workload: 16 MiB.
const MESSAGE: RangeInclusive<u64> = 1..=1 << 24;
const CONNECTIONS: RangeInclusive<u64> = 1..=1024;
/// Bytes of an uploaded or downloaded file (at most 256 MiB).
const HTTP_BODY: RangeInclusive<u64> = 1..=1 << 28;
/// File names an upload connection cycles over.
const HTTP_FILES: RangeInclusive<u64> = 1..=4096;
/// A UDP echo datagram carries a sequence number and a send time (16 bytes), and fits IPv4.
const DATAGRAM: RangeInclusive<u64> = 16..=65_507;
const PPS: RangeInclusive<u64> = 1..=10_000_000;
/// CPU numbers the kernel's affinity masks can hold.
const CPU: RangeInclusive<u64> = 0..=1023;
const REPETITIONS: RangeInclusive<u64> = 1..=10_000;

/// Reads a scenario; `None` when it cannot be complete (errors are in `sink`, those of a
/// topology file in `topology_diagnostics`).
pub(super) fn read(
    root: &Value,
    base: &Path,
    sink: &mut Sink,
    topology_diagnostics: &mut Diagnostics,
) -> Option<Scenario> {
    let mut top = Fields::of(root, "the scenario", sink)?;
    let name = match top.get("name") {
        Some(v) => value::string(v, "`name`", sink).filter(|n| check_name(n, "scenario", sink)),
        None => {
            missing(sink, Span::new(0, 0), "the scenario has no `name`")
                .help("add a line like `name = \"my-scenario\"` at the top");
            None
        }
    };
    let (topology, topology_file) = match top.get("topology") {
        Some(v) => read_topology(v, base, sink, topology_diagnostics),
        None => {
            missing(sink, Span::new(0, 0), "the scenario has no `topology`")
                .help("add `topology = \"topologies/two-hosts.toml\"` (relative to this file)");
            (None, None)
        }
    };
    let topo = topology.as_ref();
    let seed = top
        .get("seed")
        .and_then(|v| value::integer::<u64>(v, "`seed`", sink))
        .map_or(0, |s| s.value);
    let repetitions = top
        .get("repetitions")
        .map_or(Some(DEFAULT_REPETITIONS), |v| {
            bounded(v, "`repetitions`", REPETITIONS, sink).map(|n| n as u32)
        });
    let warmup = top.get("warmup").map_or(Some(DEFAULT_WARMUP), |v| {
        duration(v, "`warmup`", false, sink)
    });
    let window = top.get("window").map_or(Some(DEFAULT_WINDOW), |v| {
        duration(v, "`window`", true, sink)
    });
    let deploy = match top.get("deploy") {
        Some(v) => crate::deploy::read(v, topo.map(|t| &t.nodes[..]), sink),
        None => Some(topo.map_or_else(Vec::new, |t| t.deploy.clone())),
    };
    let variants = read_list(&mut top, "variants", sink, |v, sink| {
        read_variant(v, topo, base, sink)
    });
    let workloads = read_list(&mut top, "workloads", sink, |v, sink| {
        read_workload(v, topo, window.unwrap_or(DEFAULT_WINDOW), sink)
    });
    let events = read_list(&mut top, "events", sink, |v, sink| {
        read_event(v, topo, sink)
    });
    top.finish(sink, "the scenario", TOP, &[]);
    let variants = variants?;
    let workloads = workloads?;
    if variants.is_empty() {
        missing(sink, top_span(root), "the scenario has no `[[variants]]`")
            .help("add at least one: `[[variants]]` with `name = \"off\"`");
    }
    check_unique_variants(&variants, sink);
    if let Some(topo) = topo {
        check_vm_workloads(&workloads, topo, sink);
    }
    if workloads.is_empty() {
        missing(sink, top_span(root), "the scenario has no `[[workloads]]`")
            .help("add at least one, e.g. `kind = \"tcp_rr\"`, `from`, `to`");
    }
    let mut scenario = Scenario {
        name: name?,
        topology: topology?,
        topology_file,
        seed,
        repetitions: repetitions?,
        warmup: warmup?,
        window: window?,
        variants,
        workloads,
        deploy: deploy?,
        events: events?,
    };
    scenario.events.sort_by_key(|e| e.at.value);
    let end = scenario.run_length();
    for event in &scenario.events {
        if event.at.value >= end {
            sink.error(
                "scenario::event_too_late",
                event.at.span,
                format!(
                    "this event at {} comes after the end of each run ({end})",
                    event.at.value
                ),
            )
            .help("a run lasts as long as its longest workload");
        }
    }
    Some(scenario)
}

fn top_span(root: &Value) -> Span {
    Span::new(root.span.start, root.span.start)
}

fn missing<'s>(sink: &'s mut Sink, span: Span, message: &str) -> &'s mut Issue {
    sink.error("scenario::missing_field", span, message.to_owned())
}

/// Reads the array `name` of `fields` item by item; `None` if any item is bad.
fn read_list<T>(
    fields: &mut Fields<'_>,
    name: &str,
    sink: &mut Sink,
    mut item: impl FnMut(&Value, &mut Sink) -> Option<T>,
) -> Option<Vec<T>> {
    let Some(list) = fields.get(name) else {
        return Some(Vec::new());
    };
    let items = value::array(list, &format!("`{name}`"), sink)?;
    let read: Vec<Option<T>> = items.iter().map(|v| item(v, sink)).collect();
    read.into_iter().collect()
}

/// Checks a scenario or variant name: `[a-z0-9_-]`, not starting with `-`, at most 32 bytes.
fn check_name(name: &Spanned<String>, what: &str, sink: &mut Sink) -> bool {
    let n = &name.value;
    let valid = !n.is_empty()
        && n.len() <= NAME_MAX
        && !n.starts_with('-')
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        sink.error(
            "scenario::bad_name",
            name.span,
            format!("bad {what} name `{n}`"),
        )
        .help(format!(
            "use lowercase letters, digits, `_` and `-` (not first), at most {NAME_MAX} bytes"
        ));
    }
    valid
}

/// Reads an integer in `range`.
fn bounded(value: &Value, what: &str, range: RangeInclusive<u64>, sink: &mut Sink) -> Option<u64> {
    let n = value::integer::<u64>(value, what, sink)?;
    if range.contains(&n.value) {
        Some(n.value)
    } else {
        sink.error(
            "scenario::range",
            n.span,
            format!(
                "{what} must be between {} and {}, not {}",
                range.start(),
                range.end(),
                n.value
            ),
        );
        None
    }
}

/// Reads field `name` of `fields` as an integer in `range`, or `default` when absent.
fn field(
    fields: &mut Fields<'_>,
    name: &str,
    default: u64,
    range: RangeInclusive<u64>,
    sink: &mut Sink,
) -> Option<u64> {
    match fields.get(name) {
        Some(v) => bounded(v, &format!("`{name}`"), range, sink),
        None => Some(default),
    }
}

/// Reads a duration; `positive` rejects zero.
fn duration(value: &Value, what: &str, positive: bool, sink: &mut Sink) -> Option<Nanos> {
    let help = format!("write a duration like `5s` (units: {DURATION_UNITS})");
    let d = value::parsed::<Nanos>(value, what, "scenario::bad_duration", &help, sink)?;
    if positive && d.value.0 == 0 {
        sink.error(
            "scenario::bad_duration",
            d.span,
            format!("{what} must be longer than zero"),
        );
        return None;
    }
    Some(d.value)
}

fn read_topology(
    value: &Value,
    base: &Path,
    sink: &mut Sink,
    diagnostics: &mut Diagnostics,
) -> (Option<Topology>, Option<std::path::PathBuf>) {
    if let value::Kind::Table(_) = value.kind {
        let topology = toml_file::read(value, sink).map(|mut t| {
            validate::check(&mut t, sink);
            t
        });
        return (topology, None);
    }
    let Some(path) = value::string(value, "`topology`", sink) else {
        return (None, None);
    };
    let file = base.join(&path.value);
    match topology::load(&file) {
        Ok(loaded) => {
            diagnostics.extend(loaded.warnings);
            (Some(loaded.topology), Some(file))
        }
        Err(LoadError::Read { source, .. }) => {
            sink.error(
                "scenario::topology_unreadable",
                path.span,
                format!("cannot read topology {}: {source}", file.display()),
            )
            .help("the path is relative to the scenario file");
            (None, None)
        }
        Err(LoadError::Invalid(errors)) => {
            sink.error(
                "scenario::topology_invalid",
                path.span,
                format!(
                    "topology {} is invalid ({} errors, shown below)",
                    file.display(),
                    errors.error_count()
                ),
            );
            diagnostics.extend(errors);
            (None, None)
        }
    }
}

/// Checks the workloads that involve VM nodes: the runner runs clients itself, so a client
/// cannot be a VM; a VM serves one `tcp_rr` or `tcp_stream` workload (its server runs in the
/// guest, `lab workload-server`, which holds the guest agent while it runs), on its own CPUs.
fn check_vm_workloads(workloads: &[Workload], topo: &Topology, sink: &mut Sink) {
    let vm_cpus = |node: &str| match topo.node(node).map(|n| &n.kind.value) {
        Some(NodeKind::Vm { cpus, .. }) => Some(cpus.unwrap_or(crate::node::vm::DEFAULT_CPUS)),
        _ => None,
    };
    let mut served: Vec<&str> = Vec::new();
    for w in workloads {
        if vm_cpus(&w.from.value).is_some() {
            sink.error(
                "scenario::unsupported_node",
                w.from.span,
                format!(
                    "node `{}` is a VM: workload clients run in the runner, on namespace or \
                     host nodes",
                    w.from.value
                ),
            )
            .help("put the client on a `netns` node; a VM node can be the server (`to`)");
        }
        let node = &w.to.node;
        let Some(cpus) = vm_cpus(&node.value) else {
            continue;
        };
        if !matches!(
            w.kind,
            WorkloadKind::TcpRr { .. } | WorkloadKind::TcpStream { .. }
        ) {
            sink.error(
                "scenario::unsupported_node",
                node.span,
                format!(
                    "node `{}` is a VM: a `{}` server cannot run there yet",
                    node.value,
                    w.kind.name()
                ),
            )
            .help("VM nodes serve `tcp_rr` and `tcp_stream` workloads");
        }
        if served.contains(&node.value.as_str()) {
            sink.error(
                "scenario::vm_busy",
                node.span,
                format!("VM node `{}` already serves a workload", node.value),
            )
            .help("a VM node serves one workload; give it to another node or a second VM");
        }
        served.push(&node.value);
        if let Some(&cpu) = w.to_cpus.iter().find(|&&c| c >= cpus as usize) {
            sink.error(
                "scenario::range",
                w.span,
                format!(
                    "`to_cpus` names CPU {cpu}, but VM node `{}` has {cpus} CPU(s)",
                    node.value
                ),
            )
            .help("the server's CPUs are the guest's: 0 to cpus - 1");
        }
    }
}

/// Checks that `name` is a node of `topo`; `false` (with an error) if not.
fn check_node(name: &Spanned<String>, topo: &Topology, sink: &mut Sink) -> bool {
    match topo.node(&name.value) {
        Some(node) if node.kind.value == NodeKind::Bridge => {
            sink.error(
                "scenario::bridge_node",
                name.span,
                format!("node `{}` is a bridge: nothing runs on it", name.value),
            );
            false
        }
        Some(_) => true,
        None => {
            let names: Vec<&str> = topo.nodes.iter().map(|n| n.name.value.as_str()).collect();
            sink.error(
                "scenario::unknown_node",
                name.span,
                format!("unknown node `{}`", name.value),
            )
            .help(format!("nodes of the topology: {}", names.join(", ")));
            false
        }
    }
}

/// Finds the link with endpoint `text` (`node:iface`).
fn link_ref(text: &Spanned<String>, topo: Option<&Topology>, sink: &mut Sink) -> Option<LinkRef> {
    let end = topology::endpoint(text, sink)?;
    let topo = topo?;
    let index = topo.links.iter().position(|link| {
        link.endpoints
            .iter()
            .any(|e| e.node.value == end.node.value && e.iface.value == end.iface.value)
    });
    match index {
        Some(index) => Some(LinkRef {
            endpoint: text.clone(),
            index,
        }),
        None => {
            let all: Vec<String> = topo
                .links
                .iter()
                .flat_map(|l| &l.endpoints)
                .map(|e| format!("{}:{}", e.node.value, e.iface.value))
                .collect();
            sink.error(
                "scenario::unknown_link",
                text.span,
                format!("no link of the topology has the endpoint `{}`", text.value),
            )
            .help(format!("endpoints: {}", all.join(", ")));
            None
        }
    }
}

fn read_variant(
    value: &Value,
    topo: Option<&Topology>,
    base: &Path,
    sink: &mut Sink,
) -> Option<Variant> {
    let mut fields = Fields::of(value, "a variant", sink)?;
    let name = match fields.get("name") {
        Some(v) => value::string(v, "`name`", sink).filter(|n| check_name(n, "variant", sink)),
        None => {
            missing(sink, fields.span, "a variant needs a `name`");
            None
        }
    };
    let accelerators = read_list(&mut fields, "accelerators", sink, |v, sink| {
        read_accelerator(v, topo, base, sink)
    })
    .filter(|a| one_sock_redirect(a, sink));
    let impair = match fields.get("impair") {
        Some(v) => read_overrides(v, topo, sink),
        None => Some(Vec::new()),
    };
    fields.finish(sink, "a variant", VARIANT, &[]);
    Some(Variant {
        name: name?,
        accelerators: accelerators?,
        impair: impair?,
    })
}

fn check_unique_variants(variants: &[Variant], sink: &mut Sink) {
    for (i, variant) in variants.iter().enumerate() {
        if let Some(first) = variants[..i]
            .iter()
            .find(|v| v.name.value == variant.name.value)
        {
            sink.error(
                "scenario::duplicate_variant",
                variant.name.span,
                format!("two variants are named `{}`", variant.name.value),
            )
            .label(first.name.span, "first named here");
        }
    }
}

/// Reads a variant's `impair = { "node:iface" = {...}, ... }`.
fn read_overrides(
    value: &Value,
    topo: Option<&Topology>,
    sink: &mut Sink,
) -> Option<Vec<LinkImpairment>> {
    let mut fields = Fields::of(value, "`impair`", sink)?;
    let mut ok = true;
    let mut out: Vec<LinkImpairment> = Vec::new();
    for (endpoint, table) in fields.rest() {
        let link = link_ref(endpoint, topo, sink);
        let impair = toml_file::impairments(table, sink);
        let (Some(link), Some(impair)) = (link, impair) else {
            ok = false;
            continue;
        };
        if let Some(first) = out.iter().find(|o| o.link.index == link.index) {
            sink.error(
                "scenario::link_twice",
                endpoint.span,
                "this link's impairment is already set in this variant",
            )
            .label(first.link.endpoint.span, "set here");
            ok = false;
            continue;
        }
        out.push(LinkImpairment { link, impair });
    }
    ok.then_some(out)
}

fn read_accelerator(
    value: &Value,
    topo: Option<&Topology>,
    base: &Path,
    sink: &mut Sink,
) -> Option<Accelerator> {
    let mut fields = Fields::of(value, "an accelerator", sink)?;
    let kind = fields
        .get("kind")
        .and_then(|v| value::string(v, "`kind`", sink));
    let node = fields
        .get("node")
        .and_then(|v| value::string(v, "`node`", sink));
    if fields.key_span("kind").is_none() || fields.key_span("node").is_none() {
        missing(sink, fields.span, "an accelerator needs `kind` and `node`");
    }
    let node = node.filter(|n| topo.is_none_or(|t| check_node(n, t, sink)));
    let kind = kind?;
    let settings = match kind.value.as_str() {
        "monitor" => {
            let iface = fields
                .get("iface")
                .and_then(|v| value::string(v, "`iface`", sink));
            if fields.key_span("iface").is_none() {
                missing(sink, fields.span, "the monitor needs `iface`")
                    .help("name the interface to count packets on, like `iface = \"eth0\"`");
            }
            let xdp = match fields.get("xdp") {
                Some(v) => monitor_mode(v, sink).map(Some),
                None => Some(None),
            };
            fields.finish(sink, "the monitor", MONITOR, &[]);
            let iface = iface.filter(|i| match (topo, &node) {
                (Some(t), Some(n)) => check_iface(t, n, i, sink),
                _ => true,
            });
            AcceleratorKind::Monitor {
                iface: iface?,
                xdp: xdp?,
            }
        }
        "sock_redirect" => {
            let node_ok = match (topo, &node) {
                (Some(t), Some(n)) => check_cgroup_node(t, n, sink),
                _ => true,
            };
            let settings = read_sock_redirect(&mut fields, sink);
            fields.finish(sink, "the socket redirect", SOCK_REDIRECT, &[]);
            node_ok.then_some(settings?)?
        }
        "cpu_balance" => read_cpu_balance(fields, topo, node.as_ref(), sink)?,
        "rps" => read_rps(fields, topo, node.as_ref(), sink)?,
        "offloads" => read_offloads(fields, topo, node.as_ref(), sink)?,
        "afxdp" => {
            let iface = fields
                .get("iface")
                .and_then(|v| value::string(v, "`iface`", sink));
            let ports = fields.get("ports").and_then(|v| udp_ports(v, sink));
            let cpus = match fields.get("cpus") {
                Some(v) => cpu_set(v, "`cpus`", sink),
                None => Some(Vec::new()),
            };
            if fields.key_span("iface").is_none() || fields.key_span("ports").is_none() {
                missing(sink, fields.span, "afxdp needs `iface` and `ports`").help(
                    "name the interface and the UDP ports to echo, like \
                     `iface = \"eth0\", ports = [7777]`",
                );
            }
            fields.finish(sink, "afxdp", AFXDP, &[]);
            let iface = iface.filter(|i| match (topo, &node) {
                (Some(t), Some(n)) => check_iface(t, n, i, sink),
                _ => true,
            });
            AcceleratorKind::Afxdp {
                iface: iface?,
                ports: ports?,
                cpus: cpus?,
            }
        }
        "http_filter" => {
            let iface = fields
                .get("iface")
                .and_then(|v| value::string(v, "`iface`", sink));
            let policy = fields
                .get("policy")
                .and_then(|v| value::string(v, "`policy`", sink));
            if fields.key_span("iface").is_none() || fields.key_span("policy").is_none() {
                missing(
                    sink,
                    fields.span,
                    "the http_filter needs `iface` and `policy`",
                )
                .help("like `iface = \"eth0\"`, `policy = \"policies/monitor.toml\"`");
            }
            let mode = match fields.get("mode") {
                Some(v) => monitor_mode(v, sink),
                None => Some(MonitorMode::Auto),
            };
            fields.finish(sink, "the http_filter", HTTP_FILTER, &[]);
            let iface = iface.filter(|i| match (topo, &node) {
                (Some(t), Some(n)) => check_iface(t, n, i, sink),
                _ => true,
            });
            let policy = policy.and_then(|p| {
                let path = base.join(&p.value);
                match accel::http_filter::Policy::from_file(&path) {
                    Ok(policy) => Some((path, policy)),
                    Err(e) => {
                        sink.error("scenario::bad_policy", p.span, e.to_string())
                            .help("the grammar is in ebpf/accel/src/http_filter/policy.rs");
                        None
                    }
                }
            });
            let (policy_file, policy) = policy?;
            AcceleratorKind::HttpFilter {
                iface: iface?,
                mode: mode?,
                policy_file,
                policy: Box::new(policy),
            }
        }
        other => {
            sink.error(
                "scenario::unknown_accelerator",
                kind.span,
                format!("unknown accelerator kind `{other}`"),
            )
            .help(format!("known kinds: {}", ACCELERATOR_KINDS.join(", ")));
            return None;
        }
    };
    Some(Accelerator {
        node: node?,
        kind: settings,
    })
}

/// Checks that at most one of `accelerators` is a socket redirect (it covers the runner's
/// whole process: one per variant, listing every port).
fn one_sock_redirect(accelerators: &[Accelerator], sink: &mut Sink) -> bool {
    let mut redirects = accelerators
        .iter()
        .filter(|a| matches!(a.kind, AcceleratorKind::SockRedirect { .. }));
    let first = redirects.next();
    match (first, redirects.next()) {
        (Some(first), Some(second)) => {
            sink.error(
                "scenario::duplicate_accelerator",
                second.node.span,
                "a variant has one socket redirect at most",
            )
            .label(first.node.span, "the first")
            .help("it covers every node of the run: list all ports in the first one");
            false
        }
        _ => true,
    }
}

/// Reads the socket redirect's `ports` (required) and `min_size`.
fn read_sock_redirect(fields: &mut Fields<'_>, sink: &mut Sink) -> Option<AcceleratorKind> {
    let min_size = field(
        fields,
        "min_size",
        u64::from(accel::sock_redirect::DEFAULT_MIN_SIZE),
        0..=*MESSAGE.end(),
        sink,
    );
    let Some(list) = fields.get("ports") else {
        missing(sink, fields.span, "the socket redirect needs `ports`")
            .help("list the ports whose connections it redirects, like `ports = [5201]`");
        return None;
    };
    let items = value::array(list, "`ports`", sink)?;
    let read: Vec<Option<u16>> = items
        .iter()
        .map(|v| bounded(v, "a port", 1..=u64::from(u16::MAX), sink).map(|p| p as u16))
        .collect();
    let mut ports: Vec<u16> = read.into_iter().collect::<Option<_>>()?;
    ports.sort_unstable();
    ports.dedup();
    if !REDIRECT_PORTS.contains(&ports.len()) {
        sink.error(
            "scenario::range",
            list.span,
            format!(
                "`ports` must list {} to {} ports, not {}",
                REDIRECT_PORTS.start(),
                REDIRECT_PORTS.end(),
                ports.len()
            ),
        );
        return None;
    }
    Some(AcceleratorKind::SockRedirect {
        ports,
        min_size: min_size? as u32,
    })
}

/// Checks that `node` runs as part of the runner's process (a namespace or the host), which
/// a cgroup program of the runner's cgroup sees; a VM does not.
fn check_cgroup_node(topo: &Topology, node: &Spanned<String>, sink: &mut Sink) -> bool {
    match topo.node(&node.value).map(|n| &n.kind.value) {
        Some(NodeKind::Vm { .. }) => {
            sink.error(
                "scenario::unsupported_node",
                node.span,
                format!(
                    "node `{}` is a VM: the socket redirect attaches to the runner's cgroup and \
                     sees only nodes that are namespaces of the runner",
                    node.value
                ),
            )
            .help("put the client and the server on a `netns` or `host` node");
            false
        }
        _ => true,
    }
}

/// Reads the `iface` an accelerator of kind `what` needs and checks it against `node`.
fn accelerator_iface(
    fields: &mut Fields<'_>,
    topo: Option<&Topology>,
    node: Option<&Spanned<String>>,
    what: &str,
    sink: &mut Sink,
) -> Option<Spanned<String>> {
    let iface = fields
        .get("iface")
        .and_then(|v| value::string(v, "`iface`", sink));
    if fields.key_span("iface").is_none() {
        missing(sink, fields.span, &format!("{what} needs `iface`"))
            .help("name the receiving interface, like `iface = \"eth0\"`");
    }
    iface.filter(|i| match (topo, node) {
        (Some(t), Some(n)) => check_iface(t, n, i, sink),
        _ => true,
    })
}

/// Reads a list of distinct CPU numbers (`None` with errors; an empty list is an error).
fn cpu_set(value: &Value, what: &str, sink: &mut Sink) -> Option<Vec<usize>> {
    let items = value::array(value, what, sink)?;
    let mut cpus: Vec<usize> = Vec::new();
    let mut ok = true;
    for item in items {
        match bounded(item, "a CPU number", CPU, sink) {
            Some(cpu) if cpus.contains(&(cpu as usize)) => {
                sink.error(
                    "scenario::duplicate_cpu",
                    item.span,
                    format!("CPU {cpu} is listed twice in {what}"),
                );
                ok = false;
            }
            Some(cpu) => cpus.push(cpu as usize),
            None => ok = false,
        }
    }
    if ok && cpus.is_empty() {
        sink.error(
            "scenario::no_cpus",
            value.span,
            format!("{what} names no CPU"),
        )
        .help("list at least one, like `cpus = [0, 1]`");
        return None;
    }
    ok.then_some(cpus)
}

/// `{ kind = "cpu_balance", node, iface, cpus | weights }`.
fn read_cpu_balance(
    mut fields: Fields<'_>,
    topo: Option<&Topology>,
    node: Option<&Spanned<String>>,
    sink: &mut Sink,
) -> Option<AcceleratorKind> {
    let iface = accelerator_iface(&mut fields, topo, node, "the CPU balancer", sink);
    let cpus = fields.get("cpus").map(|v| cpu_set(v, "`cpus`", sink));
    let weights = fields.get("weights").map(|v| cpu_weights(v, sink));
    if let (Some(_), Some(_), Some(span)) = (&cpus, &weights, fields.key_span("weights")) {
        sink.error(
            "scenario::conflicting_fields",
            span,
            "`cpus` and `weights` cannot both be given",
        )
        .help("`cpus = [0, 1]` weighs each CPU 1; `weights = { \"0\" = 1, \"1\" = 3 }` sets each");
        return None;
    }
    let weights = match (cpus, weights) {
        (Some(cpus), _) => cpus?.into_iter().map(|c| (c as u32, 1)).collect(),
        (None, Some(weights)) => weights?,
        (None, None) => Vec::new(),
    };
    fields.finish(sink, "the CPU balancer", CPU_BALANCE, &[]);
    Some(AcceleratorKind::CpuBalance {
        iface: iface?,
        weights,
    })
}

/// `weights = { "CPU" = WEIGHT, ... }`: at least one weight above zero.
fn cpu_weights(value: &Value, sink: &mut Sink) -> Option<Vec<(u32, u32)>> {
    let mut table = Fields::of(value, "`weights`", sink)?;
    let mut ok = true;
    let mut out = Vec::new();
    for (cpu, weight) in table.rest() {
        let number = cpu.value.parse::<u64>().ok().filter(|n| CPU.contains(n));
        let weight = bounded(weight, "a weight", WEIGHT, sink);
        match (number, weight) {
            (Some(cpu), Some(weight)) => out.push((cpu as u32, weight as u32)),
            (None, _) => {
                sink.error(
                    "scenario::bad_cpu",
                    cpu.span,
                    format!("`{}` is not a CPU number", cpu.value),
                )
                .help(format!(
                    "keys are CPU numbers from {} to {}, like `\"0\" = 1`",
                    CPU.start(),
                    CPU.end()
                ));
                ok = false;
            }
            (Some(_), None) => ok = false,
        }
    }
    if ok && out.iter().all(|(_, w)| *w == 0) {
        sink.error(
            "scenario::no_cpus",
            value.span,
            "`weights` gives no CPU a weight above zero",
        );
        return None;
    }
    ok.then_some(out)
}

/// `{ kind = "offloads", node, iface, tx, tso, gso, gro }`: at least one of the four.
fn read_offloads(
    mut fields: Fields<'_>,
    topo: Option<&Topology>,
    node: Option<&Spanned<String>>,
    sink: &mut Sink,
) -> Option<AcceleratorKind> {
    let iface = accelerator_iface(&mut fields, topo, node, "offloads", sink);
    let mut settings = Vec::new();
    let mut ok = true;
    for (key, offload) in [
        ("tx", Offload::TxChecksum),
        ("tso", Offload::Tso),
        ("gso", Offload::Gso),
        ("gro", Offload::Gro),
    ] {
        if let Some(value) = fields.get(key) {
            match value::boolean(value, &format!("`{key}`"), sink) {
                Some(on) => settings.push((offload, on)),
                None => ok = false,
            }
        }
    }
    if ok && settings.is_empty() {
        missing(
            sink,
            fields.span,
            "offloads needs `tx`, `tso`, `gso` or `gro`",
        )
        .help("like `tso = false, gso = false` (wire-sized frames out of this interface)");
        ok = false;
    }
    fields.finish(sink, "offloads", OFFLOADS, &[]);
    ok.then_some(AcceleratorKind::Offloads {
        iface: iface?,
        settings,
    })
}

/// `{ kind = "rps", node, iface, cpus }`.
fn read_rps(
    mut fields: Fields<'_>,
    topo: Option<&Topology>,
    node: Option<&Spanned<String>>,
    sink: &mut Sink,
) -> Option<AcceleratorKind> {
    let iface = accelerator_iface(&mut fields, topo, node, "RPS", sink);
    let cpus = fields.get("cpus").map(|v| cpu_set(v, "`cpus`", sink));
    if fields.key_span("cpus").is_none() {
        missing(sink, fields.span, "RPS needs `cpus`")
            .help("the CPUs to steer packets to, like `cpus = [0, 1]`");
    }
    fields.finish(sink, "RPS", RPS, &[]);
    Some(AcceleratorKind::Rps {
        iface: iface?,
        cpus: cpus??,
    })
}

/// A non-empty array of UDP ports (1 to 65535).
fn udp_ports(value: &Value, sink: &mut Sink) -> Option<Vec<u16>> {
    let items = value::array(value, "`ports`", sink)?;
    let mut ports = Vec::new();
    let mut ok = true;
    for item in items {
        match value::integer::<u16>(item, "a port", sink) {
            Some(p) if p.value != 0 => ports.push(p.value),
            Some(p) => {
                sink.error("scenario::bad_port", p.span, "port 0 cannot be echoed");
                ok = false;
            }
            None => ok = false,
        }
    }
    if ports.is_empty() && ok {
        sink.error("scenario::bad_port", value.span, "`ports` is empty")
            .help("name at least one UDP port, like `ports = [7777]`");
        ok = false;
    }
    ok.then_some(ports)
}

fn monitor_mode(value: &Value, sink: &mut Sink) -> Option<MonitorMode> {
    let text = value::string(value, "`xdp`", sink)?;
    match text.value.as_str() {
        "auto" => Some(MonitorMode::Auto),
        "native" => Some(MonitorMode::Native),
        "generic" => Some(MonitorMode::Generic),
        other => {
            sink.error(
                "scenario::bad_mode",
                text.span,
                format!("unknown XDP mode `{other}`"),
            )
            .help("expected one of: auto, native, generic");
            None
        }
    }
}

/// A `udp_echo` client kind: `socket` or `xdp`.
fn generator(value: &Value, sink: &mut Sink) -> Option<Generator> {
    let text = value::string(value, "`generator`", sink)?;
    match text.value.as_str() {
        "socket" => Some(Generator::Socket),
        "xdp" => Some(Generator::Xdp),
        other => {
            sink.error(
                "scenario::bad_generator",
                text.span,
                format!("unknown udp_echo generator `{other}`"),
            )
            .help("expected one of: socket, xdp");
            None
        }
    }
}

/// Checks that `iface` is one of `node`'s link ends in `topo`.
fn check_iface(
    topo: &Topology,
    node: &Spanned<String>,
    iface: &Spanned<String>,
    sink: &mut Sink,
) -> bool {
    let ifaces: Vec<&str> = topo
        .links
        .iter()
        .flat_map(|l| &l.endpoints)
        .filter(|e| e.node.value == node.value)
        .map(|e| e.iface.value.as_str())
        .collect();
    if ifaces.contains(&iface.value.as_str()) {
        return true;
    }
    sink.error(
        "scenario::unknown_iface",
        iface.span,
        format!("node `{}` has no interface `{}`", node.value, iface.value),
    )
    .help(if ifaces.is_empty() {
        "it has no links".to_owned()
    } else {
        format!("its interfaces: {}", ifaces.join(", "))
    });
    false
}

fn read_workload(
    value: &Value,
    topo: Option<&Topology>,
    window: Nanos,
    sink: &mut Sink,
) -> Option<Workload> {
    let mut fields = Fields::of(value, "a workload", sink)?;
    let span = fields.span;
    let kind = fields
        .get("kind")
        .and_then(|v| value::string(v, "`kind`", sink));
    let from = fields
        .get("from")
        .and_then(|v| value::string(v, "`from`", sink));
    let to = fields
        .get("to")
        .and_then(|v| value::string(v, "`to`", sink));
    if ["kind", "from", "to"]
        .iter()
        .any(|f| fields.key_span(f).is_none())
    {
        missing(sink, span, "a workload needs `kind`, `from` and `to`")
            .help("like `kind = \"tcp_rr\"`, `from = \"client\"`, `to = \"server:5201\"`");
    }
    let start = match fields.get("start") {
        Some(v) => duration(v, "`start`", false, sink),
        None => Some(Nanos(0)),
    };
    let duration = match fields.get("duration") {
        Some(v) => duration(v, "`duration`", true, sink),
        None => Some(window),
    };
    let from_cpus = cpus(&mut fields, "from_cpus", sink);
    let to_cpus = cpus(&mut fields, "to_cpus", sink);
    let from = from.filter(|f| topo.is_none_or(|t| check_node(f, t, sink)));
    let to = to.and_then(|t| target(&t, from.as_ref(), topo, sink));
    let kind = kind?;
    let f = &mut fields;
    let (parameters, known) = match kind.value.as_str() {
        "tcp_rr" => {
            let size = field(f, "size", 64, MESSAGE, sink);
            let request = field(f, "request", size.unwrap_or(64), MESSAGE, sink);
            let response = field(f, "response", size.unwrap_or(64), MESSAGE, sink);
            let connections = field(f, "connections", 1, CONNECTIONS, sink);
            for (name, other) in [("request", "size"), ("response", "size")] {
                if let (Some(span), Some(_)) = (f.key_span(name), f.key_span(other)) {
                    sink.error(
                        "scenario::conflicting_fields",
                        span,
                        format!("`{name}` and `{other}` cannot both be given"),
                    )
                    .help("`size` sets both the request and the response size");
                }
            }
            let kind = (|| {
                Some(WorkloadKind::TcpRr {
                    request: request? as usize,
                    response: response? as usize,
                    connections: connections? as usize,
                })
            })();
            (kind, TCP_RR)
        }
        "tcp_stream" => {
            let message = field(f, "message", 131_072, MESSAGE, sink);
            let write = field(f, "write", message.unwrap_or(1), MESSAGE, sink);
            let connections = field(f, "connections", 1, CONNECTIONS, sink);
            if let (Some(m), Some(w), Some(span)) = (message, write, f.key_span("write"))
                && w > m
            {
                sink.error(
                    "scenario::range",
                    span,
                    format!("`write` ({w}) must be at most `message` ({m})"),
                );
            }
            let kind = (|| {
                Some(WorkloadKind::TcpStream {
                    message: message? as usize,
                    write: write?.min(message?) as usize,
                    connections: connections? as usize,
                })
            })();
            (kind, TCP_STREAM)
        }
        "udp_echo" => {
            let pps = field(f, "pps", 10_000, PPS, sink);
            let size = field(f, "size", 64, DATAGRAM, sink);
            let generator = match f.get("generator") {
                Some(v) => generator(v, sink),
                None => Some(Generator::Socket),
            };
            let kind = (|| {
                Some(WorkloadKind::UdpEcho {
                    pps: pps?,
                    size: size? as usize,
                    generator: generator?,
                })
            })();
            (kind, UDP_ECHO)
        }
        "http_upload" => {
            let size = field(f, "size", 65_536, HTTP_BODY, sink);
            let files = field(f, "files", 16, HTTP_FILES, sink);
            let connections = field(f, "connections", 1, CONNECTIONS, sink);
            let kind = (|| {
                Some(WorkloadKind::HttpUpload {
                    size: size? as usize,
                    files: files? as usize,
                    connections: connections? as usize,
                })
            })();
            (kind, HTTP_UPLOAD)
        }
        "http_download" => {
            let size = field(f, "size", 65_536, HTTP_BODY, sink);
            let connections = field(f, "connections", 1, CONNECTIONS, sink);
            let kind = (|| {
                Some(WorkloadKind::HttpDownload {
                    size: size? as usize,
                    connections: connections? as usize,
                })
            })();
            (kind, HTTP_DOWNLOAD)
        }
        "http_search" => {
            let query = match f.get("query") {
                Some(v) => value::string(v, "`query`", sink).and_then(|q| {
                    let bad = q
                        .value
                        .bytes()
                        .find(|b| !b.is_ascii_graphic() || matches!(b, b'#' | b'?'));
                    match bad {
                        None => Some(q.value),
                        Some(b) => {
                            sink.error(
                                "scenario::bad_query",
                                q.span,
                                format!(
                                    "the query `{}` has the character {:?}, which a query \
                                     string cannot hold",
                                    q.value,
                                    char::from(b)
                                ),
                            )
                            .help("write it URL-encoded, like `tags=pdf&name=lab`");
                            None
                        }
                    }
                }),
                None => Some("name=lab".to_owned()),
            };
            let connections = field(f, "connections", 1, CONNECTIONS, sink);
            let kind = (|| {
                Some(WorkloadKind::HttpSearch {
                    query: query?,
                    connections: connections? as usize,
                })
            })();
            (kind, HTTP_SEARCH)
        }
        other => {
            sink.error(
                "scenario::unknown_workload",
                kind.span,
                format!("unknown workload kind `{other}`"),
            )
            .help(format!("known kinds: {}", WORKLOAD_KINDS.join(", ")));
            return None;
        }
    };
    let known: Vec<&str> = COMMON.iter().chain(known).copied().collect();
    fields.finish(sink, &format!("a `{}` workload", kind.value), &known, &[]);
    Some(Workload {
        span,
        from: from?,
        to: to?,
        start: start?,
        duration: duration?,
        from_cpus: from_cpus?,
        to_cpus: to_cpus?,
        kind: parameters?,
    })
}

fn cpus(fields: &mut Fields<'_>, name: &str, sink: &mut Sink) -> Option<Vec<usize>> {
    let Some(list) = fields.get(name) else {
        return Some(Vec::new());
    };
    let items = value::array(list, &format!("`{name}`"), sink)?;
    let read: Vec<Option<usize>> = items
        .iter()
        .map(|v| bounded(v, "a CPU number", CPU, sink).map(|n| n as usize))
        .collect();
    read.into_iter().collect()
}

/// Reads `to = "node:port"` and finds the address the client connects to.
fn target(
    text: &Spanned<String>,
    from: Option<&Spanned<String>>,
    topo: Option<&Topology>,
    sink: &mut Sink,
) -> Option<Target> {
    let port = text
        .value
        .split_once(':')
        .filter(|(node, _)| !node.is_empty())
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|port| *port > 0);
    let Some(port) = port else {
        sink.error(
            "scenario::bad_target",
            text.span,
            format!("`{}` is not `node:port`", text.value),
        )
        .help("write the server's node and a port from 1 to 65535, like `server:5201`");
        return None;
    };
    let end = topology::endpoint(text, sink)?;
    let topo = topo?;
    if !check_node(&end.node, topo, sink) {
        return None;
    }
    let addresses: Vec<IpAddr> = topo
        .links
        .iter()
        .flat_map(|l| l.endpoints.iter().zip(&l.addresses))
        .filter(|(e, _)| e.node.value == end.node.value)
        .flat_map(|(_, addrs)| addrs.iter().map(|c| c.addr))
        .collect();
    let same_node = from.is_some_and(|f| f.value == end.node.value);
    let addr = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
        .or(same_node.then_some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    match addr {
        Some(addr) => Some(Target {
            node: end.node,
            addr: SocketAddr::new(addr, port),
        }),
        None => {
            sink.error(
                "scenario::no_address",
                end.node.span,
                format!(
                    "node `{}` has no address the client can connect to",
                    end.node.value
                ),
            )
            .help("give its links addresses (or let the pool assign them)");
            None
        }
    }
}

fn read_event(value: &Value, topo: Option<&Topology>, sink: &mut Sink) -> Option<Event> {
    let mut fields = Fields::of(value, "an event", sink)?;
    let at = fields.get("at").and_then(|v| {
        let help = format!("write a time like `2s` (units: {DURATION_UNITS})");
        value::parsed::<Nanos>(v, "`at`", "scenario::bad_duration", &help, sink)
    });
    let link = fields
        .get("link")
        .and_then(|v| value::string(v, "`link`", sink))
        .and_then(|l| link_ref(&l, topo, sink));
    let action = fields.get("set").and_then(|v| match &v.kind {
        value::Kind::Table(_) | value::Kind::Array(_) => {
            toml_file::impairments(v, sink).map(|i| EventAction::Impair(Box::new(i)))
        }
        _ => {
            let text = value::string(v, "`set`", sink)?;
            match text.value.as_str() {
                "down" => Some(EventAction::Down),
                "up" => Some(EventAction::Up),
                other => {
                    sink.error(
                        "scenario::bad_event",
                        text.span,
                        format!("`set = \"{other}\"` is not an event"),
                    )
                    .help("use \"down\", \"up\", or an impairment like `{ loss = \"5%\" }`");
                    None
                }
            }
        }
    });
    if EVENT.iter().any(|f| fields.key_span(f).is_none()) {
        missing(sink, fields.span, "an event needs `at`, `link` and `set`")
            .help("like `at = \"2s\"`, `link = \"client:eth0\"`, `set = \"down\"`");
    }
    fields.finish(sink, "an event", EVENT, &[]);
    Some(Event {
        at: at?,
        link: link?,
        action: action?,
    })
}
