//! A JuiceFS volume for tests: metadata in a [`RedisServer`] of its own, objects in a local
//! directory, FUSE-mounted by a `juicefs mount` process that is this process's child.
//!
//! The mount runs in the foreground (no `-d`): the process is ours, its output goes to a log
//! file (never to a pipe someone waits on), readiness is the mount appearing in
//! `/proc/self/mountinfo`, and every wait has a deadline. `-d` would leave a daemon that is
//! nobody's child, and one that outlives its Redis retries it until killed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustix::mount::{UnmountFlags, unmount};
use rustix::process::{Pid, Signal, kill_process};

use crate::{RedisServer, tail, tools_dir};

/// How long `juicefs mount` may take until the mount is visible (the machine is shared).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `juicefs umount`, and the mount process exiting after it, may take.
const UMOUNT_TIMEOUT: Duration = Duration::from_secs(20);

/// The `juicefs` binary that `./setup` installs (under [`tools_dir`]).
pub fn juicefs_bin() -> PathBuf {
    tools_dir().join("bin/juicefs")
}

/// Whether `path` is a mount point in this process's mount namespace, and its filesystem type.
pub fn mount_type(path: &Path) -> anyhow::Result<Option<String>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER"
    Ok(text.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let mount_point = unescape_mountinfo(fields.nth(4)?);
        let fs_type = fields.skip_while(|f| *f != "-").nth(1)?;
        (Path::new(&mount_point) == path).then(|| fs_type.to_owned())
    }))
}

/// Undoes the octal escapes (`\040` for a space…) of a mountinfo path.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How [`JuiceFs::unmount`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// `juicefs umount` succeeded and the mount process exited on its own (or nothing was
    /// mounted any more).
    Cleanly,
    /// The mount was busy or the process hung: it was detached and the processes killed.
    Forced,
}

/// A formatted and mounted JuiceFS volume; unmounted (and its processes reaped) when dropped,
/// also when a test panics while files on it are still open.
#[derive(Debug)]
pub struct JuiceFs {
    mount: Option<Child>,
    mountpoint: PathBuf,
    dir: tempfile::TempDir,
    // Dropped last: the mount process needs its metadata server until it has exited.
    redis: RedisServer,
}

impl JuiceFs {
    /// Starts a Redis for the metadata, formats a volume on it with `--storage file` under a
    /// temporary directory, and mounts it.
    pub fn start() -> anyhow::Result<Self> {
        let redis = RedisServer::redis()?;
        let dir = tempfile::Builder::new()
            .prefix("disgrafs-juicefs-")
            .tempdir()
            .context("creating the volume's directory")?;
        for sub in ["bucket", "cache", "mnt"] {
            std::fs::create_dir(dir.path().join(sub))
                .with_context(|| format!("creating {sub}/ for the volume"))?;
        }
        let mut volume = Self {
            mount: None,
            mountpoint: dir.path().join("mnt"),
            dir,
            redis,
        };
        volume.format()?;
        volume.mount()?;
        Ok(volume)
    }

    /// Where the volume is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The local directory that holds the volume's objects (the "bucket").
    pub fn bucket(&self) -> PathBuf {
        self.dir.path().join("bucket")
    }

    /// The pid of the `juicefs mount` process while it runs.
    pub fn mount_pid(&self) -> Option<u32> {
        self.mount.as_ref().map(Child::id)
    }

