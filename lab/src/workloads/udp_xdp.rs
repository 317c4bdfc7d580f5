//! The XDP client of [`udp_echo`](super::udp_echo) ([`Generator::Xdp`](super::Generator)):
//! it offers more than a fast echo can answer on one CPU, and measures the server side's CPU
//! whole.
//!
//! 1. Both ends of the path get threaded NAPI ([`NapiThreads`]): the server interface's
//!    threads on the server's first CPU, the client interface's on the client's. All receive
//!    work then happens in those threads (none in the sender's softirq), so the server side's
//!    CPU is its echo threads plus its NAPI threads, whatever the echo is.
//! 2. A probe datagram from a connected UDP socket, captured as it leaves (`AF_PACKET`), shows
//!    the interface and both MAC addresses the kernel's route and neighbour tables chose.
//! 3. `accel::udp_gen` sends stamped copies of a frame of that flow on schedule and counts the
//!    echoes at tc ingress. The socket stays open so that no echo meets a closed port.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use accel::udp_gen::{EchoCount, Flow, UdpGen, bucket_low};
use hdrhistogram::Histogram;
use rustix::net;

use super::udp_echo::{
    DRAIN, HEADER, UdpEcho, UdpEchoResult, first_echo, probe_when_due, wait_until_due,
};
use super::{Context as _, Error, IDLE_TIMEOUT, Site, Stop, latency_histogram};
use crate::napi::{NapiThreads, thread_cpu_time};

/// Most frames sent in one go. Each send sets up a page pool for its run in the kernel, so the
/// sender sends what is due in large bursts.
const BURST: u64 = 16_384;
/// Most frames sent in one go when the server's NAPI thread may share the sender's CPU: the
/// peer's XDP ring holds 256 frames, and that thread can only empty it between sends (the
/// wake-up of a send's first frame lets it preempt the sender when the send returns).
const SHARED_CPU_BURST: u64 = 64;
/// How often the sender looks at the echo count while sending (for a dead server).
const CHECK: Duration = Duration::from_millis(100);

/// Runs the client of `config` from `client` against the echo server of `server`, whose
/// thread has id `server_thread`.
pub(super) fn run(
    server: &Site,
    client: &Site,
    config: &UdpEcho,
    server_thread: u32,
) -> Result<UdpEchoResult, Error> {
    let what = |step: &str| format!("udp_echo (xdp) to {}: {step}", config.addr);
    let server_iface = in_site(server, || iface_with_address(config.addr))
        .context(|| what("find the server's interface"))?;
    let server_napi = NapiThreads::start(
        server.netns.as_deref(),
        &server_iface,
        server.cpus.first().copied(),
    )
    .map_err(|e| Error::new(what("server interface"), io::Error::other(e)))?;
    let server_cpu = || {
        let napi = server_napi.cpu_time()?;
        Ok::<_, String>(napi + thread_cpu_time(server_thread)?)
    };
    thread::scope(|s| {
        s.spawn(|| {
            client.enter(0)?;
            let socket = UdpSocket::bind(any(config.addr)).context(|| what("bind"))?;
            socket.connect(config.addr).context(|| what("connect"))?;
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .context(|| what("socket timeout"))?;
            first_echo(&socket).context(|| what("first echo"))?;
            let route = probe(&socket, config).context(|| what("probe the route"))?;
            let _client_napi = NapiThreads::start(
                client.netns.as_deref(),
                &route.iface,
                client.cpus.first().copied(),
            )
            .map_err(|e| Error::new(what("client interface"), io::Error::other(e)))?;
            let flow = Flow {
                src_mac: route.src_mac,
                dst_mac: route.dst_mac,
                client: socket.local_addr().context(|| what("local address"))?,
                server: config.addr,
                payload: config.size.max(HEADER),
            };
            let mut generator = UdpGen::start(&route.iface, &flow)
                .map_err(|e| Error::new(what("start the generator"), io::Error::other(e)))?;
            let failed = |step: &str| {
                let step = what(step);
                move |e: String| Error::new(step, io::Error::other(e))
            };
            let cpu_before = server_cpu().map_err(failed("server CPU time"))?;
            let shared = match (client.cpus.first(), server.cpus.first()) {
                (Some(c), Some(s)) => c == s,
                _ => true,
            };
            let burst = if shared { SHARED_CPU_BURST } else { BURST };
            let (sent, elapsed) = pace(&mut generator, config, burst)?;
            let echoes = drain(&generator, sent)?;
            let cpu = server_cpu().map_err(failed("server CPU time"))? - cpu_before;
            drop(socket);
            Ok(UdpEchoResult {
                sent,
                received: echoes.echoes,
                latency: histogram(&echoes),
                elapsed,
                server_cpu: Some(cpu),
            })
        })
        .join()
        .unwrap_or_else(|_| Err(Error::new(what("client"), io::Error::other("it panicked"))))
    })
}

