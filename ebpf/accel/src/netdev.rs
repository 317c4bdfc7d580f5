//! The kernel's `netdev` generic netlink family, as much as the lab needs: each NAPI instance
//! of an interface with its thread when it runs threaded (`NAPI_GET`, Linux 6.9). Runs in the
//! calling thread's network namespace.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::{self, sockopt::Timeout};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_NAPI_GET: u8 = 11;
const NETDEV_A_NAPI_IFINDEX: u16 = 1;
const NETDEV_A_NAPI_ID: u16 = 2;
const NETDEV_A_NAPI_PID: u16 = 4;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const HEADER: usize = 16;
const GENL_HEADER: usize = 4;

/// One NAPI instance of an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Napi {
    /// Its id.
    pub id: u32,
    /// The id of its kernel thread, when it runs threaded.
    pub thread: Option<u32>,
}

/// The NAPI instances of interface `ifindex`.
pub fn napis(ifindex: u32) -> io::Result<Vec<Napi>> {
    let socket = open()?;
    let family = family_id(&socket, "netdev")?;
    let request = message(
        family,
        NLM_F_REQUEST | NLM_F_DUMP,
        2,
        NETDEV_CMD_NAPI_GET,
        &[(NETDEV_A_NAPI_IFINDEX, &ifindex.to_ne_bytes())],
    );
    send(&socket, &request)?;
    let mut napis = Vec::new();
    loop {
        let reply = receive(&socket)?;
        for (kind, body) in messages(&reply)? {
            match kind {
                NLMSG_DONE => return Ok(napis),
                NLMSG_ERROR => error(body)?,
                _ => {
                    let Some(id) = attribute(body, NETDEV_A_NAPI_ID) else {
                        continue;
                    };
                    napis.push(Napi {
                        id: u32_of(id)?,
                        thread: attribute(body, NETDEV_A_NAPI_PID).map(u32_of).transpose()?,
                    });
                }
            }
        }
    }
}

fn family_id(socket: &OwnedFd, name: &str) -> io::Result<u16> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    let request = message(
        GENL_ID_CTRL,
        NLM_F_REQUEST,
        1,
        CTRL_CMD_GETFAMILY,
        &[(CTRL_ATTR_FAMILY_NAME, &bytes)],
    );
    send(socket, &request)?;
    let reply = receive(socket)?;
    for (kind, body) in messages(&reply)? {
        if kind == NLMSG_ERROR {
            error(body).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("generic netlink family {name:?} (Linux 6.9+): {e}"),
                )
            })?;
        } else if let Some(id) = attribute(body, CTRL_ATTR_FAMILY_ID) {
            let id: [u8; 2] = id
                .get(..2)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(short)?;
            return Ok(u16::from_ne_bytes(id));
        }
    }
    Err(io::Error::other(format!(
        "no id for generic netlink family {name:?}"
    )))
}

fn open() -> io::Result<OwnedFd> {
    let socket = net::socket_with(
        net::AddressFamily::NETLINK,
        net::SocketType::RAW,
        net::SocketFlags::CLOEXEC,
        Some(net::netlink::GENERIC),
    )?;
    net::sockopt::set_socket_timeout(&socket, Timeout::Recv, Some(Duration::from_secs(5)))?;
    Ok(socket)
}

/// A request: netlink header, generic netlink header, attributes.
fn message(kind: u16, flags: u16, seq: u32, cmd: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER];
    buf.extend_from_slice(&[cmd, 1, 0, 0]);
    for (kind, value) in attrs {
        let len = 4 + value.len();
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(value);
        buf.resize(buf.len().next_multiple_of(4), 0);
    }
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&kind.to_ne_bytes());
    buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    buf
}

fn send(socket: &OwnedFd, request: &[u8]) -> io::Result<()> {
    net::send(socket, request, net::SendFlags::empty())?;
    Ok(())
}

fn receive(socket: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 32 * 1024];
    let (n, _) = net::recv(socket, &mut buf[..], net::RecvFlags::empty())?;
    buf.truncate(n);
    Ok(buf)
}

fn short() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message")
}

/// The messages of one datagram: (type, payload after the netlink header).
fn messages(mut buf: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while buf.len() >= HEADER {
        let len = u32::from_ne_bytes(buf[0..4].try_into().map_err(|_| short())?) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < HEADER || len > buf.len() {
            return Err(short());
        }
        out.push((kind, &buf[HEADER..len]));
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(out)
}

/// The value of attribute `wanted` of a generic netlink message body.
fn attribute(body: &[u8], wanted: u16) -> Option<&[u8]> {
    let mut attrs = body.get(GENL_HEADER..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == wanted {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

fn u32_of(value: &[u8]) -> io::Result<u32> {
    let bytes: [u8; 4] = value
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(short)?;
    Ok(u32::from_ne_bytes(bytes))
}

/// An `NLMSG_ERROR` body: its errno, or nothing for an acknowledgement.
fn error(body: &[u8]) -> io::Result<()> {
    let bytes: [u8; 4] = body
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(short)?;
    match i32::from_ne_bytes(bytes) {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(-errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_padded_netlink_messages() {
        let m = message(0x20, 0x301, 7, 11, &[(1, &5u32.to_ne_bytes()), (2, b"abc")]);
        assert_eq!(m.len(), 16 + 4 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x20);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 0x301);
        assert_eq!(m[16], 11);
        let parsed = messages(&m).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(attribute(parsed[0].1, 1), Some(&5u32.to_ne_bytes()[..]));
        assert_eq!(attribute(parsed[0].1, 2), Some(&b"abc"[..]));
        assert_eq!(attribute(parsed[0].1, 3), None);
    }

    #[test]
    fn several_messages_in_one_datagram_are_split_and_errors_read() {
        let mut datagram = message(0x20, 0, 1, 11, &[(4, &42u32.to_ne_bytes())]);
        let mut failure = message(2, 0, 1, 0, &[]);
        failure[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        datagram.extend_from_slice(&failure);
        let parsed = messages(&datagram).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(attribute(parsed[0].1, 4), Some(&42u32.to_ne_bytes()[..]));
        let e = error(parsed[1].1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let m = message(0x20, 0, 1, 11, &[(4, &42u32.to_ne_bytes())]);
        for cut in 0..m.len() {
            let mut broken = m[..cut].to_vec();
            if cut >= 4 {
                broken[0..4].copy_from_slice(&(m.len() as u32).to_ne_bytes());
            }
            assert!(
                messages(&broken).map_or(true, |p| p.is_empty()),
                "cut at {cut}"
            );
        }
        assert_eq!(attribute(&[0, 0, 0, 0, 9, 0], 1), None);
    }
}
