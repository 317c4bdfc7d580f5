//! The HTTP filter on a real interface: two namespaces joined by a veth, a small HTTP server in
//! one, requests from the other. Blocked requests get no answer, the rest do, and the counters
//! say so; the CLI attaches, swaps the policy live, reports and detaches. Needs root.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use accel::{
    AttachMode,
    http_filter::{HttpFilter, Policy},
    pin::{BPFFS, PinLayout},
};
use anyhow::{Context as _, ensure};
use testkit::{NetNs, VethPair};

const PORT: u16 = 8080;
const POLICY: &str = r#"
[[ports]]
name = "web"
ports = [8080]
allowed_methods = ["GET", "HEAD"]

[[paths]]
name = "admin"
ports = [8080]
prefix = "/admin"
action = "drop"

[[paths]]
name = "watch"
ports = [8080]
prefix = "/watch"
action = "monitor"
"#;

/// Client and server namespaces joined by a veth; the server side is `<server>s`.
struct Lab {
    client: NetNs,
    server: NetNs,
    server_iface: String,
    server_addr: SocketAddr,
}

fn lab(subnet: u8) -> anyhow::Result<Lab> {
    let VethPair {
        client,
        server,
        server_if,
        ..
    } = VethPair::new(
        &[&format!("10.{subnet}.0.2/24")],
        &[&format!("10.{subnet}.0.1/24")],
        None,
    )?;
    Ok(Lab {
        client,
        server,
        server_iface: server_if,
        server_addr: SocketAddr::from(([10, subnet, 0, 2], PORT)),
    })
}

/// A tiny HTTP/1.1 server answering every request with `200 OK`, stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<Self> {
        // The socket belongs to the namespace it was made in, whichever thread serves it.
        let listener = ns.run(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        thread::spawn(move || serve(conn));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `METHOD path` from the client namespace: `Some(status line)` if an answer came within
/// `wait`, `None` if none did.
fn request(lab: &Lab, method: &str, path: &str, wait: Duration) -> anyhow::Result<Option<String>> {
    let addr = lab.server_addr;
    let mut conn = lab
        .client
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?
        .with_context(|| format!("connect to {addr}"))?;
    conn.set_read_timeout(Some(wait))?;
    conn.write_all(format!("{method} {path} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((!answer.is_empty()).then(|| {
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    }))
}

const OK: &str = "HTTP/1.1 200 OK";
const ANSWER: Duration = Duration::from_secs(3);
const SILENCE: Duration = Duration::from_millis(1200);

