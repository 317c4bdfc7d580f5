//! Tap devices for VM nodes: made with the `TUNSETIFF` ioctl (rtnetlink cannot create them)
//! and marked persistent, so QEMU can open them by name later. A tap lives in the namespace of
//! the thread that made it and goes away with that namespace.

use std::{fs::OpenOptions, io, os::fd::AsRawFd as _};

use crate::{
    Error, Netns, Result,
    error::{IFNAME_MAX, check_name},
};

/// The `struct ifreq` prefix `TUNSETIFF` reads: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Netns {
    /// Creates the persistent tap device `name` (no packet information header) in this
    /// namespace, down.
    pub fn create_tap(&self, name: &str) -> Result<()> {
        check_name("tap name", name, IFNAME_MAX)?;
        let netns = self.name().to_owned();
        let name = name.to_owned();
        self.run(move || {
            make_tap(&name).map_err(|e| Error::os(format!("create tap {name} in netns {netns}"), e))
        })?
    }
}

fn make_tap(name: &str) -> io::Result<()> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes, name then flags), which `IfReq` lays
    // out; the descriptor is open for the duration of the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
