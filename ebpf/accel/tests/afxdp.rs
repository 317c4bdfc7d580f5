//! The AF_XDP fast path against a real kernel: a veth pair between a server namespace (the
//! fast path) and a client namespace (ordinary kernel UDP sockets). Echoes of random payloads
//! of every size from 1 to 1472 bytes come back intact over IPv4 and IPv6 and are accepted by
//! the client's kernel (so their checksums are right); other ports and protocols still reach
//! the server's kernel stack; forwarding reaches a next hop; stopping leaves no socket,
//! program or XDP attachment behind, and a new start binds the same queue at once. Needs root.

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, BorrowedFd},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use accel::afxdp::{AfXdp, Config, Mode};
use anyhow::{Context as _, ensure};
use testkit::{NetNs, VethPair};

const PORT: u16 = 7777;
const OTHER_PORT: u16 = 7778;
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);
const CLIENT_V4_HOP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 3);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd20, 3, 0, 0, 0, 0, 0, 1);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd20, 3, 0, 0, 0, 0, 0, 2);
const CLIENT_V6_HOP: Ipv6Addr = Ipv6Addr::new(0xfd20, 3, 0, 0, 0, 0, 0, 3);
/// Largest UDP payload of the tests: a 1500-byte IPv4 packet. The MTU leaves room for the
/// same payload over IPv6 (40-byte header) without fragments.
const MAX_PAYLOAD: usize = 1472;
const MTU: u32 = 1600;

/// Server and client namespaces joined by a veth pair, both families addressed.
fn lab() -> anyhow::Result<VethPair> {
    VethPair::new(
        &[&format!("{SERVER_V4}/24"), &format!("{SERVER_V6}/64")],
        &[
            &format!("{CLIENT_V4}/24"),
            &format!("{CLIENT_V4_HOP}/24"),
            &format!("{CLIENT_V6}/64"),
            &format!("{CLIENT_V6_HOP}/64"),
        ],
        Some(MTU),
    )
}

/// xorshift64*: reproducible payloads without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn client_socket(v6: bool) -> anyhow::Result<UdpSocket> {
    let any: SocketAddr = if v6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(socket)
}

/// Sends one random payload of each size in `sizes` to `to` and checks each echo: same
/// bytes, from `to`. Runs in the calling thread's namespace.
fn echo_sizes(
    to: SocketAddr,
    sizes: impl Iterator<Item = usize>,
    seed: u64,
) -> anyhow::Result<u64> {
    let socket = client_socket(to.is_ipv6())?;
    let mut rng = Rng(seed);
    let mut buffer = vec![0u8; 4096];
    let mut count = 0;
    for size in sizes {
        let payload = rng.bytes(size);
        socket.send_to(&payload, to)?;
        let (n, from) = socket
            .recv_from(&mut buffer)
            .with_context(|| format!("echo of {size} bytes to {to}"))?;
        ensure!(
            from == to,
            "echo of {size} bytes came from {from}, not {to}"
        );
        ensure!(
            buffer[..n] == payload[..],
            "echo of {size} bytes differs ({n} bytes back)"
        );
        count += 1;
    }
    Ok(count)
}

fn xdp_attached(ns: &NetNs, iface: &str) -> anyhow::Result<bool> {
    let out = ns.run(|| {
        Command::new("ip")
            .args(["-j", "-d", "link", "show", iface])
            .output()
    })??;
    ensure!(out.status.success(), "ip link show {iface}: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(!json[0]["xdp"].is_null())
}

/// AF_XDP sockets among this process's open files (`SO_DOMAIN` of every socket fd).
fn own_xdp_sockets() -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let fd: i32 = entry.file_name().to_string_lossy().parse()?;
        // SAFETY: the fd is open (listed just now) and only borrowed for the call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut domain: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `domain` and `len` are valid for the call.
        let ret = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&raw mut domain).cast(),
                &mut len,
            )
        };
        if ret == 0 && domain == libc::AF_XDP {
            n += 1;
        }
    }
    Ok(n)
}

