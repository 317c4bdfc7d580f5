//! Booting a lab VM under QEMU and driving its guest agent.
//!
//! QEMU gets the uncompressed `vmlinux` (PVH boot) and an initramfs from
//! [`crate::initramfs`]; the console goes to a file, the agent's virtio-serial port to a Unix
//! socket in a private temporary directory. Acceleration is KVM only when `/dev/kvm` is
//! writable, the CPU advertises vmx/svm and a boot with KVM reaches the agent; otherwise TCG
//! (`-cpu max`).
//!
//! QEMU never outlives a [`Vm`]: dropping it kills QEMU, and QEMU gets `SIGKILL` if the thread
//! that booted it exits (`PR_SET_PDEATHSIG`), so keep a `Vm` on the thread that created it.

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsFd as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lab_vm_agent::{Frame, PORT_NAME};

use crate::{Error, Result, io_err};

/// The agent's socket in a VM's run directory.
pub const AGENT_SOCKET: &str = "agent.sock";

/// The file in a VM's run directory holding QEMU's pid.
pub const PID_FILE: &str = "qemu.pid";

/// Console substrings that mean the kernel (or our init) hit a problem.
pub const SPLAT_PATTERNS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "Call Trace",
    "lab-vm-init: error",
];

/// How long a KVM probe boot may take before falling back to TCG.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// How often waits re-check that QEMU is still alive.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// CPU virtualization used by QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// Emulation (`-accel tcg,thread=single -cpu max`).
    Tcg,
}

/// How to boot a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Uncompressed ELF kernel.
    pub vmlinux: PathBuf,
    /// Initramfs image.
    pub initramfs: PathBuf,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Host directory shared over 9p (tag `host`, mounted at `/host` by init).
    pub share: Option<PathBuf>,
    /// Where to keep the console log; `None` keeps it in the VM's temporary directory.
    pub console_log: Option<PathBuf>,
    /// Longest wait from starting QEMU to the agent's hello.
    pub boot_timeout: Duration,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Network cards, each a virtio-net device on an existing tap device.
    pub nics: Vec<Nic>,
    /// Network namespace file QEMU is started in (its taps must be there), e.g.
    /// `/run/netns/NAME`; `None`: this process's namespace.
    pub netns: Option<PathBuf>,
    /// A directory that makes the VM long-lived: the agent socket, console log, QEMU log and
    /// pid file (`qemu.pid`) go there, and QEMU runs in a session of its own, not tied to this
    /// process or thread (see [`Vm::detach`] and [`Agent`]). `None`: everything lives in a
    /// temporary directory and QEMU dies with the `Vm`.
    pub run_dir: Option<PathBuf>,
    /// Extra kernel command line parameters, after the built-in ones (e.g. `initcall_debug`).
    pub append: String,
    /// Host scheduling niceness of QEMU (-20 to 19), if not inherited. A guest whose vCPUs
    /// sleep (waiting for a timer, e.g. netem's) waits for the host to run QEMU again: on a
    /// loaded host that adds milliseconds per wake-up, which -20 mostly removes.
    pub nice: Option<i32>,
}

/// A VM network card: a virtio-net device backed by a host tap device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The tap device's name (in the namespace QEMU runs in).
    pub tap: String,
    /// The card's MAC address, `52:54:00:..`.
    pub mac: String,
    /// MTU the card offers the guest (virtio `host_mtu`; the guest driver starts with it), if
    /// not the default 1500. The tap must allow it too.
    pub mtu: Option<u32>,
}

impl VmConfig {
    /// One CPU, 512 MiB, no share, 120 s boot timeout, `qemu-system-x86_64` from `PATH`.
    pub fn new(vmlinux: impl Into<PathBuf>, initramfs: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            vmlinux: vmlinux.into(),
            initramfs: initramfs.into(),
            cpus: 1,
            memory_mib: 512,
            share: None,
            console_log: None,
            boot_timeout: Duration::from_secs(120),
            qemu: PathBuf::from("qemu-system-x86_64"),
            nics: Vec::new(),
            netns: None,
            run_dir: None,
            append: String::new(),
            nice: None,
        }
    }
}

