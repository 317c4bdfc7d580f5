//! Performance monitor (first slice): per-CPU frames and bytes at the XDP hook of one
//! interface, and per-CPU `netif_receive_skb` events from a BTF tracepoint.

use std::{
    borrow::Borrow,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, Pod,
    maps::{Map, MapData, PerCpuArray},
    programs::{
        BtfTracePoint, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tp_btf::BtfTracePointLinkId,
        xdp::XdpLinkId,
    },
};
use ebpf_common::monitor::{
    IFACE_COUNTERS_MAP, IfaceCounters, NETIF_RECEIVE_PROGRAM, NETIF_RECEIVE_TRACEPOINT,
    STACK_COUNTERS_MAP, StackCounters, XDP_PROGRAM,
};
use serde::Serialize;

use crate::{Error, Result, pin::PinLayout};

/// The accelerator's name in pin paths and messages.
pub const ACCELERATOR: &str = "monitor";

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Pin file names inside an attachment directory.
const XDP_LINK_PIN: &str = "xdp_link";
const NETIF_RECEIVE_LINK_PIN: &str = "netif_receive_skb_link";
const IFACE_COUNTERS_PIN: &str = "iface_counters";
const STACK_COUNTERS_PIN: &str = "stack_counters";

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic when the driver has no XDP support.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode, run by the stack after the driver.
    Generic,
}

/// Monitor counters, for one CPU or summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Frames seen at the XDP hook of the interface.
    pub xdp_frames: u64,
    /// Their bytes.
    pub xdp_bytes: u64,
    /// `netif_receive_skb` events (all interfaces).
    pub netif_receive_skb: u64,
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
        self.per_cpu.iter().fold(Counters::default(), |mut sum, c| {
            sum.xdp_frames += c.counters.xdp_frames;
            sum.xdp_bytes += c.counters.xdp_bytes;
            sum.netif_receive_skb += c.counters.netif_receive_skb;
            sum
        })
    }
}

/// The monitor attached to one interface, owned by this process: dropping it detaches.
#[derive(Debug)]
pub struct Monitor {
    ebpf: Ebpf,
    iface: String,
    mode: XdpMode,
    xdp_link: XdpLinkId,
    tracepoint_link: BtfTracePointLinkId,
}

