//! Scenario files → checked [`Scenario`] → [`schedule`] of measured runs.
//!
//! A scenario names a topology and says what to measure on it: the variants to compare (each a
//! set of accelerators and link impairments), the workloads, the services to deploy and an
//! optional timeline of link events. It is read with the same diagnostics as topology files
//! (every problem reported, each pointing at `file:line:col`) and checked against its
//! topology: nodes, interfaces and links it names must exist there.
//!
//! ```toml
//! name = "baseline-rr"                 # [a-z0-9_-], at most 32 bytes
//! topology = "topologies/two-hosts.toml"   # relative to this file; or an inline table
//! seed = 7                             # default 0: drives the variant order
//! repetitions = 5                      # default 5
//! warmup = "1s"                        # default 1s: unmeasured load before the first run
//! window = "5s"                        # default 5s: workloads' default duration
//! [deploy]                             # services per node (see `crate::deploy`); replaces
//! server = ["redis"]                   # the topology's `[deploy]` when given
//! [[variants]]                         # at least one; ratios are against the first
//! name = "clean"
//! impair = { "client:eth0" = {} }      # replaces the impairment of the link with this
//!                                      # endpoint for this variant ({} = none; or one table
//!                                      # per endpoint: [{...}, {...}])
//! [[variants]]
//! name = "netem-1ms"
//! impair = { "client:eth0" = { delay = "1ms" } }
//! accelerators = [{ kind = "monitor", node = "server", iface = "eth0", xdp = "auto" }]
//! # or { kind = "sock_redirect", node = "server", ports = [5201], min_size = 1024 }:
//! # same-host TCP of these ports redirected; `min_size` is the gate's small-message bound
//! # (default 1024, 0 = no gate)
//! # Also: { kind = "cpu_balance", node, iface, cpus = [0, 1] }    XDP cpumap balancer
//! #       (or `weights = { "0" = 1, "1" = 3 }`; neither: every online CPU, weight 1)
//! #       { kind = "rps", node, iface, cpus = [0, 1] }           the kernel's RPS (rps_cpus)
//! #       { kind = "offloads", node, iface, tx = false, tso = false, gso = false, gro = true }
//! #       (ethtool -K settings of an interface for the variant, restored after it; any of the
//! #       four: transmit checksum, TCP and generic segmentation, generic receive offload)
//! # or { kind = "afxdp", node = "server", iface = "eth0", ports = [7777], cpus = [1] }: AF_XDP
//! # echo (`cpus`: where its queue threads run, round robin; default: anywhere)
//! # or { kind = "http_filter", node, iface, mode, policy = "policies/x.toml" } (relative to
//! # this file; grammar in accel's http_filter::policy)
//! [[workloads]]
//! kind = "tcp_rr"                      # tcp_rr | tcp_stream | udp_echo | http_upload |
//!                                      # http_download | http_search
//! from = "client"                      # the node that runs the client
//! to = "server:5201"                   # the node that runs the server, and its port
//! size = 64                            # tcp_rr: request = response = size (or `request`,
//!                                      # `response`); `connections` (default 1)
//! duration = "5s"                      # default: `window`
//! start = "0s"                         # default 0: when it starts in each measured run
//!                                      # (warm-up starts all at once); its process_cpu_*
//!                                      # metrics are its own only while it runs alone
//! from_cpus = [0]                      # CPUs for the client's threads (default: any)
//! to_cpus = [1]                        # CPUs for the server's threads
//! # tcp_stream: message (default 131072), write (default = message), connections
//! # udp_echo:   pps (offered packets/s, default 10000), size (default 64), generator
//! #             ("socket", default: a UDP socket client; "xdp": sends from XDP, counts echoes
//! #             at tc ingress, runs both ends' receive in NAPI threads pinned to from_cpus[0] /
//! #             to_cpus[0] and measures the server side's CPU; Linux 6.9+)
//! # http_upload:   size (default 65536), files (names per connection, default 16), connections
//! # http_download: size (default 65536), connections
//! # http_search:   query (default "name=lab"), connections
//! # (http_*: `to` is the node running disgrafs-server, port 8080; the token comes from [deploy])
//! [[events]]                           # optional, in time order from the start of each run
//! at = "2s"
//! link = "client:eth0"                 # any endpoint of the link
//! set = { loss = "5%" }                # an impairment as in `impair`, or "down" or "up"
//! ```

