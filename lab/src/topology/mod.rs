//! Topology files → checked model → [`Plan`].
//!
//! A topology is read from the lab's TOML format or from containerlab's `.clab.yml`
//! ([`Format`]) into one model ([`Topology`]), checked as a whole (every problem is reported,
//! each pointing at `file:line:col`, see [`Diagnostics`]), and turned into a [`Plan`]: the
//! ordered list of kernel resources that `lab up` creates, and removes in reverse order.
//!
//! The TOML format:
//!
//! ```toml
//! name = "two-hosts"                 # [a-z0-9_-], at most 32 bytes
//! [pool]                             # optional; default derived from the name
//! ipv4 = "10.77.0.0/16"
//! ipv6 = "fd77::/48"
//! [nodes.client]
//! kind = "netns"                     # netns (default) | bridge | host | vm | container
//! forwarding = false                 # true: IPv4 and IPv6 forwarding on (a router); false:
//!                                    # off, also when the host forwards
//! routes = [{ to = "default", via = "10.77.0.2" }]
//! exec = ["sysctl -w net.core.somaxconn=4096"]   # run with `sh -c` once wired
//! [nodes.server]
//! kind = "vm"                        # a QEMU VM (see `crate::node::vm`)
//! kernel = "6.12"                    # from vm-images/kernels.toml (default 6.12)
//! cpus = 1                           # default 1
//! memory = 512                       # MiB, default 512
//! [nodes.web]
//! kind = "container"                 # a container (see `crate::node::container`)
//! image = "disgrafs-lab/base"        # from `lab images build`, or any local image
//! cmd = ["/bin/busybox", "httpd", "-f", "-p", "8080"]  # or one string, split at whitespace
//! [[links]]
//! endpoints = ["client:eth0", "server:eth0"]
//! addresses = ["10.77.0.1/24", ["10.77.0.2/24", "fd77::2/64"]]  # one entry per end that is
//!                                    # not a bridge port; omitted → from the pool (v4 and v6)
//! mtu = 1500
//! impair = { delay = "1ms", jitter = "100us", loss = "0.1%", rate = "1gbit" }
//! # or one table per direction (egress of each end): impair = [{ ... }, { ... }]
//! ```

mod clab;
pub(crate) mod diag;
mod model;
mod plan;
pub(crate) mod toml_file;
mod units;
pub(crate) mod validate;
pub(crate) mod value;

use std::path::{Path, PathBuf};
use std::{fmt, io};

pub use diag::{Diagnostic, Diagnostics, Severity, Span, Spanned};
pub use model::{
    Addressing, Endpoint, Format, Impairment, Link, Node, NodeKind, Pools, Route, Topology,
};
pub use plan::{Netns, Plan, PlanOptions, Prefix, Step, Undo, VethEnd, lab_tag};
pub use units::{Cidr, DURATION_UNITS, Nanos, Percent, Rate};

/// A checked topology and the warnings found while reading it.
#[derive(Debug)]
pub struct Loaded {
    /// The topology, ready to plan.
    pub topology: Topology,
    /// Warnings (never errors).
    pub warnings: Diagnostics,
}

/// Why a topology file could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The file is invalid: at least one error, maybe warnings.
    Invalid(Diagnostics),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            LoadError::Invalid(d) => write!(f, "invalid topology: {} error(s)", d.error_count()),
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads and checks the topology file at `path` (format from its name, see
/// [`Format::from_path`]).
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&path.display().to_string(), &text, Format::from_path(path)).map_err(LoadError::Invalid)
}

/// Reads and checks a topology from `text`; `name` is the file name shown in diagnostics.
pub fn parse(name: &str, text: &str, format: Format) -> Result<Loaded, Diagnostics> {
    let mut sink = diag::Sink::default();
    let root = match format {
        Format::Toml => value::from_toml(text, &mut sink),
        Format::Containerlab => value::from_yaml(text, &mut sink),
    };
    let topology = root.and_then(|root| match format {
        Format::Toml => toml_file::read(&root, &mut sink),
        Format::Containerlab => clab::read(&root, &mut sink),
    });
    let topology = topology.map(|mut t| {
        validate::check(&mut t, &mut sink);
        t
    });
    match topology {
        Some(topology) if !sink.has_errors() => Ok(Loaded {
            topology,
            warnings: sink.finish(name, text),
        }),
        _ => Err(sink.finish(name, text)),
    }
}

/// Splits `"node:iface"`, pointing each part at its own text.
pub(crate) fn endpoint(text: &Spanned<String>, sink: &mut diag::Sink) -> Option<Endpoint> {
    let value = &text.value;
    let quoted = text.span.end - text.span.start == value.len() + 2;
    let start = text.span.start + usize::from(quoted);
    match value.split_once(':') {
        Some((node, iface)) if !node.is_empty() && !iface.is_empty() => {
            let at = start + node.len() + 1;
            let exact = quoted || text.span.end - text.span.start == value.len();
            let part = |s: &str, from: usize| {
                let span = if exact {
                    Span::new(from, from + s.len())
                } else {
                    text.span
                };
                Spanned::new(s.to_owned(), span)
            };
            Some(Endpoint {
                node: part(node, start),
                iface: part(iface, at),
            })
        }
        _ => {
            sink.error(
                "topology::bad_endpoint",
                text.span,
                format!("endpoint `{value}` is not `node:interface`"),
            );
            None
        }
    }
}

/// The default address pools of lab `name`: `10.H.0.0/16` and `fd64:HHHH::/32`, where `HHHH`
/// is the lab's 16-bit name hash and `H` its high byte, so labs that are up at once rarely
/// share a pool (`lab up` must still refuse overlapping pools of labs already up).
pub(crate) fn default_pools(name: &str) -> Pools {
    let hash = plan::lab_hash(name);
    let [high, _] = hash.to_be_bytes();
    Pools {
        ipv4: Cidr {
            addr: [10, high, 0, 0].into(),
            prefix: 16,
        },
        ipv6: Cidr {
            addr: [0xfd64, hash, 0, 0, 0, 0, 0, 0].into(),
            prefix: 32,
        },
    }
}
