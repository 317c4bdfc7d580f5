//! The CPU balancer's map layout, and the symmetric flow hash both sides compute with the same
//! code (the XDP program to pick a CPU, user space to predict and test that choice).
//!
//! # Maps
//! - [`CPUS_MAP`]: cpumap by CPU index, one entry (queue size, [`LANDED_PROGRAM`]) per CPU of
//!   the set. User space sizes it to the possible CPUs at load time.
//! - [`SLOTS_MAP`]: array of [`SLOTS`] `u32` CPU indexes, filled by user space in proportion to
//!   the weights; [`NO_CPU`] passes. A new flow takes the next slot of the receiving CPU's
//!   rotation ([`ASSIGN_ROTATION`]: `slots[n % SLOTS]` for its n-th new flow, the table
//!   interleaved so that any run of flows is spread by weight) or the slot of its hash
//!   ([`ASSIGN_HASH`]: `slots[h % SLOTS]`, the same for a flow wherever and whenever it is
//!   seen).
//! - [`WEIGHTS_MAP`]: array of `u32` weights by CPU index; 0 means "not in the set",
//!   [`DRAINING`] "leaving the set": no new flows, busy flows stay.
//! - [`CONFIG_MAP`]: array, one [`Config`] slot: the assignment and the idle time.
//! - [`ROTOR_MAP`]: per-CPU array, one `u32` slot: new flows seen on that receiving CPU.
//! - [`FLOWS_MAP`]: LRU hash [`FlowKey`] → [`FlowState`]: the CPU each recent flow went to.
//! - [`TARGET_HITS_MAP`]: per-CPU array of `u64` by target CPU: frames redirected there,
//!   counted on the receiving CPU.
//! - [`LANDED_MAP`]: per-CPU array, one `u64` slot: frames [`LANDED_PROGRAM`] saw, counted on
//!   the CPU that dequeued them from the cpumap.
//! - [`COUNTERS_MAP`]: per-CPU array, one [`Counters`] slot, on the receiving CPU.
//!
//! # Never splitting a flow
//! A flow keeps the CPU recorded in [`FLOWS_MAP`] (both directions alike: the key is symmetric)
//! while that CPU is in the set: with [`ASSIGN_ROTATION`] for as long as the table remembers the
//! flow, with [`ASSIGN_HASH`] until it has been idle for [`Config::flow_idle_ns`] (then its
//! hash slot decides again). Otherwise a flow moves only when its CPU has left the set: a CPU
//! being removed first drains ([`DRAINING`]) — no new flows, busy flows stay — and user space
//! takes it out once nothing was sent to it for the idle time, so the flows that move then
//! are idle and nothing of them can be left in the old CPU's queue. Slot table changes
//! therefore move new (and, hashed, idle) flows only.

/// The balancing XDP program, attached to the receiving interface.
pub const PROGRAM: &str = "cpu_balance";
/// The XDP program run by the cpumap on the target CPU (counts, then passes to the stack).
pub const LANDED_PROGRAM: &str = "cpu_balance_landed";

/// Name of the cpumap.
pub const CPUS_MAP: &str = "CB_CPUS";
/// Name of the slot table.
pub const SLOTS_MAP: &str = "CB_SLOTS";
/// Name of the weight array.
pub const WEIGHTS_MAP: &str = "CB_WEIGHTS";
/// Name of the flow table.
pub const FLOWS_MAP: &str = "CB_FLOWS";
/// Name of the per-target-CPU redirect counters.
pub const TARGET_HITS_MAP: &str = "CB_TARGET_HITS";
/// Name of the per-CPU landed counter.
pub const LANDED_MAP: &str = "CB_LANDED";
/// Name of the receive-side per-CPU counters.
pub const COUNTERS_MAP: &str = "CB_COUNTERS";
/// Name of the configuration array.
pub const CONFIG_MAP: &str = "CB_CONFIG";
/// Name of the per-CPU rotation counters.
pub const ROTOR_MAP: &str = "CB_ROTOR";

/// Slots of the slot table: weights resolve to multiples of 1/`SLOTS` of the flows.
pub const SLOTS: u32 = 256;
/// Slot value meaning "no CPU": the frame passes on the receiving CPU.
pub const NO_CPU: u32 = u32::MAX;
/// Entries of [`FLOWS_MAP`]; the least recently used flow is forgotten beyond that.
pub const MAX_FLOWS: u32 = 65536;
/// Default idle time after which a flow may move to another CPU.
pub const FLOW_IDLE_NS: u64 = 100_000_000;
/// [`WEIGHTS_MAP`] value of a CPU leaving the set: no new flows, busy flows stay.
pub const DRAINING: u32 = u32::MAX;
/// [`Config::assign`]: new flows take the receiving CPU's next slot in turn.
pub const ASSIGN_ROTATION: u32 = 0;
/// [`Config::assign`]: new flows take the slot of their hash.
pub const ASSIGN_HASH: u32 = 1;
/// The largest number of CPUs the maps are built for before user space resizes them.
pub const MAX_CPUS: u32 = 64;