/// What a command run in the guest produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code (128 + signal when killed by a signal, 127 when it could not start).
    pub exit_code: i32,
    /// Complete standard output.
    pub stdout: Vec<u8>,
    /// Complete standard error.
    pub stderr: Vec<u8>,
}

/// A running VM with a connected guest agent.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    agent: UnixStream,
    console: PathBuf,
    accel: Accel,
    ready_after: Duration,
    agent_version: String,
    detached: bool,
    // Holds the agent socket and (by default) the console log; removed on drop. `None` for a
    // VM with a run directory.
    _dir: Option<tempfile::TempDir>,
}

/// Whether KVM is worth probing: `/dev/kvm` writable and vmx/svm in `/proc/cpuinfo`.
pub fn kvm_candidate() -> bool {
    let writable = rustix::fs::access("/dev/kvm", rustix::fs::Access::WRITE_OK).is_ok();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    writable && has_flag
}

impl Vm {
    /// Boots the VM and waits for the agent. Tries KVM first when [`kvm_candidate`] holds and
    /// falls back to TCG if that boot fails.
    ///
    /// # Errors
    /// QEMU cannot start or exits, the agent does not say hello within the timeout, or the
    /// agent speaks garbage. Errors carry the console's last lines.
    pub fn boot(config: &VmConfig) -> Result<Vm> {
        if kvm_candidate() {
            let probe = VmConfig {
                boot_timeout: config.boot_timeout.min(KVM_PROBE_TIMEOUT),
                ..config.clone()
            };
            match Vm::boot_with(&probe, Accel::Kvm) {
                Ok(vm) => return Ok(vm),
                Err(e) => eprintln!("lab-vm: KVM probe boot failed, using TCG: {e}"),
            }
        }
        Vm::boot_with(config, Accel::Tcg)
    }

