//! CPU balancer at XDP: redirects the flows arriving on one interface through a cpumap to a
//! weighted set of CPUs. Each flow (symmetric 5-tuple key, so both directions are one flow)
//! gets a CPU from a slot table when it starts and keeps it (map layout and the rule that keeps
//! every flow on one CPU: `ebpf_common::cpu_balance`).
//!
//! # Weights and assignment
//! [`Weights`] (`{cpu: weight}`, text form `0=1,1=3`) fill the [`SLOTS`]-entry slot table by
//! the largest-remainder method, interleaved by smooth weighted round robin, so a CPU receives
//! `weight / Σweights` of the slots to within 1/[`SLOTS`]. New flows take the slots in turn
//! ([`Assign::Rotation`], the default: any run of new flows on a receiving CPU is split by
//! weight, so 64 flows over two equal CPUs are 32 and 32) or by their hash ([`Assign::Hash`]:
//! stateless — a flow gets the same CPU wherever it is seen and after the flow table forgot
//! it —, but 64 flows over two CPUs are only binomially even). A flow keeps its CPU while that
//! CPU is in the set; hashed flows take their hash slot again after [`Options::flow_idle`]
//! (100 ms by default) without a frame, and in hash mode a weight change keeps every slot
//! whose CPU still has room and rewrites only the others, so it moves as few idle flows as the
//! new weights allow.
//!
//! # Draining
//! A CPU taken out of the set drains first: it gets no new flows, and its busy flows stay until
//! they idle. [`CpuBalance::drain`] waits until nothing was sent to it for the idle time, then
//! takes it out (cpumap entry removed); after a timeout it takes it out anyway, moving the
//! flows still busy (counted as `moved_busy_flows`).
//!
//! # Checksums on veth
//! A frame redirected through a cpumap loses its skb: the cpumap builds a new one, marked as
//! carrying no checksum information. A sender that leaves the TCP/UDP checksum to offload
//! (`CHECKSUM_PARTIAL`, the default on veth) hands over segments whose checksum field holds only
//! the pseudo-header sum, and the receiver drops them as corrupt. Turn transmit checksum
//! offload off on the sending side — the veth peer, in its own namespace — with
//! [`set_tx_checksum`] (the `SIOCETHTOOL` ioctl, `ETHTOOL_STXCSUM`).

use std::{
    borrow::Borrow,
    collections::BTreeMap,
    fmt, io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
    str::FromStr,
    thread,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, CpuMap, IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        xdp::XdpMapError,
    },
    programs::{ProgramFd, Xdp, XdpMode, links::FdLink, xdp::XdpLinkId},
    sys::SyscallError,
};
use aya_obj::programs::XdpAttachType;
use ebpf_common::cpu_balance::{
    ASSIGN_HASH, ASSIGN_ROTATION, CONFIG_MAP, COUNTERS_MAP, CPUS_MAP, Config, Counters, DRAINING,
    FAMILY_V4, FAMILY_V6, FLOW_IDLE_NS, FlowKey, LANDED_MAP, LANDED_PROGRAM, NO_CPU, PROGRAM,
    SLOTS, SLOTS_MAP, TARGET_HITS_MAP, WEIGHTS_MAP,
};
use serde::Serialize;

use crate::{
    AttachMode, Error, Result,
    ethtool::{self, Offload},
    object::{self, map_error, pin_error, pin_link, pinned_link_program, program_error},
    pin::{PinLayout, PinnedDir},
};

/// The accelerator's name in pin paths and messages.
pub const ACCELERATOR: &str = "cpu_balance";
/// Frames each target CPU's cpumap queue holds.
pub const QUEUE_SIZE: u32 = 2048;
/// The largest weight accepted.
pub const MAX_WEIGHT: u32 = 1 << 16;
/// Nice value of the cpumap's kernel threads (`cpumap/CPU/map:ID`). Their queues are drained
/// by ordinary threads, not in softirq like RPS's backlog: at the default nice 0 a CPU busy
/// with many runnable threads starves them, the queue overflows and frames are lost.
pub const KTHREAD_NICE: i32 = -20;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cpu_balance"));

/// Pin file names inside an attachment directory.
const LINK_PIN: &str = "xdp_link";
const LANDED_PROGRAM_PIN: &str = "landed_program";
const CPUS_PIN: &str = "cpus";
const SLOTS_PIN: &str = "slots";
const WEIGHTS_PIN: &str = "weights";
const TARGET_HITS_PIN: &str = "target_hits";
const LANDED_PIN: &str = "landed";
const COUNTERS_PIN: &str = "counters";
const CONFIG_PIN: &str = "config";

/// How new flows get their CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Assign {
    /// The slots in turn, per receiving CPU: even spreading of any run of flows.
    #[default]
    Rotation,
    /// The slot of the flow's hash: the same CPU for a flow wherever it is seen.
    Hash,
}

/// Balancer settings besides the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// How new flows get their CPU.
    pub assign: Assign,
    /// How long a flow must be idle before it may move to another CPU.
    pub flow_idle: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            assign: Assign::Rotation,
            flow_idle: Duration::from_nanos(FLOW_IDLE_NS),
        }
    }
}