/// [`FlowKey::family`] of IPv4.
pub const FAMILY_V4: u8 = 4;
/// [`FlowKey::family`] of IPv6.
pub const FAMILY_V6: u8 = 6;

/// Receive-side counters of one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames that reached the program.
    pub packets: u64,
    /// Frames handed to a cpumap entry.
    pub redirected: u64,
    /// Passed: not IPv4/IPv6, more VLAN tags than skipped, or headers truncated.
    pub passed_other: u64,
    /// Passed: IP fragments (they carry no ports; the stack reassembles them).
    pub passed_fragment: u64,
    /// Passed: the slot table had no CPU for the flow.
    pub passed_no_cpu: u64,
    /// Passed: the cpumap had no entry for the chosen CPU (a CPU leaving the set).
    pub redirect_failed: u64,
    /// Flows not in the flow table (first frame, or forgotten).
    pub new_flows: u64,
    /// Idle flows that came back to a different CPU than before.
    pub moved_flows: u64,
    /// Busy flows moved because their CPU left the set without draining (a flow split).
    pub moved_busy_flows: u64,
}

/// How the balancer assigns flows, set by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Idle time in ns after which a flow may move.
    pub flow_idle_ns: u64,
    /// [`ASSIGN_ROTATION`] or [`ASSIGN_HASH`].
    pub assign: u32,
    /// Zero: keeps the layout free of implicit padding.
    pub pad: u32,
}

/// What the flow table keeps for one flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// When the flow's last frame arrived (`bpf_ktime_get_ns`).
    pub last_ns: u64,
    /// The CPU its frames go to.
    pub cpu: u32,
    /// Zero: keeps the layout free of implicit padding.
    pub pad: u32,
}

/// A flow with its two endpoints in a fixed order, so that both directions give one key.
///
/// Addresses are big-endian 32-bit words (an IPv4 address is word 0, the rest 0). The lower
/// endpoint (address words, then port) comes first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The lower endpoint's address.
    pub addr_lo: [u32; 4],
    /// The higher endpoint's address.
    pub addr_hi: [u32; 4],
    /// The lower endpoint's port (0 for protocols without ports).
    pub port_lo: u16,
    /// The higher endpoint's port.
    pub port_hi: u16,
    /// IP protocol number (the last IPv6 next header).
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero: keeps the layout free of implicit padding.
    pub pad: u16,
}

impl FlowKey {
    /// The key of a frame from `src`:`sport` to `dst`:`dport`, either direction.
    #[inline(always)]
    pub fn new(
        family: u8,
        protocol: u8,
        src: [u32; 4],
        sport: u16,
        dst: [u32; 4],
        dport: u16,
    ) -> Self {
        let src_first = endpoint_le(&src, sport, &dst, dport);
        let (addr_lo, port_lo, addr_hi, port_hi) = if src_first {
            (src, sport, dst, dport)
        } else {
            (dst, dport, src, sport)
        };
        Self {
            addr_lo,
            addr_hi,
            port_lo,
            port_hi,
            protocol,
            family,
            pad: 0,
        }
    }

    /// The flow's hash: MurmurHash3 (x86, 32-bit) over the key's words, seed 0.
    #[inline(always)]
    pub fn hash(&self) -> u32 {
        let mut h = 0u32;
        let mut i = 0;
        while i < 4 {
            h = murmur_round(h, self.addr_lo[i]);
            h = murmur_round(h, self.addr_hi[i]);
            i += 1;
        }
        h = murmur_round(h, (u32::from(self.port_lo) << 16) | u32::from(self.port_hi));
        h = murmur_round(h, (u32::from(self.protocol) << 8) | u32::from(self.family));
        fmix32(h ^ 40)
    }

    /// The slot table index of this flow.
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        self.hash() % SLOTS
    }
}

/// Whether endpoint `a`:`ap` sorts before or equal to `b`:`bp`.
#[inline(always)]
fn endpoint_le(a: &[u32; 4], ap: u16, b: &[u32; 4], bp: u16) -> bool {
    let mut i = 0;
    while i < 4 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    ap <= bp
}

#[inline(always)]
fn murmur_round(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

// SAFETY: a plain #[repr(C)] struct of u64 fields: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counters {}
// SAFETY: #[repr(C)], a u64 then two u32: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}

const _: () = assert!(size_of::<FlowKey>() == 40 && size_of::<FlowState>() == 16);