/// The XDP program id the kernel reports for `iface` (`ip -d -j link show`), if any.
fn xdp_prog_on(ns: &NetNs, iface: &str) -> anyhow::Result<Option<u64>> {
    let out = ns.run(|| {
        Command::new("ip")
            .args(["-d", "-j", "link", "show", iface])
            .output()
    })??;
    ensure!(out.status.success(), "ip link show {iface}: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(json[0]["xdp"]["prog"]["id"].as_u64())
}

/// Waits until the kernel has neither `programs` loaded nor links to them.
fn wait_released(programs: &BTreeSet<u32>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut held = Vec::new();
        // Objects freed while being listed fail to open: they are gone, which is the point.
        for p in aya::programs::loaded_programs().flatten() {
            let id = p.id();
            if programs.contains(&id) {
                held.push(id);
            }
        }
        for l in aya::programs::loaded_links().flatten() {
            if programs.contains(&l.program_id()) {
                held.push(l.id());
            }
        }
        if held.is_empty() {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "kernel still holds {held:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn blocked_paths_get_no_answer_and_counters_match() -> anyhow::Result<()> {
    let lab = lab(81)?;
    let _server = Server::start(&lab.server, lab.server_addr)?;
    let policy = Policy::parse(POLICY).map_err(anyhow::Error::msg)?;
    let iface = lab.server_iface.clone();
    let filter = lab
        .server
        .run(|| HttpFilter::attach(&iface, AttachMode::Auto, &policy))??;
    let prog_id = filter.program_id()?;
    ensure!(xdp_prog_on(&lab.server, &lab.server_iface)? == Some(u64::from(prog_id)));

    for path in ["/", "/index.html", "/adm", "/public/admin"] {
        ensure!(
            request(&lab, "GET", path, ANSWER)?.as_deref() == Some(OK),
            "GET {path}"
        );
    }
    ensure!(request(&lab, "HEAD", "/", ANSWER)?.as_deref() == Some(OK));
    ensure!(
        request(&lab, "GET", "/watch/me", ANSWER)?.as_deref() == Some(OK),
        "monitor passes"
    );
    for (method, path) in [
        ("GET", "/admin"),
        ("GET", "/admin/users"),
        ("POST", "/form"),
    ] {
        ensure!(
            request(&lab, method, path, SILENCE)?.is_none(),
            "{method} {path} was answered"
        );
    }

    let stats = filter.stats()?;
    let total = stats.total();
    let hits = |name| stats.rule_hits(name).unwrap_or(0);
    // Retransmissions of a dropped request are dropped again: at least one drop per request.
    ensure!(hits("admin") >= 2 && hits("web") >= 1, "{stats:?}");
    ensure!(
        total.dropped == hits("admin") + hits("web"),
        "{total:?} vs {:?}",
        stats.rules
    );
    ensure!(hits("watch") == 1 && total.monitored == 1, "{total:?}");
    // Passed requests: the six answered ones.
    ensure!(total.http_requests - total.dropped == 6, "{total:?}");
    ensure!(total.parse_failures == 0, "{total:?}");
    ensure!(total.packets == total.passed + total.dropped, "{total:?}");

    drop(filter);
    ensure!(
        xdp_prog_on(&lab.server, &lab.server_iface)?.is_none(),
        "still attached"
    );
    wait_released(&BTreeSet::from([prog_id]))?;
    ensure!(
        request(&lab, "GET", "/admin", ANSWER)?.as_deref() == Some(OK),
        "after detach"
    );
    Ok(())
}

fn accel(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(args)
        .output()
        .context("run accel")
}

fn accel_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = accel(args)?;
    ensure!(
        out.status.success(),
        "accel {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn cli_attach_policy_stats_detach() -> anyhow::Result<()> {
    let lab = lab(82)?;
    let _server = Server::start(&lab.server, lab.server_addr)?;
    let prefix = testkit::PinPrefix::new();
    let dir = std::env::temp_dir().join(testkit::unique_name());
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> anyhow::Result<()> {
        let strict = dir.join("strict.toml");
        std::fs::write(&strict, POLICY)?;
        let open = dir.join("open.toml");
        std::fs::write(&open, "[[ports]]\nname = \"web\"\nports = [8080]\n")?;
        let (strict, open) = (
            strict.to_str().context("path")?,
            open.to_str().context("path")?,
        );
        let iface = lab.server_iface.as_str();
        let with = |rest: &[&str]| -> Vec<String> {
            [
                "--prefix",
                prefix.name(),
                "--netns",
                lab.server.name(),
                "http-filter",
            ]
            .iter()
            .chain(rest)
            .chain(&["--iface", iface])
            .map(|s| (*s).to_owned())
            .collect()
        };
        let run =
            |rest: &[&str]| accel_ok(&with(rest).iter().map(String::as_str).collect::<Vec<_>>());

        run(&["attach", "--policy", strict])?;
        let layout = PinLayout::new(BPFFS, prefix.name());
        ensure!(
            layout
                .attachment_dir("http_filter", lab.server.name(), iface)
                .is_dir()
        );
        let prog_id = xdp_prog_on(&lab.server, iface)?.context("no XDP program after attach")?;
        let again = accel(
            &with(&["attach", "--policy", strict])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        ensure!(again.status.code() == Some(1), "{again:?}");
        ensure!(String::from_utf8_lossy(&again.stderr).contains("already attached"));

        ensure!(
            request(&lab, "GET", "/admin", SILENCE)?.is_none(),
            "blocked under strict"
        );
        ensure!(request(&lab, "GET", "/", ANSWER)?.as_deref() == Some(OK));

        // A bad policy is refused with the file and rule named, and changes nothing.
        let bad = dir.join("bad.toml");
        std::fs::write(
            &bad,
            "[[ports]]\nports = [8080]\n[[paths]]\nname = \"x\"\nports = [9]\nprefix = \"/\"\naction = \"drop\"\n",
        )?;
        let out = accel(
            &with(&["policy", "--policy", bad.to_str().context("path")?])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1)
                && stderr.contains("bad.toml")
                && stderr.contains("paths[0] (\"x\")"),
            "{stderr}"
        );

        run(&["policy", "--policy", open])?;
        ensure!(
            xdp_prog_on(&lab.server, iface)? == Some(prog_id),
            "policy change re-attached"
        );
        ensure!(
            request(&lab, "GET", "/admin", ANSWER)?.as_deref() == Some(OK),
            "open policy"
        );

        let json: serde_json::Value = serde_json::from_str(&run(&["stats", "--json"])?)?;
        ensure!(json["iface"] == iface, "{json}");
        // Global counters run on across policy changes; rule hits restart with the new rules.
        let dropped = json["total"]["dropped"].as_u64().context("dropped")?;
        ensure!(dropped >= 1, "drops of the strict phase: {json}");
        ensure!(
            json["total"]["http_requests"].as_u64() >= Some(dropped + 2),
            "{json}"
        );
        ensure!(json["rules"][0]["hits"] == 0, "{json}");
        let rules = json["rules"].as_array().context("rules")?;
        ensure!(rules.len() == 1 && rules[0]["name"] == "web", "{json}");
        let table = run(&["stats"])?;
        ensure!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some("all")),
            "{table}"
        );

        run(&["detach"])?;
        ensure!(
            !layout.root().exists(),
            "pins left at {}",
            layout.root().display()
        );
        ensure!(
            xdp_prog_on(&lab.server, iface)?.is_none(),
            "still attached after detach"
        );
        wait_released(&BTreeSet::from([u32::try_from(prog_id)?]))?;
        let after = accel(
            &with(&["stats"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        ensure!(after.status.code() == Some(1));
        ensure!(String::from_utf8_lossy(&after.stderr).contains("not attached"));
        Ok(())
    })();
    std::fs::remove_dir_all(&dir)?;
    result
}
