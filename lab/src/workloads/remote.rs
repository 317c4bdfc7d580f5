//! Server sides that run in another process: a workload whose server is a VM node runs its
//! client in the runner (as always) and its server as `lab workload-server SPEC` inside the
//! guest, started through the guest agent. [`ServerSpec`] is that `SPEC` (JSON); the command
//! prints a [`Served`] (JSON) when its clients are done.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Error, Site, Stop, TcpRr, TcpStream, TcpStreamResult, tcp_rr_server, tcp_stream_server,
};

/// The server side of one workload, with what it needs to know of the client's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerSpec {
    /// [`super::tcp_rr_server`].
    TcpRr {
        /// Where to listen.
        addr: SocketAddr,
        /// Request size in bytes.
        request: usize,
        /// Response size in bytes.
        response: usize,
        /// Connections to answer before exiting.
        connections: usize,
        /// CPUs to pin the server's threads to (empty: not pinned).
        cpus: Vec<usize>,
    },
    /// [`super::tcp_stream_server`].
    TcpStream {
        /// Where to listen.
        addr: SocketAddr,
        /// Application message size in bytes (counts whole messages).
        message: usize,
        /// Connections to receive before exiting.
        connections: usize,
        /// CPUs to pin the server's threads to (empty: not pinned).
        cpus: Vec<usize>,
    },
}

/// What a server measured: for `tcp_stream`, what arrived; nothing for `tcp_rr` (its client
/// measures).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Served {
    /// Bytes received over all connections.
    pub bytes: u64,
    /// Whole messages received.
    pub messages: u64,
    /// From the first byte received to the last, in nanoseconds.
    pub elapsed_ns: u64,
}

impl ServerSpec {
    /// Serves in this process's namespace until the clients are done.
    ///
    /// # Errors
    /// Binding, accepting or a connection failing, as the local server sides do.
    pub fn serve(&self) -> Result<Served, Error> {
        // A server stops when its clients close their connections.
        let stop = Stop::Count(0);
        match self {
            ServerSpec::TcpRr {
                addr,
                request,
                response,
                connections,
                cpus,
            } => {
                let config = TcpRr {
                    addr: *addr,
                    request: *request,
                    response: *response,
                    connections: *connections,
                    stop,
                };
                tcp_rr_server(&site(cpus), &config).map(|()| Served::default())
            }
            ServerSpec::TcpStream {
                addr,
                message,
                connections,
                cpus,
            } => {
                let config = TcpStream {
                    addr: *addr,
                    message: *message,
                    write: *message,
                    connections: *connections,
                    stop,
                };
                tcp_stream_server(&site(cpus), &config).map(|r| Served {
                    bytes: r.bytes,
                    messages: r.messages,
                    elapsed_ns: u64::try_from(r.elapsed.as_nanos()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    /// The command line that serves this spec with the `lab` binary at `lab`.
    pub fn argv(&self, lab: &str) -> Vec<String> {
        vec![
            lab.to_owned(),
            "workload-server".to_owned(),
            serde_json::to_string(self).expect("a server spec serializes (plain data)"),
        ]
    }
}

impl Served {
    /// The receiver's result of a `tcp_stream` workload.
    pub fn stream_result(&self) -> TcpStreamResult {
        TcpStreamResult {
            bytes: self.bytes,
            messages: self.messages,
            elapsed: Duration::from_nanos(self.elapsed_ns),
        }
    }
}

fn site(cpus: &[usize]) -> Site {
    Site {
        netns: None,
        cpus: cpus.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::{tcp_rr_client, tcp_stream_client};

    #[test]
    fn specs_go_through_the_command_line_and_back() {
        let spec = ServerSpec::TcpStream {
            addr: "10.79.0.2:5201".parse().unwrap(),
            message: 65536,
            connections: 2,
            cpus: vec![0],
        };
        let argv = spec.argv("/tmp/lab");
        assert_eq!(argv[..2], ["/tmp/lab", "workload-server"]);
        assert_eq!(serde_json::from_str::<ServerSpec>(&argv[2]).unwrap(), spec);
        let bad = serde_json::from_str::<ServerSpec>(r#"{"kind":"udp_echo"}"#).unwrap_err();
        assert!(bad.to_string().contains("udp_echo"), "{bad}");
    }

    /// A server side in one thread and the client side in another, on loopback, as they run
    /// in a guest and in the runner.
    #[test]
    fn split_sides_measure_like_the_local_workloads() {
        let rr = ServerSpec::TcpRr {
            addr: "127.0.0.1:47311".parse().unwrap(),
            request: 32,
            response: 100,
            connections: 2,
            cpus: vec![],
        };
        let client = std::thread::spawn(|| {
            let config = TcpRr {
                addr: "127.0.0.1:47311".parse().unwrap(),
                request: 32,
                response: 100,
                connections: 2,
                stop: Stop::Count(50),
            };
            // Started first: the client retries until the server listens.
            tcp_rr_client(&Site::default(), &config)
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(rr.serve().unwrap(), Served::default());
        let measured = client.join().unwrap().unwrap();
        assert_eq!(measured.round_trips, 100);
        assert_eq!(measured.latency.len(), 100);

        let stream = ServerSpec::TcpStream {
            addr: "127.0.0.1:47312".parse().unwrap(),
            message: 1000,
            connections: 1,
            cpus: vec![],
        };
        let server = std::thread::spawn(move || stream.serve());
        let config = TcpStream {
            addr: "127.0.0.1:47312".parse().unwrap(),
            message: 1000,
            write: 100,
            connections: 1,
            stop: Stop::Count(50_000),
        };
        tcp_stream_client(&Site::default(), &config).unwrap();
        let served = server.join().unwrap().unwrap();
        assert_eq!((served.bytes, served.messages), (50_000, 50));
        assert_eq!(served.stream_result().bytes, 50_000);
    }
}
