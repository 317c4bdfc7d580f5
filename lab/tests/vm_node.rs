//! VM nodes (root, QEMU): `scenarios/topologies/vm-server.toml` — a netns client and a VM
//! server (kernel 6.12) on one link — brought up with `lab up`, reached both ways with ping
//! and TCP, and taken down without leaving QEMU, taps, namespaces or run directories, also
//! after `lab up` was killed with SIGKILL. The first run downloads the kernel into the user's
//! cache; when it cannot be fetched the tests say so and pass without running.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use common::{TestLab, in_ns};
use sha2::{Digest as _, Sha256};

const TOPOLOGY: &str = "vm-server.toml";
const KERNEL: &str = "6.12";

/// What of `lab` is still there: namespaces, QEMU processes, VM run directories.
fn leftovers(lab: &TestLab) -> anyhow::Result<Vec<String>> {
    let mut left = lab.namespaces_left()?;
    left.extend(qemu_processes(&lab.state_dir()));
    let vm_dir = lab
        .state_dir()
        .join(&lab.prefix)
        .join(format!("{}.vm", lab.name));
    if vm_dir.exists() {
        left.push(vm_dir.display().to_string());
    }
    Ok(left)
}

/// Processes whose command line mentions `dir` (QEMU names its agent socket there).
fn qemu_processes(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("qemu") && cmdline.contains(&needle))
                .then(|| format!("QEMU pid {pid}"))
        })
        .collect()
}

/// Whether the test's kernel is (or can be put) in the cache; prints why not.
fn kernel_available() -> bool {
    let fetched = lab_vm::Matrix::builtin()
        .and_then(|matrix| lab_vm::Cache::from_env()?.fetch(matrix.kernel(KERNEL)?));
    match fetched {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED: kernel {KERNEL} cannot be fetched: {e}");
            false
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_vm_node_is_reached_over_a_lab_link_and_leaves_nothing() -> anyhow::Result<()> {
    if !kernel_available() {
        return Ok(());
    }
    let lab = TestLab::shipped(TOPOLOGY)?;
    let started = Instant::now();
    lab.up()?;
    eprintln!("lab up with a VM node: {:?}", started.elapsed());
    let client = lab.ns("client");

    // The guest runs the chosen kernel and has the plan's addresses on the file's name.
    let release = lab.exec("server", &["uname", "-r"])?;
    ensure!(release.contains("6.12"), "guest kernel {release}");
    let addrs = lab.exec("server", &["ip", "addr", "show", "dev", "eth0"])?;
    ensure!(
        addrs.contains("10.79.0.2/24") && addrs.contains("fd79::2/64"),
        "{addrs}"
    );

    // Ping both ways, v4 and v6.
    for to in ["10.79.0.2", "fd79::2"] {
        let out = in_ns(&client, || {
            Command::new("ping").args(["-c2", "-W5", to]).output()
        })??;
        ensure!(
            out.status.success(),
            "ping {to} from the client: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    lab.exec("server", &["ping", "-c", "2", "-W", "5", "10.79.0.1"])?;
    lab.exec("server", &["ping", "-c", "2", "-W", "5", "fd79::1"])?;

    // TCP client → VM: busybox nc listens in the guest, the digest of what arrived must match.
    let payload: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    lab.exec(
        "server",
        &[
            "sh",
            "-c",
            "nc -l -p 5001 > /tmp/in 2>/dev/null < /dev/null &",
        ],
    )?;
    let server: SocketAddr = "10.79.0.2:5001".parse()?;
    let sent = payload.clone();
    in_ns(&client, move || -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            match TcpStream::connect_timeout(&server, Duration::from_secs(5)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => bail!("connect to {server}: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        };
        stream.write_all(&sent)?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest)?;
        Ok(())
    })??;
    let want = sha256_hex(&payload);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = lab.exec("server", &["sha256sum", "/tmp/in"])?;
        if got.starts_with(&want) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "guest received {got}, want {want}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // TCP VM → client: the guest sends 1 MiB of random bytes, keeping a copy to compare.
    let listener = in_ns(&client, || TcpListener::bind("10.79.0.1:5002"))??;
    let receiver = thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut stream, _) = listener.accept()?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got)?;
        Ok(got)
    });
    lab.exec(
        "server",
        &[
            "sh",
            "-c",
            "head -c 1048576 /dev/urandom > /tmp/out && nc 10.79.0.1 5002 < /tmp/out",
        ],
    )?;
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    ensure!(got.len() == 1 << 20, "received {} bytes", got.len());
    let sent = lab.exec("server", &["sha256sum", "/tmp/out"])?;
    ensure!(sent.starts_with(&sha256_hex(&got)), "guest sent {sent}");

    let running = leftovers(&lab)?;
    ensure!(
        running.iter().filter(|l| l.starts_with("QEMU")).count() == 1 && running.len() == 4,
        "two namespaces, one QEMU and its run directory while up: {running:?}"
    );
    lab.lab_ok(&["down", &lab.name])?;
    let left = leftovers(&lab)?;
    ensure!(left.is_empty(), "left after lab down: {left:?}");
    Ok(())
}

/// The MTU of `dev` in namespace `ns`, from `ip -n NS -j link show`.
fn mtu_in(ns: &str, dev: &str) -> anyhow::Result<u64> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", dev])
        .output()?;
    ensure!(
        out.status.success(),
        "ip -n {ns} link show dev {dev}: {out:?}"
    );
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    links[0]["mtu"]
        .as_u64()
        .with_context(|| format!("no MTU for {dev} in {ns}"))
}

