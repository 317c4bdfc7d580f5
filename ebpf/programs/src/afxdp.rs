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
use ebpf_programs::with_percpu_slot;

#[map]
static AX_PORTS: Array<u8> = Array::with_max_entries(PORTS, 0);

#[map]
static AX_SOCKETS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map]
static AX_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
/// Offsets are masked with this before packet access: it bounds them for the verifier and is
/// above any linear XDP buffer, so no real offset changes.
const OFFSET_MASK: usize = 0x3fff;

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

/// Reads a `T` at `off` bytes into the frame, if it lies within it.
#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let off = off & OFFSET_MASK;
    let at = ctx.data() + off;
    if at + size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: the bytes lie inside the frame, checked just above.
    Some(unsafe { (at as *const T).read_unaligned() })
}

/// The UDP destination port of an unfragmented UDP datagram, IPv4 or IPv6.
#[inline(always)]
fn udp_dport(ctx: &XdpContext) -> Option<u16> {
    let ethertype = u16::from_be_bytes(load::<[u8; 2]>(ctx, 12)?);
    let l4 = match ethertype {
        ETH_P_IPV4 => {
            let ip = load::<[u8; 20]>(ctx, ETH_HLEN)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            if ip[0] >> 4 != 4 || ihl < 20 || fragment || ip[9] != IPPROTO_UDP {
                return None;
            }
            ETH_HLEN + ihl
        }
        ETH_P_IPV6 => {
            let ip = load::<[u8; 8]>(ctx, ETH_HLEN)?;
            if ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
                return None;
            }
            ETH_HLEN + 40
        }
        _ => return None,
    };
    let udp = load::<[u8; 8]>(ctx, l4)?;
    Some(u16::from_be_bytes([udp[2], udp[3]]))
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