impl Options {
    fn config(&self) -> Result<Config> {
        let flow_idle_ns = u64::try_from(self.flow_idle.as_nanos())
            .ok()
            .filter(|ns| *ns > 0)
            .ok_or_else(|| {
                config(format!(
                    "flow idle time {:?} is out of range",
                    self.flow_idle
                ))
            })?;
        Ok(Config {
            flow_idle_ns,
            assign: match self.assign {
                Assign::Rotation => ASSIGN_ROTATION,
                Assign::Hash => ASSIGN_HASH,
            },
            pad: 0,
        })
    }

    fn from_config(c: &Config) -> Self {
        Self {
            assign: if c.assign == ASSIGN_HASH {
                Assign::Hash
            } else {
                Assign::Rotation
            },
            flow_idle: Duration::from_nanos(c.flow_idle_ns),
        }
    }
}

/// Relative weights of the CPUs in the set; CPUs not named (or weighted 0) get no flows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Weights(BTreeMap<u32, u32>);

impl Weights {
    /// Weights from `(cpu, weight)` pairs; zero weights are left out. At least one weight must
    /// be positive, and none above [`MAX_WEIGHT`].
    pub fn new(pairs: impl IntoIterator<Item = (u32, u32)>) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (cpu, weight) in pairs {
            if weight > MAX_WEIGHT {
                return Err(config(format!(
                    "weight {weight} of CPU {cpu} is above the maximum {MAX_WEIGHT}"
                )));
            }
            if map.insert(cpu, weight).is_some() {
                return Err(config(format!("CPU {cpu} is weighted twice")));
            }
        }
        map.retain(|_, w| *w > 0);
        if map.is_empty() {
            return Err(config("no CPU has a positive weight".into()));
        }
        Ok(Self(map))
    }

    /// Weight 1 for each CPU of `cpus`.
    pub fn equal(cpus: impl IntoIterator<Item = u32>) -> Result<Self> {
        Self::new(cpus.into_iter().map(|cpu| (cpu, 1)))
    }

    /// Weight 1 for every online CPU.
    pub fn online() -> Result<Self> {
        let cpus = aya::util::online_cpus().map_err(|(path, source)| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::equal(cpus)
    }

    /// The weight of `cpu` (0 when it is not in the set).
    pub fn get(&self, cpu: u32) -> u32 {
        self.0.get(&cpu).copied().unwrap_or(0)
    }

    /// The CPUs of the set and their weights, in CPU order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.0.iter().map(|(c, w)| (*c, *w))
    }

    /// How many of the [`SLOTS`] slots each CPU gets: the largest-remainder apportionment
    /// (ties to the lower CPU), summing to exactly [`SLOTS`].
    pub fn quotas(&self) -> BTreeMap<u32, u32> {
        let total: u64 = self.0.values().map(|w| u64::from(*w)).sum();
        let mut quotas = BTreeMap::new();
        let mut remainders = Vec::new();
        let mut given = 0;
        for (&cpu, &weight) in &self.0 {
            let share = u64::from(SLOTS) * u64::from(weight);
            let quota = (share / total) as u32;
            quotas.insert(cpu, quota);
            given += quota;
            remainders.push((share % total, cpu));
        }
        remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, cpu) in remainders.into_iter().take((SLOTS - given) as usize) {
            *quotas.entry(cpu).or_default() += 1;
        }
        quotas
    }

    /// The slot table for these weights, starting from `current` (empty: a fresh table):
    /// slots whose CPU still has quota left keep it; the others are filled in smooth weighted
    /// round-robin order of the quotas left, so that a fresh table is interleaved by weight
    /// (`0=1,1=3`: 1 1 0 1, 1 1 0 1, …).
    pub fn slot_table(&self, current: &[u32]) -> Vec<u32> {
        let mut left = self.quotas();
        let mut table: Vec<u32> = (0..SLOTS as usize)
            .map(|i| {
                let cpu = current.get(i).copied().unwrap_or(NO_CPU);
                match left.get_mut(&cpu) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        cpu
                    }
                    _ => NO_CPU,
                }
            })
            .collect();
        let total: i64 = left.values().map(|n| i64::from(*n)).sum();
        let mut credit: BTreeMap<u32, i64> = left.keys().map(|cpu| (*cpu, 0)).collect();
        for slot in table.iter_mut().filter(|s| **s == NO_CPU) {
            for (cpu, c) in &mut credit {
                *c += i64::from(left[cpu]);
            }
            let Some((&cpu, c)) = credit
                .iter_mut()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            else {
                break;
            };
            *c -= total;
            *slot = cpu;
        }
        table
    }
}

impl FromStr for Weights {
    type Err = Error;

