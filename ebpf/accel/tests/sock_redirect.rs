//! The socket redirect against a real kernel: the test process enters a fresh cgroup v2 with
//! the redirect attached, and all traffic runs on the loopback of a fresh network namespace.
//! Every stream is a seeded pseudo-random byte sequence written in random-size pieces and
//! compared byte for byte by the reader, so a lost, reordered or duplicated byte fails the
//! test. Needs root; run under nextest (one process per test).

use std::{
    collections::BTreeSet,
    fs,
    io::{self, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use accel::{
    pin::{BPFFS, PinLayout},
    sock_redirect::{Config, PinnedSockRedirect, SockRedirect, Stats},
};
use anyhow::{Context as _, bail, ensure};
use testkit::{NetNs, TempCgroup};

const PORT: u16 = 8080;

/// xorshift64*: the byte streams and write sizes, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A write size: mostly small, sometimes up to 64 KiB.
    fn size(&mut self) -> usize {
        match self.next() % 4 {
            0 => 1 + (self.next() % 64) as usize,
            1 => 1 + (self.next() % 1500) as usize,
            _ => 1 + (self.next() % 65_536) as usize,
        }
    }
}

/// The bytes of stream `seed`: an endless sequence, read in order.
struct Stream(Rng);

impl Stream {
    fn new(seed: u64) -> Self {
        Self(Rng::new(seed ^ 0x5eed))
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.0.next() as u8;
        }
    }
}

/// Writes `total` bytes of stream `seed` in random-size writes, then half-closes.
fn send_stream(mut sock: &TcpStream, seed: u64, total: usize) -> io::Result<()> {
    let mut sizes = Rng::new(seed);
    let mut data = Stream::new(seed);
    let mut buf = vec![0u8; 65_536];
    let mut sent = 0;
    while sent < total {
        let n = sizes.size().min(total - sent);
        data.fill(&mut buf[..n]);
        sock.write_all(&buf[..n])?;
        sent += n;
    }
    sock.shutdown(Shutdown::Write)
}

/// Reads until EOF and checks the bytes against stream `seed`; returns how many arrived.
///
/// A blocking read of a redirected socket can fail with EAGAIN when another thread writes the
/// same socket: the kernel's `tcp_bpf_recvmsg` (6.18) gives up after one wake-up without
/// redirected data, and the writer's wake-ups share the socket's wait queue. The read is
/// retried then; the bytes are still checked one by one.
fn check_stream(mut sock: &TcpStream, seed: u64) -> anyhow::Result<usize> {
    let mut expected = Stream::new(seed);
    let mut buf = vec![0u8; 65_536];
    let mut want = vec![0u8; 65_536];
    let mut got = 0;
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e).context(format!("read after {got} bytes")),
        };
        expected.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            bail!("stream {seed:#x}: byte {} differs", got + i);
        }
        got += n;
    }
}

/// A namespace with its loopback up, and a cgroup the test process has entered.
fn lab() -> anyhow::Result<(NetNs, TempCgroup)> {
    let ns = NetNs::new()?;
    ns.ip("link set lo up")?;
    let cgroup = TempCgroup::new()?;
    cgroup.enter()?;
    Ok((ns, cgroup))
}

/// Runs `conns` connections to `listen` (connecting to `connect`), each streaming `bytes`
/// both ways at once, with a half-close at each end when its writer is done.
fn exchange(
    ns: &NetNs,
    listen: &str,
    connect: &str,
    conns: u64,
    bytes: usize,
) -> anyhow::Result<()> {
    ns.run(|| -> anyhow::Result<()> {
        let listener = TcpListener::bind(listen).context("bind")?;
        let addr: SocketAddr = connect.parse()?;
        thread::scope(|s| -> anyhow::Result<()> {
            let server = s.spawn(|| -> anyhow::Result<()> {
                thread::scope(|s| {
                    let mut ends = Vec::new();
                    for _ in 0..conns {
                        let (sock, _) = listener.accept()?;
                        ends.push(s.spawn(move || serve_end(sock, bytes)));
                    }
                    ends.into_iter().try_for_each(|h| join(h.join()))
                })
            });
            let clients: Vec<_> = (0..conns)
                .map(|i| {
                    s.spawn(move || -> anyhow::Result<()> {
                        let sock = TcpStream::connect(addr)?;
                        (&sock).write_all(&i.to_be_bytes())?;
                        duplex(sock, 2 * i + 1, 2 * i + 2, bytes)
                    })
                })
                .collect();
            clients.into_iter().try_for_each(|h| join(h.join()))?;
            join(server.join())
        })
    })?
}

