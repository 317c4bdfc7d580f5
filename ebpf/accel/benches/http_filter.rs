//! What the HTTP filter costs per dropped request, side by side in one run:
//!
//! (a) `BPF_PROG_TEST_RUN` (no device): the kernel's mean time per run of the filter and of an
//!     XDP_DROP program on the same frame; ratio and added nanoseconds — for that request, then
//!     for requests of other kinds (out of scope, no rule, IPv6, a method not allowed).
//! (b) A real veth path: a generator in one namespace (`accel::xdp_bench::TrafficGen`, frames
//!     built and redirected in the kernel) sends the same frame over three veth pairs into a
//!     second namespace, where the receiving end drops it with XDP_DROP, with the filter, or —
//!     no XDP, GRO on so that it is polled like a NIC — with an `iptables -m string` rule in
//!     the raw table. The kernel's test timer gives the CPU time per frame of everything
//!     (generation, transfer, receive, drop); the generator's own time (frames dropped where
//!     they are made) is subtracted to give the receive cost.
//!
//! Each repetition measures every variant once, in an order reversed every other repetition
//! (ABBA); ratios are taken within a repetition and reported as the mean with a 95 % bootstrap
//! interval. Needs root. `tools/check/http-filter` runs it and checks the goals.
//!
//! `cargo bench -p accel --bench http_filter -- [--frames N] [--repetitions R] [--json FILE]`

use std::{path::PathBuf, process::Command, time::Duration};

use accel::{
    AttachMode,
    ethtool::{self, Offload},
    http_filter::{Bench, HttpFilter, Policy, TestRunner},
    xdp_bench::{DropSink, TrafficGen},
};
use anyhow::{Context as _, ensure};
use clap::Parser;
use etherparse::PacketBuilder;
use serde::Serialize;
use serde_json::json;
use testkit::NetNs;

/// The policy: requests on port 80 with allowed methods, paths under /admin dropped.
const POLICY: &str = r#"
[[ports]]
name = "web"
ports = [80]
allowed_methods = ["GET", "HEAD", "POST"]

[[paths]]
name = "admin"
ports = [80]
prefix = "/admin"
action = "drop"
"#;

/// The `iptables` rule that drops the same requests.
const IPTABLES_RULE: &[&str] = &[
    "-t",
    "raw",
    "-A",
    "PREROUTING",
    "-p",
    "tcp",
    "--dport",
    "80",
    "-m",
    "string",
    "--algo",
    "bm",
    "--string",
    "GET /admin",
    "-j",
    "DROP",
];

const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbe, 0x01];
const RX_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbe, 0x02];

#[derive(Parser, Debug)]
struct Args {
    /// Frames per timed run (and BPF_PROG_TEST_RUN repeats).
    #[arg(long, default_value_t = 1_000_000)]
    frames: u32,
    /// Repetitions of the whole set.
    #[arg(long, default_value_t = 10)]
    repetitions: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The headers a browser sends after its request line.
const BROWSER_HEADERS: &str = "Host: disgrafs.lab\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
    Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
    Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate\r\n\
    Connection: keep-alive\r\nCookie: session=4f1c2a9b7e3d; theme=dark\r\n\r\n";

/// `request_line` and a browser's headers as one TCP segment to `dport`, over IPv4 or IPv6.
fn request_frame(v6: bool, dport: u16, request_line: &str) -> anyhow::Result<Vec<u8>> {
    let payload = format!("{request_line}\r\n{BROWSER_HEADERS}");
    let eth = PacketBuilder::ethernet2(GEN_MAC, RX_MAC);
    let ip = if v6 {
        eth.ipv6([0xfd; 16], [0xfe; 16], 64)
    } else {
        eth.ipv4([10, 203, 0, 2], [10, 203, 0, 1], 64)
    };
    let mut frame = Vec::new();
    ip.tcp(40_000, dport, 1, 64_240)
        .ack(1)
        .psh()
        .write(&mut frame, payload.as_bytes())?;
    Ok(frame)
}

/// A browser's request for a blocked page, as one TCP segment to port 80.
fn frame() -> anyhow::Result<Vec<u8>> {
    request_frame(false, 80, "GET /admin/users?page=2 HTTP/1.1")
}

/// Requests of other kinds, timed under BPF_PROG_TEST_RUN only: what each path through the
/// filter adds.
fn kinds() -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    Ok(vec![
        (
            "port out of scope",
            request_frame(false, 443, "GET / HTTP/1.1")?,
        ),
        (
            "GET, no rule",
            request_frame(false, 80, "GET /index.html HTTP/1.1")?,
        ),
        ("GET, blocked prefix", frame()?),
        (
            "IPv6 GET, blocked prefix",
            request_frame(true, 80, "GET /admin HTTP/1.1")?,
        ),
        (
            "method not allowed",
            request_frame(false, 80, "DELETE /files/a HTTP/1.1")?,
        ),
    ])
}

