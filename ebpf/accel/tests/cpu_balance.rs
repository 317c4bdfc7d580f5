//! The CPU balancer against a real kernel: UDP flows on a veth in a fresh namespace land on
//! the CPUs the hash and weights say (counted by the cpumap program on the CPU itself), or in
//! weighted rotation exactly by weight; live weight changes take effect; a CPU leaving the set
//! keeps its busy flows until they idle (or a drain timeout); a TCP transfer through the
//! balanced interface arrives intact and in order; and the pinned CLI life cycle. Needs root
//! and at least 2 CPUs.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use accel::{
    AttachMode,
    cpu_balance::{self, Assign, CpuBalance, Options, Stats, Weights},
};
use anyhow::{Context as _, ensure};
use etherparse::PacketBuilder;
use testkit::{NetNs, VethPair};

const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const A_IP: [u8; 4] = [10, 201, 0, 1];
const B_IP: [u8; 4] = [10, 201, 0, 2];

/// A namespace with a veth pair `<ns>a` ↔ `<ns>b`, both up, IPv6 off.
fn veth_lab() -> anyhow::Result<(NetNs, String, String)> {
    let ns = NetNs::new()?;
    let (a, b) = (format!("{}a", ns.name()), format!("{}b", ns.name()));
    ns.run(testkit::disable_ipv6_autoconf)??;
    ns.ip(&format!("link add {a} type veth peer name {b}"))?;
    ns.ip(&format!("link set {a} up"))?;
    ns.ip(&format!("link set {b} up"))?;
    Ok((ns, a, b))
}

fn udp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(B_MAC, A_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut frame, b"cpu-balance")
        .expect("write frame");
    frame
}

