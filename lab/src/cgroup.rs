//! cgroup v2 directories of a lab: the socket redirect's programs see the sockets of one
//! cgroup, and a socket belongs to the cgroup of the process that makes it (an accepted socket
//! to its listener's). Directories carry the lab's prefix; whoever makes one removes it.

use std::fs;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long removing a directory waits for the processes that left it to be gone.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// This process's cgroup directory in the cgroup v2 hierarchy (the whole of a pure v2 setup,
/// the `unified` mount of a hybrid one).
pub(crate) fn own() -> Result<PathBuf, String> {
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

/// Makes the directory `dir`; one left by a process that was killed (empty) is reused.
pub(crate) fn make(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("make cgroup {}: {e}", dir.display())),
    }
}

/// Moves this whole process (every thread) into the cgroup directory `dir`.
pub(crate) fn move_process(dir: &Path) -> Result<(), String> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .map_err(|e| format!("move the runner into cgroup {}: {e}", dir.display()))
}

/// Makes the process `command` spawns join the cgroup directory `dir` before it runs its
/// program, so that every socket it makes belongs to `dir`.
pub(crate) fn join_on_exec(command: &mut Command, dir: &Path) -> io::Result<()> {
    let path = dir.join("cgroup.procs");
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    // SAFETY: the hook runs in the child between fork and exec and only calls write(2), which
    // is async-signal-safe, on a descriptor the child inherited (closed again at exec). "0"
    // moves the writing process itself.
    unsafe {
        command.pre_exec(move || {
            let fd = procs.as_raw_fd();
            if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// Removes the directory `dir` (gone already is fine), waiting up to [`REMOVE_TIMEOUT`] for
/// the processes that were in it to be gone.
pub(crate) fn remove(dir: &Path) -> io::Result<()> {
    let started = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY) && started.elapsed() < REMOVE_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("remove cgroup {}: {e}", dir.display()),
                ));
            }
        }
    }
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
