//! Performance monitor (first slice): per-CPU frames and bytes at the XDP hook of one
//! interface, and per-CPU `netif_receive_skb` events from a BTF tracepoint.

use std::{borrow::Borrow, path::Path};

use aya::{
    Btf, Ebpf, Pod,
    maps::{MapData, PerCpuArray},
    programs::{
        BtfTracePoint, Xdp, XdpMode, links::FdLink, tp_btf::BtfTracePointLinkId, xdp::XdpLinkId,
    },
};
use ebpf_common::monitor::{
    IFACE_COUNTERS_MAP, IfaceCounters, NETIF_RECEIVE_PROGRAM, NETIF_RECEIVE_TRACEPOINT,
    STACK_COUNTERS_MAP, StackCounters, XDP_PROGRAM,
};
use serde::Serialize;

pub use crate::object::AttachMode;
use crate::{
    Error, Result,
    object::{
        self, map_error, pin_error, pin_link, pinned_array, pinned_link_program, program_error,
    },
    pin::{PinLayout, PinnedDir},
};

/// The accelerator's name in pin paths and messages.
pub const ACCELERATOR: &str = "monitor";

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Pin file names inside an attachment directory.
const XDP_LINK_PIN: &str = "xdp_link";
const NETIF_RECEIVE_LINK_PIN: &str = "netif_receive_skb_link";
const IFACE_COUNTERS_PIN: &str = "iface_counters";
const STACK_COUNTERS_PIN: &str = "stack_counters";

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
        let mut ebpf = object::load(ACCELERATOR, OBJECT)?;

        let xdp: &mut Xdp = object::program(&mut ebpf, ACCELERATOR, XDP_PROGRAM)?;
        xdp.load().map_err(program_error("load", XDP_PROGRAM))?;
        let (mode, xdp_link) = object::attach_xdp(xdp, XDP_PROGRAM, iface, mode)?;

        let btf = Btf::from_sys_fs().map_err(|e| Error::Program {
            action: "read kernel BTF for".into(),
            program: NETIF_RECEIVE_PROGRAM,
            source: Box::new(e.into()),
        })?;
        let tracepoint: &mut BtfTracePoint =
            object::program(&mut ebpf, ACCELERATOR, NETIF_RECEIVE_PROGRAM)?;
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
        let iface_map = object::map(&self.ebpf, ACCELERATOR, IFACE_COUNTERS_MAP)?;
        let stack_map = object::map(&self.ebpf, ACCELERATOR, STACK_COUNTERS_MAP)?;
        stats(
            &self.iface,
            &PerCpuArray::try_from(iface_map).map_err(map_error(IFACE_COUNTERS_MAP))?,
            &PerCpuArray::try_from(stack_map).map_err(map_error(STACK_COUNTERS_MAP))?,
        )
    }

    /// The kernel's ids of the two loaded programs (XDP, tracepoint).
    pub fn program_ids(&self) -> Result<Vec<u32>> {
        object::program_ids(
            &self.ebpf,
            ACCELERATOR,
            &[XDP_PROGRAM, NETIF_RECEIVE_PROGRAM],
        )
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
        let pins = layout.pin_attachment(ACCELERATOR, dir, |dir| {
            Self::attach(iface, mode).and_then(|monitor| monitor.pin_into(dir))
        })?;
        Ok(PinnedMonitor {
            iface: iface.to_owned(),
            pins,
        })
    }

    /// Pins maps and links; on error, whatever was not pinned is dropped (detached) here.
    fn pin_into(mut self, dir: &Path) -> Result<()> {
        for (name, file) in [
            (IFACE_COUNTERS_MAP, IFACE_COUNTERS_PIN),
            (STACK_COUNTERS_MAP, STACK_COUNTERS_PIN),
        ] {
            let path = dir.join(file);
            object::map(&self.ebpf, ACCELERATOR, name)?
                .pin(&path)
                .map_err(|e| pin_error(&path)(e.into()))?;
        }

        let xdp: &mut Xdp = object::program(&mut self.ebpf, ACCELERATOR, XDP_PROGRAM)?;
        let link = xdp
            .take_link(self.xdp_link)
            .map_err(program_error("take the link of", XDP_PROGRAM))?;
        let path = dir.join(XDP_LINK_PIN);
        // Kernels without XDP bpf_link (< 5.9) attach through netlink: nothing to pin.
        let link = FdLink::try_from(link).map_err(|e| pin_error(&path)(e.into()))?;
        pin_link(link, &path)?;

        let tracepoint: &mut BtfTracePoint =
            object::program(&mut self.ebpf, ACCELERATOR, NETIF_RECEIVE_PROGRAM)?;
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
    pins: PinnedDir,
}

impl PinnedMonitor {
    /// Finds the monitor pinned for `iface` in `scope`.
    pub fn open(layout: &PinLayout, scope: &str, iface: &str) -> Result<Self> {
        let dir = layout.attachment_dir(ACCELERATOR, scope, iface);
        Ok(Self {
            iface: iface.to_owned(),
            pins: layout.open_attachment(ACCELERATOR, dir, IFACE_COUNTERS_PIN)?,
        })
    }

    /// Where its pins are.
    pub fn dir(&self) -> &Path {
        self.pins.path()
    }

    /// The kernel's ids of the attached programs, read through the pinned links.
    pub fn program_ids(&self) -> Result<Vec<u32>> {
        [XDP_LINK_PIN, NETIF_RECEIVE_LINK_PIN]
            .into_iter()
            .map(|file| pinned_link_program(&self.pins.join(file)))
            .collect()
    }

    /// Reads the counters from the pinned maps.
    pub fn stats(&self) -> Result<Stats> {
        stats(
            &self.iface,
            &pinned_array(&self.pins.join(IFACE_COUNTERS_PIN))?,
            &pinned_array(&self.pins.join(STACK_COUNTERS_PIN))?,
        )
    }

    /// Detaches the programs (at once), then removes the pins: the kernel frees the programs
    /// and maps.
    pub fn detach(self) -> Result<()> {
        self.pins.detach(&[XDP_LINK_PIN, NETIF_RECEIVE_LINK_PIN])
    }
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