    /// Boots with the given acceleration, without fallback.
    ///
    /// # Errors
    /// As [`Vm::boot`].
    pub fn boot_with(config: &VmConfig, accel: Accel) -> Result<Vm> {
        let (tmp, dir) = match &config.run_dir {
            Some(dir) => {
                fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
                (None, dir.clone())
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("lab-vm-")
                    .tempdir()
                    .map_err(io_err("creating a temporary directory for the VM"))?;
                let dir = tmp.path().to_owned();
                (Some(tmp), dir)
            }
        };
        let socket = dir.join(AGENT_SOCKET);
        let console = config
            .console_log
            .clone()
            .unwrap_or_else(|| dir.join("console.log"));
        let qemu_log = dir.join("qemu.log");
        let mut cmd = qemu_command(config, accel, &socket, &console);
        let log = fs::File::create(&qemu_log)
            .map_err(io_err(format!("creating {}", qemu_log.display())))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let netns = match &config.netns {
            Some(path) => Some(
                fs::File::open(path)
                    .map_err(io_err(format!("opening netns {}", path.display())))?,
            ),
            None => None,
        };
        let long_lived = config.run_dir.is_some();
        let nice = config.nice;
        // SAFETY: the closure only makes the setns, setpriority, setsid and prctl system calls
        // (async-signal-safe), on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(nice) = nice {
                    rustix::process::setpriority_process(None, nice)?;
                }
                if let Some(ns) = &netns {
                    rustix::thread::move_into_link_name_space(
                        ns.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )?;
                }
                if long_lived {
                    rustix::process::setsid()?;
                    Ok(())
                } else {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::KILL,
                    ))
                    .map_err(io::Error::from)
                }
            });
        }
        let start = Instant::now();
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", config.qemu.display())))?;
        if long_lived {
            let pid_file = dir.join(PID_FILE);
            fs::write(&pid_file, format!("{}\n", child.id()))
                .map_err(io_err(format!("writing {}", pid_file.display())))?;
        }
        let mut booting = Booting {
            child: Some(child),
            console: &console,
            qemu_log: &qemu_log,
        };
        let deadline = start + config.boot_timeout;
        let agent = booting.connect(&socket, deadline)?;
        booting.wait_readable(&agent, deadline, "waiting for the guest agent's hello")?;
        let hello = Frame::read_from(&mut &agent).map_err(Error::Agent)?;
        let Some(Frame::Hello(agent_version)) = hello else {
            return Err(booting.fail(format!("expected the agent's hello, got {hello:?}")));
        };
        let ready_after = start.elapsed();
        let child = booting
            .child
            .take()
            .ok_or_else(|| Error::Kernel("QEMU child vanished".into()))?;
        Ok(Vm {
            child,
            agent,
            console,
            accel,
            ready_after,
            agent_version,
            detached: false,
            _dir: tmp,
        })
    }

    /// Leaves a VM booted with a run directory running after this `Vm` is gone; returns
    /// QEMU's pid. Reach its agent again with [`Agent::connect`]; stop it with [`stop`].
    ///
    /// # Errors
    /// The VM has no run directory (it would die with this process).
    pub fn detach(mut self) -> Result<u32> {
        if self._dir.is_some() {
            return Err(Error::Kernel(
                "only a VM booted with a run directory can be detached".into(),
            ));
        }
        self.detached = true;
        Ok(self.child.id())
    }

    /// The acceleration in use.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Time from starting QEMU to the agent's hello.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// The version the agent announced.
    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    /// Path of the console log.
    pub fn console(&self) -> &Path {
        &self.console
    }

    /// Runs `argv` in the guest (looked up in `PATH` there: `/usr/sbin:/usr/bin:/sbin:/bin`)
    /// and returns its output once it has exited.
    ///
    /// # Errors
    /// An empty argv or one containing NUL bytes, the timeout passing, QEMU dying, or a
    /// protocol violation.
    pub fn run<S: AsRef<str>>(&mut self, argv: &[S], timeout: Duration) -> Result<CommandOutput> {
        let argv: Vec<String> = argv.iter().map(|a| a.as_ref().to_owned()).collect();
        let what = format!("running {argv:?} in the guest");
        Frame::Run(argv).write_to(&mut &self.agent)?;
        let mut booting = Booting {
            child: Some(&mut self.child),
            console: &self.console,
            qemu_log: Path::new(""),
        };
        booting.wait_readable(&self.agent, Instant::now() + timeout, &what)?;
        let (mut stdout, mut stderr) = (None, None);
        loop {
            match Frame::read_from(&mut &self.agent)? {
                Some(Frame::Stdout(out)) if stdout.is_none() => stdout = Some(out),
                Some(Frame::Stderr(err)) if stdout.is_some() && stderr.is_none() => {
                    stderr = Some(err)
                }
                Some(Frame::Exit(exit_code)) if stderr.is_some() => {
                    return Ok(CommandOutput {
                        exit_code,
                        stdout: stdout.unwrap_or_default(),
                        stderr: stderr.unwrap_or_default(),
                    });
                }
                other => {
                    return Err(booting.fail(format!("{what}: unexpected agent message {other:?}")));
                }
            }
        }
    }

    /// Asks the agent to power the guest off, waits for QEMU to exit (killing it after
    /// `timeout`), then scans the console with [`scan_console`].
    ///
    /// # Errors
    /// A kernel splat on the console, or I/O errors reading it.
    pub fn power_off(mut self, timeout: Duration) -> Result<()> {
        let sent = Frame::PowerOff.write_to(&mut &self.agent);
        let deadline = Instant::now() + timeout;
        while sent.is_ok() && Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        scan_console(&self.console)
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _killed = self.child.kill();
        }
        let _reaped = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.detached {
            self.kill();
        }
    }
}

/// A connection to the agent of a long-lived VM (one booted with a run directory), held
/// exclusively: QEMU serves one client at a time, so other connections wait for this one.
#[derive(Debug)]
pub struct Agent {
    stream: UnixStream,
    pid: Option<u32>,
    dir: PathBuf,
    _lock: fs::File,
}

