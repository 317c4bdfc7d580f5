//! Builds the guest agent (`lab/vm/agent`) as a static binary for `x86_64-unknown-linux-musl`
//! and tells the library where it is (`LAB_VM_AGENT_BIN`), so `lab-vm` can embed it in
//! initramfs images. Needs `rustup target add x86_64-unknown-linux-musl`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-musl";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let agent = manifest_dir.join("agent");
    for path in ["Cargo.toml", "src"] {
        println!("cargo::rerun-if-changed={}", agent.join(path).display());
    }
    let target_dir = out_dir.join("agent-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--package",
        "lab-vm-agent",
        "--bin",
        "lab-vm-agent",
        "--target",
        TARGET,
    ])
    .arg("--manifest-path")
    .arg(agent.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    // Flags meant for the outer build (clippy's wrapper, host rustflags) must not leak in.
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTC_WRAPPER")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_BUILD_TARGET")
    .env_remove("CARGO_TARGET_DIR");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build the guest agent: {e}"));
    assert!(
        status.success(),
        "building the guest agent for {TARGET} failed ({status}); is the target installed? \
         run: rustup target add {TARGET}"
    );
    let bin = target_dir.join(TARGET).join("release").join("lab-vm-agent");
    println!("cargo::rustc-env=LAB_VM_AGENT_BIN={}", bin.display());
}
