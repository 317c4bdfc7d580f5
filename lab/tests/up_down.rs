//! `lab up` / `lab down` against the real kernel (root). Every test brings up its own copy of
//! a shipped topology under a unique lab name and state directory, and removes it even when
//! it fails.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use common::{TestLab, in_ns};

fn ping(ns: &str, to: &str) -> anyhow::Result<()> {
    let out = in_ns(ns, || {
        Command::new("ping").args(["-c1", "-W2", to]).output()
    })??;
    ensure!(
        out.status.success(),
        "ping {to} from {ns}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// Pings until an answer comes or `within` has passed. After a link comes back up, the
/// router's neighbour entry for the far host can still be the one that started resolving
/// while the link was down: it fails once its probes run out (the kernel answers the queued
/// packet with "Destination Host Unreachable") and the next packet resolves afresh, so
/// traffic is restored within a few seconds, not at once.
fn ping_within(ns: &str, to: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match ping(ns, to) {
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("for {within:?}")));
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
            Ok(()) => return Ok(()),
        }
    }
}

/// Sends 1 MiB of patterned bytes over TCP from `client_ns` to `server_ns` at `addr` and
/// checks that they arrive intact.
fn tcp_transfer(server_ns: &str, client_ns: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let listener = in_ns(server_ns, || TcpListener::bind(addr))??;
    let receiver = thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut stream, _) = listener.accept()?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got)?;
        Ok(got)
    });
    in_ns(client_ns, || -> std::io::Result<()> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.write_all(&payload)
    })??;
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    ensure!(got == payload, "TCP payload corrupted: {} bytes", got.len());
    Ok(())
}

#[test]
fn line_3_routes_v4_and_v6_through_the_router() -> anyhow::Result<()> {
    let lab = TestLab::shipped("line-3.toml")?;
    lab.up()?;
    let (client, server) = (lab.ns("client"), lab.ns("server"));
    ping(&client, "10.78.2.2")?;
    ping(&client, "fd78:2::2")?;
    ping(&server, "10.78.1.2")?;
    tcp_transfer(&server, &client, "10.78.2.2:5001".parse()?)?;
    tcp_transfer(&server, &client, "[fd78:2::2]:5001".parse()?)?;
    Ok(())
}

/// The host's IPv4 forwarding switched on until dropped, and restored then (also when the test
/// fails). Writing `ip_forward` also sets `conf.all.accept_redirects` to its opposite, so that
/// is restored too, after it.
struct HostForwarding {
    saved: Vec<(&'static str, String)>,
}

impl HostForwarding {
    const KNOBS: [&str; 2] = [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv4/conf/all/accept_redirects",
    ];

