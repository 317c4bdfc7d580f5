# DisGraFS eBPF Lab — every recipe does real work; `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Install everything a fresh Debian 12 machine needs (idempotent; a second run takes seconds).
setup:
    ./setup

# Run the lab CLI, e.g. `just lab plan scenarios/topologies/two-hosts.toml`.
lab *ARGS:
    cargo run --quiet --release -p lab -- {{ARGS}}

# Run the accelerator CLI, e.g. `just accel monitor stats --iface eth0`.
accel *ARGS:
    cargo run --quiet --release -p accel -- {{ARGS}}

# Every test (root: they make namespaces, veths and BPF programs), then prove nothing leaked.
test *ARGS:
    tools/leak-check -- cargo nextest run --no-fail-fast {{ARGS}}

# Formatting and clippy with warnings as errors (the eBPF crate is checked for the host with
# panic=abort in its own target dir: rustc-web ships no clippy for the bpf target).
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
    CARGO_TARGET_DIR=target/ebpf-clippy RUSTFLAGS="-C panic=abort" cargo clippy -p ebpf-programs -- -D warnings

# Format the code.
fmt:
    cargo fmt --all
