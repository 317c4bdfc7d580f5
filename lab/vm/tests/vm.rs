//! Root, network and QEMU tests: fetch (or reuse the cached) kernel 6.1, boot it under QEMU and
//! talk to the guest agent. The first run downloads ~70 MB into the user's cache.

use std::time::Duration;

use lab_vm::{Cache, InitramfsSpec, Kernel, Matrix, Vm, VmConfig, initramfs};

const KERNEL: &str = "6.1";
const TIMEOUT: Duration = Duration::from_secs(120);

fn kernel() -> Kernel {
    let matrix = Matrix::builtin().unwrap();
    Cache::from_env()
        .unwrap()
        .fetch(matrix.kernel(KERNEL).unwrap())
        .unwrap()
}

/// Boots `kernel` with an image built from `spec`; the temp dir must outlive the VM.
fn boot(
    kernel: &Kernel,
    spec: &InitramfsSpec,
    share: Option<&std::path::Path>,
) -> (Vm, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("initramfs.cpio");
    let built = initramfs::build(kernel, spec, &image).unwrap();
    let config = VmConfig {
        share: share.map(Into::into),
        boot_timeout: TIMEOUT,
        ..VmConfig::new(&kernel.vmlinux, &image)
    };
    let vm = Vm::boot(&config).unwrap();
    eprintln!(
        "kernel {} ({}): initramfs {} bytes, agent ready after {} ms ({:?})",
        kernel.name,
        kernel.release,
        built.size,
        vm.ready_after().as_millis(),
        vm.accel()
    );
    (vm, dir)
}

fn stdout(vm: &mut Vm, argv: &[&str]) -> String {
    let out = vm.run(argv, TIMEOUT).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.exit_code,
        0,
        "{argv:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn boots_and_runs_commands_through_the_agent() {
    let kernel = kernel();
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("hello.txt"), "from the host\n").unwrap();
    let (mut vm, _dir) = boot(&kernel, &InitramfsSpec::default(), Some(share.path()));
    assert_eq!(stdout(&mut vm, &["uname", "-r"]).trim(), kernel.release);
    let filesystems = stdout(&mut vm, &["cat", "/proc/filesystems"]);
    for fs in ["bpf", "9p", "cgroup2", "tmpfs"] {
        assert!(
            filesystems
                .lines()
                .any(|l| l.split_whitespace().last() == Some(fs)),
            "no {fs} in:\n{filesystems}"
        );
    }
    assert!(stdout(&mut vm, &["cat", "/proc/mounts"]).contains("/sys/fs/bpf bpf"));
    assert_eq!(
        stdout(&mut vm, &["cat", "/host/hello.txt"]),
        "from the host\n"
    );
    let failed = vm
        .run(&["sh", "-c", "echo out; echo err >&2; exit 3"], TIMEOUT)
        .unwrap();
    assert_eq!(
        (
            failed.exit_code,
            failed.stdout.as_slice(),
            failed.stderr.as_slice()
        ),
        (3, &b"out\n"[..], &b"err\n"[..])
    );
    let missing = vm.run(&["/no/such/program"], TIMEOUT).unwrap();
    assert_eq!(missing.exit_code, 127);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/program"));
    vm.power_off(Duration::from_secs(10)).unwrap();
}

#[test]
fn netem_qdisc_works_in_the_guest() {
    let kernel = kernel();
    let spec = InitramfsSpec {
        extra_binaries: vec!["/usr/sbin/tc".into()],
        ..InitramfsSpec::default()
    };
    let (mut vm, _dir) = boot(&kernel, &spec, None);
    stdout(
        &mut vm,
        &[
            "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "10ms",
        ],
    );
    let shown = stdout(&mut vm, &["tc", "qdisc", "show", "dev", "lo"]);
    assert!(
        shown.contains("netem") && shown.contains("delay 10ms"),
        "{shown}"
    );
    vm.power_off(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_vanished_pin_is_an_error_naming_it() {
    let cache_dir = tempfile::tempdir().unwrap();
    let mut pin = Matrix::builtin().unwrap().kernel(KERNEL).unwrap().clone();
    pin.packages[0].version = "0.0.1-1".into();
    let e = Cache::new(cache_dir.path())
        .fetch(&pin)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("linux-image-6.1.0-56-amd64-unsigned=0.0.1-1 is no longer in"),
        "{e}"
    );
    assert!(
        e.contains("6.1.192-2"),
        "should list the versions still there: {e}"
    );
}

#[test]
fn a_cached_kernel_is_reused_without_network() {
    let first = kernel();
    let pin = Matrix::builtin().unwrap().kernel(KERNEL).unwrap().clone();
    assert_eq!(Cache::from_env().unwrap().cached(&pin), Some(first));
}
