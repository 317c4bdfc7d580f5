//! The user-space reference classifier: the verdict and matched rule the kernel program must
//! give any frame under a policy. Headers are decoded with etherparse; the request line and
//! the policy lookup are written independently of the program (slices and iterators, a linear
//! longest-prefix search) so that the two implementations check each other.

use ebpf_common::http_filter::{
    ACTION_ALLOW, ACTION_MONITOR, HTTP_VERSION_PREFIX, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
    METHOD_MAX, METHOD_OTHER, METHODS, PATH_MAX, VERDICT_ALLOW, VERDICT_DROP, VERDICT_MALFORMED,
    VERDICT_MONITOR, VERDICT_NOT_REQUEST, VERDICT_OTHER, VERDICT_REQUEST,
};
use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice,
    Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice,
};
use serde::Serialize;

use super::policy::Policy;

/// What the filter does with a frame, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Passed uninspected: not IP/TCP, a non-first fragment, a port out of scope.
    Other,
    /// Passed: malformed or truncated headers.
    Malformed,
    /// Passed: TCP to a filtered port, payload not a request line.
    NotRequest,
    /// Passed: a request no rule matched.
    Request,
    /// Passed by an allow rule.
    Allow,
    /// Passed and counted by a monitor rule.
    Monitor,
    /// Dropped by a drop rule.
    Drop,
}

impl Verdict {
    /// The verdict of a `VERDICT_*` code.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            VERDICT_OTHER => Self::Other,
            VERDICT_MALFORMED => Self::Malformed,
            VERDICT_NOT_REQUEST => Self::NotRequest,
            VERDICT_REQUEST => Self::Request,
            VERDICT_ALLOW => Self::Allow,
            VERDICT_MONITOR => Self::Monitor,
            VERDICT_DROP => Self::Drop,
            _ => return None,
        })
    }

    /// Whether the frame is dropped.
    pub fn is_drop(self) -> bool {
        self == Self::Drop
    }

    fn of_action(action: u32) -> Self {
        match action {
            ACTION_ALLOW => Self::Allow,
            ACTION_MONITOR => Self::Monitor,
            _ => Self::Drop,
        }
    }
}

/// A verdict and the id of the rule that decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Classification {
    /// What happens to the frame.
    pub verdict: Verdict,
    /// The matched rule's id, if a rule decided.
    pub rule: Option<u32>,
}

impl Classification {
    fn pass(verdict: Verdict) -> Self {
        Self {
            verdict,
            rule: None,
        }
    }
}

impl From<Verdict> for Classification {
    fn from(verdict: Verdict) -> Self {
        Self::pass(verdict)
    }
}

/// Classifies one Ethernet frame (no FCS) under `policy`.
pub fn classify(policy: &Policy, frame: &[u8]) -> Classification {
    match transport(frame) {
        Ok((tcp, ip_payload)) => segment(policy, tcp, ip_payload),
        Err(verdict) => verdict.into(),
    }
}

/// Walks link and network headers to the TCP segment: the IP payload starting at the TCP
/// header (cut at the IP packet's own length, so Ethernet padding is not payload).
fn transport(frame: &[u8]) -> Result<(TcpHeaderSlice<'_>, &[u8]), Verdict> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Verdict::Malformed)?;
    let mut ether_type = eth.ether_type();
    let mut rest = &frame[eth.slice().len()..];
    let mut tags = 0;
    while matches!(
        ether_type,
        EtherType::VLAN_TAGGED_FRAME | EtherType::PROVIDER_BRIDGING
    ) {
        if tags == MAX_VLAN_TAGS {
            return Err(Verdict::Other);
        }
        let vlan = SingleVlanHeaderSlice::from_slice(rest).map_err(|_| Verdict::Malformed)?;
        ether_type = vlan.ether_type();
        rest = &rest[vlan.slice().len()..];
        tags += 1;
    }
    let ip_payload = match ether_type {
        EtherType::IPV4 => ipv4_payload(rest)?,
        EtherType::IPV6 => ipv6_payload(rest)?,
        _ => return Err(Verdict::Other),
    };
    let tcp = TcpHeaderSlice::from_slice(ip_payload).map_err(|_| Verdict::Malformed)?;
    Ok((tcp, ip_payload))
}

fn ipv4_payload(packet: &[u8]) -> Result<&[u8], Verdict> {
    let ip = Ipv4HeaderSlice::from_slice(packet).map_err(|_| Verdict::Malformed)?;
    let header_len = ip.slice().len();
    let total = usize::from(ip.total_len());
    if total < header_len || total > packet.len() {
        return Err(Verdict::Malformed);
    }
    if ip.fragments_offset().value() != 0 || ip.protocol() != IpNumber::TCP {
        return Err(Verdict::Other);
    }
    Ok(&packet[header_len..total])
}