/// The server end of [`exchange`]: learns the connection's index, then runs the duplex.
fn serve_end(mut sock: TcpStream, bytes: usize) -> anyhow::Result<()> {
    let mut index = [0u8; 8];
    sock.read_exact(&mut index)?;
    let i = u64::from_be_bytes(index);
    duplex(sock, 2 * i + 2, 2 * i + 1, bytes)
}

/// Sends stream `out` and checks stream `inp` (of `bytes` bytes) on one socket at once.
fn duplex(sock: TcpStream, out: u64, inp: u64, bytes: usize) -> anyhow::Result<()> {
    thread::scope(|s| {
        let writer = s.spawn(|| send_stream(&sock, out, bytes));
        let got = check_stream(&sock, inp)?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        ensure!(got == bytes, "stream {inp:#x}: {got} of {bytes} bytes");
        Ok(())
    })
}

fn join<T>(r: thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    r.map_err(|_| anyhow::anyhow!("thread panicked"))?
}

/// Polls until the recorded sockets are gone (closing is asynchronous on the peer side).
fn wait_empty(stats: impl Fn() -> accel::Result<Stats>) -> anyhow::Result<Stats> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats()?;
        if (s.sockets, s.states) == (0, 0) || Instant::now() > deadline {
            return Ok(s);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Program ids among `programs` the kernel still has loaded, and links attaching them.
fn kernel_holds(programs: &BTreeSet<u32>) -> (Vec<u32>, Vec<u32>) {
    let loaded = aya::programs::loaded_programs()
        .flatten()
        .map(|p| p.id())
        .filter(|id| programs.contains(id))
        .collect();
    let links = aya::programs::loaded_links()
        .flatten()
        .filter(|l| programs.contains(&l.program_id()))
        .map(|l| l.id())
        .collect();
    (loaded, links)
}

fn wait_released(programs: &BTreeSet<u32>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = kernel_holds(programs);
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

#[test]
fn concurrent_duplex_streams_arrive_intact_through_the_redirect() -> anyhow::Result<()> {
    let (ns, cgroup) = lab()?;
    let redirect = SockRedirect::attach(cgroup.path(), &Config::new(&[PORT], 0)?)?;
    let ours: BTreeSet<u32> = redirect.program_ids()?.into_iter().collect();
    exchange(&ns, "127.0.0.1:8080", "127.0.0.1:8080", 32, 1 << 20)?;
    let stats = wait_empty(|| redirect.stats())?;
    let total = stats.total();
    assert_eq!(
        total.established, 64,
        "both ends of 32 connections: {total:?}"
    );
    assert_eq!(total.removed, 64, "{total:?}");
    assert_eq!((stats.sockets, stats.states), (0, 0));
    assert_eq!(total.no_peer, 0, "{total:?}");
    // Every byte is redirected: 2 × 32 × 1 MiB and each connection's 8-byte index.
    assert_eq!(total.redirected_bytes, (64 << 20) + 32 * 8, "{total:?}");
    drop(redirect);
    wait_released(&ours)
}

#[test]
fn ipv6_and_dual_stack_listeners_match_both_ends() -> anyhow::Result<()> {
    let (ns, cgroup) = lab()?;
    let redirect = SockRedirect::attach(cgroup.path(), &Config::new(&[PORT], 0)?)?;
    exchange(&ns, "[::1]:8080", "[::1]:8080", 8, 256 << 10)?;
    let v6 = redirect.stats()?.total();
    assert_eq!(v6.established, 16, "{v6:?}");
    // Both directions of 8 connections, and each connection's 8-byte index.
    assert_eq!(v6.redirected_bytes, 16 * (256 << 10) + 8 * 8, "{v6:?}");
    // A dual-stack listener ([::]) accepting IPv4 clients: v4-mapped server sockets.
    exchange(&ns, "[::]:8080", "127.0.0.1:8080", 8, 256 << 10)?;
    let both = redirect.stats()?.total();
    assert_eq!(both.established, 32, "{both:?}");
    assert_eq!(
        both.redirected_bytes,
        32 * (256 << 10) + 16 * 8,
        "v4-mapped keys did not match: {both:?}"
    );
    assert_eq!(both.no_peer, 0, "{both:?}");
    assert_eq!(wait_empty(|| redirect.stats())?.sockets, 0);
    Ok(())
}

/// Polls `stats` until `done` holds for them (the sock_ops callbacks that move sockets run
/// asynchronously, on acknowledgements and closes).
fn wait_for(
    stats: impl Fn() -> accel::Result<Stats>,
    done: impl Fn(&Stats) -> bool,
) -> anyhow::Result<Stats> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats()?;
        if done(&s) {
            return Ok(s);
        }
        ensure!(Instant::now() < deadline, "timed out at {s:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `sizes` of stream `data` to `sock`; returns the bytes written.
fn write_pieces(
    mut sock: &TcpStream,
    data: &mut Stream,
    sizes: impl IntoIterator<Item = usize>,
) -> io::Result<usize> {
    let mut sent = 0;
    for size in sizes {
        let mut buf = vec![0u8; size];
        data.fill(&mut buf);
        sock.write_all(&buf)?;
        sent += size;
    }
    Ok(sent)
}

#[test]
fn gated_sender_leaves_the_sockhash_without_losing_or_reordering() -> anyhow::Result<()> {
    let (ns, cgroup) = lab()?;
    let redirect = SockRedirect::attach(cgroup.path(), &Config::new(&[PORT], 1024)?)?;
    let after_leave = ns.run(|| -> anyhow::Result<usize> {
        let listener = TcpListener::bind("127.0.0.1:8080")?;
        let client = TcpStream::connect("127.0.0.1:8080")?;
        let (server, _) = listener.accept()?;
        // Large writes (redirected), then a long run of small ones (TCP once the gate trips;
        // plain TCP once the client left the sockhash), all before the reader reads a byte:
        // redirected bytes wait in the server's queue while TCP bytes arrive behind them.
        let mut data = Stream::new(7);
        let mut sent = write_pieces(
            &client,
            &mut data,
            [65_536, 4096, 2048].into_iter().chain([100; 2000]),
        )?;
        let stats = wait_for(|| redirect.stats(), |s| s.total().left == 1)?;
        // The client is out of the sockhash, the server (redirected into) is still in it.
        ensure!(stats.sockets == 1, "{stats:?}");
        let passed_before = stats.total().passed_msgs;
        let after_leave = write_pieces(&client, &mut data, [100; 2000])?;
        sent += after_leave;
        let passed_after = redirect.stats()?.total().passed_msgs;
        ensure!(
            passed_after == passed_before,
            "the sk_msg program still saw {} messages",
            passed_after - passed_before
        );
        client.shutdown(Shutdown::Write)?;
        thread::sleep(Duration::from_millis(100));
        let got = check_stream(&server, 7)?;
        ensure!(got == sent, "{got} of {sent} bytes");
        Ok(after_leave)
    })??;
    let stats = wait_empty(|| redirect.stats())?;
    let total = stats.total();
    assert_eq!((stats.sockets, stats.states), (0, 0), "{total:?}");
    assert_eq!(total.gated, 1, "{total:?}");
    assert_eq!((total.left, total.stayed), (1, 0), "{total:?}");
    assert_eq!(total.redirected_msgs, 3 + 8, "3 large + 8 small: {total:?}");
    // TCP bytes: those the program passed, and those sent after leaving (counted at close
    // from the acknowledged bytes: at least every byte written after the leave was seen).
    assert!(
        total.left_bytes >= after_leave as u64,
        "{after_leave} bytes written after leaving: {total:?}"
    );
    assert!(
        total.passed_bytes + total.left_bytes >= 100 * (4000 - 8),
        "{total:?}"
    );
    Ok(())
}

/// Sends stream `seed` as `pieces` writes of 1 to 8192 bytes, sleeping up to 0.5 ms before
/// each (the time a peer's gate takes to trip and its socket to leave, on this machine).
fn send_sparse(sock: &TcpStream, seed: u64, pieces: usize) -> io::Result<usize> {
    let mut rng = Rng::new(seed ^ 0xabc);
    let mut data = Stream::new(seed);
    let mut sent = 0;
    for _ in 0..pieces {
        thread::sleep(Duration::from_micros(rng.next() % 500));
        let n = 1 + (rng.next() % 8192) as usize;
        sent += write_pieces(sock, &mut data, [n])?;
    }
    Ok(sent)
}

/// Sends stream `seed` as `pieces` writes of 1 to 512 bytes without pause, after waiting up
/// to 0.5 ms.
fn send_small(sock: &TcpStream, seed: u64, pieces: usize) -> io::Result<usize> {
    let mut rng = Rng::new(seed ^ 0xdef);
    thread::sleep(Duration::from_micros(rng.next() % 500));
    let mut data = Stream::new(seed);
    write_pieces(
        sock,
        &mut data,
        (0..pieces).map(|_| 1 + (rng.next() % 512) as usize),
    )
}

#[test]
fn leaving_races_with_the_peer_and_loses_no_byte() -> anyhow::Result<()> {
    const CONNS: u64 = 48;
    let (ns, cgroup) = lab()?;
    let redirect = SockRedirect::attach(cgroup.path(), &Config::new(&[PORT], 1024)?)?;
    // Each client streams small writes (the gate trips, then it tries to leave) while its
    // server sends sparse messages at random moments: the server's claim to redirect into the
    // client and the client's claim to leave race. A third of the servers first send (and
    // their client reads) one message before the client starts, so that client must stay;
    // another third wait 20 ms before sending, so their clients (almost surely) leave.
    ns.run(|| -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:8080")?;
        thread::scope(|s| -> anyhow::Result<()> {
            let server = s.spawn(|| -> anyhow::Result<()> {
                thread::scope(|s| {
                    let mut ends = Vec::new();
                    for _ in 0..CONNS {
                        let (sock, _) = listener.accept()?;
                        ends.push(s.spawn(move || -> anyhow::Result<()> {
                            let mut index = [0u8; 8];
                            (&sock).read_exact(&mut index)?;
                            let i = u64::from_be_bytes(index);
                            race_end(&sock, 2 * i + 2, 2 * i + 1, Order::of(i), false)
                        }));
                    }
                    ends.into_iter().try_for_each(|h| join(h.join()))
                })
            });
            let clients: Vec<_> = (0..CONNS)
                .map(|i| {
                    s.spawn(move || -> anyhow::Result<()> {
                        let sock = TcpStream::connect("127.0.0.1:8080")?;
                        (&sock).write_all(&i.to_be_bytes())?;
                        race_end(&sock, 2 * i + 1, 2 * i + 2, Order::of(i), true)
                    })
                })
                .collect();
            clients.into_iter().try_for_each(|h| join(h.join()))?;
            join(server.join())
        })
    })??;
    let stats = wait_empty(|| redirect.stats())?;
    let total = stats.total();
    assert_eq!((stats.sockets, stats.states), (0, 0), "{total:?}");
    eprintln!(
        "{CONNS} clients: {} left, {} stayed; servers sent to TCP: {}",
        total.left, total.stayed, total.no_peer
    );
    assert_eq!(total.gated, CONNS, "every client's small writes: {total:?}");
    // Clients that got a message first stay; those whose server waited leave.
    assert!(total.stayed >= CONNS / 3, "{total:?}");
    assert!(total.left >= 1, "{total:?}");
    Ok(())
}

/// Who sends first on a connection of [`leaving_races_with_the_peer_and_loses_no_byte`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The server sends one byte, which the client reads before it starts.
    ServerFirst,
    /// The server waits 20 ms before sending.
    ClientFirst,
    /// Both start at once.
    Race,
}

impl Order {
    fn of(connection: u64) -> Self {
        match connection % 3 {
            0 => Self::ServerFirst,
            1 => Self::ClientFirst,
            _ => Self::Race,
        }
    }
}

/// One end of [`leaving_races_with_the_peer_and_loses_no_byte`]: the client streams small
/// writes, the server sends sparse messages, in `order`. Both check what they receive.
fn race_end(
    sock: &TcpStream,
    out: u64,
    inp: u64,
    order: Order,
    client: bool,
) -> anyhow::Result<()> {
    match (order, client) {
        (Order::ServerFirst, true) => {
            let mut first = [0u8; 1];
            read_exact(sock, &mut first)?;
            ensure!(first == [0x42], "first message {first:?}");
        }
        (Order::ServerFirst, false) => (&*sock).write_all(&[0x42])?,
        (Order::ClientFirst, false) => thread::sleep(Duration::from_millis(20)),
        _ => {}
    }
    thread::scope(|s| {
        let writer = s.spawn(|| -> io::Result<usize> {
            let sent = if client {
                send_small(sock, out, 3000)?
            } else {
                send_sparse(sock, out, 20)?
            };
            sock.shutdown(Shutdown::Write)?;
            Ok(sent)
        });
        let got = check_stream(sock, inp)?;
        let sent = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        ensure!(
            sent > 0 && got > 0,
            "stream {out:#x}: sent {sent}, got {got}"
        );
        Ok(())
    })
}

#[test]
fn sockets_whose_peer_is_elsewhere_leave_after_their_first_message() -> anyhow::Result<()> {
    let (server_ns, cgroup) = lab()?;
    let client_ns = NetNs::new()?;
    let (s_if, c_if) = (
        format!("{}s", server_ns.name()),
        format!("{}c", client_ns.name()),
    );
    server_ns.ip(&format!(
        "link add {s_if} type veth peer name {c_if} netns {}",
        client_ns.name()
    ))?;
    server_ns.ip(&format!("addr add 10.77.0.2/24 dev {s_if}"))?;
    server_ns.ip(&format!("link set {s_if} up"))?;
    client_ns.ip(&format!("addr add 10.77.0.1/24 dev {c_if}"))?;
    client_ns.ip(&format!("link set {c_if} up"))?;
    let redirect = SockRedirect::attach(cgroup.path(), &Config::new(&[PORT], 1024)?)?;
    // Both ends are recorded, in different namespaces: neither finds its peer, so each one
    // switches to TCP on its first message and then leaves the sockhash, while the
    // connection carries on.
    let listener = server_ns.run(|| TcpListener::bind("10.77.0.2:8080"))??;
    let client = client_ns.run(|| TcpStream::connect("10.77.0.2:8080"))??;
    let (server, _) = listener.accept()?;
    let request = send_and_check(&client, &server, 11, 200_000)?;
    let stats = wait_for(|| redirect.stats(), |s| s.total().left == 1)?;
    ensure!(stats.sockets == 1, "the client left: {stats:?}");
    let answer = send_and_check(&server, &client, 12, 300_000)?;
    let stats = wait_for(|| redirect.stats(), |s| s.total().left == 2)?;
    let total = stats.total();
    assert_eq!(stats.sockets, 0, "both left while open: {stats:?}");
    assert_eq!(total.established, 2, "{total:?}");
    assert_eq!(total.no_peer, 2, "{total:?}");
    assert_eq!(total.redirected_msgs, 0, "{total:?}");
    drop((client, server));
    let total = wait_empty(|| redirect.stats())?.total();
    assert!(
        total.left_bytes + total.passed_bytes >= (request + answer) as u64,
        "{total:?}"
    );
    Ok(())
}

#[test]
fn a_local_socket_whose_peer_is_not_recorded_stays_for_its_redirects() -> anyhow::Result<()> {
    let ns = NetNs::new()?;
    ns.ip("link set lo up")?;
    let cgroup = TempCgroup::new()?;
    // The listener is made outside the redirect's cgroup, and the sockets it accepts belong to
    // its cgroup: the server end is never recorded. The client end, in the cgroup, finds no
    // peer on a loopback connection, where a peer is usually just not recorded yet: it sends
    // through TCP but stays in the sockhash, so that the peer could still redirect into it.
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:8080"))??;
    cgroup.enter()?;
    let redirect = SockRedirect::attach(cgroup.path(), &Config::new(&[PORT], 1024)?)?;
    let client = ns.run(|| TcpStream::connect("127.0.0.1:8080"))??;
    let (server, _) = listener.accept()?;
    let request = send_and_check(&client, &server, 21, 100_000)?;
    // The client's ACKs of the answer below would let it leave, were it going to.
    let answer = send_and_check(&server, &client, 22, 100_000)?;
    thread::sleep(Duration::from_millis(100));
    let stats = redirect.stats()?;
    let total = stats.total();
    assert_eq!(stats.sockets, 1, "the client stays: {stats:?}");
    assert_eq!(total.established, 1, "{total:?}");
    assert_eq!(
        (total.no_peer, total.stayed, total.left),
        (1, 1, 0),
        "{total:?}"
    );
    assert_eq!(total.redirected_msgs, 0, "{total:?}");
    // The client's writes all went through the program (it never left).
    assert_eq!(total.passed_bytes, request as u64, "{total:?}");
    assert!(answer > 0);
    Ok(())
}

/// Fills `buf` from `sock`, retrying early EAGAIN as [`check_stream`] does.
fn read_exact(mut sock: &TcpStream, buf: &mut [u8]) -> anyhow::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match sock.read(&mut buf[filled..]) {
            Ok(0) => bail!("EOF after {filled} of {} bytes", buf.len()),
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => return Err(e).context(format!("read after {filled} bytes")),
        }
    }
    Ok(())
}

