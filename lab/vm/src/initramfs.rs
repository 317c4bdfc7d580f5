//! Building initramfs images for lab VMs: busybox-static with its applet links, the `/init`
//! script (`vm-images/init`), the guest agent (static musl, built by `build.rs`), the kernel
//! modules the guest needs (resolved through `modules.dep`, stored uncompressed) and optional
//! extra host binaries with their shared libraries.
//!
//! The image is an uncompressed newc cpio: under TCG the kernel unpacks it faster than it
//! could decompress a smaller one.

use std::collections::BTreeSet;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::CpioWriter;
use crate::fetch::Kernel;
use crate::modules::{ModuleDeps, module_name};
use crate::vmlinux::{Compression, decompress};
use crate::{Error, Result, io_err};

/// The guest's `/init` script.
pub const INIT: &str = include_str!("../../../vm-images/init");

/// The guest agent binary (static, x86_64 musl), built by `build.rs`.
pub const AGENT: &[u8] = include_bytes!(env!("LAB_VM_AGENT_BIN"));

/// Modules every lab VM loads: virtio transport, agent port, network, 9p share, veth, netem and
/// clsact/ingress. Names that are built into a kernel are skipped.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    "veth",
    "sch_netem",
    "sch_ingress",
];

/// The modules the guest agent needs (its virtio-serial port), nothing else: images that need
/// no network card and no host share boot faster with these plus what they use.
pub const AGENT_MODULES: &[&str] = &["virtio_pci", "virtio_console"];

/// What goes into an image besides busybox, init and the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsSpec {
    /// Module names to load at boot (with their dependencies).
    pub modules: Vec<String>,
    /// Host executables to include at their host paths, with the shared libraries `ldd`
    /// reports; they shadow busybox applets of the same name.
    pub extra_binaries: Vec<PathBuf>,
    /// The static busybox to include.
    pub busybox: PathBuf,
}

impl Default for InitramfsSpec {
    fn default() -> Self {
        InitramfsSpec {
            modules: DEFAULT_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            extra_binaries: Vec::new(),
            busybox: PathBuf::from("/bin/busybox"),
        }
    }
}

impl InitramfsSpec {
    /// The minimal image: only [`AGENT_MODULES`], no extra binaries.
    pub fn minimal() -> Self {
        InitramfsSpec {
            modules: AGENT_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            ..InitramfsSpec::default()
        }
    }
}

/// What [`build`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initramfs {
    /// The image file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Module names in load order (dependencies included).
    pub modules: Vec<String>,
}

/// Writes an initramfs for `kernel` to `out`.
///
/// # Errors
/// Unresolvable modules, unreadable files, a failing `busybox --list-full` or `ldd`, or
/// conflicting paths.
pub fn build(kernel: &Kernel, spec: &InitramfsSpec, out: &Path) -> Result<Initramfs> {
    let deps = ModuleDeps::load(&kernel.modules)?;
    let order = deps.resolve(&spec.modules)?;
    let file = fs::File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    let ctx = |what: String| io_err(format!("writing {what} into {}", out.display()));

    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "host",
        "etc/lab-vm",
        "lib/modules",
    ] {
        w.dir(dir, if dir == "tmp" { 0o1777 } else { 0o755 })
            .map_err(ctx(dir.into()))?;
    }
    w.char_device("dev/console", 0o600, 5, 1)
        .map_err(ctx("/dev/console".into()))?;
    w.char_device("dev/null", 0o666, 1, 3)
        .map_err(ctx("/dev/null".into()))?;
    w.file("init", 0o755, INIT.as_bytes())
        .map_err(ctx("/init".into()))?;
    w.file("sbin/lab-vm-agent", 0o755, AGENT)
        .map_err(ctx("the agent".into()))?;

    let mut loaded = Vec::new();
    let mut list = String::new();
    for rel in &order {
        let name = module_name(rel);
        let data = read_module(&kernel.modules.join(rel))?;
        let dest = format!("lib/modules/{name}.ko");
        w.file(&dest, 0o644, &data).map_err(ctx(dest.clone()))?;
        list.push_str(&format!("/{dest}\n"));
        loaded.push(name);
    }
    w.file("etc/lab-vm/modules", 0o644, list.as_bytes())
        .map_err(ctx("/etc/lab-vm/modules".into()))?;

    let mut shadowed = BTreeSet::new();
    for bin in &spec.extra_binaries {
        add_with_libraries(&mut w, bin).map_err(|e| match e {
            Error::Io { context, source } => Error::Io {
                context: format!("{context} (extra binary {})", bin.display()),
                source,
            },
            other => other,
        })?;
        if let Some(name) = bin.file_name() {
            shadowed.insert(name.to_string_lossy().into_owned());
        }
    }

    let busybox =
        fs::read(&spec.busybox).map_err(io_err(format!("reading {}", spec.busybox.display())))?;
    w.file("bin/busybox", 0o755, &busybox)
        .map_err(ctx("/bin/busybox".into()))?;
    for applet in busybox_applets(&spec.busybox)? {
        let name = applet.rsplit('/').next().unwrap_or(&applet);
        if shadowed.contains(name) || w.contains(&applet) {
            continue;
        }
        w.symlink(&applet, "/bin/busybox")
            .map_err(ctx(applet.clone()))?;
    }

    let (_, size) = w.finish().map_err(ctx("the trailer".into()))?;
    Ok(Initramfs {
        path: out.to_owned(),
        size,
        modules: loaded,
    })
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let data = fs::read(path).map_err(io_err(format!("reading module {}", path.display())))?;
    let name = path.to_string_lossy();
    let compression = if name.ends_with(".ko.xz") {
        Compression::Xz
    } else if name.ends_with(".ko.zst") {
        Compression::Zstd
    } else if name.ends_with(".ko.gz") {
        Compression::Gzip
    } else {
        return Ok(data);
    };
    decompress(compression, &data, &name)
}

