//! The frame rewrite of the fast path: echo (swap MAC, IP addresses and ports) or forward
//! (rewrite the destination to a next hop), in place, for UDP over IPv4 or IPv6.
//!
//! Checksums stay correct: header changes are folded into the IPv4 header and UDP checksums
//! incrementally (RFC 1624, `HC' = ~(~HC + ~m + m')`). A UDP checksum the sender left to
//! offload (a same-host sender over veth writes only the pseudo-header sum, as for
//! `CHECKSUM_PARTIAL`) is completed; any other UDP checksum that does not verify, or a bad IPv4
//! header checksum, drops the frame, as the kernel stack would.

use std::net::{Ipv4Addr, Ipv6Addr};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;
/// TTL / hop limit of echoes, as a fresh kernel datagram would have.
pub const ECHO_TTL: u8 = 64;

/// What to do with each datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Send it back to its sender.
    Echo,
    /// Send it on to a next hop.
    Forward(NextHop),
}

/// Where forwarded datagrams go: the destination MAC and IP address are rewritten to these,
/// the source MAC to the sending interface's, and the TTL / hop limit is decremented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The next hop's MAC address.
    pub mac: [u8; 6],
    /// The forwarding interface's own MAC address (the new source).
    pub src_mac: [u8; 6],
    /// The new IPv4 destination (IPv4 datagrams are dropped without one).
    pub v4: Option<Ipv4Addr>,
    /// The new IPv6 destination (IPv6 datagrams are dropped without one).
    pub v6: Option<Ipv6Addr>,
}

/// Why a frame was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Not a whole, well-formed UDP datagram over IPv4 or IPv6 without extension headers.
    Malformed,
    /// The IPv4 header checksum or the UDP checksum does not verify.
    BadChecksum,
    /// Forwarding: the TTL / hop limit would reach 0.
    TtlExpired,
    /// Forwarding: no next hop address of the datagram's family.
    NoRoute,
}

/// Rewrites the frame in place; returns the length to send (the Ethernet header and the IP
/// packet, without trailing padding).
pub fn rewrite(frame: &mut [u8], how: &Rewrite) -> Result<usize, Drop> {
    if frame.len() < ETH_HLEN {
        return Err(Drop::Malformed);
    }
    let len = match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IPV4 => ipv4(frame, how)?,
        ETH_P_IPV6 => ipv6(frame, how)?,
        _ => return Err(Drop::Malformed),
    };
    match how {
        Rewrite::Echo => {
            let (dst, src) = frame.split_at_mut(6);
            dst.swap_with_slice(&mut src[..6]);
        }
        Rewrite::Forward(hop) => {
            frame[..6].copy_from_slice(&hop.mac);
            frame[6..12].copy_from_slice(&hop.src_mac);
        }
    }
    Ok(len)
}

fn ipv4(frame: &mut [u8], how: &Rewrite) -> Result<usize, Drop> {
    let ip = &frame[ETH_HLEN..];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(Drop::Malformed);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if ihl < 20 || total < ihl + UDP_HLEN || total > ip.len() || ip[9] != IPPROTO_UDP {
        return Err(Drop::Malformed);
    }
    if be16(ip, 6) & 0x3fff != 0 {
        return Err(Drop::Malformed);
    }
    if fold(sum(&ip[..ihl])) != 0xffff {
        return Err(Drop::BadChecksum);
    }
    let udp_len = usize::from(be16(ip, ihl + 4));
    if udp_len < UDP_HLEN || udp_len > total - ihl {
        return Err(Drop::Malformed);
    }
    let ip = &mut frame[ETH_HLEN..ETH_HLEN + total];
    let (header, udp) = ip.split_at_mut(ihl);
    let udp = &mut udp[..udp_len];
    let pseudo = sum(&header[12..20]) + u64::from(IPPROTO_UDP) + udp_len as u64;
    // Checksum 0: the sender computed none (allowed over IPv4); the reply has none either.
    let has_udp_checksum = be16(udp, 6) != 0;
    if has_udp_checksum {
        complete_udp_checksum(udp, pseudo)?;
    }
    let old_ttl_word = be16(header, 8);
    match how {
        Rewrite::Echo => {
            swap_addresses(&mut header[12..20], 4);
            swap_ports(udp);
            header[8] = ECHO_TTL;
        }
        Rewrite::Forward(hop) => {
            let dst = hop.v4.ok_or(Drop::NoRoute)?;
            if header[8] <= 1 {
                return Err(Drop::TtlExpired);
            }
            header[8] -= 1;
            let old: [u8; 4] = header[16..20].try_into().expect("4 bytes");
            let new = dst.octets();
            header[16..20].copy_from_slice(&new);
            update(header, 10, &old, &new);
            if has_udp_checksum {
                update_udp(udp, &old, &new);
            }
        }
    }
    let new_ttl_word = be16(header, 8);
    update(
        header,
        10,
        &old_ttl_word.to_be_bytes(),
        &new_ttl_word.to_be_bytes(),
    );
    Ok(ETH_HLEN + total)
}

