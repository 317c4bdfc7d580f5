//! `lab run` against the real kernel (root): every test runs a tiny scenario of its own under a
//! unique lab name, prefix and state directory, and takes the lab down even when it fails.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, ensure};
use lab::report::Report;

/// Kernel-name prefix of these tests' labs.
const PREFIX: &str = "dglr";

/// A scenario file in a directory of its own; `Drop` takes its lab down and removes the
/// directory.
struct TestRun {
    name: String,
    dir: PathBuf,
    file: PathBuf,
}

impl TestRun {
    /// A scenario named uniquely, on two nodes `a` and `b` joined by `a:eth0 — b:eth0`,
    /// followed by `body` (variants, workloads, events).
    fn new(head: &str, body: &str) -> anyhow::Result<Self> {
        let name = testkit::unique_name();
        let dir = std::env::temp_dir().join(format!("lab-run-{name}"));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("scenario.toml");
        std::fs::write(
            &file,
            format!(
                "name = \"{name}\"\n{head}\n\
                 [topology]\nname = \"t\"\n[topology.nodes.a]\n[topology.nodes.b]\n\
                 [[topology.links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n\
                 addresses = [\"10.81.0.1/24\", \"10.81.0.2/24\"]\n{body}"
            ),
        )?;
        Ok(Self { name, dir, file })
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    fn command(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lab"));
        command.args([
            "--state-dir",
            self.dir.join("state").to_str().context("utf-8 path")?,
            "run",
            self.file.to_str().context("utf-8 path")?,
            "--out",
            self.out().to_str().context("utf-8 path")?,
            "--prefix",
            PREFIX,
        ]);
        Ok(command)
    }

    fn run(&self) -> anyhow::Result<Output> {
        Ok(self.command()?.output()?)
    }

    fn run_ok(&self) -> anyhow::Result<Report> {
        let out = self.run()?;
        ensure!(
            out.status.success(),
            "lab run: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Report::read(&self.out())?)
    }

    /// Namespaces of this lab that exist now.
    fn namespaces_left(&self) -> anyhow::Result<Vec<String>> {
        let start = format!("{PREFIX}-{}.", self.name);
        Ok(lab_netlink::Netns::list()?
            .into_iter()
            .filter(|n| n.starts_with(&start))
            .collect())
    }

    fn state_files_left(&self) -> usize {
        std::fs::read_dir(self.dir.join("state").join(PREFIX)).map_or(0, |d| d.count())
    }
}

impl Drop for TestRun {
    fn drop(&mut self) {
        let down = Command::new(env!("CARGO_BIN_EXE_lab"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(["down", &self.name, "--prefix", PREFIX])
            .output();
        if let Err(e) = down {
            eprintln!("cleanup of lab {}: {e}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const OFF_AND_MONITOR: &str = "[[variants]]\nname = \"off\"\n\
    [[variants]]\nname = \"monitor\"\n\
    accelerators = [{ kind = \"monitor\", node = \"b\", iface = \"eth0\" }]\n";

fn svg(dir: &Path, name: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(dir.join(name)).with_context(|| name.to_owned())?;
    ensure!(
        text.trim_start().starts_with("<svg") && text.trim_end().ends_with("</svg>"),
        "{name} is not an SVG document"
    );
    Ok(())
}

#[test]
fn runs_a_scenario_end_to_end() -> anyhow::Result<()> {
    let run = TestRun::new(
        "seed = 3\nrepetitions = 2\nwarmup = \"200ms\"\nwindow = \"1s\"\n",
        &format!(
            "{OFF_AND_MONITOR}\
             [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"a\"\nto = \"b:7000\"\n\
             [[workloads]]\nkind = \"tcp_stream\"\nfrom = \"a\"\nto = \"b:7001\"\nmessage = 65536\n\
             [[workloads]]\nkind = \"udp_echo\"\nfrom = \"a\"\nto = \"b:7002\"\npps = 2000\n"
        ),
    )?;
    let report = run.run_ok()?;
    ensure!(report.schema_version == 1 && report.complete, "{report:?}");
    let names: Vec<&str> = report.variants.iter().map(|v| v.name.as_str()).collect();
    ensure!(names == ["off", "monitor"], "{names:?}");
    for variant in &report.variants {
        ensure!(variant.repetitions.len() == 2, "{variant:?}");
        for metric in [
            "tcp_rr.rr_per_s",
            "tcp_rr.p99_us",
            "tcp_stream.bytes_per_s",
            "udp_echo.echo_per_s",
            "cpu_s",
            "cpu_jain",
            "cpu_s_per_gb",
            "tcp_retrans_segs",
        ] {
            let values = variant.values(metric);
            ensure!(values.len() == 2, "{} lacks {metric}", variant.name);
        }
        ensure!(variant.values("tcp_rr.rr_per_s").iter().all(|v| *v > 0.0));
        ensure!(!variant.latency_cdf.is_empty() && !variant.cpu_busy.is_empty());
    }
    // The monitor counted the packets b received, and only while attached; the report has
    // its per-CPU packet and softirq shares next to the busy shares.
    let packets = "monitor.b-eth0.rx_packets_per_s";
    ensure!(report.variants[0].values(packets).is_empty());
    ensure!(
        report.variants[1].values(packets).iter().all(|v| *v > 0.0),
        "{:?}",
        report.variants[1].values(packets)
    );
    ensure!(report.variants[0].cpu_packets.is_empty());
    let shares = &report.variants[1].cpu_packets;
    ensure!(
        shares.len() == report.variants[1].cpu_busy.len()
            && (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
        "{shares:?}"
    );
    ensure!(
        report.variants[1].cpu_softirq.iter().any(|s| *s > 0.0),
        "{:?}",
        report.variants[1].cpu_softirq
    );
    let ratios = &report.ratios["monitor"];
    ensure!(ratios.contains_key("tcp_rr.rr_per_s"), "{ratios:?}");
    for (metric, ci) in ratios {
        ensure!(
            ci.ci_low <= ci.ratio && ci.ratio <= ci.ci_high,
            "{metric}: {ci:?}"
        );
    }
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.out().join("env.json"))?)?;
    ensure!(env["seed"] == 3 && env["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    ensure!(
        env["scenario_sha256"].as_str().map(str::len) == Some(64),
        "{env}"
    );
    let markdown = std::fs::read_to_string(run.out().join("report.md"))?;
    ensure!(markdown.contains("## Ratios against `off`"), "{markdown}");
    for name in ["latency_cdf.svg", "cpu_busy.svg", "throughput.svg"] {
        svg(&run.out(), name)?;
    }
    let left = run.namespaces_left()?;
    ensure!(left.is_empty(), "namespaces left: {left:?}");
    ensure!(run.state_files_left() == 0, "a state file is left");
    Ok(())
}

#[test]
fn sock_redirect_redirects_same_node_traffic_while_attached() -> anyhow::Result<()> {
    let run = TestRun::new(
        "seed = 5\nrepetitions = 2\nwarmup = \"200ms\"\nwindow = \"600ms\"\n",
        "[[variants]]\nname = \"off\"\n[[variants]]\nname = \"on\"\n\
         accelerators = [{ kind = \"sock_redirect\", node = \"b\", ports = [7000, 7001] },\n\
         { kind = \"monitor\", node = \"b\", iface = \"eth0\" }]\n\
         [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"b\"\nto = \"b:7000\"\n\
         [[workloads]]\nkind = \"tcp_stream\"\nfrom = \"a\"\nto = \"b:7001\"\n\
         message = 65536\nstart = \"700ms\"\nduration = \"300ms\"\n",
    )?;
    let report = run.run_ok()?;
    ensure!(report.complete, "{report:?}");
    let [off, on] = &report.variants[..] else {
        anyhow::bail!("{:?}", report.variants);
    };
    let metric = |name: &str| format!("sock_redirect.b.{name}");
    ensure!(off.values(&metric("redirected_msgs")).is_empty());
    for rep in &on.repetitions {
        let get = |name: &str| rep.get(&metric(name)).copied().unwrap_or(-1.0);
        // Both connections are recorded (two sockets each); the round trips of b's own
        // connection go to the peer, the stream from a has no peer on b's namespace.
        ensure!(get("established") >= 4.0, "{rep:?}");
        ensure!(get("redirected_msgs") > 100.0, "{rep:?}");
        ensure!(get("no_peer") >= 1.0 && get("passed_msgs") > 0.0, "{rep:?}");
        ensure!(get("gated") == 0.0, "{rep:?}");
        // The stream's client found no peer: it left the sockhash for plain TCP.
        ensure!(get("left") >= 1.0 && get("stayed") == 0.0, "{rep:?}");
        // The monitor of the same window shows the redirect's hits, CPU by CPU.
        let per_cpu: f64 = rep
            .iter()
            .filter(|(name, _)| {
                name.starts_with("monitor.b-eth0.cpu") && name.ends_with("_sockmap_redirects")
            })
            .map(|(_, v)| v)
            .sum();
        ensure!(per_cpu == get("redirected_msgs"), "{rep:?}");
        ensure!(
            rep.get("monitor.b-eth0.sockmap_redirects_per_s")
                .is_some_and(|v| *v > 0.0),
            "{rep:?}"
        );
    }
    ensure!(
        off.values("monitor.b-eth0.sockmap_redirects_per_s")
            .is_empty(),
        "no monitor, no redirect: no sockmap metric"
    );
    for variant in [off, on] {
        // The delayed stream ran, after the round trips, with its own CPU time.
        ensure!(
            variant
                .values("tcp_stream.bytes_per_s")
                .iter()
                .all(|v| *v > 0.0)
        );
        ensure!(variant.values("tcp_stream.process_cpu_s").len() == 2);
        ensure!(variant.values("tcp_rr.process_cpu_s_per_gb").len() == 2);
    }
    let cgroup = testkit::own_cgroup2_dir()?.join(format!("{PREFIX}-{}.sock-redirect", run.name));
    ensure!(!cgroup.exists(), "{} is left", cgroup.display());
    ensure!(run.namespaces_left()?.is_empty() && run.state_files_left() == 0);
    Ok(())
}

#[test]
fn report_keeps_the_seeded_schedule() -> anyhow::Result<()> {
    let run = TestRun::new(
        "seed = 29\nrepetitions = 2\nwarmup = \"0s\"\nwindow = \"300ms\"\n",
        "[[variants]]\nname = \"x\"\n[[variants]]\nname = \"y\"\n[[variants]]\nname = \"z\"\n\
         [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"a\"\nto = \"b:7000\"\n",
    )?;
    let report = run.run_ok()?;
    ensure!(report.seed == 29 && report.complete);
    ensure!(
        report.schedule == lab::scenario::schedule(29, 2, 3),
        "{:?}",
        report.schedule
    );
    // Each variant's repetitions are its runs, in the order they ran.
    for (index, variant) in report.variants.iter().enumerate() {
        let runs = report
            .schedule
            .iter()
            .filter(|s| s.variant == index)
            .count();
        ensure!(variant.repetitions.len() == runs, "{}", variant.name);
    }
    ensure!(run.namespaces_left()?.is_empty());
    Ok(())
}

/// Whether this kernel has netem, as the runner sees it.
fn kernel_has_netem() -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    lab::run::netem_available(runtime.handle()).map_err(anyhow::Error::msg)
}

#[test]
fn netem_scenarios_are_refused_without_netem_and_show_their_delay_with_it() -> anyhow::Result<()> {
    let run = TestRun::new(
        "seed = 1\nrepetitions = 2\nwarmup = \"0s\"\nwindow = \"1s\"\n",
        "[[variants]]\nname = \"clean\"\n\
         [[variants]]\nname = \"delayed\"\nimpair = { \"a:eth0\" = { delay = \"2ms\" } }\n\
         [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"a\"\nto = \"b:7000\"\n",
    )?;
    if kernel_has_netem()? {
        // 2 ms each way: every round trip takes 4 ms longer.
        let report = run.run_ok()?;
        let p50 = |v: usize| lab::measure::mean(&report.variants[v].values("tcp_rr.p50_us"));
        let (clean, delayed) = (p50(0).context("clean p50")?, p50(1).context("delayed p50")?);
        ensure!(
            (3_500.0..6_000.0).contains(&(delayed - clean)),
            "p50 {clean} µs → {delayed} µs"
        );
    } else {
        let out = run.run()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(4), "{}: {stderr}", out.status);
        ensure!(
            stderr.contains("variant `delayed`") && stderr.contains("netem"),
            "{stderr}"
        );
        ensure!(!stderr.contains("variant `clean`"), "{stderr}");
        ensure!(!run.out().exists(), "a report was written");
        ensure!(run.state_files_left() == 0, "a state file was written");
    }
    ensure!(run.namespaces_left()?.is_empty());
    Ok(())
}

#[test]
fn sigint_mid_run_takes_the_lab_down_and_writes_a_partial_report() -> anyhow::Result<()> {
    let run = TestRun::new(
        "seed = 5\nrepetitions = 3\nwarmup = \"0s\"\nwindow = \"1s\"\n",
        "[[variants]]\nname = \"one\"\n[[variants]]\nname = \"two\"\n\
         [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"a\"\nto = \"b:7000\"\n",
    )?;
    let mut child = run
        .command()?
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    // The first measured run is done: stop the run in the middle.
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line?;
        let first_done = line.starts_with("[1/6]");
        seen.push(line);
        if first_done {
            break;
        }
    }
    ensure!(
        seen.last().is_some_and(|l| l.starts_with("[1/6]")),
        "no run finished: {seen:?}"
    );
    // SAFETY: kill(2) on our own child, which has not been waited for.
    let sent = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    ensure!(sent == 0, "kill: {}", std::io::Error::last_os_error());
    let rest: Vec<String> = lines.collect::<Result<_, _>>()?;
    let status = child.wait()?;
    ensure!(status.code() == Some(130), "{status}: {rest:?}");
    let report = Report::read(&run.out())?;
    ensure!(!report.complete, "{report:?}");
    let done = report.schedule.len();
    ensure!((1..6).contains(&done), "{done} runs");
    ensure!(report.schedule[..] == lab::scenario::schedule(5, 3, 2)[..done]);
    let measured: usize = report.variants.iter().map(|v| v.repetitions.len()).sum();
    ensure!(
        measured == done,
        "{measured} measured, {done} in the schedule"
    );
    let markdown = std::fs::read_to_string(run.out().join("report.md"))?;
    ensure!(markdown.contains("Incomplete"), "{markdown}");
    let left = run.namespaces_left()?;
    ensure!(left.is_empty(), "namespaces left: {left:?}");
    ensure!(run.state_files_left() == 0, "a state file is left");
    Ok(())
}

#[test]
fn a_link_flap_stalls_the_round_trip_in_flight() -> anyhow::Result<()> {
    let run = TestRun::new(
        "seed = 2\nrepetitions = 1\nwarmup = \"0s\"\nwindow = \"1500ms\"\n",
        "[[variants]]\nname = \"flap\"\n\
         [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"a\"\nto = \"b:7000\"\n\
         [[events]]\nat = \"300ms\"\nlink = \"a:eth0\"\nset = \"down\"\n\
         [[events]]\nat = \"700ms\"\nlink = \"b:eth0\"\nset = \"up\"\n",
    )?;
    let report = run.run_ok()?;
    // The round trip in flight when the link went down ended only after it came back up.
    let max = report.variants[0].values("tcp_rr.max_us");
    ensure!(max.iter().all(|us| *us >= 200_000.0), "{max:?}");
    ensure!(run.namespaces_left()?.is_empty());
    Ok(())
}

#[test]
fn rps_and_cpu_balance_variants_spread_a_hot_cpu() -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism()?.get();
    let run = TestRun::new(
        "seed = 4\nrepetitions = 1\nwarmup = \"0s\"\nwindow = \"1s\"\n",
        "[[variants]]\nname = \"rps\"\n\
         accelerators = [{ kind = \"rps\", node = \"b\", iface = \"eth0\", cpus = [0, 1] }]\n\
         [[variants]]\nname = \"balanced\"\n\
         accelerators = [{ kind = \"cpu_balance\", node = \"b\", iface = \"eth0\", cpus = [0, 1] },\
         { kind = \"offloads\", node = \"a\", iface = \"eth0\", tx = false, tso = false, gso = false },\
         { kind = \"offloads\", node = \"b\", iface = \"eth0\", gro = true }]\n\
         [[workloads]]\nkind = \"tcp_stream\"\nfrom = \"a\"\nto = \"b:7001\"\nconnections = 16\n\
         message = 65536\nfrom_cpus = [0]\nto_cpus = [0]\n",
    )?;
    if cpus < 2 {
        let out = run.run()?;
        ensure!(out.status.code() == Some(4), "{}", out.status);
        return Ok(());
    }
    let report = run.run_ok()?;
    for variant in &report.variants {
        let bytes = variant.values("tcp_stream.bytes_per_s");
        ensure!(
            bytes.iter().all(|b| *b > 0.0),
            "{}: {bytes:?}",
            variant.name
        );
    }
    // The balancer redirected the 16 flows to both CPUs, every redirect found its CPU, and
    // TCP survived the cpumap (checksum offload was turned off on a:eth0).
    let balanced = &report.variants[1];
    let landed: Vec<f64> = (0..2)
        .map(|cpu| {
            balanced
                .values(&format!("cpu_balance.b-eth0.cpu{cpu}_landed"))
                .first()
                .copied()
                .unwrap_or(0.0)
        })
        .collect();
    ensure!(
        landed.iter().all(|n| *n > 0.0),
        "landed per CPU: {landed:?}"
    );
    ensure!(balanced.values("cpu_balance.b-eth0.redirect_failed") == [0.0]);
    ensure!(
        report.variants[0]
            .values("cpu_balance.b-eth0.cpu0_landed")
            .is_empty()
    );
    ensure!(run.namespaces_left()?.is_empty());
    Ok(())
}
