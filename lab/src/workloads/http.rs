//! HTTP/1.1 clients of a deployed DisGraFS server: uploads, downloads and searches.
//!
//! One thread per connection, each with a persistent (keep-alive) connection and a blocking
//! socket; a request is written whole and its response read to the end before the next one.
//! The client is a small HTTP/1.1 implementation of its own (request line and headers out;
//! status line, headers, `Content-Length` or chunked body in), so the generator spends no
//! time in a general-purpose client stack. A response other than 2xx fails the run, naming
//! the status and the start of the body.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{Context, Error, IDLE_TIMEOUT, Site, Stop, join, latency_histogram, record};

/// Files the search workload uploads before it starts, so that searches find something.
const SEARCH_FILES: usize = 8;

/// An HTTP workload against a DisGraFS server.
#[derive(Clone, Debug)]
pub struct Http {
    /// The server's address.
    pub addr: SocketAddr,
    /// The write token (sent with uploads as `Authorization: Bearer`).
    pub token: String,
    /// What each request does.
    pub op: HttpOp,
    /// Concurrent connections.
    pub connections: usize,
    /// When each connection stops ([`Stop::Count`]: requests per connection).
    pub stop: Stop,
}

/// The request an [`Http`] workload repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpOp {
    /// `PUT /api/files/lab-up-C-I.bin` with `size` bytes, `I` cycling over `files` names.
    Upload {
        /// Body bytes.
        size: usize,
        /// Names per connection.
        files: usize,
    },
    /// `GET /api/files/lab-download-SIZE.bin`, uploaded first.
    Download {
        /// Bytes of the file.
        size: usize,
    },
    /// `GET /api/search?QUERY`, after uploading a few small text files named `lab-search-N.txt`.
    Search {
        /// The query string.
        query: String,
    },
}

/// What an [`http`] run measured.
#[derive(Clone, Debug)]
pub struct HttpResult {
    /// Every request's latency (request written to response read), in nanoseconds.
    pub latency: Histogram<u64>,
    /// Requests completed, over all connections.
    pub requests: u64,
    /// Body bytes moved: sent for uploads, received for downloads and searches.
    pub bytes: u64,
    /// From the moment every connection was established to the end of the last one.
    pub elapsed: Duration,
}

impl HttpResult {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Body bytes per second.
    pub fn byte_rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Runs `config` from `client`: prepares what the requests need, then runs every connection.
pub fn http(client: &Site, config: &Http) -> Result<HttpResult, Error> {
    thread::scope(|s| s.spawn(|| prepare(client, config)).join()).unwrap_or_else(|_| {
        Err(Error::new(
            "http setup".into(),
            io::Error::other("panicked"),
        ))
    })?;
    let connections = config.connections.max(1);
    let start = Barrier::new(connections);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|i| {
                let start = &start;
                scope.spawn(move || run_connection(client, config, i, start))
            })
            .collect();
        let mut latency = latency_histogram();
        let (mut requests, mut bytes, mut elapsed) = (0, 0, Duration::ZERO);
        let mut failure = None;
        for handle in handles {
            match join(handle, "http client") {
                Ok(r) => {
                    // Same bounds: adding cannot fail.
                    let _ = latency.add(&r.latency);
                    requests += r.requests;
                    bytes += r.bytes;
                    elapsed = elapsed.max(r.elapsed);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(HttpResult {
                latency,
                requests,
                bytes,
                elapsed,
            }),
        }
    })
}

/// Uploads the file a download workload fetches, or the files a search finds.
fn prepare(client: &Site, config: &Http) -> Result<(), Error> {
    client.enter(0)?;
    let mut conn = Conn::open(config.addr)?;
    match &config.op {
        HttpOp::Upload { .. } => Ok(()),
        HttpOp::Download { size } => {
            let body = payload(*size, 0);
            conn.put(&format!("lab-download-{size}.bin"), &body, &config.token)
                .map(drop)
        }
        HttpOp::Search { .. } => (0..SEARCH_FILES).try_for_each(|i| {
            let text = format!(
                "Lab search document {i}: a graph file system tags files and links them to \
                 their tags; eBPF accelerators measure the network underneath.\n"
            );
            conn.put(
                &format!("lab-search-{i}.txt"),
                text.as_bytes(),
                &config.token,
            )
            .map(drop)
        }),
    }
}