    /// Parses `CPU=WEIGHT[,CPU=WEIGHT...]`, for example `0=1,1=3`.
    fn from_str(text: &str) -> Result<Self> {
        let pairs = text
            .split(',')
            .map(|pair| {
                let (cpu, weight) = pair.trim().split_once('=').ok_or_else(|| {
                    config(format!("{pair:?} is not CPU=WEIGHT (for example 0=1,1=3)"))
                })?;
                let number = |what: &str, s: &str| {
                    s.trim()
                        .parse::<u32>()
                        .map_err(|e| config(format!("{what} {s:?} in {pair:?}: {e}")))
                };
                Ok((number("CPU", cpu)?, number("weight", weight)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(pairs)
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs: Vec<String> = self.iter().map(|(c, w)| format!("{c}={w}")).collect();
        f.write_str(&pairs.join(","))
    }
}

fn config(message: String) -> Error {
    Error::Config {
        accelerator: ACCELERATOR,
        message,
    }
}

/// The flow key the program computes for a packet of `protocol` (6 TCP, 17 UDP, …) from `src`
/// to `dst`; `None` when the two addresses are of different families. The same key, and so
/// the same CPU, comes out for the reverse direction.
pub fn flow_key(protocol: u8, src: SocketAddr, dst: SocketAddr) -> Option<FlowKey> {
    let words = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => [u32::from(v4), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [0, 4, 8, 12].map(|i| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]))
        }
    };
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => FAMILY_V4,
        (IpAddr::V6(_), IpAddr::V6(_)) => FAMILY_V6,
        _ => return None,
    };
    Some(FlowKey::new(
        family,
        protocol,
        words(src.ip()),
        src.port(),
        words(dst.ip()),
        dst.port(),
    ))
}

/// Receive-side counters, for one CPU or summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Frames that reached the program.
    pub packets: u64,
    /// Frames redirected to a CPU of the set.
    pub redirected: u64,
    /// Passed: not IP, or headers truncated.
    pub passed_other: u64,
    /// Passed: IP fragments.
    pub passed_fragment: u64,
    /// Passed: the slot table had no CPU.
    pub passed_no_cpu: u64,
    /// Passed: the chosen CPU had no cpumap entry.
    pub redirect_failed: u64,
    /// Flows seen for the first time (or again after the flow table forgot them).
    pub new_flows: u64,
    /// Idle flows that moved to another CPU.
    pub moved_flows: u64,
    /// Busy flows moved because their CPU left the set without draining.
    pub moved_busy_flows: u64,
}

impl Totals {
    fn add(&mut self, c: &Counters) {
        self.packets += c.packets;
        self.redirected += c.redirected;
        self.passed_other += c.passed_other;
        self.passed_fragment += c.passed_fragment;
        self.passed_no_cpu += c.passed_no_cpu;
        self.redirect_failed += c.redirect_failed;
        self.new_flows += c.new_flows;
        self.moved_flows += c.moved_flows;
        self.moved_busy_flows += c.moved_busy_flows;
    }
}

/// One CPU's view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    /// The CPU's index.
    pub cpu: u32,
    /// Its weight (0: not in the set, or draining).
    pub weight: u32,
    /// Leaving the set: no new flows, its busy flows stay until they idle.
    pub draining: bool,
    /// Slot table entries pointing at it.
    pub slots: u32,
    /// Frames redirected to it (by any receiving CPU).
    pub targeted: u64,
    /// Frames its cpumap queue delivered on it.
    pub landed: u64,
    /// What the program did for frames received on it.
    #[serde(flatten)]
    pub received: Totals,
}

/// A snapshot of the balancer's counters and configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The interface.
    pub iface: String,
    /// How new flows get their CPU.
    pub assign: Assign,
    /// Idle time after which a flow may move, in milliseconds.
    pub flow_idle_ms: u64,
    /// Per possible CPU, in CPU order.
    pub per_cpu: Vec<CpuStats>,
}

impl Stats {
    /// Receive-side counters summed over all CPUs.
    pub fn total(&self) -> Totals {
        let mut sum = Totals::default();
        for c in &self.per_cpu {
            let r = &c.received;
            sum.add(&Counters {
                packets: r.packets,
                redirected: r.redirected,
                passed_other: r.passed_other,
                passed_fragment: r.passed_fragment,
                passed_no_cpu: r.passed_no_cpu,
                redirect_failed: r.redirect_failed,
                new_flows: r.new_flows,
                moved_flows: r.moved_flows,
                moved_busy_flows: r.moved_busy_flows,
            });
        }
        sum
    }

    /// Frames redirected to each CPU, in CPU order.
    pub fn targeted(&self) -> Vec<u64> {
        self.per_cpu.iter().map(|c| c.targeted).collect()
    }

    /// Frames delivered on each CPU by the cpumap, in CPU order.
    pub fn landed(&self) -> Vec<u64> {
        self.per_cpu.iter().map(|c| c.landed).collect()
    }

    /// The CPUs draining out of the set.
    pub fn draining(&self) -> Vec<u32> {
        self.per_cpu
            .iter()
            .filter(|c| c.draining)
            .map(|c| c.cpu)
            .collect()
    }
}

/// What [`CpuBalance::drain`] did with the CPUs that were draining.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Drained {
    /// Taken out once nothing had been sent to them for the idle time.
    pub idle: Vec<u32>,
    /// Taken out at the timeout with flows still busy (those moved).
    pub forced: Vec<u32>,
}

/// The balancer's maps, owned (taken from a loaded object) or opened from pins.
struct Maps {
    cpus: CpuMap<MapData>,
    slots: Array<MapData, u32>,
    weights: Array<MapData, u32>,
    targeted: PerCpuArray<MapData, u64>,
    landed: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, Counters>,
    config: Array<MapData, Config>,
}

impl fmt::Debug for Maps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

const MAP_NAMES: [&str; 7] = [
    CPUS_MAP,
    SLOTS_MAP,
    WEIGHTS_MAP,
    TARGET_HITS_MAP,
    LANDED_MAP,
    COUNTERS_MAP,
    CONFIG_MAP,
];
const MAP_PINS: [&str; 7] = [
    CPUS_PIN,
    SLOTS_PIN,
    WEIGHTS_PIN,
    TARGET_HITS_PIN,
    LANDED_PIN,
    COUNTERS_PIN,
    CONFIG_PIN,
];