fn ipv6(frame: &mut [u8], how: &Rewrite) -> Result<usize, Drop> {
    let ip = &frame[ETH_HLEN..];
    if ip.len() < 40 || ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
        return Err(Drop::Malformed);
    }
    let payload = usize::from(be16(ip, 4));
    if payload < UDP_HLEN || 40 + payload > ip.len() {
        return Err(Drop::Malformed);
    }
    let udp_len = usize::from(be16(ip, 44));
    if udp_len < UDP_HLEN || udp_len > payload {
        return Err(Drop::Malformed);
    }
    let ip = &mut frame[ETH_HLEN..ETH_HLEN + 40 + payload];
    let (header, udp) = ip.split_at_mut(40);
    let udp = &mut udp[..udp_len];
    let pseudo = sum(&header[8..40]) + u64::from(IPPROTO_UDP) + udp_len as u64;
    // Checksum 0 is not allowed over IPv6 (the kernel drops it): only verify and complete.
    complete_udp_checksum(udp, pseudo)?;
    match how {
        Rewrite::Echo => {
            swap_addresses(&mut header[8..40], 16);
            swap_ports(udp);
            header[7] = ECHO_TTL;
        }
        Rewrite::Forward(hop) => {
            let dst = hop.v6.ok_or(Drop::NoRoute)?;
            if header[7] <= 1 {
                return Err(Drop::TtlExpired);
            }
            header[7] -= 1;
            let old: [u8; 16] = header[24..40].try_into().expect("16 bytes");
            let new = dst.octets();
            header[24..40].copy_from_slice(&new);
            update_udp(udp, &old, &new);
        }
    }
    Ok(ETH_HLEN + 40 + payload)
}

/// Makes the UDP checksum of `udp` (header and payload) valid: kept when it verifies,
/// completed when it holds only the pseudo-header sum `pseudo` (checksum offload left
/// undone), else [`Drop::BadChecksum`].
fn complete_udp_checksum(udp: &mut [u8], pseudo: u64) -> Result<(), Drop> {
    let data = sum(udp);
    if fold(pseudo + data) == 0xffff {
        return Ok(());
    }
    let check = be16(udp, 6);
    if check != fold(pseudo) {
        return Err(Drop::BadChecksum);
    }
    // One's complement subtraction of the checksum field from the data sum.
    let without = data + u64::from(!check);
    let full = match !fold(pseudo + without) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&full.to_be_bytes());
    Ok(())
}

/// Folds the change of `old` into `new` into the UDP checksum; a result of 0 is sent as
/// 0xffff (0 would mean "no checksum").
fn update_udp(udp: &mut [u8], old: &[u8], new: &[u8]) {
    update(udp, 6, old, new);
    if be16(udp, 6) == 0 {
        udp[6..8].copy_from_slice(&0xffffu16.to_be_bytes());
    }
}

/// RFC 1624 eqn. 3 over the 16-bit words of `old` → `new`, for the checksum at `at` in `bytes`.
fn update(bytes: &mut [u8], at: usize, old: &[u8], new: &[u8]) {
    let check = be16(bytes, at);
    let mut acc = u64::from(!check);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u64::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u64::from(u16::from_be_bytes([n[0], n[1]]));
    }
    let updated = !fold(acc);
    bytes[at..at + 2].copy_from_slice(&updated.to_be_bytes());
}

/// Swaps the source and destination address (`len` bytes each) of `pair` (source first).
fn swap_addresses(pair: &mut [u8], len: usize) {
    let (src, dst) = pair.split_at_mut(len);
    src.swap_with_slice(&mut dst[..len]);
}

