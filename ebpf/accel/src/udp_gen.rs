//! A UDP load generator that sends from XDP and counts echoes at tc ingress, for the lab's
//! `udp_echo` workload (`generator = "xdp"`; programs and maps: `ebpf_common::udp_gen`).
//!
//! A socket sender pays the whole UDP/IP output path per datagram and a socket receiver the
//! whole input path: on one CPU it cannot offer more than a fast echo answers. Here the
//! kernel transmits copies of one template frame straight from `BPF_PROG_TEST_RUN` in
//! live-frames mode (Linux 5.18): the XDP program stamps each copy (sequence number, send
//! time, UDP checksum) and returns `XDP_TX`, which hands the frame to the interface's
//! `ndo_xdp_xmit` with no skb. On a veth that puts it on the peer's XDP ring, which needs NAPI
//! on the peer (an XDP program attached there, or GRO on). The echoes are taken off the same
//! interface by a tc ingress program (tcx, Linux 6.6) that counts them into per-CPU latency
//! buckets and drops them, so they never reach a socket.
//!
//! Frames the peer's ring has no room for are dropped by the kernel: they count as sent and
//! never echoed, as an overloaded echo loses them.
//!
//! Each test run adds the program to the kernel's XDP dispatcher and removes it again, and a
//! dispatcher change waits for an RCU grace period — twice per run, ~10 ms each on this 2-CPU
//! VM, so the sender slept three quarters of its time and offered 600 000 frames/s in bursts
//! instead of millions. While the program is attached to an interface it stays in the
//! dispatcher and a run changes nothing there, so [`UdpGen::start`] also attaches it, in
//! generic mode, to the namespace's loopback interface, where it passes every frame (only a
//! test run names the sending interface).

use std::net::{IpAddr, SocketAddr};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, TestRun as _, TestRunAttrs, TestRunOptions, Xdp,
        tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
    util::KernelVersion,
};
pub use ebpf_common::udp_gen::{BUCKETS, bucket_low, latency_bucket};
use ebpf_common::udp_gen::{
    COUNTER, ECHOES_MAP, EchoFlow, Echoes, FLOW_MAP, FRAME_MAP, FrameLayout, GENERATOR, STAMP,
};

use crate::{
    AttachMode, Error, Result,
    object::{self, map_error, program_error},
};

/// The object's name in messages.
pub const OBJECT_NAME: &str = "udp_gen";
/// The interface the generator is attached to only to stay in the XDP dispatcher.
const HOLD_IFACE: &str = "lo";
/// Frames the kernel transmits per batch of a live-frames run (its maximum is 256).
const LIVE_BATCH: u32 = 64;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udp_gen"));

/// One UDP flow, as the generator sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The sending interface's MAC address.
    pub src_mac: [u8; 6],
    /// The next hop's MAC address.
    pub dst_mac: [u8; 6],
    /// The client's address and port (echoes come back to it).
    pub client: SocketAddr,
    /// The echo server's address and port.
    pub server: SocketAddr,
    /// UDP payload bytes (at least 16: sequence number and send time).
    pub payload: usize,
}

impl Flow {
    /// The template frame (Ethernet, IPv4 or IPv6, UDP with a valid checksum, a zero payload)
    /// and where the generator writes in it.
    pub fn frame(&self) -> Result<(Vec<u8>, FrameLayout)> {
        if self.payload < STAMP as usize {
            return Err(config(format!(
                "a {} byte payload has no room for the {STAMP} byte stamp",
                self.payload
            )));
        }
        let builder = etherparse::PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let (builder, ip_header) = match (self.client.ip(), self.server.ip()) {
            (IpAddr::V4(c), IpAddr::V4(s)) => (builder.ipv4(c.octets(), s.octets(), 64), 20),
            (IpAddr::V6(c), IpAddr::V6(s)) => (builder.ipv6(c.octets(), s.octets(), 64), 40),
            _ => {
                return Err(config(format!(
                    "client {} and server {} are of different address families",
                    self.client, self.server
                )));
            }
        };
        let builder = builder.udp(self.client.port(), self.server.port());
        let payload = vec![0u8; self.payload];
        let mut frame = Vec::with_capacity(builder.size(payload.len()));
        builder
            .write(&mut frame, &payload)
            .map_err(|e| config(format!("cannot build the frame: {e}")))?;
        let udp = 14 + ip_header;
        Ok((
            frame,
            FrameLayout {
                payload: (udp + 8) as u32,
                checksum: (udp + 6) as u32,
                ifindex: 0,
            },
        ))
    }

