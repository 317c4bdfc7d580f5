//! `[deploy]`: services started inside the nodes of a lab — Redis, JuiceFS, FalkorDB, the
//! DisGraFS server and its taggers.
//!
//! A topology or scenario file lists the services of each node:
//!
//! ```toml
//! [deploy]
//! server = ["redis", "falkordb", "juicefs", "disgrafs-server"]
//! tagger = ["disgrafs-tagger"]
//! ```
//!
//! Redis, FalkorDB, JuiceFS and the server run on one node each; JuiceFS (its metadata in
//! that Redis) only on the server's node, which then keeps its data on the mount; taggers
//! consume the server's Redis queue and may run on several nodes. [`read`] checks all of this
//! with the file's diagnostics. [`start`] runs them, [`stop`] stops them (see its module).

mod run;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::topology::diag::{Sink, Span, Spanned};
use crate::topology::value::{self, Fields, Value};
use crate::topology::{Node, NodeKind};

pub use run::{
    Deployed, Error, ServiceRecord, binary, image_of, restart, start, stop, stop_recorded,
};

/// The TCP port Redis listens on inside its node.
pub const REDIS_PORT: u16 = 6379;
/// The TCP port FalkorDB listens on inside its node.
pub const FALKORDB_PORT: u16 = 6380;
/// The TCP port the DisGraFS server listens on inside its node (all addresses).
pub const SERVER_PORT: u16 = 8080;

/// The image of a node whose services run in containers (see
/// [`crate::topology::PlanOptions::service_containers`]): it only holds the node's network
/// namespace, which the services' containers join.
pub const NODE_IMAGE: &str = "disgrafs-lab/base";

/// Services started on one node.
#[derive(Clone, Debug)]
pub struct Deployment {
    /// The node.
    pub node: Spanned<String>,
    /// The services, in file order.
    pub services: Vec<Spanned<Service>>,
}

/// The services the lab can deploy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// Redis (the DisGraFS tag queue and JuiceFS metadata).
    Redis,
    /// FalkorDB (the graph store).
    Falkordb,
    /// A JuiceFS file system (formatted, then mounted), the server's storage.
    Juicefs,
    /// The DisGraFS HTTP server.
    DisgrafsServer,
    /// A DisGraFS tagger worker.
    DisgrafsTagger,
}

impl Service {
    /// Every service, in start order.
    pub const ALL: [Service; 5] = [
        Service::Redis,
        Service::Falkordb,
        Service::Juicefs,
        Service::DisgrafsServer,
        Service::DisgrafsTagger,
    ];

    /// The name used in files.
    pub fn name(self) -> &'static str {
        match self {
            Service::Redis => "redis",
            Service::Juicefs => "juicefs",
            Service::Falkordb => "falkordb",
            Service::DisgrafsServer => "disgrafs-server",
            Service::DisgrafsTagger => "disgrafs-tagger",
        }
    }

    /// Whether at most one node of a lab may run it.
    fn single(self) -> bool {
        self != Service::DisgrafsTagger
    }
}

/// The node running `service` in `deploy`, if one does.
pub fn node_of(deploy: &[Deployment], service: Service) -> Option<&str> {
    deploy
        .iter()
        .find(|d| d.services.iter().any(|s| s.value == service))
        .map(|d| d.node.value.as_str())
}