/// Sends on schedule, at most `max_burst` frames at a time, until `config.stop`; returns the
/// frames sent and for how long.
fn pace(
    generator: &mut UdpGen,
    config: &UdpEcho,
    max_burst: u64,
) -> Result<(u64, Duration), Error> {
    let pps = config.pps.max(1);
    let start = Instant::now();
    let mut count = 0u64;
    let (mut checked, mut seen, mut last_echo) = (start, 0, start);
    while !config.stop.reached(start, count) {
        let due = (start.elapsed().as_nanos() * u128::from(pps) / 1_000_000_000) as u64 + 1;
        let mut burst = due.saturating_sub(count).min(max_burst);
        if let Stop::Count(limit) = config.stop {
            burst = burst.min(limit - count);
        }
        if burst == 0 {
            wait_until_due(start, count, pps);
            continue;
        }
        generator
            .send(burst as u32)
            .map_err(|e| Error::new("udp_echo (xdp): send".to_owned(), io::Error::other(e)))?;
        count += burst;
        if checked.elapsed() >= CHECK {
            checked = Instant::now();
            let echoes = count_echoes(generator)?.echoes;
            if echoes != seen {
                (seen, last_echo) = (echoes, checked);
            } else if last_echo.elapsed() > IDLE_TIMEOUT {
                return Err(Error::new(
                    "udp_echo: no echo".to_owned(),
                    io::Error::from(io::ErrorKind::TimedOut),
                ));
            }
        }
    }
    Ok((count, start.elapsed()))
}

/// Waits until every echo of `sent` frames came back or [`DRAIN`] passed.
fn drain(generator: &UdpGen, sent: u64) -> Result<EchoCount, Error> {
    let done = Instant::now();
    loop {
        let echoes = count_echoes(generator)?;
        if echoes.echoes >= sent || done.elapsed() >= DRAIN {
            return Ok(echoes);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn count_echoes(generator: &UdpGen) -> Result<EchoCount, Error> {
    generator.echoes().map_err(|e| {
        Error::new(
            "udp_echo (xdp): count echoes".to_owned(),
            io::Error::other(e),
        )
    })
}

/// The counter's latency buckets as a histogram: each bucket's echoes at its middle (so
/// within 1/32 of the true value).
fn histogram(echoes: &EchoCount) -> Histogram<u64> {
    let mut histogram = latency_histogram();
    for (i, &n) in echoes.latency.iter().enumerate() {
        if n > 0 {
            let (low, high) = (bucket_low(i), bucket_low(i + 1).max(bucket_low(i)));
            let middle = low + (high - low) / 2;
            histogram.saturating_record_n(middle.clamp(1, histogram.high()), n);
        }
    }
    histogram
}

/// Runs `f` on a thread in `site`'s namespace.
fn in_site<T: Send>(site: &Site, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            site.enter(0).map_err(|e| io::Error::other(e.to_string()))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("a thread panicked")))
    })
}

/// The unspecified address of `addr`'s family.
fn any(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    }
}

/// The interface that has `addr`'s address, in the calling thread's namespace.
fn iface_with_address(addr: SocketAddr) -> io::Result<String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list this function frees below.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() && found.is_none() {
        // SAFETY: a node of the list getifaddrs made, alive until freeifaddrs.
        let e = unsafe { &*entry };
        // SAFETY: ifa_addr, when set, points at a sockaddr whose family says its size.
        if let Some(ip) = unsafe { e.ifa_addr.as_ref() }.and_then(|a| unsafe { ip_of(a) })
            && ip == addr.ip()
        {
            // SAFETY: ifa_name is a NUL-terminated string of the list.
            let name = unsafe { std::ffi::CStr::from_ptr(e.ifa_name) };
            found = Some(name.to_string_lossy().into_owned());
        }
        entry = e.ifa_next;
    }
    // SAFETY: the list getifaddrs made, freed once; nothing refers to it any more.
    unsafe { libc::freeifaddrs(list) };
    found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface has the address {}", addr.ip()),
        )
    })
}