/// Sends `bytes` of stream `seed` from `from` (in random-size writes, without closing) and
/// checks them as `to` reads them; returns the bytes.
fn send_and_check(
    from: &TcpStream,
    to: &TcpStream,
    seed: u64,
    bytes: usize,
) -> anyhow::Result<usize> {
    thread::scope(|s| {
        let writer = s.spawn(|| -> io::Result<()> {
            let mut sizes = Rng::new(seed);
            let mut data = Stream::new(seed);
            let mut sent = 0;
            while sent < bytes {
                let n = sizes.size().min(bytes - sent);
                sent += write_pieces(from, &mut data, [n])?;
            }
            Ok(())
        });
        let mut expected = Stream::new(seed);
        let mut buf = vec![0u8; 65_536];
        let mut want = vec![0u8; 65_536];
        let mut got = 0;
        while got < bytes {
            let n = (bytes - got).min(65_536);
            read_exact(to, &mut buf[..n])?;
            expected.fill(&mut want[..n]);
            ensure!(
                buf[..n] == want[..n],
                "stream {seed:#x}: bytes {got}.. differ"
            );
            got += n;
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(bytes)
    })
}

#[test]
fn request_response_keeps_the_redirect_under_the_gate() -> anyhow::Result<()> {
    let (ns, cgroup) = lab()?;
    let redirect = SockRedirect::attach(cgroup.path(), &Config::new(&[PORT], 1024)?)?;
    ns.run(|| -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:8080")?;
        let mut client = TcpStream::connect("127.0.0.1:8080")?;
        let (mut server, _) = listener.accept()?;
        let echo = thread::spawn(move || -> io::Result<()> {
            let mut buf = [0u8; 64];
            for _ in 0..1000 {
                server.read_exact(&mut buf)?;
                server.write_all(&buf)?;
            }
            Ok(())
        });
        let mut buf = [0u8; 64];
        for i in 0..1000u32 {
            buf[..4].copy_from_slice(&i.to_be_bytes());
            client.write_all(&buf)?;
            let sent = buf;
            client.read_exact(&mut buf)?;
            ensure!(buf == sent, "echo {i} differs");
        }
        echo.join()
            .map_err(|_| anyhow::anyhow!("echo panicked"))??;
        Ok(())
    })??;
    let total = redirect.stats()?.total();
    assert_eq!(total.gated, 0, "{total:?}");
    assert_eq!(total.redirected_msgs, 2000, "{total:?}");
    Ok(())
}