fn cpu_of(weights_table: &[u32], src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> u32 {
    let key = cpu_balance::flow_key(
        17,
        SocketAddr::from((Ipv4Addr::from(src), sport)),
        SocketAddr::from((Ipv4Addr::from(dst), dport)),
    )
    .expect("same family");
    weights_table[key.slot() as usize]
}

/// Polls `stats` until `done` holds or 5 s pass (veth XDP and cpumap run asynchronously).
fn wait_for(
    mut stats: impl FnMut() -> accel::Result<Stats>,
    done: impl Fn(&Stats) -> bool,
) -> anyhow::Result<Stats> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = stats()?;
        if done(&s) || Instant::now() > deadline {
            return Ok(s);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the kernel holds none of `programs` (freeing is RCU-deferred).
fn wait_released(programs: &BTreeSet<u32>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let held: Vec<u32> = aya::programs::loaded_programs()
            .flatten()
            .map(|p| p.id())
            .filter(|id| programs.contains(id))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "kernel still holds {held:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn require_two_cpus() -> anyhow::Result<()> {
    let online = aya::util::online_cpus().map_err(|(_, e)| e)?;
    ensure!(
        online.contains(&0) && online.contains(&1),
        "needs CPUs 0 and 1 online, have {online:?}"
    );
    Ok(())
}

#[test]
fn udp_flows_land_on_the_weighted_cpus_and_follow_a_live_change() -> anyhow::Result<()> {
    require_two_cpus()?;
    let (ns, a, b) = veth_lab()?;
    const FLOWS: u16 = 600;
    const FRAMES_PER_FLOW: usize = 3;
    let weights = Weights::new([(0, 1), (1, 3)])?;
    let table = weights.slot_table(&[]);

    let hash = Options {
        assign: Assign::Hash,
        ..Options::default()
    };
    let ours = ns.run(|| -> anyhow::Result<BTreeSet<u32>> {
        let mut balance =
            CpuBalance::attach_with(&a, AttachMode::Native, &weights, &hash).context("attach")?;
        let ours: BTreeSet<u32> = balance.program_ids()?.into_iter().collect();
        let mut predicted = [0u64; 2];
        for port in 0..FLOWS {
            let sport = 20000 + port;
            testkit::send_frames(&b, &udp_frame(B_IP, sport, A_IP, 9), FRAMES_PER_FLOW)?;
            // The reverse direction of every tenth flow: the same CPU.
            let reverse = port % 10 == 0;
            if reverse {
                testkit::send_frames(&b, &udp_frame(A_IP, 9, B_IP, sport), 1)?;
            }
            let cpu = cpu_of(&table, B_IP, sport, A_IP, 9) as usize;
            predicted[cpu] += (FRAMES_PER_FLOW + usize::from(reverse)) as u64;
        }
        let total = predicted.iter().sum::<u64>();
        let s = wait_for(
            || balance.stats(),
            |s| s.landed().iter().sum::<u64>() >= total,
        )?;
        thread::sleep(Duration::from_millis(200));
        let s2 = balance.stats()?;
        ensure!(s2 == s, "late frames: {s:?} then {s2:?}");
        let t = s.total();
        ensure!(
            t.packets == total && t.redirected == total && t.new_flows == u64::from(FLOWS),
            "{t:?} for {total} frames of {FLOWS} flows"
        );
        ensure!(
            s.targeted()[..2] == predicted && s.landed()[..2] == predicted,
            "predicted {predicted:?}, targeted {:?}, landed {:?}",
            s.targeted(),
            s.landed()
        );
        // Flows, not frames: each flow's share is fixed by the hash; 600 flows over 256
        // slots, 3/4 of the slots on CPU 1.
        let share = predicted[1] as f64 / total as f64;
        eprintln!(
            "cpu_balance spread 0=1,1=3: frames per CPU {predicted:?}, CPU 1 share {share:.3}"
        );
        ensure!(
            (share - 0.75).abs() < 0.06,
            "CPU 1 share {share:.3}, want 0.75 ± 0.06"
        );

        // Live change: everything to CPU 1. CPU 0 drains: nothing is sent to it now, so it is
        // taken out after the idle time; then new flows and CPU 0's old flows go to CPU 1.
        balance.set_weights(&Weights::new([(1, 1)])?)?;
        ensure!(balance.stats()?.draining() == [0]);
        let drained = balance.drain(Duration::from_secs(10))?;
        ensure!(
            drained.idle == [0] && drained.forced.is_empty(),
            "{drained:?}"
        );
        let before = balance.stats()?;
        ensure!(before.draining().is_empty(), "{before:?}");
        for port in 0..FLOWS {
            testkit::send_frames(&b, &udp_frame(B_IP, 30000 + port, A_IP, 9), 1)?;
            testkit::send_frames(&b, &udp_frame(B_IP, 20000 + port, A_IP, 9), 1)?;
        }
        let want = before.landed()[1] + 2 * u64::from(FLOWS);
        let after = wait_for(|| balance.stats(), |s| s.landed()[1] >= want)?;
        ensure!(
            after.landed()[0] == before.landed()[0] && after.landed()[1] == want,
            "after the change: landed {:?} → {:?}",
            before.landed(),
            after.landed()
        );
        ensure!(
            after.per_cpu[0].slots == 0 && after.per_cpu[1].slots == 256,
            "{after:?}"
        );
        ensure!(
            after.total().moved_flows >= u64::from(FLOWS) / 8
                && after.total().moved_busy_flows == 0,
            "CPU 0's idle flows moved: {:?}",
            after.total()
        );
        Ok(ours)
    })??;
    wait_released(&ours)?;
    Ok(())
}

/// Runs `f` on a thread pinned to CPU 0: frames it sends on a veth are received (and balanced)
/// on CPU 0, so the balancer's rotation for that CPU is predictable.
fn on_cpu0<T: Send>(f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<T> {
            // SAFETY: cpu_set_t is plain data; the calls only read and write it.
            let set = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                set
            };
            // SAFETY: pins the calling thread; `set` is valid for the call.
            if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("pinned thread panicked"))?
    })
}

/// Frames landed per CPU since `before`.
fn landed_since(before: &Stats, after: &Stats) -> [u64; 2] {
    [0, 1].map(|cpu| after.landed()[cpu] - before.landed()[cpu])
}

