//! `accel`: attach, inspect and detach the lab's eBPF accelerators.
//!
//! Attachments are pinned in bpffs (`/sys/fs/bpf/<prefix>/<accelerator>/<netns>/<iface>/`), so
//! they stay after `accel` exits and later calls find them.

use std::{
    fs,
    io::{self, Write as _},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use accel::{
    AttachMode, afxdp,
    cpu_balance::{Assign, CpuBalance, Options, PinnedCpuBalance, Weights},
    http_filter::{self, HttpFilter, PinnedHttpFilter, Policy, TestRunner, pcap},
    monitor::{self, Monitor, PinnedMonitor},
    pin::{BPFFS, DEFAULT_PREFIX, PinLayout},
    sock_redirect::{self, PinnedSockRedirect, SockRedirect},
};
use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

mod monitor_watch;

/// Attach, inspect and detach the lab's eBPF accelerators.
///
/// Exit codes: 0 success, 1 failure (the message says what and where), 2 bad arguments.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Name prefix of the lab's kernel objects (pins go to <bpffs>/<prefix>/).
    #[arg(long, global = true, default_value = DEFAULT_PREFIX)]
    prefix: String,
    /// Where bpffs is mounted.
    #[arg(long, global = true, default_value = BPFFS)]
    bpffs: PathBuf,
    /// Work on interfaces of this named network namespace (/run/netns/NAME), entered with
    /// setns so /sys and bpffs stay visible.
    #[arg(long, global = true)]
    netns: Option<String>,
    #[command(subcommand)]
    accelerator: Accelerator,
}

#[derive(Debug, Subcommand)]
enum Accelerator {
    /// Performance monitor: per-CPU packets, NET_RX softirq time, TCP retransmits, XDP
    /// redirects and cpumap work from kernel tracepoints; a live view and Prometheus /metrics.
    #[command(subcommand)]
    Monitor(MonitorCommand),
    /// HTTP request filter at XDP: allowed methods and path prefixes per destination port.
    #[command(subcommand)]
    HttpFilter(HttpFilterCommand),
    /// Socket redirect for same-host TCP: sock_ops records the sockets of a cgroup v2
    /// directory, sk_msg hands messages straight to the peer socket.
    #[command(subcommand)]
    SockRedirect(SockRedirectCommand),
    /// CPU balance at XDP: cpumap redirect by a symmetric flow hash over weighted CPUs.
    #[command(subcommand)]
    CpuBalance(CpuBalanceCommand),
    /// AF_XDP fast path: chosen UDP ports go to user space, which echoes or forwards them;
    /// runs in the foreground until SIGINT or SIGTERM, then detaches and prints its counters.
    #[command(subcommand)]
    Afxdp(AfxdpCommand),
}

#[derive(Debug, Subcommand)]
enum AfxdpCommand {
    /// Send each datagram back to its sender (MAC, IP addresses and ports swapped).
    Echo {
        #[command(flatten)]
        run: AfxdpRun,
    },
    /// Send each datagram on to a next hop (destination MAC and IP rewritten, TTL - 1).
    Forward {
        #[command(flatten)]
        run: AfxdpRun,
        /// The next hop's MAC address, e.g. 02:00:00:00:00:0a.
        #[arg(long)]
        next_hop_mac: String,
        /// New destination of IPv4 datagrams (IPv4 datagrams are dropped without it).
        #[arg(long)]
        next_hop_v4: Option<std::net::Ipv4Addr>,
        /// New destination of IPv6 datagrams (IPv6 datagrams are dropped without it).
        #[arg(long)]
        next_hop_v6: Option<std::net::Ipv6Addr>,
    },
}

