//! The socket redirect in a run.
//!
//! Its sock_ops program sees the sockets of one cgroup v2 directory, and a socket belongs to
//! the cgroup of the process that creates it (an accepted socket to its listener's). The
//! workloads run as threads of the runner, each entering a node's network namespace with
//! `setns`: network namespaces do not change cgroups, so one cgroup holds them all. For each
//! window with the redirect, the runner makes `<its own cgroup>/<prefix><lab>-sr`, moves its
//! whole process there, and attaches the redirect to it; the workloads' sockets are made
//! after that. When the window ends, the redirect is detached, the process moves back to the
//! cgroup it came from and the directory is removed (also when the window failed). A
//! directory left by a killed runner is empty and carries the lab's prefix.

use std::fs;
use std::path::{Path, PathBuf};

use accel::sock_redirect::{Config, SockRedirect, Stats};

/// The redirect attached for one window, with the cgroup the runner's process is in
/// meanwhile; dropping it detaches, moves the process back and removes the cgroup.
pub(super) struct Redirect {
    // Dropped first: detached before the cgroup goes.
    redirect: SockRedirect,
    cgroup: RunCgroup,
}

impl Redirect {
    /// Makes the run's cgroup `name` under this process's own, moves the process into it and
    /// attaches the redirect of `ports` with gate bound `min_size` (0: no gate).
    pub(super) fn attach(name: &str, ports: &[u16], min_size: u32) -> Result<Self, String> {
        let config = Config::new(ports, min_size).map_err(|e| e.to_string())?;
        let cgroup = RunCgroup::enter(name)?;
        let redirect = SockRedirect::attach(&cgroup.path, &config).map_err(|e| {
            format!(
                "attach the socket redirect to {}: {e}",
                cgroup.path.display()
            )
        })?;
        Ok(Self { redirect, cgroup })
    }

    /// The redirect's counters now.
    pub(super) fn stats(&self) -> Result<Stats, String> {
        self.redirect.stats().map_err(|e| {
            format!(
                "socket redirect on {}: read its counters: {e}",
                self.cgroup.path.display()
            )
        })
    }
}

/// Adds what the redirect counted over the window, named `LABEL.name`: messages and bytes
/// redirected and passed to TCP, sockets recorded, sockets the gate or a missing peer sent
/// back to TCP, switched sockets that left the sockhash or stayed, and the share of bytes
/// redirected (of those redirected, passed, and sent by sockets that left and closed).
pub(super) fn metrics(
    label: &str,
    before: &Stats,
    after: &Stats,
    metrics: &mut std::collections::BTreeMap<String, f64>,
) {
    let (was, now) = (before.total(), after.total());
    let mut put = |name: &str, a: u64, b: u64| {
        metrics.insert(format!("{label}.{name}"), b.saturating_sub(a) as f64);
    };
    put("established", was.established, now.established);
    put("redirected_msgs", was.redirected_msgs, now.redirected_msgs);
    put("passed_msgs", was.passed_msgs, now.passed_msgs);
    put("gated", was.gated, now.gated);
    put("no_peer", was.no_peer, now.no_peer);
    put("left", was.left, now.left);
    put("stayed", was.stayed, now.stayed);
    let redirected = now.redirected_bytes.saturating_sub(was.redirected_bytes);
    let passed = now.passed_bytes.saturating_sub(was.passed_bytes)
        + now.left_bytes.saturating_sub(was.left_bytes);
    if redirected + passed > 0 {
        metrics.insert(
            format!("{label}.redirected_share"),
            redirected as f64 / (redirected + passed) as f64,
        );
    }
}

/// A cgroup v2 directory this process has moved into; dropping it moves the process back
/// and removes the directory.
struct RunCgroup {
    path: PathBuf,
    home: PathBuf,
}

impl RunCgroup {
    fn enter(name: &str) -> Result<Self, String> {
        let home = own_cgroup()?;
        let path = home.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            // Left by a runner that was killed: empty, so it can be reused.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("make cgroup {}: {e}", path.display())),
        }
        let cgroup = Self { path, home };
        move_process(&cgroup.path)?;
        Ok(cgroup)
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if let Err(e) = move_process(&self.home) {
            eprintln!("error: {e}");
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("error: remove cgroup {}: {e}", self.path.display());
        }
    }
}

/// Moves this whole process (every thread) into the cgroup directory `dir`.
fn move_process(dir: &Path) -> Result<(), String> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .map_err(|e| format!("move the runner into cgroup {}: {e}", dir.display()))
}

/// This process's cgroup directory in the cgroup v2 hierarchy (the whole of a pure v2 setup,
/// the `unified` mount of a hybrid one).
fn own_cgroup() -> Result<PathBuf, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    let mount = cgroup2_mount(&mountinfo).ok_or(
        "the socket redirect needs a cgroup v2 hierarchy, and none is mounted (./setup mounts \
         one)",
    )?;
    let membership = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("read /proc/self/cgroup: {e}"))?;
    let own = membership
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process has no cgroup v2 entry in /proc/self/cgroup")?;
    Ok(Path::new(mount).join(own.trim_start_matches('/')))
}

/// The mount point of the first cgroup2 file system in `mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<&str> {
    mountinfo.lines().find_map(|line| {
        let (fields, fs) = line.split_once(" - ")?;
        (fs.split(' ').next()? == "cgroup2").then(|| fields.split(' ').nth(4))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_of_a_hybrid_setup() {
        let mountinfo = "\
            30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs ro,mode=755\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
            42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount(mountinfo), Some("/sys/fs/cgroup/unified"));
        assert_eq!(
            cgroup2_mount("30 24 0:26 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }
}