#[test]
fn rotation_spreads_any_run_of_flows_exactly_by_weight() -> anyhow::Result<()> {
    require_two_cpus()?;
    let (ns, a, b) = veth_lab()?;
    for (weights, expected) in [([(0, 1), (1, 1)], [32, 32]), ([(0, 1), (1, 3)], [16, 48])] {
        let weights = Weights::new(weights)?;
        ns.run(|| -> anyhow::Result<()> {
            let balance = CpuBalance::attach(&a, AttachMode::Native, &weights)?;
            let before = balance.stats()?;
            // 64 flows, both directions of every fourth: each flow's frames on one CPU, the
            // flows split exactly by weight (a hash gives only a binomial split).
            let mut flows = [0u64; 2];
            for port in 0..64u16 {
                let sport = 40000 + port;
                let sent = balance.stats()?;
                let reverse = port % 4 == 0;
                on_cpu0(|| -> anyhow::Result<()> {
                    testkit::send_frames(&b, &udp_frame(B_IP, sport, A_IP, 9), 2)?;
                    if reverse {
                        testkit::send_frames(&b, &udp_frame(A_IP, 9, B_IP, sport), 1)?;
                    }
                    Ok(())
                })??;
                let frames = 2 + u64::from(reverse);
                let now = wait_for(
                    || balance.stats(),
                    |s| landed_since(&sent, s).iter().sum::<u64>() >= frames,
                )?;
                let landed = landed_since(&sent, &now);
                let Some(cpu) = landed.iter().position(|n| *n == frames) else {
                    anyhow::bail!("flow {sport} split over the CPUs: {landed:?}");
                };
                flows[cpu] += 1;
            }
            let after = balance.stats()?;
            ensure!(flows == expected, "flows per CPU {flows:?} for {weights}");
            ensure!(after.total().new_flows - before.total().new_flows == 64);
            Ok(())
        })??;
    }
    Ok(())
}

#[test]
fn a_cpu_leaving_the_set_keeps_busy_flows_until_they_idle() -> anyhow::Result<()> {
    require_two_cpus()?;
    let (ns, a, b) = veth_lab()?;
    let options = Options {
        assign: Assign::Rotation,
        flow_idle: Duration::from_secs(2),
    };
    let both = Weights::new([(0, 1), (1, 1)])?;
    let only_1 = Weights::new([(1, 1)])?;
    let flow = |sport: u16| udp_frame(B_IP, sport, A_IP, 9);
    // Sends `n` frames of flow `sport` from CPU 0: where they landed.
    let send = |balance: &CpuBalance, sport: u16, n: usize| -> anyhow::Result<[u64; 2]> {
        let before = balance.stats()?;
        on_cpu0(|| testkit::send_frames(&b, &flow(sport), n))??;
        let after = wait_for(
            || balance.stats(),
            |s| landed_since(&before, s).iter().sum::<u64>() >= n as u64,
        )?;
        Ok(landed_since(&before, &after))
    };
    ns.run(|| -> anyhow::Result<()> {
        let mut balance = CpuBalance::attach_with(&a, AttachMode::Native, &both, &options)?;
        // The rotation of a fresh table 0 1 0 1 …: flow 1000 on CPU 0, flow 1001 on CPU 1.
        ensure!(send(&balance, 1000, 5)? == [5, 0]);
        ensure!(send(&balance, 1001, 5)? == [0, 5]);

        balance.set_weights(&only_1)?;
        let s = balance.stats()?;
        ensure!(s.draining() == [0] && s.per_cpu[0].slots == 0, "{s:?}");
        // Busy: flow 1000 stays on the draining CPU; a new flow goes to CPU 1.
        ensure!(send(&balance, 1000, 5)? == [5, 0]);
        ensure!(send(&balance, 1002, 5)? == [0, 5]);
        let started = Instant::now();
        let drained = balance.drain(Duration::from_secs(20))?;
        ensure!(
            drained.idle == [0] && drained.forced.is_empty(),
            "{drained:?}"
        );
        ensure!(
            started.elapsed() >= Duration::from_secs(2),
            "drained before the flows were idle for 2 s"
        );
        // Idle now: flow 1000 moves to CPU 1 with its next frame; flow 1001, idle too, keeps
        // CPU 1, which is still in the set.
        ensure!(send(&balance, 1000, 5)? == [0, 5]);
        ensure!(send(&balance, 1001, 5)? == [0, 5]);
        let t = balance.stats()?.total();
        ensure!(t.moved_flows == 1 && t.moved_busy_flows == 0, "{t:?}");

        // A drain that times out takes the CPU out with its busy flow, which moves at once.
        balance.set_weights(&both)?;
        let on_0 = (2000..2002)
            .find(|sport| send(&balance, *sport, 1).is_ok_and(|landed| landed == [1, 0]))
            .context("no new flow landed on CPU 0")?;
        balance.set_weights(&only_1)?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let drained = thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = on_cpu0(|| testkit::send_frames(&b, &flow(on_0), 1));
                    thread::sleep(Duration::from_millis(20));
                }
            });
            let drained = balance.drain(Duration::from_millis(500));
            thread::sleep(Duration::from_millis(100));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            drained
        })?;
        ensure!(
            drained.forced == [0] && drained.idle.is_empty(),
            "{drained:?}"
        );
        ensure!(send(&balance, on_0, 5)? == [0, 5]);
        let t = balance.stats()?.total();
        ensure!(t.moved_busy_flows == 1, "{t:?}");
        Ok(())
    })??;
    Ok(())
}

