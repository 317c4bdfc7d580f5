//! Request/response over TCP.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::{Barrier, mpsc};
use std::thread::{self, Scope};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{
    Context, Error, IDLE_TIMEOUT, Site, Stop, connect, join, latency_histogram, listen, read_full,
    record, stopped_early,
};

/// A request/response workload: each connection sends `request` bytes and waits for
/// `response` bytes, over and over.
#[derive(Clone, Debug)]
pub struct TcpRr {
    /// The address the server listens on and the client connects to.
    pub addr: SocketAddr,
    /// Request size in bytes (at least 1).
    pub request: usize,
    /// Response size in bytes (at least 1).
    pub response: usize,
    /// Concurrent connections, one client and one server thread each.
    pub connections: usize,
    /// When each connection stops.
    pub stop: Stop,
}

/// What a [`tcp_rr`] run measured at the client.
#[derive(Clone, Debug)]
pub struct TcpRrResult {
    /// Every round trip's latency, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Round trips completed, over all connections.
    pub round_trips: u64,
    /// From the moment every connection was established to the end of the last one.
    pub elapsed: Duration,
}

impl TcpRrResult {
    /// Round trips per second.
    pub fn rate(&self) -> f64 {
        self.round_trips as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Runs `config` with its server at `server` and its client at `client`.
pub fn tcp_rr(server: &Site, client: &Site, config: &TcpRr) -> Result<TcpRrResult, Error> {
    let connections = config.connections.max(1);
    let start = Barrier::new(connections);
    thread::scope(|scope| {
        let (bound, listener) = mpsc::channel();
        let serving = scope.spawn(move || serve(scope, server, config, connections, &bound));
        let Ok(listener) = listener.recv() else {
            return Err(stopped_early(
                join(serving, "tcp_rr server"),
                "tcp_rr server",
            ));
        };
        let measured = clients(scope, client, config, connections, &start);
        if measured.is_err() {
            // Wakes a server still waiting for connections that will never come.
            let _ = rustix::net::shutdown(&listener, rustix::net::Shutdown::Both);
        }
        let served = join(serving, "tcp_rr server");
        let measured = measured?;
        served.map(|()| measured)
    })
}

/// Runs only the server side of `config` at `site` (the client runs elsewhere, e.g. on the
/// host while this runs in a VM guest): answers `config.connections` connections until their
/// clients close them.
pub fn tcp_rr_server(site: &Site, config: &TcpRr) -> Result<(), Error> {
    thread::scope(|scope| {
        let (bound, _listener) = mpsc::channel();
        serve(scope, site, config, config.connections.max(1), &bound)
    })
}

/// Runs only the client side of `config` at `client`, against a server started elsewhere
/// ([`tcp_rr_server`]); each connection retries for up to [`IDLE_TIMEOUT`] while the server
/// is not listening yet.
pub fn tcp_rr_client(client: &Site, config: &TcpRr) -> Result<TcpRrResult, Error> {
    let connections = config.connections.max(1);
    let start = Barrier::new(connections);
    thread::scope(|scope| clients(scope, client, config, connections, &start))
}

/// Runs `connections` client threads and merges what they measured.
fn clients<'scope>(
    scope: &'scope Scope<'scope, '_>,
    client: &'scope Site,
    config: &'scope TcpRr,
    connections: usize,
    start: &'scope Barrier,
) -> Result<TcpRrResult, Error> {
    let handles: Vec<_> = (0..connections)
        .map(|i| scope.spawn(move || run_client(client, config, i, start)))
        .collect();
    let mut latency = latency_histogram();
    let mut round_trips = 0;
    let mut elapsed = Duration::ZERO;
    let mut failure = None;
    for handle in handles {
        match join(handle, "tcp_rr client") {
            Ok((h, n, e)) => {
                // Both histograms have the same bounds: adding cannot fail.
                let _ = latency.add(&h);
                round_trips += n;
                elapsed = elapsed.max(e);
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    failure.map_or(
        Ok(TcpRrResult {
            latency,
            round_trips,
            elapsed,
        }),
        Err,
    )
}

/// Binds, reports the listener on `bound`, then serves `connections` connections.
fn serve<'scope>(
    scope: &'scope Scope<'scope, '_>,
    site: &'scope Site,
    config: &'scope TcpRr,
    connections: usize,
    bound: &mpsc::Sender<TcpListener>,
) -> Result<(), Error> {
    site.enter(0)?;
    let listener = listen(config.addr, "tcp_rr")?;
    let clone = listener
        .try_clone()
        .context(|| "tcp_rr: clone the listener".to_owned())?;
    // The receiver waits for exactly this message.
    let _ = bound.send(clone);
    let mut handlers = Vec::with_capacity(connections);
    let mut failure = None;
    for i in 0..connections {
        match listener.accept() {
            Ok((stream, _)) => handlers.push(scope.spawn(move || {
                site.pin(i)?;
                answer(stream, config)
            })),
            Err(e) => {
                failure = Some(Error::new(format!("tcp_rr: accept on {}", config.addr), e));
                break;
            }
        }
    }
    for handler in handlers {
        if let Err(e) = join(handler, "tcp_rr server") {
            failure = failure.or(Some(e));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Answers every request on `stream` until the client closes it.
fn answer(mut stream: std::net::TcpStream, config: &TcpRr) -> Result<(), Error> {
    let what = || "tcp_rr server".to_owned();
    stream.set_nodelay(true).context(what)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT)).context(what)?;
    let mut request = vec![0; config.request.max(1)];
    let response = vec![0x5a; config.response.max(1)];
    loop {
        match read_full(&mut stream, &mut request, IDLE_TIMEOUT) {
            Ok(()) => stream.write_all(&response).context(what)?,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(Error::new(what(), e)),
        }
    }
}

/// One client connection: connects, waits for the others, then runs round trips.
fn run_client(
    site: &Site,
    config: &TcpRr,
    index: usize,
    start: &Barrier,
) -> Result<(Histogram<u64>, u64, Duration), Error> {
    let connected = site.enter(index).and_then(|()| {
        let what = || format!("tcp_rr: connect to {}", config.addr);
        let stream = connect(config.addr).context(what)?;
        stream.set_nodelay(true).context(what)?;
        stream.set_read_timeout(Some(IDLE_TIMEOUT)).context(what)?;
        Ok(stream)
    });
    // Every connection reaches the barrier, also one that failed, so none waits forever.
    start.wait();
    let mut stream = connected?;
    let what = || format!("tcp_rr: round trip to {}", config.addr);
    let request = vec![0xa5; config.request.max(1)];
    let mut response = vec![0; config.response.max(1)];
    let mut latency = latency_histogram();
    let mut done = 0;
    let begin = Instant::now();
    while !config.stop.reached(begin, done) {
        let sent = Instant::now();
        stream.write_all(&request).context(what)?;
        read_full(&mut stream, &mut response, IDLE_TIMEOUT).context(what)?;
        record(&mut latency, sent.elapsed());
        done += 1;
    }
    let elapsed = begin.elapsed();
    let _ = stream.shutdown(Shutdown::Both);
    Ok((latency, done, elapsed))
}