/// Applet paths (`bin/sh`, `sbin/ip`, ...) from `busybox --list-full`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io_err(format!("running {} --list-full", busybox.display())))?;
    if !out.status.success() {
        return Err(Error::Tool {
            command: format!("{} --list-full", busybox.display()),
            detail: out.status.to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The shared libraries and loader `ldd` lists for `bin` (none for a static binary), to put
/// into an image as [`InitramfsSpec::extra_binaries`] when `bin` itself reaches the guest
/// another way (e.g. over 9p).
///
/// # Errors
/// `ldd` cannot be run.
pub fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(io_err(format!("running ldd {}", bin.display())))?;
    // ldd fails for static binaries ("not a dynamic executable"): then there is nothing to add.
    Ok(if out.status.success() {
        ldd_paths(&String::from_utf8_lossy(&out.stdout))
    } else {
        Vec::new()
    })
}

/// Adds `bin` and the libraries and loader `ldd` lists for it, each at its host path.
fn add_with_libraries<W: std::io::Write>(w: &mut CpioWriter<W>, bin: &Path) -> Result<()> {
    let mut files = vec![bin.to_owned()];
    files.extend(shared_libraries(bin)?);
    for file in files {
        let dest = file.to_string_lossy().into_owned();
        if w.contains(&dest) {
            continue;
        }
        let data = fs::read(&file).map_err(io_err(format!("reading {}", file.display())))?;
        w.file(&dest, 0o755, &data)
            .map_err(io_err(format!("adding {dest}")))?;
    }
    Ok(())
}

/// Absolute library paths in `ldd` output (`libc.so.6 => /lib/.../libc.so.6 (0x...)`, or the
/// loader `/lib64/ld-linux-x86-64.so.2 (0x...)`).
fn ldd_paths(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let target = line.split_once("=>").map_or(line, |(_, t)| t).trim();
            let path = target.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::read::entries;

    #[test]
    fn lists_the_libraries_of_a_dynamic_binary_and_none_of_a_static_one() {
        let libs = shared_libraries(Path::new("/bin/true")).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            shared_libraries(Path::new("/bin/busybox"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn parses_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n\tlibgone.so => not found\n";
        assert_eq!(
            ldd_paths(out),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn builds_an_image_from_a_synthetic_kernel_tree() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("lib/modules/9.9.9");
        fs::create_dir_all(modules.join("kernel")).unwrap();
        fs::write(modules.join("kernel/a.ko"), b"module a").unwrap();
        let mut xz = Command::new("xz")
            .args(["-c", "--format=xz"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut xz.stdin.take().unwrap(), b"module b").unwrap();
        fs::write(
            modules.join("kernel/b-x.ko.xz"),
            xz.wait_with_output().unwrap().stdout,
        )
        .unwrap();
        fs::write(
            modules.join("modules.dep"),
            "kernel/a.ko:\nkernel/b-x.ko.xz: kernel/a.ko\n",
        )
        .unwrap();
        fs::write(modules.join("modules.builtin"), "kernel/virtio.ko\n").unwrap();
        let kernel = Kernel {
            name: "t".into(),
            release: "9.9.9".into(),
            vmlinux: dir.path().join("vmlinux"),
            modules,
        };
        let spec = InitramfsSpec {
            modules: vec!["b_x".into(), "virtio".into()],
            extra_binaries: vec![PathBuf::from("/bin/true")],
            ..InitramfsSpec::default()
        };
        let out = dir.path().join("initramfs.cpio");
        let image = build(&kernel, &spec, &out).unwrap();
        assert_eq!(image.modules, ["a", "b_x"]);
        let bytes = fs::read(&out).unwrap();
        assert_eq!(image.size as usize, bytes.len());
        let got = entries(&bytes);
        let find = |name: &str| {
            got.iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(find("lib/modules/b_x.ko").data, b"module b");
        assert_eq!(
            find("etc/lab-vm/modules").data,
            b"/lib/modules/a.ko\n/lib/modules/b_x.ko\n"
        );
        assert_eq!(find("init").data, INIT.as_bytes());
        assert!(find("sbin/lab-vm-agent").data.starts_with(b"\x7fELF"));
        assert_eq!(find("bin/sh").data, b"/bin/busybox");
        assert!(find("bin/true").data.starts_with(b"\x7fELF"));
        assert_eq!(find("dev/console").rdev, (5, 1));
        let e = build(
            &kernel,
            &InitramfsSpec {
                modules: vec!["nosuch".into()],
                ..InitramfsSpec::default()
            },
            &out,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"nosuch\""), "{e}");
    }
}
