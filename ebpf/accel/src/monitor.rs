//! Performance monitor: per-CPU counters from kernel tracepoints (tp_btf, or raw_tp where the
//! kernel has no BTF) — packets and bytes entering the stack on one interface, NET_RX softirq
//! runs and time, TCP retransmits, XDP redirects, redirect errors and exceptions, cpumap
//! kthread work — and, only when asked for, an XDP frame counter on the interface.
//!
//! The XDP counter is opt-in because any XDP program on a veth costs throughput (the veth then
//! runs NAPI without GRO batching); the tracepoints cost a few ns per event.

use std::{borrow::Borrow, fmt::Write as _, fs, os::unix::fs::MetadataExt as _, path::Path};

use aya::{
    Btf, Ebpf, Pod,
    maps::{Array, MapData, PerCpuArray},
    programs::{BtfTracePoint, RawTracePoint, Xdp, XdpMode, links::FdLink, xdp::XdpLinkId},
};
use ebpf_common::monitor::{
    CONFIG_MAP, COUNTERS_MAP, CPUMAP_TRACEPOINT, Config, CpuCounters, IFACE_COUNTERS_MAP,
    IfaceCounters, KernelOffsets, OFFSETS_GLOBAL, TRACEPOINTS, Tracepoint, UNKNOWN_OFFSET,
    XDP_PROGRAM,
};
use serde::Serialize;

pub use crate::object::AttachMode;
use crate::{
    Error, Result,
    kernel_btf::KernelBtf,
    object::{
        self, map_error, pin_error, pin_link, pinned_array, pinned_link_program, pinned_map,
        program_error,
    },
    pin::{PinLayout, PinnedDir},
    sock_redirect::{self, PinnedSockRedirect},
};

/// The accelerator's name in pin paths and messages.
pub const ACCELERATOR: &str = "monitor";

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Pin file names inside an attachment directory; tracepoint links are `tp_<tracepoint>`.
const XDP_LINK_PIN: &str = "xdp_link";
const TRACEPOINT_LINK_PREFIX: &str = "tp_";
const IFACE_COUNTERS_PIN: &str = "iface_counters";
const COUNTERS_PIN: &str = "counters";
const CONFIG_PIN: &str = "config";

/// Monitor counters, for one CPU or summed: the tracepoint programs' (serialized flat, as
/// `rx_packets`, …), the opt-in XDP counter's, and the socket redirect's hits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// What the tracepoint programs counted.
    #[serde(flatten)]
    pub kernel: CpuCounters,
    /// Frames at the interface's XDP hook (0 unless the XDP counter is attached).
    pub xdp_frames: u64,
    /// Their bytes.
    pub xdp_bytes: u64,
    /// Messages a socket redirect (`sock_redirect`) handed to a peer socket's receive queue.
    /// No tracepoint sees sockmap redirects: these are the per-CPU counters of its sk_msg
    /// program (the CPU that sent), added with [`Stats::add_sockmap`].
    pub sockmap_redirects: u64,
    /// Their bytes.
    pub sockmap_redirect_bytes: u64,
}

impl Counters {
    fn new(kernel: &CpuCounters, xdp: &IfaceCounters) -> Self {
        Self {
            kernel: *kernel,
            xdp_frames: xdp.frames,
            xdp_bytes: xdp.bytes,
            ..Self::default()
        }
    }

    /// What was counted since `before` (field by field; a counter never goes back).
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            kernel: self.kernel.since(&before.kernel),
            xdp_frames: self.xdp_frames.saturating_sub(before.xdp_frames),
            xdp_bytes: self.xdp_bytes.saturating_sub(before.xdp_bytes),
            sockmap_redirects: self
                .sockmap_redirects
                .saturating_sub(before.sockmap_redirects),
            sockmap_redirect_bytes: self
                .sockmap_redirect_bytes
                .saturating_sub(before.sockmap_redirect_bytes),
        }
    }

    fn plus(&self, other: &Counters) -> Counters {
        Counters {
            kernel: self.kernel.plus(&other.kernel),
            xdp_frames: self.xdp_frames.saturating_add(other.xdp_frames),
            xdp_bytes: self.xdp_bytes.saturating_add(other.xdp_bytes),
            sockmap_redirects: self
                .sockmap_redirects
                .saturating_add(other.sockmap_redirects),
            sockmap_redirect_bytes: self
                .sockmap_redirect_bytes
                .saturating_add(other.sockmap_redirect_bytes),
        }
    }
}

/// One CPU's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    /// The CPU's index.
    pub cpu: u32,
    /// What it counted.
    #[serde(flatten)]
    pub counters: Counters,
}

