//! The HTTP request filter's map layout and the constants both sides of it agree on.
//!
//! # Policy maps
//! - [`PORTS_MAP`]: hash `u16` destination port (host order) → [`PortPolicy`]. Only TCP
//!   segments to a port in this map are inspected; everything else passes untouched.
//! - [`PATHS_MAP`]: LPM trie keyed by [`PathKey`] (destination port in network order, then the
//!   request-target bytes) → [`PathRule`]. The prefix length in bits is `8 * (2 + prefix
//!   bytes)`: the port always matches in full and the kernel's longest-prefix match picks the
//!   most specific path prefix of that port.
//! - [`RULE_NAMES_MAP`]: array of [`RuleName`] by rule id. Only user space reads it: it keeps
//!   the names with the pins so that `stats` can label counters.
//!
//! # Counter maps
//! - [`RULE_HITS_MAP`]: per-CPU array of `u64` by rule id, [`MAX_RULES`] slots.
//! - [`COUNTERS_MAP`]: per-CPU array, one [`Counters`] slot.
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

/// Name of the ports hash map.
pub const PORTS_MAP: &str = "HF_PORTS";
/// Name of the path-prefix LPM trie.
pub const PATHS_MAP: &str = "HF_PATHS";
/// Name of the per-rule per-CPU hit counters.
pub const RULE_HITS_MAP: &str = "HF_RULE_HITS";
/// Name of the rule-name array.
pub const RULE_NAMES_MAP: &str = "HF_RULE_NAMES";
/// Name of the global per-CPU counters.
pub const COUNTERS_MAP: &str = "HF_COUNTERS";

/// Most destination ports a policy can name.
pub const MAX_PORTS: u32 = 64;
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

/// A method token of at most 8 bytes packed big-endian into a `u64` (`b"GET"` →
/// `0x474554`): how the program compares tokens with [`METHODS`] without a byte loop.
pub const fn pack_token(token: &[u8]) -> u64 {
    let mut packed = 0u64;
    let mut i = 0;
    while i < token.len() && i < 8 {
        packed = (packed << 8) | token[i] as u64;
        i += 1;
    }
    packed
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

/// What the policy says about one destination port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// Method bits (`METHOD_*`) allowed on this port.
    pub allowed_methods: u32,
    /// [`ACTION_DROP`] or [`ACTION_MONITOR`] for requests with another method.
    pub method_action: u32,
    /// The rule id counted when a method is not allowed.
    pub method_rule: u32,
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

/// Global counters of one CPU, and what the last packet it filtered got.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames that reached the program.
    pub packets: u64,
    /// HTTP request lines recognised.
    pub http_requests: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames passed (everything not dropped).
    pub passed: u64,
    /// Requests passed and counted by a monitor rule.
    pub monitored: u64,
    /// Frames whose headers were malformed or truncated.
    pub parse_failures: u64,
    /// `VERDICT_*` of this CPU's last frame (how test runs learn the kernel's verdict).
    pub last_verdict: u32,
    /// Rule id matched by this CPU's last frame, or [`NO_RULE`].
    pub last_rule: u32,
}

// SAFETY: #[repr(C)] structs of u32/u64/byte-array fields whose sizes leave no padding
// (PortPolicy 12, PathKey 256, PathRule 8, RuleName 64, Counters 56 bytes); every bit pattern
// is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortPolicy {}
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
    assert!(size_of::<PortPolicy>() == 12);
    assert!(size_of::<PathKey>() == 256);
    assert!(size_of::<PathRule>() == 8);
    assert!(size_of::<RuleName>() == 64);
    assert!(size_of::<Counters>() == 56);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pack_big_endian() {
        assert_eq!(pack_token(b"GET"), 0x47_45_54);
        assert_eq!(pack_token(b"OPTIONS"), u64::from_be_bytes(*b"\0OPTIONS"));
        assert_ne!(pack_token(b"PUT"), pack_token(b"PUTT"));
    }

    #[test]
    fn method_bits_are_distinct_and_cover_all() {
        let bits = METHODS.iter().fold(METHOD_OTHER, |acc, (_, bit)| {
            assert_eq!(acc & bit, 0);
            acc | bit
        });
        assert_eq!(bits, METHOD_ALL);
    }
}