    fn echo(&self) -> EchoFlow {
        let (ip_version, server, client) = match (self.server.ip(), self.client.ip()) {
            (IpAddr::V4(s), IpAddr::V4(c)) => (4, widen(&s.octets()), widen(&c.octets())),
            (s, c) => (6, octets16(s), octets16(c)),
        };
        EchoFlow {
            server,
            client,
            server_port: self.server.port().to_be_bytes(),
            client_port: self.client.port().to_be_bytes(),
            ip_version,
            pad: [0; 3],
        }
    }
}

fn widen(v4: &[u8; 4]) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..4].copy_from_slice(v4);
    bytes
}

fn octets16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn config(message: String) -> Error {
    Error::Config {
        accelerator: OBJECT_NAME,
        message,
    }
}

/// Echoes counted so far, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoCount {
    /// Echoes taken off the interface.
    pub echoes: u64,
    /// Echoes by round-trip bucket ([`latency_bucket`]; bucket `i` holds
    /// [`bucket_low`]`(i)..`[`bucket_low`]`(i + 1)` ns).
    pub latency: Vec<u64>,
}

/// The generator on one interface of the calling thread's network namespace; dropping it
/// detaches the echo counter and the generator's loopback attachment.
#[derive(Debug)]
pub struct UdpGen {
    ebpf: Ebpf,
    counter: Option<SchedClassifierLinkId>,
    /// The generator's attachment to [`HOLD_IFACE`], which keeps it in the XDP dispatcher.
    dispatcher_hold: Option<XdpLinkId>,
    iface: String,
    frame: Vec<u8>,
    /// `struct xdp_md` for the runs: the frame's end and the sending interface.
    context: [u8; 24],
}