/// One connection's counts.
struct ConnResult {
    latency: Histogram<u64>,
    requests: u64,
    bytes: u64,
    elapsed: Duration,
}

fn run_connection(
    client: &Site,
    config: &Http,
    index: usize,
    start: &Barrier,
) -> Result<ConnResult, Error> {
    let opened = client.enter(index).and_then(|()| Conn::open(config.addr));
    // Every thread reaches the barrier, also one that failed, so none waits forever.
    start.wait();
    let mut conn = opened?;
    let body = match config.op {
        HttpOp::Upload { size, .. } => payload(size, index as u64 + 1),
        _ => Vec::new(),
    };
    let mut latency = latency_histogram();
    let (mut requests, mut bytes) = (0u64, 0u64);
    let begun = Instant::now();
    while !config.stop.reached(begun, requests) {
        let sent = Instant::now();
        bytes += match &config.op {
            HttpOp::Upload { files, .. } => {
                let name = format!("lab-up-{index}-{}.bin", requests % *files as u64);
                conn.put(&name, &body, &config.token)?;
                body.len() as u64
            }
            HttpOp::Download { size } => {
                conn.get(&format!("/api/files/lab-download-{size}.bin"))?
            }
            HttpOp::Search { query } => conn.get(&format!("/api/search?{query}"))?,
        };
        record(&mut latency, sent.elapsed());
        requests += 1;
    }
    Ok(ConnResult {
        latency,
        requests,
        bytes,
        elapsed: begun.elapsed(),
    })
}

/// `size` bytes of a seeded xorshift sequence (not compressible, different per `seed`).
fn payload(size: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0xff51_afd7_ed55_8ccd);
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A keep-alive connection to the server; reconnects when the server closed it.
struct Conn {
    addr: SocketAddr,
    reader: Option<BufReader<TcpStream>>,
    /// Scratch space for response bodies.
    sink: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Self, Error> {
        Ok(Self {
            addr,
            reader: Some(connect(addr)?),
            sink: vec![0; 64 * 1024],
        })
    }

    /// `PUT /api/files/NAME`; returns the response body's length.
    fn put(&mut self, name: &str, body: &[u8], token: &str) -> Result<u64, Error> {
        let head = format!(
            "PUT /api/files/{name} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        self.exchange("PUT", &format!("/api/files/{name}"), &head, body)
    }

    /// `GET PATH`; returns the response body's length.
    fn get(&mut self, path: &str) -> Result<u64, Error> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        self.exchange("GET", path, &head, &[])
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        head: &str,
        body: &[u8],
    ) -> Result<u64, Error> {
        let what = || format!("http: {method} {path}");
        let addr = self.addr;
        if self.reader.is_none() {
            self.reader = Some(connect(addr)?);
        }
        let reader = self.reader.as_mut().expect("connected above");
        let stream = reader.get_mut();
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .context(what)?;
        let response = read_response(reader, &mut self.sink).context(what);
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                self.reader = None;
                return Err(e);
            }
        };
        if response.close {
            self.reader = None;
        }
        if !(200..300).contains(&response.status) {
            return Err(Error::new(
                what(),
                io::Error::other(format!(
                    "{addr} answered {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.start).trim()
                )),
            ));
        }
        Ok(response.length)
    }
}