#[derive(Debug, Args)]
struct AfxdpRun {
    #[command(flatten)]
    target: Target,
    /// UDP destination ports to handle in user space (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    ports: Vec<u16>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t)]
    mode: AttachMode,
    /// Bind in copy mode without trying zero-copy first.
    #[arg(long)]
    copy: bool,
    /// CPUs for the queue threads, round robin by queue (comma-separated; default: any).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Print the counters every this many seconds (0: only at the end).
    #[arg(long, default_value_t = 0)]
    interval: u64,
    /// Stop by itself after this many seconds (0: only on SIGINT or SIGTERM).
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Counters as one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum CpuBalanceCommand {
    /// Attach to an interface and pin, so it keeps balancing after accel exits.
    Attach {
        #[command(flatten)]
        target: Target,
        /// CPU weights as CPU=WEIGHT pairs, e.g. 0=1,1=3 (default: every online CPU, equal).
        #[arg(long)]
        weights: Option<Weights>,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t)]
        mode: AttachMode,
        /// How new flows get their CPU: the slots in turn, or by the flow's hash.
        #[arg(long, value_enum, default_value_t)]
        assign: Assign,
        /// Milliseconds a flow must be idle before it may move to another CPU.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        flow_idle_ms: u64,
    },
    /// Change the weights live (flows stay on their CPU while busy). CPUs leaving the set
    /// drain: they are taken out once no flow has sent to them for the idle time, or at the
    /// timeout with their busy flows moved.
    Weights {
        #[command(flatten)]
        target: Target,
        /// CPU weights as CPU=WEIGHT pairs, e.g. 0=1,1=3.
        #[arg(long)]
        weights: Weights,
        /// Seconds to wait for CPUs leaving the set to drain.
        #[arg(long, default_value_t = 10.0)]
        drain_timeout: f64,
    },
    /// Print the per-CPU weights, slots and counters.
    Stats {
        #[command(flatten)]
        target: Target,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Detach and remove the pins.
    Detach {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum SockRedirectCommand {
    /// Attach to a cgroup v2 directory and pin, so it keeps redirecting after accel exits.
    Attach {
        #[command(flatten)]
        target: CgroupTarget,
        /// Redirect connections with a local or remote port in this list (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        ports: Vec<u16>,
        /// Messages below this many bytes are small: a socket sending more than 8 small
        /// messages in a row without an answer moves to TCP for good. 0 turns the gate off.
        #[arg(long, default_value_t = sock_redirect::DEFAULT_MIN_SIZE)]
        min_size: u32,
    },
    /// Print the per-CPU counters and the number of recorded sockets.
    Stats {
        #[command(flatten)]
        target: CgroupTarget,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop recording new connections and remove the pins; recorded connections keep
    /// redirecting until they close.
    Detach {
        #[command(flatten)]
        target: CgroupTarget,
    },
}

#[derive(Debug, Args)]
struct CgroupTarget {
    /// The cgroup v2 directory (for example /sys/fs/cgroup/unified/lab).
    #[arg(long)]
    cgroup: PathBuf,
}

#[derive(Debug, Subcommand)]
enum HttpFilterCommand {
    /// Attach to an interface with a policy, and pin, so it keeps filtering after accel exits.
    Attach {
        #[command(flatten)]
        target: Target,
        /// The policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t)]
        mode: AttachMode,
    },
    /// Replace the policy of an attached filter, live (the program stays attached).
    Policy {
        #[command(flatten)]
        target: Target,
        /// The new policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
    },
    /// Print the global and per-rule counters.
    Stats {
        #[command(flatten)]
        target: Target,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Detach and remove the pins.
    Detach {
        #[command(flatten)]
        target: Target,
    },
    /// Run every frame of a classic pcap file through the program (BPF_PROG_TEST_RUN) and
    /// print one JSON line per frame: index, verdict, matched rule.
    Check {
        /// The policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// The capture (classic pcap, Ethernet).
        #[arg(long)]
        pcap: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum MonitorCommand {
    /// Attach (scoped to an interface) and pin, so it keeps counting after accel exits.
    Attach {
        #[command(flatten)]
        target: Target,
        /// Also count frames with an XDP program on the interface, in this mode. Off by
        /// default: any XDP program on a veth costs throughput.
        #[arg(long, value_enum)]
        xdp: Option<AttachMode>,
    },
    /// Print the per-CPU counters.
    Stats {
        #[command(flatten)]
        target: Target,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Live view: per-CPU rates, refreshed every second, sorted by CPU; optionally serves
    /// the counters in Prometheus text format on http://ADDR/metrics.
    Watch {
        #[command(flatten)]
        target: Target,
        /// Serve /metrics on this address (e.g. 127.0.0.1:9435).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Stop after this many refreshes (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Detach and remove the pins.
    Detach {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Args)]
struct Target {
    /// The network interface.
    #[arg(long)]
    iface: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accel: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let scope = match &cli.netns {
        Some(name) => {
            enter_netns(name)?;
            name.as_str()
        }
        None => "host",
    };
    let layout = PinLayout::new(&cli.bpffs, &cli.prefix);
    match cli.accelerator {
        Accelerator::Monitor(command) => monitor_command(command, &layout, scope),
        Accelerator::HttpFilter(command) => http_filter_command(command, &layout, scope),
        Accelerator::SockRedirect(command) => sock_redirect_command(command, &layout, scope),
        Accelerator::CpuBalance(command) => cpu_balance_command(command, &layout, scope),
        Accelerator::Afxdp(command) => afxdp_command(command),
    }
}

/// Set by SIGINT and SIGTERM.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

fn catch_stop_signals() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain data; the handler only stores to an atomic, which is
        // async-signal-safe.
        let ret = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if ret != 0 {
            return Err(io::Error::last_os_error()).context("install the signal handlers");
        }
    }
    Ok(())
}

fn afxdp_command(command: AfxdpCommand) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (run, mode) = match command {
        AfxdpCommand::Echo { run } => (run, afxdp::Mode::Echo),
        AfxdpCommand::Forward {
            run,
            next_hop_mac,
            next_hop_v4,
            next_hop_v6,
        } => (
            run,
            afxdp::Mode::Forward {
                mac: afxdp::parse_mac(&next_hop_mac)?,
                v4: next_hop_v4,
                v6: next_hop_v6,
            },
        ),
    };
    let mut config = afxdp::Config::new(&run.ports, mode)?;
    config.attach = run.mode;
    config.zero_copy = !run.copy;
    config.cpus = run.cpus;
    catch_stop_signals()?;
    let iface = &run.target.iface;
    let fast_path = afxdp::AfXdp::start(iface, &config)?;
    let stats = fast_path.stats()?;
    println!(
        "afxdp {} on {iface}: ports {:?}, {} queue(s), {} mode, XDP {:?} mode; Ctrl-C stops",
        match mode {
            afxdp::Mode::Echo => "echo",
            afxdp::Mode::Forward { .. } => "forward",
        },
        config.ports,
        stats.queues.len(),
        if stats.total().zero_copy {
            "zero-copy"
        } else {
            "copy"
        },
        fast_path.xdp_mode(),
    );
    io::stdout().flush()?;
    let interval = Duration::from_secs(run.interval);
    let mut last = std::time::Instant::now();
    let end = (run.duration > 0).then(|| last + Duration::from_secs(run.duration));
    while !SIGNALLED.load(Ordering::Relaxed)
        && !fast_path.failed()
        && end.is_none_or(|end| std::time::Instant::now() < end)
    {
        std::thread::sleep(Duration::from_millis(50));
        if run.interval > 0 && last.elapsed() >= interval {
            last = std::time::Instant::now();
            print_afxdp(&fast_path.stats()?, run.json)?;
        }
    }
    let stats = fast_path.stop()?;
    print_afxdp(&stats, run.json)?;
    Ok(())
}

fn print_afxdp(stats: &afxdp::Stats, json: bool) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "iface": stats.iface,
            "program": stats.program,
            "queues": stats.queues,
            "total": stats.total(),
        });
        writeln!(out, "{value}")?;
    } else {
        let p = &stats.program;
        writeln!(
            out,
            "afxdp on {}: program saw {} frames, redirected {}, no socket {}, passed {}",
            stats.iface, p.packets, p.redirected, p.no_socket, p.passed
        )?;
        writeln!(
            out,
            "{:>5} {:>12} {:>12} {:>10} {:>12} {:>14} {:>16} {:>15}",
            "queue",
            "rx",
            "tx",
            "dropped",
            "tx_ring_full",
            "fill_ring_empty",
            "kernel_rx_dropped",
            "kernel_ring_full"
        )?;
        let row = |out: &mut io::StdoutLock<'_>, name: &str, q: &afxdp::QueueStats| {
            writeln!(
                out,
                "{name:>5} {:>12} {:>12} {:>10} {:>12} {:>14} {:>16} {:>15}",
                q.rx_packets,
                q.tx_packets,
                q.dropped,
                q.tx_ring_full,
                q.fill_ring_empty,
                q.kernel_rx_dropped,
                q.kernel_rx_ring_full
            )
        };
        for q in &stats.queues {
            row(&mut out, &q.queue.to_string(), q)?;
        }
        row(&mut out, "all", &stats.total())?;
    }
    out.flush()?;
    Ok(())
}

