//! The socket redirect in a run.
//!
//! Its sock_ops program sees the sockets of one cgroup v2 directory, and a socket belongs to
//! the cgroup of the process that creates it (an accepted socket to its listener's). The
//! workloads run as threads of the runner, each entering a node's network namespace with
//! `setns`: network namespaces do not change cgroups, so one cgroup holds them all. For each
//! window with the redirect, the runner makes `<its own cgroup>/<prefix>-<lab>.sock-redirect`, moves its
//! whole process there, and attaches the redirect to it; the workloads' sockets are made
//! after that. When the window ends, the redirect is detached, the process moves back to the
//! cgroup it came from and the directory is removed (also when the window failed). A
//! directory left by a killed runner is empty and carries the lab's prefix.
//!
//! Deployed services are processes of their own: when a variant puts the redirect on a node
//! that runs services, they were started in that node's cgroup ([`crate::deploy::start`]),
//! and a second redirect is attached to it for the window. Their connections to each other
//! (the DisGraFS server to Redis and FalkorDB) are long-lived, and the redirect only takes
//! connections that become established while it is attached, so the runner restarts the
//! DisGraFS server at the start of every window of such a scenario, whatever the variant: its
//! connections are then new in each window, redirected or not.

use std::path::{Path, PathBuf};

use accel::sock_redirect::{Config, SockRedirect, Stats};

use crate::cgroup;

/// The redirect attached for one window; dropping it detaches, and when the runner had moved
/// into a cgroup of its own for it, moves the process back and removes that cgroup.
pub(super) struct Redirect {
    // Dropped first: detached before the cgroup goes.
    redirect: SockRedirect,
    path: PathBuf,
    _cgroup: Option<RunCgroup>,
}

impl Redirect {
    /// Makes the run's cgroup `name` under this process's own, moves the process into it and
    /// attaches the redirect of `ports` with gate bound `min_size` (0: no gate).
    pub(super) fn attach(name: &str, ports: &[u16], min_size: u32) -> Result<Self, String> {
        let cgroup = RunCgroup::enter(name)?;
        let path = cgroup.path.clone();
        Self::attach_to(&path, ports, min_size, Some(cgroup))
    }

    /// Attaches the redirect to the cgroup `dir` that deployed services run in.
    pub(super) fn attach_services(
        dir: &Path,
        ports: &[u16],
        min_size: u32,
    ) -> Result<Self, String> {
        Self::attach_to(dir, ports, min_size, None)
    }

    fn attach_to(
        dir: &Path,
        ports: &[u16],
        min_size: u32,
        cgroup: Option<RunCgroup>,
    ) -> Result<Self, String> {
        let config = Config::new(ports, min_size).map_err(|e| e.to_string())?;
        let redirect = SockRedirect::attach(dir, &config)
            .map_err(|e| format!("attach the socket redirect to {}: {e}", dir.display()))?;
        Ok(Self {
            redirect,
            path: dir.to_owned(),
            _cgroup: cgroup,
        })
    }

    /// The redirect's counters now.
    pub(super) fn stats(&self) -> Result<Stats, String> {
        self.redirect.stats().map_err(|e| {
            format!(
                "socket redirect on {}: read its counters: {e}",
                self.path.display()
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
        let home = cgroup::own()?;
        let path = home.join(name);
        cgroup::make(&path)?;
        let cgroup = Self { path, home };
        cgroup::move_process(&cgroup.path)?;
        Ok(cgroup)
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if let Err(e) = cgroup::move_process(&self.home) {
            eprintln!("error: {e}");
        }
        if let Err(e) = cgroup::remove(&self.path) {
            eprintln!("error: {e}");
        }
    }
}