/// Reads TcpExt counters of the calling thread's namespace.
/// A counter of the calling thread's namespace: `TcpExt:` in netstat or `Tcp:` in snmp.
fn tcp_counter(file: &str, section: &str, name: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))?;
    let mut lines = text.lines().filter(|l| l.starts_with(section));
    let (names, values) = (
        lines.next().context("TcpExt")?,
        lines.next().context("TcpExt")?,
    );
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .with_context(|| format!("no {name} in {file}"))?;
    Ok(values.split_whitespace().nth(i).context("value")?.parse()?)
}

fn tcp_ext(name: &str) -> anyhow::Result<u64> {
    tcp_counter("netstat", "TcpExt:", name)
}

/// Segments the calling thread's namespace retransmitted.
fn tcp_retransmitted() -> anyhow::Result<u64> {
    tcp_counter("snmp", "Tcp:", "RetransSegs")
}

#[test]
fn tcp_through_the_balanced_interface_arrives_intact_and_in_order() -> anyhow::Result<()> {
    require_two_cpus()?;
    let VethPair {
        server: server_ns,
        client: client_ns,
        server_if: s_if,
        client_if: c_if,
    } = VethPair::new(&["10.202.0.1/24"], &["10.202.0.2/24"], None)?;
    // The sender's checksums must be complete: the cpumap drops the skb's checksum state.
    let was_on = client_ns.run(|| cpu_balance::set_tx_checksum(&c_if, false))??;
    ensure!(was_on, "veth starts with tx checksum offload on");
    ensure!(!client_ns.run(|| cpu_balance::set_tx_checksum(&c_if, false))??);

    const CONNECTIONS: usize = 4;
    const BYTES: usize = 4 << 20;
    let data: Vec<u8> = (0..BYTES as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let weights = Weights::new([(0, 1), (1, 1)])?;
    server_ns.run(|| -> anyhow::Result<()> {
        let balance = CpuBalance::attach(&s_if, AttachMode::Native, &weights)?;
        let ofo_before = tcp_ext("TCPOFOQueue")?;
        let retrans_before = client_ns.run(tcp_retransmitted)??;
        let listener = TcpListener::bind("10.202.0.1:0")?;
        let addr = listener.local_addr()?;
        let (data, client_ns) = (&data, &client_ns);
        thread::scope(|scope| -> anyhow::Result<()> {
            let client = scope.spawn(move || {
                client_ns.run(|| -> anyhow::Result<()> {
                    let mut streams = Vec::new();
                    for _ in 0..CONNECTIONS {
                        streams.push(scope.spawn(move || -> anyhow::Result<()> {
                            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                            s.write_all(data)?;
                            Ok(())
                        }));
                    }
                    for s in streams {
                        s.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
                    }
                    Ok(())
                })
            });
            let mut received = Vec::new();
            for _ in 0..CONNECTIONS {
                let (mut s, _) = listener.accept()?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                received.push(scope.spawn(move || -> anyhow::Result<Vec<u8>> {
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf)?;
                    Ok(buf)
                }));
            }
            client
                .join()
                .map_err(|_| anyhow::anyhow!("client panicked"))???;
            for r in received {
                let buf = r
                    .join()
                    .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
                ensure!(
                    buf.len() == BYTES && buf == *data,
                    "stream differs ({} bytes)",
                    buf.len()
                );
            }
            Ok(())
        })?;
        let ofo = tcp_ext("TCPOFOQueue")? - ofo_before;
        let retrans = client_ns.run(tcp_retransmitted)?? - retrans_before;
        let s = balance.stats()?;
        eprintln!(
            "cpu_balance tcp: landed per CPU {:?}, out-of-order queued {ofo}, retransmitted \
             {retrans}",
            s.landed()
        );
        ensure!(
            s.total().redirected > (CONNECTIONS * BYTES / 1500) as u64,
            "{:?}",
            s.total()
        );
        // The balancer never moved a busy flow to another CPU, the only way it could reorder.
        ensure!(
            s.total().moved_flows == 0,
            "flows moved mid-transfer: {:?}",
            s.total()
        );
        // A frame dropped on the way (a full cpumap queue on a starved CPU) makes the later
        // ones arrive out of order, then gets retransmitted: that is loss, not reordering.
        // Reordering shows as out-of-order segments with nothing retransmitted.
        ensure!(
            ofo == 0 || retrans > 0,
            "{ofo} segments were queued out of order and none was lost (retransmitted)"
        );
        Ok(())
    })??;
    Ok(())
}