/// A connection to `addr` with the idle timeout on both directions and Nagle off.
fn connect(addr: SocketAddr) -> Result<BufReader<TcpStream>, Error> {
    let stream = TcpStream::connect_timeout(&addr, IDLE_TIMEOUT)
        .context(|| format!("http: connect to {addr}"))?;
    stream
        .set_read_timeout(Some(IDLE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IDLE_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .context(|| format!("http: set up the connection to {addr}"))?;
    Ok(BufReader::with_capacity(64 * 1024, stream))
}

/// A response read to its end.
struct Response {
    status: u16,
    /// Body bytes.
    length: u64,
    /// The first bytes of the body (for error messages).
    start: Vec<u8>,
    /// Whether the server closes the connection after it.
    close: bool,
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one response: status line, headers, then a `Content-Length` or chunked body.
fn read_response(reader: &mut impl BufRead, sink: &mut [u8]) -> io::Result<Response> {
    let mut line = String::new();
    read_line(reader, &mut line)?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            bad(format!(
                "not an HTTP/1.x status line: {:?}",
                line.trim_end()
            ))
        })?;
    let (mut length, mut chunked, mut close) = (None, false, line.starts_with("HTTP/1.0"));
    loop {
        read_line(reader, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(bad(format!("bad header line {header:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let mut start = Vec::new();
    let length = if chunked {
        let mut total = 0;
        loop {
            read_line(reader, &mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size.trim(), 16)
                .map_err(|_| bad(format!("bad chunk size {:?}", line.trim_end())))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    read_line(reader, &mut line)?;
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                break total;
            }
            discard(reader, size, sink, &mut start)?;
            total += size;
            read_line(reader, &mut line)?;
        }
    } else {
        match length {
            Some(n) => {
                discard(reader, n, sink, &mut start)?;
                n
            }
            None => {
                // No length: the body runs to the end of the connection.
                close = true;
                let mut total = 0;
                loop {
                    let n = reader.read(sink)?;
                    if n == 0 {
                        break total;
                    }
                    keep_start(&mut start, &sink[..n]);
                    total += n as u64;
                }
            }
        }
    };
    Ok(Response {
        status,
        length,
        start,
        close,
    })
}

fn read_line(reader: &mut impl BufRead, line: &mut String) -> io::Result<()> {
    line.clear();
    if reader.read_line(line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads and drops `n` bytes, keeping the first few in `start`.
fn discard(
    reader: &mut impl Read,
    mut n: u64,
    sink: &mut [u8],
    start: &mut Vec<u8>,
) -> io::Result<()> {
    while n > 0 {
        let want = sink.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let got = reader.read(&mut sink[..want])?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        keep_start(start, &sink[..got]);
        n -= got as u64;
    }
    Ok(())
}

fn keep_start(start: &mut Vec<u8>, bytes: &[u8]) {
    let room = 200usize.saturating_sub(start.len());
    start.extend_from_slice(&bytes[..room.min(bytes.len())]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_chunks_and_close() {
        let mut sink = vec![0; 7];
        let text = b"HTTP/1.1 201 Created\r\ncontent-length: 11\r\n\r\nhello worldHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nabcde\r\n3\r\nfgh\r\n0\r\nTrailer: 1\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\nmissing";
        let mut reader = BufReader::with_capacity(4, &text[..]);
        let first = read_response(&mut reader, &mut sink).expect("first");
        assert_eq!((first.status, first.length, first.close), (201, 11, false));
        assert_eq!(first.start, b"hello world");
        let second = read_response(&mut reader, &mut sink).expect("second");
        assert_eq!((second.status, second.length), (200, 8));
        assert_eq!(second.start, b"abcdefgh");
        let third = read_response(&mut reader, &mut sink).expect("third");
        assert_eq!((third.status, third.length, third.close), (404, 7, true));
        assert_eq!(third.start, b"missing");
    }

    #[test]
    fn malformed_responses_are_errors() {
        let mut sink = vec![0; 16];
        for text in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let err = read_response(&mut BufReader::new(text), &mut sink)
                .err()
                .unwrap_or_else(|| panic!("{:?} was accepted", String::from_utf8_lossy(text)));
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn payloads_are_seeded() {
        assert_eq!(payload(100, 1), payload(100, 1));
        assert_ne!(payload(100, 1), payload(100, 2));
        assert_eq!(payload(5, 3).len(), 5);
    }
}
