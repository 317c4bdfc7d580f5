//! The load generators between two network namespaces joined by a veth pair (root).

use std::net::SocketAddr;
use std::time::Duration;

use lab::workloads::{
    Generator, Site, Stop, TcpRr, TcpStream, UdpEcho, tcp_rr, tcp_stream, udp_echo,
};
use testkit::NetNs;

/// Two namespaces joined by a veth: the client has 10.9.0.1, the server 10.9.0.2.
struct Pair {
    client: NetNs,
    server: NetNs,
}

impl Pair {
    fn new() -> Self {
        let client = NetNs::new().unwrap();
        let server = NetNs::new().unwrap();
        let veth = testkit::unique_name();
        client
            .ip(&format!(
                "link add {veth} type veth peer name eth0 netns {}",
                server.name()
            ))
            .unwrap();
        client
            .ip(&format!("addr add 10.9.0.1/24 dev {veth}"))
            .unwrap();
        client.ip(&format!("link set {veth} up")).unwrap();
        client.ip("link set lo up").unwrap();
        server.ip("addr add 10.9.0.2/24 dev eth0").unwrap();
        server.ip("link set eth0 up").unwrap();
        server.ip("link set lo up").unwrap();
        Self { client, server }
    }

    fn sites(&self) -> (Site, Site) {
        let site = |ns: &NetNs| Site {
            netns: Some(ns.path().to_owned()),
            cpus: vec![0],
        };
        (site(&self.server), site(&self.client))
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 9, 0, 2], port))
}

#[test]
fn tcp_rr_counts_every_round_trip() {
    let pair = Pair::new();
    let (server, client) = pair.sites();
    let config = TcpRr {
        addr: addr(7001),
        request: 100,
        response: 3000,
        connections: 3,
        stop: Stop::Count(500),
    };
    let result = tcp_rr(&server, &client, &config).unwrap();
    assert_eq!(result.round_trips, 1500);
    assert_eq!(result.latency.len(), 1500);
    assert!(result.latency.min() > 0);
    assert!(result.rate() > 0.0);
}

#[test]
fn tcp_rr_stops_after_its_window() {
    let pair = Pair::new();
    let (server, client) = pair.sites();
    let config = TcpRr {
        addr: addr(7002),
        request: 64,
        response: 64,
        connections: 1,
        stop: Stop::After(Duration::from_millis(200)),
    };
    let result = tcp_rr(&server, &client, &config).unwrap();
    assert!(result.round_trips > 0);
    assert!(result.elapsed >= Duration::from_millis(200));
}

#[test]
fn tcp_stream_delivers_every_byte() {
    let pair = Pair::new();
    let (server, client) = pair.sites();
    let config = TcpStream {
        addr: addr(7003),
        message: 10_000,
        write: 100,
        connections: 2,
        stop: Stop::Count(1_000_000),
    };
    let result = tcp_stream(&server, &client, &config).unwrap();
    assert_eq!(result.bytes, 2_000_000);
    assert_eq!(result.messages, 200);
    assert!(result.rate() > 0.0);
}

#[test]
fn udp_echo_gets_every_echo_on_a_clean_link() {
    let pair = Pair::new();
    let (server, client) = pair.sites();
    let config = UdpEcho {
        generator: Generator::Socket,
        addr: addr(7004),
        pps: 20_000,
        size: 200,
        stop: Stop::Count(2_000),
    };
    let result = udp_echo(&server, &client, &config).unwrap();
    assert_eq!(result.sent, 2_000);
    assert_eq!(result.received, 2_000);
    assert_eq!(result.lost(), 0);
    assert_eq!(result.latency.len(), 2_000);
}