impl Maps {
    /// Takes the maps out of a loaded object (the program keeps using them).
    fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut maps = Vec::new();
        for name in MAP_NAMES {
            maps.push(object::take_map(ebpf, ACCELERATOR, name)?);
        }
        Self::typed(maps, |i| MAP_NAMES[i].to_owned())
    }

    /// Opens the maps pinned in `dir`.
    fn open(dir: &Path) -> Result<Self> {
        let path = |i: usize| dir.join(MAP_PINS[i]);
        let data = |i| object::pinned_map(&path(i));
        let maps = vec![
            Map::CpuMap(data(0)?),
            Map::Array(data(1)?),
            Map::Array(data(2)?),
            Map::PerCpuArray(data(3)?),
            Map::PerCpuArray(data(4)?),
            Map::PerCpuArray(data(5)?),
            Map::Array(data(6)?),
        ];
        Self::typed(maps, |i| path(i).display().to_string())
    }

    fn typed(maps: Vec<Map>, name: impl Fn(usize) -> String) -> Result<Self> {
        let mut maps = maps.into_iter();
        let mut next = |i: usize| {
            maps.next().ok_or_else(|| Error::WrongType {
                object: ACCELERATOR,
                name: MAP_NAMES[i],
            })
        };
        Ok(Self {
            cpus: CpuMap::try_from(next(0)?).map_err(map_error(&name(0)))?,
            slots: Array::try_from(next(1)?).map_err(map_error(&name(1)))?,
            weights: Array::try_from(next(2)?).map_err(map_error(&name(2)))?,
            targeted: PerCpuArray::try_from(next(3)?).map_err(map_error(&name(3)))?,
            landed: PerCpuArray::try_from(next(4)?).map_err(map_error(&name(4)))?,
            counters: PerCpuArray::try_from(next(5)?).map_err(map_error(&name(5)))?,
            config: Array::try_from(next(6)?).map_err(map_error(&name(6)))?,
        })
    }

    /// Pins every map into `dir`.
    fn pin(self, dir: &Path) -> Result<()> {
        let pin = |result: Result<(), aya::pin::PinError>, file: &str| {
            let path = dir.join(file);
            result.map_err(|e| pin_error(&path)(e.into()))
        };
        pin(self.cpus.pin(dir.join(CPUS_PIN)), CPUS_PIN)?;
        pin(self.slots.pin(dir.join(SLOTS_PIN)), SLOTS_PIN)?;
        pin(self.weights.pin(dir.join(WEIGHTS_PIN)), WEIGHTS_PIN)?;
        pin(
            self.targeted.pin(dir.join(TARGET_HITS_PIN)),
            TARGET_HITS_PIN,
        )?;
        pin(self.landed.pin(dir.join(LANDED_PIN)), LANDED_PIN)?;
        pin(self.counters.pin(dir.join(COUNTERS_PIN)), COUNTERS_PIN)?;
        pin(self.config.pin(dir.join(CONFIG_PIN)), CONFIG_PIN)
    }

    /// The number of CPU indexes the maps cover (the possible CPUs).
    fn cpu_slots(&self) -> u32 {
        self.cpus.len()
    }

    fn current_weights(&self) -> Result<Vec<u32>> {
        (0..self.cpu_slots())
            .map(|cpu| self.weights.get(&cpu, 0).map_err(map_error(WEIGHTS_MAP)))
            .collect()
    }

    fn current_slots(&self) -> Result<Vec<u32>> {
        (0..SLOTS)
            .map(|i| self.slots.get(&i, 0).map_err(map_error(SLOTS_MAP)))
            .collect()
    }

    fn options(&self) -> Result<Options> {
        let config = self.config.get(&0, 0).map_err(map_error(CONFIG_MAP))?;
        Ok(Options::from_config(&config))
    }

    /// Applies `weights` live, in an order that never sends a frame to a CPU without a cpumap
    /// entry: add the new CPUs' entries, rewrite the changed slots, then the weights. CPUs that
    /// leave the set keep their entries and drain (weight [`DRAINING`]) until [`Maps::drain`]
    /// takes them out.
    fn set_weights(&mut self, weights: &Weights, landed: &ProgramFd) -> Result<()> {
        let n = self.cpu_slots();
        if let Some((cpu, _)) = weights.iter().find(|(cpu, _)| *cpu >= n) {
            return Err(config(format!(
                "CPU {cpu} does not exist: this machine has CPUs 0 to {}",
                n - 1
            )));
        }
        let old = self.current_weights()?;
        let added: Vec<u32> = weights
            .iter()
            .map(|(cpu, _)| cpu)
            .filter(|cpu| old[*cpu as usize] == 0)
            .collect();
        for &cpu in &added {
            self.cpus
                .set(cpu, QUEUE_SIZE, Some(landed), 0)
                .map_err(cpumap_error(cpu))?;
        }
        if !added.is_empty() {
            let id = self.cpus.map().info().map_err(map_error(CPUS_MAP))?.id();
            renice_kthreads(id, &added)?;
        }
        let written = self.current_slots()?;
        let table = match self.options()?.assign {
            // Flows keep their CPU in the flow table: the rotation may start afresh.
            Assign::Rotation => weights.slot_table(&[]),
            // Slots of CPUs outside the old set (all of them in a fresh table of zeros) are
            // free; the others stay where they can, so that few idle flows change CPU.
            Assign::Hash => weights.slot_table(
                &written
                    .iter()
                    .map(|&cpu| match old.get(cpu as usize) {
                        Some(w) if *w > 0 && *w != DRAINING => cpu,
                        _ => NO_CPU,
                    })
                    .collect::<Vec<_>>(),
            ),
        };
        for (i, (new, old)) in table.into_iter().zip(written).enumerate() {
            if new != old {
                self.slots
                    .set(i as u32, new, 0)
                    .map_err(map_error(SLOTS_MAP))?;
            }
        }
        for cpu in 0..n {
            let now = match (weights.get(cpu), old[cpu as usize]) {
                (0, 0) => 0,
                (0, _) => DRAINING,
                (w, _) => w,
            };
            if now != old[cpu as usize] {
                self.weights
                    .set(cpu, now, 0)
                    .map_err(map_error(WEIGHTS_MAP))?;
            }
        }
        Ok(())
    }

    /// Takes the draining CPUs out of the set: each as soon as nothing was sent to it for the
    /// flow idle time (its flows are all idle then, and move on their next frame), or all that
    /// are left once `timeout` has passed.
    fn drain(&mut self, timeout: Duration) -> Result<Drained> {
        let idle = self.options()?.flow_idle;
        let n = self.cpu_slots();
        let draining = |maps: &Self| -> Result<Vec<u32>> {
            let weights = maps.current_weights()?;
            Ok((0..n)
                .filter(|c| weights[*c as usize] == DRAINING)
                .collect())
        };
        let mut drained = Drained::default();
        let start = Instant::now();
        let mut quiet: BTreeMap<u32, (u64, Instant)> = BTreeMap::new();
        loop {
            let now = Instant::now();
            let targeted = sum_per_cpu(&self.targeted, n, TARGET_HITS_MAP)?;
            for cpu in draining(self)? {
                let sent = targeted[cpu as usize];
                let since = match quiet.get(&cpu) {
                    Some(&(before, since)) if before == sent => since,
                    _ => {
                        quiet.insert(cpu, (sent, now));
                        now
                    }
                };
                if now.duration_since(since) > idle {
                    self.take_out(cpu)?;
                    drained.idle.push(cpu);
                }
            }
            let left = draining(self)?;
            if left.is_empty() {
                return Ok(drained);
            }
            if start.elapsed() >= timeout {
                for cpu in left {
                    self.take_out(cpu)?;
                    drained.forced.push(cpu);
                }
                return Ok(drained);
            }
            thread::sleep((idle / 4).clamp(Duration::from_millis(5), Duration::from_millis(100)));
        }
    }

    /// Weight 0 for `cpu` (its flows move on their next frame), then, once programs that read
    /// the old weight are done, its cpumap entry goes.
    fn take_out(&mut self, cpu: u32) -> Result<()> {
        self.weights
            .set(cpu, 0, 0)
            .map_err(map_error(WEIGHTS_MAP))?;
        thread::sleep(Duration::from_millis(20));
        delete_elem(self.cpus.map().fd().as_fd(), cpu).map_err(|io_error| {
            cpumap_error(cpu)(XdpMapError::MapError(MapError::SyscallError(
                SyscallError {
                    call: "bpf_map_delete_elem",
                    io_error,
                },
            )))
        })
    }

    fn stats(&self, iface: &str) -> Result<Stats> {
        let weights = self.current_weights()?;
        let slots = self.current_slots()?;
        let targeted = sum_per_cpu(&self.targeted, self.cpu_slots(), TARGET_HITS_MAP)?;
        let landed = per_cpu0(&self.landed, LANDED_MAP)?;
        let received = per_cpu0(&self.counters, COUNTERS_MAP)?;
        let per_cpu = received
            .iter()
            .enumerate()
            .map(|(i, counters)| {
                let cpu = i as u32;
                let mut totals = Totals::default();
                totals.add(counters);
                let weight = weights.get(i).copied().unwrap_or(0);
                CpuStats {
                    cpu,
                    weight: if weight == DRAINING { 0 } else { weight },
                    draining: weight == DRAINING,
                    slots: slots.iter().filter(|s| **s == cpu).count() as u32,
                    targeted: targeted.get(i).copied().unwrap_or(0),
                    landed: landed.get(i).copied().unwrap_or(0),
                    received: totals,
                }
            })
            .collect();
        let options = self.options()?;
        Ok(Stats {
            iface: iface.to_owned(),
            assign: options.assign,
            flow_idle_ms: options.flow_idle.as_millis() as u64,
            per_cpu,
        })
    }
}

