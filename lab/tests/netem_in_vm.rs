//! The netem checks this host cannot run (its kernel has no `sch_netem`), run inside a QEMU
//! guest with a Debian kernel that has it: the `lab` binary under test reaches the guest over
//! 9p (its shared libraries go into the initramfs), topology and scenario files are written
//! into the guest, and `lab up`/`exec`/`down`/`run` run there through the guest agent.
//! Passes without running, saying so, when the kernel cannot be fetched.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use lab_vm::{Cache, InitramfsSpec, Matrix, Vm, VmConfig, initramfs};

const KERNEL: &str = "6.12";
/// Longest wait for the boot and for one guest command (100 up/down cycles took 423 s under
/// TCG on a loaded 2-core machine).
const TIMEOUT: Duration = Duration::from_secs(1200);
/// Where the guest runs the `lab` binary from (copied from the 9p share into tmpfs: starting
/// a binary over 9p again and again is slow under TCG).
const LAB: &str = "/tmp/lab";

/// A booted guest with `lab` at [`LAB`]; the temporary directory holds its image.
struct Guest {
    vm: Vm,
    _dir: tempfile::TempDir,
}

impl Guest {
    /// Boots the test kernel with `cpus` vCPUs, or `None` (printing why) when it cannot be
    /// fetched. QEMU runs at niceness `nice` when given.
    fn boot(cpus: u32, nice: Option<i32>) -> anyhow::Result<Option<Guest>> {
        let fetched = Matrix::builtin().and_then(|m| Cache::from_env()?.fetch(m.kernel(KERNEL)?));
        let kernel = match fetched {
            Ok(kernel) => kernel,
            Err(e) => {
                eprintln!("SKIPPED: kernel {KERNEL} cannot be fetched: {e}");
                return Ok(None);
            }
        };
        let lab = Path::new(env!("CARGO_BIN_EXE_lab"));
        let dir = tempfile::tempdir()?;
        let image = dir.path().join("initramfs.cpio");
        let spec = InitramfsSpec {
            modules: [
                "virtio_pci",
                "virtio_console",
                "9pnet_virtio",
                "9p",
                "veth",
                "bridge",
                "sch_netem",
                "sch_tbf",
                "sch_ingress",
            ]
            .map(String::from)
            .to_vec(),
            extra_binaries: initramfs::shared_libraries(lab)?,
            ..InitramfsSpec::default()
        };
        initramfs::build(&kernel, &spec, &image)?;
        let config = VmConfig {
            cpus,
            memory_mib: 1024,
            share: Some(lab.parent().context("lab's directory")?.to_owned()),
            boot_timeout: TIMEOUT,
            nice,
            ..VmConfig::new(&kernel.vmlinux, &image)
        };
        let vm = Vm::boot(&config)?;
        eprintln!(
            "kernel {}: agent ready after {} ms",
            kernel.release,
            vm.ready_after().as_millis()
        );
        let mut guest = Guest { vm, _dir: dir };
        guest.sh(&format!("cp /host/lab {LAB}"))?;
        Ok(Some(guest))
    }

    /// Runs `script` with `sh -c` in the guest; fails unless it exits 0; returns stdout.
    fn sh(&mut self, script: &str) -> anyhow::Result<String> {
        let out = self.vm.run(&["sh", "-c", script], TIMEOUT)?;
        ensure!(
            out.exit_code == 0,
            "guest `{script}` exited {}:\n{}{}",
            out.exit_code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Writes `text` to `path` in the guest.
    fn write(&mut self, path: &str, text: &str) -> anyhow::Result<()> {
        let out = self.vm.run(
            &[
                "sh",
                "-c",
                "mkdir -p \"${1%/*}\" && printf '%s' \"$2\" > \"$1\"",
                "sh",
                path,
                text,
            ],
            TIMEOUT,
        )?;
        ensure!(out.exit_code == 0, "writing {path} in the guest");
        Ok(())
    }
}

/// `RetransSegs` from `/proc/net/snmp` text.
fn retrans_segs(snmp: &str) -> anyhow::Result<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().context("Tcp header")?,
        tcp.next().context("Tcp values")?,
    );
    let index = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .context("RetransSegs column")?;
    Ok(values
        .split_whitespace()
        .nth(index)
        .context("RetransSegs value")?
        .parse()?)
}