    fn on() -> anyhow::Result<Self> {
        let saved = Self::KNOBS
            .iter()
            .map(|knob| Ok((*knob, std::fs::read_to_string(knob)?.trim().to_owned())))
            .collect::<anyhow::Result<_>>()?;
        let guard = Self { saved };
        std::fs::write(Self::KNOBS[0], "1")?;
        Ok(guard)
    }
}

impl Drop for HostForwarding {
    fn drop(&mut self) {
        for (knob, value) in &self.saved {
            if let Err(e) = std::fs::write(knob, value) {
                eprintln!("restoring {knob} to {value}: {e}");
            }
        }
    }
}

/// Writes `value` to each of `knobs` (paths under /proc/sys) inside namespace `ns`.
fn sysctls(ns: &str, knobs: &[&str], value: &str) -> anyhow::Result<()> {
    in_ns(ns, || -> std::io::Result<()> {
        for knob in knobs {
            std::fs::write(knob, value)?;
        }
        Ok(())
    })??;
    Ok(())
}

/// Runs `ip ARGS` inside namespace `ns`.
fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = in_ns(ns, || Command::new("ip").args(args).output())??;
    ensure!(
        out.status.success(),
        "ip {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn only_the_router_forwards_also_on_a_host_that_forwards() -> anyhow::Result<()> {
    let lab = TestLab::shipped("line-3.toml")?;
    {
        // A new namespace copies the host's IPv4 settings when it is made: during `lab up`.
        let _host = HostForwarding::on()?;
        lab.up()?;
    }
    let (client, router, server) = (lab.ns("client"), lab.ns("router"), lab.ns("server"));
    for (node, ns, want) in [
        ("client", &client, (false, false)),
        ("router", &router, (true, true)),
        ("server", &server, (false, false)),
    ] {
        let forwarding = lab_netlink::Netns::open(ns)?.forwarding()?;
        assert_eq!(forwarding, want, "{node}: (IPv4, IPv6) forwarding");
    }
    // The router forwards between client and server.
    ping(&client, "10.78.2.2")?;
    ping(&client, "fd78:2::2")?;

    // The client does not: the router sends its own packets for the server through the client
    // (a policy route for locally made packets), so they come back only if the client forwards
    // them. The router takes back packets from its own addresses (accept_local, no rp_filter).
    ip(
        &router,
        &[
            "route",
            "add",
            "10.78.2.2/32",
            "via",
            "10.78.1.2",
            "table",
            "100",
        ],
    )?;
    ip(
        &router,
        &["rule", "add", "iif", "lo", "lookup", "100", "pref", "100"],
    )?;
    ip(
        &router,
        &[
            "-6",
            "route",
            "add",
            "fd78:2::2/128",
            "via",
            "fd78:1::2",
            "table",
            "100",
        ],
    )?;
    ip(
        &router,
        &[
            "-6", "rule", "add", "iif", "lo", "lookup", "100", "pref", "100",
        ],
    )?;
    let conf = "/proc/sys/net/ipv4/conf";
    sysctls(
        &router,
        &[
            &format!("{conf}/all/accept_local"),
            &format!("{conf}/eth0/accept_local"),
        ],
        "1",
    )?;
    sysctls(
        &router,
        &[
            &format!("{conf}/all/rp_filter"),
            &format!("{conf}/eth0/rp_filter"),
        ],
        "0",
    )?;
    assert!(
        ping(&router, "10.78.2.2").is_err(),
        "the client forwarded IPv4"
    );
    assert!(
        ping(&router, "fd78:2::2").is_err(),
        "the client forwarded IPv6"
    );
    // The detour itself works once the client forwards.
    lab_netlink::Netns::open(&client)?.set_forwarding(true)?;
    ping(&router, "10.78.2.2")?;
    ping(&router, "fd78:2::2")?;
    Ok(())
}

#[test]
fn star_100_hosts_reach_each_other_across_the_bridge() -> anyhow::Result<()> {
    let lab = TestLab::shipped("star-100.toml")?;
    lab.up()?;
    let status: serde_json::Value = serde_json::from_str(&lab.lab_ok(&["status", "--json"])?)?;
    let nodes = status[0]["nodes"].as_array().context("nodes")?;
    assert_eq!(nodes.len(), 101, "100 hosts and the bridge's namespace");
    assert!(nodes.iter().all(|n| n["present"] == true), "{status}");
    // Addresses come from the pool: ask the kernel for h100's, then reach it from h1.
    let out = in_ns(&lab.ns("h100"), || {
        Command::new("ip")
            .args(["-j", "addr", "show", "eth0"])
            .output()
    })??;
    let addrs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut reached = 0;
    for info in addrs[0]["addr_info"].as_array().context("addr_info")? {
        let ip = info["local"].as_str().context("local")?;
        if !ip.starts_with("fe80") {
            ping(&lab.ns("h1"), ip)?;
            reached += 1;
        }
    }
    assert_eq!(reached, 2, "h100 has a v4 and a v6 address: {addrs}");
    Ok(())
}

#[test]
fn a_lab_that_is_up_is_refused_and_others_do_not_collide() -> anyhow::Result<()> {
    let first = TestLab::shipped("line-3.toml")?;
    let second = TestLab::shipped("line-3.toml")?;
    first.up()?;
    second.up()?;
    let again = first.lab(&["up", first.file_arg()?])?;
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already up"),
        "{again:?}"
    );
    assert_eq!(
        first.namespaces_left()?.len(),
        3,
        "the refused `up` changed nothing"
    );
    ping(&first.ns("client"), "10.78.2.2")?;
    first.lab_ok(&["down", &first.name])?;
    assert!(first.namespaces_left()?.is_empty());
    assert_eq!(
        second.namespaces_left()?.len(),
        3,
        "the other lab is untouched"
    );
    ping(&second.ns("client"), "fd78:2::2")?;
    Ok(())
}