/// The error of writing the cpumap entry of `cpu`.
fn cpumap_error(cpu: u32) -> impl FnOnce(XdpMapError) -> Error {
    move |e| match e {
        XdpMapError::MapError(source) => Error::Map {
            map: format!("{CPUS_MAP} entry for CPU {cpu}"),
            source: Box::new(source),
        },
        XdpMapError::ChainedProgramNotSupported => config(
            "this kernel cannot run a program on cpumap entries (Linux 5.9 or newer needed)".into(),
        ),
    }
}

/// Slot 0 of a per-CPU array, one value per possible CPU.
fn per_cpu0<T: Borrow<MapData>, V: aya::Pod>(
    array: &PerCpuArray<T, V>,
    name: &str,
) -> Result<Vec<V>> {
    Ok(array.get(&0, 0).map_err(map_error(name))?.to_vec())
}

/// For each index `0..n` of a per-CPU `u64` array, the sum over the CPUs that wrote it.
fn sum_per_cpu<T: Borrow<MapData>>(
    array: &PerCpuArray<T, u64>,
    n: u32,
    name: &str,
) -> Result<Vec<u64>> {
    (0..n)
        .map(|i| {
            let values: PerCpuValues<u64> = array.get(&i, 0).map_err(map_error(name))?;
            Ok(values.iter().sum())
        })
        .collect()
}