impl UdpGen {
    /// Loads the programs for `flow` and attaches the echo counter to `iface`'s ingress.
    pub fn start(iface: &str, flow: &Flow) -> Result<Self> {
        let ifindex = object::ifindex(iface).ok_or_else(|| Error::NoInterface(iface.into()))?;
        let (frame, layout) = flow.frame()?;
        for (needed, what) in [
            ((5, 18), "sending from XDP (BPF_PROG_TEST_RUN live frames)"),
            ((6, 6), "counting echoes at tcx ingress"),
        ] {
            if KernelVersion::current().is_ok_and(|k| k < KernelVersion::new(needed.0, needed.1, 0))
            {
                return Err(config(format!(
                    "{what} needs Linux {}.{} or newer",
                    needed.0, needed.1
                )));
            }
        }
        let mut ebpf = object::load(OBJECT_NAME, OBJECT)?;
        Array::<&mut MapData, FrameLayout>::try_from(object::map_mut(
            &mut ebpf,
            OBJECT_NAME,
            FRAME_MAP,
        )?)
        .and_then(|mut m| m.set(0, FrameLayout { ifindex, ..layout }, 0))
        .map_err(map_error(FRAME_MAP))?;
        Array::<&mut MapData, EchoFlow>::try_from(object::map_mut(
            &mut ebpf,
            OBJECT_NAME,
            FLOW_MAP,
        )?)
        .and_then(|mut m| m.set(0, flow.echo(), 0))
        .map_err(map_error(FLOW_MAP))?;
        let xdp: &mut Xdp = object::program(&mut ebpf, OBJECT_NAME, GENERATOR)?;
        xdp.load().map_err(program_error("load", GENERATOR))?;
        let (_, dispatcher_hold) =
            object::attach_xdp(xdp, GENERATOR, HOLD_IFACE, AttachMode::Generic)?;
        let tc: &mut SchedClassifier = object::program(&mut ebpf, OBJECT_NAME, COUNTER)?;
        tc.load().map_err(program_error("load", COUNTER))?;
        let counter = tc
            .attach(iface, TcAttachType::Ingress)
            .map_err(program_error(
                &format!("attach to {iface} ingress"),
                COUNTER,
            ))?;
        let mut context = [0u8; 24];
        context[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        context[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        Ok(Self {
            ebpf,
            counter: Some(counter),
            dispatcher_hold: Some(dispatcher_hold),
            iface: iface.to_owned(),
            frame,
            context,
        })
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The template frame.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// Transmits `count` stamped copies of the frame now, from the calling thread.
    pub fn send(&mut self, count: u32) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let opts = TestRunOptions {
            data_in: Some(&self.frame),
            ctx_in: Some(&self.context),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
            ..TestRunOptions::default()
        };
        let xdp: &mut Xdp = object::program(&mut self.ebpf, OBJECT_NAME, GENERATOR)?;
        xdp.test_run(opts).map(drop).map_err(program_error(
            &format!("send {count} frames from {} with", self.iface),
            GENERATOR,
        ))
    }

    /// The echoes counted so far.
    pub fn echoes(&self) -> Result<EchoCount> {
        let map: PerCpuArray<&MapData, Echoes> =
            PerCpuArray::try_from(object::map(&self.ebpf, OBJECT_NAME, ECHOES_MAP)?)
                .map_err(map_error(ECHOES_MAP))?;
        let per_cpu = map.get(&0, 0).map_err(map_error(ECHOES_MAP))?;
        let mut total = EchoCount {
            echoes: 0,
            latency: vec![0; BUCKETS],
        };
        for cpu in per_cpu.iter() {
            total.echoes += cpu.echoes;
            for (sum, n) in total.latency.iter_mut().zip(&cpu.latency) {
                *sum += n;
            }
        }
        Ok(total)
    }
}

impl Drop for UdpGen {
    fn drop(&mut self) {
        if let Some(link) = self.counter.take()
            && let Ok(tc) = object::program::<SchedClassifier>(&mut self.ebpf, OBJECT_NAME, COUNTER)
        {
            // The link goes with the program either way; detaching first is only sooner.
            let _ = tc.detach(link);
        }
        if let Some(link) = self.dispatcher_hold.take()
            && let Ok(xdp) = object::program::<Xdp>(&mut self.ebpf, OBJECT_NAME, GENERATOR)
        {
            let _ = xdp.detach(link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(client: &str, server: &str) -> Flow {
        Flow {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            payload: 64,
        }
    }

    #[test]
    fn frames_are_valid_udp_with_the_stamp_where_the_layout_says() {
        for (client, server) in [
            ("10.0.0.1:40000", "10.0.0.2:7777"),
            ("[fd00::1]:40000", "[fd00::2]:7777"),
        ] {
            let f = flow(client, server);
            let (frame, layout) = f.frame().unwrap();
            let packet = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
            let Some(etherparse::TransportSlice::Udp(udp)) = packet.transport else {
                panic!("{client}: not UDP");
            };
            assert_eq!(udp.source_port(), 40000);
            assert_eq!(udp.destination_port(), 7777);
            assert_eq!(udp.payload().len(), 64);
            assert_eq!(layout.payload as usize, frame.len() - 64, "{client}");
            assert_eq!(
                frame[layout.checksum as usize..][..2],
                udp.checksum().to_be_bytes(),
                "{client}"
            );
            let expected = match packet.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => udp
                    .to_header()
                    .calc_checksum_ipv4(&ip.header().to_header(), udp.payload()),
                Some(etherparse::NetSlice::Ipv6(ip)) => udp
                    .to_header()
                    .calc_checksum_ipv6(&ip.header().to_header(), udp.payload()),
                _ => panic!("{client}: not IP"),
            }
            .unwrap();
            assert_eq!(udp.checksum(), expected, "{client}");
        }
    }

    #[test]
    fn echo_flows_name_the_server_as_source() {
        let echo = flow("10.0.0.1:40000", "10.0.0.2:7777").echo();
        assert_eq!(echo.ip_version, 4);
        assert_eq!(echo.server[..4], [10, 0, 0, 2]);
        assert_eq!(echo.client[..4], [10, 0, 0, 1]);
        assert_eq!(echo.server_port, 7777u16.to_be_bytes());
        assert_eq!(echo.client_port, 40000u16.to_be_bytes());
        let echo = flow("[fd00::1]:40000", "[fd00::2]:7777").echo();
        assert_eq!(echo.ip_version, 6);
        assert_eq!(echo.server[15], 2);
    }

    #[test]
    fn bad_flows_are_refused_with_the_reason() {
        let mut f = flow("10.0.0.1:40000", "[fd00::2]:7777");
        let e = f.frame().unwrap_err().to_string();
        assert!(e.contains("different address families"), "{e}");
        f = flow("10.0.0.1:40000", "10.0.0.2:7777");
        f.payload = 15;
        let e = f.frame().unwrap_err().to_string();
        assert!(e.contains("15 byte payload"), "{e}");
    }
}
