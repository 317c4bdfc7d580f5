//! The monitor against a real kernel: counts on a veth in a fresh namespace, the pinned CLI
//! life cycle, and detach checked through the kernel's own lists. Needs root.

use std::{
    collections::BTreeSet,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use accel::{
    Error,
    monitor::{AttachMode, Counters, Flavour, Monitor, PinnedMonitor},
    pin::{BPFFS, PinLayout},
};
use anyhow::{Context as _, ensure};
use testkit::{NetNs, VethPair};

/// Tracepoints every kernel has (the optional ones come on top).
const REQUIRED_TRACEPOINTS: usize = 7;

/// Frames sent per test: 60-byte broadcast frames of an IEEE "local experimental" ethertype.
const FRAMES: usize = 25;
const FRAME_LEN: usize = 60;

fn test_frame() -> [u8; FRAME_LEN] {
    let mut frame = [0u8; FRAME_LEN];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    frame
}

/// A namespace holding a veth pair `<ns>a` ↔ `<ns>b`, both up, with IPv6 off so that only the
/// test's own frames cross it.
fn veth_lab() -> anyhow::Result<(NetNs, String, String)> {
    let ns = NetNs::new()?;
    let (a, b) = (format!("{}a", ns.name()), format!("{}b", ns.name()));
    ns.run(testkit::disable_ipv6_autoconf)??;
    ns.ip(&format!("link add {a} type veth peer name {b}"))?;
    ns.ip(&format!("link set {a} up"))?;
    ns.ip(&format!("link set {b} up"))?;
    Ok((ns, a, b))
}

/// Polls `read` until `done` holds or 5 s pass (XDP on veth runs asynchronously in NAPI).
fn wait_for(
    mut read: impl FnMut() -> anyhow::Result<Counters>,
    done: impl Fn(&Counters) -> bool,
) -> anyhow::Result<Counters> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counters = read()?;
        if done(&counters) || Instant::now() > deadline {
            return Ok(counters);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What the kernel still holds of `programs`: the ids among them still loaded, and the ids
/// of BPF links attaching any of them.
fn kernel_holds(programs: &BTreeSet<u32>) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    let mut loaded = Vec::new();
    // Objects of parallel tests freed while being listed fail to open: skip them.
    for p in aya::programs::loaded_programs().flatten() {
        let id = p.id();
        if programs.contains(&id) {
            loaded.push(id);
        }
    }
    let mut links = Vec::new();
    for l in aya::programs::loaded_links().flatten() {
        if programs.contains(&l.program_id()) {
            links.push(l.id());
        }
    }
    Ok((loaded, links))
}

/// Waits until the kernel holds none of `programs` (freeing is RCU-deferred).
fn wait_released(programs: &BTreeSet<u32>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let held = kernel_holds(programs)?;
        if held == (vec![], vec![]) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "kernel still holds (programs, links) {held:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

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

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    let ret = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        ret == 0,
        "pin to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The CPUs this process may run on, at most two (the test pins senders to each).
fn usable_cpus() -> Vec<usize> {
    (0..aya::util::nr_cpus().unwrap_or(1))
        .filter(|&cpu| {
            thread::spawn(move || pin_to_cpu(cpu).is_ok())
                .join()
                .unwrap_or(false)
        })
        .take(2)
        .collect()
}

#[test]
fn packets_are_counted_on_the_cpu_that_received_them_and_only_on_the_interface()
-> anyhow::Result<()> {
    let (ns, a, b) = veth_lab()?;
    // A second namespace whose veth most likely has the same interface index as `a`: the
    // scope must tell namespaces apart, not only indexes.
    let (other, _, other_b) = veth_lab()?;
    let frame = test_frame();
    let cpus = usable_cpus();
    ensure!(!cpus.is_empty(), "no CPU to pin to");

    let monitor = ns.run(|| Monitor::attach(&a, None))??;
    ensure!(monitor.xdp_mode().is_none(), "XDP counter is opt-in");
    assert_eq!(monitor.flavour(), Flavour::TpBtf, "the host kernel has BTF");
    assert!(monitor.scoped());
    let ours: BTreeSet<u32> = monitor.program_ids()?.into_iter().collect();
    let (loaded, links) = kernel_holds(&ours)?;
    assert_eq!(
        (loaded.len(), links.len()),
        (monitor.tracepoints().len(), monitor.tracepoints().len()),
        "one tracepoint program and link each: {:?}",
        monitor.tracepoints()
    );
    for tp in [
        "netif_receive_skb",
        "softirq_entry",
        "softirq_exit",
        "tcp_retransmit_skb",
    ] {
        assert!(monitor.tracepoints().contains(&tp), "{tp} not attached");
    }

    for (round, &cpu) in cpus.iter().enumerate() {
        let before = monitor.stats()?;
        // Frames for `a` from CPU `cpu`; frames the other way and into the other namespace's
        // twin interface must not count.
        ns.run(|| -> anyhow::Result<()> {
            pin_to_cpu(cpu)?;
            testkit::send_frames(&b, &frame, FRAMES)?;
            testkit::send_frames(&a, &frame, FRAMES)
        })??;
        other.run(|| -> anyhow::Result<()> {
            pin_to_cpu(cpu)?;
            testkit::send_frames(&other_b, &frame, FRAMES)
        })??;
        wait_for(
            || Ok(monitor.stats()?.since(&before).total()),
            |c| c.kernel.rx_packets >= FRAMES as u64,
        )?;
        thread::sleep(Duration::from_millis(200));
        let delta = monitor.stats()?.since(&before);
        let on_cpu = delta.per_cpu[cpu].counters;
        assert_eq!(
            delta.total().kernel.rx_packets,
            FRAMES as u64,
            "round {round}: only the frames received on {a}: {delta:?}"
        );
        assert_eq!(
            on_cpu.kernel.rx_packets, FRAMES as u64,
            "round {round}: all on CPU {cpu}: {delta:?}"
        );
        // skb->len at netif_receive_skb: the Ethernet header is pulled already.
        assert_eq!(on_cpu.kernel.rx_bytes, (FRAMES * (FRAME_LEN - 14)) as u64);
        assert!(
            on_cpu.kernel.net_rx_softirqs >= 1 && on_cpu.kernel.net_rx_softirq_ns > 0,
            "round {round}: the backlog ran in a NET_RX softirq on CPU {cpu}: {on_cpu:?}"
        );
    }

    drop(monitor);
    wait_released(&ours)?;
    Ok(())
}

/// Streams `bytes` over TCP from `client` to `server` (10.88.0.2:PORT), both in their own
/// namespace.
fn tcp_transfer(server: &NetNs, client: &NetNs, bytes: usize) -> anyhow::Result<()> {
    const PORT: u16 = 5301;
    let listener = server.run(|| std::net::TcpListener::bind(("10.88.0.2", PORT)))??;
    thread::scope(|scope| -> anyhow::Result<()> {
        let reader = scope.spawn(move || -> anyhow::Result<usize> {
            let (mut conn, _) = listener.accept()?;
            Ok(std::io::copy(&mut conn, &mut std::io::sink())? as usize)
        });
        client.run(|| -> anyhow::Result<()> {
            let mut conn = std::net::TcpStream::connect(("10.88.0.2", PORT))?;
            let chunk = vec![7u8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                std::io::Write::write_all(&mut conn, &chunk[..n])?;
                left -= n;
            }
            Ok(())
        })??;
        let got = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        ensure!(got == bytes, "received {got} of {bytes} bytes");
        Ok(())
    })
}

/// Two namespaces joined by a veth, `10.88.0.1` (client) ↔ `10.88.0.2` (server).
fn two_hosts() -> anyhow::Result<VethPair> {
    VethPair::new(&["10.88.0.2/24"], &["10.88.0.1/24"], None)
}

#[test]
fn tcp_retransmits_rise_when_segments_are_lost() -> anyhow::Result<()> {
    let VethPair {
        client,
        server,
        server_if,
        ..
    } = two_hosts()?;
    let monitor = server.run(|| Monitor::attach(&server_if, None))??;

    let before = monitor.stats()?;
    tcp_transfer(&server, &client, 2 << 20)?;
    let clean = monitor.stats()?.since(&before).total();
    assert!(
        clean.kernel.rx_packets > 30,
        "the transfer's segments reached {server_if}: {clean:?}"
    );

    // Drop every 10th data segment arriving at the server: the client must retransmit.
    server.run(|| -> anyhow::Result<()> {
        let out = Command::new("iptables")
            .args([
                "-A",
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                "5301",
                "-m",
                "statistic",
                "--mode",
                "nth",
                "--every",
                "10",
                "--packet",
                "0",
                "-j",
                "DROP",
            ])
            .output()?;
        ensure!(out.status.success(), "iptables: {out:?}");
        Ok(())
    })??;
    let before = monitor.stats()?;
    tcp_transfer(&server, &client, 2 << 20)?;
    let lossy = monitor.stats()?.since(&before).total();
    assert!(
        lossy.kernel.tcp_retransmits >= 5,
        "retransmits under 10 % loss: {lossy:?}"
    );
    // Without loss, the clean run retransmitted (next to) nothing, while other tests may run
    // TCP at the same time: the lossy run must stand out.
    assert!(
        lossy.kernel.tcp_retransmits > clean.kernel.tcp_retransmits,
        "clean {clean:?} vs lossy {lossy:?}"
    );
    Ok(())
}

#[test]
fn the_opt_in_xdp_counter_counts_frames_and_detaches() -> anyhow::Result<()> {
    let (ns, a, b) = veth_lab()?;
    let frame = test_frame();

    let (counters, prog_id, ours) = ns.run(|| -> anyhow::Result<_> {
        let monitor = Monitor::attach(&a, Some(AttachMode::Native)).context("attach")?;
        ensure!(monitor.xdp_mode() == Some(aya::programs::XdpMode::Driver));
        let ours: BTreeSet<u32> = monitor.program_ids()?.into_iter().collect();
        let before = monitor.stats()?.total();
        ensure!(before.xdp_frames == 0, "fresh counters: {before:?}");
        testkit::send_frames(&b, &frame, FRAMES)?;
        let after = wait_for(
            || Ok(monitor.stats()?.total()),
            |c| c.xdp_frames >= FRAMES as u64 && c.kernel.rx_packets >= FRAMES as u64,
        )?;
        // Anything else crossing the veth would show up within this grace period.
        thread::sleep(Duration::from_millis(200));
        let settled = monitor.stats()?;
        ensure!(
            settled.total().xdp_frames == after.xdp_frames,
            "late frames: {settled:?}"
        );
        ensure!(
            settled.per_cpu.len() == aya::util::nr_cpus().map_err(|(_, e)| e)?,
            "one entry per possible CPU: {settled:?}"
        );
        let prog_id = xdp_prog_on(&ns, &a)?;
        Ok((settled.total(), prog_id, ours))
    })??;

    assert_eq!(counters.xdp_frames, FRAMES as u64);
    assert_eq!(counters.xdp_bytes, (FRAMES * FRAME_LEN) as u64);
    assert_eq!(counters.kernel.rx_packets, FRAMES as u64);
    let prog_id = prog_id.context("kernel showed no XDP program on the veth while attached")?;
    assert!(
        ours.contains(&u32::try_from(prog_id)?),
        "{prog_id} not in {ours:?}"
    );

    // Dropping the monitor detached everything it made: ask the kernel.
    assert_eq!(xdp_prog_on(&ns, &a)?, None);
    wait_released(&ours)?;
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
fn cli_attach_stats_detach_through_pins() -> anyhow::Result<()> {
    let (ns, a, b) = veth_lab()?;
    let prefix = testkit::PinPrefix::new();
    let common = ["--prefix", prefix.name(), "--netns", ns.name()];
    let with = |rest: &[&'static str]| -> Vec<&str> {
        let mut v = common.to_vec();
        v.extend_from_slice(rest);
        v.extend_from_slice(&["--iface", a.as_str()]);
        v
    };
    accel_ok(&with(&["monitor", "attach"]))?;
    let layout = PinLayout::new(BPFFS, prefix.name());
    let pin_dir = layout.attachment_dir("monitor", ns.name(), &a);
    assert!(pin_dir.is_dir(), "no pins at {}", pin_dir.display());
    assert_eq!(
        xdp_prog_on(&ns, &a)?,
        None,
        "no XDP program unless asked for"
    );

    // A second attach is refused and leaves the first one working.
    let again = accel(&with(&["monitor", "attach"]))?;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already attached"),
        "{again:?}"
    );

    let frame = test_frame();
    ns.run(|| testkit::send_frames(&b, &frame, FRAMES))??;
    let pinned = PinnedMonitor::open(&layout, ns.name(), &a)?;
    assert!(pinned.scoped()?);
    wait_for(
        || Ok(pinned.stats()?.total()),
        |c| c.kernel.rx_packets >= FRAMES as u64,
    )?;

    let json: serde_json::Value =
        serde_json::from_str(&accel_ok(&with(&["monitor", "stats", "--json"]))?)?;
    assert_eq!(json["iface"], a.as_str());
    assert_eq!(json["total"]["rx_packets"], FRAMES as u64);
    assert_eq!(
        json["total"]["rx_bytes"],
        (FRAMES * (FRAME_LEN - 14)) as u64
    );
    let per_cpu_sum: u64 = json["per_cpu"]
        .as_array()
        .context("per_cpu array")?
        .iter()
        .map(|c| c["rx_packets"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(per_cpu_sum, FRAMES as u64);
    let table = accel_ok(&with(&["monitor", "stats"]))?;
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().next() == Some("all")),
        "{table}"
    );

    let ours: BTreeSet<u32> = pinned.program_ids()?.into_iter().collect();
    let (loaded, links) = kernel_holds(&ours)?;
    assert!(
        loaded.len() >= REQUIRED_TRACEPOINTS && links.len() == loaded.len(),
        "a program and a link per tracepoint: {loaded:?} {links:?}"
    );

    accel_ok(&with(&["monitor", "detach"]))?;
    assert!(
        !layout.root().exists(),
        "pins left at {}",
        layout.root().display()
    );
    wait_released(&ours)?;

    let after = accel(&with(&["monitor", "stats"]))?;
    assert_eq!(after.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("not attached"),
        "{after:?}"
    );
    Ok(())
}

#[test]
fn bad_targets_get_clear_errors_and_leave_nothing() -> anyhow::Result<()> {
    let (ns, _, _) = veth_lab()?;
    let prefix = testkit::PinPrefix::new();
    let layout = PinLayout::new(BPFFS, prefix.name());
    let err = ns
        .run(|| Monitor::attach_pinned("nosuchdev0", None, &layout, ns.name()))?
        .expect_err("attach to a missing interface");
    assert!(
        matches!(&err, Error::NoInterface(name) if name == "nosuchdev0"),
        "{err}"
    );
    assert!(
        !layout.root().exists(),
        "half-made pins at {}",
        layout.root().display()
    );

    let out = accel(&[
        "--netns",
        "dglt-no-such-ns",
        "monitor",
        "stats",
        "--iface",
        "x",
    ])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dglt-no-such-ns"),
        "{out:?}"
    );

    let out = accel(&["monitor", "attach"])?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --iface is a usage error"
    );
    Ok(())
}

