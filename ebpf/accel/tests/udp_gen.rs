//! The XDP UDP generator against a real kernel: a veth pair between a client namespace (the
//! generator) and a server namespace (an ordinary UDP echo socket, GRO on so the veth runs
//! NAPI). Every stamped frame reaches the server socket (so its checksums are right), every
//! echo is counted with a round-trip time, other traffic still reaches the client's sockets,
//! and after the generator is dropped echoes reach them too. Frames go out in small batches,
//! each when the last has come back, so a busy machine cannot overflow a ring. Needs root.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use accel::udp_gen::{Flow, UdpGen, bucket_low};
use anyhow::{Context as _, ensure};
use testkit::{NetNs, VethPair};

const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 1);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 2);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd20, 4, 0, 0, 0, 0, 0, 1);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd20, 4, 0, 0, 0, 0, 0, 2);
const PORT: u16 = 7777;
const FRAMES: u32 = 600;
/// Frames sent at once: far below the veth ring (256) and what the server socket buffers.
const BATCH: u32 = 20;
/// What the client sends through its socket until the server answers.
const READY: &[u8] = b"ready?";
/// What the client sends through its socket after dropping the generator.
const AFTER: &[u8] = b"after the generator";

fn is_probe(datagram: &[u8]) -> bool {
    datagram == READY || datagram == AFTER
}

/// Sends `READY` from `socket` until `server` echoes it: the server socket is bound and both
/// kernels know each other's MAC address before the generator's first frame. (A `READY` is
/// too short to carry a stamp, so the echo counter never counts one.)
fn wait_for_echo(socket: &UdpSocket, server: SocketAddr) -> anyhow::Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        socket.send_to(READY, server)?;
        if let Ok((n, from)) = socket.recv_from(&mut buf)
            && from == server
            && &buf[..n] == READY
        {
            return Ok(());
        }
    }
    anyhow::bail!("{server} did not echo within 5 s")
}

fn lab() -> anyhow::Result<VethPair> {
    let lab = VethPair::new(
        &[&format!("{SERVER_V4}/24"), &format!("{SERVER_V6}/64")],
        &[&format!("{CLIENT_V4}/24"), &format!("{CLIENT_V6}/64")],
        None,
    )?;
    // The generator's frames land on the server end's XDP ring: NAPI must run there.
    let gro = lab.server.run(|| {
        Command::new("ethtool")
            .args(["-K", &lab.server_if, "gro", "on"])
            .status()
    })??;
    ensure!(gro.success(), "ethtool -K {} gro on: {gro}", lab.server_if);
    Ok(lab)
}

/// An echo server in `ns` on `addr` until `stop`; returns the datagrams it echoed.
fn serve(ns: &NetNs, addr: SocketAddr, stop: &AtomicBool) -> anyhow::Result<Vec<Vec<u8>>> {
    ns.run(|| -> anyhow::Result<Vec<Vec<u8>>> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                socket.send_to(&buf[..n], from)?;
                seen.push(buf[..n].to_vec());
            }
        }
        Ok(seen)
    })?
}

