//! Load generators: [`tcp_rr`], [`tcp_stream`], [`udp_echo`], and [`http`] against a deployed
//! DisGraFS server; [`remote`]: the server sides of `tcp_rr` and `tcp_stream` in another
//! process (a VM guest).
//!
//! Each runs its server and client sides on threads of this process: every thread first enters
//! its side's network namespace ([`Site::netns`], with `setns`) and pins itself to one of its
//! side's CPUs ([`Site::cpus`], with `sched_setaffinity`, round robin over connections). They
//! use blocking sockets, one thread per connection, so a generator adds no event loop of its
//! own to what is measured. Every run is bounded: it stops after a duration or a count
//! ([`Stop`]), all its threads are joined before it returns, and a side that stops answering
//! for [`IDLE_TIMEOUT`] ends the run with an error instead of hanging it.

mod http;
pub mod remote;
mod tcp_rr;
mod tcp_stream;
mod udp_echo;
mod udp_xdp;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use std::{fmt, io};

use hdrhistogram::Histogram;
use rustix::thread::{CpuSet, LinkNameSpaceType, move_into_link_name_space, sched_setaffinity};

pub use http::{Http, HttpOp, HttpResult, http};
pub use tcp_rr::{TcpRr, TcpRrResult, tcp_rr, tcp_rr_client, tcp_rr_server};
pub use tcp_stream::{
    TcpStream, TcpStreamResult, tcp_stream, tcp_stream_client, tcp_stream_server,
};
pub use udp_echo::{Generator, UdpEcho, UdpEchoResult, udp_echo};

/// How long a side waits for its peer before giving up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Highest latency a histogram holds: 100 s, in nanoseconds (larger values are clamped).
const MAX_LATENCY_NS: u64 = 100_000_000_000;

/// Where one side of a workload runs.
#[derive(Clone, Debug, Default)]
pub struct Site {
    /// The network namespace to enter (a file such as `/run/netns/NAME`); `None`: the caller's.
    pub netns: Option<PathBuf>,
    /// CPUs to pin threads to, round robin; empty: not pinned.
    pub cpus: Vec<usize>,
}

impl Site {
    /// Moves the calling thread into this site's namespace and onto CPU `cpus[index % len]`.
    fn enter(&self, index: usize) -> Result<(), Error> {
        if let Some(path) = &self.netns {
            let file = File::open(path).context(|| format!("open {}", path.display()))?;
            move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                .map_err(io::Error::from)
                .context(|| format!("enter network namespace {}", path.display()))?;
        }
        self.pin(index)
    }

    /// Pins the calling thread onto CPU `cpus[index % len]`, if any CPUs are given.
    fn pin(&self, index: usize) -> Result<(), Error> {
        let Some(&cpu) = self.cpus.get(index % self.cpus.len().max(1)) else {
            return Ok(());
        };
        if cpu >= CpuSet::MAX_CPU {
            return Err(Error::new(
                format!("pin a thread to CPU {cpu}"),
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        let mut set = CpuSet::new();
        set.set(cpu);
        sched_setaffinity(None, &set)
            .map_err(io::Error::from)
            .context(|| format!("pin a thread to CPU {cpu}"))
    }
}

/// When a workload stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this long (from the moment every connection is established).
    After(Duration),
    /// After this many round trips (tcp_rr), bytes (tcp_stream) or datagrams (udp_echo) per
    /// connection.
    Count(u64),
}

impl Stop {
    /// Whether a side that started at `start` and has done `done` units is finished.
    fn reached(self, start: Instant, done: u64) -> bool {
        match self {
            Stop::After(duration) => start.elapsed() >= duration,
            Stop::Count(count) => done >= count,
        }
    }
}

/// Why a workload failed: what it was doing, and the system's error.
#[derive(Debug)]
pub struct Error {
    context: String,
    source: io::Error,
}

impl Error {
    fn new(context: String, source: io::Error) -> Self {
        Self { context, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Adds what was being done to an I/O error.
trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::new(what(), e))
    }
}

/// A latency histogram in nanoseconds, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("1 ns to 100 s at 3 digits is valid")
}

/// Records `latency` into `histogram`, clamped to its range.
fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
}

