//! Runs the lab's `tcp_rr` against `sockperf ping-pong` and its `tcp_stream` against `iperf3`
//! between two network namespaces joined by a veth pair, and prints the ratios (the goal is
//! at least 0.9: the generators must not be the bottleneck). Needs root, sockperf and iperf3.
//!
//! `cargo run --release -p lab --example workload_vs_reference -- [SECONDS]`

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use lab::workloads::{Site, Stop, TcpRr, TcpStream, tcp_rr, tcp_stream};
use testkit::NetNs;

const SERVER: &str = "10.9.0.2";
const SERVER_CPU: usize = 1;
const CLIENT_CPU: usize = 0;

fn main() -> anyhow::Result<()> {
    let seconds: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse().context("SECONDS must be a whole number")?,
        None => 5,
    };
    let client = NetNs::new()?;
    let server = NetNs::new()?;
    let veth = testkit::unique_name();
    client.ip(&format!(
        "link add {veth} type veth peer name eth0 netns {}",
        server.name()
    ))?;
    client.ip(&format!("addr add 10.9.0.1/24 dev {veth}"))?;
    client.ip(&format!("link set {veth} up"))?;
    server.ip(&format!("addr add {SERVER}/24 dev eth0"))?;
    server.ip("link set eth0 up")?;
    let site = |ns: &NetNs, cpu| Site {
        netns: Some(ns.path().to_owned()),
        cpus: vec![cpu],
    };
    let (server_site, client_site) = (site(&server, SERVER_CPU), site(&client, CLIENT_CPU));
    let window = Duration::from_secs(seconds);

    let rr = TcpRr {
        addr: SocketAddr::new(SERVER.parse()?, 7100),
        request: 64,
        response: 64,
        connections: 1,
        stop: Stop::After(window),
    };
    let ours = tcp_rr(&server_site, &client_site, &rr)?.rate();
    let reference = sockperf(&server, &client, seconds)?;
    println!(
        "tcp_rr 64 B, 1 connection: lab {ours:.0} round trips/s, sockperf ping-pong \
         {reference:.0}/s, ratio {:.3}",
        ours / reference
    );

    let stream = TcpStream {
        addr: SocketAddr::new(SERVER.parse()?, 7200),
        message: 131_072,
        write: 131_072,
        connections: 1,
        stop: Stop::After(window),
    };
    let ours = tcp_stream(&server_site, &client_site, &stream)?.rate() * 8.0;
    let reference = iperf3(&server, &client, seconds)?;
    println!(
        "tcp_stream 128 KiB writes, 1 connection: lab {:.2} Gbit/s, iperf3 {:.2} Gbit/s, \
         ratio {:.3}",
        ours / 1e9,
        reference / 1e9,
        ours / reference
    );
    Ok(())
}

/// Runs `taskset -c CPU PROGRAM ARGS` inside `ns`, returning the child (a server) or waiting.
fn spawn(ns: &NetNs, cpu: usize, program: &str, args: &str) -> anyhow::Result<std::process::Child> {
    let args: Vec<String> = args.split(' ').map(str::to_owned).collect();
    ns.run(|| {
        Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {program}"))
    })?
}

fn finish(child: std::process::Child, what: &str) -> anyhow::Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output()?;
    if !status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&stderr));
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Round trips per second of `sockperf ping-pong` over TCP, 64-byte messages.
fn sockperf(server: &NetNs, client: &NetNs, seconds: u64) -> anyhow::Result<f64> {
    let mut listening = spawn(
        server,
        SERVER_CPU,
        "sockperf",
        &format!("sr --tcp -i {SERVER} -p 7300"),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let run = spawn(
        client,
        CLIENT_CPU,
        "sockperf",
        &format!("pp --tcp -i {SERVER} -p 7300 -m 64 -t {seconds}"),
    )
    .and_then(|c| finish(c, "sockperf pp"));
    let _ = listening.kill();
    let _ = listening.wait();
    let text = run?;
    // "[Valid Duration] RunTime=4.999 sec; SentMessages=123; ReceivedMessages=123"
    let line = text
        .lines()
        .find(|l| l.contains("Valid Duration"))
        .with_context(|| format!("no result in sockperf's output:\n{text}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let rest = line
            .split(name)
            .nth(1)
            .with_context(|| format!("no {name} in `{line}`"))?;
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        number
            .parse()
            .with_context(|| format!("bad {name} in `{line}`"))
    };
    Ok(field("ReceivedMessages=")? / field("RunTime=")?)
}

/// Bits per second received by an `iperf3` server, one stream of 128 KiB writes.
fn iperf3(server: &NetNs, client: &NetNs, seconds: u64) -> anyhow::Result<f64> {
    let listening = spawn(
        server,
        SERVER_CPU,
        "iperf3",
        &format!("-s -1 -B {SERVER} -p 7400"),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let run = spawn(
        client,
        CLIENT_CPU,
        "iperf3",
        &format!("-c {SERVER} -p 7400 -t {seconds} -J"),
    )
    .and_then(|c| finish(c, "iperf3 -c"));
    let served = finish(listening, "iperf3 -s");
    let json: serde_json::Value = serde_json::from_str(&run?).context("iperf3's JSON")?;
    served?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's JSON")
}