#[test]
fn ten_thousand_short_connections_leave_the_maps_empty() -> anyhow::Result<()> {
    const CONNS: u32 = 10_000;
    const CLIENTS: u32 = 4;
    let (ns, cgroup) = lab()?;
    let redirect = SockRedirect::attach(cgroup.path(), &Config::new(&[PORT], 0)?)?;
    ns.run(|| -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:8080")?;
        thread::scope(|s| -> anyhow::Result<()> {
            let server = s.spawn(|| -> anyhow::Result<()> {
                for _ in 0..CONNS {
                    let (mut sock, _) = listener.accept()?;
                    let mut buf = [0u8; 4];
                    sock.read_exact(&mut buf)?;
                    sock.write_all(&buf)?;
                }
                Ok(())
            });
            let clients: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    s.spawn(move || -> anyhow::Result<()> {
                        for i in (c..CONNS).step_by(CLIENTS as usize) {
                            let mut sock = TcpStream::connect("127.0.0.1:8080")?;
                            sock.write_all(&i.to_be_bytes())?;
                            let mut buf = [0u8; 4];
                            sock.read_exact(&mut buf)?;
                            ensure!(u32::from_be_bytes(buf) == i, "connection {i}: echo");
                        }
                        Ok(())
                    })
                })
                .collect();
            clients.into_iter().try_for_each(|h| join(h.join()))?;
            join(server.join())
        })
    })??;
    let stats = wait_empty(|| redirect.stats())?;
    let total = stats.total();
    assert_eq!(
        (stats.sockets, stats.states),
        (0, 0),
        "entries left: {total:?}"
    );
    assert_eq!(total.established, 2 * u64::from(CONNS), "{total:?}");
    assert_eq!(total.removed, total.established, "{total:?}");
    assert_eq!(total.record_failed, 0, "{total:?}");
    assert!(
        total.redirected_msgs >= u64::from(CONNS),
        "most echoes redirected: {total:?}"
    );
    Ok(())
}

