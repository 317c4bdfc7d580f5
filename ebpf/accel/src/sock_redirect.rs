//! Socket redirect for same-host TCP: a sock_ops program on a cgroup v2 directory records the
//! established sockets of the configured ports in a sockhash, and an sk_msg program on that
//! sockhash hands messages straight to the peer socket. A per-socket gate keeps streams of
//! small writes on TCP; the rule, and why it never reorders bytes, is in
//! [`ebpf_common::sock_redirect`].
//!
//! Detaching stops recording new connections. Connections already recorded keep the programs
//! they were set up with (the kernel holds them per socket) until they close; then the kernel
//! frees programs and maps.

use std::{
    borrow::Borrow,
    fs,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray, SockHash},
    programs::{CgroupAttachMode, SkMsg, SockOps, links::FdLink, sock_ops::SockOpsLinkId},
    sys::SyscallError,
};
use ebpf_common::sock_redirect::{
    COUNTERS_MAP, Counters, PORTS_MAP, PortConfig, SK_MSG_PROGRAM, SOCK_OPS_PROGRAM, SOCKETS_MAP,
    STATES_MAP, SockKey, SockState,
};
use serde::Serialize;

use crate::{
    Error, Result,
    object::{
        self, map_error, pin_error, pin_link, pinned_array, pinned_link_program, pinned_map,
        program_error,
    },
    pin::{PinLayout, PinnedDir},
};

/// The accelerator's name in pin paths and messages.
pub const ACCELERATOR: &str = "sock_redirect";
/// Most ports one redirect scopes.
pub use ebpf_common::sock_redirect::MAX_PORTS;

/// Default [`Config::min_size`]: a message below 1 KiB is small.
pub const DEFAULT_MIN_SIZE: u32 = 1024;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_redirect"));

/// `BPF_SK_MSG_VERDICT`, the attach type of an sk_msg program on a sockmap.
const BPF_SK_MSG_VERDICT: u32 = 7;

/// Pin file names inside an attachment directory.
const SOCK_OPS_LINK_PIN: &str = "sock_ops_link";
const SK_MSG_PROGRAM_PIN: &str = "sk_msg_program";
const SOCKETS_PIN: &str = "sockets";
const STATES_PIN: &str = "states";
const PORTS_PIN: &str = "ports";
const COUNTERS_PIN: &str = "counters";

/// Which connections are redirected and how the gate judges them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    ports: Vec<u16>,
    min_size: u32,
}

impl Config {
    /// Connections with a local or remote port in `ports` (1 to 64 ports, none 0); messages
    /// below `min_size` bytes count as small for the gate (0 turns the gate off).
    pub fn new(ports: &[u16], min_size: u32) -> Result<Self> {
        let invalid = |message: String| Error::Config {
            accelerator: ACCELERATOR,
            message,
        };
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        if ports.is_empty() {
            return Err(invalid("no ports given".into()));
        }
        if ports.len() > MAX_PORTS as usize {
            return Err(invalid(format!(
                "{} ports given, at most {MAX_PORTS} fit",
                ports.len()
            )));
        }
        if ports.first() == Some(&0) {
            return Err(invalid("port 0 is not a port to redirect".into()));
        }
        Ok(Self { ports, min_size })
    }

    /// The ports in scope, sorted.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The gate's small-message bound in bytes.
    pub fn min_size(&self) -> u32 {
        self.min_size
    }
}

/// Counters, for one CPU or summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Sockets recorded at ESTABLISHED.
    pub established: u64,
    /// Sockets that could not be recorded.
    pub record_failed: u64,
    /// Gate states removed at `TCP_CLOSE`.
    pub removed: u64,
    /// Messages redirected to the peer.
    pub redirected_msgs: u64,
    /// Their bytes.
    pub redirected_bytes: u64,
    /// Messages passed to TCP.
    pub passed_msgs: u64,
    /// Their bytes.
    pub passed_bytes: u64,
    /// Sockets switched to TCP because their peer was missing.
    pub no_peer: u64,
    /// Sockets switched to TCP by the small-message gate.
    pub gated: u64,
    /// Switched sockets that left the sockhash for plain TCP.
    pub left: u64,
    /// Switched sockets that stayed in it (their peer had redirected into them).
    pub stayed: u64,
    /// Bytes sent through TCP by sockets after they left, counted when they closed.
    pub left_bytes: u64,
}

