//! Records the locked versions of the crates that shape a measurement, for `env.json`.

use std::path::Path;

/// Crates whose version belongs in a report's environment.
const RECORDED: &[&str] = &[
    "aya",
    "aya-obj",
    "tokio",
    "hdrhistogram",
    "rtnetlink",
    "netlink-packet-route",
];

fn main() {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let mut found = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(n), Some(v)) = (name, line.strip_prefix("version = ")) {
            if RECORDED.contains(&n) {
                found.push(format!("{n}={}", v.trim_matches('"')));
            }
            name = None;
        }
    }
    found.sort();
    found.dedup();
    println!("cargo:rustc-env=LAB_LOCKED_CRATES={}", found.join(","));
}
