//! The HTTP request filter's map layout and the constants both sides of it agree on.
//!
//! # Policy maps
//! - [`PORT_SLOTS_MAP`]: array indexed by the destination port (host order, 65536 entries) of
//!   `u32` slots in [`PORTS_MAP`]; 0: the port is not filtered. Only TCP segments to a port
//!   with a slot are inspected; everything else passes untouched.
//! - [`PORTS_MAP`]: array of [`PORT_POLICY_SLOTS`] [`PortPolicy`] entries (slot 0 unused).
//!   Two arrays instead of a hash map: both lookups are inlined by the verifier, no hashing. A
//!   policy change writes the new entries into slots no port points at, then points the ports
//!   at them (one `u32` store each), so a packet never reads a half-written entry; hence twice
//!   [`MAX_PORTS`] slots. An entry counts only while [`PortPolicy::port`] is its port.
//! - [`PATHS_MAP`]: LPM trie keyed by [`PathKey`] (destination port in network order, then the
//!   request-target bytes) → [`PathRule`]. The prefix length in bits is `8 * (2 + prefix
//!   bytes)`: the port always matches in full and the kernel's longest-prefix match picks the
//!   most specific path prefix of that port.
//! - [`RULE_NAMES_MAP`]: array of [`RuleName`] by rule id. Only user space reads it: it keeps
//!   the names with the pins so that `stats` can label counters.
//!
//! # Counter maps
//! - [`COUNTERS_MAP`]: per-CPU array, one [`Counters`] slot: frames by verdict and hits by
//!   rule id (two increments per frame).
//!
//! # What the program recognises
//! A segment is an HTTP request when its TCP payload starts with `METHOD SP TARGET` where
//! METHOD is 1..=[`METHOD_MAX`] bytes `A`-`Z` and TARGET is the longest run of visible ASCII
//! (`0x21..=0x7e`) after the space, and either TARGET is longer than [`PATH_MAX`] bytes (the
//! policy then sees its first [`PATH_MAX`] bytes) or it is followed by `" HTTP/1."`.

/// The filter program.
pub const PROGRAM: &str = "http_filter";
/// An XDP program that drops every frame: the cost floor the benchmark compares against.
pub const FLOOR_PROGRAM: &str = "http_filter_floor";

/// Name of the port → slot array.
pub const PORT_SLOTS_MAP: &str = "HF_PORT_SLOTS";
/// Name of the port policy array.
pub const PORTS_MAP: &str = "HF_PORTS";
/// Name of the path-prefix LPM trie.
pub const PATHS_MAP: &str = "HF_PATHS";
/// Name of the rule-name array.
pub const RULE_NAMES_MAP: &str = "HF_RULE_NAMES";
/// Name of the global per-CPU counters.
pub const COUNTERS_MAP: &str = "HF_COUNTERS";

/// Most destination ports a policy can name.
pub const MAX_PORTS: u32 = 64;
/// Entries of [`PORTS_MAP`]: slot 0 (unused) and room for two policies.
pub const PORT_POLICY_SLOTS: u32 = 2 * MAX_PORTS + 1;
/// Entries of [`PORT_SLOTS_MAP`]: one per port number.
pub const PORT_NUMBERS: u32 = 65536;
/// Most (port, path prefix) entries of the LPM trie.
pub const MAX_PATH_ENTRIES: u32 = 1024;
/// Rule ids are `0..MAX_RULES`.
pub const MAX_RULES: u32 = 256;
/// Longest path prefix, in bytes: [`PathKey`] is 256 bytes, the kernel's LPM maximum.
pub const PATH_MAX: usize = 254;
/// Longest method token, in bytes.
pub const METHOD_MAX: usize = 8;
/// Most VLAN tags (802.1Q `0x8100` or 802.1ad `0x88a8`) skipped; a frame with more passes.
pub const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers (hop-by-hop, routing, destination options, fragment) skipped;
/// a packet with more counts as a parse failure and passes.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;
/// Longest rule name, in bytes.
pub const RULE_NAME_MAX: usize = 60;
/// `rule` value meaning "no rule matched".
pub const NO_RULE: u32 = u32::MAX;
/// What must follow a target of at most [`PATH_MAX`] bytes.
pub const HTTP_VERSION_PREFIX: &[u8; 8] = b" HTTP/1.";

