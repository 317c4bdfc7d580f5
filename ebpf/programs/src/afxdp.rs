//! AF_XDP fast path at XDP: UDP datagrams (IPv4, or IPv6 without extension headers) to a
//! chosen destination port go to the AF_XDP socket of their receive queue; everything else
//! passes to the kernel stack (map layout: `ebpf_common::afxdp`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, XskMap},
    programs::XdpContext,
};
use ebpf_common::afxdp::{Counters, MAX_QUEUES, PORTS};
use ebpf_programs::{
    parse::{ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, IPV6_HLEN, Ipv4, Ipv6, ethernet, load},
    with_percpu_slot,
};

#[map]
static AX_PORTS: Array<u8> = Array::with_max_entries(PORTS, 0);

#[map]
static AX_SOCKETS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map]
static AX_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Redirects chosen UDP ports to the queue's AF_XDP socket; passes the rest.
#[xdp]
pub fn afxdp(ctx: XdpContext) -> u32 {
    with_percpu_slot(&AX_COUNTERS, |c| c.packets += 1);
    let chosen = udp_dport(&ctx).is_some_and(|port| {
        AX_PORTS
            .get(u32::from(port))
            .is_some_and(|chosen| *chosen != 0)
    });
    if !chosen {
        with_percpu_slot(&AX_COUNTERS, |c| c.passed += 1);
        return xdp_action::XDP_PASS;
    }
    // Without a socket at this queue's index the helper returns the flags' action: XDP_PASS.
    match AX_SOCKETS.redirect(ctx.rx_queue_index(), u64::from(xdp_action::XDP_PASS)) {
        Ok(xdp_action::XDP_REDIRECT) => {
            with_percpu_slot(&AX_COUNTERS, |c| c.redirected += 1);
            xdp_action::XDP_REDIRECT
        }
        _ => {
            with_percpu_slot(&AX_COUNTERS, |c| c.no_socket += 1);
            xdp_action::XDP_PASS
        }
    }
}

/// The UDP destination port of an unfragmented UDP datagram, IPv4 or IPv6 (no VLAN tags, no
/// IPv6 extension headers).
#[inline(always)]
fn udp_dport(ctx: &XdpContext) -> Option<u16> {
    let (ethertype, ip) = ethernet(ctx, 0)?;
    let l4 = match ethertype {
        ETH_P_IPV4 => {
            let header = Ipv4::at(ctx, ip)?;
            if !header.is_valid() || header.is_fragment() || header.protocol() != IPPROTO_UDP {
                return None;
            }
            ip + header.header_len()
        }
        ETH_P_IPV6 => {
            let header = Ipv6::at(ctx, ip)?;
            if !header.is_valid() || header.next_header() != IPPROTO_UDP {
                return None;
            }
            ip + IPV6_HLEN
        }
        _ => return None,
    };
    let udp = load::<[u8; 8]>(ctx, l4)?;
    Some(u16::from_be_bytes([udp[2], udp[3]]))
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