/// Closes `sock` with a reset (SO_LINGER 0).
fn reset(sock: TcpStream) -> anyhow::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    ensure!(ret == 0, "SO_LINGER: {}", io::Error::last_os_error());
    drop(sock);
    Ok(())
}

#[test]
fn half_close_and_reset_behave_as_on_tcp_and_remove_entries() -> anyhow::Result<()> {
    let (ns, cgroup) = lab()?;
    let redirect = SockRedirect::attach(cgroup.path(), &Config::new(&[PORT], 0)?)?;
    ns.run(|| -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:8080")?;

        // Half-close: the client stops writing, the server still answers after seeing EOF.
        let client = TcpStream::connect("127.0.0.1:8080")?;
        let (server, _) = listener.accept()?;
        send_stream(&client, 1, 100_000)?;
        ensure!(check_stream(&server, 1)? == 100_000, "request bytes");
        send_stream(&server, 2, 300_000)?;
        let got = check_stream(&client, 2)?;
        ensure!(
            got == 300_000,
            "answer after half-close: {got} bytes {:?}",
            redirect.stats()?.total()
        );

        // Reset: the server reads an intact prefix, then EOF or ECONNRESET; its writes fail.
        let client = TcpStream::connect("127.0.0.1:8080")?;
        let (server, _) = listener.accept()?;
        let mut data = Stream::new(3);
        let mut buf = vec![0u8; 50_000];
        data.fill(&mut buf);
        (&client).write_all(&buf)?;
        reset(client)?;
        match check_stream(&server, 3) {
            Ok(n) => ensure!(n <= 50_000, "{n} bytes after a reset"),
            Err(e) => {
                let kind = e.downcast_ref::<io::Error>().map(io::Error::kind);
                ensure!(
                    e.chain().any(|c| c
                        .downcast_ref::<io::Error>()
                        .is_some_and(|io| io.kind() == io::ErrorKind::ConnectionReset)),
                    "after a reset: {e:#} ({kind:?})"
                );
            }
        }
        let mut last = Ok(());
        for _ in 0..10 {
            last = (&server).write_all(&[0u8; 1024]);
            if last.is_err() {
                break;
            }
        }
        ensure!(
            last.is_err(),
            "writes to a reset connection kept succeeding"
        );
        Ok(())
    })??;
    let stats = wait_empty(|| redirect.stats())?;
    let total = stats.total();
    assert_eq!((stats.sockets, stats.states), (0, 0), "{total:?}");
    assert_eq!(total.established, 4, "{total:?}");
    assert_eq!(total.removed, 4, "{total:?}");
    Ok(())
}