/// Method bits of [`PortPolicy::allowed_methods`]: `GET`.
pub const METHOD_GET: u32 = 1 << 0;
/// `HEAD`.
pub const METHOD_HEAD: u32 = 1 << 1;
/// `POST`.
pub const METHOD_POST: u32 = 1 << 2;
/// `PUT`.
pub const METHOD_PUT: u32 = 1 << 3;
/// `DELETE`.
pub const METHOD_DELETE: u32 = 1 << 4;
/// `CONNECT`.
pub const METHOD_CONNECT: u32 = 1 << 5;
/// `OPTIONS`.
pub const METHOD_OPTIONS: u32 = 1 << 6;
/// `TRACE`.
pub const METHOD_TRACE: u32 = 1 << 7;
/// `PATCH`.
pub const METHOD_PATCH: u32 = 1 << 8;
/// Any other method token.
pub const METHOD_OTHER: u32 = 1 << 9;
/// Every method bit.
pub const METHOD_ALL: u32 = (1 << 10) - 1;

/// The known methods and their bits; tokens not listed here are [`METHOD_OTHER`].
pub const METHODS: [(&str, u32); 9] = [
    ("GET", METHOD_GET),
    ("HEAD", METHOD_HEAD),
    ("POST", METHOD_POST),
    ("PUT", METHOD_PUT),
    ("DELETE", METHOD_DELETE),
    ("CONNECT", METHOD_CONNECT),
    ("OPTIONS", METHOD_OPTIONS),
    ("TRACE", METHOD_TRACE),
    ("PATCH", METHOD_PATCH),
];

/// The first (at most 8) bytes of `bytes` packed little-endian into a `u64`, the first byte in
/// the lowest bits (`b"GET"` → `0x544547`): what an 8-byte load from the packet gives once the
/// bytes past the token are masked off. The program compares method tokens this way, and the
/// head filter hashes target heads this way.
pub const fn pack_le(bytes: &[u8]) -> u64 {
    let mut packed = 0u64;
    let mut i = 0;
    while i < bytes.len() && i < 8 {
        packed |= (bytes[i] as u64) << (8 * i);
        i += 1;
    }
    packed
}

/// Most target bytes the head filter looks at.
pub const HEAD_MAX: usize = 8;

/// The head filter's bit (0..256) for a target whose first [`PortPolicy::head_len`] bytes,
/// packed by [`pack_le`], are `head`.
pub const fn head_bit(head: u64) -> u32 {
    (head.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u32
}

/// Rule action: pass, and count the hit.
pub const ACTION_ALLOW: u32 = 0;
/// Rule action: pass and count as monitored (monitor mode: what would have been dropped).
pub const ACTION_MONITOR: u32 = 1;
/// Rule action: drop.
pub const ACTION_DROP: u32 = 2;

/// Verdict: passed without inspection — not IPv4/IPv6 over TCP, a non-first fragment, more
/// than [`MAX_VLAN_TAGS`] tags, or a destination port not in [`PORTS_MAP`].
pub const VERDICT_OTHER: u32 = 0;
/// Verdict: passed, headers malformed or truncated (a parse failure).
pub const VERDICT_MALFORMED: u32 = 1;
/// Verdict: passed, a TCP segment to a filtered port whose payload is not a request line.
pub const VERDICT_NOT_REQUEST: u32 = 2;
/// Verdict: passed, an HTTP request that matched no rule.
pub const VERDICT_REQUEST: u32 = 3;
/// Verdict: passed by an allow rule.
pub const VERDICT_ALLOW: u32 = 4;
/// Verdict: passed and counted by a monitor rule.
pub const VERDICT_MONITOR: u32 = 5;
/// Verdict: dropped by a drop rule.
pub const VERDICT_DROP: u32 = 6;

/// [`PortPolicy::lookup`]: the port has no non-empty prefix; only `default_rule` applies.
pub const LOOKUP_NONE: u32 = 0;
/// [`PortPolicy::lookup`]: every non-empty prefix is in [`PortPolicy::short`].
pub const LOOKUP_SHORT: u32 = 1;
/// [`PortPolicy::lookup`]: the head filter, then the LPM trie.
pub const LOOKUP_TRIE: u32 = 2;
/// Most prefixes [`PortPolicy::short`] holds.
pub const SHORT_PREFIXES: usize = 4;

/// A path prefix of at most [`HEAD_MAX`] bytes, matched without the trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShortPrefix {
    /// The prefix packed by [`pack_le`].
    pub value: u64,
    /// Its length, 1..=[`HEAD_MAX`].
    pub len: u32,
    /// The rule it belongs to.
    pub rule: u32,
    /// `ACTION_*` of the rule.
    pub action: u32,
    /// Zero: keeps the layout free of implicit padding.
    pub pad: u32,
}

