//! The guest agent: the last thing a lab VM's `/init` executes (as PID 1). It opens the
//! virtio-serial port named [`PORT_NAME`], announces itself and runs the commands the host
//! sends, as described in the protocol documentation of the `lab_vm_agent` library.

use std::fs::{self, OpenOptions};
use std::io::BufReader;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use lab_vm_agent::{EXIT_NOT_STARTED, Frame, PORT_NAME, ProtocolError};

/// How long to wait for the port's device node to appear after the driver loaded.
const PORT_WAIT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-vm-agent: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> Result<(), String> {
    let path = wait_for_port()?;
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut writer = port
        .try_clone()
        .map_err(|e| format!("duplicating {}: {e}", path.display()))?;
    let mut reader = BufReader::new(port);
    let hello = Frame::Hello(env!("CARGO_PKG_VERSION").to_owned());
    hello
        .write_to(&mut writer)
        .map_err(|e| format!("sending hello on {}: {e}", path.display()))?;
    loop {
        match Frame::read_from(&mut reader) {
            // The host side is not connected (or went away): wait for it to come back.
            Ok(None) => sleep(Duration::from_millis(20)),
            Ok(Some(Frame::Run(argv))) => {
                for frame in run(&argv) {
                    frame
                        .write_to(&mut writer)
                        .map_err(|e| format!("answering on {}: {e}", path.display()))?;
                }
            }
            Ok(Some(Frame::PowerOff)) => power_off(),
            Ok(Some(other)) => eprintln!("lab-vm-agent: ignoring unexpected frame {other:?}"),
            Err(ProtocolError::Io(e)) => return Err(format!("reading {}: {e}", path.display())),
            Err(e) => eprintln!("lab-vm-agent: dropping a bad frame: {e}"),
        }
    }
}

/// Finds `/dev/vportNpM` whose sysfs name is [`PORT_NAME`], waiting up to [`PORT_WAIT`].
fn wait_for_port() -> Result<PathBuf, String> {
    let start = Instant::now();
    loop {
        if let Some(path) = find_port(Path::new("/sys/class/virtio-ports")).filter(|p| p.exists()) {
            return Ok(path);
        }
        if start.elapsed() > PORT_WAIT {
            return Err(format!(
                "no virtio-serial port named {PORT_NAME} under /sys/class/virtio-ports after {PORT_WAIT:?} \
                 (is virtio_console loaded and -device virtserialport,name={PORT_NAME} given?)"
            ));
        }
        sleep(Duration::from_millis(10));
    }
}

fn find_port(class: &Path) -> Option<PathBuf> {
    fs::read_dir(class).ok()?.flatten().find_map(|entry| {
        let name = fs::read_to_string(entry.path().join("name")).ok()?;
        (name.trim() == PORT_NAME).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

fn run(argv: &[String]) -> [Frame; 3] {
    let Some((program, args)) = argv.split_first() else {
        return not_started("empty command".to_owned());
    };
    match Command::new(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            let code = out
                .status
                .code()
                .or_else(|| out.status.signal().map(|sig| 128 + sig))
                .unwrap_or(EXIT_NOT_STARTED);
            [
                Frame::Stdout(out.stdout),
                Frame::Stderr(out.stderr),
                Frame::Exit(code),
            ]
        }
        Err(e) => not_started(format!("lab-vm-agent: cannot run {program:?}: {e}\n")),
    }
}

fn not_started(reason: String) -> [Frame; 3] {
    [
        Frame::Stdout(Vec::new()),
        Frame::Stderr(reason.into_bytes()),
        Frame::Exit(EXIT_NOT_STARTED),
    ]
}

fn power_off() {
    for args in [&["sync"][..], &["poweroff", "-f"][..]] {
        if let Err(e) = Command::new("/bin/busybox").args(args).status() {
            eprintln!("lab-vm-agent: busybox {}: {e}", args.join(" "));
        }
    }
}
