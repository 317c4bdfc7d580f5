use std::{io, path::PathBuf};

/// What went wrong, naming the accelerator object, program, map or path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ELF object could not be parsed or its maps could not be created.
    #[error("loading the {object} eBPF object")]
    Load {
        /// Which accelerator's object.
        object: &'static str,
        /// Why.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program is missing, was rejected by the verifier, or could not be attached.
    #[error("{action} program {program}")]
    Program {
        /// What was being done (load, attach to eth0, ...).
        action: String,
        /// The program's name in the object.
        program: &'static str,
        /// Why.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map is missing or could not be read.
    #[error("map {map}")]
    Map {
        /// The map's name in the object (or its pin path).
        map: String,
        /// Why.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A program or map exists in the object under another type than expected.
    #[error("{name} is missing from the {object} object or has an unexpected type")]
    WrongType {
        /// Which accelerator's object.
        object: &'static str,
        /// The program or map name.
        name: &'static str,
    },
    /// A link or map could not be pinned, or opened from its pin.
    #[error("pinning or opening the pin {path}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No interface of that name in the current network namespace.
    #[error("no network interface named {0:?} in this network namespace")]
    NoInterface(String),
    /// Nothing of this accelerator is pinned at the expected place.
    #[error("{accelerator} is not attached here: nothing pinned at {path}")]
    NotAttached {
        /// The accelerator.
        accelerator: &'static str,
        /// Where its pins were expected.
        path: PathBuf,
    },
    /// The accelerator is already attached (pinned) at that place.
    #[error("{accelerator} is already attached: {path} exists (detach it first)")]
    AlreadyAttached {
        /// The accelerator.
        accelerator: &'static str,
        /// Its pin directory.
        path: PathBuf,
    },
    /// bpffs is not mounted where pins should go.
    #[error("{0} is not on a BPF file system (mount -t bpf bpf /sys/fs/bpf, or run ./setup)")]
    NoBpffs(PathBuf),
    /// A policy file could not be read, parsed or validated.
    #[error("policy file {}: {message}", path.display())]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// What is wrong and where (line and column, or the rule).
        message: String,
    },
    /// A packet capture could not be read or is not a classic Ethernet pcap.
    #[error("capture file {}: {message}", path.display())]
    Capture {
        /// The capture file.
        path: PathBuf,
        /// What is wrong and where (byte offset, record number).
        message: String,
    },
    /// An accelerator's configuration is invalid.
    #[error("{accelerator} configuration: {message}")]
    Config {
        /// The accelerator.
        accelerator: &'static str,
        /// What is wrong.
        message: String,
    },
    /// `BPF_PROG_TEST_RUN` left the program's counters in an unexpected state.
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(String),
    /// Any other file-system error, with its path.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
