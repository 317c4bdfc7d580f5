//! HTTP request filter at XDP: allowed methods and blocked path prefixes per destination
//! port, with per-rule and global per-CPU counters. The grammar and map layout are in
//! `ebpf_common::http_filter`; the [`reference`] classifier gives the verdict the program must
//! give any frame, and [`TestRunner`] asks the kernel through `BPF_PROG_TEST_RUN`.

pub mod pcap;
pub mod policy;
pub mod reference;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{
        Array, Map, MapData, PerCpuArray, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{TestRun, TestRunOptions, Xdp, XdpMode, links::FdLink, xdp::XdpLinkId},
};
use ebpf_common::http_filter::{
    COUNTERS_MAP, Counters, FLOOR_PROGRAM, MAX_PORTS, MAX_RULES, PATH_MAX, PATHS_MAP,
    PORT_POLICY_SLOTS, PORT_SLOTS_MAP, PORTS_MAP, PROGRAM, PathKey, PathRule, PortPolicy,
    RULE_NAME_MAX, RULE_NAMES_MAP, RuleName, VERDICT_ALLOW, VERDICT_DROP, VERDICT_MALFORMED,
    VERDICT_MONITOR, VERDICT_REQUEST,
};
use serde::Serialize;

pub use self::{
    policy::Policy,
    reference::{Classification, Verdict},
};
use crate::{
    AttachMode, Error, Result,
    object::{self, map_error, pin_error, pin_link, pinned_link_program, program_error},
    pin::{PinLayout, PinnedDir},
};

/// The accelerator's name in pin paths and messages.
pub const ACCELERATOR: &str = "http_filter";

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/http_filter"));

/// Pin file names inside an attachment directory.
const LINK_PIN: &str = "xdp_link";
const PORT_SLOTS_PIN: &str = "port_slots";
const PORTS_PIN: &str = "ports";
const PATHS_PIN: &str = "paths";
const RULE_NAMES_PIN: &str = "rule_names";
const COUNTERS_PIN: &str = "counters";

const MAP_NAMES: [&str; 5] = [
    PORT_SLOTS_MAP,
    PORTS_MAP,
    PATHS_MAP,
    RULE_NAMES_MAP,
    COUNTERS_MAP,
];
const MAP_PINS: [&str; 5] = [
    PORT_SLOTS_PIN,
    PORTS_PIN,
    PATHS_PIN,
    RULE_NAMES_PIN,
    COUNTERS_PIN,
];

/// The filter's maps, owned (taken from a loaded object) or opened from pins.
struct Maps {
    port_slots: Array<MapData, u32>,
    ports: Array<MapData, PortPolicy>,
    paths: LpmTrie<MapData, PathKey, PathRule>,
    names: Array<MapData, RuleName>,
    counters: PerCpuArray<MapData, Counters>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

impl Maps {
    /// Takes the maps out of a loaded object (the program keeps using them).
    fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |i: usize| object::take_map(ebpf, ACCELERATOR, MAP_NAMES[i]);
        Self::typed([take(0)?, take(1)?, take(2)?, take(3)?, take(4)?], |i| {
            MAP_NAMES[i].to_owned()
        })
    }

    /// Opens the maps pinned in `dir`.
    fn open(dir: &Path) -> Result<Self> {
        let path = |i: usize| dir.join(MAP_PINS[i]);
        let [port_slots, ports, paths, names, counters] =
            [0, 1, 2, 3, 4].map(|i| object::pinned_map(&path(i)));
        Self::typed(
            [
                Map::Array(port_slots?),
                Map::Array(ports?),
                Map::LpmTrie(paths?),
                Map::Array(names?),
                Map::PerCpuArray(counters?),
            ],
            |i| path(i).display().to_string(),
        )
    }

    fn typed(maps: [Map; 5], name: impl Fn(usize) -> String) -> Result<Self> {
        let [port_slots, ports, paths, names, counters] = maps;
        Ok(Self {
            port_slots: Array::try_from(port_slots).map_err(map_error(&name(0)))?,
            ports: Array::try_from(ports).map_err(map_error(&name(1)))?,
            paths: LpmTrie::try_from(paths).map_err(map_error(&name(2)))?,
            names: Array::try_from(names).map_err(map_error(&name(3)))?,
            counters: PerCpuArray::try_from(counters).map_err(map_error(&name(4)))?,
        })
    }