fn cpu_balance_command(
    command: CpuBalanceCommand,
    layout: &PinLayout,
    scope: &str,
) -> anyhow::Result<()> {
    match command {
        CpuBalanceCommand::Attach {
            target,
            weights,
            mode,
            assign,
            flow_idle_ms,
        } => {
            let weights = match weights {
                Some(weights) => weights,
                None => Weights::online()?,
            };
            let options = Options {
                assign,
                flow_idle: Duration::from_millis(flow_idle_ms),
            };
            let pinned =
                CpuBalance::attach_pinned(&target.iface, mode, &weights, &options, layout, scope)?;
            println!(
                "cpu_balance attached to {} (weights {weights}, {assign:?} assignment), pinned at {}",
                target.iface,
                pinned.dir().display()
            );
        }
        CpuBalanceCommand::Weights {
            target,
            weights,
            drain_timeout,
        } => {
            let timeout = Duration::try_from_secs_f64(drain_timeout)
                .map_err(|e| anyhow::anyhow!("--drain-timeout {drain_timeout}: {e}"))?;
            let pinned = PinnedCpuBalance::open(layout, scope, &target.iface)?;
            pinned.set_weights(&weights)?;
            println!("cpu_balance on {}: weights {weights}", target.iface);
            let drained = pinned.drain(timeout)?;
            if !drained.idle.is_empty() {
                println!("drained CPUs {:?} (their flows were idle)", drained.idle);
            }
            if !drained.forced.is_empty() {
                println!(
                    "took CPUs {:?} out after {drain_timeout} s with flows still busy (moved)",
                    drained.forced
                );
            }
        }
        CpuBalanceCommand::Stats { target, json } => {
            let stats = PinnedCpuBalance::open(layout, scope, &target.iface)?.stats()?;
            if json {
                let value = serde_json::json!({
                    "iface": stats.iface,
                    "assign": stats.assign,
                    "flow_idle_ms": stats.flow_idle_ms,
                    "per_cpu": stats.per_cpu,
                    "total": stats.total(),
                });
                println!("{value}");
            } else {
                println!(
                    "cpu_balance on {} ({:?} assignment, flows move after {} ms idle)",
                    stats.iface, stats.assign, stats.flow_idle_ms
                );
                println!(
                    "{:>5} {:>9} {:>6} {:>12} {:>12} {:>12}",
                    "cpu", "weight", "slots", "targeted", "landed", "received"
                );
                for c in &stats.per_cpu {
                    let weight = if c.draining {
                        "draining".to_owned()
                    } else {
                        c.weight.to_string()
                    };
                    println!(
                        "{:>5} {:>9} {:>6} {:>12} {:>12} {:>12}",
                        c.cpu, weight, c.slots, c.targeted, c.landed, c.received.packets
                    );
                }
            }
        }
        CpuBalanceCommand::Detach { target } => {
            let pinned = PinnedCpuBalance::open(layout, scope, &target.iface)?;
            let dir = pinned.dir().to_owned();
            pinned.detach()?;
            println!(
                "cpu_balance detached from {} (removed {})",
                target.iface,
                dir.display()
            );
        }
    }
    Ok(())
}