/// Gives the kernel threads of cpumap `map_id`'s entries for `cpus` the nice value
/// [`KTHREAD_NICE`]. They are found by name in `/proc`; kernels before 5.17 cut the names to
/// 15 bytes, so there a thread of another cpumap whose id starts alike may be reniced too.
fn renice_kthreads(map_id: u32, cpus: &[u32]) -> Result<()> {
    let proc_error = |source| Error::Io {
        path: PathBuf::from("/proc"),
        source,
    };
    let names: Vec<String> = cpus
        .iter()
        .map(|cpu| format!("cpumap/{cpu}/map:{map_id}"))
        .collect();
    let mut found = 0;
    let mut seen = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(proc_error)? {
        let entry = entry.map_err(proc_error)?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        // Kernels before 5.17 show a kernel thread's name cut to 15 bytes.
        if !names
            .iter()
            .any(|n| n == comm || (comm.len() == 15 && n.starts_with(comm)))
        {
            if comm.starts_with("cpumap") {
                seen.push(comm.to_owned());
            }
            continue;
        }
        // SAFETY: setpriority(2) on a thread id; no memory is passed.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, KTHREAD_NICE) } != 0 {
            return Err(Error::Io {
                path: PathBuf::from(format!("setpriority of cpumap kthread {pid}")),
                source: io::Error::last_os_error(),
            });
        }
        found += 1;
    }
    if found < cpus.len() {
        return Err(config(format!(
            "found {found} of the {} cpumap kernel threads ({}) in /proc; other cpumap \
             threads: [{}]",
            cpus.len(),
            names.join(", "),
            seen.join(", ")
        )));
    }
    Ok(())
}

/// `BPF_MAP_DELETE_ELEM` on a map keyed by `u32` (aya 0.14's cpumap has no remove); a key
/// already absent is no error.
fn delete_elem(map: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(&raw const key as u64).to_ne_bytes());
    // SAFETY: `attr` is a zeroed bpf_attr whose map_fd and key (pointing at `key`, alive during
    // the call) are set; the kernel reads at most `attr.len()` bytes of it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            attr.as_ptr(),
            attr.len(),
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    Ok(())
}

/// Loads the object with the per-CPU maps sized to the possible CPUs (a cpumap cannot have
/// more entries than the kernel has CPU slots).
fn load() -> Result<Ebpf> {
    let cpus = u32::try_from(nr_cpus()?).map_err(|_| config("too many CPUs".into()))?;
    EbpfLoader::new()
        .map_max_entries(CPUS_MAP, cpus)
        .map_max_entries(WEIGHTS_MAP, cpus)
        .map_max_entries(TARGET_HITS_MAP, cpus)
        .load(OBJECT)
        .map_err(|source| Error::Load {
            object: ACCELERATOR,
            source: Box::new(source),
        })
}

fn nr_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(path, source)| Error::Io {
        path: path.into(),
        source,
    })
}

/// The balancer attached to one interface, owned by this process: dropping it detaches.
#[derive(Debug)]
pub struct CpuBalance {
    ebpf: Ebpf,
    maps: Maps,
    iface: String,
    mode: XdpMode,
    link: XdpLinkId,
}

impl CpuBalance {
    /// Loads the programs, fills the cpumap and slot table from `weights`, and attaches to
    /// `iface` (in the calling thread's network namespace), with default [`Options`].
    pub fn attach(iface: &str, mode: AttachMode, weights: &Weights) -> Result<Self> {
        Self::attach_with(iface, mode, weights, &Options::default())
    }

    /// Attaches like [`CpuBalance::attach`], with `options`.
    pub fn attach_with(
        iface: &str,
        mode: AttachMode,
        weights: &Weights,
        options: &Options,
    ) -> Result<Self> {
        let mut ebpf = load()?;
        let mut maps = Maps::take(&mut ebpf)?;
        maps.config
            .set(0, options.config()?, 0)
            .map_err(map_error(CONFIG_MAP))?;
        let landed: &mut Xdp = object::program(&mut ebpf, ACCELERATOR, LANDED_PROGRAM)?;
        landed
            .load()
            .map_err(program_error("load", LANDED_PROGRAM))?;
        let landed_fd = landed.fd().map_err(program_error("open", LANDED_PROGRAM))?;
        maps.set_weights(weights, landed_fd)?;
        let xdp: &mut Xdp = object::program(&mut ebpf, ACCELERATOR, PROGRAM)?;
        xdp.load().map_err(program_error("load", PROGRAM))?;
        let (mode, link) = object::attach_xdp(xdp, PROGRAM, iface, mode)?;
        Ok(Self {
            ebpf,
            maps,
            iface: iface.to_owned(),
            mode,
            link,
        })
    }