    /// Pins every map into `dir`.
    fn pin(self, dir: &Path) -> Result<()> {
        let pin = |result: Result<(), aya::pin::PinError>, file: &str| {
            let path = dir.join(file);
            result.map_err(|e| pin_error(&path)(e.into()))
        };
        pin(
            self.port_slots.pin(dir.join(PORT_SLOTS_PIN)),
            PORT_SLOTS_PIN,
        )?;
        pin(self.ports.pin(dir.join(PORTS_PIN)), PORTS_PIN)?;
        pin(self.paths.pin(dir.join(PATHS_PIN)), PATHS_PIN)?;
        pin(self.names.pin(dir.join(RULE_NAMES_PIN)), RULE_NAMES_PIN)?;
        pin(self.counters.pin(dir.join(COUNTERS_PIN)), COUNTERS_PIN)
    }

    /// The ports of the policy in force and their slots: the entries whose port points back
    /// at them.
    fn current_ports(&self) -> Result<BTreeMap<u16, u32>> {
        let mut current = BTreeMap::new();
        for slot in 1..PORT_POLICY_SLOTS {
            let entry = self.ports.get(&slot, 0).map_err(map_error(PORTS_MAP))?;
            let Ok(port) = u16::try_from(entry.port) else {
                continue;
            };
            if port != 0
                && self
                    .port_slots
                    .get(&entry.port, 0)
                    .map_err(map_error(PORT_SLOTS_MAP))?
                    == slot
            {
                current.insert(port, slot);
            }
        }
        Ok(current)
    }

    /// Replaces the policy in place: rule hit counters restart, new trie entries are added,
    /// the new port entries are written into free slots and the ports pointed at them, then
    /// stale ports and trie entries are removed. Each step changes whole entries; during the
    /// swap a packet may see a mix of old and new entries, never a half-written one.
    fn set_policy(&mut self, policy: &Policy) -> Result<()> {
        let old_rules = self.rule_names()?.len();
        for id in 0..MAX_RULES {
            let name = match policy.rule(id) {
                Some(rule) => rule_name(&rule.name),
                None if (id as usize) < old_rules => unused_name(),
                None => break,
            };
            self.names
                .set(id, name, 0)
                .map_err(map_error(RULE_NAMES_MAP))?;
        }
        let mut counters = self.counters_per_cpu()?;
        for c in &mut counters {
            c.rule_hits = [0; MAX_RULES as usize];
        }
        let counters = PerCpuValues::try_from(counters).map_err(Error::io(POSSIBLE_CPUS))?;
        self.counters
            .set(0, counters, 0)
            .map_err(map_error(COUNTERS_MAP))?;

        for ((port, prefix), entry) in policy.paths() {
            self.paths
                .insert(&path_key(*port, prefix), entry, 0)
                .map_err(map_error(PATHS_MAP))?;
        }

        let current = self.current_ports()?;
        let taken: BTreeSet<u32> = current.values().copied().collect();
        let mut free = (1..PORT_POLICY_SLOTS).filter(|slot| !taken.contains(slot));
        let mut slots = Vec::new();
        for (&port, entry) in policy.ports() {
            // A policy has at most MAX_PORTS ports, so does the one in force: half the slots
            // are free.
            let slot = free.next().ok_or_else(|| Error::Config {
                accelerator: ACCELERATOR,
                message: format!("no free port slot for a policy of at most {MAX_PORTS} ports"),
            })?;
            let entry = PortPolicy {
                port: u32::from(port),
                ..*entry
            };
            self.ports
                .set(slot, entry, 0)
                .map_err(map_error(PORTS_MAP))?;
            slots.push((port, slot));
        }
        for (port, slot) in slots {
            self.port_slots
                .set(u32::from(port), slot, 0)
                .map_err(map_error(PORT_SLOTS_MAP))?;
        }
        for port in current.keys().filter(|p| !policy.ports().contains_key(p)) {
            self.port_slots
                .set(u32::from(*port), 0, 0)
                .map_err(map_error(PORT_SLOTS_MAP))?;
        }

        let wanted: BTreeSet<(u32, PathKey)> = policy
            .paths()
            .keys()
            .map(|(port, prefix)| {
                let key = path_key(*port, prefix);
                (key.prefix_len(), key.data())
            })
            .collect();
        let stale_paths: Vec<Key<PathKey>> = self
            .paths
            .keys()
            .filter_map(|k| {
                k.ok()
                    .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            })
            .collect();
        for key in stale_paths {
            self.paths.remove(&key).map_err(map_error(PATHS_MAP))?;
        }
        Ok(())
    }

