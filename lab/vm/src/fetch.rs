//! Fetching pinned kernels: private APT configuration → `apt-get download` → SHA-256 check →
//! `dpkg -x` → a normalized tree in the cache:
//!
//! ```text
//! <cache>/kernels/<name>/vmlinux                  uncompressed ELF kernel (PVH-bootable)
//! <cache>/kernels/<name>/lib/modules/<release>/   modules + modules.dep (from depmod)
//! <cache>/kernels/<name>/pin                      the pins this tree was made from
//! <cache>/debs/<package>_<version>.deb            downloaded packages
//! <cache>/apt/<name>/                             private sources.list, lists and apt cache
//! ```
//!
//! A kernel whose `pin` file matches is used as is, without touching the network. The cache
//! is locked (`flock`) while fetching so parallel processes do not race.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::matrix::{KernelPin, PackagePin};
use crate::{Error, Result, io_err, vmlinux};

/// Keyring the private sources are signed with (package `debian-archive-keyring`).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The on-disk cache (downloads, unpacked kernels).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// A fetched kernel, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// Matrix name.
    pub name: String,
    /// Kernel release (`uname -r`).
    pub release: String,
    /// The uncompressed ELF kernel.
    pub vmlinux: PathBuf,
    /// `lib/modules/<release>` with `modules.dep`.
    pub modules: PathBuf,
}