/// The IP address in a `sockaddr`.
///
/// # Safety
/// `addr` must be as long as its family says.
unsafe fn ip_of(addr: &libc::sockaddr) -> Option<std::net::IpAddr> {
    match i32::from(addr.sa_family) {
        libc::AF_INET => {
            // SAFETY: an AF_INET sockaddr is a sockaddr_in (the caller's promise).
            let v4 = unsafe { &*(addr as *const libc::sockaddr).cast::<libc::sockaddr_in>() };
            Some(std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6 (the caller's promise).
            let v6 = unsafe { &*(addr as *const libc::sockaddr).cast::<libc::sockaddr_in6>() };
            Some(std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr).into())
        }
        _ => None,
    }
}

/// Where a probe datagram left: the interface and the Ethernet addresses.
struct Route {
    iface: String,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

/// Sends 1-byte probes from `socket` (connected) until one is seen leaving, for up to
/// [`IDLE_TIMEOUT`] (their echoes are too short for the counter to take).
fn probe(socket: &UdpSocket, config: &UdpEcho) -> io::Result<Route> {
    let capture = packet_socket()?;
    let local = socket.local_addr()?;
    let deadline = Instant::now() + IDLE_TIMEOUT;
    let mut frame = vec![0u8; 2048];
    let mut next_probe = Instant::now();
    while Instant::now() < deadline {
        probe_when_due(socket, &mut next_probe)?;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: receives into `frame` and `from`, both alive and as long as given.
        let n = unsafe {
            libc::recvfrom(
                capture.as_raw_fd(),
                frame.as_mut_ptr().cast(),
                frame.len(),
                0,
                (&raw mut from).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(e);
        }
        let frame = &frame[..n as usize];
        if from.sll_pkttype != libc::PACKET_OUTGOING || !is_probe(frame, local, config.addr) {
            continue;
        }
        let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: `name` has IF_NAMESIZE bytes, as if_indextoname needs.
        if unsafe { libc::if_indextoname(from.sll_ifindex as u32, name.as_mut_ptr()) }.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: if_indextoname wrote a NUL-terminated name.
        let iface = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        return Ok(Route {
            iface: iface.to_string_lossy().into_owned(),
            dst_mac: frame[0..6].try_into().map_err(io::Error::other)?,
            src_mac: frame[6..12].try_into().map_err(io::Error::other)?,
        });
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no probe to {} was seen leaving", config.addr),
    ))
}

/// Whether `frame` is a UDP datagram (Ethernet, IPv4 or IPv6) from `local` to `remote`.
fn is_probe(frame: &[u8], local: SocketAddr, remote: SocketAddr) -> bool {
    let Ok(packet) = etherparse::SlicedPacket::from_ethernet(frame) else {
        return false;
    };
    let addresses = match packet.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => (
            std::net::IpAddr::from(ip.header().source_addr()),
            std::net::IpAddr::from(ip.header().destination_addr()),
        ),
        Some(etherparse::NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => return false,
    };
    let Some(etherparse::TransportSlice::Udp(udp)) = packet.transport else {
        return false;
    };
    addresses == (local.ip(), remote.ip())
        && udp.source_port() == local.port()
        && udp.destination_port() == remote.port()
}

/// An `AF_PACKET` socket seeing every frame of the calling thread's namespace, with a short
/// read timeout.
fn packet_socket() -> io::Result<OwnedFd> {
    let socket = net::socket_with(
        net::AddressFamily::PACKET,
        net::SocketType::RAW,
        net::SocketFlags::CLOEXEC,
        Some(net::eth::ALL),
    )?;
    net::sockopt::set_socket_timeout(
        &socket,
        net::sockopt::Timeout::Recv,
        Some(Duration::from_millis(50)),
    )?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_recognised_by_addresses_and_ports() {
        let local: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.2:7777".parse().unwrap();
        let frame = |src: [u8; 4], sport: u16| {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4(src, [10, 0, 0, 2], 64)
                .udp(sport, 7777)
                .write(&mut f, &[0; 16])
                .unwrap();
            f
        };
        assert!(is_probe(&frame([10, 0, 0, 1], 40000), local, remote));
        assert!(!is_probe(&frame([10, 0, 0, 9], 40000), local, remote));
        assert!(!is_probe(&frame([10, 0, 0, 1], 40001), local, remote));
        assert!(!is_probe(&[0u8; 10], local, remote));
    }

    #[test]
    fn histograms_put_each_bucket_at_its_middle() {
        let mut latency = vec![0; accel::udp_gen::BUCKETS];
        let i = accel::udp_gen::latency_bucket(50_000);
        latency[i] = 3;
        let h = histogram(&EchoCount { echoes: 3, latency });
        assert_eq!(h.len(), 3);
        let p50 = h.value_at_quantile(0.5);
        assert!(p50.abs_diff(50_000) * 32 <= 50_000, "{p50}");
    }
}
