# DisGraFS eBPF Lab — every recipe does real work; `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The demo lab behind `just lab up` / `just lab down`: DisGraFS deployed on client, server
# and tagger nodes joined by a bridge that the host shares (UI at http://10.79.0.2:8080/).
demo := "scenarios/topologies/disgrafs.toml"

# Install everything a fresh Debian 12 machine needs (idempotent)
setup:
    ./setup

# The lab CLI: `just lab up|down` (demo lab), or any subcommand (plan, up FILE, status, exec, run)
# `just lab up` builds the lab's images first when a container engine answers, so the demo's
# services run in containers; without one they run as processes in the nodes' namespaces.
lab *ARGS:
    @cargo build --quiet --release -p disgrafs-server -p disgrafs-tagger
    @if [ "{{ARGS}}" = up ] && docker version >/dev/null 2>&1; then cargo run --quiet --release -p lab -- images build; fi
    @cargo run --quiet --release -p lab -- {{ if ARGS == "up" { "up " + demo } else if ARGS == "down" { "down disgrafs" } else { ARGS } }}

# The accelerator CLI, e.g. `just accel monitor stats --iface eth0`
accel *ARGS:
    @cargo run --quiet --release -p accel -- {{ARGS}}

# Every test (as root: namespaces, veths, BPF programs), then a check that nothing leaked.
# The binaries that tests start are built first, so no test's timeout includes a cold build:
# DisGraFS services for `[deploy]` labs (debug) and for `lab images build` (static musl), and
# the release `accel` of the kernel matrix test.
test *ARGS:
    cargo build --quiet -p disgrafs-server -p disgrafs-tagger
    CC_x86_64_unknown_linux_musl=musl-gcc cargo build --quiet --release --target x86_64-unknown-linux-musl -p disgrafs-server -p disgrafs-tagger
    cargo build --quiet --release -p accel
    tools/leak-check -- cargo nextest run --no-fail-fast {{ARGS}}

# cargo fmt --check, clippy -D warnings (eBPF crate: host check with panic=abort)
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
    CARGO_TARGET_DIR=target/ebpf-clippy RUSTFLAGS="-C panic=abort" cargo clippy -p ebpf-programs -- -D warnings

# Format the code
fmt:
    cargo fmt --all

# Every accelerator's smoke test on every kernel of the matrix (QEMU; TCG here): table in target/lab-vm-matrix/
matrix *ARGS:
    cargo run --quiet --release -p lab-vm -- matrix --out target/lab-vm-matrix {{ARGS}}

# An issue's acceptance check (tools/check/NAME; `just check` lists them), e.g. `just check lab-core`
check NAME="" *ARGS:
    @if [ -z "{{NAME}}" ]; then ls tools/check; else tools/check/{{NAME}} {{ARGS}}; fi

# star-100 `lab up`/`lab down` against the iproute2 floor, side by side (ratios)
bench-lab ROUNDS="5":
    cargo build --quiet --release -p lab
    tools/bench-lab {{ROUNDS}}