impl From<&Counters> for Totals {
    fn from(c: &Counters) -> Self {
        Self {
            established: c.established,
            record_failed: c.record_failed,
            removed: c.removed,
            redirected_msgs: c.redirected_msgs,
            redirected_bytes: c.redirected_bytes,
            passed_msgs: c.passed_msgs,
            passed_bytes: c.passed_bytes,
            no_peer: c.no_peer,
            gated: c.gated,
            left: c.left,
            stayed: c.stayed,
            left_bytes: c.left_bytes,
        }
    }
}

/// `Totals { field: $a.field.$op($b.field), .. }` over every field.
macro_rules! zip_totals {
    ($a:expr, $b:expr, $op:ident) => {
        Totals {
            established: $a.established.$op($b.established),
            record_failed: $a.record_failed.$op($b.record_failed),
            removed: $a.removed.$op($b.removed),
            redirected_msgs: $a.redirected_msgs.$op($b.redirected_msgs),
            redirected_bytes: $a.redirected_bytes.$op($b.redirected_bytes),
            passed_msgs: $a.passed_msgs.$op($b.passed_msgs),
            passed_bytes: $a.passed_bytes.$op($b.passed_bytes),
            no_peer: $a.no_peer.$op($b.no_peer),
            gated: $a.gated.$op($b.gated),
            left: $a.left.$op($b.left),
            stayed: $a.stayed.$op($b.stayed),
            left_bytes: $a.left_bytes.$op($b.left_bytes),
        }
    };
}

impl Totals {
    fn plus(&self, c: &Self) -> Self {
        zip_totals!(self, c, saturating_add)
    }

    /// What was counted since `before`, field by field (a counter never goes back).
    pub fn since(&self, before: &Self) -> Self {
        zip_totals!(self, before, saturating_sub)
    }
}

/// One CPU's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    /// The CPU's index.
    pub cpu: u32,
    /// What it counted.
    #[serde(flatten)]
    pub counters: Totals,
}

/// A snapshot of the redirect's counters and maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Per possible CPU, in CPU order.
    pub per_cpu: Vec<CpuStats>,
    /// Sockets in the sockhash now.
    pub sockets: usize,
    /// Gate states in their map now (one per recorded socket).
    pub states: usize,
}

impl Stats {
    /// The counters summed over all CPUs.
    pub fn total(&self) -> Totals {
        self.per_cpu
            .iter()
            .fold(Totals::default(), |sum, c| sum.plus(&c.counters))
    }

    /// Per-CPU counts since the earlier snapshot `before` (a CPU missing there counts from 0).
    pub fn per_cpu_since(&self, before: &Stats) -> Vec<CpuStats> {
        self.per_cpu
            .iter()
            .map(|now| {
                let was = before
                    .per_cpu
                    .iter()
                    .find(|c| c.cpu == now.cpu)
                    .map(|c| c.counters)
                    .unwrap_or_default();
                CpuStats {
                    cpu: now.cpu,
                    counters: now.counters.since(&was),
                }
            })
            .collect()
    }
}

/// The socket redirect attached to one cgroup, owned by this process: dropping it detaches
/// (connections already recorded keep redirecting until they close).
#[derive(Debug)]
pub struct SockRedirect {
    ebpf: Ebpf,
    link: SockOpsLinkId,
}

