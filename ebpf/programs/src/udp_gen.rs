//! The lab's UDP load generator and echo counter (layout: `ebpf_common::udp_gen`).
//!
//! `udp_gen` (XDP) runs under `BPF_PROG_TEST_RUN` in live-frames mode: each run stamps a copy
//! of the template frame and transmits it from the interface, with no socket and no skb on the
//! sending side. `udp_echo_count` (tc ingress) takes the echoes of that one flow off the same
//! interface, counting them and their round-trip times. Both know the frame's layout from the
//! maps, written by user space when it built the template: they only compare fixed fields.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use ebpf_common::udp_gen::{BUCKETS, EchoFlow, Echoes, FrameLayout, STAMP, latency_bucket};
use ebpf_programs::with_percpu_slot;

#[map]
static UG_FRAME: Array<FrameLayout> = Array::with_max_entries(1, 0);

#[map]
static UG_FLOW: Array<EchoFlow> = Array::with_max_entries(1, 0);

#[map]
static UG_SEQUENCE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static UG_ECHOES: PerCpuArray<Echoes> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const IPPROTO_UDP: u8 = 17;
/// Offsets are masked with this before packet access: it bounds them for the verifier and is
/// above any frame the generator sends.
const OFFSET_MASK: usize = 0x3fff;

/// Stamps the payload with the next sequence number and the time, keeps the UDP checksum
/// valid, and transmits the frame; passes frames received on any other interface.
#[xdp]
pub fn udp_gen(ctx: XdpContext) -> u32 {
    let Some(layout) = UG_FRAME.get(0).copied() else {
        return xdp_action::XDP_ABORTED;
    };
    // Only the test runs name the sending interface; a frame that arrived anywhere else (the
    // loopback interface the program is attached to) passes untouched.
    if ctx.ingress_ifindex() != layout.ifindex as usize {
        return xdp_action::XDP_PASS;
    }
    let mut sequence = 0;
    with_percpu_slot(&UG_SEQUENCE, |s| {
        sequence = *s;
        *s += 1;
    });
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let payload = ctx.data() + (layout.payload as usize & OFFSET_MASK);
    if payload + STAMP as usize > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let stamp: [u64; 2] = [sequence.to_le(), now.to_le()];
    // SAFETY: STAMP bytes at `payload` lie inside the frame (checked above).
    let old: [u64; 2] = unsafe { (payload as *const [u64; 2]).read_unaligned() };
    // SAFETY: as above.
    unsafe { (payload as *mut [u64; 2]).write_unaligned(stamp) };
    if layout.checksum != 0 {
        let at = ctx.data() + (layout.checksum as usize & OFFSET_MASK);
        if at + 2 > ctx.data_end() {
            return xdp_action::XDP_ABORTED;
        }
        // SAFETY: two bytes at `at` lie inside the frame (checked above).
        let checksum = unsafe { (at as *const u16).read_unaligned() };
        // IPv4's 0 means "no checksum" and stays so.
        if checksum != 0 {
            let updated = update_checksum(checksum, &old, &stamp);
            // SAFETY: as above.
            unsafe { (at as *mut u16).write_unaligned(updated) };
        }
    }
    xdp_action::XDP_TX
}

/// RFC 1624 incremental update of an Internet checksum for 16 bytes changing from `old` to
/// `new` (all in memory order: a one's complement sum does not depend on byte order). A
/// result of 0 is sent as 0xffff, as UDP requires.
#[inline(always)]
fn update_checksum(checksum: u16, old: &[u64; 2], new: &[u64; 2]) -> u16 {
    let mut sum = u64::from(!checksum);
    for (o, n) in old.iter().zip(new) {
        for shift in [0, 16, 32, 48] {
            sum += u64::from(!((o >> shift) as u16)) + u64::from((n >> shift) as u16);
        }
    }
    // Three folds bring any sum of these 33 words below 0x10000 (a loop the verifier
    // could not bound).
    for _ in 0..3 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

/// Takes echoes of the generator's flow: counts them with their round-trip time and drops
/// them; everything else passes.
#[classifier]
pub fn udp_echo_count(ctx: TcContext) -> i32 {
    let Some(flow) = UG_FLOW.get(0) else {
        return TC_ACT_OK;
    };
    let Some(stamp) = echo_stamp(&ctx, flow) else {
        return TC_ACT_OK;
    };
    // SAFETY: a helper without arguments.
    let rtt = unsafe { bpf_ktime_get_ns() }.saturating_sub(stamp);
    let bucket = latency_bucket(rtt);
    with_percpu_slot(&UG_ECHOES, |e| {
        e.echoes += 1;
        if bucket < BUCKETS {
            e.latency[bucket] += 1;
        }
    });
    TC_ACT_SHOT
}

/// The send time in an echo of `flow`, or `None` for any other frame. Fields are compared
/// as integers: the bpf target has no `memcmp`.
#[inline(always)]
fn echo_stamp(ctx: &TcContext, flow: &EchoFlow) -> Option<u64> {
    let ethertype: u16 = ctx.load(12).ok()?;
    let udp = if flow.ip_version == 4 {
        if ethertype != u16::from_ne_bytes(ETH_P_IPV4) {
            return None;
        }
        let ip: [u32; 5] = ctx.load(ETH_HLEN).ok()?;
        let [first, ..] = ip[0].to_ne_bytes();
        let [_, protocol, ..] = ip[2].to_ne_bytes();
        if first != 0x45 || protocol != IPPROTO_UDP {
            return None;
        }
        if ip[3] != word32(&flow.server) || ip[4] != word32(&flow.client) {
            return None;
        }
        ETH_HLEN + 20
    } else {
        if ethertype != u16::from_ne_bytes(ETH_P_IPV6) {
            return None;
        }
        let ip: [u64; 5] = ctx.load(ETH_HLEN).ok()?;
        let [first, _, _, _, _, _, next_header, _] = ip[0].to_ne_bytes();
        if first >> 4 != 6 || next_header != IPPROTO_UDP {
            return None;
        }
        let (server, client) = (words64(&flow.server), words64(&flow.client));
        if ip[1] != server[0] || ip[2] != server[1] || ip[3] != client[0] || ip[4] != client[1] {
            return None;
        }
        ETH_HLEN + 40
    };
    let ports: [u16; 2] = ctx.load(udp).ok()?;
    if ports[0] != u16::from_ne_bytes(flow.server_port)
        || ports[1] != u16::from_ne_bytes(flow.client_port)
    {
        return None;
    }
    let stamp: u64 = ctx.load(udp + 8 + 8).ok()?;
    Some(u64::from_le(stamp))
}

/// The first 4 bytes of `address` as they lie in memory.
#[inline(always)]
fn word32(address: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([address[0], address[1], address[2], address[3]])
}

/// The 16 bytes of `address` as two words as they lie in memory.
#[inline(always)]
fn words64(address: &[u8; 16]) -> [u64; 2] {
    let word = |i: usize| {
        u64::from_ne_bytes([
            address[i],
            address[i + 1],
            address[i + 2],
            address[i + 3],
            address[i + 4],
            address[i + 5],
            address[i + 6],
            address[i + 7],
        ])
    };
    [word(0), word(8)]
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