impl Cache {
    /// A cache rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// The user's cache: `$DISGRAFS_LAB_CACHE`, else `$XDG_CACHE_HOME/disgrafs-lab`, else
    /// `$HOME/.cache/disgrafs-lab`.
    ///
    /// # Errors
    /// None of these variables is set.
    pub fn from_env() -> Result<Cache> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("DISGRAFS_LAB_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("disgrafs-lab")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/disgrafs-lab")))
            .map(Cache::new)
            .ok_or_else(|| {
                Error::Kernel(
                    "no cache directory: set DISGRAFS_LAB_CACHE, XDG_CACHE_HOME or HOME".into(),
                )
            })
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The kernel for `pin` if it is complete in the cache (no network).
    pub fn cached(&self, pin: &KernelPin) -> Option<Kernel> {
        let dir = self.root.join("kernels").join(&pin.name);
        let kernel = kernel_at(&dir, pin);
        let pinned = fs::read_to_string(dir.join("pin")).is_ok_and(|p| p == fingerprint(pin));
        (pinned && kernel.vmlinux.is_file() && kernel.modules.join("modules.dep").is_file())
            .then_some(kernel)
    }

    /// Fetches `pin` into the cache unless it is there already, and returns it.
    ///
    /// # Errors
    /// A vanished pin ([`Error::PinGone`]), a digest mismatch, failing `apt-get`, `dpkg`,
    /// `depmod` or decompressor, or a package set that does not contain the kernel.
    pub fn fetch(&self, pin: &KernelPin) -> Result<Kernel> {
        if let Some(kernel) = self.cached(pin) {
            return Ok(kernel);
        }
        fs::create_dir_all(&self.root)
            .map_err(io_err(format!("creating {}", self.root.display())))?;
        let lock_path = self.root.join(".lock");
        let lock = File::create(&lock_path)
            .map_err(io_err(format!("creating {}", lock_path.display())))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            Error::Io {
                context: format!("locking {}", lock_path.display()),
                source: e.into(),
            }
        })?;
        // Another process may have finished the same fetch while we waited for the lock.
        if let Some(kernel) = self.cached(pin) {
            return Ok(kernel);
        }
        let debs = self.download(pin)?;
        self.unpack(pin, &debs)
    }

    fn download(&self, pin: &KernelPin) -> Result<Vec<PathBuf>> {
        let deb_dir = self.root.join("debs");
        fs::create_dir_all(&deb_dir).map_err(io_err(format!("creating {}", deb_dir.display())))?;
        let path_of = |p: &PackagePin| {
            deb_dir.join(format!("{}_{}.deb", p.name, p.version.replace(':', "%3a")))
        };
        let missing: Vec<&PackagePin> = pin
            .packages
            .iter()
            .filter(|p| sha256_file(&path_of(p)).ok().as_deref() != Some(&p.sha256))
            .collect();
        if !missing.is_empty() {
            let apt = PrivateApt::new(&self.root.join("apt").join(&pin.name), pin)?;
            apt.update()?;
            for p in missing {
                let (index_sha, size) = apt.index_entry(pin, p)?;
                if index_sha != p.sha256 {
                    return Err(Error::Checksum {
                        file: PathBuf::from(format!(
                            "{}={} in {} {}",
                            p.name, p.version, pin.archive, pin.suite
                        )),
                        expected: p.sha256.clone(),
                        actual: index_sha,
                        origin: "the archive index disagrees with the pin in kernels.toml".into(),
                    });
                }
                let dest = path_of(p);
                apt.download(p, size, &dest)?;
                let actual = sha256_file(&dest)?;
                if actual != p.sha256 {
                    let _removed = fs::remove_file(&dest);
                    return Err(Error::Checksum {
                        file: dest,
                        expected: p.sha256.clone(),
                        actual,
                        origin: format!(
                            "pin for kernel {:?} in kernels.toml and the archive index",
                            pin.name
                        ),
                    });
                }
            }
        }
        Ok(pin.packages.iter().map(path_of).collect())
    }

    fn unpack(&self, pin: &KernelPin, debs: &[PathBuf]) -> Result<Kernel> {
        let kernels = self.root.join("kernels");
        let final_dir = kernels.join(&pin.name);
        let tmp = kernels.join(format!(".{}.partial", pin.name));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(format!("removing {}", tmp.display())))?;
        }
        let root = tmp.join("root");
        fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        for deb in debs {
            eprintln!("lab-vm: unpacking {}", deb.display());
            run_tool(Command::new("dpkg").arg("-x").arg(deb).arg(&root))?;
        }
        let candidates = [
            root.join("lib/modules").join(&pin.release),
            root.join("usr/lib/modules").join(&pin.release),
        ];
        let Some(modules_src) = candidates.iter().find(|d| d.is_dir()) else {
            return Err(Error::Kernel(format!(
                "kernel {:?}: the packages contain no modules directory for release {:?} (looked for {})",
                pin.name,
                pin.release,
                candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let images = [
            root.join("boot").join(format!("vmlinuz-{}", pin.release)),
            modules_src.join("vmlinuz"),
        ];
        let Some(vmlinuz) = images.iter().find(|f| f.is_file()) else {
            return Err(Error::Kernel(format!(
                "kernel {:?}: the packages contain no kernel image (looked for {})",
                pin.name,
                images
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let kernel = kernel_at(&tmp, pin);
        vmlinux::extract(vmlinuz, &kernel.vmlinux)?;
        let modules_parent = tmp.join("lib/modules");
        fs::create_dir_all(&modules_parent)
            .map_err(io_err(format!("creating {}", modules_parent.display())))?;
        fs::rename(modules_src, &kernel.modules)
            .map_err(io_err(format!("moving {}", modules_src.display())))?;
        fs::remove_dir_all(&root).map_err(io_err(format!("removing {}", root.display())))?;
        run_tool(Command::new("depmod").arg("-b").arg(&tmp).arg(&pin.release))?;
        fs::write(tmp.join("pin"), fingerprint(pin))
            .map_err(io_err(format!("writing {}/pin", tmp.display())))?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir)
                .map_err(io_err(format!("removing stale {}", final_dir.display())))?;
        }
        fs::rename(&tmp, &final_dir).map_err(io_err(format!(
            "renaming {} to {}",
            tmp.display(),
            final_dir.display()
        )))?;
        Ok(kernel_at(&final_dir, pin))
    }
}

fn kernel_at(dir: &Path, pin: &KernelPin) -> Kernel {
    Kernel {
        name: pin.name.clone(),
        release: pin.release.clone(),
        vmlinux: dir.join("vmlinux"),
        modules: dir.join("lib/modules").join(&pin.release),
    }
}

/// What a cached tree was made from; a different pin means refetch.
fn fingerprint(pin: &KernelPin) -> String {
    let mut s = format!(
        "{} {} {} {}\n",
        pin.name, pin.archive, pin.suite, pin.release
    );
    for p in &pin.packages {
        s.push_str(&format!("{} {} {}\n", p.name, p.version, p.sha256));
    }
    s
}

/// SHA-256 of a file as lowercase hex.
///
/// # Errors
/// The file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Runs a command with inherited stdout (progress) and captured stderr for errors.
fn run_tool(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(io_err(format!("starting {line}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        return Err(Error::Tool {
            command: line,
            detail: format!(
                "{}: {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An APT configuration of our own: sources, lists and caches under one directory.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(dir: &Path, pin: &KernelPin) -> Result<PrivateApt> {
        for sub in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let sources = format!(
            "deb [arch=amd64 signed-by={KEYRING}] {} {} main\n",
            pin.archive, pin.suite
        );
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))
        };
        write("etc/sources.list", &sources)?;
        if !dir.join("state/status").exists() {
            write("state/status", "")?;
        }
        Ok(PrivateApt {
            dir: dir.to_owned(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let mut cmd = Command::new(program);
        for (key, value) in [
            ("Dir::Etc", d("etc")),
            ("Dir::Etc::sourcelist", d("etc/sources.list")),
            ("Dir::Etc::sourceparts", "-".into()),
            ("Dir::Etc::parts", d("etc/apt.conf.d")),
            ("Dir::Etc::preferencesparts", d("etc/preferences.d")),
            ("Dir::State", d("state")),
            ("Dir::State::status", d("state/status")),
            ("Dir::Cache", d("cache")),
            ("Debug::NoLocking", "1".into()),
            ("APT::Architecture", "amd64".into()),
            ("APT::Architectures", "amd64".into()),
            ("APT::Sandbox::User", "root".into()),
            ("Acquire::Languages", "none".into()),
            (
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled",
                "false".into(),
            ),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    fn update(&self) -> Result<()> {
        eprintln!(
            "lab-vm: apt-get update (private configuration in {})",
            self.dir.display()
        );
        run_tool(self.command("apt-get").args(["-q", "update"])).map(drop)
    }

    /// The SHA-256 and size in bytes the archive index gives for the pinned version, or
    /// [`Error::PinGone`].
    fn index_entry(&self, pin: &KernelPin, p: &PackagePin) -> Result<(String, Option<u64>)> {
        let show = self
            .command("apt-cache")
            .arg("show")
            .arg(format!("{}={}", p.name, p.version))
            .output();
        if let Some(entry) = show
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| index_fields(&String::from_utf8_lossy(&o.stdout)))
        {
            return Ok(entry);
        }
        let madison = self
            .command("apt-cache")
            .arg("madison")
            .arg(&p.name)
            .output();
        let versions: Vec<String> = madison
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.split('|').nth(1))
                    .map(|v| v.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        Err(Error::PinGone(Box::new(crate::PinGone {
            kernel: pin.name.clone(),
            package: p.name.clone(),
            version: p.version.clone(),
            archive: pin.archive.clone(),
            suite: pin.suite.clone(),
            available: if versions.is_empty() {
                "none".into()
            } else {
                versions.join(", ")
            },
        })))
    }

    /// `apt-get download` into a scratch directory, then moves the .deb to `dest`. Shows a
    /// progress bar over `size` bytes on a terminal (the file's growth, polled), log lines
    /// otherwise.
    fn download(&self, p: &PackagePin, size: Option<u64>, dest: &Path) -> Result<()> {
        let scratch = self.dir.join("download");
        if scratch.exists() {
            fs::remove_dir_all(&scratch)
                .map_err(io_err(format!("removing {}", scratch.display())))?;
        }
        fs::create_dir_all(&scratch).map_err(io_err(format!("creating {}", scratch.display())))?;
        let what = format!("{}={}", p.name, p.version);
        let errors = self.dir.join("download.err");
        let err_file =
            File::create(&errors).map_err(io_err(format!("creating {}", errors.display())))?;
        let mut child = self
            .command("apt-get")
            .arg("-q")
            .arg("download")
            .arg(&what)
            .current_dir(&scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .spawn()
            .map_err(io_err("starting apt-get download"))?;
        let bar = progress_bar(&what, size);
        let status =
            poll_download(&scratch, &mut child, &mut |bytes| bar.set_position(bytes)).map_err(
                io_err(format!("downloading {what} into {}", scratch.display())),
            )?;
        bar.finish_and_clear();
        if !status.success() {
            let detail = fs::read_to_string(&errors).unwrap_or_default();
            return Err(Error::Tool {
                command: format!("apt-get download {what}"),
                detail: format!("{status}: {}", detail.trim()),
            });
        }
        let deb = fs::read_dir(&scratch)
            .map_err(io_err(format!("listing {}", scratch.display())))?
            .flatten()
            .map(|e| e.path())
            .find(|f| f.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| Error::Kernel(format!("apt-get download {what} produced no .deb")))?;
        let bytes = fs::metadata(&deb).map(|m| m.len()).unwrap_or_default();
        eprintln!("lab-vm: downloaded {what} ({:.1} MB)", bytes as f64 / 1e6);
        fs::rename(&deb, dest).map_err(io_err(format!(
            "moving {} to {}",
            deb.display(),
            dest.display()
        )))
    }
}

/// `SHA256:` and `Size:` of the first stanza of `apt-cache show` output; `None` without a
/// digest.
fn index_fields(show: &str) -> Option<(String, Option<u64>)> {
    let stanza = show.split("\n\n").next()?;
    let field = |name: &str| {
        stanza
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let sha = field("SHA256:")?;
    Some((sha, field("Size:").and_then(|s| s.parse().ok())))
}

/// A byte progress bar for downloading `what` (hidden when standard error is not a terminal,
/// where a log line says what is being downloaded instead).
fn progress_bar(what: &str, size: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    if bar.is_hidden() {
        eprintln!("lab-vm: downloading {what}");
    }
    bar.set_style(download_style());
    bar.set_message(what.to_owned());
    bar
}

/// The download bar: bar, bytes so far of the total, rate, then the package (cut to the
/// terminal's width, so the line never wraps).
fn download_style() -> ProgressStyle {
    ProgressStyle::with_template("[{bar:20}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}")
        .expect("the download bar template is valid")
        .progress_chars("=> ")
}

/// Waits for `child` (a download into `dir`), reporting the bytes of the files in `dir` to
/// `progress` every 100 ms and once at the end.
fn poll_download(
    dir: &Path,
    child: &mut Child,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<std::process::ExitStatus> {
    let bytes = || -> u64 {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(fs::Metadata::is_file)
            .map(|m| m.len())
            .sum()
    };
    loop {
        if let Some(status) = child.try_wait()? {
            progress(bytes());
            return Ok(status);
        }
        progress(bytes());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_digest_and_size_of_the_first_stanza() {
        let show = "Package: linux-image-x\nVersion: 1\nSize: 70560688\nSHA256: abc\n\n\
                    Package: linux-image-x\nVersion: 1\nSize: 5\nSHA256: def\n";
        assert_eq!(index_fields(show), Some(("abc".into(), Some(70_560_688))));
        assert_eq!(
            index_fields("Package: x\nSHA256: abc\n"),
            Some(("abc".into(), None))
        );
        assert_eq!(index_fields("Package: x\nSize: 5\n"), None);
    }

    #[test]
    fn download_progress_follows_the_growing_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sh")
            .args([
                "-c",
                "head -c 1000 /dev/zero > f.deb; sleep 0.5; head -c 3000 /dev/zero >> f.deb",
            ])
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let mut seen = Vec::new();
        let status = poll_download(dir.path(), &mut child, &mut |b| seen.push(b)).unwrap();
        assert!(status.success());
        assert!(seen.is_sorted(), "{seen:?}");
        assert!(seen.contains(&1000), "the partial file was seen: {seen:?}");
        assert_eq!(seen.last(), Some(&4000));
        // The bar's template parses (it panics otherwise).
        let bar = ProgressBar::hidden();
        bar.set_style(download_style());
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("abc");
        fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(
            sha256_file(&dir.path().join("none"))
                .unwrap_err()
                .to_string()
                .contains("none")
        );
    }
}
