//! `env.json`: the machine and software a report was measured with.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where and with what a report was measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Env {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cores: usize,
    /// Version of the `lab` crate.
    pub lab_version: String,
    /// Versions of the crates that shape a measurement (aya, tokio, hdrhistogram, …), as
    /// locked in `Cargo.lock` when `lab` was built.
    #[serde(default)]
    pub crates: BTreeMap<String, String>,
    /// First line of `--version` of each external tool found on this machine that a lab can
    /// use (reference benchmarks, services, QEMU); tools that are not installed are left out.
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
    /// Git commit of the scenario's checkout, with `-dirty` when it has changes; `None`
    /// outside a git work tree.
    pub git_rev: Option<String>,
    /// SHA-256 of the scenario file, in hex.
    pub scenario_sha256: String,
    /// The scenario's seed.
    pub seed: u64,
    /// The kernel each VM node of the lab booted: matrix name and release, e.g.
    /// `"6.12 (6.12.118+deb13-amd64)"`, by node (empty without VM nodes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vm_kernels: BTreeMap<String, String>,
}

impl Env {
    /// Describes this machine, for the scenario file with contents `scenario` in directory
    /// `dir`, run with `seed`.
    pub fn collect(scenario: &[u8], dir: &Path, seed: u64) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        Self {
            kernel,
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            lab_version: env!("CARGO_PKG_VERSION").to_owned(),
            crates: locked_crates(),
            tools: tool_versions(),
            git_rev: git_rev(dir),
            scenario_sha256: sha256_hex(scenario),
            seed,
            vm_kernels: BTreeMap::new(),
        }
    }
}

/// `name=version` pairs written by `build.rs` from `Cargo.lock`.
fn locked_crates() -> BTreeMap<String, String> {
    env!("LAB_LOCKED_CRATES")
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, version)| (name.to_owned(), version.to_owned()))
        .collect()
}

/// External tools a lab or its reference measurements run, with the argument that makes each
/// print its version.
const TOOLS: &[(&str, &str)] = &[
    ("iperf3", "--version"),
    ("sockperf", "--version"),
    ("redis-server", "--version"),
    ("juicefs", "--version"),
    ("qemu-system-x86_64", "--version"),
    ("bpftool", "--version"),
];

fn tool_versions() -> BTreeMap<String, String> {
    TOOLS
        .iter()
        .filter_map(|(tool, arg)| {
            let out = Command::new(tool)
                .arg(arg)
                .stdin(Stdio::null())
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(if out.stdout.is_empty() {
                &out.stderr
            } else {
                &out.stdout
            })
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())?
            .to_owned();
            Some(((*tool).to_owned(), text))
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn git_rev(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let rev = git(&["rev-parse", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_describes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let env = Env::collect(b"abc", Path::new("/"), 7);
        assert_eq!(env.seed, 7);
        assert!(env.cores >= 1);
        assert!(!env.kernel.is_empty());
        assert_eq!(env.crates.get("aya").map(String::as_str), Some("0.14.0"));
        assert!(env.crates.contains_key("hdrhistogram"));
        assert!(env.tools.values().all(|v| !v.is_empty()));
        assert_eq!(git_rev(Path::new("/proc")), None);
    }
}