mod read;
mod schedule;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::{fmt, io};

use crate::topology::diag::Sink;
use crate::topology::{Diagnostics, Impairment, Nanos, Span, Spanned, Topology};

pub use crate::deploy::{Deployment, Service};
pub use crate::workloads::Generator;
pub use schedule::{Slot, schedule};

/// A checked scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its name (`[a-z0-9_-]`, at most 32 bytes).
    pub name: Spanned<String>,
    /// The topology it runs on.
    pub topology: Topology,
    /// The topology's file, or `None` when it is written inline.
    pub topology_file: Option<PathBuf>,
    /// Seed of every random choice (the variant order).
    pub seed: u64,
    /// How often each variant is measured.
    pub repetitions: u32,
    /// Unmeasured load before the first measured run.
    pub warmup: Nanos,
    /// Default duration of workloads.
    pub window: Nanos,
    /// The variants, in file order; ratios are against the first.
    pub variants: Vec<Variant>,
    /// The workloads, run together in every measured run.
    pub workloads: Vec<Workload>,
    /// Services to start, per node: the scenario's `[deploy]`, else its topology's.
    pub deploy: Vec<Deployment>,
    /// Link events, in time order, relative to the start of each run.
    pub events: Vec<Event>,
}

impl Scenario {
    /// How long one measured run lasts: until its last workload ends.
    pub fn run_length(&self) -> Nanos {
        self.workloads
            .iter()
            .map(|w| Nanos(w.start.0 + w.duration.0))
            .max()
            .unwrap_or(self.window)
    }

    /// The order of the measured runs (see [`schedule`]).
    pub fn schedule(&self) -> Vec<Slot> {
        schedule(self.seed, self.repetitions, self.variants.len())
    }
}

/// One configuration under comparison.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Its name (`[a-z0-9_-]`, at most 32 bytes), unique in the scenario.
    pub name: Spanned<String>,
    /// Accelerators attached while it runs.
    pub accelerators: Vec<Accelerator>,
    /// Link impairments that replace the topology's while it runs.
    pub impair: Vec<LinkImpairment>,
}

/// A link of the topology, named in the scenario by one of its endpoints.
#[derive(Clone, Debug)]
pub struct LinkRef {
    /// The endpoint as written, `node:iface`.
    pub endpoint: Spanned<String>,
    /// The link's index in the topology's links.
    pub index: usize,
}

/// Impairments of both directions of one link (egress of each end, in the link's order).
#[derive(Clone, Debug)]
pub struct LinkImpairment {
    /// The link.
    pub link: LinkRef,
    /// Egress impairment of each end.
    pub impair: [Impairment; 2],
}

/// An accelerator attached to a node.
#[derive(Clone, Debug)]
pub struct Accelerator {
    /// The node it is attached in.
    pub node: Spanned<String>,
    /// Which accelerator, with its settings.
    pub kind: AcceleratorKind,
}