fn program_loaded(id: u32) -> bool {
    aya::programs::loaded_programs()
        .flatten()
        .any(|p| p.id() == id)
}

/// Waits until the kernel has freed program `id` (freeing is RCU-deferred).
fn wait_released(id: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while program_loaded(id) {
        ensure!(Instant::now() < deadline, "kernel still holds program {id}");
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn every_size_echoes_intact_over_ipv4_and_ipv6() -> anyhow::Result<()> {
    let lab = lab()?;
    let config = Config::new(&[PORT], Mode::Echo)?;
    let fast = lab.server.run(|| AfXdp::start(&lab.server_if, &config))??;
    let stats = fast.stats()?;
    ensure!(
        !stats.queues.is_empty() && stats.queues.iter().all(|q| !q.zero_copy),
        "veth binds in copy mode: {stats:?}"
    );
    let mut sent = 0;
    for (to, seed) in [
        (SocketAddr::from((SERVER_V4, PORT)), 1),
        (SocketAddr::from((SERVER_V6, PORT)), 2),
    ] {
        sent += lab.client.run(|| echo_sizes(to, 1..=MAX_PAYLOAD, seed))??;
    }
    // The client's veth leaves UDP checksums to offload (only the pseudo-header sum is in
    // the frame); with offload off every frame carries a full checksum: both must echo.
    let was_on = lab
        .client
        .run(|| accel::cpu_balance::set_tx_checksum(&lab.client_if, false))??;
    ensure!(was_on, "veth starts with tx checksum offload on");
    for (to, seed) in [
        (SocketAddr::from((SERVER_V4, PORT)), 3),
        (SocketAddr::from((SERVER_V6, PORT)), 4),
    ] {
        sent += lab
            .client
            .run(|| echo_sizes(to, [1, 512, MAX_PAYLOAD].into_iter(), seed))??;
    }
    let stats = fast.stop()?;
    let total = stats.total();
    eprintln!("afxdp echo: {stats:?}");
    ensure!(
        total.rx_packets == sent && total.tx_packets == sent && total.dropped == 0,
        "{sent} echoes: {total:?}"
    );
    ensure!(stats.program.redirected == sent, "{:?}", stats.program);
    Ok(())
}

#[test]
fn other_ports_and_protocols_still_reach_the_kernel_stack() -> anyhow::Result<()> {
    let lab = lab()?;
    let config = Config::new(&[PORT], Mode::Echo)?;
    let (fast, kernel_socket, other_socket) = lab.server.run(|| -> anyhow::Result<_> {
        // A kernel socket on the fast path's own port must see nothing of its traffic.
        let kernel_socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, PORT))?;
        kernel_socket.set_nonblocking(true)?;
        let other = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, OTHER_PORT))?;
        other.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok((AfXdp::start(&lab.server_if, &config)?, kernel_socket, other))
    })??;
    for server in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let to = SocketAddr::new(server, OTHER_PORT);
        let client = lab.client.run(|| -> anyhow::Result<UdpSocket> {
            let socket = client_socket(to.is_ipv6())?;
            socket.send_to(b"to the stack", to)?;
            Ok(socket)
        })??;
        let mut buffer = [0u8; 64];
        let (n, from) = other_socket
            .recv_from(&mut buffer)
            .with_context(|| format!("datagram to {to} at the kernel socket"))?;
        ensure!(&buffer[..n] == b"to the stack");
        other_socket.send_to(b"from the stack", from)?;
        let (n, _) = client.recv_from(&mut buffer)?;
        ensure!(&buffer[..n] == b"from the stack");
        lab.client
            .run(|| echo_sizes(SocketAddr::new(server, PORT), [64].into_iter(), 5))??;
    }
    // TCP (and with it ARP / neighbour discovery) is the kernel's too.
    let listener = lab
        .server
        .run(|| std::net::TcpListener::bind((SERVER_V4, 0)))??;
    let addr = listener.local_addr()?;
    lab.client
        .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)))??;
    let mut buffer = [0u8; 64];
    ensure!(
        kernel_socket.recv_from(&mut buffer).is_err(),
        "a datagram to the fast path's port reached the kernel socket"
    );
    let stats = fast.stop()?;
    ensure!(
        stats.program.redirected == 2 && stats.program.passed >= 4,
        "{:?}",
        stats.program
    );
    Ok(())
}