    /// Names of the rules in id order (ids are dense from 0).
    fn rule_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for id in 0..MAX_RULES {
            let entry = self.names.get(&id, 0).map_err(map_error(RULE_NAMES_MAP))?;
            let len = (entry.len as usize).min(RULE_NAME_MAX);
            if len == 0 {
                break;
            }
            names.push(String::from_utf8_lossy(&entry.name[..len]).into_owned());
        }
        Ok(names)
    }

    fn counters_per_cpu(&self) -> Result<Vec<Counters>> {
        Ok(self
            .counters
            .get(&0, 0)
            .map_err(map_error(COUNTERS_MAP))?
            .to_vec())
    }

    fn stats(&self, iface: &str) -> Result<Stats> {
        let counters = self.counters_per_cpu()?;
        let per_cpu = counters
            .iter()
            .enumerate()
            .map(|(cpu, c)| CpuStats {
                cpu: cpu as u32,
                counters: Totals::from(c),
            })
            .collect();
        let rules = self
            .rule_names()?
            .into_iter()
            .enumerate()
            .map(|(id, name)| {
                let per_cpu: Vec<u64> = counters.iter().map(|c| c.rule_hits[id]).collect();
                RuleStats {
                    id: id as u32,
                    name,
                    hits: per_cpu.iter().sum(),
                    per_cpu,
                }
            })
            .collect();
        Ok(Stats {
            iface: iface.to_owned(),
            per_cpu,
            rules,
        })
    }
}

/// Where the kernel lists the possible CPUs: one per-CPU map slot each.
const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

/// The trie key of `prefix` on `port`: the port's 16 bits plus 8 per prefix byte.
fn path_key(port: u16, prefix: &[u8]) -> Key<PathKey> {
    let mut path = [0u8; PATH_MAX];
    path[..prefix.len()].copy_from_slice(prefix);
    let bits = 8 * (2 + prefix.len()) as u32;
    Key::new(
        bits,
        PathKey {
            port: port.to_be_bytes(),
            path,
        },
    )
}

fn rule_name(name: &str) -> RuleName {
    let mut entry = unused_name();
    let len = name.len().min(RULE_NAME_MAX);
    entry.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    entry.len = len as u32;
    entry
}

fn unused_name() -> RuleName {
    RuleName {
        len: 0,
        name: [0; RULE_NAME_MAX],
    }
}

/// The global counters, for one CPU or summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Frames that reached the program.
    pub packets: u64,
    /// HTTP request lines recognised.
    pub http_requests: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames passed.
    pub passed: u64,
    /// Requests passed by a monitor rule.
    pub monitored: u64,
    /// Frames with malformed or truncated headers.
    pub parse_failures: u64,
}

impl From<&Counters> for Totals {
    fn from(c: &Counters) -> Self {
        let v = |code: u32| c.verdicts[code as usize];
        let packets = c.verdicts.iter().sum();
        Self {
            packets,
            http_requests: v(VERDICT_REQUEST)
                + v(VERDICT_ALLOW)
                + v(VERDICT_MONITOR)
                + v(VERDICT_DROP),
            dropped: v(VERDICT_DROP),
            passed: packets - v(VERDICT_DROP),
            monitored: v(VERDICT_MONITOR),
            parse_failures: v(VERDICT_MALFORMED),
        }
    }
}

/// One CPU's global counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    /// The CPU's index.
    pub cpu: u32,
    /// What it counted.
    #[serde(flatten)]
    pub counters: Totals,
}

/// One rule's hits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleStats {
    /// The rule id.
    pub id: u32,
    /// The rule name.
    pub name: String,
    /// Hits summed over CPUs.
    pub hits: u64,
    /// Hits per possible CPU.
    pub per_cpu: Vec<u64>,
}

/// A snapshot of the filter's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The filtered interface.
    pub iface: String,
    /// Global counters per possible CPU.
    pub per_cpu: Vec<CpuStats>,
    /// Per-rule hits, in rule id order.
    pub rules: Vec<RuleStats>,
}

