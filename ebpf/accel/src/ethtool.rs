//! Interface offloads through the `SIOCETHTOOL` ioctl (like `ethtool -K IFACE FEATURE on|off`),
//! for what the accelerators and their benchmarks need set on a veth: transmit checksum
//! offload (cpumap redirection), segmentation offloads (wire-sized frames) and GRO (NAPI on a
//! veth without XDP).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use crate::{Error, Result};

/// An offload `ethtool -K` can switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// Transmit checksum offload (`tx`).
    TxChecksum,
    /// TCP segmentation offload (`tso`): the kernel's legacy switch, TCP over IPv4 and IPv6
    /// (Linux 6.18 also lists an AccECN segmentation it leaves alone).
    Tso,
    /// Generic segmentation offload (`gso`).
    Gso,
    /// Generic receive offload (`gro`); on a veth it also switches NAPI on.
    Gro,
}

impl Offload {
    /// The `ETHTOOL_G*` and `ETHTOOL_S*` commands of `<linux/ethtool.h>`.
    fn commands(self) -> (u32, u32) {
        match self {
            Self::TxChecksum => (0x16, 0x17),
            Self::Tso => (0x1e, 0x1f),
            Self::Gso => (0x23, 0x24),
            Self::Gro => (0x2b, 0x2c),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::TxChecksum => "transmit checksum offload",
            Self::Tso => "TCP segmentation offload",
            Self::Gso => "generic segmentation offload",
            Self::Gro => "generic receive offload",
        }
    }
}

/// `struct ethtool_value` of `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns `offload` of `iface` (in the calling thread's network namespace) on or off; returns
/// the previous setting. Fails when the driver keeps it otherwise.
pub fn set_offload(iface: &str, offload: Offload, enabled: bool) -> Result<bool> {
    let (get, set) = offload.commands();
    let socket = Socket::open(iface, offload)?;
    let before = socket.ethtool(get, 0, "read")? != 0;
    if before != enabled {
        socket.ethtool(set, u32::from(enabled), "set")?;
        let now = socket.ethtool(get, 0, "read back")? != 0;
        if now != enabled {
            return Err(socket.error(
                "set",
                io::Error::other(format!(
                    "the driver kept it {}",
                    if now { "on" } else { "off" }
                )),
            ));
        }
    }
    Ok(before)
}

/// Whether `offload` of `iface` is on.
pub fn offload(iface: &str, offload: Offload) -> Result<bool> {
    let socket = Socket::open(iface, offload)?;
    Ok(socket.ethtool(offload.commands().0, 0, "read")? != 0)
}

/// A datagram socket to send the ioctl through, and what it is about.
struct Socket<'a> {
    fd: OwnedFd,
    iface: &'a str,
    offload: Offload,
}

impl<'a> Socket<'a> {
    fn open(iface: &'a str, offload: Offload) -> Result<Self> {
        if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('\0') {
            return Err(Error::NoInterface(iface.to_owned()));
        }
        // SAFETY: plain socket(2); the result is checked and owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(error(iface, offload, "open a socket to set", e));
        }
        Ok(Self {
            // SAFETY: a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            iface,
            offload,
        })
    }

    fn ethtool(&self, cmd: u32, data: u32, action: &str) -> Result<u32> {
        let mut value = EthtoolValue { cmd, data };
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(self.iface.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
        // SAFETY: `ifr` names the interface and points at `value`, both alive during the call;
        // the kernel reads and writes only the ethtool_value.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCETHTOOL, &raw mut ifr) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENODEV) {
                return Err(Error::NoInterface(self.iface.to_owned()));
            }
            return Err(self.error(action, e));
        }
        Ok(value.data)
    }

    fn error(&self, action: &str, source: io::Error) -> Error {
        error(self.iface, self.offload, action, source)
    }
}

fn error(iface: &str, offload: Offload, action: &str, source: io::Error) -> Error {
    Error::Io {
        path: PathBuf::from(format!(
            "{action} {} of {iface} (SIOCETHTOOL)",
            offload.name()
        )),
        source,
    }
}
