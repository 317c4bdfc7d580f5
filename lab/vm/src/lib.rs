//! QEMU VMs for the DisGraFS lab.
//!
//! - [`matrix`]: the kernel matrix (`vm-images/kernels.toml`): Debian kernels pinned by version.
//! - [`fetch`]: downloads pinned kernels through a private APT configuration into a cache.
//! - [`initramfs`]: builds a newc initramfs with busybox, an init, modules and the guest agent.
//! - [`vm`]: boots QEMU (TCG unless KVM provably works), talks to the agent, powers off and
//!   scans the console for kernel splats.
//! - [`smoke`]: the accelerators' smoke tests as data (`vm-images/smoke.toml`).
//! - [`matrix_run`]: `lab-vm matrix`, every smoke test on every kernel, and the program ×
//!   kernel table (Markdown and JSON).
//!
//! The guest agent's protocol is documented in the `lab_vm_agent` crate.

pub mod cpio;
pub mod fetch;
pub mod initramfs;
pub mod matrix;
pub mod matrix_run;
pub mod modules;
pub mod smoke;
pub mod vm;
pub mod vmlinux;

use std::io;
use std::path::PathBuf;

pub use fetch::{Cache, Kernel};
pub use initramfs::InitramfsSpec;
pub use matrix::{KernelPin, Matrix, PackagePin};
pub use smoke::SmokeTests;
pub use vm::{Accel, Agent, CommandOutput, Nic, Vm, VmConfig};

/// Everything that can go wrong in this crate; every variant names what and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or device operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path involved.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The kernel matrix file is malformed or inconsistent.
    #[error("{0}")]
    Matrix(String),
    /// A pinned package version is no longer in the archive.
    #[error("{0}")]
    PinGone(Box<PinGone>),
    /// A downloaded file does not have the expected SHA-256.
    #[error("{file}: sha256 is {actual}, expected {expected} ({origin})")]
    Checksum {
        /// The file checked.
        file: PathBuf,
        /// The expected digest.
        expected: String,
        /// The digest found.
        actual: String,
        /// Where the expected digest comes from.
        origin: String,
    },
    /// An external tool failed.
    #[error("{command} failed: {detail}")]
    Tool {
        /// The command line (or its program and key arguments).
        command: String,
        /// Exit status and the tail of its error output.
        detail: String,
    },
    /// An unpacked kernel tree or image is not what was expected.
    #[error("{0}")]
    Kernel(String),
    /// A kernel module could not be resolved.
    #[error("{0}")]
    Module(String),
    /// The VM did not come up, or died.
    #[error("{message}\n--- last console lines ({console}) ---\n{tail}")]
    Boot {
        /// What happened.
        message: String,
        /// Path of the console log.
        console: PathBuf,
        /// The last lines of the console.
        tail: String,
    },
    /// Talking to the guest agent failed.
    #[error("guest agent: {0}")]
    Agent(#[from] lab_vm_agent::ProtocolError),
    /// The guest console shows a kernel warning, bug, oops or call trace.
    #[error("kernel splat in {console}:{line_no}: {line}")]
    Splat {
        /// Path of the console log.
        console: PathBuf,
        /// 1-based line number of the first offending line.
        line_no: usize,
        /// The offending line.
        line: String,
    },
}

/// Details of [`Error::PinGone`].
#[derive(Debug, thiserror::Error)]
#[error(
    "kernel {kernel:?}: pinned package {package}={version} is no longer in {archive} {suite} \
     (versions there now: {available}); update its pin in vm-images/kernels.toml"
)]
pub struct PinGone {
    /// Matrix name of the kernel.
    pub kernel: String,
    /// Debian package name.
    pub package: String,
    /// The pinned version.
    pub version: String,
    /// Archive URL.
    pub archive: String,
    /// Archive suite.
    pub suite: String,
    /// Versions of the package the archive still has (or "none").
    pub available: String,
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds a closure that wraps an `io::Error` with context (used with `map_err`).
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