#[test]
fn detach_under_load_keeps_existing_connections_working() -> anyhow::Result<()> {
    let (ns, cgroup) = lab()?;
    let prefix = testkit::PinPrefix::new();
    let layout = PinLayout::new(BPFFS, prefix.name());
    let pinned =
        SockRedirect::attach_pinned(cgroup.path(), &Config::new(&[PORT], 0)?, &layout, "host")?;
    let ours: BTreeSet<u32> = pinned.program_ids()?.into_iter().collect();
    let detached = AtomicBool::new(false);
    ns.run(|| -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:8080")?;
        let pairs: Vec<(TcpStream, TcpStream)> = (0..8)
            .map(|_| -> anyhow::Result<_> {
                let client = TcpStream::connect("127.0.0.1:8080")?;
                Ok((client, listener.accept()?.0))
            })
            .collect::<anyhow::Result<_>>()?;
        let before = pinned.stats()?.total();
        ensure!(before.established == 16, "{before:?}");
        thread::scope(|s| -> anyhow::Result<()> {
            let streams: Vec<_> = pairs
                .iter()
                .enumerate()
                .map(|(i, (client, server))| {
                    let seed = i as u64 + 1;
                    s.spawn(move || -> anyhow::Result<()> {
                        thread::scope(|s| {
                            let w = s.spawn(|| send_stream(client, seed, 32 << 20));
                            let got = check_stream(server, seed)?;
                            join(w.join().map(|r| r.map_err(anyhow::Error::from)))?;
                            ensure!(got == 32 << 20, "{got} bytes");
                            Ok(())
                        })
                    })
                })
                .collect();
            thread::sleep(Duration::from_millis(50));
            let mid = pinned.stats()?.total();
            PinnedSockRedirect::open(&layout, "host", cgroup.path())?.detach()?;
            detached.store(true, Ordering::Relaxed);
            ensure!(mid.redirected_bytes > 0, "no load before detach: {mid:?}");
            // A new connection after detach works, on plain TCP.
            let late = TcpStream::connect("127.0.0.1:8080")?;
            let (late_server, _) = listener.accept()?;
            send_stream(&late, 99, 1 << 20)?;
            ensure!(
                check_stream(&late_server, 99)? == 1 << 20,
                "late connection"
            );
            streams.into_iter().try_for_each(|h| join(h.join()))
        })
    })??;
    assert!(detached.load(Ordering::Relaxed));
    assert!(!layout.root().exists(), "pins left");
    // The sockets closed: the kernel frees programs and maps.
    wait_released(&ours)
}