impl SockRedirect {
    /// Loads the programs, writes the ports, attaches sk_msg to the sockhash and sock_ops to
    /// the cgroup v2 directory `cgroup`.
    pub fn attach(cgroup: &Path, config: &Config) -> Result<Self> {
        let cgroup_dir = fs::File::open(cgroup).map_err(Error::io(cgroup))?;
        let mut ebpf = object::load(ACCELERATOR, OBJECT)?;

        let ports = ebpf.map_mut(PORTS_MAP).ok_or(Error::WrongType {
            object: ACCELERATOR,
            name: PORTS_MAP,
        })?;
        let mut ports: HashMap<_, u16, PortConfig> =
            HashMap::try_from(ports).map_err(map_error(PORTS_MAP))?;
        let port_config = PortConfig {
            min_size: config.min_size,
        };
        for &port in &config.ports {
            ports
                .insert(port, port_config, 0)
                .map_err(map_error(PORTS_MAP))?;
        }

        let sk_msg: &mut SkMsg = object::program(&mut ebpf, ACCELERATOR, SK_MSG_PROGRAM)?;
        sk_msg
            .load()
            .map_err(program_error("load", SK_MSG_PROGRAM))?;
        let sk_msg_fd = sk_msg
            .fd()
            .map_err(program_error("open", SK_MSG_PROGRAM))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(Error::io("sk_msg program fd"))?;
        let sockets: SockHash<_, SockKey> =
            SockHash::try_from(object::map(&ebpf, ACCELERATOR, SOCKETS_MAP)?)
                .map_err(map_error(SOCKETS_MAP))?;
        object::attach_to_map(sk_msg_fd.as_fd(), sockets.fd().as_fd(), BPF_SK_MSG_VERDICT)
            .map_err(|e| Error::Program {
                action: format!("attach to map {SOCKETS_MAP}"),
                program: SK_MSG_PROGRAM,
                source: Box::new(
                    SyscallError {
                        call: "bpf_prog_attach",
                        io_error: e,
                    }
                    .into(),
                ),
            })?;

        let sock_ops: &mut SockOps = object::program(&mut ebpf, ACCELERATOR, SOCK_OPS_PROGRAM)?;
        sock_ops
            .load()
            .map_err(program_error("load", SOCK_OPS_PROGRAM))?;
        // A cgroup bpf_link takes no attach flags (the kernel attaches links as multi, next to
        // other programs): Single passes 0.
        let link = sock_ops
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(program_error(
                &format!("attach to cgroup {}", cgroup.display()),
                SOCK_OPS_PROGRAM,
            ))?;
        Ok(Self { ebpf, link })
    }

    /// Reads the counters and counts the map entries.
    pub fn stats(&self) -> Result<Stats> {
        stats(
            &PerCpuArray::try_from(object::map(&self.ebpf, ACCELERATOR, COUNTERS_MAP)?)
                .map_err(map_error(COUNTERS_MAP))?,
            &SockHash::try_from(object::map(&self.ebpf, ACCELERATOR, SOCKETS_MAP)?)
                .map_err(map_error(SOCKETS_MAP))?,
            &HashMap::try_from(object::map(&self.ebpf, ACCELERATOR, STATES_MAP)?)
                .map_err(map_error(STATES_MAP))?,
        )
    }

    /// The kernel's ids of the two loaded programs (sock_ops, sk_msg).
    pub fn program_ids(&self) -> Result<Vec<u32>> {
        object::program_ids(&self.ebpf, ACCELERATOR, &[SOCK_OPS_PROGRAM, SK_MSG_PROGRAM])
    }

    /// Attaches like [`SockRedirect::attach`] and pins link, program and maps under `layout`
    /// (directory `cg<inode of the cgroup>` of `scope`), so the redirect stays after this
    /// process exits. Refuses, changing nothing, if one is pinned there already.
    pub fn attach_pinned(
        cgroup: &Path,
        config: &Config,
        layout: &PinLayout,
        scope: &str,
    ) -> Result<PinnedSockRedirect> {
        let dir = attachment_dir(layout, scope, cgroup)?;
        let pins = layout.pin_attachment(ACCELERATOR, dir, |dir| {
            Self::attach(cgroup, config).and_then(|redirect| redirect.pin_into(dir))
        })?;
        Ok(PinnedSockRedirect { pins })
    }

