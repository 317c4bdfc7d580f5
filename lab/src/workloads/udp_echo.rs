//! UDP datagrams at an offered rate, echoed back by the server.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{
    Context, Error, IDLE_TIMEOUT, Site, Stop, join, latency_histogram, record, stopped_early,
};

/// How often blocked receivers look at their stop flags.
const POLL: Duration = Duration::from_millis(20);
/// How long the client waits for late echoes once the sender is done.
pub(super) const DRAIN: Duration = Duration::from_millis(500);
/// Most datagrams sent in one burst when the sender falls behind its schedule.
const BURST: u64 = 256;
/// Bytes of a datagram that carry its sequence number and send time.
pub(super) const HEADER: usize = 16;

/// An echo workload: the client sends `size`-byte datagrams at `pps` per second; the server
/// sends each back (batched: `recvmmsg` / `sendmmsg`).
#[derive(Clone, Debug)]
pub struct UdpEcho {
    /// How the client sends and receives.
    pub generator: Generator,
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// Offered datagrams per second (at least 1).
    pub pps: u64,
    /// Payload size in bytes (at least 16: a sequence number and a send time).
    pub size: usize,
    /// When the sender stops ([`Stop::Count`] counts datagrams).
    pub stop: Stop,
}

/// How the client of a [`udp_echo`] run sends datagrams and receives the echoes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Generator {
    /// A connected UDP socket: one thread sends, another receives. One CPU of it offers
    /// less than a fast echo answers.
    #[default]
    Socket,
    /// From XDP (`accel::udp_gen`): stamped copies of one frame sent with no socket or skb,
    /// echoes counted and dropped at tc ingress; both ends of the path run their receive
    /// processing in pinned NAPI threads, so the server side's CPU is measured whole
    /// ([`UdpEchoResult::server_cpu`]). Linux 6.9+.
    Xdp,
}

/// What a [`udp_echo`] run measured at the client.
#[derive(Clone, Debug)]
pub struct UdpEchoResult {
    /// Datagrams sent.
    pub sent: u64,
    /// Echoes received.
    pub received: u64,
    /// Round-trip latency of every echo, in nanoseconds.
    pub latency: Histogram<u64>,
    /// How long the sender sent.
    pub elapsed: Duration,
    /// CPU time spent on the server side while the sender sent: the echo server's thread and
    /// the server interface's NAPI threads, which receive the datagrams (with
    /// [`Generator::Xdp`]; a socket client's datagrams are received in its own softirq, so
    /// this is `None` there).
    pub server_cpu: Option<Duration>,
}

impl UdpEchoResult {
    /// Datagrams sent whose echo never came back (duplicates make up for losses).
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    /// Echoes received per second of sending.
    pub fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Runs `config` with its echo server at `server` and its client at `client`.
pub fn udp_echo(server: &Site, client: &Site, config: &UdpEcho) -> Result<UdpEchoResult, Error> {
    let serving_stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let (bound, ready) = mpsc::channel();
        let stop = &serving_stop;
        let serving = scope.spawn(move || echo(server, config, stop, &bound));
        let Ok(server_thread) = ready.recv() else {
            return Err(stopped_early(
                join(serving, "udp_echo server"),
                "udp_echo server",
            ));
        };
        let result = match config.generator {
            Generator::Socket => run_client(client, config),
            Generator::Xdp => super::udp_xdp::run(server, client, config, server_thread),
        };
        serving_stop.store(true, Ordering::Relaxed);
        let served = join(serving, "udp_echo server");
        let result = result?;
        served.map(|()| result)
    })
}

/// Datagrams the server moves per `recvmmsg` / `sendmmsg` call.
const ECHO_BATCH: usize = 64;

/// Binds, reports its thread id on `bound`, then echoes until `stop`: batched, up to [`ECHO_BATCH`]
/// datagrams received with one `recvmmsg` (waiting for the first only) and sent back with
/// `sendmmsg`, so the kernel socket path is compared at its best.
fn echo(
    site: &Site,
    config: &UdpEcho,
    stop: &AtomicBool,
    bound: &mpsc::Sender<u32>,
) -> Result<(), Error> {
    site.enter(0)?;
    let what = || format!("udp_echo server on {}", config.addr);
    let socket = UdpSocket::bind(config.addr).context(what)?;
    socket.set_read_timeout(Some(POLL)).context(what)?;
    enlarge_buffers(&socket).context(what)?;
    // The receiver waits for exactly this message: the thread's id, by which its CPU time
    // is read.
    let _ = bound.send(rustix::thread::gettid().as_raw_nonzero().get() as u32);
    let mut batch = Batch::new(config.size.max(HEADER).max(2048));
    while !stop.load(Ordering::Relaxed) {
        let received = match batch.receive(&socket) {
            Ok(n) => n,
            Err(e) if timed_out(&e) || transient(&e) => continue,
            Err(e) => return Err(Error::new(what(), e)),
        };
        let mut sent = 0;
        while sent < received {
            match batch.send(&socket, sent..received) {
                Ok(n) => sent += n,
                // The first datagram of the rest is lost; go on with the others.
                Err(e) if transient(&e) => sent += 1,
                Err(e) => return Err(Error::new(what(), e)),
            }
        }
    }
    Ok(())
}