/// The accelerators a scenario can attach, with their settings.
#[derive(Clone, Debug)]
pub enum AcceleratorKind {
    /// Per-CPU kernel counters scoped to an interface (`accel::monitor`).
    Monitor {
        /// The interface, one of the node's link ends.
        iface: Spanned<String>,
        /// The opt-in XDP frame counter on the interface and its mode (`xdp = "auto"`);
        /// `None`: tracepoints only.
        xdp: Option<MonitorMode>,
    },
    /// Same-host TCP socket redirect (`accel::sock_redirect`). Its sock_ops program is
    /// attached to a cgroup the runner's own process joins for the window, so it covers the
    /// workloads of every node that runs as a namespace of the runner, scoped by `ports`; and,
    /// when the node runs deployed services, to the cgroup they run in.
    SockRedirect {
        /// Ports whose connections are redirected (local or remote port), sorted, unique.
        ports: Vec<u16>,
        /// Messages below this many bytes count as small for the gate; 0 turns it off.
        min_size: u32,
    },
    /// The XDP CPU balancer on an interface (`accel::cpu_balance`); the transmit checksum
    /// offload of the link's other end is turned off while it is attached.
    CpuBalance {
        /// The receiving interface, one of the node's link ends.
        iface: Spanned<String>,
        /// `(cpu, weight)` pairs; empty: every online CPU, weight 1.
        weights: Vec<(u32, u32)>,
    },
    /// The kernel's Receive Packet Steering: the `rps_cpus` mask of every receive queue of an
    /// interface, restored when the variant ends.
    Rps {
        /// The receiving interface, one of the node's link ends.
        iface: Spanned<String>,
        /// The CPUs packets are steered to (not empty).
        cpus: Vec<usize>,
    },
    /// Offload settings of an interface for the variant (`ethtool -K`), restored after it:
    /// checksum and segmentation offloads off make a veth send wire-sized frames with real
    /// checksums, as a real NIC receives them; GRO on makes a veth without XDP poll its peer's
    /// frames through NAPI, as a NIC driver does.
    Offloads {
        /// The interface, one of the node's link ends.
        iface: Spanned<String>,
        /// Each offload named and whether it is on.
        settings: Vec<(accel::ethtool::Offload, bool)>,
    },
    /// AF_XDP echo of chosen UDP ports on an interface (`accel::afxdp`): replaces the node's
    /// kernel echo server on those ports while attached.
    Afxdp {
        /// The interface, one of the node's link ends.
        iface: Spanned<String>,
        /// UDP destination ports echoed from user space.
        ports: Vec<u16>,
        /// CPUs for the queue threads, round robin by queue (empty: not pinned).
        cpus: Vec<usize>,
    },
    /// The XDP HTTP request filter on an interface (`accel::http_filter`), with a policy
    /// read from a file (relative to the scenario file).
    HttpFilter {
        /// The interface, one of the node's link ends.
        iface: Spanned<String>,
        /// How the XDP program is attached.
        mode: MonitorMode,
        /// The policy file.
        policy_file: PathBuf,
        /// The policy it holds.
        policy: Box<accel::http_filter::Policy>,
    },
}

/// XDP attach mode of the monitor's opt-in XDP counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MonitorMode {
    /// Native when the driver supports it, else generic.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode.
    Generic,
}

/// Names of the accelerator kinds, for help texts.
pub const ACCELERATOR_KINDS: &[&str] = &[
    "monitor",
    "sock_redirect",
    "cpu_balance",
    "rps",
    "offloads",
    "afxdp",
    "http_filter",
];

/// A load generator between two nodes.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The whole entry.
    pub span: Span,
    /// The node running the client.
    pub from: Spanned<String>,
    /// The server's node and address.
    pub to: Target,
    /// When it starts in each measured run, from the start of the run.
    pub start: Nanos,
    /// How long it runs in each measured run.
    pub duration: Nanos,
    /// CPUs for the client's threads (empty: not pinned).
    pub from_cpus: Vec<usize>,
    /// CPUs for the server's threads (empty: not pinned).
    pub to_cpus: Vec<usize>,
    /// What it does.
    pub kind: WorkloadKind,
}

/// Where a workload's server listens.
#[derive(Clone, Debug)]
pub struct Target {
    /// The node.
    pub node: Spanned<String>,
    /// Its address (the node's first address, IPv4 first; loopback for a node without
    /// addresses that is also the client) and the port.
    pub addr: SocketAddr,
}