/// Two namespaces on one link with `impair`, as a topology named `name`.
fn pair(name: &str, subnet: u8, impair: &str) -> String {
    format!(
        "name = \"{name}\"\n[nodes.a]\n[nodes.b]\n[[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n\
         addresses = [\"10.{subnet}.0.1/24\", \"10.{subnet}.0.2/24\"]\nimpair = {impair}\n"
    )
}

/// Sends 2 MB over TCP from node a to node b of lab `name` and returns a's `RetransSegs`.
fn transfer_retransmits(guest: &mut Guest, name: &str, subnet: u8) -> anyhow::Result<u64> {
    // busybox nc quits when its stdin ends: the listener reads from a pipe that stays open;
    // nothing in the background may hold the agent's output open.
    guest.sh(&format!(
        "{LAB} exec --lab {name} b -- sh -c '(sleep 600 | nc -l -p 5000) > /dev/null 2>&1 < /dev/null &' && sleep 1 && \
         {LAB} exec --lab {name} a -- timeout 120 sh -c 'head -c 2000000 /dev/zero | nc 10.{subnet}.0.2 5000'"
    ))?;
    let snmp = guest.sh(&format!("{LAB} exec --lab {name} a -- cat /proc/net/snmp"))?;
    retrans_segs(&snmp)
}

#[test]
fn netem_delay_shows_in_rtt_and_loss_in_retransmits_inside_a_vm() -> anyhow::Result<()> {
    let Some(mut guest) = Guest::boot(1, None)? else {
        return Ok(());
    };
    guest.write(
        "/tmp/delay.toml",
        &pair("delay10", 90, "{ delay = \"10ms\" }"),
    )?;
    guest.write("/tmp/loss.toml", &pair("loss5", 91, "{ loss = \"5%\" }"))?;
    guest.sh(&format!(
        "{LAB} up /tmp/delay.toml && {LAB} up /tmp/loss.toml"
    ))?;

    // 10 ms each way: every round trip takes at least 20 ms.
    let ping = guest.sh(&format!(
        "{LAB} exec --lab delay10 a -- ping -c 5 -W 5 10.90.0.2"
    ))?;
    let stats = ping
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .context("ping statistics")?;
    let min: f64 = stats
        .split('=')
        .nth(1)
        .and_then(|v| v.trim().split('/').next())
        .context("min RTT")?
        .parse()?;
    eprintln!("10 ms netem each way: {stats}");
    ensure!(min >= 20.0, "min RTT {min} ms < 20 ms:\n{ping}");

    // 5 % loss: TCP retransmits; the same transfer over the delayed link without loss, none.
    let lossy = transfer_retransmits(&mut guest, "loss5", 91)?;
    let clean = transfer_retransmits(&mut guest, "delay10", 90)?;
    eprintln!("RetransSegs for 2 MB: 5% loss {lossy}, no loss {clean}");
    ensure!(lossy > clean && lossy >= 5, "lossy {lossy}, clean {clean}");

    guest.sh(&format!("{LAB} down --all"))?;
    ensure!(guest.sh("ls /run/netns | wc -l")?.trim() == "0");
    Ok(())
}

#[test]
fn hundred_up_down_cycles_of_two_hosts_inside_a_vm_leave_nothing() -> anyhow::Result<()> {
    let Some(mut guest) = Guest::boot(1, None)? else {
        return Ok(());
    };
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/topologies/two-hosts.toml");
    guest.write("/tmp/two-hosts.toml", &std::fs::read_to_string(shipped)?)?;
    let before = guest.sh("ls /sys/class/net; tc qdisc show")?;
    let started = std::time::Instant::now();
    guest.sh(&format!(
        "i=0; while [ $i -lt 100 ]; do \
           {LAB} up /tmp/two-hosts.toml > /dev/null || exit 1; \
           {LAB} exec --lab two-hosts client -- tc qdisc show dev eth0 | grep -q netem || exit 2; \
           {LAB} down two-hosts > /dev/null || exit 3; \
           i=$((i+1)); \
         done"
    ))?;
    eprintln!(
        "100 up/down cycles of two-hosts in the guest: {:?}",
        started.elapsed()
    );
    ensure!(
        guest.sh("ls /run/netns | wc -l")?.trim() == "0",
        "namespaces left"
    );
    let after = guest.sh("ls /sys/class/net; tc qdisc show")?;
    ensure!(
        after == before,
        "links or qdiscs left:\nbefore\n{before}\nafter\n{after}"
    );
    Ok(())
}