fn sock_redirect_command(
    command: SockRedirectCommand,
    layout: &PinLayout,
    scope: &str,
) -> anyhow::Result<()> {
    match command {
        SockRedirectCommand::Attach {
            target,
            ports,
            min_size,
        } => {
            let config = sock_redirect::Config::new(&ports, min_size)?;
            let pinned = SockRedirect::attach_pinned(&target.cgroup, &config, layout, scope)?;
            println!(
                "sock_redirect attached to {} for ports {:?} (min size {min_size}), pinned at {}",
                target.cgroup.display(),
                config.ports(),
                pinned.dir().display()
            );
        }
        SockRedirectCommand::Stats { target, json } => {
            let stats = PinnedSockRedirect::open(layout, scope, &target.cgroup)?.stats()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({
                        "cgroup": target.cgroup,
                        "per_cpu": stats.per_cpu,
                        "total": stats.total(),
                        "sockets": stats.sockets,
                        "states": stats.states,
                    }))?
                );
            } else {
                print_redirect_table(&target.cgroup, &stats);
            }
        }
        SockRedirectCommand::Detach { target } => {
            let pinned = PinnedSockRedirect::open(layout, scope, &target.cgroup)?;
            let dir = pinned.dir().to_owned();
            pinned.detach()?;
            println!(
                "sock_redirect detached from {} (removed {})",
                target.cgroup.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

fn print_redirect_table(cgroup: &Path, stats: &sock_redirect::Stats) {
    println!(
        "sock_redirect on {}: {} sockets recorded",
        cgroup.display(),
        stats.sockets
    );
    println!(
        "{:>5} {:>11} {:>9} {:>13} {:>16} {:>11} {:>14} {:>8} {:>7} {:>6} {:>6} {:>14} {:>13}",
        "cpu",
        "established",
        "removed",
        "redirect_msgs",
        "redirect_bytes",
        "pass_msgs",
        "pass_bytes",
        "no_peer",
        "gated",
        "left",
        "stayed",
        "left_bytes",
        "record_failed"
    );
    let row = |cpu: &str, c: &sock_redirect::Totals| {
        println!(
            "{cpu:>5} {:>11} {:>9} {:>13} {:>16} {:>11} {:>14} {:>8} {:>7} {:>6} {:>6} {:>14} {:>13}",
            c.established,
            c.removed,
            c.redirected_msgs,
            c.redirected_bytes,
            c.passed_msgs,
            c.passed_bytes,
            c.no_peer,
            c.gated,
            c.left,
            c.stayed,
            c.left_bytes,
            c.record_failed
        );
    };
    for c in &stats.per_cpu {
        row(&c.cpu.to_string(), &c.counters);
    }
    row("all", &stats.total());
}

fn http_filter_command(
    command: HttpFilterCommand,
    layout: &PinLayout,
    scope: &str,
) -> anyhow::Result<()> {
    match command {
        HttpFilterCommand::Attach {
            target,
            policy,
            mode,
        } => {
            let policy = Policy::from_file(&policy)?;
            let pinned = HttpFilter::attach_pinned(&target.iface, mode, &policy, layout, scope)?;
            println!(
                "http_filter attached to {} with {} rules, pinned at {}",
                target.iface,
                policy.rules().len(),
                pinned.dir().display()
            );
        }
        HttpFilterCommand::Policy { target, policy } => {
            let policy = Policy::from_file(&policy)?;
            PinnedHttpFilter::open(layout, scope, &target.iface)?.set_policy(&policy)?;
            println!(
                "http_filter on {}: policy replaced ({} rules)",
                target.iface,
                policy.rules().len()
            );
        }
        HttpFilterCommand::Stats { target, json } => {
            let stats = PinnedHttpFilter::open(layout, scope, &target.iface)?.stats()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({
                        "iface": stats.iface,
                        "per_cpu": stats.per_cpu,
                        "total": stats.total(),
                        "rules": stats.rules,
                    }))?
                );
            } else {
                print_filter_tables(&stats);
            }
        }
        HttpFilterCommand::Detach { target } => {
            let pinned = PinnedHttpFilter::open(layout, scope, &target.iface)?;
            let dir = pinned.dir().to_owned();
            pinned.detach()?;
            println!(
                "http_filter detached from {} (removed {})",
                target.iface,
                dir.display()
            );
        }
        HttpFilterCommand::Check { policy, pcap } => check(&policy, &pcap)?,
    }
    Ok(())
}