/// Buffers, peer addresses and message headers for [`ECHO_BATCH`] datagrams.
struct Batch {
    _buffers: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    slot: usize,
}

impl Batch {
    fn new(slot: usize) -> Self {
        let mut buffers = vec![0u8; slot * ECHO_BATCH];
        // SAFETY: plain C structs; all-zero is a valid value of each.
        let zeroed_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut names = vec![zeroed_name; ECHO_BATCH];
        let mut iovecs: Vec<libc::iovec> = buffers
            .chunks_exact_mut(slot)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: slot,
            })
            .collect();
        let headers = iovecs
            .iter_mut()
            .zip(names.iter_mut())
            .map(|(iov, name)| {
                // SAFETY: plain C struct; all-zero is a valid value.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
                h
            })
            .collect();
        // The vectors are never resized: the pointers above stay valid.
        Self {
            _buffers: buffers,
            names,
            iovecs,
            headers,
            slot,
        }
    }

    /// Receives up to [`ECHO_BATCH`] datagrams, waiting (up to the socket's timeout) for the
    /// first only.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        for (h, iov) in self.headers.iter_mut().zip(&mut self.iovecs) {
            iov.iov_len = self.slot;
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        debug_assert_eq!(self.names.len(), ECHO_BATCH);
        // SAFETY: every header points at a live buffer, iovec and address of this batch.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                ECHO_BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (h, iov) in self.headers.iter().zip(&mut self.iovecs).take(n) {
            iov.iov_len = h.msg_len as usize;
        }
        Ok(n)
    }

    /// Sends the received datagrams `range` back to their senders; returns how many went.
    fn send(&mut self, socket: &UdpSocket, range: std::ops::Range<usize>) -> io::Result<usize> {
        let headers = &mut self.headers[range];
        // SAFETY: the headers point at live buffers, iovecs and addresses of this batch.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                headers.len() as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Socket buffer size of both ends: enough to ride out a descheduled thread at the offered
/// rate, so losses measure the path and not the generator.
const SOCKET_BUFFER: usize = 8 << 20;

/// Grows both socket buffers to [`SOCKET_BUFFER`], past `net.core.{r,w}mem_max` where the
/// process may (root, as in the lab).
fn enlarge_buffers(socket: &UdpSocket) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_recv_buffer_size_force(socket, SOCKET_BUFFER)
        .or_else(|_| sockopt::set_socket_recv_buffer_size(socket, SOCKET_BUFFER))?;
    sockopt::set_socket_send_buffer_size_force(socket, SOCKET_BUFFER)
        .or_else(|_| sockopt::set_socket_send_buffer_size(socket, SOCKET_BUFFER))?;
    Ok(())
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Errors that lose one datagram but not the run: an ICMP "port unreachable" reported on a
/// later call, a full device queue, or no route while a link is down (a scenario event).
pub(super) fn transient(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ConnectionRefused
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOBUFS | libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN)
        )
}

/// The client: a paced sender and a receiver on one connected socket.
fn run_client(site: &Site, config: &UdpEcho) -> Result<UdpEchoResult, Error> {
    let what = || format!("udp_echo client to {}", config.addr);
    let socket = thread::scope(|s| {
        s.spawn(|| {
            site.enter(0)?;
            let any: SocketAddr = if config.addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let socket = UdpSocket::bind(any).context(what)?;
            socket.connect(config.addr).context(what)?;
            socket.set_read_timeout(Some(POLL)).context(what)?;
            enlarge_buffers(&socket).context(what)?;
            first_echo(&socket).context(what)?;
            Ok(socket)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::new(what(), io::Error::other("it panicked"))))
    })?;
    let receiving = socket.try_clone().context(what)?;
    let sent = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let start = Instant::now();
    thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            site.pin(1)?;
            receive(&receiving, start, &sent, &done)
        });
        let sender = scope.spawn(|| {
            site.pin(0)?;
            let result = pace(&socket, config, start, &sent);
            done.store(true, Ordering::Release);
            result
        });
        let elapsed = join(sender, "udp_echo sender");
        let received = join(receiver, "udp_echo receiver");
        let elapsed = elapsed?;
        let (received, latency) = received?;
        Ok(UdpEchoResult {
            sent: sent.load(Ordering::Acquire),
            received,
            latency,
            elapsed,
            server_cpu: None,
        })
    })
}

