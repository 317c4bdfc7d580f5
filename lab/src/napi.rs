//! Threaded NAPI on one interface of a network namespace: the interface's receive processing
//! moved out of softirq into kernel threads, pinned to a chosen CPU, so that its CPU time is
//! attributable (it is the threads' run time) and runs where the measurement wants it.
//!
//! A veth receives through NAPI only when an XDP program is attached or GRO is on, and hands
//! a packet to its peer's NAPI only when the sending end has no TSO (or for UDP sockets with
//! UDP GRO forwarding on the peer); otherwise the peer's receive work runs in the sender's
//! softirq, on the sender's CPU. [`NapiThreads::start`] therefore turns GRO on and TSO off,
//! writes `threaded` (sysfs: no netlink sets it on every kernel that has it), finds the
//! threads with the `netdev` generic netlink family (`NAPI_GET`, which reports each NAPI's
//! thread id) and pins them. Dropping it undoes exactly what it changed.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::Pid;
use rustix::thread::{CpuSet, sched_setaffinity};

use crate::rps::with_sysfs;

/// Threaded NAPI switched on for one interface; dropping it restores the interface.
#[derive(Debug)]
pub struct NapiThreads {
    netns: Option<PathBuf>,
    iface: String,
    /// Ids of the interface's NAPI threads.
    threads: Vec<u32>,
    /// What [`NapiThreads::start`] changed, to undo.
    changed: Changed,
}

/// Settings that were changed.
#[derive(Clone, Copy, Debug, Default)]
struct Changed {
    gro_on: bool,
    tso_off: bool,
    threaded_on: bool,
}

impl NapiThreads {
    /// Switches `iface` of `netns` (a path like `/run/netns/NAME`; `None`: the caller's) to
    /// threaded NAPI with GRO on and TSO off, and pins its NAPI threads to `cpu` if given.
    pub fn start(netns: Option<&Path>, iface: &str, cpu: Option<usize>) -> Result<Self, String> {
        let mut this = Self {
            netns: netns.map(Path::to_owned),
            iface: iface.to_owned(),
            threads: Vec::new(),
            changed: Changed::default(),
        };
        let what = |e: String| format!("threaded NAPI on {iface}: {e}");
        let (changed, threads) = with_sysfs(netns, |sys| {
            let mut changed = Changed::default();
            let socket = ethtool::socket().map_err(|e| format!("ethtool socket: {e}"))?;
            if !ethtool::get(&socket, iface, ethtool::GGRO)? {
                ethtool::set(&socket, iface, ethtool::SGRO, true)?;
                changed.gro_on = true;
            }
            if ethtool::get(&socket, iface, ethtool::GTSO)? {
                ethtool::set(&socket, iface, ethtool::STSO, false)?;
                changed.tso_off = true;
            }
            let knob = sys.join("class/net").join(iface).join("threaded");
            let now =
                fs::read_to_string(&knob).map_err(|e| format!("read {}: {e}", knob.display()))?;
            if now.trim() == "0" {
                fs::write(&knob, "1").map_err(|e| format!("write 1 to {}: {e}", knob.display()))?;
                changed.threaded_on = true;
            }
            // The changes stand even if finding the threads fails: return them to be undone.
            let threads = ifindex(iface).and_then(|index| {
                genl::napi_threads(index).map_err(|e| format!("netdev NAPI_GET: {e}"))
            });
            Ok((changed, threads))
        })
        .map_err(what)?;
        this.changed = changed;
        this.threads = threads.map_err(what)?;
        if this.threads.is_empty() {
            return Err(what("the kernel reports no NAPI thread for it".to_owned()));
        }
        if let Some(cpu) = cpu {
            for &tid in &this.threads {
                pin(tid, cpu).map_err(what)?;
            }
        }
        Ok(this)
    }

    /// The ids of the interface's NAPI threads.
    pub fn threads(&self) -> &[u32] {
        &self.threads
    }

    /// CPU time the NAPI threads have used since they were made.
    pub fn cpu_time(&self) -> Result<Duration, String> {
        self.threads.iter().try_fold(Duration::ZERO, |sum, &tid| {
            thread_cpu_time(tid).map(|t| sum + t)
        })
    }
}

impl Drop for NapiThreads {
    fn drop(&mut self) {
        let changed = self.changed;
        let iface = self.iface.clone();
        let undone = with_sysfs(self.netns.as_deref(), |sys| {
            if changed.threaded_on {
                let knob = sys.join("class/net").join(&iface).join("threaded");
                fs::write(&knob, "0").map_err(|e| format!("write 0 to {}: {e}", knob.display()))?;
            }
            let socket = ethtool::socket().map_err(|e| format!("ethtool socket: {e}"))?;
            if changed.tso_off {
                ethtool::set(&socket, &iface, ethtool::STSO, true)?;
            }
            if changed.gro_on {
                ethtool::set(&socket, &iface, ethtool::SGRO, false)?;
            }
            Ok(())
        });
        if let Err(e) = undone {
            tracing::warn!("restoring {} after threaded NAPI: {e}", self.iface);
        }
    }
}

