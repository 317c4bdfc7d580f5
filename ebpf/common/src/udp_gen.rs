//! The lab's XDP UDP load generator and echo counter (`lab`'s `udp_echo` workload with
//! `generator = "xdp"`): map layout and the latency buckets both sides agree on.
//!
//! # Programs
//! - [`GENERATOR`] (XDP): run with `BPF_PROG_TEST_RUN` in live-frames mode on a template
//!   frame; stamps each copy's payload with a sequence number and the send time
//!   (`bpf_ktime_get_ns`), updates the UDP checksum and transmits it (`XDP_TX`).
//! - [`COUNTER`] (tc ingress): takes the echoes of that flow off the interface (drops them),
//!   counting each and its round-trip time; everything else passes.
//!
//! # Payload
//! Bytes 0..8: sequence number, 8..16: send time in ns (`CLOCK_MONOTONIC`), both little
//! endian: the same layout as the socket generator's datagrams.
//!
//! # Maps
//! - [`FRAME_MAP`]: array, one [`FrameLayout`]: where the generator writes.
//! - [`FLOW_MAP`]: array, one [`EchoFlow`]: which datagrams are echoes.
//! - [`SEQUENCE_MAP`]: per-CPU array, one `u64`: the generator's next sequence number.
//! - [`ECHOES_MAP`]: per-CPU array, one [`Echoes`].

/// The XDP program that stamps and transmits each frame.
pub const GENERATOR: &str = "udp_gen";
/// The tc program that counts and drops echoes.
pub const COUNTER: &str = "udp_echo_count";
/// Name of the frame layout map.
pub const FRAME_MAP: &str = "UG_FRAME";
/// Name of the echo flow map.
pub const FLOW_MAP: &str = "UG_FLOW";
/// Name of the per-CPU sequence numbers.
pub const SEQUENCE_MAP: &str = "UG_SEQUENCE";
/// Name of the per-CPU echo counters.
pub const ECHOES_MAP: &str = "UG_ECHOES";

/// Bytes of the payload the generator writes (sequence number and send time).
pub const STAMP: u32 = 16;
/// Sub-buckets per power of two of the latency histogram (as a shift).
pub const SUB_BUCKET_BITS: u32 = 4;
/// Buckets of the latency histogram: every `u64` nanosecond value has one.
pub const BUCKETS: usize = (64 - SUB_BUCKET_BITS as usize + 1) << SUB_BUCKET_BITS;

/// Where the generator writes in the template frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameLayout {
    /// Offset of the UDP payload ([`STAMP`] bytes are written there).
    pub payload: u32,
    /// Offset of the UDP checksum; the generator keeps it valid unless it is 0 (IPv4's "no
    /// checksum").
    pub checksum: u32,
    /// The sending interface: the generator passes frames that any other interface received
    /// (it is also attached to the loopback interface, where it must do nothing).
    pub ifindex: u32,
}

/// The echoes the counter takes: UDP from `server` to `client` over IPv4 (no options) or
/// IPv6 (no extension headers). Every field is bytes in network order, so the struct has no
/// padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoFlow {
    /// The server's address (IPv4: the first 4 bytes).
    pub server: [u8; 16],
    /// The client's address (IPv4: the first 4 bytes).
    pub client: [u8; 16],
    /// The server's UDP port.
    pub server_port: [u8; 2],
    /// The client's UDP port.
    pub client_port: [u8; 2],
    /// 4 or 6.
    pub ip_version: u8,
    /// Always 0.
    pub pad: [u8; 3],
}

/// Echoes counted on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echoes {
    /// Echoes taken.
    pub echoes: u64,
    /// Echoes by round-trip time bucket ([`latency_bucket`]).
    pub latency: [u64; BUCKETS],
}

impl Default for Echoes {
    fn default() -> Self {
        Self {
            echoes: 0,
            latency: [0; BUCKETS],
        }
    }
}

/// The histogram bucket of a round trip of `ns` nanoseconds: exact below
/// 2^[`SUB_BUCKET_BITS`], then 2^[`SUB_BUCKET_BITS`] buckets per power of two (each at most
/// 1/16 of its values wide).
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    let top = 63 - leading_zeros(ns | 1);
    if top < SUB_BUCKET_BITS {
        return ns as usize;
    }
    let shift = top - SUB_BUCKET_BITS;
    let sub = (ns >> shift) as usize & ((1 << SUB_BUCKET_BITS) - 1);
    ((shift as usize + 1) << SUB_BUCKET_BITS) | sub
}

/// The smallest value of bucket `index` (the inverse of [`latency_bucket`]).
pub fn bucket_low(index: usize) -> u64 {
    let group = index >> SUB_BUCKET_BITS;
    let sub = (index & ((1 << SUB_BUCKET_BITS) - 1)) as u64;
    if group == 0 {
        return sub;
    }
    ((1 << SUB_BUCKET_BITS) | sub) << (group - 1)
}

/// `u64::leading_zeros` by binary search: the bpf target has no instruction for it.
#[inline(always)]
fn leading_zeros(mut x: u64) -> u32 {
    let mut n = 0;
    for shift in [32, 16, 8, 4, 2, 1] {
        if x >> (64 - shift) == 0 {
            n += shift;
            x <<= shift;
        }
    }
    if x >> 63 == 0 { n + 1 } else { n }
}

// SAFETY: #[repr(C)] structs of u32 / u8 / u64 fields laid out without padding; every bit
// pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FrameLayout {}
// SAFETY: as above (byte arrays only).
#[cfg(feature = "user")]
unsafe impl aya::Pod for EchoFlow {}
// SAFETY: as above (u64 only).
#[cfg(feature = "user")]
unsafe impl aya::Pod for Echoes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zeros_matches_the_standard_library() {
        for x in [
            0u64,
            1,
            2,
            3,
            7,
            8,
            255,
            256,
            1 << 40,
            u64::MAX,
            0x8000_0000_0000_0000,
        ] {
            assert_eq!(leading_zeros(x), x.leading_zeros(), "{x:#x}");
        }
    }

    #[test]
    fn every_value_falls_in_the_bucket_whose_bounds_hold_it() {
        let edges = (5..64).flat_map(|b| [(1u64 << b) - 1, 1 << b, (1 << b) + 12345 % (1 << b)]);
        for v in (0..5000).chain(edges).chain([u64::MAX]) {
            let i = latency_bucket(v);
            assert!(i < BUCKETS, "{v}: bucket {i}");
            assert!(
                bucket_low(i) <= v,
                "{v}: bucket {i} starts at {}",
                bucket_low(i)
            );
            if i + 1 < BUCKETS {
                assert!(
                    v < bucket_low(i + 1),
                    "{v}: next bucket starts at {}",
                    bucket_low(i + 1)
                );
            }
        }
        assert_eq!(latency_bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn buckets_are_at_most_a_sixteenth_of_their_values_wide() {
        for i in 16..BUCKETS - 1 {
            let (low, high) = (bucket_low(i), bucket_low(i + 1));
            assert!((high - low) * 16 <= low, "bucket {i}: {low}..{high}");
        }
    }
}