fn accel(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(args)
        .output()?)
}

#[test]
fn cli_attach_weights_stats_detach_through_pins() -> anyhow::Result<()> {
    require_two_cpus()?;
    let (ns, a, b) = veth_lab()?;
    let prefix = testkit::PinPrefix::new();
    let with = |rest: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["--prefix", prefix.name(), "--netns", ns.name()]
            .iter()
            .chain(rest)
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(["--iface".to_owned(), a.clone()]);
        args
    };
    let run = |rest: &[&str]| -> anyhow::Result<String> {
        let args = with(rest);
        let out = accel(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        ensure!(out.status.success(), "accel {args:?}: {out:?}");
        Ok(String::from_utf8(out.stdout)?)
    };
    let stats = || -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&run(&[
            "cpu-balance",
            "stats",
            "--json",
        ])?)?)
    };
    let weight_of = |json: &serde_json::Value, cpu: usize| json["per_cpu"][cpu]["weight"].as_u64();

    run(&["cpu-balance", "attach", "--weights", "0=1,1=3"])?;
    let before = stats()?;
    assert_eq!(
        (weight_of(&before, 0), weight_of(&before, 1)),
        (Some(1), Some(3)),
        "{before}"
    );
    assert_eq!(
        before["per_cpu"][1]["slots"], 192,
        "3/4 of 256 slots: {before}"
    );

    ns.run(|| testkit::send_frames(&b, &udp_frame(B_IP, 4000, A_IP, 5000), 10))??;
    run(&["cpu-balance", "weights", "--weights", "1=1"])?;
    let after = stats()?;
    assert_eq!(
        (weight_of(&after, 0), weight_of(&after, 1)),
        (Some(0), Some(1)),
        "{after}"
    );
    assert_eq!(after["per_cpu"][1]["slots"], 256, "{after}");
    assert!(after["total"]["packets"].as_u64() >= Some(10), "{after}");

    let bad = accel(&["cpu-balance", "weights", "--iface", &a, "--weights", "0=x"])?;
    assert_eq!(
        bad.status.code(),
        Some(2),
        "bad weights are a usage error: {bad:?}"
    );

    run(&["cpu-balance", "detach"])?;
    let link = ns.run(|| {
        std::process::Command::new("ip")
            .args(["-j", "-d", "link", "show", &a])
            .output()
    })??;
    let json: serde_json::Value = serde_json::from_slice(&link.stdout)?;
    assert!(json[0]["xdp"].is_null(), "XDP still attached: {json}");
    let gone = accel(
        &with(&["cpu-balance", "stats"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )?;
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
    Ok(())
}

/// Nice values of the running threads named `cpumap/CPU/map:...` (the kernel cuts the name).
fn cpumap_kthread_nices() -> anyhow::Result<Vec<(String, i64)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... ; nice is field 19, the 17th after the comm.
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map_or("", |(_, c)| c);
        if !comm.starts_with("cpumap/") {
            continue;
        }
        let nice: i64 = tail.split(' ').nth(16).context("short stat")?.parse()?;
        found.push((comm.to_owned(), nice));
    }
    Ok(found)
}

#[test]
fn cpumap_threads_of_the_set_run_at_high_priority() -> anyhow::Result<()> {
    require_two_cpus()?;
    let (ns, a, _b) = veth_lab()?;
    let weights = Weights::equal([0, 1])?;
    let balance = ns.run(|| CpuBalance::attach(&a, AttachMode::Auto, &weights))??;
    let ids = balance.program_ids()?;
    ensure!(!ids.is_empty());
    let nices = cpumap_kthread_nices()?;
    for cpu in [0, 1] {
        let prefix = format!("cpumap/{cpu}/");
        ensure!(
            nices
                .iter()
                .any(|(c, n)| c.starts_with(&prefix) && *n == i64::from(cpu_balance::KTHREAD_NICE)),
            "no cpumap thread of CPU {cpu} at nice {}: {nices:?}",
            cpu_balance::KTHREAD_NICE
        );
    }
    drop(balance);
    Ok(())
}