/// Waits until datagram `count` of a `pps` schedule that began at `start` is nearly due: sleeps
/// when that is more than 60 µs away, else spins once (the caller loops).
pub(super) fn wait_until_due(start: Instant, count: u64, pps: u64) {
    let next = Duration::from_nanos(
        u64::try_from(u128::from(count) * 1_000_000_000 / u128::from(pps)).unwrap_or(u64::MAX),
    );
    let wait = next.saturating_sub(start.elapsed());
    if wait > Duration::from_micros(60) {
        thread::sleep(wait - Duration::from_micros(50));
    } else {
        std::hint::spin_loop();
    }
}

/// Sends a one-byte probe when `next` has come, and sets `next` 200 ms on.
pub(super) fn probe_when_due(socket: &UdpSocket, next: &mut Instant) -> io::Result<()> {
    if Instant::now() >= *next {
        match socket.send(&[0]) {
            Ok(_) => {}
            Err(e) if transient(&e) => {}
            Err(e) => return Err(e),
        }
        *next = Instant::now() + Duration::from_millis(200);
    }
    Ok(())
}

/// Sends 1-byte probes from `socket` (connected, with a read timeout) until one is echoed, for
/// up to [`IDLE_TIMEOUT`]: address resolution and the path are ready before anything is
/// counted. Probes are shorter than [`HEADER`], so a late probe echo is never taken for an
/// echo (neither by [`receive`] nor by the XDP client's counter).
pub(super) fn first_echo(socket: &UdpSocket) -> io::Result<()> {
    let deadline = Instant::now() + IDLE_TIMEOUT;
    let mut next_probe = Instant::now();
    let mut buffer = [0u8; HEADER];
    while Instant::now() < deadline {
        probe_when_due(socket, &mut next_probe)?;
        match socket.recv(&mut buffer) {
            Ok(_) => return Ok(()),
            Err(e) if timed_out(&e) || transient(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no echo of a probe datagram",
    ))
}

/// Sends datagrams on schedule until `config.stop`; returns how long it sent.
fn pace(
    socket: &UdpSocket,
    config: &UdpEcho,
    start: Instant,
    sent: &AtomicU64,
) -> Result<Duration, Error> {
    let what = || format!("udp_echo: send to {}", config.addr);
    let mut datagram = vec![0u8; config.size.max(HEADER)];
    let pps = config.pps.max(1);
    let mut count = 0u64;
    while !config.stop.reached(start, count) {
        let now = start.elapsed();
        let due = (now.as_nanos() * u128::from(pps) / 1_000_000_000) as u64 + 1;
        if due <= count {
            wait_until_due(start, count, pps);
            continue;
        }
        for _ in 0..(due - count).min(BURST) {
            if let Stop::Count(limit) = config.stop
                && count >= limit
            {
                break;
            }
            datagram[..8].copy_from_slice(&count.to_le_bytes());
            let stamp = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            datagram[8..HEADER].copy_from_slice(&stamp.to_le_bytes());
            match socket.send(&datagram) {
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                Err(e) => return Err(Error::new(what(), e)),
            }
            count += 1;
            sent.store(count, Ordering::Release);
        }
    }
    Ok(start.elapsed())
}

/// Receives echoes until the sender is done and every echo came back or [`DRAIN`] passed.
fn receive(
    socket: &UdpSocket,
    start: Instant,
    sent: &AtomicU64,
    done: &AtomicBool,
) -> Result<(u64, Histogram<u64>), Error> {
    let mut latency = latency_histogram();
    let mut received = 0u64;
    let mut buffer = vec![0u8; 65_536];
    let mut done_at: Option<Instant> = None;
    let mut last_echo = Instant::now();
    loop {
        if done_at.is_none() && done.load(Ordering::Acquire) {
            done_at = Some(Instant::now());
        }
        if let Some(at) = done_at
            && (received >= sent.load(Ordering::Acquire) || at.elapsed() >= DRAIN)
        {
            return Ok((received, latency));
        }
        match socket.recv(&mut buffer) {
            Ok(n) if n >= HEADER => {
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&buffer[8..HEADER]);
                let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let rtt = now.saturating_sub(u64::from_le_bytes(stamp));
                record(&mut latency, Duration::from_nanos(rtt));
                received += 1;
                last_echo = Instant::now();
            }
            Ok(_) => {}
            Err(e) if timed_out(&e) || transient(&e) => {
                if done_at.is_none() && last_echo.elapsed() > IDLE_TIMEOUT {
                    return Err(Error::new(
                        "udp_echo: no echo".to_owned(),
                        io::Error::from(io::ErrorKind::TimedOut),
                    ));
                }
            }
            Err(e) => return Err(Error::new("udp_echo: receive".to_owned(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_down_errors_lose_a_datagram_not_the_run() {
        for errno in [
            libc::ENOBUFS,
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::ENETDOWN,
        ] {
            assert!(
                transient(&io::Error::from_raw_os_error(errno)),
                "errno {errno}"
            );
        }
        assert!(transient(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
        assert!(!transient(&io::Error::from_raw_os_error(libc::EACCES)));
        assert!(!transient(&io::Error::from_raw_os_error(libc::EBADF)));
    }
}