/// The kinds of workload and their parameters (sizes in bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Request/response over TCP: each connection sends a request and waits for the response.
    TcpRr {
        /// Request size.
        request: usize,
        /// Response size.
        response: usize,
        /// Concurrent connections.
        connections: usize,
    },
    /// A one-way TCP stream.
    TcpStream {
        /// Application message size.
        message: usize,
        /// Bytes per `write` call (at most `message`).
        write: usize,
        /// Concurrent connections.
        connections: usize,
    },
    /// UDP datagrams echoed back by the server.
    UdpEcho {
        /// Offered datagrams per second.
        pps: u64,
        /// Datagram payload size.
        size: usize,
        /// How the client sends and receives.
        generator: Generator,
    },
    /// Uploads (`PUT /api/files/NAME`) to a DisGraFS server, each connection cycling over
    /// its own set of file names (so the stored data stays bounded).
    HttpUpload {
        /// Bytes per file.
        size: usize,
        /// File names per connection.
        files: usize,
        /// Concurrent connections.
        connections: usize,
    },
    /// Downloads (`GET /api/files/NAME`) of one file of `size` bytes, uploaded before the run.
    HttpDownload {
        /// Bytes of the file.
        size: usize,
        /// Concurrent connections.
        connections: usize,
    },
    /// Searches (`GET /api/search?QUERY`).
    HttpSearch {
        /// The query string, like `name=lab` or `tags=pdf`.
        query: String,
        /// Concurrent connections.
        connections: usize,
    },
}

impl WorkloadKind {
    /// The kind's name in files (one of [`WORKLOAD_KINDS`]).
    pub fn name(&self) -> &'static str {
        match self {
            WorkloadKind::TcpRr { .. } => "tcp_rr",
            WorkloadKind::TcpStream { .. } => "tcp_stream",
            WorkloadKind::UdpEcho { .. } => "udp_echo",
            WorkloadKind::HttpUpload { .. } => "http_upload",
            WorkloadKind::HttpDownload { .. } => "http_download",
            WorkloadKind::HttpSearch { .. } => "http_search",
        }
    }
}

/// Names of the workload kinds, for help texts.
pub const WORKLOAD_KINDS: &[&str] = &[
    "tcp_rr",
    "tcp_stream",
    "udp_echo",
    "http_upload",
    "http_download",
    "http_search",
];

/// A change to a link at a given time of each run.
#[derive(Clone, Debug)]
pub struct Event {
    /// When, from the start of the run.
    pub at: Spanned<Nanos>,
    /// The link.
    pub link: LinkRef,
    /// What happens.
    pub action: EventAction,
}

/// What an event does to its link.
#[derive(Clone, Debug, PartialEq)]
pub enum EventAction {
    /// Replaces the impairment of each direction (egress of each end, in the link's order).
    Impair(Box<[Impairment; 2]>),
    /// Sets both ends down.
    Down,
    /// Sets both ends up.
    Up,
}

/// A checked scenario and the warnings found while reading it and its topology.
#[derive(Debug)]
pub struct Loaded {
    /// The scenario.
    pub scenario: Scenario,
    /// Warnings (never errors), of the scenario file and then of the topology file.
    pub warnings: Diagnostics,
}

/// Why a scenario could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The scenario file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The scenario or its topology is invalid: at least one error, maybe warnings; those of
    /// the scenario file come first.
    Invalid(Diagnostics),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            LoadError::Invalid(d) => write!(f, "invalid scenario: {} error(s)", d.error_count()),
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads and checks the scenario file at `path` and its topology.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&path.display().to_string(), &text, base).map_err(LoadError::Invalid)
}

/// Reads and checks a scenario from `text`; `name` is the file name shown in diagnostics and
/// `base` the directory a topology path is relative to.
pub fn parse(name: &str, text: &str, base: &Path) -> Result<Loaded, Diagnostics> {
    let mut sink = Sink::default();
    let mut topology_diagnostics = Diagnostics::default();
    let scenario = crate::topology::value::from_toml(text, &mut sink)
        .and_then(|root| read::read(&root, base, &mut sink, &mut topology_diagnostics));
    let failed = sink.has_errors() || topology_diagnostics.error_count() > 0;
    let mut diagnostics = sink.finish(name, text);
    diagnostics.extend(topology_diagnostics);
    match scenario {
        Some(scenario) if !failed => Ok(Loaded {
            scenario,
            warnings: diagnostics,
        }),
        _ => Err(diagnostics),
    }
}
