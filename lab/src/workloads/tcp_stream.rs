//! One-way bulk TCP.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::{Barrier, mpsc};
use std::thread::{self, Scope};
use std::time::{Duration, Instant};

use super::{
    Context, Error, IDLE_TIMEOUT, Site, Stop, connect, join, listen, read_some, stopped_early,
};

/// Receive buffer of each server connection.
const READ_BUFFER: usize = 256 * 1024;

/// A streaming workload: each connection sends `message`-byte messages, each in `write`-byte
/// `write` calls, and the server counts what arrives.
#[derive(Clone, Debug)]
pub struct TcpStream {
    /// The address the server listens on and the client connects to.
    pub addr: SocketAddr,
    /// Application message size in bytes (at least 1).
    pub message: usize,
    /// Bytes per `write` call (at least 1; at most `message`).
    pub write: usize,
    /// Concurrent connections, one client and one server thread each.
    pub connections: usize,
    /// When each connection stops sending ([`Stop::Count`] counts bytes, rounded up to whole
    /// messages).
    pub stop: Stop,
}

/// What a [`tcp_stream`] run measured at the receiver.
#[derive(Clone, Debug)]
pub struct TcpStreamResult {
    /// Bytes received, over all connections.
    pub bytes: u64,
    /// Whole messages received, over all connections.
    pub messages: u64,
    /// From the first byte received to the last, over all connections.
    pub elapsed: Duration,
}

impl TcpStreamResult {
    /// Bytes per second at the receiver.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// What one server connection received.
struct Received {
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Runs `config` with its receiving server at `server` and its sending client at `client`.
pub fn tcp_stream(
    server: &Site,
    client: &Site,
    config: &TcpStream,
) -> Result<TcpStreamResult, Error> {
    let connections = config.connections.max(1);
    let start = Barrier::new(connections);
    thread::scope(|scope| {
        let (bound, listener) = mpsc::channel();
        let serving = scope.spawn(move || serve(scope, server, config, connections, &bound));
        let Ok(listener) = listener.recv() else {
            return Err(stopped_early(
                join(serving, "tcp_stream server"),
                "tcp_stream server",
            ));
        };
        let sent = senders(scope, client, config, connections, &start);
        if sent.is_err() {
            // Wakes a server still waiting for connections that will never come.
            let _ = rustix::net::shutdown(&listener, rustix::net::Shutdown::Both);
        }
        let received = join(serving, "tcp_stream server");
        sent?;
        Ok(summary(&received?, config))
    })
}

/// Runs only the receiving side of `config` at `site` (the sender runs elsewhere, e.g. on the
/// host while this runs in a VM guest) and returns what arrived on its `config.connections`
/// connections.
pub fn tcp_stream_server(site: &Site, config: &TcpStream) -> Result<TcpStreamResult, Error> {
    thread::scope(|scope| {
        let (bound, _listener) = mpsc::channel();
        let received = serve(scope, site, config, config.connections.max(1), &bound)?;
        Ok(summary(&received, config))
    })
}

/// Runs only the sending side of `config` at `client`, against a receiver started elsewhere
/// ([`tcp_stream_server`], which measures); each connection retries for up to
/// [`IDLE_TIMEOUT`] while the receiver is not listening yet.
pub fn tcp_stream_client(client: &Site, config: &TcpStream) -> Result<(), Error> {
    let connections = config.connections.max(1);
    let start = Barrier::new(connections);
    thread::scope(|scope| senders(scope, client, config, connections, &start))
}

/// Runs `connections` sending threads; the first failure, if any.
fn senders<'scope>(
    scope: &'scope Scope<'scope, '_>,
    client: &'scope Site,
    config: &'scope TcpStream,
    connections: usize,
    start: &'scope Barrier,
) -> Result<(), Error> {
    let handles: Vec<_> = (0..connections)
        .map(|i| scope.spawn(move || send(client, config, i, start)))
        .collect();
    let mut failure = None;
    for handle in handles {
        if let Err(e) = join(handle, "tcp_stream client") {
            failure = failure.or(Some(e));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// The totals over every connection's [`Received`].
fn summary(received: &[Received], config: &TcpStream) -> TcpStreamResult {
    let bytes: u64 = received.iter().map(|r| r.bytes).sum();
    let messages = received
        .iter()
        .map(|r| r.bytes / config.message.max(1) as u64)
        .sum();
    let first = received.iter().filter_map(|r| r.first).min();
    let last = received.iter().filter_map(|r| r.last).max();
    let elapsed = match (first, last) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    TcpStreamResult {
        bytes,
        messages,
        elapsed,
    }
}

/// Binds, reports the listener on `bound`, then receives on `connections` connections.
fn serve<'scope>(
    scope: &'scope Scope<'scope, '_>,
    site: &'scope Site,
    config: &TcpStream,
    connections: usize,
    bound: &mpsc::Sender<TcpListener>,
) -> Result<Vec<Received>, Error> {
    site.enter(0)?;
    let listener = listen(config.addr, "tcp_stream")?;
    let clone = listener
        .try_clone()
        .context(|| "tcp_stream: clone the listener".to_owned())?;
    // The receiver waits for exactly this message.
    let _ = bound.send(clone);
    let mut handlers = Vec::with_capacity(connections);
    let mut failure = None;
    for i in 0..connections {
        match listener.accept() {
            Ok((stream, _)) => handlers.push(scope.spawn(move || {
                site.pin(i)?;
                receive(stream)
            })),
            Err(e) => {
                failure = Some(Error::new(
                    format!("tcp_stream: accept on {}", config.addr),
                    e,
                ));
                break;
            }
        }
    }
    let mut received = Vec::with_capacity(connections);
    for handler in handlers {
        match join(handler, "tcp_stream server") {
            Ok(r) => received.push(r),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    failure.map_or(Ok(received), Err)
}

/// Reads `stream` until the sender closes it.
fn receive(mut stream: std::net::TcpStream) -> Result<Received, Error> {
    let what = || "tcp_stream server".to_owned();
    stream.set_read_timeout(Some(IDLE_TIMEOUT)).context(what)?;
    let mut buffer = vec![0; READ_BUFFER];
    let mut received = Received {
        bytes: 0,
        first: None,
        last: None,
    };
    loop {
        match read_some(&mut stream, &mut buffer, IDLE_TIMEOUT) {
            Ok(0) => return Ok(received),
            Ok(n) => {
                let now = Instant::now();
                received.first.get_or_insert(now);
                received.last = Some(now);
                received.bytes += n as u64;
            }
            Err(e) => return Err(Error::new(what(), e)),
        }
    }
}

/// One sending connection: connects, waits for the others, then sends until told to stop.
fn send(site: &Site, config: &TcpStream, index: usize, start: &Barrier) -> Result<(), Error> {
    let connected = site.enter(index).and_then(|()| {
        connect(config.addr).context(|| format!("tcp_stream: connect to {}", config.addr))
    });
    // Every connection reaches the barrier, also one that failed, so none waits forever.
    start.wait();
    let mut stream = connected?;
    let what = || format!("tcp_stream: send to {}", config.addr);
    stream.set_write_timeout(Some(IDLE_TIMEOUT)).context(what)?;
    let message = vec![0x5a; config.message.max(1)];
    let write = config.write.clamp(1, message.len());
    let mut sent = 0;
    let begin = Instant::now();
    while !config.stop.reached(begin, sent) {
        for chunk in message.chunks(write) {
            stream.write_all(chunk).context(what)?;
        }
        sent += message.len() as u64;
    }
    stream.shutdown(Shutdown::Write).context(what)
}