/// GETs `path` from `addr` over HTTP/1.1 and returns the status line and body.
fn http_get(addr: &str, path: &str) -> anyhow::Result<(String, String)> {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr)?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no header/body separator")?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Ok((status, body.to_owned()))
}

#[test]
fn watch_serves_prometheus_metrics_that_parse_and_shows_rates() -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let (ns, a, b) = veth_lab()?;
    ns.ip("link set lo up")?;
    let prefix = testkit::PinPrefix::new();
    let common = ["--prefix", prefix.name(), "--netns", ns.name()];
    let with = |rest: &[&str]| -> Vec<String> {
        common
            .iter()
            .chain(rest)
            .chain(&["--iface", a.as_str()])
            .map(|s| s.to_string())
            .collect()
    };
    accel_ok(
        &with(&["monitor", "attach"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )?;
    let frame = test_frame();
    ns.run(|| testkit::send_frames(&b, &frame, FRAMES))??;

    let mut watch = Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(with(&[
            "monitor",
            "watch",
            "--listen",
            "127.0.0.1:0",
            "--count",
            "2",
        ]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let scraped = (|| -> anyhow::Result<String> {
        let mut line = String::new();
        BufReader::new(watch.stderr.take().context("stderr")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .rsplit_once("http://")
            .and_then(|(_, rest)| rest.strip_suffix("/metrics"))
            .with_context(|| format!("no address in {line:?}"))?
            .to_owned();
        // The endpoint listens in the monitor's namespace (accel entered it).
        ns.run(|| http_get(&addr, "/metrics"))?
            .and_then(|(status, body)| {
                ensure!(status.contains("200"), "{status}: {body}");
                Ok(body)
            })
    })();
    let out = watch.wait_with_output()?;
    let body = scraped?;
    ensure!(out.status.success(), "watch: {out:?}");

    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    let mut rx = 0.0;
    let mut cpus = BTreeSet::new();
    for sample in &scrape.samples {
        assert!(
            sample.metric.starts_with("accel_monitor_") && sample.metric.ends_with("_total"),
            "counter names end in _total: {}",
            sample.metric
        );
        assert!(
            !sample.metric.contains("_ns_"),
            "base units (seconds), not ns: {}",
            sample.metric
        );
        assert_eq!(sample.labels.get("iface"), Some(a.as_str()));
        let cpu = sample.labels.get("cpu").context("cpu label")?;
        cpus.insert(cpu.parse::<u32>()?);
        if sample.metric == "accel_monitor_rx_packets_total" {
            match sample.value {
                prometheus_parse::Value::Counter(v) => rx += v,
                ref other => anyhow::bail!("rx_packets is not a counter: {other:?}"),
            }
        }
    }
    assert_eq!(rx, FRAMES as f64, "{body}");
    assert_eq!(cpus.len(), aya::util::nr_cpus().map_err(|(_, e)| e)?);
    assert!(
        scrape
            .docs
            .contains_key("accel_monitor_net_rx_softirq_seconds_total"),
        "{:?}",
        scrape.docs.keys()
    );

    // Two refreshes, each a table sorted by CPU and ending with the total.
    let view = String::from_utf8(out.stdout)?;
    let first_words: Vec<&str> = view
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok() || *w == "all")
        .collect();
    let n = cpus.len();
    let mut one: Vec<String> = (0..n).map(|c| c.to_string()).collect();
    one.push("all".into());
    assert_eq!(first_words, [one.clone(), one].concat(), "{view}");

    accel_ok(
        &with(&["monitor", "detach"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )?;
    Ok(())
}

#[test]
fn cpumap_redirects_and_kthread_work_are_counted_on_the_target_cpu() -> anyhow::Result<()> {
    use accel::cpu_balance::{CpuBalance, Weights};
    let cpus = usable_cpus();
    ensure!(cpus.len() == 2, "needs two CPUs, has {cpus:?}");
    let (ns, a, b) = veth_lab()?;
    // Every flow to CPU 1: the cpumap kthread there builds the skbs.
    let weights = Weights::new([(1, 1)])?;
    let frame = {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [0xff; 6])
            .ipv4([10, 202, 0, 2], [10, 202, 0, 1], 64)
            .udp(40000, 9)
            .write(&mut frame, b"monitor")?;
        frame
    };
    let delta = ns.run(|| -> anyhow::Result<_> {
        let _balance = CpuBalance::attach(&a, AttachMode::Native, &weights)?;
        let monitor = Monitor::attach(&a, None)?;
        let before = monitor.stats()?;
        pin_to_cpu(cpus[0])?;
        testkit::send_frames(&b, &frame, FRAMES)?;
        wait_for(
            || Ok(monitor.stats()?.since(&before).total()),
            |c| c.kernel.rx_packets >= FRAMES as u64,
        )?;
        thread::sleep(Duration::from_millis(200));
        Ok(monitor.stats()?.since(&before))
    })??;
    // The XDP and cpumap tracepoints count in every namespace (other tests may redirect at
    // the same time): at least our frames. The packet count is scoped to our interface: exact.
    let total = delta.total();
    assert!(total.kernel.xdp_redirects >= FRAMES as u64, "{delta:?}");
    let on_1 = delta.per_cpu[1].counters;
    assert!(on_1.kernel.cpumap_packets >= FRAMES as u64, "{delta:?}");
    assert!(on_1.kernel.cpumap_batches >= 1, "{delta:?}");
    assert_eq!(
        on_1.kernel.rx_packets, FRAMES as u64,
        "received on CPU 1: {delta:?}"
    );
    Ok(())
}

#[test]
fn the_raw_tp_fallback_counts_unscoped_and_detaches() -> anyhow::Result<()> {
    let (ns, a, b) = veth_lab()?;
    let frame = test_frame();
    let monitor = ns.run(|| Monitor::attach_raw_tp(&a, None))??;
    assert_eq!(monitor.flavour(), Flavour::RawTp);
    assert!(
        !monitor.scoped(),
        "no offsets without BTF: every interface counts"
    );
    let ours: BTreeSet<u32> = monitor.program_ids()?.into_iter().collect();
    assert!(ours.len() >= REQUIRED_TRACEPOINTS, "{ours:?}");
    let before = monitor.stats()?;
    ns.run(|| testkit::send_frames(&b, &frame, FRAMES))??;
    let delta = wait_for(
        || Ok(monitor.stats()?.since(&before).total()),
        |c| c.kernel.rx_packets >= FRAMES as u64,
    )?;
    assert!(delta.kernel.rx_packets >= FRAMES as u64, "{delta:?}");
    assert_eq!(delta.kernel.rx_bytes, 0, "no skb->len offset without BTF");
    assert!(delta.kernel.net_rx_softirqs >= 1, "{delta:?}");
    drop(monitor);
    wait_released(&ours)?;
    Ok(())
}

#[test]
fn sockmap_redirect_hits_are_counted_on_the_sending_cpu() -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};

    use accel::sock_redirect::{Config, SockRedirect};

    const ROUND_TRIPS: u64 = 300;
    let cpus = usable_cpus();
    let (client_cpu, server_cpu) = (cpus[0], *cpus.last().context("no usable CPU")?);
    let ns = NetNs::new()?;
    ns.ip("link set lo up")?;
    let cgroup = testkit::TempCgroup::new()?;
    cgroup.enter()?;
    let prefix = testkit::PinPrefix::new();
    let layout = PinLayout::new(BPFFS, prefix.name());
    let monitor = ns.run(|| Monitor::attach_pinned("lo", None, &layout, ns.name()))??;
    let redirect =
        SockRedirect::attach_pinned(cgroup.path(), &Config::new(&[8080], 0)?, &layout, "host")?;
    let before = monitor.stats()?;
    // 1 KiB echoes: the client sends on one CPU, the server answers on the other.
    ns.run(|| -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:8080")?;
        thread::scope(|s| -> anyhow::Result<()> {
            let server = s.spawn(|| -> anyhow::Result<()> {
                pin_to_cpu(server_cpu)?;
                let (mut sock, _) = listener.accept()?;
                let mut buf = [0u8; 1024];
                for _ in 0..ROUND_TRIPS {
                    sock.read_exact(&mut buf)?;
                    sock.write_all(&buf)?;
                }
                Ok(())
            });
            pin_to_cpu(client_cpu)?;
            let mut sock = TcpStream::connect("127.0.0.1:8080")?;
            let mut buf = [7u8; 1024];
            for _ in 0..ROUND_TRIPS {
                sock.write_all(&buf)?;
                sock.read_exact(&mut buf)?;
            }
            server
                .join()
                .map_err(|_| anyhow::anyhow!("server panicked"))?
        })
    })??;
    let hits = redirect.per_cpu()?;
    let delta = monitor.stats()?.since(&before);
    for (c, h) in delta.per_cpu.iter().zip(&hits) {
        assert_eq!(
            c.counters.sockmap_redirects, h.counters.redirected_msgs,
            "CPU {}: the monitor shows the redirect's own counters",
            c.cpu
        );
        assert_eq!(
            c.counters.sockmap_redirect_bytes,
            h.counters.redirected_bytes
        );
    }
    let on = |cpu: usize| delta.per_cpu[cpu].counters.sockmap_redirects;
    if client_cpu == server_cpu {
        assert_eq!(on(client_cpu), 2 * ROUND_TRIPS, "{delta:?}");
    } else {
        assert_eq!(on(client_cpu), ROUND_TRIPS, "client's sends: {delta:?}");
        assert_eq!(on(server_cpu), ROUND_TRIPS, "server's answers: {delta:?}");
    }
    assert_eq!(
        delta.total().sockmap_redirect_bytes,
        2 * ROUND_TRIPS * 1024,
        "{delta:?}"
    );

    let now = monitor.stats()?.prometheus();
    let scrape = prometheus_parse::Scrape::parse(now.lines().map(|l| Ok(l.to_owned())))?;
    let counted: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "accel_monitor_sockmap_redirects_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => f64::NAN,
        })
        .sum();
    assert_eq!(counted, (2 * ROUND_TRIPS) as f64, "{now}");

    redirect.detach()?;
    let without = monitor.stats()?;
    assert_eq!(
        without.total().sockmap_redirects,
        0,
        "no redirect pinned any more"
    );
    monitor.detach()?;
    assert!(!layout.root().exists(), "pins left");
    Ok(())
}