    /// Pins maps, the sk_msg program and the sock_ops link; on error, whatever was not pinned
    /// is dropped (detached) here.
    fn pin_into(mut self, dir: &Path) -> Result<()> {
        for (name, file) in [
            (SOCKETS_MAP, SOCKETS_PIN),
            (STATES_MAP, STATES_PIN),
            (PORTS_MAP, PORTS_PIN),
            (COUNTERS_MAP, COUNTERS_PIN),
        ] {
            let path = dir.join(file);
            object::map(&self.ebpf, ACCELERATOR, name)?
                .pin(&path)
                .map_err(|e| pin_error(&path)(e.into()))?;
        }
        let path = dir.join(SK_MSG_PROGRAM_PIN);
        let sk_msg: &mut SkMsg = object::program(&mut self.ebpf, ACCELERATOR, SK_MSG_PROGRAM)?;
        sk_msg.pin(&path).map_err(|e| pin_error(&path)(e.into()))?;

        let sock_ops: &mut SockOps =
            object::program(&mut self.ebpf, ACCELERATOR, SOCK_OPS_PROGRAM)?;
        let link = sock_ops
            .take_link(self.link)
            .map_err(program_error("take the link of", SOCK_OPS_PROGRAM))?;
        let path = dir.join(SOCK_OPS_LINK_PIN);
        // Kernels without cgroup bpf_link (< 5.7) attach with BPF_PROG_ATTACH: nothing to pin.
        let link = FdLink::try_from(link).map_err(|e| pin_error(&path)(e.into()))?;
        pin_link(link, &path)?;
        Ok(())
    }
}

/// A socket redirect that lives in bpffs pins rather than in a process.
#[derive(Debug)]
pub struct PinnedSockRedirect {
    pins: PinnedDir,
}

impl PinnedSockRedirect {
    /// Finds the redirect pinned for `cgroup` in `scope`.
    pub fn open(layout: &PinLayout, scope: &str, cgroup: &Path) -> Result<Self> {
        let dir = attachment_dir(layout, scope, cgroup)?;
        Ok(Self {
            pins: layout.open_attachment(ACCELERATOR, dir, COUNTERS_PIN)?,
        })
    }

    /// Every redirect pinned under `layout`, in any scope (none: an empty list).
    pub fn all(layout: &PinLayout) -> Result<Vec<Self>> {
        let mut found = Vec::new();
        let top = layout.root().join(ACCELERATOR);
        for scope in subdirs(&top)? {
            for dir in subdirs(&scope)? {
                // A directory being pinned or removed right now has no counters yet or any more.
                if dir.join(COUNTERS_PIN).exists() {
                    found.push(Self {
                        pins: layout.open_attachment(ACCELERATOR, dir, COUNTERS_PIN)?,
                    });
                }
            }
        }
        Ok(found)
    }

    /// Where its pins are.
    pub fn dir(&self) -> &Path {
        self.pins.path()
    }

    /// Its per-CPU counters alone (without counting the map entries as [`Self::stats`] does).
    pub fn per_cpu(&self) -> Result<Vec<CpuStats>> {
        per_cpu(&pinned_array(&self.pins.join(COUNTERS_PIN))?)
    }

    /// The kernel's ids of the attached programs (sock_ops, sk_msg), read through the pins.
    pub fn program_ids(&self) -> Result<Vec<u32>> {
        let sock_ops = pinned_link_program(&self.pins.join(SOCK_OPS_LINK_PIN))?;
        let path = self.pins.join(SK_MSG_PROGRAM_PIN);
        let sk_msg = SkMsg::from_pin(&path).map_err(|e| pin_error(&path)(e.into()))?;
        let info = sk_msg
            .info()
            .map_err(program_error("query", SK_MSG_PROGRAM))?;
        Ok(vec![sock_ops, info.id()])
    }

