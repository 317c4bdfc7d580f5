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
    monitor::{AttachMode, Counters, Monitor, PinnedMonitor},
    pin::{BPFFS, PinLayout},
};
use anyhow::{Context as _, ensure};
use testkit::NetNs;

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

#[test]
fn xdp_counts_exactly_the_frames_sent_and_tracepoint_sees_them() -> anyhow::Result<()> {
    let (ns, a, b) = veth_lab()?;
    let frame = test_frame();

    let (counters, prog_id, ours) = ns.run(|| -> anyhow::Result<_> {
        let monitor = Monitor::attach(&a, AttachMode::Native).context("attach")?;
        ensure!(monitor.xdp_mode() == aya::programs::XdpMode::Driver);
        let ours: BTreeSet<u32> = monitor.program_ids()?.into_iter().collect();
        let (loaded, links) = kernel_holds(&ours)?;
        ensure!(
            loaded.len() == 2 && links.len() == 2,
            "kernel sees {loaded:?} {links:?}"
        );
        let before = monitor.stats()?.total();
        ensure!(before.xdp_frames == 0, "fresh counters: {before:?}");
        testkit::send_frames(&b, &frame, FRAMES)?;
        let after = wait_for(
            || Ok(monitor.stats()?.total()),
            |c| c.xdp_frames >= FRAMES as u64 && c.netif_receive_skb >= FRAMES as u64,
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
    assert!(
        counters.netif_receive_skb >= FRAMES as u64,
        "tp_btf netif_receive_skb did not rise with the traffic: {counters:?}"
    );
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
    let prog_id = xdp_prog_on(&ns, &a)?.context("no XDP program attached after `attach`")?;

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
    wait_for(
        || Ok(pinned.stats()?.total()),
        |c| c.xdp_frames >= FRAMES as u64,
    )?;

    let json: serde_json::Value =
        serde_json::from_str(&accel_ok(&with(&["monitor", "stats", "--json"]))?)?;
    assert_eq!(json["iface"], a.as_str());
    assert_eq!(json["total"]["xdp_frames"], FRAMES as u64);
    assert_eq!(json["total"]["xdp_bytes"], (FRAMES * FRAME_LEN) as u64);
    let per_cpu_sum: u64 = json["per_cpu"]
        .as_array()
        .context("per_cpu array")?
        .iter()
        .map(|c| c["xdp_frames"].as_u64().unwrap_or(0))
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
    assert!(
        ours.contains(&u32::try_from(prog_id)?),
        "{prog_id} not in {ours:?}"
    );
    let (loaded, links) = kernel_holds(&ours)?;
    assert_eq!(
        (loaded.len(), links.len()),
        (2, 2),
        "XDP + tp_btf programs and links"
    );

    accel_ok(&with(&["monitor", "detach"]))?;
    assert!(
        !layout.root().exists(),
        "pins left at {}",
        layout.root().display()
    );
    assert_eq!(xdp_prog_on(&ns, &a)?, None, "XDP program still attached");
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
        .run(|| Monitor::attach_pinned("nosuchdev0", AttachMode::Auto, &layout, ns.name()))?
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