fn check(policy: &Path, capture: &Path) -> anyhow::Result<()> {
    let policy = Policy::from_file(policy)?;
    let frames = pcap::read(capture)?;
    let mut runner = TestRunner::new(&policy)?;
    let mut out = io::stdout().lock();
    let mut refused = 0;
    for (index, frame) in frames.iter().enumerate() {
        let line = match runner.run(frame) {
            Ok(kernel) => {
                let rule = kernel.classification.rule;
                serde_json::json!({
                    "index": index,
                    "len": frame.len(),
                    "verdict": kernel.classification.verdict,
                    "rule": rule.and_then(|id| policy.rule(id)).map(|r| &r.name),
                    "rule_id": rule,
                })
            }
            Err(e) => {
                refused += 1;
                serde_json::json!({ "index": index, "len": frame.len(), "error": format!("{e:#}") })
            }
        };
        writeln!(out, "{line}")?;
    }
    if refused > 0 {
        bail!(
            "{refused} of {} frames of {} could not be run (see their \"error\" lines)",
            frames.len(),
            capture.display()
        );
    }
    Ok(())
}

fn print_filter_tables(stats: &http_filter::Stats) {
    println!("http_filter on {}", stats.iface);
    println!(
        "{:>5} {:>12} {:>13} {:>12} {:>12} {:>12} {:>14}",
        "cpu", "packets", "http_requests", "dropped", "passed", "monitored", "parse_failures"
    );
    let row = |cpu: &str, c: &http_filter::Totals| {
        println!(
            "{cpu:>5} {:>12} {:>13} {:>12} {:>12} {:>12} {:>14}",
            c.packets, c.http_requests, c.dropped, c.passed, c.monitored, c.parse_failures
        );
    };
    for c in &stats.per_cpu {
        row(&c.cpu.to_string(), &c.counters);
    }
    row("all", &stats.total());
    println!();
    println!("{:>4} {:<40} {:>12}", "id", "rule", "hits");
    for r in &stats.rules {
        println!("{:>4} {:<40} {:>12}", r.id, r.name, r.hits);
    }
}