    /// Reads the counters and counts the map entries from the pinned maps.
    pub fn stats(&self) -> Result<Stats> {
        let sockets = self.pins.join(SOCKETS_PIN);
        let states = self.pins.join(STATES_PIN);
        stats(
            &pinned_array(&self.pins.join(COUNTERS_PIN))?,
            &SockHash::try_from(Map::SockHash(pinned_map(&sockets)?))
                .map_err(map_error(&sockets.display().to_string()))?,
            &HashMap::try_from(Map::HashMap(pinned_map(&states)?))
                .map_err(map_error(&states.display().to_string()))?,
        )
    }

    /// Detaches sock_ops from the cgroup (at once), then removes the pins. Connections already
    /// recorded keep redirecting until they close; the kernel frees the rest after them.
    pub fn detach(self) -> Result<()> {
        self.pins.detach(&[SOCK_OPS_LINK_PIN])
    }
}

/// `<layout>/sock_redirect/<scope>/cg<inode>`: a cgroup directory's inode names it uniquely
/// however its path is spelled.
fn attachment_dir(layout: &PinLayout, scope: &str, cgroup: &Path) -> Result<PathBuf> {
    let meta = fs::metadata(cgroup).map_err(Error::io(cgroup))?;
    if !meta.is_dir() {
        return Err(Error::Config {
            accelerator: ACCELERATOR,
            message: format!("{} is not a cgroup directory", cgroup.display()),
        });
    }
    Ok(layout.attachment_dir(ACCELERATOR, scope, &format!("cg{}", meta.ino())))
}

/// The directories in `dir` (none if it does not exist), sorted.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let path = entry.map_err(Error::io(dir))?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn per_cpu<C: Borrow<MapData>>(counters: &PerCpuArray<C, Counters>) -> Result<Vec<CpuStats>> {
    Ok(counters
        .get(&0, 0)
        .map_err(map_error(COUNTERS_MAP))?
        .iter()
        .enumerate()
        .map(|(cpu, c)| CpuStats {
            cpu: cpu as u32,
            counters: Totals::from(c),
        })
        .collect())
}

fn stats<C, S, T>(
    counters: &PerCpuArray<C, Counters>,
    sockets: &SockHash<S, SockKey>,
    states: &HashMap<T, SockKey, SockState>,
) -> Result<Stats>
where
    C: Borrow<MapData>,
    S: Borrow<MapData>,
    T: Borrow<MapData>,
{
    Ok(Stats {
        per_cpu: per_cpu(counters)?,
        sockets: count(sockets.keys(), SOCKETS_MAP)?,
        states: count(states.keys(), STATES_MAP)?,
    })
}

/// Counts map keys; a key deleted while iterating ends the walk early, which only undercounts
/// entries that were going away.
fn count<K>(
    keys: impl Iterator<Item = std::result::Result<K, aya::maps::MapError>>,
    name: &str,
) -> Result<usize> {
    let mut n = 0;
    for key in keys {
        key.map_err(map_error(name))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_empty_zero_and_too_many_ports() {
        let err = |ports: &[u16]| Config::new(ports, 0).unwrap_err().to_string();
        assert!(err(&[]).contains("no ports"), "{}", err(&[]));
        assert!(err(&[0, 80]).contains("port 0"), "{}", err(&[0, 80]));
        let many: Vec<u16> = (1..=65).collect();
        assert!(err(&many).contains("at most 64"), "{}", err(&many));
        let config = Config::new(&[5201, 8080, 5201], 512).unwrap();
        assert_eq!(config.ports(), [5201, 8080]);
        assert_eq!(config.min_size(), 512);
    }

    #[test]
    fn missing_cgroup_is_named() {
        let layout = PinLayout::new("/sys/fs/bpf", "dgl");
        let err = attachment_dir(&layout, "host", Path::new("/nonexistent-cgroup")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-cgroup"), "{err}");
    }
}