/// A snapshot of the monitor's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The monitored interface.
    pub iface: String,
    /// Per possible CPU, in CPU order.
    pub per_cpu: Vec<CpuStats>,
}

impl Stats {
    /// The counters summed over all CPUs.
    pub fn total(&self) -> Counters {
        self.per_cpu
            .iter()
            .fold(Counters::default(), |sum, c| sum.plus(&c.counters))
    }

    /// Per-CPU deltas from the earlier snapshot `before` (a CPU missing there counts from 0).
    pub fn since(&self, before: &Stats) -> Stats {
        let per_cpu = self
            .per_cpu
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
            .collect();
        Stats {
            iface: self.iface.clone(),
            per_cpu,
        }
    }

    /// Adds a socket redirect's per-CPU hits (redirected messages and bytes, counted on the
    /// sending CPU) to the CPUs' sockmap counters; a CPU this snapshot lacks is skipped.
    pub fn add_sockmap(&mut self, redirect: &[sock_redirect::CpuStats]) {
        for hits in redirect {
            if let Some(c) = self.per_cpu.iter_mut().find(|c| c.cpu == hits.cpu) {
                c.counters.sockmap_redirects += hits.counters.redirected_msgs;
                c.counters.sockmap_redirect_bytes += hits.counters.redirected_bytes;
            }
        }
    }