/// TCP segments this namespace sent (`OutSegs` of /proc/thread-self/net/snmp).
fn out_segs() -> anyhow::Result<u64> {
    let snmp = fs::read_to_string("/proc/thread-self/net/snmp")?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Tcp lines in snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .context("no OutSegs")?
        .1
        .parse()
        .context("OutSegs value")
}

/// Segments sent for 2000 ping-pongs of 16 KiB messages in a fresh namespace.
fn segments_for_exchange(ns: &NetNs) -> anyhow::Result<u64> {
    ns.run(|| -> anyhow::Result<u64> {
        let listener = TcpListener::bind("127.0.0.1:8080")?;
        let before = out_segs()?;
        let mut client = TcpStream::connect("127.0.0.1:8080")?;
        let (mut server, _) = listener.accept()?;
        let echo = thread::spawn(move || -> io::Result<()> {
            let mut buf = vec![0u8; 16 << 10];
            for _ in 0..2000 {
                server.read_exact(&mut buf)?;
                server.write_all(&buf)?;
            }
            Ok(())
        });
        let mut buf = vec![0u8; 16 << 10];
        for _ in 0..2000 {
            client.write_all(&buf)?;
            client.read_exact(&mut buf)?;
        }
        echo.join()
            .map_err(|_| anyhow::anyhow!("echo panicked"))??;
        drop(client);
        thread::sleep(Duration::from_millis(50));
        Ok(out_segs()? - before)
    })?
}