/// What the policy says about one destination port, and how its path prefixes are looked up.
///
/// # Short prefixes
/// A port with at most [`SHORT_PREFIXES`] non-empty prefixes, none longer than [`HEAD_MAX`]
/// bytes (`/admin`, `/api/`, `/.git`), keeps them in `short`, longest first: the program
/// compares them with the target's first 8 bytes (one load, a mask and a compare each) and
/// never copies the target or walks the trie.
///
/// # The head filter
/// Other ports go through the LPM trie, whose lookup (a key copied out of the packet, a trie
/// walk) is the dearest step of the program; the head filter skips it when no non-empty prefix
/// can match. `head_len` is the length of the port's shortest non-empty prefix, at most
/// [`HEAD_MAX`], and `heads` has bit [`head_bit`] set for the first `head_len` bytes of every
/// non-empty prefix. A target shorter than `head_len`, or whose first `head_len` bytes have
/// their bit clear, starts with none of the prefixes: only the empty prefix (`default_rule`)
/// can apply. A set bit (possibly another head's) means "look up".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// The port this entry is for (0: none).
    pub port: u32,
    /// Method bits (`METHOD_*`) allowed on this port.
    pub allowed_methods: u32,
    /// [`ACTION_DROP`] or [`ACTION_MONITOR`] for requests with another method.
    pub method_action: u32,
    /// The rule id counted when a method is not allowed.
    pub method_rule: u32,
    /// The rule of the empty prefix `""` on this port, or [`NO_RULE`].
    pub default_rule: u32,
    /// `ACTION_*` of [`PortPolicy::default_rule`].
    pub default_action: u32,
    /// [`LOOKUP_NONE`], [`LOOKUP_SHORT`] or [`LOOKUP_TRIE`].
    pub lookup: u32,
    /// Prefixes in `short` ([`LOOKUP_SHORT`]).
    pub short_count: u32,
    /// Target bytes the head filter reads, 1..=[`HEAD_MAX`] ([`LOOKUP_TRIE`]).
    pub head_len: u32,
    /// The length of the port's longest prefix: target bytes past it never change the
    /// longest match, so the trie key is cut there ([`LOOKUP_TRIE`]).
    pub max_prefix_len: u32,
    /// The head filter: 256 bits ([`LOOKUP_TRIE`]).
    pub heads: [u64; 4],
    /// The short prefixes, longest first ([`LOOKUP_SHORT`]).
    pub short: [ShortPrefix; SHORT_PREFIXES],
}

impl PortPolicy {
    /// Sets how this port's path prefixes are looked up, from all of them with their rule ids
    /// and `ACTION_*`s (the trie holds them too).
    pub fn set_prefixes<'a>(
        &mut self,
        prefixes: impl Iterator<Item = (&'a [u8], u32, u32)> + Clone,
    ) {
        self.default_rule = NO_RULE;
        self.default_action = ACTION_ALLOW;
        self.short_count = 0;
        self.heads = [0; 4];
        let lengths = || {
            prefixes
                .clone()
                .map(|(p, ..)| p.len())
                .filter(|len| *len > 0)
        };
        let count = lengths().count();
        self.head_len = lengths().min().map_or(0, |len| len.min(HEAD_MAX) as u32);
        self.max_prefix_len = lengths().max().unwrap_or(0) as u32;
        self.lookup = if count == 0 {
            LOOKUP_NONE
        } else if count <= SHORT_PREFIXES && self.max_prefix_len as usize <= HEAD_MAX {
            LOOKUP_SHORT
        } else {
            LOOKUP_TRIE
        };
        for (prefix, rule, action) in prefixes {
            if prefix.is_empty() {
                self.default_rule = rule;
                self.default_action = action;
            } else if self.lookup == LOOKUP_SHORT {
                // Insert keeping the longest first.
                let new = ShortPrefix {
                    value: pack_le(prefix),
                    len: prefix.len() as u32,
                    rule,
                    action,
                    pad: 0,
                };
                let n = self.short_count as usize;
                let at = self.short[..n]
                    .iter()
                    .position(|p| p.len < new.len)
                    .unwrap_or(n);
                self.short.copy_within(at..n, at + 1);
                self.short[at] = new;
                self.short_count += 1;
            } else {
                let bit = head_bit(pack_le(&prefix[..self.head_len as usize]));
                self.heads[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
    }
}

/// Key data of the path LPM trie: destination port (network order), then request-target
/// bytes. Bytes past the prefix length are ignored by the trie; user space zeroes them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathKey {
    /// Destination port, big-endian.
    pub port: [u8; 2],
    /// Path prefix bytes.
    pub path: [u8; PATH_MAX],
}

/// What a path prefix rule does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRule {
    /// The rule id (index into [`RULE_HITS_MAP`]).
    pub rule: u32,
    /// `ACTION_*`.
    pub action: u32,
}

/// A rule's name as stored in [`RULE_NAMES_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleName {
    /// Bytes of `name` in use; 0 marks an unused id.
    pub len: u32,
    /// UTF-8 name, zero padded.
    pub name: [u8; RULE_NAME_MAX],
}