fn monitor_command(command: MonitorCommand, layout: &PinLayout, scope: &str) -> anyhow::Result<()> {
    match command {
        MonitorCommand::Attach { target, xdp } => {
            let pinned = Monitor::attach_pinned(&target.iface, xdp, layout, scope)?;
            let scoped = if pinned.scoped()? {
                "counting its packets"
            } else {
                "no kernel BTF: counting packets of every interface"
            };
            println!(
                "monitor attached to {} ({scoped}), pinned at {}",
                target.iface,
                pinned.dir().display()
            );
        }
        MonitorCommand::Stats { target, json } => {
            let stats = PinnedMonitor::open(layout, scope, &target.iface)?.stats()?;
            if json {
                println!("{}", serde_json::to_string(&stats_json(&stats))?);
            } else {
                print_table(&stats);
            }
        }
        MonitorCommand::Watch {
            target,
            listen,
            count,
        } => {
            let pinned = PinnedMonitor::open(layout, scope, &target.iface)?;
            monitor_watch::run(pinned, listen, count)?;
        }
        MonitorCommand::Detach { target } => {
            let pinned = PinnedMonitor::open(layout, scope, &target.iface)?;
            let dir = pinned.dir().to_owned();
            pinned.detach()?;
            println!(
                "monitor detached from {} (removed {})",
                target.iface,
                dir.display()
            );
        }
    }
    Ok(())
}

fn stats_json(stats: &monitor::Stats) -> serde_json::Value {
    serde_json::json!({
        "iface": stats.iface,
        "per_cpu": stats.per_cpu,
        "total": stats.total(),
    })
}

fn print_table(stats: &monitor::Stats) {
    println!("monitor on {}", stats.iface);
    println!(
        "{:>5} {:>12} {:>14} {:>10} {:>14} {:>8} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "cpu",
        "rx_packets",
        "rx_bytes",
        "net_rx",
        "net_rx_ns",
        "retrans",
        "redirects",
        "redir_err",
        "xdp_exc",
        "cpumap_pkts",
        "sockmap_msgs"
    );
    let row = |cpu: &str, c: &monitor::Counters| {
        println!(
            "{cpu:>5} {:>12} {:>14} {:>10} {:>14} {:>8} {:>10} {:>10} {:>10} {:>12} {:>12}",
            c.kernel.rx_packets,
            c.kernel.rx_bytes,
            c.kernel.net_rx_softirqs,
            c.kernel.net_rx_softirq_ns,
            c.kernel.tcp_retransmits,
            c.kernel.xdp_redirects,
            c.kernel.xdp_redirect_errors,
            c.kernel.xdp_exceptions,
            c.kernel.cpumap_packets,
            c.sockmap_redirects
        );
    };
    for c in &stats.per_cpu {
        row(&c.cpu.to_string(), &c.counters);
    }
    row("all", &stats.total());
}

/// Moves this (single-threaded) process into the named network namespace.
fn enter_netns(name: &str) -> anyhow::Result<()> {
    let path = PathBuf::from("/run/netns").join(name);
    let ns = fs::File::open(&path)
        .with_context(|| format!("network namespace {name:?} ({})", path.display()))?;
    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
        .with_context(|| format!("setns into {name:?}"))
}