/// A veth pair from the generator's namespace into the receiver's.
struct Pair {
    gen_if: String,
    rx_if: String,
}

fn pair(gen_ns: &NetNs, rx_ns: &NetNs, tag: char) -> anyhow::Result<Pair> {
    let (gen_if, rx_if) = (
        format!("{}{tag}", gen_ns.name()),
        format!("{}{tag}", rx_ns.name()),
    );
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    gen_ns.ip(&format!(
        "link add {gen_if} address {} type veth peer name {rx_if} address {} netns {}",
        mac(GEN_MAC),
        mac(RX_MAC),
        rx_ns.name()
    ))?;
    gen_ns.ip(&format!("link set {gen_if} up"))?;
    rx_ns.ip(&format!("link set {rx_if} up"))?;
    Ok(Pair { gen_if, rx_if })
}

/// Packets counted by the first rule of the raw table's PREROUTING chain.
fn iptables_packets(rx_ns: &NetNs) -> anyhow::Result<u64> {
    let out = rx_ns.run(|| {
        Command::new("iptables")
            .args(["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"])
            .output()
    })??;
    ensure!(out.status.success(), "iptables -L: {out:?}");
    let text = String::from_utf8(out.stdout)?;
    let rule = text.lines().nth(2).context("no rule in raw PREROUTING")?;
    Ok(rule
        .split_whitespace()
        .next()
        .context("empty rule line")?
        .parse()?)
}

/// Mean and 95 % bootstrap interval of the mean.
#[derive(Clone, Copy, Debug, Serialize)]
struct Estimate {
    mean: f64,
    ci_low: f64,
    ci_high: f64,
}