#[test]
fn redirected_exchange_sends_almost_no_tcp_segments() -> anyhow::Result<()> {
    let (ns_off, cgroup) = lab()?;
    let off = segments_for_exchange(&ns_off)?;
    let ns_on = NetNs::new()?;
    ns_on.ip("link set lo up")?;
    let redirect = SockRedirect::attach(cgroup.path(), &Config::new(&[PORT], 1024)?)?;
    let on = segments_for_exchange(&ns_on)?;
    let total = redirect.stats()?.total();
    assert!(off >= 4000, "without redirect: {off} segments");
    // Handshake, FINs and their ACKs only.
    assert!(on <= 10, "with redirect: {on} segments ({total:?})");
    assert_eq!(total.redirected_msgs, 4000, "{total:?}");
    eprintln!("TCP segments for 2000 × 16 KiB ping-pongs: off {off}, on {on}");
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
    let (ns, cgroup) = lab()?;
    let prefix = testkit::PinPrefix::new();
    let cg = cgroup.path().to_str().context("cgroup path")?;
    let with = |rest: &[&'static str]| -> Vec<&str> {
        let mut v = vec!["--prefix", prefix.name(), "sock-redirect"];
        v.extend_from_slice(rest);
        v.extend_from_slice(&["--cgroup", cg]);
        v
    };
    accel_ok(&with(&[
        "attach",
        "--ports",
        "8080,5201",
        "--min-size",
        "512",
    ]))?;
    let again = accel(&with(&["attach", "--ports", "8080"]))?;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already attached"),
        "{again:?}"
    );
    let layout = PinLayout::new(BPFFS, prefix.name());
    let ours: BTreeSet<u32> = PinnedSockRedirect::open(&layout, "host", cgroup.path())?
        .program_ids()?
        .into_iter()
        .collect();
    exchange(&ns, "127.0.0.1:5201", "127.0.0.1:5201", 4, 100_000)?;

    let json: serde_json::Value = serde_json::from_str(&accel_ok(&with(&["stats", "--json"]))?)?;
    assert_eq!(json["total"]["established"], 8, "{json}");
    assert!(
        json["total"]["redirected_bytes"].as_u64() > Some(0),
        "{json}"
    );
    let table = accel_ok(&with(&["stats"]))?;
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().next() == Some("all")),
        "{table}"
    );

    accel_ok(&with(&["detach"]))?;
    assert!(!layout.root().exists(), "pins left");
    wait_released(&ours)?;
    let after = accel(&with(&["stats"]))?;
    assert_eq!(after.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("not attached"),
        "{after:?}"
    );
    let bad = accel(&with(&["attach", "--ports", "0"]))?;
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("port 0"),
        "{bad:?}"
    );
    assert!(!layout.root().exists(), "a refused attach left pins");
    Ok(())
}
