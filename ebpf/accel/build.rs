//! Builds the eBPF programs (`ebpf-programs`, one ELF object per accelerator) for
//! `bpfel-unknown-none` with Debian's rustc-web, linked into `debian-web` by `./setup`.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The rustup toolchain `./setup` links to /usr (rustc-web + a prebuilt bpf `core`).
const EBPF_TOOLCHAIN: &str = "debian-web";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let programs = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "ebpf-programs")
        .ok_or_else(|| anyhow!("package ebpf-programs not found in the workspace"))?;
    let root_dir = programs
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", programs.manifest_path))?;

    // aya-ebpf uses one unstable feature on the bpf target and rustc-web is a stable compiler:
    // allow unstable features for that crate only. A value other than "1" also keeps aya-build
    // from adding `-Z build-std` (the toolchain ships a prebuilt `core`; there is no rust-src).
    // SAFETY: build scripts are single-threaded here; only the inner eBPF build inherits it.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };
    aya_build::build_ebpf(
        [Package {
            name: programs.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF programs (run ./setup if the debian-web toolchain or bpf-linker is missing)")
}