fn swap_ports(udp: &mut [u8]) {
    let (src, dst) = udp.split_at_mut(2);
    src.swap_with_slice(&mut dst[..2]);
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// The one's complement sum of `bytes` as big-endian 16-bit words (an odd last byte padded
/// with 0), not yet folded. Sums 32-bit words: folding gives the same 16-bit sum.
pub(crate) fn sum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(4);
    let mut acc: u64 = words
        .by_ref()
        .map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_be_bytes(tail));
    acc
}

/// Folds a one's complement sum to 16 bits.
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    use super::*;

    const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const HOP_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc];

    fn v4(payload: &[u8], ttl: u8) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(A_MAC, B_MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], ttl)
            .udp(40000, 7777)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    fn v6(payload: &[u8], hops: u8) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(A_MAC, B_MAC)
            .ipv6([0xfd; 16], [0xfe; 16], hops)
            .udp(40000, 7777)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    /// Parses with etherparse and checks both checksums from scratch; returns (src, dst
    /// addresses as bytes, sport, dport, ttl, payload).
    fn check(frame: &[u8]) -> (Vec<u8>, Vec<u8>, u16, u16, u8, Vec<u8>) {
        let p = SlicedPacket::from_ethernet(frame).expect("parses");
        let Some(TransportSlice::Udp(udp)) = p.transport else {
            panic!("not UDP: {p:?}")
        };
        match p.net.expect("IP") {
            NetSlice::Ipv4(ip) => {
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header");
                let u = udp.to_header();
                if u.checksum != 0 {
                    assert_eq!(
                        u.checksum,
                        u.calc_checksum_ipv4(&h, udp.payload()).unwrap(),
                        "UDP over IPv4"
                    );
                }
                (
                    h.source.to_vec(),
                    h.destination.to_vec(),
                    u.source_port,
                    u.destination_port,
                    h.time_to_live,
                    udp.payload().to_vec(),
                )
            }
            NetSlice::Ipv6(ip) => {
                let h = ip.header().to_header();
                let u = udp.to_header();
                assert_eq!(
                    u.checksum,
                    u.calc_checksum_ipv6(&h, udp.payload()).unwrap(),
                    "UDP over IPv6"
                );
                (
                    h.source.to_vec(),
                    h.destination.to_vec(),
                    u.source_port,
                    u.destination_port,
                    h.hop_limit,
                    udp.payload().to_vec(),
                )
            }
            other => panic!("{other:?}"),
        }
    }

    fn hop() -> NextHop {
        NextHop {
            mac: HOP_MAC,
            src_mac: B_MAC,
            v4: Some(Ipv4Addr::new(192, 168, 7, 9)),
            v6: Some("fd00::77".parse().unwrap()),
        }
    }

    /// Replaces the UDP checksum with the pseudo-header sum alone, as a sender with checksum
    /// offload leaves it.
    fn offloaded(frame: &mut [u8], v6: bool) {
        let (udp, pseudo) = if v6 {
            let len = usize::from(be16(frame, 14 + 44));
            (54, sum(&frame[22..54]) + 17 + len as u64)
        } else {
            let len = usize::from(be16(frame, 14 + 24));
            (34, sum(&frame[26..34]) + 17 + len as u64)
        };
        frame[udp + 6..udp + 8].copy_from_slice(&fold(pseudo).to_be_bytes());
    }

    #[test]
    fn echo_swaps_everything_and_keeps_checksums_valid() {
        for v6_frame in [false, true] {
            let mut frame = if v6_frame {
                v6(b"hello", 3)
            } else {
                v4(b"hello", 3)
            };
            let (src, dst, ..) = check(&frame);
            let len = rewrite(&mut frame, &Rewrite::Echo).unwrap();
            assert_eq!(len, frame.len());
            // Built from A to B; the echo goes from B back to A.
            assert_eq!((&frame[..6], &frame[6..12]), (&A_MAC[..], &B_MAC[..]));
            let (s2, d2, sport, dport, ttl, payload) = check(&frame);
            assert_eq!((s2, d2), (dst, src));
            assert_eq!((sport, dport, ttl), (7777, 40000, ECHO_TTL));
            assert_eq!(payload, b"hello");
        }
    }

    #[test]
    fn forward_rewrites_the_destination_and_decrements_the_ttl() {
        let mut frame = v4(b"fwd", 9);
        rewrite(&mut frame, &Rewrite::Forward(hop())).unwrap();
        assert_eq!((&frame[..6], &frame[6..12]), (&HOP_MAC[..], &B_MAC[..]));
        let (src, dst, sport, dport, ttl, _) = check(&frame);
        assert_eq!((src, dst), (vec![10, 0, 0, 1], vec![192, 168, 7, 9]));
        assert_eq!((sport, dport, ttl), (40000, 7777, 8));

        let mut frame = v6(b"fwd", 9);
        rewrite(&mut frame, &Rewrite::Forward(hop())).unwrap();
        let (_, dst, _, _, hops, _) = check(&frame);
        assert_eq!(
            dst,
            "fd00::77".parse::<Ipv6Addr>().unwrap().octets().to_vec()
        );
        assert_eq!(hops, 8);
    }

    #[test]
    fn offloaded_checksums_are_completed_and_corrupt_ones_dropped() {
        for v6_frame in [false, true] {
            let build = |p: &[u8]| if v6_frame { v6(p, 64) } else { v4(p, 64) };
            let mut frame = build(b"partial checksum");
            offloaded(&mut frame, v6_frame);
            rewrite(&mut frame, &Rewrite::Echo).unwrap();
            check(&frame);

            let mut frame = build(b"corrupt payload");
            let last = frame.len() - 1;
            frame[last] ^= 0x40;
            assert_eq!(rewrite(&mut frame, &Rewrite::Echo), Err(Drop::BadChecksum));
        }
        let mut frame = v4(b"bad ip header", 64);
        frame[14 + 10] ^= 1;
        assert_eq!(rewrite(&mut frame, &Rewrite::Echo), Err(Drop::BadChecksum));
    }

    #[test]
    fn ipv4_without_udp_checksum_stays_without() {
        let mut frame = v4(b"no checksum", 64);
        frame[34 + 6..34 + 8].fill(0);
        rewrite(&mut frame, &Rewrite::Forward(hop())).unwrap();
        assert_eq!(be16(&frame, 34 + 6), 0);
        check(&frame);
    }

    #[test]
    fn what_cannot_be_sent_is_dropped_with_its_reason() {
        let mut frame = v4(b"x", 1);
        assert_eq!(
            rewrite(&mut frame, &Rewrite::Forward(hop())),
            Err(Drop::TtlExpired)
        );
        let mut frame = v6(b"x", 64);
        let no_v6 = NextHop { v6: None, ..hop() };
        assert_eq!(
            rewrite(&mut frame, &Rewrite::Forward(no_v6)),
            Err(Drop::NoRoute)
        );
        let full = v4(b"truncated", 64);
        for cut in [0, 13, 20, 33, 40] {
            let mut frame = full[..cut].to_vec();
            assert_eq!(
                rewrite(&mut frame, &Rewrite::Echo),
                Err(Drop::Malformed),
                "{cut}"
            );
        }
        let mut frag = v4(b"fragment", 64);
        frag[14 + 6] = 0x20; // more fragments
        assert_eq!(rewrite(&mut frag, &Rewrite::Echo), Err(Drop::Malformed));
    }

    #[test]
    fn trailing_padding_is_not_sent() {
        let mut frame = v4(b"ab", 64);
        let len = frame.len();
        frame.resize(60, 0);
        assert_eq!(rewrite(&mut frame, &Rewrite::Echo), Ok(len));
    }

    proptest! {
        #[test]
        fn any_payload_echoes_and_forwards_with_valid_checksums(
            payload in proptest::collection::vec(any::<u8>(), 0..1473),
            v6_frame: bool,
            partial: bool,
            forward: bool,
            ttl in 2u8..=255,
        ) {
            let mut frame = if v6_frame { v6(&payload, ttl) } else { v4(&payload, ttl) };
            if partial {
                offloaded(&mut frame, v6_frame);
            }
            let how = if forward { Rewrite::Forward(hop()) } else { Rewrite::Echo };
            let len = rewrite(&mut frame, &how).unwrap();
            prop_assert_eq!(len, frame.len());
            let (.., got_ttl, got) = check(&frame);
            prop_assert_eq!(got, payload);
            prop_assert_eq!(got_ttl, if forward { ttl - 1 } else { ECHO_TTL });
        }
    }
}