impl Agent {
    /// Connects to the agent of the VM whose run directory is `dir`, waiting for other
    /// clients to finish first.
    ///
    /// # Errors
    /// No VM runs there (no socket, or QEMU gone).
    pub fn connect(dir: &Path) -> Result<Agent> {
        let lock_path = dir.join("agent.lock");
        let lock = fs::File::create(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(format!("locking {}", lock_path.display()))(e.into()))?;
        let socket = dir.join(AGENT_SOCKET);
        let stream = UnixStream::connect(&socket).map_err(io_err(format!(
            "connecting to the VM agent at {}",
            socket.display()
        )))?;
        let pid = fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        Ok(Agent {
            stream,
            pid,
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Runs `argv` in the guest, as [`Vm::run`] does.
    ///
    /// # Errors
    /// As [`Vm::run`]; also when QEMU exits meanwhile.
    pub fn run<S: AsRef<str>>(&mut self, argv: &[S], timeout: Duration) -> Result<CommandOutput> {
        let argv: Vec<String> = argv.iter().map(|a| a.as_ref().to_owned()).collect();
        let what = format!("running {argv:?} in the guest");
        Frame::Run(argv).write_to(&mut &self.stream)?;
        let deadline = Instant::now() + timeout;
        let fail = |message: String| Error::Boot {
            message,
            console: self.dir.join("console.log"),
            tail: console_tail(&self.dir.join("console.log"), 25),
        };
        loop {
            if let Some(pid) = self.pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                return Err(fail(format!("QEMU (pid {pid}) exited while {what}")));
            }
            if Instant::now() > deadline {
                return Err(fail(format!("timed out {what}")));
            }
            let timeout = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: i64::from(POLL_INTERVAL.subsec_nanos()),
            };
            let mut fds = [rustix::event::PollFd::new(
                &self.stream,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(n) if n > 0 => break,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(io_err(format!("polling the agent socket while {what}"))(
                        e.into(),
                    ));
                }
            }
        }
        read_answer(&self.stream).map_err(|e| fail(format!("{what}: {e}")))
    }
}

/// Reads the `O`, `E`, `X` frames answering a run request.
fn read_answer(stream: &UnixStream) -> std::result::Result<CommandOutput, String> {
    let next = || Frame::read_from(&mut &*stream).map_err(|e| e.to_string());
    match (next()?, next()?, next()?) {
        (
            Some(Frame::Stdout(stdout)),
            Some(Frame::Stderr(stderr)),
            Some(Frame::Exit(exit_code)),
        ) => Ok(CommandOutput {
            exit_code,
            stdout,
            stderr,
        }),
        other => Err(format!("unexpected agent messages {other:?}")),
    }
}

/// Stops the long-lived VM whose run directory is `dir`: kills QEMU if the pid file names a
/// live QEMU process of this directory, waits for it to exit (up to 2 s), and removes `dir`.
/// A directory that is already gone is fine.
///
/// # Errors
/// QEMU does not exit, or the directory cannot be removed.
pub fn stop(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if let Some(pid) = fs::read_to_string(dir.join(PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let ours = |pid: i32| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                String::from_utf8_lossy(&cmdline)
                    .contains(&*dir.join(AGENT_SOCKET).to_string_lossy())
            })
        };
        if ours(pid) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _gone = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while ours(pid) && !is_zombie(pid) {
                if Instant::now() > deadline {
                    return Err(Error::Kernel(format!(
                        "QEMU (pid {pid}) of {} did not exit after SIGKILL",
                        dir.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("removing {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// A QEMU process that is not (or no longer) known to be healthy; used to wait and to build
/// errors with the console's tail.
struct Booting<'a, C: ChildLike> {
    child: Option<C>,
    console: &'a Path,
    qemu_log: &'a Path,
}

trait ChildLike {
    fn exited(&mut self) -> Option<String>;
    fn kill_now(&mut self);
}

impl ChildLike for Child {
    fn exited(&mut self) -> Option<String> {
        self.try_wait().ok().flatten().map(|s| s.to_string())
    }
    fn kill_now(&mut self) {
        let _killed = self.kill();
        let _reaped = self.wait();
    }
}

impl ChildLike for &mut Child {
    fn exited(&mut self) -> Option<String> {
        (**self).exited()
    }
    fn kill_now(&mut self) {
        (**self).kill_now();
    }
}

impl<C: ChildLike> Booting<'_, C> {
    fn fail(&mut self, message: String) -> Error {
        if let Some(child) = self.child.as_mut() {
            child.kill_now();
        }
        let qemu = fs::read_to_string(self.qemu_log).unwrap_or_default();
        let message = if qemu.trim().is_empty() {
            message
        } else {
            format!("{message}; QEMU said: {}", qemu.trim())
        };
        Error::Boot {
            message,
            console: self.console.to_owned(),
            tail: console_tail(self.console, 25),
        }
    }

    fn check_alive(&mut self, what: &str) -> Result<()> {
        match self.child.as_mut().and_then(ChildLike::exited) {
            Some(status) => Err(self.fail(format!("QEMU exited ({status}) while {what}"))),
            None => Ok(()),
        }
    }

    fn connect(&mut self, socket: &Path, deadline: Instant) -> Result<UnixStream> {
        loop {
            self.check_alive("waiting for the agent socket")?;
            match UnixStream::connect(socket) {
                Ok(stream) => return Ok(stream),
                Err(e) if Instant::now() > deadline => {
                    return Err(self.fail(format!("connecting to {}: {e}", socket.display())));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn wait_readable(&mut self, stream: &UnixStream, deadline: Instant, what: &str) -> Result<()> {
        loop {
            self.check_alive(what)?;
            let now = Instant::now();
            if now > deadline {
                return Err(self.fail(format!("timed out {what}")));
            }
            let wait = (deadline - now).min(POLL_INTERVAL);
            let timeout = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            let mut fds = [rustix::event::PollFd::new(
                stream,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(n) if n > 0 => return Ok(()),
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::Io {
                        context: format!("polling the agent socket while {what}"),
                        source: e.into(),
                    });
                }
            }
        }
    }
}

fn qemu_command(config: &VmConfig, accel: Accel, socket: &Path, console: &Path) -> Command {
    let mut cmd = Command::new(&config.qemu);
    let (accel_arg, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        // One TCG thread for all vCPUs: with multi-threaded TCG a 6.12 guest sometimes died at
        // boot with "Oops: int3" in sched_clock_cpu (kernel text patching racing another vCPU).
        Accel::Tcg => ("tcg,thread=single", "max"),
    };
    // `cryptomgr.notests`: the crypto algorithms' boot self-tests took 0.7-1.1 s of a 2.5-3.5 s
    // boot under TCG on every matrix kernel; the lab needs no proof that the CPU can hash.
    let mut append = String::from(
        "console=ttyS0 loglevel=5 panic=-1 rdinit=/init tsc=reliable no_timer_check \
         mitigations=off random.trust_cpu=on i8042.noaux i8042.nokbd i8042.nopnp \
         cryptomgr.notests",
    );
    if !config.append.is_empty() {
        append.push(' ');
        append.push_str(&config.append);
    }
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .args([
        "-bios",
        "qboot.rom",
        "-machine",
        "pc",
        "-accel",
        accel_arg,
        "-cpu",
        cpu,
    ])
    .args([
        "-m",
        &config.memory_mib.to_string(),
        "-smp",
        &config.cpus.to_string(),
    ])
    .arg("-kernel")
    .arg(&config.vmlinux)
    .arg("-initrd")
    .arg(&config.initramfs)
    .args(["-append", &append])
    .arg("-chardev")
    .arg(format!("file,id=console,path={}", qemu_path(console)))
    .args(["-serial", "chardev:console"])
    .args(["-device", "virtio-serial-pci,id=vser"])
    .arg("-chardev")
    .arg(format!(
        "socket,id=agent,path={},server=on,wait=off",
        qemu_path(socket)
    ))
    .args([
        "-device",
        &format!("virtserialport,bus=vser.0,chardev=agent,name={PORT_NAME}"),
    ]);
    for (i, nic) in config.nics.iter().enumerate() {
        cmd.arg("-netdev")
            .arg(format!(
                "tap,id=net{i},ifname={},script=no,downscript=no",
                nic.tap
            ))
            .arg("-device")
            .arg(match nic.mtu {
                Some(mtu) => format!(
                    "virtio-net-pci,netdev=net{i},mac={},host_mtu={mtu}",
                    nic.mac
                ),
                None => format!("virtio-net-pci,netdev=net{i},mac={}", nic.mac),
            });
    }
    if let Some(share) = &config.share {
        cmd.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=host,security_model=none,id=host",
            qemu_path(share)
        ));
    }
    cmd
}

/// Escapes commas for QEMU option values.
fn qemu_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The last `n` lines of the console log (empty if unreadable).
fn console_tail(console: &Path, n: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(console) {
        let mut bytes = Vec::new();
        let _read = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Fails with [`Error::Splat`] naming the first console line that matches [`SPLAT_PATTERNS`].
///
/// # Errors
/// A matching line, or the console log cannot be read.
pub fn scan_console(console: &Path) -> Result<()> {
    let bytes =
        fs::read(console).map_err(io_err(format!("reading console log {}", console.display())))?;
    match find_splat(&String::from_utf8_lossy(&bytes)) {
        Some((line_no, line)) => Err(Error::Splat {
            console: console.to_owned(),
            line_no,
            line,
        }),
        None => Ok(()),
    }
}

fn find_splat(text: &str) -> Option<(usize, String)> {
    text.lines()
        .enumerate()
        .find(|(_, line)| SPLAT_PATTERNS.iter().any(|p| line.contains(p)))
        .map(|(i, line)| (i + 1, line.trim_end().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_splat_line() {
        assert_eq!(
            find_splat("Linux version 6.1\nRun /init as init process\n"),
            None
        );
        let console =
            "ok\n[ 1.0] WARNING: CPU: 0 PID: 1 at net/core/dev.c:1 f+0x1\n[ 1.1] Call Trace:\n";
        assert_eq!(
            find_splat(console),
            Some((
                2,
                "[ 1.0] WARNING: CPU: 0 PID: 1 at net/core/dev.c:1 f+0x1".into()
            ))
        );
        assert_eq!(
            find_splat("lab-vm-init: error: insmod /lib/modules/x.ko\n").map(|s| s.0),
            Some(1)
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        fs::write(&path, "a\nBUG: kernel NULL pointer dereference\n").unwrap();
        let e = scan_console(&path).unwrap_err().to_string();
        assert!(e.contains("console.log:2: BUG: kernel NULL"), "{e}");
    }

    #[test]
    fn qemu_command_line_has_the_essentials() {
        let mut config = VmConfig::new("/k/vmlinux", "/k/initrd");
        config.share = Some(PathBuf::from("/srv/a,b"));
        config.append = "initcall_debug".into();
        config.nics = vec![
            Nic {
                tap: "vmtap0".into(),
                mac: "52:54:00:12:34:56".into(),
                mtu: None,
            },
            Nic {
                tap: "vmtap1".into(),
                mac: "52:54:00:12:34:57".into(),
                mtu: Some(9000),
            },
        ];
        let cmd = qemu_command(
            &config,
            Accel::Tcg,
            Path::new("/t/agent.sock"),
            Path::new("/t/console.log"),
        );
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(line.contains("-accel tcg,thread=single -cpu max"), "{line}");
        let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(
            append.starts_with("console=ttyS0 ")
                && append.ends_with(" cryptomgr.notests initcall_debug"),
            "{append}"
        );
        assert!(
            line.contains("-kernel /k/vmlinux -initrd /k/initrd"),
            "{line}"
        );
        assert!(
            line.contains("virtserialport,bus=vser.0,chardev=agent,name=lab.agent"),
            "{line}"
        );
        assert!(
            line.contains("local,path=/srv/a,,b,mount_tag=host"),
            "{line}"
        );
        assert!(
            line.contains("file,id=console,path=/t/console.log"),
            "{line}"
        );
        assert!(
            line.contains(
                "-netdev tap,id=net0,ifname=vmtap0,script=no,downscript=no \
                 -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56 \
                 -netdev tap,id=net1,ifname=vmtap1,script=no,downscript=no \
                 -device virtio-net-pci,netdev=net1,mac=52:54:00:12:34:57,host_mtu=9000"
            ),
            "{line}"
        );
    }
}