impl Stats {
    /// The global counters summed over CPUs.
    pub fn total(&self) -> Totals {
        self.per_cpu.iter().fold(Totals::default(), |mut t, c| {
            let c = &c.counters;
            t.packets += c.packets;
            t.http_requests += c.http_requests;
            t.dropped += c.dropped;
            t.passed += c.passed;
            t.monitored += c.monitored;
            t.parse_failures += c.parse_failures;
            t
        })
    }

    /// Hits of the rule named `name`, if the policy has it.
    pub fn rule_hits(&self, name: &str) -> Option<u64> {
        self.rules.iter().find(|r| r.name == name).map(|r| r.hits)
    }
}

/// The filter attached to one interface, owned by this process: dropping it detaches.
#[derive(Debug)]
pub struct HttpFilter {
    ebpf: Ebpf,
    maps: Maps,
    iface: String,
    mode: XdpMode,
    link: XdpLinkId,
}

impl HttpFilter {
    /// Loads the program with `policy` and attaches it to `iface` (in the calling thread's
    /// network namespace).
    pub fn attach(iface: &str, mode: AttachMode, policy: &Policy) -> Result<Self> {
        let mut ebpf = object::load(ACCELERATOR, OBJECT)?;
        let mut maps = Maps::take(&mut ebpf)?;
        maps.set_policy(policy)?;
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

    /// Replaces the policy without detaching.
    pub fn set_policy(&mut self, policy: &Policy) -> Result<()> {
        self.maps.set_policy(policy)
    }

    /// Reads the counters.
    pub fn stats(&self) -> Result<Stats> {
        self.maps.stats(&self.iface)
    }

    /// The kernel's id of the loaded program.
    pub fn program_id(&self) -> Result<u32> {
        let program = self.ebpf.program(PROGRAM).ok_or(Error::WrongType {
            object: ACCELERATOR,
            name: PROGRAM,
        })?;
        Ok(program
            .info()
            .map_err(program_error("query", PROGRAM))?
            .id())
    }

    /// Attaches like [`HttpFilter::attach`] and pins the link and maps under `layout`, so the
    /// filter stays after this process exits; `scope` names the network namespace (`host` for
    /// the initial one). Refuses, changing nothing, if one is pinned there already.
    pub fn attach_pinned(
        iface: &str,
        mode: AttachMode,
        policy: &Policy,
        layout: &PinLayout,
        scope: &str,
    ) -> Result<PinnedHttpFilter> {
        let dir = layout.attachment_dir(ACCELERATOR, scope, iface);
        let pins = layout.pin_attachment(ACCELERATOR, dir, |dir| {
            Self::attach(iface, mode, policy).and_then(|filter| filter.pin_into(dir))
        })?;
        Ok(PinnedHttpFilter {
            iface: iface.to_owned(),
            pins,
        })
    }

    /// Pins maps and link; on error, whatever was not pinned is dropped (detached) here.
    fn pin_into(mut self, dir: &Path) -> Result<()> {
        self.maps.pin(dir)?;
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

/// A filter that lives in bpffs pins rather than in a process.
#[derive(Debug)]
pub struct PinnedHttpFilter {
    iface: String,
    pins: PinnedDir,
}

impl PinnedHttpFilter {
    /// Finds the filter pinned for `iface` in `scope`.
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

    /// The kernel's id of the attached program, read through the pinned link.
    pub fn program_id(&self) -> Result<u32> {
        pinned_link_program(&self.pins.join(LINK_PIN))
    }

    /// Replaces the policy of the attached program without detaching it.
    pub fn set_policy(&self, policy: &Policy) -> Result<()> {
        Maps::open(self.pins.path())?.set_policy(policy)
    }

    /// Reads the counters from the pinned maps.
    pub fn stats(&self) -> Result<Stats> {
        Maps::open(self.pins.path())?.stats(&self.iface)
    }

    /// Detaches the program (at once), then removes the pins: the kernel frees the program
    /// and maps.
    pub fn detach(self) -> Result<()> {
        self.pins.detach(&[LINK_PIN])
    }
}

/// What the kernel program decided for one frame under `BPF_PROG_TEST_RUN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KernelVerdict {
    /// The XDP action it returned (`XDP_DROP` 1, `XDP_PASS` 2).
    pub action: u32,
    /// Its verdict and matched rule, read back from the counters map.
    #[serde(flatten)]
    pub classification: Classification,
}

/// Which program of the object to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bench {
    /// The filter.
    Filter,
    /// The XDP_DROP-everything floor.
    Floor,
}

/// The filter program loaded but not attached, run on frames with `BPF_PROG_TEST_RUN`.
#[derive(Debug)]
pub struct TestRunner {
    ebpf: Ebpf,
    maps: Maps,
    last: Vec<Counters>,
}

impl TestRunner {
    /// Loads the program (and the benchmark floor) with `policy`.
    pub fn new(policy: &Policy) -> Result<Self> {
        let mut ebpf = object::load(ACCELERATOR, OBJECT)?;
        let mut maps = Maps::take(&mut ebpf)?;
        maps.set_policy(policy)?;
        for name in [PROGRAM, FLOOR_PROGRAM] {
            let xdp: &mut Xdp = object::program(&mut ebpf, ACCELERATOR, name)?;
            xdp.load().map_err(program_error("load", name))?;
        }
        let last = maps.counters_per_cpu()?;
        Ok(Self { ebpf, maps, last })
    }