/// Verdict codes are `0..VERDICTS`.
pub const VERDICTS: usize = 8;

/// The counters of one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Frames by `VERDICT_*` code.
    pub verdicts: [u64; VERDICTS],
    /// Requests decided by each rule, by rule id.
    pub rule_hits: [u64; MAX_RULES as usize],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            verdicts: [0; VERDICTS],
            rule_hits: [0; MAX_RULES as usize],
        }
    }
}

// SAFETY: #[repr(C)] structs of u32/u64/byte-array fields whose sizes leave no padding
// (ShortPrefix 24, PortPolicy 168, PathKey 256, PathRule 8, RuleName 64, Counters 2112 bytes);
// every bit pattern
// is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortPolicy {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ShortPrefix {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PathKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PathRule {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RuleName {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counters {}

const _: () = {
    assert!(size_of::<ShortPrefix>() == 24);
    assert!(size_of::<PortPolicy>() == 168);
    assert!(size_of::<PathKey>() == 256);
    assert!(size_of::<PathRule>() == 8);
    assert!(size_of::<RuleName>() == 64);
    assert!(size_of::<Counters>() == 2112);
    assert!(VERDICT_DROP < VERDICTS as u32 && MAX_RULES.is_power_of_two());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pack_little_endian() {
        assert_eq!(pack_le(b"GET"), 0x54_45_47);
        assert_eq!(pack_le(b"OPTIONS"), u64::from_le_bytes(*b"OPTIONS\0"));
        assert_eq!(pack_le(b"/admin/public"), u64::from_le_bytes(*b"/admin/p"));
        assert_ne!(pack_le(b"PUT"), pack_le(b"PUTT"));
    }

    #[test]
    fn few_short_prefixes_are_kept_longest_first() {
        let mut policy = PortPolicy::default();
        let prefixes: [(&[u8], u32, u32); 4] = [
            (b"/a", 0, ACTION_DROP),
            (b"", 1, ACTION_MONITOR),
            (b"/admin", 2, ACTION_ALLOW),
            (b"/api/", 3, ACTION_DROP),
        ];
        policy.set_prefixes(prefixes.iter().copied());
        assert_eq!(policy.lookup, LOOKUP_SHORT);
        assert_eq!(
            (policy.default_rule, policy.default_action),
            (1, ACTION_MONITOR)
        );
        let expected = [
            (pack_le(b"/admin"), 6, 2),
            (pack_le(b"/api/"), 5, 3),
            (pack_le(b"/a"), 2, 0),
        ];
        assert_eq!(policy.short_count as usize, expected.len());
        for (p, want) in policy.short.iter().zip(expected) {
            assert_eq!((p.value, p.len, p.rule), want);
        }

        let mut empty_only = PortPolicy::default();
        empty_only.set_prefixes([(&b""[..], 7, ACTION_DROP)].into_iter());
        assert_eq!(
            (empty_only.lookup, empty_only.default_rule),
            (LOOKUP_NONE, 7)
        );
    }

    #[test]
    fn long_or_many_prefixes_use_the_head_filter_and_the_trie() {
        let mut policy = PortPolicy::default();
        let prefixes: [(&[u8], u32, u32); 3] = [
            (b"/admin", 0, ACTION_DROP),
            (b"/admin/public", 1, ACTION_ALLOW),
            (b"", 2, ACTION_DROP),
        ];
        policy.set_prefixes(prefixes.iter().copied());
        assert_eq!(policy.lookup, LOOKUP_TRIE);
        assert_eq!((policy.head_len, policy.max_prefix_len), (6, 13));
        assert_eq!(policy.default_rule, 2);
        let bit = head_bit(pack_le(b"/admin"));
        let set: u32 = policy.heads.iter().map(|w| w.count_ones()).sum();
        assert_eq!(set, 1, "both prefixes share the head /admin");
        assert_ne!(policy.heads[(bit / 64) as usize] & (1 << (bit % 64)), 0);

        let five: [(&[u8], u32, u32); 5] = [
            (b"/a", 0, 0),
            (b"/b", 1, 0),
            (b"/c", 2, 0),
            (b"/d", 3, 0),
            (b"/e", 4, 0),
        ];
        let mut many = PortPolicy::default();
        many.set_prefixes(five.iter().copied());
        assert_eq!((many.lookup, many.head_len), (LOOKUP_TRIE, 2));
        let mut long = PortPolicy::default();
        long.set_prefixes([(&b"/internal"[..], 0, 0)].into_iter());
        assert_eq!((long.lookup, long.head_len), (LOOKUP_TRIE, HEAD_MAX as u32));
    }
}