fn estimate(values: &[f64]) -> Estimate {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    // xorshift64*, fixed seed: the interval is reproducible for the same values.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut means: Vec<f64> = (0..2000)
        .map(|_| {
            (0..values.len())
                .map(|_| values[(next() % values.len() as u64) as usize])
                .sum::<f64>()
                / values.len() as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    Estimate {
        mean,
        ci_low: means[49],
        ci_high: means[1949],
    }
}

fn load_average() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/proc/loadavg")?;
    Ok(text
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" "))
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// One repetition's per-frame times, in nanoseconds.
#[derive(Default, Debug)]
struct Times {
    ttr_floor: f64,
    ttr_filter: f64,
    generator: f64,
    veth_floor: f64,
    veth_filter: f64,
    veth_iptables: f64,
}

#[derive(Clone, Copy, Debug)]
enum Variant {
    TtrFloor,
    TtrFilter,
    Generator,
    VethFloor,
    VethFilter,
    VethIptables,
}

const VARIANTS: [Variant; 6] = [
    Variant::TtrFloor,
    Variant::TtrFilter,
    Variant::Generator,
    Variant::VethFloor,
    Variant::VethFilter,
    Variant::VethIptables,
];

struct Lab {
    frames: u32,
    frame: Vec<u8>,
    runner: TestRunner,
    gen_ns: NetNs,
    rx_ns: NetNs,
    traffic: TrafficGen,
    floor: Pair,
    filter: Pair,
    iptables: Pair,
    http_filter: HttpFilter,
}

impl Lab {
    fn measure(&mut self, variant: Variant, times: &mut Times) -> anyhow::Result<()> {
        let n = self.frames;
        match variant {
            Variant::TtrFloor => {
                times.ttr_floor = ns(self.runner.time(Bench::Floor, &self.frame, n)?);
            }
            Variant::TtrFilter => {
                times.ttr_filter = ns(self.runner.time(Bench::Filter, &self.frame, n)?);
            }
            Variant::Generator => {
                let (traffic, frame) = (&mut self.traffic, &self.frame);
                times.generator = ns(self.gen_ns.run(|| traffic.discard(frame, n))??);
            }
            Variant::VethFloor => times.veth_floor = ns(self.send(Which::Floor)?),
            Variant::VethFilter => {
                let before = self.http_filter.stats()?.total().dropped;
                times.veth_filter = ns(self.send(Which::Filter)?);
                let dropped = self.http_filter.stats()?.total().dropped - before;
                ensure!(
                    dropped == u64::from(n),
                    "the filter dropped {dropped} of {n}"
                );
            }
            Variant::VethIptables => {
                let before = iptables_packets(&self.rx_ns)?;
                times.veth_iptables = ns(self.send(Which::Iptables)?);
                let dropped = iptables_packets(&self.rx_ns)? - before;
                ensure!(dropped == u64::from(n), "iptables dropped {dropped} of {n}");
            }
        }
        Ok(())
    }

    fn send(&mut self, which: Which) -> anyhow::Result<Duration> {
        let iface = match which {
            Which::Floor => &self.floor.gen_if,
            Which::Filter => &self.filter.gen_if,
            Which::Iptables => &self.iptables.gen_if,
        };
        let (traffic, frame, n) = (&mut self.traffic, &self.frame, self.frames);
        Ok(self.gen_ns.run(|| traffic.send(iface, frame, n))??)
    }
}

enum Which {
    Floor,
    Filter,
    Iptables,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.repetitions >= 2, "--repetitions must be at least 2");
    let policy = Policy::parse(POLICY).map_err(anyhow::Error::msg)?;
    let frame = frame()?;
    let load_before = load_average()?;

    let gen_ns = NetNs::new()?;
    let rx_ns = NetNs::new()?;
    rx_ns.run(testkit::disable_ipv6_autoconf)??;
    gen_ns.run(testkit::disable_ipv6_autoconf)??;
    let floor = pair(&gen_ns, &rx_ns, 'f')?;
    let filter = pair(&gen_ns, &rx_ns, 'h')?;
    let iptables = pair(&gen_ns, &rx_ns, 'i')?;
    let sink = rx_ns.run(|| DropSink::attach(&floor.rx_if, AttachMode::Native))??;
    let http_filter =
        rx_ns.run(|| HttpFilter::attach(&filter.rx_if, AttachMode::Native, &policy))??;
    rx_ns.run(|| -> anyhow::Result<()> {
        ethtool::set_offload(&iptables.rx_if, Offload::Gro, true)?;
        let mut rule = IPTABLES_RULE.to_vec();
        rule.extend(["-i", &iptables.rx_if]);
        let out = Command::new("iptables").args(&rule).output()?;
        ensure!(out.status.success(), "iptables {rule:?}: {out:?}");
        Ok(())
    })??;

    let mut bench = Lab {
        frames: args.frames,
        frame,
        runner: TestRunner::new(&policy)?,
        gen_ns,
        rx_ns,
        traffic: TrafficGen::new()?,
        floor,
        filter,
        iptables,
        http_filter,
    };

    // Every frame reaches the XDP_DROP program (counted with BPF run statistics on, which cost
    // time per run, so only here), and the filter and the rule drop them all (checked on
    // every timed run).
    {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
        let before = sink.runs()?;
        bench.send(Which::Floor)?;
        let ran = sink.runs()? - before;
        ensure!(
            ran == u64::from(bench.frames),
            "the XDP_DROP program ran {ran} times for {} frames",
            bench.frames
        );
    }
    let mut warmup = Times::default();
    for variant in VARIANTS {
        bench.measure(variant, &mut warmup)?;
    }

    let mut runs = Vec::new();
    for rep in 0..args.repetitions {
        let mut times = Times::default();
        let mut order = VARIANTS.to_vec();
        if rep % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            bench.measure(variant, &mut times)?;
        }
        eprintln!("repetition {}: {times:?}", rep + 1);
        runs.push(times);
    }
    let mut by_kind = serde_json::Map::new();
    for (name, frame) in kinds()? {
        let (mut added, mut ratio) = (Vec::new(), Vec::new());
        for _ in 0..args.repetitions {
            let floor = ns(bench.runner.time(Bench::Floor, &frame, args.frames)?);
            let filter = ns(bench.runner.time(Bench::Filter, &frame, args.frames)?);
            added.push(filter - floor);
            ratio.push(filter / floor);
        }
        by_kind.insert(
            name.to_owned(),
            json!({ "added_ns": estimate(&added), "filter_over_floor": estimate(&ratio) }),
        );
    }
    let load_after = load_average()?;

    let of = |f: &dyn Fn(&Times) -> f64| estimate(&runs.iter().map(f).collect::<Vec<_>>());
    let report = json!({
        "frames": args.frames,
        "repetitions": args.repetitions,
        "frame_bytes": bench.frame.len(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "test_run_by_kind": by_kind,
        "test_run": {
            "floor_ns": of(&|t| t.ttr_floor),
            "filter_ns": of(&|t| t.ttr_filter),
            "added_ns": of(&|t| t.ttr_filter - t.ttr_floor),
            "filter_over_floor": of(&|t| t.ttr_filter / t.ttr_floor),
        },
        "veth": {
            "generator_ns": of(&|t| t.generator),
            "floor_ns": of(&|t| t.veth_floor),
            "filter_ns": of(&|t| t.veth_filter),
            "iptables_ns": of(&|t| t.veth_iptables),
            "floor_receive_ns": of(&|t| t.veth_floor - t.generator),
            "filter_receive_ns": of(&|t| t.veth_filter - t.generator),
            "iptables_receive_ns": of(&|t| t.veth_iptables - t.generator),
            "filter_over_floor": of(&|t| (t.veth_filter - t.generator) / (t.veth_floor - t.generator)),
            "iptables_over_filter": of(&|t| (t.veth_iptables - t.generator) / (t.veth_filter - t.generator)),
            "filter_over_floor_gross": of(&|t| t.veth_filter / t.veth_floor),
            "iptables_over_filter_gross": of(&|t| t.veth_iptables / t.veth_filter),
            "test_run_added_over_floor_receive": of(&|t| {
                let floor = t.veth_floor - t.generator;
                (floor + t.ttr_filter - t.ttr_floor) / floor
            }),
        },
    });
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    drop(sink);
    Ok(())
}