/// Reads a `[deploy]` table; `nodes` (when known) are checked: each must exist and not be a
/// bridge. Also checks the rules of the module's documentation.
pub(crate) fn read(
    value: &Value,
    nodes: Option<&[Node]>,
    sink: &mut Sink,
) -> Option<Vec<Deployment>> {
    let mut fields = Fields::of(value, "`deploy`", sink)?;
    let mut ok = true;
    let mut out = Vec::new();
    for (node, list) in fields.rest() {
        ok &= nodes.is_none_or(|n| check_node(node, n, sink));
        let mut services: Vec<Spanned<Service>> = Vec::new();
        for name in value::strings(list, &format!("services of `{}`", node.value), sink) {
            match Service::ALL.iter().find(|s| s.name() == name.value) {
                Some(&service) if services.iter().any(|s| s.value == service) => {
                    ok = false;
                    sink.error(
                        "deploy::duplicate_service",
                        name.span,
                        format!("`{}` is listed twice for node `{}`", name.value, node.value),
                    );
                }
                Some(&service) => services.push(Spanned::new(service, name.span)),
                None => {
                    ok = false;
                    let known: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
                    sink.error(
                        "deploy::unknown_service",
                        name.span,
                        format!("unknown service `{}`", name.value),
                    )
                    .help(format!("services: {}", known.join(", ")));
                }
            }
        }
        out.push(Deployment {
            node: node.clone(),
            services,
        });
    }
    ok &= check_rules(&out, value, sink);
    ok.then_some(out)
}

fn check_node(name: &Spanned<String>, nodes: &[Node], sink: &mut Sink) -> bool {
    match nodes.iter().find(|n| n.name.value == name.value) {
        Some(node) if node.kind.value == NodeKind::Bridge => {
            sink.error(
                "deploy::bridge_node",
                name.span,
                format!("node `{}` is a bridge: no service runs on it", name.value),
            );
            false
        }
        Some(_) => true,
        None => {
            let names: Vec<&str> = nodes.iter().map(|n| n.name.value.as_str()).collect();
            sink.error(
                "deploy::unknown_node",
                name.span,
                format!("unknown node `{}`", name.value),
            )
            .help(format!("nodes of the topology: {}", names.join(", ")));
            false
        }
    }
}

/// One node per single service; what each service needs is deployed.
fn check_rules(deploy: &[Deployment], table: &Value, sink: &mut Sink) -> bool {
    let mut ok = true;
    let mut first: BTreeMap<Service, &Deployment> = BTreeMap::new();
    for d in deploy {
        for s in &d.services {
            match first.get(&s.value) {
                Some(other) if s.value.single() => {
                    ok = false;
                    sink.error(
                        "deploy::duplicate_service",
                        s.span,
                        format!(
                            "`{}` runs on one node only, and node `{}` already runs it",
                            s.value.name(),
                            other.node.value
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    first.insert(s.value, d);
                }
            }
        }
    }
    let span_of = |service: Service| -> Span {
        deploy
            .iter()
            .flat_map(|d| &d.services)
            .find(|s| s.value == service)
            .map_or(table.span, |s| s.span)
    };
    let mut needs = |service: Service, need: Service, why: &str| {
        if first.contains_key(&service) && !first.contains_key(&need) {
            ok = false;
            sink.error(
                "deploy::missing_service",
                span_of(service),
                format!("`{}` needs `{}` ({why})", service.name(), need.name()),
            )
            .help(format!("add \"{}\" to one node's list", need.name()));
        }
    };
    needs(Service::Juicefs, Service::Redis, "its metadata engine");
    needs(
        Service::Juicefs,
        Service::DisgrafsServer,
        "it holds the server's files",
    );
    needs(Service::DisgrafsTagger, Service::Redis, "the tag queue");
    needs(
        Service::DisgrafsTagger,
        Service::DisgrafsServer,
        "the server queues the jobs",
    );
    if let (Some(jfs), Some(server)) = (
        first.get(&Service::Juicefs),
        first.get(&Service::DisgrafsServer),
    ) && jfs.node.value != server.node.value
    {
        ok = false;
        sink.error(
            "deploy::juicefs_node",
            span_of(Service::Juicefs),
            format!(
                "`juicefs` is mounted on the server's node only, and `disgrafs-server` runs on \
                 `{}`",
                server.node.value
            ),
        )
        .help(format!("move \"juicefs\" to node `{}`", server.node.value));
    }
    ok
}
