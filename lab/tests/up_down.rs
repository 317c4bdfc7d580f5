//! `lab up` / `lab down` against the real kernel (root). Every test brings up its own copy of
//! a shipped topology under a unique lab name and state directory, and removes it even when
//! it fails.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};

/// A shipped topology copied under a unique lab name, with its own state directory; `Drop`
/// runs `lab down` for it.
struct TestLab {
    name: String,
    prefix: String,
    dir: PathBuf,
    file: PathBuf,
}

impl TestLab {
    fn new(topology: &str) -> anyhow::Result<Self> {
        Self::with_prefix(topology, "dgl")
    }

    fn with_prefix(topology: &str, prefix: &str) -> anyhow::Result<Self> {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scenarios/topologies")
            .join(format!("{topology}.toml"));
        let text = std::fs::read_to_string(&shipped)?;
        let name = testkit::unique_name();
        let renamed = text.replacen(
            &format!("name = \"{topology}\""),
            &format!("name = \"{name}\""),
            1,
        );
        ensure!(renamed != text, "{} has no name line", shipped.display());
        let dir = std::env::temp_dir().join(format!("lab-test-{name}"));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!("{topology}.toml"));
        std::fs::write(&file, renamed)?;
        Ok(Self {
            name,
            prefix: prefix.to_owned(),
            dir,
            file,
        })
    }

    fn lab(&self, args: &[&str]) -> anyhow::Result<Output> {
        let state_dir = self.dir.join("state");
        let mut command = Command::new(env!("CARGO_BIN_EXE_lab"));
        command.args(args).args([
            "--state-dir",
            state_dir.to_str().context("utf-8 path")?,
            "--prefix",
            &self.prefix,
        ]);
        Ok(command.output()?)
    }

    fn lab_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.lab(args)?;
        ensure!(
            out.status.success(),
            "lab {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    fn up(&self) -> anyhow::Result<String> {
        self.lab_ok(&["up", self.file.to_str().context("utf-8 path")?])
    }

    fn ns(&self, node: &str) -> String {
        format!("{}-{}.{node}", self.prefix, self.name)
    }

    /// Namespaces of this lab that exist now.
    fn namespaces_left(&self) -> anyhow::Result<Vec<String>> {
        let start = format!("{}-{}.", self.prefix, self.name);
        Ok(lab_netlink::Netns::list()?
            .into_iter()
            .filter(|n| n.starts_with(&start))
            .collect())
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = self.lab_ok(&["down", &self.name]) {
            eprintln!("cleanup of lab {}: {e}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    Ok(lab_netlink::Netns::open(ns)?.run(f)?)
}

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
    let lab = TestLab::new("line-3")?;
    lab.up()?;
    let (client, server) = (lab.ns("client"), lab.ns("server"));
    ping(&client, "10.78.2.2")?;
    ping(&client, "fd78:2::2")?;
    ping(&server, "10.78.1.2")?;
    tcp_transfer(&server, &client, "10.78.2.2:5001".parse()?)?;
    tcp_transfer(&server, &client, "[fd78:2::2]:5001".parse()?)?;
    Ok(())
}

#[test]
fn star_100_hosts_reach_each_other_across_the_bridge() -> anyhow::Result<()> {
    let lab = TestLab::new("star-100")?;
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
    let first = TestLab::new("line-3")?;
    let second = TestLab::new("line-3")?;
    first.up()?;
    second.up()?;
    let again = first.lab(&["up", first.file.to_str().context("utf-8")?])?;
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
    let lab = TestLab::new("line-3")?;
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
    let lab = TestLab::new("two-hosts")?;
    let out = lab.lab(&["up", lab.file.to_str().context("utf-8")?])?;
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
    let lab = TestLab::with_prefix("star-100", &prefix)?;
    let state_dir = lab.dir.join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args([
            "up",
            lab.file.to_str().context("utf-8")?,
            "--prefix",
            &prefix,
        ])
        .args(["--state-dir", state_dir.to_str().context("utf-8")?])
        .spawn()?;
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
    let lab = TestLab::new("line-3")?;
    let text = std::fs::read_to_string(&lab.file)?;
    std::fs::write(
        &lab.file,
        text.replacen("router:eth1", "nosuchnode:eth1", 1),
    )?;
    let out = lab.lab(&["up", lab.file.to_str().context("utf-8")?])?;
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
    let lab = TestLab::new("line-3")?;
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