impl Monitor {
    /// Loads the programs and attaches them: XDP to `iface` (in the calling thread's network
    /// namespace) and the tracepoint program to `netif_receive_skb`.
    pub fn attach(iface: &str, mode: AttachMode) -> Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|source| Error::Load {
            object: ACCELERATOR,
            source: Box::new(source),
        })?;

        let xdp: &mut Xdp = program(&mut ebpf, XDP_PROGRAM)?;
        xdp.load().map_err(program_error("load", XDP_PROGRAM))?;
        let (mode, xdp_link) = attach_xdp(xdp, iface, mode)?;

        let btf = Btf::from_sys_fs().map_err(|e| Error::Program {
            action: "read kernel BTF for".into(),
            program: NETIF_RECEIVE_PROGRAM,
            source: Box::new(e.into()),
        })?;
        let tracepoint: &mut BtfTracePoint = program(&mut ebpf, NETIF_RECEIVE_PROGRAM)?;
        tracepoint
            .load(NETIF_RECEIVE_TRACEPOINT, &btf)
            .map_err(program_error("load", NETIF_RECEIVE_PROGRAM))?;
        let tracepoint_link = tracepoint
            .attach()
            .map_err(program_error("attach", NETIF_RECEIVE_PROGRAM))?;

        Ok(Self {
            ebpf,
            iface: iface.to_owned(),
            mode,
            xdp_link,
            tracepoint_link,
        })
    }

    /// The XDP mode the kernel accepted.
    pub fn xdp_mode(&self) -> XdpMode {
        self.mode
    }

    /// Reads the counters.
    pub fn stats(&self) -> Result<Stats> {
        let iface_map = map(&self.ebpf, IFACE_COUNTERS_MAP)?;
        let stack_map = map(&self.ebpf, STACK_COUNTERS_MAP)?;
        stats(
            &self.iface,
            &PerCpuArray::try_from(iface_map).map_err(map_error(IFACE_COUNTERS_MAP))?,
            &PerCpuArray::try_from(stack_map).map_err(map_error(STACK_COUNTERS_MAP))?,
        )
    }

    /// The kernel's ids of the two loaded programs (XDP, tracepoint).
    pub fn program_ids(&self) -> Result<Vec<u32>> {
        [XDP_PROGRAM, NETIF_RECEIVE_PROGRAM]
            .into_iter()
            .map(|name| {
                let program = self.ebpf.program(name).ok_or(Error::WrongType {
                    object: ACCELERATOR,
                    name,
                })?;
                Ok(program.info().map_err(program_error("query", name))?.id())
            })
            .collect()
    }

    /// Attaches like [`Monitor::attach`] and pins links and maps under `layout`, so the
    /// monitor stays attached after this process exits; `scope` names the network namespace
    /// (`host` for the initial one). Refuses, changing nothing, if one is pinned there already.
    pub fn attach_pinned(
        iface: &str,
        mode: AttachMode,
        layout: &PinLayout,
        scope: &str,
    ) -> Result<PinnedMonitor> {
        let dir = layout.attachment_dir(ACCELERATOR, scope, iface);
        layout.create_attachment_dir(ACCELERATOR, &dir)?;
        let pinned = Self::attach(iface, mode).and_then(|monitor| monitor.pin_into(&dir));
        if let Err(e) = pinned {
            // Leave nothing half-pinned behind; unpinned handles were dropped (detached).
            layout.remove_attachment_dir(&dir)?;
            return Err(e);
        }
        Ok(PinnedMonitor {
            iface: iface.to_owned(),
            dir,
            layout: layout.clone(),
        })
    }

    /// Pins maps and links; on error, whatever was not pinned is dropped (detached) here.
    fn pin_into(mut self, dir: &Path) -> Result<()> {
        for (name, file) in [
            (IFACE_COUNTERS_MAP, IFACE_COUNTERS_PIN),
            (STACK_COUNTERS_MAP, STACK_COUNTERS_PIN),
        ] {
            let path = dir.join(file);
            map(&self.ebpf, name)?
                .pin(&path)
                .map_err(|e| pin_error(&path)(e.into()))?;
        }

        let xdp: &mut Xdp = program(&mut self.ebpf, XDP_PROGRAM)?;
        let link = xdp
            .take_link(self.xdp_link)
            .map_err(program_error("take the link of", XDP_PROGRAM))?;
        let path = dir.join(XDP_LINK_PIN);
        // Kernels without XDP bpf_link (< 5.9) attach through netlink: nothing to pin.
        let link = FdLink::try_from(link).map_err(|e| pin_error(&path)(e.into()))?;
        pin_link(link, &path)?;

        let tracepoint: &mut BtfTracePoint = program(&mut self.ebpf, NETIF_RECEIVE_PROGRAM)?;
        let link = tracepoint
            .take_link(self.tracepoint_link)
            .map_err(program_error("take the link of", NETIF_RECEIVE_PROGRAM))?;
        pin_link(FdLink::from(link), &dir.join(NETIF_RECEIVE_LINK_PIN))?;
        Ok(())
    }
}

/// A monitor that lives in bpffs pins rather than in a process.
#[derive(Debug)]
pub struct PinnedMonitor {
    iface: String,
    dir: PathBuf,
    layout: PinLayout,
}

impl PinnedMonitor {
    /// Finds the monitor pinned for `iface` in `scope`.
    pub fn open(layout: &PinLayout, scope: &str, iface: &str) -> Result<Self> {
        let dir = layout.attachment_dir(ACCELERATOR, scope, iface);
        if !dir.join(IFACE_COUNTERS_PIN).exists() {
            return Err(Error::NotAttached {
                accelerator: ACCELERATOR,
                path: dir,
            });
        }
        Ok(Self {
            iface: iface.to_owned(),
            dir,
            layout: layout.clone(),
        })
    }