    /// The snapshot in Prometheus text exposition format (version 0.0.4): one counter family
    /// per field, labelled by `cpu` and `iface`, in base units (bytes, seconds).
    pub fn prometheus(&self) -> String {
        type Field = fn(&Counters) -> f64;
        let families: [(&str, &str, Field); 15] = [
            (
                "rx_packets",
                "Packets handed to the stack (netif_receive_skb) on the interface.",
                |c| c.kernel.rx_packets as f64,
            ),
            ("rx_bytes", "Bytes of those packets.", |c| {
                c.kernel.rx_bytes as f64
            }),
            ("net_rx_softirqs", "NET_RX softirq runs.", |c| {
                c.kernel.net_rx_softirqs as f64
            }),
            (
                "net_rx_softirq_seconds",
                "Time spent in NET_RX softirqs.",
                |c| c.kernel.net_rx_softirq_ns as f64 / 1e9,
            ),
            (
                "tcp_retransmits",
                "TCP segments retransmitted (all namespaces).",
                |c| c.kernel.tcp_retransmits as f64,
            ),
            ("xdp_redirects", "Successful XDP redirects.", |c| {
                c.kernel.xdp_redirects as f64
            }),
            ("xdp_redirect_errors", "Failed XDP redirects.", |c| {
                c.kernel.xdp_redirect_errors as f64
            }),
            (
                "xdp_exceptions",
                "XDP programs that aborted or returned an invalid action.",
                |c| c.kernel.xdp_exceptions as f64,
            ),
            ("cpumap_batches", "Batches run by cpumap kthreads.", |c| {
                c.kernel.cpumap_batches as f64
            }),
            (
                "cpumap_packets",
                "Frames processed by cpumap kthreads.",
                |c| c.kernel.cpumap_packets as f64,
            ),
            ("cpumap_drops", "Frames dropped by cpumap kthreads.", |c| {
                c.kernel.cpumap_drops as f64
            }),
            (
                "xdp_frames",
                "Frames at the interface's XDP hook (opt-in counter).",
                |c| c.xdp_frames as f64,
            ),
            ("xdp_bytes", "Bytes of those frames.", |c| {
                c.xdp_bytes as f64
            }),
            (
                "sockmap_redirects",
                "Messages socket redirects handed to a peer socket (sk_msg counters).",
                |c| c.sockmap_redirects as f64,
            ),
            ("sockmap_redirect_bytes", "Bytes of those messages.", |c| {
                c.sockmap_redirect_bytes as f64
            }),
        ];
        let iface = escape_label(&self.iface);
        let mut out = String::new();
        for (name, help, field) in families {
            let name = format!("accel_monitor_{name}_total");
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for c in &self.per_cpu {
                let _ = writeln!(
                    out,
                    "{name}{{cpu=\"{}\",iface=\"{iface}\"}} {}",
                    c.cpu,
                    field(&c.counters)
                );
            }
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Which program type carries the tracepoint counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavour {
    /// BTF-enabled tracepoints (the kernel has `/sys/kernel/btf/vmlinux`).
    TpBtf,
    /// Raw tracepoints: no BTF, so no interface scope and no byte counts.
    RawTp,
}

/// The monitor attached to one interface, owned by this process: dropping it detaches.
#[derive(Debug)]
pub struct Monitor {
    ebpf: Ebpf,
    iface: String,
    flavour: Flavour,
    scoped: bool,
    /// Attached tracepoints and their programs' names.
    tracepoints: Vec<(Tracepoint, &'static str, FdLink)>,
    xdp: Option<(XdpMode, XdpLinkId)>,
}

impl Monitor {
    /// Loads the programs and attaches the tracepoint counters, scoped to `iface` in the
    /// calling thread's network namespace; with `xdp`, also the XDP frame counter on `iface`
    /// in that mode.
    pub fn attach(iface: &str, xdp: Option<AttachMode>) -> Result<Self> {
        Self::attach_as(iface, xdp, Flavour::TpBtf)
    }

    /// Attaches like [`Monitor::attach`] but with raw_tp programs even where the kernel has
    /// BTF: what kernels without BTF get (packet counts unscoped, no bytes).
    pub fn attach_raw_tp(iface: &str, xdp: Option<AttachMode>) -> Result<Self> {
        Self::attach_as(iface, xdp, Flavour::RawTp)
    }

    fn attach_as(iface: &str, xdp: Option<AttachMode>, wanted: Flavour) -> Result<Self> {
        let ifindex = object::ifindex(iface).ok_or_else(|| Error::NoInterface(iface.to_owned()))?;
        let netns = fs::metadata("/proc/thread-self/ns/net")
            .map_err(Error::io("/proc/thread-self/ns/net"))?
            .ino();
        // Both BTF readers must work for tp_btf and the offsets; otherwise raw_tp.
        let btf = (wanted == Flavour::TpBtf)
            .then(|| Btf::from_sys_fs().ok().zip(KernelBtf::from_sys_fs().ok()))
            .flatten();
        let (flavour, offsets) = match &btf {
            Some((_, kernel)) => (Flavour::TpBtf, kernel_offsets(kernel)),
            None => (Flavour::RawTp, KernelOffsets::UNKNOWN),
        };
        let config = if offsets.can_scope() {
            Config {
                ifindex,
                netns_inum: u32::try_from(netns).unwrap_or(0),
            }
        } else {
            Config::UNSCOPED
        };
        let mut ebpf = object::load_with_global(ACCELERATOR, OBJECT, OFFSETS_GLOBAL, &offsets)?;
        let scoped = config.ifindex != 0;
        let mut config_map: Array<_, Config> =
            Array::try_from(object::map_mut(&mut ebpf, ACCELERATOR, CONFIG_MAP)?)
                .map_err(map_error(CONFIG_MAP))?;
        config_map
            .set(0, config, 0)
            .map_err(map_error(CONFIG_MAP))?;

        let mut tracepoints = Vec::new();
        for tp in TRACEPOINTS.iter().chain([&CPUMAP_TRACEPOINT]) {
            match attach_tracepoint(&mut ebpf, tp, btf.as_ref().map(|(b, _)| b)) {
                Ok((program, link)) => tracepoints.push((*tp, program, link)),
                Err(_) if tp.optional => {}
                Err(e) => return Err(e),
            }
        }

        let xdp = match xdp {
            Some(mode) => {
                let program: &mut Xdp = object::program(&mut ebpf, ACCELERATOR, XDP_PROGRAM)?;
                program.load().map_err(program_error("load", XDP_PROGRAM))?;
                Some(object::attach_xdp(program, XDP_PROGRAM, iface, mode)?)
            }
            None => None,
        };

        Ok(Self {
            ebpf,
            iface: iface.to_owned(),
            flavour,
            scoped,
            tracepoints,
            xdp,
        })
    }

    /// The XDP mode the kernel accepted, if the XDP counter is attached.
    pub fn xdp_mode(&self) -> Option<XdpMode> {
        self.xdp.as_ref().map(|(mode, _)| *mode)
    }

    /// tp_btf or raw_tp.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// Whether packet counts are limited to the interface (false without kernel BTF: then
    /// they cover every interface).
    pub fn scoped(&self) -> bool {
        self.scoped
    }

    /// The tracepoints attached (optional ones the kernel lacks are left out).
    pub fn tracepoints(&self) -> Vec<&'static str> {
        self.tracepoints.iter().map(|(tp, _, _)| tp.name).collect()
    }

    /// Reads the counters.
    pub fn stats(&self) -> Result<Stats> {
        let counters = object::map(&self.ebpf, ACCELERATOR, COUNTERS_MAP)?;
        let iface = object::map(&self.ebpf, ACCELERATOR, IFACE_COUNTERS_MAP)?;
        stats(
            &self.iface,
            &PerCpuArray::try_from(counters).map_err(map_error(COUNTERS_MAP))?,
            &PerCpuArray::try_from(iface).map_err(map_error(IFACE_COUNTERS_MAP))?,
        )
    }

    /// The kernel's ids of the loaded programs (tracepoints, then XDP if attached).
    pub fn program_ids(&self) -> Result<Vec<u32>> {
        let mut names: Vec<&'static str> = self.tracepoints.iter().map(|(_, p, _)| *p).collect();
        if self.xdp.is_some() {
            names.push(XDP_PROGRAM);
        }
        object::program_ids(&self.ebpf, ACCELERATOR, &names)
    }

    /// Attaches like [`Monitor::attach`] and pins links and maps under `layout`, so the
    /// monitor stays attached after this process exits; `scope` names the network namespace
    /// (`host` for the initial one). Refuses, changing nothing, if one is pinned there already.
    pub fn attach_pinned(
        iface: &str,
        xdp: Option<AttachMode>,
        layout: &PinLayout,
        scope: &str,
    ) -> Result<PinnedMonitor> {
        let dir = layout.attachment_dir(ACCELERATOR, scope, iface);
        let pins = layout.pin_attachment(ACCELERATOR, dir, |dir| {
            Self::attach(iface, xdp).and_then(|monitor| monitor.pin_into(dir))
        })?;
        Ok(PinnedMonitor {
            iface: iface.to_owned(),
            pins,
        })
    }

    /// Pins maps and links; on error, whatever was not pinned is dropped (detached) here.
    fn pin_into(mut self, dir: &Path) -> Result<()> {
        let mut maps = vec![(COUNTERS_MAP, COUNTERS_PIN), (CONFIG_MAP, CONFIG_PIN)];
        if self.xdp.is_some() {
            maps.push((IFACE_COUNTERS_MAP, IFACE_COUNTERS_PIN));
        }
        for (name, file) in maps {
            let path = dir.join(file);
            object::map(&self.ebpf, ACCELERATOR, name)?
                .pin(&path)
                .map_err(|e| pin_error(&path)(e.into()))?;
        }
        for (tp, _, link) in std::mem::take(&mut self.tracepoints) {
            pin_link(
                link,
                &dir.join(format!("{TRACEPOINT_LINK_PREFIX}{}", tp.name)),
            )?;
        }
        if let Some((_, id)) = self.xdp.take() {
            let xdp: &mut Xdp = object::program(&mut self.ebpf, ACCELERATOR, XDP_PROGRAM)?;
            let link = xdp
                .take_link(id)
                .map_err(program_error("take the link of", XDP_PROGRAM))?;
            let path = dir.join(XDP_LINK_PIN);
            // Kernels without XDP bpf_link (< 5.9) attach through netlink: nothing to pin.
            let link = FdLink::try_from(link).map_err(|e| pin_error(&path)(e.into()))?;
            pin_link(link, &path)?;
        }
        Ok(())
    }
}

/// The kernel's structure offsets the tp_btf program reads, from its BTF.
fn kernel_offsets(btf: &KernelBtf) -> KernelOffsets {
    let known = |offset: Option<u32>| offset.unwrap_or(UNKNOWN_OFFSET);
    KernelOffsets {
        skb_len: known(btf.offset("sk_buff", &["len"])),
        skb_dev: known(btf.offset("sk_buff", &["dev"])),
        dev_ifindex: known(btf.offset("net_device", &["ifindex"])),
        dev_nd_net: known(btf.offset("net_device", &["nd_net"])),
        net_inum: known(btf.offset("net", &["ns", "inum"])),
        reserved: 0,
    }
}

/// Loads and attaches the tp_btf program of `tp` (with `btf`) or else its raw_tp program.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    tp: &Tracepoint,
    btf: Option<&Btf>,
) -> Result<(&'static str, FdLink)> {
    match btf {
        Some(btf) => {
            let name = tp.btf_program;
            let program: &mut BtfTracePoint = object::program(ebpf, ACCELERATOR, name)?;
            program
                .load(tp.name, btf)
                .map_err(program_error("load", name))?;
            let id = program.attach().map_err(program_error("attach", name))?;
            let link = program
                .take_link(id)
                .map_err(program_error("take the link of", name))?;
            Ok((name, link.into()))
        }
        None => {
            let name = tp.raw_program;
            let program: &mut RawTracePoint = object::program(ebpf, ACCELERATOR, name)?;
            program.load().map_err(program_error("load", name))?;
            let id = program
                .attach(tp.name)
                .map_err(program_error("attach", name))?;
            let link = program
                .take_link(id)
                .map_err(program_error("take the link of", name))?;
            Ok((name, link.into()))
        }
    }
}

/// A monitor that lives in bpffs pins rather than in a process.
#[derive(Debug)]
pub struct PinnedMonitor {
    iface: String,
    pins: PinnedDir,
}

impl PinnedMonitor {
    /// Finds the monitor pinned for `iface` in `scope`.
    pub fn open(layout: &PinLayout, scope: &str, iface: &str) -> Result<Self> {
        let dir = layout.attachment_dir(ACCELERATOR, scope, iface);
        Ok(Self {
            iface: iface.to_owned(),
            pins: layout.open_attachment(ACCELERATOR, dir, COUNTERS_PIN)?,
        })
    }

    /// Where its pins are.
    pub fn dir(&self) -> &Path {
        self.pins.path()
    }

    /// The pinned links' file names: XDP (if attached), then tracepoints, sorted.
    fn links(&self) -> Result<Vec<String>> {
        let dir = self.pins.path();
        let mut links = Vec::new();
        for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
            let name = entry.map_err(Error::io(dir))?.file_name();
            let name = name.to_string_lossy();
            if name == XDP_LINK_PIN || name.starts_with(TRACEPOINT_LINK_PREFIX) {
                links.push(name.into_owned());
            }
        }
        links.sort();
        Ok(links)
    }

    /// The kernel's ids of the attached programs, read through the pinned links.
    pub fn program_ids(&self) -> Result<Vec<u32>> {
        self.links()?
            .iter()
            .map(|file| pinned_link_program(&self.pins.join(file)))
            .collect()
    }

    /// Reads the counters from the pinned maps, with the sockmap hits of every socket redirect
    /// pinned under the same prefix.
    pub fn stats(&self) -> Result<Stats> {
        let mut stats = self.own_stats()?;
        for redirect in PinnedSockRedirect::all(self.pins.layout())? {
            match redirect.per_cpu() {
                Ok(hits) => stats.add_sockmap(&hits),
                // Detached since it was listed.
                Err(_) if !redirect.dir().exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(stats)
    }

    fn own_stats(&self) -> Result<Stats> {
        let counters = pinned_array(&self.pins.join(COUNTERS_PIN))?;
        let iface_path = self.pins.join(IFACE_COUNTERS_PIN);
        if iface_path.exists() {
            stats(&self.iface, &counters, &pinned_array(&iface_path)?)
        } else {
            let per_cpu = slot0(&counters, COUNTERS_MAP)?
                .iter()
                .enumerate()
                .map(|(cpu, k)| CpuStats {
                    cpu: cpu as u32,
                    counters: Counters::new(k, &IfaceCounters::default()),
                })
                .collect();
            Ok(Stats {
                iface: self.iface.clone(),
                per_cpu,
            })
        }
    }

    /// Whether packet counts are limited to the interface.
    pub fn scoped(&self) -> Result<bool> {
        let path = self.pins.join(CONFIG_PIN);
        let config: Array<_, Config> = Array::try_from(aya::maps::Map::Array(pinned_map(&path)?))
            .map_err(map_error(CONFIG_MAP))?;
        Ok(config.get(&0, 0).map_err(map_error(CONFIG_MAP))?.ifindex != 0)
    }

    /// Detaches the programs (at once), then removes the pins: the kernel frees the programs
    /// and maps.
    pub fn detach(self) -> Result<()> {
        let links = self.links()?;
        let links: Vec<&str> = links.iter().map(String::as_str).collect();
        self.pins.detach(&links)
    }
}

fn stats<A, B>(
    iface: &str,
    counters: &PerCpuArray<A, CpuCounters>,
    iface_counters: &PerCpuArray<B, IfaceCounters>,
) -> Result<Stats>
where
    A: Borrow<MapData>,
    B: Borrow<MapData>,
{
    let kernel = slot0(counters, COUNTERS_MAP)?;
    let xdp = slot0(iface_counters, IFACE_COUNTERS_MAP)?;
    let per_cpu = kernel
        .iter()
        .zip(xdp.iter())
        .enumerate()
        .map(|(cpu, (k, x))| CpuStats {
            cpu: cpu as u32,
            counters: Counters::new(k, x),
        })
        .collect();
    Ok(Stats {
        iface: iface.to_owned(),
        per_cpu,
    })
}

fn slot0<T: Borrow<MapData>, V: Pod>(array: &PerCpuArray<T, V>, name: &str) -> Result<Vec<V>> {
    Ok(array.get(&0, 0).map_err(map_error(name))?.to_vec())
}
