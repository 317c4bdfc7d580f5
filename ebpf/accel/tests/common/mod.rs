//! Frames for the HTTP filter tests, built with etherparse from a small description, and the
//! policy they are judged under.

use etherparse::{PacketBuilder, VlanId};
use proptest::sample as prop_index;

/// The policy of the fixture table and the property test.
pub const POLICY: &str = r#"
[[ports]]
name = "web"
ports = [80, 8080]
allowed_methods = ["GET", "HEAD", "POST", "OPTIONS"]
method_action = "drop"

[[ports]]
name = "api-methods"
ports = [9000]
allowed_methods = ["GET", "OTHER"]
method_action = "monitor"

[[ports]]
name = "short"
ports = [8000]
allowed_methods = ["GET", "POST"]

[[paths]]
name = "admin"
ports = [80, 8080]
prefix = "/admin"
action = "drop"

[[paths]]
name = "admin-public"
ports = [80, 8080]
prefix = "/admin/public"
action = "allow"

[[paths]]
name = "admin-public-secret"
ports = [80]
prefix = "/admin/public/secret"
action = "drop"

[[paths]]
name = "internal-watch"
ports = [9000]
prefix = "/internal"
action = "monitor"

[[paths]]
name = "everything-9000"
ports = [9000]
prefix = ""
action = "allow"

# Port 8000 has few prefixes of at most 8 bytes: matched without the trie.
[[paths]]
name = "short-a"
ports = [8000]
prefix = "/a"
action = "monitor"

[[paths]]
name = "short-admin"
ports = [8000]
prefix = "/admin"
action = "allow"

[[paths]]
name = "short-api"
ports = [8000]
prefix = "/api/"
action = "drop"

[[paths]]
name = "short-rest"
ports = [8000]
prefix = ""
action = "allow"
"#;

/// IPv6 extension header kinds the builder can insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options (0).
    HopByHop,
    /// Routing (43), type 0, no segments left.
    Routing,
    /// Destination options (60), `len` extra 8-byte units.
    DestOpts(u8),
    /// Fragment (44) with this offset (8-byte units).
    Fragment(u16),
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Self::HopByHop => 0,
            Self::Routing => 43,
            Self::DestOpts(_) => 60,
            Self::Fragment(_) => 44,
        }
    }
}

/// What to put in a frame.
#[derive(Clone, Debug)]
pub struct Spec {
    /// VLAN tags (0 to 3; a third one is spliced in by hand).
    pub vlans: u8,
    /// IPv6 instead of IPv4.
    pub v6: bool,
    /// IPv4 option bytes (a multiple of 4).
    pub ip_options: usize,
    /// IPv4 fragment offset (8-byte units).
    pub v4_fragment: u16,
    /// IPv6 extension headers, in order.
    pub ext: Vec<Ext>,
    /// TCP option bytes (a multiple of 4).
    pub tcp_options: usize,
    /// UDP instead of TCP.
    pub udp: bool,
    /// Destination port.
    pub dport: u16,
    /// The TCP (or UDP) payload.
    pub payload: Vec<u8>,
}

impl Spec {
    /// IPv4/TCP to `dport` carrying `payload`.
    pub fn tcp(dport: u16, payload: &[u8]) -> Self {
        Self {
            vlans: 0,
            v6: false,
            ip_options: 0,
            v4_fragment: 0,
            ext: Vec::new(),
            tcp_options: 0,
            udp: false,
            dport,
            payload: payload.to_vec(),
        }
    }

    /// A request line `METHOD TARGET HTTP/1.1` with a Host header, to `dport`.
    pub fn get(dport: u16, method: &str, target: &str) -> Self {
        Self::tcp(
            dport,
            format!("{method} {target} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes(),
        )
    }

    /// Offset of the IP header in the frame [`Spec::build`] makes.
    pub fn ip_offset(&self) -> usize {
        14 + 4 * usize::from(self.vlans.min(3))
    }

    /// The frame, with the IP length field (IPv4 total length, IPv6 payload length) lowered to
    /// `keep` of its value: the IP packet ends early and the rest of the frame is padding.
    pub fn build_with_ip_len(&self, keep: prop_index::Index) -> Vec<u8> {
        let mut frame = self.build();
        let at = self.ip_offset() + if self.v6 { 4 } else { 2 };
        let len = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let lowered = keep.index(usize::from(len) + 1) as u16;
        frame[at..at + 2].copy_from_slice(&lowered.to_be_bytes());
        frame
    }

    /// The Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let vlan = |id| VlanId::try_new(id).expect("small VLAN id");
        let mut frame = Vec::new();
        macro_rules! finish {
            ($step:expr) => {{
                let ip = if self.v6 {
                    $step.ipv6([0xfd; 16], [0xfe; 16], 64)
                } else {
                    $step.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                };
                if self.udp {
                    ip.udp(40000, self.dport)
                        .write(&mut frame, &self.payload)
                        .expect("write frame");
                } else {
                    let options = vec![1u8; self.tcp_options];
                    ip.tcp(40000, self.dport, 1, 1024)
                        .options_raw(&options)
                        .expect("TCP options")
                        .write(&mut frame, &self.payload)
                        .expect("write frame");
                }
            }};
        }
        match self.vlans {
            0 => finish!(eth),
            1 => finish!(eth.single_vlan(vlan(10))),
            _ => finish!(eth.double_vlan(vlan(10), vlan(20))),
        }
        let ip = self.ip_offset();
        if self.vlans > 2 {
            // A third tag after the two the builder wrote: 802.1Q, VLAN 30.
            frame.splice(ip - 6..ip - 6, [0x81, 0x00, 0x00, 30]);
        }
        if self.v6 {
            self.splice_ext(&mut frame, ip);
        } else {
            self.splice_v4(&mut frame, ip);
        }
        frame
    }

    fn splice_v4(&self, frame: &mut Vec<u8>, ip: usize) {
        if self.ip_options > 0 {
            let at = ip + 20;
            frame.splice(at..at, std::iter::repeat_n(1u8, self.ip_options));
            frame[ip] += (self.ip_options / 4) as u8;
            let total = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) + self.ip_options as u16;
            frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        }
        if self.v4_fragment != 0 {
            frame[ip + 6..ip + 8].copy_from_slice(&self.v4_fragment.to_be_bytes());
        }
    }

    fn splice_ext(&self, frame: &mut Vec<u8>, ip: usize) {
        let mut chain = Vec::new();
        let mut next = frame[ip + 6];
        for ext in self.ext.iter().rev() {
            let header = match *ext {
                Ext::HopByHop => vec![next, 0, 1, 4, 0, 0, 0, 0],
                Ext::Routing => vec![next, 0, 0, 0, 0, 0, 0, 0],
                Ext::DestOpts(units) => {
                    let mut h = vec![next, units, 1, 4, 0, 0, 0, 0];
                    h.extend(std::iter::repeat_n(0u8, 8 * usize::from(units)));
                    h
                }
                Ext::Fragment(offset) => {
                    let field = (offset << 3) | 1;
                    let [a, b] = field.to_be_bytes();
                    vec![next, 0, a, b, 0, 0, 0, 7]
                }
            };
            next = ext.number();
            chain.splice(0..0, header);
        }
        frame[ip + 6] = next;
        let len = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]) + chain.len() as u16;
        frame[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
        frame.splice(ip + 40..ip + 40, chain);
    }
}