    /// Replaces the policy (rule hit counters restart).
    pub fn set_policy(&mut self, policy: &Policy) -> Result<()> {
        self.maps.set_policy(policy)?;
        self.last = self.maps.counters_per_cpu()?;
        Ok(())
    }

    /// Runs the filter once on `frame`. The kernel refuses frames shorter than an Ethernet
    /// header (14 bytes) or longer than a page, with an error.
    pub fn run(&mut self, frame: &[u8]) -> Result<KernelVerdict> {
        let action = self.test_run(PROGRAM, frame, 1)?.return_value;
        let now = self.maps.counters_per_cpu()?;
        // The run happened on the one CPU whose counters moved: the verdict and the rule are
        // the ones counted.
        let moved = |now: &[u64], last: &[u64]| -> Vec<usize> {
            (0..now.len()).filter(|&i| now[i] != last[i]).collect()
        };
        let ran = now
            .iter()
            .zip(&self.last)
            .map(|(n, l)| {
                (
                    moved(&n.verdicts, &l.verdicts),
                    moved(&n.rule_hits, &l.rule_hits),
                )
            })
            .find(|(verdicts, _)| !verdicts.is_empty());
        self.last = now;
        let (verdicts, rules) = ran.ok_or_else(|| {
            Error::TestRun(format!("no CPU's verdict counts in {COUNTERS_MAP} moved"))
        })?;
        let (&[code], rules) = (verdicts.as_slice(), rules.as_slice()) else {
            return Err(Error::TestRun(format!(
                "verdicts {verdicts:?} counted for one frame"
            )));
        };
        let verdict = Verdict::from_code(code as u32)
            .ok_or_else(|| Error::TestRun(format!("unknown verdict code {code}")))?;
        let rule = match rules {
            [] => None,
            [id] => Some(*id as u32),
            more => {
                return Err(Error::TestRun(format!(
                    "rules {more:?} counted for one frame"
                )));
            }
        };
        Ok(KernelVerdict {
            action,
            classification: Classification { verdict, rule },
        })
    }

    /// Runs `which` program `repeat` times on `frame`: the kernel's mean time per run.
    pub fn time(&mut self, which: Bench, frame: &[u8], repeat: u32) -> Result<Duration> {
        let name = match which {
            Bench::Filter => PROGRAM,
            Bench::Floor => FLOOR_PROGRAM,
        };
        let duration = self.test_run(name, frame, repeat)?.duration;
        self.last = self.maps.counters_per_cpu()?;
        Ok(duration)
    }

    fn test_run(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<aya::programs::TestRunResult> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let xdp: &mut Xdp = object::program(&mut self.ebpf, ACCELERATOR, name)?;
        xdp.test_run(opts).map_err(program_error(
            &format!("BPF_PROG_TEST_RUN ({} byte frame) of", frame.len()),
            name,
        ))
    }

    /// Reads the counters (everything run so far).
    pub fn stats(&self) -> Result<Stats> {
        self.maps.stats("(test run)")
    }
}