/// 1 000 datagrams from `generator` through a link that drops: some are counted lost.
fn udp_echo_counts_losses_of(generator: Generator, port: u16) {
    let pair = Pair::new();
    // The kernel may lack netem: a token bucket with a tiny queue drops what overflows it.
    let tc = pair.server.run(|| {
        std::process::Command::new("tc")
            .args("qdisc add dev eth0 root tbf rate 1mbit burst 2kb limit 2kb".split(' '))
            .status()
    });
    assert!(tc.unwrap().unwrap().success());
    let (server, client) = pair.sites();
    let config = UdpEcho {
        generator,
        addr: addr(port),
        pps: 10_000,
        size: 64,
        stop: Stop::Count(1_000),
    };
    let result = udp_echo(&server, &client, &config).unwrap();
    assert_eq!(result.sent, 1_000);
    assert!(result.lost() > 0, "{result:?}");
    assert!(result.received < 1_000);
}

#[test]
fn udp_echo_counts_losses() {
    udp_echo_counts_losses_of(Generator::Socket, 7005);
}

/// `ethtool -k` flags and the `threaded` knob of `iface` in `ns`, as text.
fn link_settings(ns: &NetNs, iface: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "sh", "-c"])
        .arg(format!(
            "ethtool -k {iface} | grep -E '^(generic-receive-offload|tcp-segmentation-offload):'; \
             cat /sys/class/net/{iface}/threaded"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn udp_echo_xdp_gets_every_echo_measures_the_server_and_restores_the_link() {
    let pair = Pair::new();
    let before = link_settings(&pair.server, "eth0");
    let (server, client) = pair.sites();
    let config = UdpEcho {
        generator: Generator::Xdp,
        addr: addr(7009),
        // Slow enough that the server's unpinned echo and NAPI threads, on a machine busy with
        // other tests, never let the veth's 256-frame ring overflow (~0.1 s of delay at most).
        pps: 2_000,
        size: 200,
        stop: Stop::Count(2_000),
    };
    let result = udp_echo(&server, &client, &config).unwrap();
    assert_eq!(result.sent, 2_000);
    assert_eq!(result.received, 2_000);
    assert_eq!(result.latency.len(), 2_000);
    assert!(result.latency.min() > 0);
    // The echo thread and the NAPI thread that received for it ran.
    let cpu = result
        .server_cpu
        .expect("the server side's CPU is measured");
    assert!(cpu > Duration::ZERO, "{cpu:?}");
    assert_eq!(link_settings(&pair.server, "eth0"), before);
}

#[test]
fn udp_echo_xdp_counts_losses() {
    udp_echo_counts_losses_of(Generator::Xdp, 7010);
}

#[test]
fn a_missing_server_address_is_an_error_naming_it() {
    let pair = Pair::new();
    let (server, client) = pair.sites();
    let config = TcpRr {
        addr: SocketAddr::from(([10, 9, 0, 3], 7006)),
        request: 1,
        response: 1,
        connections: 2,
        stop: Stop::Count(1),
    };
    let error = tcp_rr(&server, &client, &config).unwrap_err().to_string();
    assert!(error.starts_with("tcp_rr: bind 10.9.0.3:7006:"), "{error}");
}

#[test]
fn a_client_that_cannot_connect_stops_the_server() {
    let pair = Pair::new();
    let (server, mut client) = pair.sites();
    // A namespace with no interface up: 10.9.0.2 is unreachable from there.
    let elsewhere = NetNs::new().unwrap();
    client.netns = Some(elsewhere.path().to_owned());
    let config = TcpStream {
        addr: addr(7007),
        message: 10,
        write: 10,
        connections: 2,
        stop: Stop::Count(10),
    };
    let error = tcp_stream(&server, &client, &config)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("tcp_stream: connect to 10.9.0.2:7007:"),
        "{error}"
    );
}

#[test]
fn a_cpu_out_of_range_is_an_error() {
    let pair = Pair::new();
    let (server, mut client) = pair.sites();
    client.cpus = vec![100_000];
    let config = UdpEcho {
        generator: Generator::Socket,
        addr: addr(7008),
        pps: 10,
        size: 16,
        stop: Stop::Count(1),
    };
    let error = udp_echo(&server, &client, &config).unwrap_err().to_string();
    assert!(error.starts_with("pin a thread to CPU 100000"), "{error}");
}