    /// The XDP mode the kernel accepted.
    pub fn xdp_mode(&self) -> XdpMode {
        self.mode
    }

    /// Changes the CPU set and weights without detaching. CPUs leaving the set drain: see
    /// [`CpuBalance::drain`].
    pub fn set_weights(&mut self, weights: &Weights) -> Result<()> {
        let landed: &Xdp = self
            .ebpf
            .program(LANDED_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(Error::WrongType {
                object: ACCELERATOR,
                name: LANDED_PROGRAM,
            })?;
        let fd = landed.fd().map_err(program_error("open", LANDED_PROGRAM))?;
        self.maps.set_weights(weights, fd)
    }

    /// Takes the CPUs that left the set out of it once their flows are idle, or when `timeout`
    /// has passed (see the module documentation).
    pub fn drain(&mut self, timeout: Duration) -> Result<Drained> {
        self.maps.drain(timeout)
    }

    /// Reads the counters and the configuration.
    pub fn stats(&self) -> Result<Stats> {
        self.maps.stats(&self.iface)
    }

    /// The kernel's ids of the two loaded programs (balancer, cpumap program).
    pub fn program_ids(&self) -> Result<Vec<u32>> {
        object::program_ids(&self.ebpf, ACCELERATOR, &[PROGRAM, LANDED_PROGRAM])
    }

    /// Attaches like [`CpuBalance::attach`] and pins the link, the cpumap program and the maps
    /// under `layout`, so the balancer stays after this process exits; `scope` names the
    /// network namespace (`host` for the initial one). Refuses, changing nothing, if one is
    /// pinned there already.
    pub fn attach_pinned(
        iface: &str,
        mode: AttachMode,
        weights: &Weights,
        options: &Options,
        layout: &PinLayout,
        scope: &str,
    ) -> Result<PinnedCpuBalance> {
        let dir = layout.attachment_dir(ACCELERATOR, scope, iface);
        let pins = layout.pin_attachment(ACCELERATOR, dir, |dir| {
            Self::attach_with(iface, mode, weights, options).and_then(|b| b.pin_into(dir))
        })?;
        Ok(PinnedCpuBalance {
            iface: iface.to_owned(),
            pins,
        })
    }

    /// Pins maps, cpumap program and link; on error, whatever was not pinned is dropped
    /// (detached) here.
    fn pin_into(mut self, dir: &Path) -> Result<()> {
        self.maps.pin(dir)?;
        let path = dir.join(LANDED_PROGRAM_PIN);
        let landed: &mut Xdp = object::program(&mut self.ebpf, ACCELERATOR, LANDED_PROGRAM)?;
        landed.pin(&path).map_err(|e| pin_error(&path)(e.into()))?;
        let xdp: &mut Xdp = object::program(&mut self.ebpf, ACCELERATOR, PROGRAM)?;
        let link = xdp
            .take_link(self.link)
            .map_err(program_error("take the link of", PROGRAM))?;
        let path = dir.join(LINK_PIN);
        // Kernels without XDP bpf_link (< 5.9) attach through netlink: nothing to pin.
        let link = FdLink::try_from(link).map_err(|e| pin_error(&path)(e.into()))?;
        pin_link(link, &path)?;
        Ok(())
    }
}

/// A balancer that lives in bpffs pins rather than in a process.
#[derive(Debug)]
pub struct PinnedCpuBalance {
    iface: String,
    pins: PinnedDir,
}

impl PinnedCpuBalance {
    /// Finds the balancer pinned for `iface` in `scope`.
    pub fn open(layout: &PinLayout, scope: &str, iface: &str) -> Result<Self> {
        let dir = layout.attachment_dir(ACCELERATOR, scope, iface);
        Ok(Self {
            iface: iface.to_owned(),
            pins: layout.open_attachment(ACCELERATOR, dir, LINK_PIN)?,
        })
    }

    /// Where its pins are.
    pub fn dir(&self) -> &Path {
        self.pins.path()
    }

    /// The kernel's id of the attached balancing program, read through the pinned link.
    pub fn program_id(&self) -> Result<u32> {
        pinned_link_program(&self.pins.join(LINK_PIN))
    }

    /// Changes the CPU set and weights of the attached balancer without detaching it; CPUs
    /// leaving the set drain (see [`PinnedCpuBalance::drain`]).
    pub fn set_weights(&self, weights: &Weights) -> Result<()> {
        let path = self.pins.join(LANDED_PROGRAM_PIN);
        let landed =
            Xdp::from_pin(&path, XdpAttachType::CpuMap).map_err(|e| pin_error(&path)(e.into()))?;
        let fd = landed.fd().map_err(program_error("open", LANDED_PROGRAM))?;
        Maps::open(self.pins.path())?.set_weights(weights, fd)
    }

    /// Like [`CpuBalance::drain`], on the pinned maps.
    pub fn drain(&self, timeout: Duration) -> Result<Drained> {
        Maps::open(self.pins.path())?.drain(timeout)
    }

    /// Reads the counters and the configuration from the pinned maps.
    pub fn stats(&self) -> Result<Stats> {
        Maps::open(self.pins.path())?.stats(&self.iface)
    }