#[test]
fn a_jumbo_mtu_link_reaches_a_vm_node_unfragmented() -> anyhow::Result<()> {
    if !kernel_available() {
        return Ok(());
    }
    let lab = TestLab::toml(
        "[nodes.client]\n\
         [nodes.server]\nkind = \"vm\"\nkernel = \"6.12\"\n\
         [[links]]\nendpoints = [\"client:eth0\", \"server:eth0\"]\nmtu = 9000\n\
         addresses = [\"10.78.0.1/24\", \"10.78.0.2/24\"]\n",
        "dgl",
    )?;
    lab.up()?;

    // Every hop of the link: the client's veth end, the VM node's veth end, bridge and tap,
    // and the guest's card.
    let server = lab.ns("server");
    let hops = [
        (lab.ns("client"), "eth0"),
        (server.clone(), "eth0"),
        (server.clone(), "vmbr0"),
        (server, "vmtap0"),
    ];
    for (ns, dev) in &hops {
        let mtu = mtu_in(ns, dev)?;
        ensure!(mtu == 9000, "{dev} in {ns}: MTU {mtu}");
    }
    let card = lab.exec("server", &["cat", "/sys/class/net/eth0/mtu"])?;
    ensure!(card.trim() == "9000", "guest eth0 MTU {card}");

    // 8972 bytes of ICMP payload + 28 bytes of headers = 9000, with "don't fragment", both
    // ways; one byte more must not fit.
    let client = lab.ns("client");
    let ping = |size: &str| {
        in_ns(&client, || {
            Command::new("ping")
                .args(["-c2", "-W5", "-M", "do", "-s", size, "10.78.0.2"])
                .output()
        })
    };
    let out = ping("8972")??;
    ensure!(
        out.status.success(),
        "jumbo ping to the VM: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !ping("8973")??.status.success(),
        "9001-byte packets fit a 9000 MTU"
    );
    let back = lab.exec(
        "server",
        &["ping", "-c", "2", "-W", "5", "-s", "8972", "10.78.0.1"],
    )?;
    ensure!(back.contains("2 packets received"), "{back}");
    lab.lab_ok(&["down", &lab.name])?;
    Ok(())
}

#[test]
fn lab_down_after_kill_9_of_lab_up_stops_the_vm() -> anyhow::Result<()> {
    if !kernel_available() {
        return Ok(());
    }
    let lab = TestLab::shipped(TOPOLOGY)?;
    let mut child = lab.command(&["up", lab.file_arg()?])?.spawn()?;
    // Kill `lab up` once QEMU is running (its pid file exists), before the guest is configured.
    let pid_file = lab
        .state_dir()
        .join(&lab.prefix)
        .join(format!("{}.vm", lab.name))
        .join("server/qemu.pid");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pid_file.exists() {
        if let Some(status) = child.try_wait()? {
            bail!("lab up exited ({status}) before QEMU started");
        }
        ensure!(Instant::now() < deadline, "QEMU never started");
        thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    ensure!(
        !qemu_processes(&lab.state_dir()).is_empty(),
        "QEMU outlives a killed `lab up` until `lab down`"
    );
    lab.lab_ok(&["down", &lab.name])?;
    let left = leftovers(&lab)?;
    ensure!(left.is_empty(), "left after lab down: {left:?}");
    Ok(())
}

#[test]
fn the_shipped_vm_server_scenario_measures_rr_against_the_guest() -> anyhow::Result<()> {
    if !kernel_available() {
        return Ok(());
    }
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let text = std::fs::read_to_string(scenarios.join("vm-server-rr.toml"))?;
    let name = testkit::unique_name();
    let renamed = text.replacen("name = \"vm-server-rr\"", &format!("name = \"{name}\""), 1);
    ensure!(renamed != text, "vm-server-rr.toml has no name line");
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("topologies"))?;
    std::fs::copy(
        scenarios.join("topologies/vm-server.toml"),
        dir.path().join("topologies/vm-server.toml"),
    )?;
    let file = dir.path().join("scenario.toml");
    std::fs::write(&file, renamed)?;
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let run = Command::new(env!("CARGO_BIN_EXE_lab"))
        .arg("--state-dir")
        .arg(&state)
        .arg("run")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .args(["--prefix", "dglv"])
        .output()?;
    let left = lab_netlink::Netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&format!("dglv-{name}.")))
        .chain(qemu_processes(&state))
        .collect::<Vec<_>>();
    ensure!(
        run.status.success(),
        "lab run: {}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    ensure!(left.is_empty(), "left after lab run: {left:?}");

    // The server answered from the guest (its address exists only there) in every window.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json"))?)?;
    ensure!(report["complete"] == true, "incomplete report");
    for variant in report["variants"].as_array().context("variants")? {
        for rep in variant["repetitions"].as_array().context("repetitions")? {
            let rate = rep["tcp_rr.rr_per_s"].as_f64().unwrap_or(0.0);
            ensure!(rate > 10.0, "{}: {rate} round trips/s", variant["name"]);
        }
    }
    ensure!(
        report["ratios"]["monitor"]["tcp_rr.p50_us"]["ratio"].is_number(),
        "no ratio"
    );
    // env.json says which kernel the server ran.
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("env.json"))?)?;
    let kernel = env["vm_kernels"]["server"].as_str().unwrap_or_default();
    ensure!(
        kernel.starts_with("6.12 (6.12."),
        "vm_kernels: {}",
        env["vm_kernels"]
    );
    Ok(())
}