    /// Where its pins are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kernel's ids of the attached programs, read through the pinned links.
    pub fn program_ids(&self) -> Result<Vec<u32>> {
        [XDP_LINK_PIN, NETIF_RECEIVE_LINK_PIN]
            .into_iter()
            .map(|file| {
                let path = self.dir.join(file);
                let link: FdLink = PinnedLink::from_pin(&path)
                    .map_err(|e| pin_error(&path)(e.into()))?
                    .into();
                let info = link.info().map_err(|e| pin_error(&path)(e.into()))?;
                Ok(info.program_id())
            })
            .collect()
    }

    /// Reads the counters from the pinned maps.
    pub fn stats(&self) -> Result<Stats> {
        stats(
            &self.iface,
            &pinned_array(&self.dir.join(IFACE_COUNTERS_PIN))?,
            &pinned_array(&self.dir.join(STACK_COUNTERS_PIN))?,
        )
    }

    /// Removes the pins: the kernel detaches the programs and frees the maps.
    pub fn detach(self) -> Result<()> {
        self.layout.remove_attachment_dir(&self.dir)
    }
}

fn attach_xdp(xdp: &mut Xdp, iface: &str, mode: AttachMode) -> Result<(XdpMode, XdpLinkId)> {
    let try_mode = |xdp: &mut Xdp, m: XdpMode| {
        xdp.attach(iface, m)
            .map(|id| (m, id))
            .map_err(program_error(
                &format!("attach to {iface} ({m:?} mode)"),
                XDP_PROGRAM,
            ))
    };
    if ifindex(iface).is_none() {
        return Err(Error::NoInterface(iface.to_owned()));
    }
    match mode {
        AttachMode::Native => try_mode(xdp, XdpMode::Driver),
        AttachMode::Generic => try_mode(xdp, XdpMode::Skb),
        // Report the native-mode error when generic mode fails too: it is the informative one.
        AttachMode::Auto => try_mode(xdp, XdpMode::Driver)
            .or_else(|native| try_mode(xdp, XdpMode::Skb).map_err(|_| native)),
    }
}

fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

fn pin_link(link: FdLink, path: &Path) -> Result<PinnedLink> {
    link.pin(path).map_err(|e| pin_error(path)(e.into()))
}

fn pinned_array<V: Pod>(path: &Path) -> Result<PerCpuArray<MapData, V>> {
    let data = MapData::from_pin(path).map_err(map_error(&path.display().to_string()))?;
    PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_error(&path.display().to_string()))
}

fn stats<A, B>(
    iface: &str,
    iface_counters: &PerCpuArray<A, IfaceCounters>,
    stack_counters: &PerCpuArray<B, StackCounters>,
) -> Result<Stats>
where
    A: Borrow<MapData>,
    B: Borrow<MapData>,
{
    let iface_per_cpu = slot0(iface_counters, IFACE_COUNTERS_MAP)?;
    let stack_per_cpu = slot0(stack_counters, STACK_COUNTERS_MAP)?;
    let per_cpu = iface_per_cpu
        .iter()
        .zip(stack_per_cpu.iter())
        .enumerate()
        .map(|(cpu, (i, s))| CpuStats {
            cpu: cpu as u32,
            counters: Counters {
                xdp_frames: i.frames,
                xdp_bytes: i.bytes,
                netif_receive_skb: s.netif_receive_skb,
            },
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

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let program = ebpf.program_mut(name).ok_or(Error::WrongType {
        object: ACCELERATOR,
        name,
    })?;
    program.try_into().map_err(|_| Error::WrongType {
        object: ACCELERATOR,
        name,
    })
}

fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Map> {
    ebpf.map(name).ok_or(Error::WrongType {
        object: ACCELERATOR,
        name,
    })
}

fn program_error(
    action: &str,
    program: &'static str,
) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    let action = action.to_owned();
    move |source| Error::Program {
        action,
        program,
        source: Box::new(source),
    }
}

fn map_error(name: &str) -> impl FnOnce(aya::maps::MapError) -> Error {
    let map = name.to_owned();
    move |source| Error::Map {
        map,
        source: Box::new(source),
    }
}

fn pin_error(path: &Path) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Error {
    let path = path.to_owned();
    move |source| Error::Pin { path, source }
}