    /// Detaches the program (at once), then removes the pins: the kernel frees the programs
    /// and maps (the cpumap's queues are flushed to the stack first).
    pub fn detach(self) -> Result<()> {
        self.pins.detach(&[LINK_PIN])
    }
}

/// Turns transmit checksum offload of `iface` (in the calling thread's network namespace) on
/// or off, like `ethtool -K IFACE tx on|off`; returns the previous setting. See the module
/// documentation for why cpumap redirection needs it off on the sending veth.
pub fn set_tx_checksum(iface: &str, enabled: bool) -> Result<bool> {
    ethtool::set_offload(iface, Offload::TxChecksum, enabled)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::from(a), port))
    }

    #[test]
    fn weights_parse_and_reject_nonsense() {
        let w: Weights = "0=1, 1=3".parse().unwrap();
        assert_eq!(w.iter().collect::<Vec<_>>(), vec![(0, 1), (1, 3)]);
        assert_eq!(w.to_string(), "0=1,1=3");
        assert_eq!("2=0,1=5".parse::<Weights>().unwrap().to_string(), "1=5");
        for bad in ["", "0", "0=x", "a=1", "0=0", "0=1,0=2", "0=99999999"] {
            let err = bad.parse::<Weights>().expect_err(bad);
            assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn quotas_follow_the_weights_and_fill_every_slot() {
        let w = Weights::new([(0, 1), (1, 3)]).unwrap();
        assert_eq!(w.quotas(), BTreeMap::from([(0, 64), (1, 192)]));
        let w = Weights::new([(0, 1), (1, 1), (2, 1)]).unwrap();
        assert_eq!(w.quotas(), BTreeMap::from([(0, 86), (1, 85), (2, 85)]));
        let table = w.slot_table(&[]);
        assert_eq!(table.len(), SLOTS as usize);
        for cpu in 0..3 {
            let n = table.iter().filter(|c| **c == cpu).count() as u32;
            assert_eq!(n, w.quotas()[&cpu]);
        }
    }

    #[test]
    fn weight_changes_move_only_the_slots_they_must() {
        let even = Weights::new([(0, 1), (1, 1)]).unwrap();
        let before = even.slot_table(&[]);
        let skewed = Weights::new([(0, 1), (1, 3)]).unwrap();
        let after = skewed.slot_table(&before);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 64, "only CPU 0's surplus moves");
        assert!(
            before
                .iter()
                .zip(&after)
                .all(|(a, b)| a == b || (*a == 0 && *b == 1))
        );
        let all_one = Weights::new([(1, 1)]).unwrap().slot_table(&after);
        assert!(all_one.iter().all(|c| *c == 1));
    }

    #[test]
    fn both_directions_of_a_flow_have_one_key() {
        let (a, b) = (v4([10, 0, 0, 1], 40000), v4([10, 0, 0, 2], 80));
        let key = flow_key(6, a, b).unwrap();
        assert_eq!(key, flow_key(6, b, a).unwrap());
        assert_eq!((key.port_lo, key.port_hi), (40000, 80));
        assert_ne!(
            key,
            flow_key(17, a, b).unwrap(),
            "protocol is part of the flow"
        );
        assert!(flow_key(6, a, SocketAddr::from((Ipv6Addr::LOCALHOST, 1))).is_none());
    }

    #[test]
    fn hash_is_pinned_to_known_values() {
        // The program computes these with the same code; the values catch a silent change of
        // the hash (which would move every flow of a running balancer after an upgrade).
        let key = flow_key(17, v4([10, 0, 0, 1], 1000), v4([10, 0, 0, 2], 2000)).unwrap();
        assert_eq!(key.addr_lo, [0x0a00_0001, 0, 0, 0]);
        assert_eq!(key.slot(), key.hash() % SLOTS);
        assert_eq!(key.hash(), 0xc349_9d1a);
    }

    #[test]
    fn source_ports_spread_evenly_over_the_slots() {
        let mut per_slot = vec![0u32; SLOTS as usize];
        for port in 0..u16::MAX {
            let key = flow_key(17, v4([10, 0, 0, 1], port), v4([10, 0, 0, 2], 9)).unwrap();
            per_slot[key.slot() as usize] += 1;
        }
        let expected = f64::from(u16::MAX) / f64::from(SLOTS);
        let worst = per_slot
            .iter()
            .map(|n| (f64::from(*n) - expected).abs() / expected)
            .fold(0.0, f64::max);
        assert!(worst < 0.2, "a slot is {worst:.2} off the mean");
    }

    proptest! {
        #[test]
        fn any_flow_hashes_the_same_both_ways(
            a in any::<[u8; 16]>(), b in any::<[u8; 16]>(),
            pa in any::<u16>(), pb in any::<u16>(), proto in any::<u8>(), six in any::<bool>(),
        ) {
            let addr = |x: [u8; 16], p| if six {
                SocketAddr::from((Ipv6Addr::from(x), p))
            } else {
                SocketAddr::from((Ipv4Addr::new(x[0], x[1], x[2], x[3]), p))
            };
            let there = flow_key(proto, addr(a, pa), addr(b, pb)).unwrap();
            let back = flow_key(proto, addr(b, pb), addr(a, pa)).unwrap();
            prop_assert_eq!(there, back);
            prop_assert_eq!(there.hash(), back.hash());
        }
    }
}