fn print_report(r: &serde_json::Value) {
    let e = |v: &serde_json::Value| {
        format!(
            "{:.3} [{:.3}, {:.3}]",
            v["mean"].as_f64().unwrap_or(f64::NAN),
            v["ci_low"].as_f64().unwrap_or(f64::NAN),
            v["ci_high"].as_f64().unwrap_or(f64::NAN)
        )
    };
    let t = &r["test_run"];
    let v = &r["veth"];
    println!(
        "http_filter cost: {} frames of {} bytes per run, {} repetitions; load average {} → {}",
        r["frames"],
        r["frame_bytes"],
        r["repetitions"],
        r["load_average_before"],
        r["load_average_after"]
    );
    println!("(a) BPF_PROG_TEST_RUN, ns per run");
    println!("    XDP_DROP floor {}", e(&t["floor_ns"]));
    println!("    http_filter    {}", e(&t["filter_ns"]));
    println!("    added          {}", e(&t["added_ns"]));
    println!("    filter/floor   {}", e(&t["filter_over_floor"]));
    if let Some(kinds) = r["test_run_by_kind"].as_object() {
        for (name, k) in kinds {
            println!(
                "    {name:<26} added {}  filter/floor {}",
                e(&k["added_ns"]),
                e(&k["filter_over_floor"])
            );
        }
    }
    println!("(b) veth, ns per frame (generator + transfer + receive)");
    println!("    generator alone {}", e(&v["generator_ns"]));
    println!(
        "    XDP_DROP        {}  receive {}",
        e(&v["floor_ns"]),
        e(&v["floor_receive_ns"])
    );
    println!(
        "    http_filter     {}  receive {}",
        e(&v["filter_ns"]),
        e(&v["filter_receive_ns"])
    );
    println!(
        "    iptables -m string {}  receive {}",
        e(&v["iptables_ns"]),
        e(&v["iptables_receive_ns"])
    );
    println!(
        "    filter/floor (receive)     {}",
        e(&v["filter_over_floor"])
    );
    println!(
        "    iptables/filter (receive)  {}",
        e(&v["iptables_over_filter"])
    );
    println!(
        "    filter/floor (gross)       {}",
        e(&v["filter_over_floor_gross"])
    );
    println!(
        "    iptables/filter (gross)    {}",
        e(&v["iptables_over_filter_gross"])
    );
    println!(
        "    (floor receive + test-run added) / floor receive  {}",
        e(&v["test_run_added_over_floor_receive"])
    );
}