fn ipv6_payload(packet: &[u8]) -> Result<&[u8], Verdict> {
    let ip = Ipv6HeaderSlice::from_slice(packet).map_err(|_| Verdict::Malformed)?;
    let end = ip.slice().len() + usize::from(ip.payload_length());
    let mut rest = packet
        .get(ip.slice().len()..end)
        .ok_or(Verdict::Malformed)?;
    let mut next = ip.next_header();
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let len = match next {
            IpNumber::IPV6_HEADER_HOP_BY_HOP
            | IpNumber::IPV6_ROUTE_HEADER
            | IpNumber::IPV6_DESTINATION_OPTIONS => {
                let ext =
                    Ipv6RawExtHeaderSlice::from_slice(rest).map_err(|_| Verdict::Malformed)?;
                next = ext.next_header();
                ext.slice().len()
            }
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                let frag =
                    Ipv6FragmentHeaderSlice::from_slice(rest).map_err(|_| Verdict::Malformed)?;
                // Not `fragment_offset()`: etherparse 0.19 reads the low five bits of the second
                // byte (the reserved bits and the M flag) where the offset's low bits are.
                let field = frag.slice();
                if u16::from_be_bytes([field[2], field[3]]) >> 3 != 0 {
                    return Err(Verdict::Other);
                }
                next = frag.next_header();
                frag.slice().len()
            }
            _ => break,
        };
        rest = &rest[len..];
    }
    match next {
        IpNumber::TCP => Ok(rest),
        // More extension headers than are skipped.
        IpNumber::IPV6_HEADER_HOP_BY_HOP
        | IpNumber::IPV6_ROUTE_HEADER
        | IpNumber::IPV6_DESTINATION_OPTIONS
        | IpNumber::IPV6_FRAGMENTATION_HEADER => Err(Verdict::Malformed),
        _ => Err(Verdict::Other),
    }
}

/// Applies the policy to a TCP segment (`ip_payload` starts at its header).
fn segment(policy: &Policy, tcp: TcpHeaderSlice<'_>, ip_payload: &[u8]) -> Classification {
    let port = tcp.destination_port();
    let Some(port_policy) = policy.ports().get(&port) else {
        return Verdict::Other.into();
    };
    let payload = &ip_payload[tcp.slice().len()..];
    let Some((method, target)) = request_line(payload) else {
        return Verdict::NotRequest.into();
    };
    if port_policy.allowed_methods & method == 0 {
        return Classification {
            verdict: Verdict::of_action(port_policy.method_action),
            rule: Some(port_policy.method_rule),
        };
    }
    let longest = policy
        .paths()
        .iter()
        .filter(|((p, prefix), _)| *p == port && target.starts_with(prefix))
        .max_by_key(|((_, prefix), _)| prefix.len());
    match longest {
        Some((_, rule)) => Classification {
            verdict: Verdict::of_action(rule.action),
            rule: Some(rule.rule),
        },
        None => Verdict::Request.into(),
    }
}

/// The method bit and the target bytes the policy sees (at most `PATH_MAX`), if `payload`
/// starts with a request line as `ebpf_common::http_filter` defines it.
pub fn request_line(payload: &[u8]) -> Option<(u32, &[u8])> {
    let method_len = payload.iter().position(|b| !b.is_ascii_uppercase())?;
    if method_len == 0 || method_len > METHOD_MAX || payload[method_len] != b' ' {
        return None;
    }
    let method = &payload[..method_len];
    let after = &payload[method_len + 1..];
    let target_len = after
        .iter()
        .position(|b| !(0x21..=0x7e).contains(b))
        .unwrap_or(after.len());
    if target_len > PATH_MAX {
        // Long targets are requests whatever follows; the policy sees the first PATH_MAX bytes.
    } else if target_len == 0 || !after[target_len..].starts_with(HTTP_VERSION_PREFIX) {
        return None;
    }
    let bit = METHODS
        .iter()
        .find(|(name, _)| name.as_bytes() == method)
        .map_or(METHOD_OTHER, |(_, bit)| *bit);
    Some((bit, &after[..target_len.min(PATH_MAX)]))
}

#[cfg(test)]
mod tests {
    use ebpf_common::http_filter::{METHOD_GET, METHOD_OPTIONS};

    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line(b"GET /a HTTP/1.1\r\n"),
            Some((METHOD_GET, &b"/a"[..]))
        );
        assert_eq!(
            request_line(b"OPTIONS * HTTP/1.0\r\n"),
            Some((METHOD_OPTIONS, &b"*"[..]))
        );
        assert_eq!(
            request_line(b"BREW /pot HTTP/1.1"),
            Some((METHOD_OTHER, &b"/pot"[..]))
        );
        for not in [
            &b""[..],
            b"GET",
            b"GET ",
            b"GET  /a HTTP/1.1",
            b"get /a HTTP/1.1",
            b"GET /a HTTP/2.0",
            b"GET /a HTTP/1",
            b"GET /a\r\n",
            b"GETTINGXX /a HTTP/1.1",
            b" GET /a HTTP/1.1",
        ] {
            assert_eq!(request_line(not), None, "{}", String::from_utf8_lossy(not));
        }
        let long = [b"GET /".as_slice(), &[b'x'; PATH_MAX]].concat();
        assert_eq!(request_line(&long).map(|(_, t)| t.len()), Some(PATH_MAX));
        let exact = [b"GET /".as_slice(), &[b'x'; PATH_MAX - 1]].concat();
        assert_eq!(
            request_line(&exact),
            None,
            "a full-length target still needs the version"
        );
        let eight = b"PROPFIND /x HTTP/1.1";
        assert_eq!(request_line(eight).map(|(m, _)| m), Some(METHOD_OTHER));
    }
}