#[test]
fn repeated_up_down_cycles_leave_nothing() -> anyhow::Result<()> {
    let lab = TestLab::shipped("line-3.toml")?;
    for cycle in 0..20 {
        lab.up().with_context(|| format!("cycle {cycle}"))?;
        lab.lab_ok(&["down", &lab.name])?;
        let left = lab.namespaces_left()?;
        ensure!(left.is_empty(), "cycle {cycle} left {left:?}");
    }
    Ok(())
}

#[test]
fn impairments_apply_with_netem_or_fail_cleanly_without_it() -> anyhow::Result<()> {
    let lab = TestLab::shipped("two-hosts.toml")?;
    let out = lab.lab(&["up", lab.file_arg()?])?;
    let config = Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null | grep -E '^CONFIG_NET_SCH_NETEM=(y|m)'",
        ])
        .output()?;
    if config.status.success() {
        assert!(out.status.success(), "{out:?}");
        let qdisc = in_ns(&lab.ns("client"), || {
            Command::new("tc")
                .args(["-j", "qdisc", "show", "dev", "eth0"])
                .output()
        })??;
        let text = String::from_utf8_lossy(&qdisc.stdout);
        assert!(text.contains("netem"), "{text}");
    } else {
        // This kernel has no netem: the failure names it and nothing is left behind.
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("netem"), "{stderr}");
        assert!(lab.namespaces_left()?.is_empty(), "half-built lab left");
        let status = lab.lab_ok(&["status"])?;
        assert!(status.contains("no lab is up"), "{status}");
    }
    Ok(())
}

#[test]
fn down_all_recovers_after_kill_during_up() -> anyhow::Result<()> {
    // A prefix of its own: `down --all` must not touch labs of parallel tests.
    let prefix = format!("k{:03}", std::process::id() % 1000);
    let lab = TestLab::shipped_with_prefix("star-100.toml", &prefix)?;
    let state_dir = lab.state_dir();
    let mut child = lab.command(&["up", lab.file_arg()?])?.spawn()?;
    // Kill it once it has started making namespaces (or after 2 s at most).
    let deadline = Instant::now() + Duration::from_secs(2);
    while lab.namespaces_left()?.len() < 5 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    child.kill()?;
    child.wait()?;
    lab.lab_ok(&["down", "--all"])?;
    assert!(
        lab.namespaces_left()?.is_empty(),
        "{:?}",
        lab.namespaces_left()?
    );
    let host_links = Command::new("ip").args(["-j", "link", "show"]).output()?;
    assert!(
        !String::from_utf8_lossy(&host_links.stdout).contains(&format!("\"{prefix}")),
        "host links of prefix {prefix} left"
    );
    assert!(!state_dir.join(&prefix).exists(), "state left");
    Ok(())
}

#[test]
fn invalid_topology_exits_2_and_creates_nothing() -> anyhow::Result<()> {
    let lab = TestLab::shipped("line-3.toml")?;
    let text = std::fs::read_to_string(&lab.file)?;
    std::fs::write(
        &lab.file,
        text.replacen("router:eth1", "nosuchnode:eth1", 1),
    )?;
    let out = lab.lab(&["up", lab.file_arg()?])?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown node `nosuchnode`"), "{stderr}");
    assert!(
        stderr.contains("line-3.toml:"),
        "diagnostic names the file: {stderr}"
    );
    assert!(lab.namespaces_left()?.is_empty());
    Ok(())
}

#[test]
fn link_down_and_up_cut_and_restore_traffic() -> anyhow::Result<()> {
    let lab = TestLab::shipped("line-3.toml")?;
    lab.up()?;
    let client = lab.ns("client");
    ping(&client, "10.78.2.2")?;
    lab.lab_ok(&["link", "down", "server:eth0", "--lab", &lab.name])?;
    assert!(
        ping(&client, "10.78.2.2").is_err(),
        "traffic crossed a link that is down"
    );
    lab.lab_ok(&["link", "up", "server:eth0", "--lab", &lab.name])?;
    ping_within(&client, "10.78.2.2", Duration::from_secs(10))?;

    let bad = lab.lab(&["link", "down", "server:eth9", "--lab", &lab.name])?;
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no link endpoint server:eth9"),
        "{bad:?}"
    );
    let bad = lab.lab(&["link", "set", "server:eth0", "--delay", "5 parsecs"])?;
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a bad unit is a usage error: {bad:?}"
    );
    Ok(())
}
