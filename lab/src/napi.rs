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
                let napis =
                    accel::netdev::napis(index).map_err(|e| format!("netdev NAPI_GET: {e}"))?;
                Ok(napis.iter().filter_map(|n| n.thread).collect())
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