#[test]
fn forward_sends_to_the_next_hop_with_valid_checksums() -> anyhow::Result<()> {
    let lab = lab()?;
    // The next hop is the client's second address: its kernel must accept datagrams from its
    // own first address arriving on the wire.
    lab.client.run(|| {
        std::fs::write("/proc/sys/net/ipv4/conf/all/accept_local", "1").context("accept_local")
    })??;
    let mac = lab.client.mac(&lab.client_if)?;
    let config = Config::new(
        &[PORT],
        Mode::Forward {
            mac,
            v4: Some(CLIENT_V4_HOP),
            v6: Some(CLIENT_V6_HOP),
        },
    )?;
    let fast = lab.server.run(|| AfXdp::start(&lab.server_if, &config))??;
    let mut rng = Rng(9);
    for (server, client, hop) in [
        (
            IpAddr::V4(SERVER_V4),
            IpAddr::V4(CLIENT_V4),
            IpAddr::V4(CLIENT_V4_HOP),
        ),
        (
            IpAddr::V6(SERVER_V6),
            IpAddr::V6(CLIENT_V6),
            IpAddr::V6(CLIENT_V6_HOP),
        ),
    ] {
        for size in [1, 100, MAX_PAYLOAD] {
            let payload = rng.bytes(size);
            lab.client.run(|| -> anyhow::Result<()> {
                let receiver = UdpSocket::bind(SocketAddr::new(hop, PORT))?;
                receiver.set_read_timeout(Some(Duration::from_secs(2)))?;
                let sender = UdpSocket::bind(SocketAddr::new(client, 0))?;
                sender.send_to(&payload, SocketAddr::new(server, PORT))?;
                let mut buffer = vec![0u8; 4096];
                let (n, from) = receiver
                    .recv_from(&mut buffer)
                    .with_context(|| format!("{size} bytes forwarded to {hop}"))?;
                ensure!(buffer[..n] == payload[..], "forwarded {size} bytes differ");
                ensure!(from == sender.local_addr()?, "forwarded from {from}");
                Ok(())
            })??;
        }
    }
    let total = fast.stop()?.total();
    ensure!(total.tx_packets == 6 && total.dropped == 0, "{total:?}");
    Ok(())
}

#[test]
fn stopping_leaves_nothing_and_the_queue_binds_again_at_once() -> anyhow::Result<()> {
    let lab = lab()?;
    let config = Config::new(&[PORT], Mode::Echo)?;
    let to = SocketAddr::from((SERVER_V4, PORT));
    for round in 0..3 {
        let fast = lab.server.run(|| AfXdp::start(&lab.server_if, &config))??;
        let id = fast.program_id()?;
        ensure!(own_xdp_sockets()? >= 1, "no AF_XDP socket while running");
        ensure!(xdp_attached(&lab.server, &lab.server_if)?);
        lab.client
            .run(|| echo_sizes(to, [32].into_iter(), round))??;
        fast.stop()?;
        ensure!(
            own_xdp_sockets()? == 0,
            "round {round}: AF_XDP socket left open"
        );
        ensure!(
            !xdp_attached(&lab.server, &lab.server_if)?,
            "round {round}: XDP left attached"
        );
        wait_released(id)?;
    }
    Ok(())
}