/// Joins a scoped thread's result; a panic becomes an error.
fn join<T>(
    handle: std::thread::ScopedJoinHandle<'_, Result<T, Error>>,
    what: &str,
) -> Result<T, Error> {
    handle.join().unwrap_or_else(|_| {
        Err(Error::new(
            format!("{what} thread"),
            io::Error::other("it panicked"),
        ))
    })
}

/// Reads what is there from `stream` into `buf`, like [`io::Read::read`], retrying a read
/// interrupted by a signal or failing with EAGAIN before the peer was silent for `idle`.
///
/// With a read timeout set, EAGAIN usually means the timeout passed. But a blocking read of
/// a socket whose peer redirects into it with sk_msg (`accel::sock_redirect`) also returns
/// EAGAIN early: the kernel's `tcp_bpf_recvmsg` gives up after one wake-up that brought no
/// redirected data, and other wake-ups share the socket's wait queue.
fn read_some(stream: &mut impl io::Read, buf: &mut [u8], idle: Duration) -> io::Result<usize> {
    let since = Instant::now();
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && since.elapsed() < idle => {}
            other => return other,
        }
    }
}

/// Fills `buf` from `stream` like [`io::Read::read_exact`], with [`read_some`]'s retries.
fn read_full(stream: &mut impl io::Read, buf: &mut [u8], idle: Duration) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_some(stream, &mut buf[filled..], idle)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    Ok(())
}

/// Connects to `addr`, retrying for up to [`IDLE_TIMEOUT`] while nothing listens there yet
/// (a server started elsewhere, e.g. in a VM guest, may still be starting).
fn connect(addr: std::net::SocketAddr) -> io::Result<std::net::TcpStream> {
    let since = Instant::now();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, IDLE_TIMEOUT) {
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionRefused
                    && since.elapsed() < IDLE_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Binds a TCP listener whose `accept` gives up after [`IDLE_TIMEOUT`].
fn listen(addr: std::net::SocketAddr, what: &str) -> Result<std::net::TcpListener, Error> {
    let listener = std::net::TcpListener::bind(addr).context(|| format!("{what}: bind {addr}"))?;
    rustix::net::sockopt::set_socket_timeout(
        &listener,
        rustix::net::sockopt::Timeout::Recv,
        Some(IDLE_TIMEOUT),
    )
    .map_err(io::Error::from)
    .context(|| format!("{what}: listen on {addr}"))?;
    Ok(listener)
}

/// The error of a server thread that ended before it was ready.
fn stopped_early<T>(result: Result<T, Error>, what: &str) -> Error {
    result.err().unwrap_or_else(|| {
        Error::new(
            what.to_owned(),
            io::Error::other("it stopped before it was ready"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays back a script of read results, one per call; then reports EAGAIN forever.
    struct Script(Vec<io::Result<Vec<u8>>>);

    impl io::Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let bytes = self.0.remove(0)?;
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
    }

    fn again() -> io::Result<Vec<u8>> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    #[test]
    fn early_eagain_is_retried_and_bytes_kept_in_order() {
        let mut stream = Script(vec![
            again(),
            Ok(b"ab".to_vec()),
            Err(io::ErrorKind::Interrupted.into()),
            again(),
            Ok(b"cd".to_vec()),
        ]);
        let mut buf = [0; 4];
        read_full(&mut stream, &mut buf, IDLE_TIMEOUT).unwrap();
        assert_eq!(&buf, b"abcd");
    }

    #[test]
    fn eagain_after_the_idle_time_is_the_timeout() {
        let mut stream = Script(Vec::new());
        let started = Instant::now();
        let err = read_some(&mut stream, &mut [0; 4], Duration::from_millis(20)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn end_of_stream_and_other_errors_pass_through() {
        let mut closed = Script(vec![Ok(b"a".to_vec()), Ok(Vec::new())]);
        let err = read_full(&mut closed, &mut [0; 2], IDLE_TIMEOUT).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut reset = Script(vec![Err(io::ErrorKind::ConnectionReset.into())]);
        let err = read_some(&mut reset, &mut [0; 2], IDLE_TIMEOUT).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