/// The netem delay of `scenarios/netem-rr.toml`'s delayed variant, each way.
const NETEM_RR_DELAY_US: f64 = 1000.0;

#[test]
fn netem_rr_scenario_inside_a_vm_adds_the_configured_delay() -> anyhow::Result<()> {
    // Niceness -20: with netem the guest's vCPUs sleep until netem's timer fires, and QEMU then
    // waits for the host to run it again. On this loaded 2-core host (load average 17) that
    // wait turned +2 ms into +10 to +43 ms per round trip (and once +54 ms), while the clean
    // variant, which never sleeps, was unaffected; at -20 (or SCHED_FIFO) the same runs added
    // 2.5-2.6 ms. TCP_NODELAY is set on both sides, so Nagle and delayed ACKs play no part.
    let Some(mut guest) = Guest::boot(2, Some(-20))? else {
        return Ok(());
    };
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let scenario = std::fs::read_to_string(scenarios.join("netem-rr.toml"))?;
    ensure!(
        scenario.contains(r#"{ "client:eth0" = { delay = "1ms" } }"#),
        "netem-rr.toml no longer delays by NETEM_RR_DELAY_US each way"
    );
    guest.write("/tmp/s/netem-rr.toml", &scenario)?;
    guest.write(
        "/tmp/s/topologies/two-hosts.toml",
        &std::fs::read_to_string(scenarios.join("topologies/two-hosts.toml"))?,
    )?;
    guest.sh(&format!(
        "{LAB} run /tmp/s/netem-rr.toml --out /tmp/rr > /dev/null"
    ))?;
    let report: serde_json::Value = serde_json::from_str(&guest.sh("cat /tmp/rr/report.json")?)?;
    let p50 = |variant: &str| -> anyhow::Result<f64> {
        let v = report["variants"]
            .as_array()
            .context("variants")?
            .iter()
            .find(|v| v["name"] == variant)
            .context("variant")?;
        let reps = v["repetitions"].as_array().context("repetitions")?;
        let values: Vec<f64> = reps
            .iter()
            .filter_map(|r| r["tcp_rr.p50_us"].as_f64())
            .collect();
        ensure!(!values.is_empty(), "no tcp_rr.p50_us in {variant}");
        Ok(values.iter().sum::<f64>() / values.len() as f64)
    };
    let (clean, delayed) = (p50("clean")?, p50("netem-1ms")?);
    let ratio = &report["ratios"]["netem-1ms"]["tcp_rr.p50_us"];
    eprintln!(
        "netem-rr in the guest: p50 clean {clean:.0} us, netem-1ms {delayed:.0} us, ratio {ratio}"
    );
    // D each way adds 2D to every round trip; TCG's timer and wake-up path adds a little more
    // (0.5-0.6 ms measured), so the difference must be within [0.8 * 2D, 2D + 2 ms].
    let added = delayed - clean;
    let (low, high) = (
        0.8 * 2.0 * NETEM_RR_DELAY_US,
        2.0 * NETEM_RR_DELAY_US + 2000.0,
    );
    ensure!(
        (low..=high).contains(&added),
        "netem-1ms adds {added:.0} us to the p50 round trip, outside [{low:.0}, {high:.0}] us \
         for 1 ms each way"
    );
    // The report's ratio (mean over mean) is what D predicts from the clean round trip, and
    // its interval excludes 1.
    let value = ratio["ratio"].as_f64().context("ratio")?;
    let (expect_low, expect_high) = ((clean + low) / clean, (clean + high) / clean);
    ensure!(
        (expect_low..=expect_high).contains(&value),
        "ratio {value:.2} outside [{expect_low:.2}, {expect_high:.2}], what 1 ms each way \
         predicts from the clean p50 of {clean:.0} us"
    );
    ensure!(
        ratio["ci_low"].as_f64().is_some_and(|low| low > 1.0),
        "the ratio's interval must exclude 1: {ratio}"
    );
    Ok(())
}