#[test]
fn every_frame_is_echoed_and_counted_with_its_round_trip_over_ipv4_and_ipv6() -> anyhow::Result<()>
{
    let lab = lab()?;
    let (server_mac, client_mac) = (
        lab.server.mac(&lab.server_if)?,
        lab.client.mac(&lab.client_if)?,
    );
    for (server, client) in [
        (
            SocketAddr::from((SERVER_V4, PORT)),
            SocketAddr::from((CLIENT_V4, 0)),
        ),
        (
            SocketAddr::from((SERVER_V6, PORT)),
            SocketAddr::from((CLIENT_V6, 0)),
        ),
    ] {
        let stop = AtomicBool::new(false);
        thread::scope(|s| -> anyhow::Result<()> {
            let serving = s.spawn(|| serve(&lab.server, server, &stop));
            let counted = lab.client.run(|| -> anyhow::Result<_> {
                // The flow's port, held so that nothing else takes it.
                let socket = UdpSocket::bind(client)?;
                let flow = Flow {
                    src_mac: client_mac,
                    dst_mac: server_mac,
                    client: socket.local_addr()?,
                    server,
                    payload: 64,
                };
                wait_for_echo(&socket, server)?;
                let started = Instant::now();
                let mut generator = UdpGen::start(&lab.client_if, &flow)?;
                // A batch goes out when the previous one has come back: a busy machine that
                // starves the server for a while must not overflow its veth ring or socket.
                let deadline = Instant::now() + Duration::from_secs(10);
                for sent in (BATCH..=FRAMES).step_by(BATCH as usize) {
                    generator.send(BATCH)?;
                    while generator.echoes()?.echoes < u64::from(sent) && Instant::now() < deadline
                    {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                let echoes = generator.echoes()?;
                let elapsed = started.elapsed();
                drop(generator);
                // Without the counter, an echo reaches the socket.
                socket.set_read_timeout(Some(Duration::from_secs(2)))?;
                socket.send_to(AFTER, server)?;
                let mut buf = [0u8; 64];
                // A late answer to a readiness probe may come first.
                let (n, from) = loop {
                    let (n, from) = socket.recv_from(&mut buf).context("echo after drop")?;
                    if &buf[..n] != READY {
                        break (n, from);
                    }
                };
                ensure!(from == server && &buf[..n] == AFTER);
                Ok((echoes, elapsed))
            })??;
            stop.store(true, Ordering::Relaxed);
            let seen = serving.join().expect("server thread")?;
            let (echoes, elapsed) = counted;
            // Readiness probes and the probe after the drop are not the generator's frames.
            let frames: Vec<&Vec<u8>> = seen.iter().filter(|d| !is_probe(d)).collect();
            ensure!(
                echoes.echoes == u64::from(FRAMES),
                "{server}: {} echoes of {} datagrams the server echoed",
                echoes.echoes,
                frames.len()
            );
            ensure!(echoes.latency.iter().sum::<u64>() == u64::from(FRAMES));
            let slowest = echoes.latency.iter().rposition(|&n| n > 0).unwrap_or(0);
            ensure!(
                Duration::from_nanos(bucket_low(slowest)) <= elapsed,
                "{server}: a round trip above {} ns in a {elapsed:?} run",
                bucket_low(slowest)
            );
            // The server's kernel took every frame (so both checksums held).
            ensure!(
                frames.len() == FRAMES as usize,
                "{server}: {} datagrams",
                frames.len()
            );
            ensure!(
                seen.last().is_some_and(|d| d == AFTER),
                "{server}: the probe after the drop did not come last"
            );
            for d in frames {
                ensure!(d.len() == 64, "{server}: {} bytes", d.len());
                let stamp = u64::from_le_bytes(d[8..16].try_into()?);
                ensure!(
                    stamp != 0 && d[16..].iter().all(|&b| b == 0),
                    "{server}: {d:?}"
                );
            }
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn other_traffic_still_reaches_the_clients_sockets() -> anyhow::Result<()> {
    let lab = lab()?;
    let (server_mac, client_mac) = (
        lab.server.mac(&lab.server_if)?,
        lab.client.mac(&lab.client_if)?,
    );
    let server = SocketAddr::from((SERVER_V4, PORT));
    lab.client.run(|| -> anyhow::Result<()> {
        let flow_socket = UdpSocket::bind((CLIENT_V4, 0))?;
        let other = UdpSocket::bind((CLIENT_V4, 0))?;
        other.set_read_timeout(Some(Duration::from_secs(2)))?;
        let flow = Flow {
            src_mac: client_mac,
            dst_mac: server_mac,
            client: flow_socket.local_addr()?,
            server,
            payload: 16,
        };
        let generator = UdpGen::start(&lab.client_if, &flow)?;
        let to_other = other.local_addr()?;
        lab.server.run(|| -> anyhow::Result<()> {
            // Same server port, another client port; and the flow's port from another one.
            UdpSocket::bind((SERVER_V4, PORT))?.send_to(b"same server port", to_other)?;
            UdpSocket::bind((SERVER_V4, 0))?.send_to(&[0u8; 16], flow.client)?;
            Ok(())
        })??;
        let mut buf = [0u8; 64];
        let (n, _) = other
            .recv_from(&mut buf)
            .context("datagram to the other port")?;
        ensure!(&buf[..n] == b"same server port");
        flow_socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let (n, from) = flow_socket
            .recv_from(&mut buf)
            .context("datagram from another port")?;
        ensure!(n == 16 && from.port() != PORT, "{from}");
        ensure!(generator.echoes()?.echoes == 0);
        // The generator is attached to the loopback interface only to stay in the XDP
        // dispatcher: traffic there passes, and the attachment goes with the generator.
        ensure!(xdp_on_loopback()?, "the generator is not attached to lo");
        UdpSocket::bind((CLIENT_V4, 0))?.send_to(b"over lo", to_other)?;
        let (n, _) = other.recv_from(&mut buf).context("datagram over lo")?;
        ensure!(&buf[..n] == b"over lo");
        drop(generator);
        ensure!(
            !xdp_on_loopback()?,
            "lo's attachment outlived the generator"
        );
        Ok(())
    })??;
    Ok(())
}

/// Whether the calling thread's namespace has an XDP program on `lo` (`ip` verifies).
fn xdp_on_loopback() -> anyhow::Result<bool> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "lo"])
        .output()?;
    ensure!(out.status.success(), "ip link show lo failed");
    Ok(String::from_utf8_lossy(&out.stdout).contains("xdp"))
}