#[test]
fn bad_configurations_are_refused_before_anything_is_made() -> anyhow::Result<()> {
    assert!(Config::new(&[], Mode::Echo).is_err());
    assert!(Config::new(&[0], Mode::Echo).is_err());
    let no_address = Mode::Forward {
        mac: [2, 0, 0, 0, 0, 1],
        v4: None,
        v6: None,
    };
    assert!(Config::new(&[PORT], no_address).is_err());
    let multicast = Mode::Forward {
        mac: [1, 0, 0x5e, 0, 0, 1],
        v4: Some(CLIENT_V4),
        v6: None,
    };
    assert!(Config::new(&[PORT], multicast).is_err());
    let lab = lab()?;
    let config = Config::new(&[PORT], Mode::Echo)?;
    let err = lab
        .server
        .run(|| AfXdp::start("dgltnosuchif", &config))?
        .unwrap_err();
    assert!(err.to_string().contains("dgltnosuchif"), "{err}");
    ensure!(own_xdp_sockets()? == 0);
    Ok(())
}

#[test]
fn cli_echoes_until_sigterm_then_reports_and_detaches() -> anyhow::Result<()> {
    let lab = lab()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_accel"))
        .args([
            "--netns",
            lab.server.name(),
            "afxdp",
            "echo",
            "--iface",
            &lab.server_if,
            "--ports",
            &format!("{PORT},{OTHER_PORT}"),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let ready = lines.next().context("no ready line")??;
    ensure!(ready.contains("copy mode"), "{ready}");
    let echoed = lab.client.run(|| -> anyhow::Result<u64> {
        Ok(echo_sizes((SERVER_V4, PORT).into(), 1..=100, 7)?
            + echo_sizes((SERVER_V6, OTHER_PORT).into(), 1..=100, 8)?)
    })??;
    // SAFETY: signals the child this test started.
    ensure!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) } == 0);
    let status = child.wait()?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    ensure!(status.success(), "{status}: {stderr}");
    ensure!(
        stderr.contains("falling back to copy mode"),
        "the fallback is logged: {stderr}"
    );
    let last = lines.last().context("no counters")??;
    let json: serde_json::Value = serde_json::from_str(&last)?;
    ensure!(
        json["total"]["rx_packets"] == echoed && json["total"]["tx_packets"] == echoed,
        "{echoed} echoes: {json}"
    );
    ensure!(
        !xdp_attached(&lab.server, &lab.server_if)?,
        "XDP left attached"
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(["afxdp", "echo", "--iface", "lo", "--ports", "x"])
        .output()?;
    ensure!(bad.status.code() == Some(2), "{bad:?}");
    let bad = Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(["afxdp", "forward", "--iface", "lo", "--ports", "1"])
        .args([
            "--next-hop-mac",
            "zz:00:00:00:00:00",
            "--next-hop-v4",
            "10.0.0.1",
        ])
        .output()?;
    let message = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        bad.status.code() == Some(1) && message.contains("zz:00"),
        "{bad:?}"
    );
    Ok(())
}

#[test]
fn cli_stops_after_its_duration_with_pinned_queue_threads() -> anyhow::Result<()> {
    let lab = lab()?;
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(["--netns", lab.server.name(), "afxdp", "echo", "--iface"])
        .arg(&lab.server_if)
        .args([
            "--ports",
            "7777",
            "--cpus",
            "0",
            "--duration",
            "1",
            "--json",
        ])
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let stdout = String::from_utf8(out.stdout)?;
    let last = stdout.lines().last().context("no counters")?;
    let json: serde_json::Value = serde_json::from_str(last)?;
    // The queue thread ran (its CPU time is counted) and echoed nothing.
    ensure!(
        json["total"]["cpu_ns"].as_u64().is_some_and(|ns| ns > 0),
        "{json}"
    );
    ensure!(json["total"]["rx_packets"] == 0, "{json}");
    ensure!(
        !xdp_attached(&lab.server, &lab.server_if)?,
        "XDP left attached"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(["--netns", lab.server.name(), "afxdp", "echo", "--iface"])
        .arg(&lab.server_if)
        .args(["--ports", "7777", "--cpus", "100000", "--duration", "1"])
        .output()?;
    let message = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        !bad.status.success() && message.contains("CPU 100000"),
        "{bad:?}"
    );
    Ok(())
}
