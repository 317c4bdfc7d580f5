//! The kernel's Receive Packet Steering (RPS) on an interface of a network namespace: the
//! `rps_cpus` mask of each of its receive queues, set and restored.
//!
//! No netlink or ioctl sets RPS: only sysfs, `/sys/class/net/IFACE/queues/rx-N/rps_cpus`. A
//! sysfs mount shows the devices of the network namespace of whoever mounted it, so the files
//! are written from a short-lived thread that enters the namespace, unshares its mount
//! namespace (with propagation turned off, so nothing reaches the host's mounts) and mounts a
//! sysfs of its own over `/sys`; the mount goes away with the thread.

use std::fs;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, mount, mount_change};
use rustix::thread::{LinkNameSpaceType, UnshareFlags, move_into_link_name_space, unshare_unsafe};

/// The `rps_cpus` text for `cpus`: comma-separated 32-bit hex words, most significant first.
pub fn mask(cpus: &[usize]) -> String {
    let words = cpus.iter().max().map_or(1, |max| max / 32 + 1);
    let mut bits = vec![0u32; words];
    for cpu in cpus {
        bits[cpu / 32] |= 1 << (cpu % 32);
    }
    bits.iter()
        .rev()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                format!("{w:x}")
            } else {
                format!("{w:08x}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The CPUs of an `rps_cpus` mask as the kernel prints it (`00000003`, `ff,00000001`).
pub fn parse_mask(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for (i, word) in text.trim().rsplit(',').enumerate() {
        let bits = u32::from_str_radix(word, 16)
            .map_err(|e| format!("`{}` is not a CPU mask: {e}", text.trim()))?;
        cpus.extend((0..32).filter(|b| bits & (1 << b) != 0).map(|b| i * 32 + b));
    }
    cpus.sort_unstable();
    Ok(cpus)
}

/// Runs `f` with the sysfs of network namespace `netns` (a path like `/run/netns/NAME`, or
/// `None` for the caller's) mounted at `/sys`, on a thread of its own.
pub fn with_sysfs<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce(&Path) -> Result<T, String> + Send,
) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(path) = netns {
                    let ns = fs::File::open(path)
                        .map_err(|e| format!("open netns {}: {e}", path.display()))?;
                    move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&ns),
                        Some(LinkNameSpaceType::Network),
                    )
                    .map_err(|e| format!("enter netns {}: {e}", path.display()))?;
                }
                // SAFETY: unsharing the mount namespace (and with it the fs attributes) affects
                // only this thread, which touches no path another thread relies on and ends
                // when `f` returns.
                unsafe { unshare_unsafe(UnshareFlags::NEWNS) }
                    .map_err(|e| format!("unshare the mount namespace: {e}"))?;
                mount_change(
                    "/",
                    MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
                )
                .map_err(|e| format!("make the thread's mounts private: {e}"))?;
                mount("sysfs", "/sys", "sysfs", MountFlags::empty(), None)
                    .map_err(|e| format!("mount a sysfs for the namespace: {e}"))?;
                f(Path::new("/sys"))
            })
            .join()
            .unwrap_or_else(|_| Err("the sysfs thread panicked".to_owned()))
    })
}

/// The `rps_cpus` files of `iface`'s receive queues under the sysfs at `sys`.
fn queue_files(sys: &Path, iface: &str) -> Result<Vec<PathBuf>, String> {
    let dir = sys.join("class/net").join(iface).join("queues");
    let entries =
        fs::read_dir(&dir).map_err(|e| format!("interface {iface}: {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with("rx-") {
            files.push(entry.path().join("rps_cpus"));
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("interface {iface} has no receive queues in sysfs"));
    }
    if !files[0].exists() {
        return Err(format!(
            "{} is missing: this kernel is built without RPS (CONFIG_RPS)",
            files[0].display()
        ));
    }
    Ok(files)
}

/// The `rps_cpus` mask of each receive queue of `iface` in `netns`, in queue order.
pub fn read(netns: Option<&Path>, iface: &str) -> Result<Vec<String>, String> {
    with_sysfs(netns, |sys| {
        queue_files(sys, iface)?
            .iter()
            .map(|f| {
                fs::read_to_string(f)
                    .map(|s| s.trim().to_owned())
                    .map_err(|e| format!("read {}: {e}", f.display()))
            })
            .collect()
    })
}

/// Writes `masks[i]` to queue `i` (the last mask to any further queues).
fn write(netns: Option<&Path>, iface: &str, masks: &[String]) -> Result<(), String> {
    with_sysfs(netns, |sys| {
        for (i, file) in queue_files(sys, iface)?.iter().enumerate() {
            let mask = masks.get(i).or(masks.last()).map_or("0", String::as_str);
            fs::write(file, mask)
                .map_err(|e| format!("write {mask} to {}: {e}", file.display()))?;
        }
        Ok(())
    })
}

/// RPS set on an interface; dropping it puts the previous masks back.
#[derive(Debug)]
pub struct Rps {
    netns: Option<PathBuf>,
    iface: String,
    previous: Vec<String>,
}

impl Rps {
    /// Steers the packets every receive queue of `iface` in `netns` (`None`: the caller's
    /// namespace) receives to `cpus`.
    pub fn set(netns: Option<&Path>, iface: &str, cpus: &[usize]) -> Result<Self, String> {
        let online = std::thread::available_parallelism().map_or(1, usize::from);
        if let Some(cpu) = cpus.iter().find(|c| **c >= online) {
            return Err(format!(
                "RPS on {iface}: CPU {cpu} is not available (this machine has {online} CPUs)"
            ));
        }
        if cpus.is_empty() {
            return Err(format!("RPS on {iface}: no CPUs given"));
        }
        let previous = read(netns, iface)?;
        let rps = Self {
            netns: netns.map(Path::to_owned),
            iface: iface.to_owned(),
            previous,
        };
        write(netns, iface, &[mask(cpus)])?;
        Ok(rps)
    }

    /// Restores the previous masks now, reporting a failure.
    pub fn restore(mut self) -> Result<(), String> {
        let previous = std::mem::take(&mut self.previous);
        write(self.netns.as_deref(), &self.iface, &previous)
    }
}

impl Drop for Rps {
    fn drop(&mut self) {
        if self.previous.is_empty() {
            return;
        }
        if let Err(e) = write(self.netns.as_deref(), &self.iface, &self.previous) {
            tracing::warn!("restoring RPS on {}: {e}", self.iface);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip() {
        assert_eq!(mask(&[0, 1]), "3");
        assert_eq!(mask(&[1]), "2");
        assert_eq!(mask(&[0, 33]), "2,00000001");
        assert_eq!(parse_mask("00000003").unwrap(), [0, 1]);
        assert_eq!(parse_mask("2,00000001\n").unwrap(), [0, 33]);
        assert_eq!(parse_mask(&mask(&[5, 64, 100])).unwrap(), [5, 64, 100]);
        assert!(parse_mask("zz").is_err());
    }
}