    /// The log of the mount process (its stdout and stderr).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("mount.log")
    }

    fn meta_url(&self) -> String {
        format!("{}/1", self.redis.url())
    }

    fn format(&self) -> anyhow::Result<()> {
        let log = self.dir.path().join("format.log");
        let mut command = Command::new(juicefs_bin());
        command
            .args(["format", "--storage", "file", "--trash-days", "0"])
            .arg("--bucket")
            .arg(format!("{}/", self.bucket().display()))
            .arg(self.meta_url())
            .arg("disgrafs-test");
        let status = run_logged(&mut command, &log, UMOUNT_TIMEOUT)?;
        if !status.success() {
            bail!("juicefs format exited with {status}: {}", tail(&log));
        }
        Ok(())
    }

    fn mount(&mut self) -> anyhow::Result<()> {
        let log = self.log();
        let output = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(juicefs_bin())
            .args(["mount", "--no-usage-report", "--cache-dir"])
            .arg(self.dir.path().join("cache"))
            .arg(self.meta_url())
            .arg(&self.mountpoint)
            // juicefs's own readiness check aborts the mount after 10 s by default.
            .env("JFS_MOUNT_TIMEOUT", MOUNT_TIMEOUT.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(output.try_clone().context("duplicating the log file")?)
            .stderr(output)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (run ./setup to install it)",
                    juicefs_bin().display()
                )
            })?;
        let child = self.mount.insert(child);
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Some(fs_type) = mount_type(&self.mountpoint)? {
                if fs_type == "fuse.juicefs" {
                    return Ok(());
                }
                bail!(
                    "{} is a {fs_type} mount, not JuiceFS",
                    self.mountpoint.display()
                );
            }
            if let Some(status) = child.try_wait().context("polling juicefs mount")? {
                self.mount = None;
                bail!("juicefs mount exited with {status}: {}", tail(&log));
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not mounted within {MOUNT_TIMEOUT:?}: {}",
                    self.mountpoint.display(),
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unmounts the volume and waits for the mount process to exit. A busy mount (open files,
    /// a working directory on it) is detached and its processes killed, which ends the FUSE
    /// connection: the open files then fail with ENOTCONN. What had to be forced is printed
    /// to stderr; an error means the mount or its process could not be removed. Idempotent.
    pub fn unmount(&mut self) -> anyhow::Result<Unmounted> {
        let mut graceful = true;
        if mount_type(&self.mountpoint)?.is_some() {
            let log = self.dir.path().join("umount.log");
            let mut command = Command::new(juicefs_bin());
            command.arg("umount").arg(&self.mountpoint);
            let problem = match run_logged(&mut command, &log, UMOUNT_TIMEOUT) {
                Ok(status) if status.success() => None,
                Ok(status) => Some(format!("{status}: {}", tail(&log))),
                Err(e) => Some(format!("{e:#}")),
            };
            if let Some(problem) = problem {
                eprintln!(
                    "juicefs umount {} failed ({problem}); detaching it",
                    self.mountpoint.display()
                );
                graceful = false;
                unmount(&self.mountpoint, UnmountFlags::DETACH)
                    .with_context(|| format!("detaching {}", self.mountpoint.display()))?;
            }
        }
        if let Some(mut child) = self.mount.take() {
            let exited = graceful && wait_deadline(&mut child, UMOUNT_TIMEOUT)?.is_some();
            if !exited {
                graceful = false;
                kill_mount_process(&mut child)?;
            }
        }
        Ok(if graceful {
            Unmounted::Cleanly
        } else {
            Unmounted::Forced
        })
    }
}

impl Drop for JuiceFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("JuiceFS cleanup: {e:#}");
        }
    }
}

/// Kills the mount process (the supervisor we started) and the serving process it started;
/// with the last holder of `/dev/fuse` gone the kernel aborts the FUSE connection.
fn kill_mount_process(child: &mut Child) -> anyhow::Result<()> {
    if child.try_wait().context("polling juicefs mount")?.is_some() {
        return Ok(());
    }
    let supervisor = pid_of(child)?;
    let serving = children_of(supervisor);
    eprintln!("killing juicefs mount {supervisor:?} and its serving process {serving:?}");
    for &pid in &serving {
        let _ = kill_process(pid, Signal::KILL);
    }
    // Let the supervisor reap them (it would restart one only after a second), so that no
    // zombie is left to PID 1.
    let deadline = Instant::now() + Duration::from_millis(500);
    while serving.iter().any(|pid| proc_exists(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().context("killing juicefs mount")?;
    child.wait().context("reaping juicefs mount")?;
    Ok(())
}

fn pid_of(child: &Child) -> anyhow::Result<Pid> {
    i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .context("the child's pid is not a valid pid")
}

fn proc_exists(pid: Pid) -> bool {
    Path::new(&format!("/proc/{}", pid.as_raw_nonzero())).exists()
}

/// The direct children of `pid` (processes it started), from `/proc/PID/task/*/children`.
fn children_of(pid: Pid) -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", pid.as_raw_nonzero())) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok().and_then(Pid::from_raw))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Runs `command` with stdout and stderr into `log`, killing it after `timeout`.
fn run_logged(command: &mut Command, log: &Path, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let output = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let program = format!("{:?}", command.get_program());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(output.try_clone().context("duplicating the log file")?)
        .stderr(output)
        .spawn()
        .with_context(|| format!("starting {program} (run ./setup to install it)"))?;
    match wait_deadline(&mut child, timeout)? {
        Some(status) => Ok(status),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} did not finish within {timeout:?}: {}", tail(log))
        }
    }
}

/// Waits up to `timeout` for `child` to exit.
fn wait_deadline(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("polling a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\011c"), "/tmp/a b\tc");
        assert_eq!(unescape_mountinfo(r"/x\\y\0"), r"/x\\y\0");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn finds_the_root_mount_and_not_a_plain_directory() {
        assert!(mount_type(Path::new("/")).unwrap().is_some());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mount_type(dir.path()).unwrap(), None);
    }
}