/// Run time of thread `tid` (`/proc/TID/schedstat`: its first field, in ns).
pub fn thread_cpu_time(tid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{tid}/schedstat");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .map(Duration::from_nanos)
        .ok_or_else(|| format!("{path}: unexpected contents {text:?}"))
}

fn pin(tid: u32, cpu: usize) -> Result<(), String> {
    if cpu >= CpuSet::MAX_CPU {
        return Err(format!("CPU {cpu} does not exist"));
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    let pid = i32::try_from(tid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| format!("thread id {tid} is invalid"))?;
    sched_setaffinity(Some(pid), &set).map_err(|e| format!("pin thread {tid} to CPU {cpu}: {e}"))
}

fn ifindex(iface: &str) -> Result<u32, String> {
    let name =
        std::ffi::CString::new(iface).map_err(|_| format!("bad interface name {iface:?}"))?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(format!("no interface {iface}")),
        index => Ok(index),
    }
}

/// The legacy ethtool ioctls for one offload flag (`struct ethtool_value`).
mod ethtool {
    use super::*;

    pub const GTSO: u32 = 0x1e;
    pub const STSO: u32 = 0x1f;
    pub const GGRO: u32 = 0x2b;
    pub const SGRO: u32 = 0x2c;

    #[repr(C)]
    struct Value {
        cmd: u32,
        data: u32,
    }

    pub fn socket() -> io::Result<OwnedFd> {
        // SAFETY: plain socket(2); the result is checked and owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn call(socket: &OwnedFd, iface: &str, cmd: u32, data: u32) -> Result<u32, String> {
        let mut value = Value { cmd, data };
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
        // SAFETY: `ifr` names the interface and points at `value`, both alive during the
        // call; the kernel reads and writes only the ethtool_value.
        let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut ifr) };
        if ret < 0 {
            return Err(format!(
                "ethtool command {cmd:#x} on {iface}: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(value.data)
    }

    pub fn get(socket: &OwnedFd, iface: &str, cmd: u32) -> Result<bool, String> {
        call(socket, iface, cmd, 0).map(|v| v != 0)
    }

    pub fn set(socket: &OwnedFd, iface: &str, cmd: u32, on: bool) -> Result<(), String> {
        call(socket, iface, cmd, u32::from(on)).map(drop)
    }
}

/// Just enough generic netlink for the `netdev` family's `NAPI_GET` dump.
mod genl {
    use super::*;

    const NETLINK_GENERIC: i32 = 16;
    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    const NETDEV_CMD_NAPI_GET: u8 = 11;
    const NETDEV_A_NAPI_IFINDEX: u16 = 1;
    const NETDEV_A_NAPI_PID: u16 = 4;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const HEADER: usize = 16;
    const GENL_HEADER: usize = 4;

    /// The NAPI thread ids of interface `ifindex` in the calling thread's namespace.
    pub fn napi_threads(ifindex: u32) -> io::Result<Vec<u32>> {
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
        let mut threads = Vec::new();
        loop {
            let reply = receive(&socket)?;
            for (kind, body) in messages(&reply)? {
                match kind {
                    NLMSG_DONE => return Ok(threads),
                    NLMSG_ERROR => error(body)?,
                    _ => {
                        if let Some(pid) = attribute(body, NETDEV_A_NAPI_PID) {
                            threads.push(u32_of(pid)?);
                        }
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
                        format!(
                            "generic netlink family {name:?} (Linux 6.9+ reports NAPI threads): {e}"
                        ),
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
        // SAFETY: plain socket(2); the result is checked and owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: a valid timeval for SO_RCVTIMEO, alive during the call.
        let ret = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    /// A request: netlink header, generic netlink header, attributes.
    pub(super) fn message(
        kind: u16,
        flags: u16,
        seq: u32,
        cmd: u8,
        attrs: &[(u16, &[u8])],
    ) -> Vec<u8> {
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
        // SAFETY: sends the bytes of `request`, alive during the call.
        let sent = unsafe {
            libc::send(
                socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn receive(socket: &OwnedFd) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 32 * 1024];
        // SAFETY: receives into `buf`, alive and as long as given during the call.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    fn short() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message")
    }

    /// The messages of one datagram: (type, payload after the netlink header).
    pub(super) fn messages(mut buf: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
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
    pub(super) fn attribute(body: &[u8], wanted: u16) -> Option<&[u8]> {
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
    pub(super) fn error(body: &[u8]) -> io::Result<()> {
        let bytes: [u8; 4] = body
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(short)?;
        match i32::from_ne_bytes(bytes) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(-errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::genl::*;

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
        let mut error = message(2, 0, 1, 0, &[]);
        error[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        datagram.extend_from_slice(&error);
        let parsed = messages(&datagram).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(attribute(parsed[0].1, 4), Some(&42u32.to_ne_bytes()[..]));
        let e = super::genl::error(parsed[1].1).unwrap_err();
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
