//! Lab nodes: where a node's interfaces live and how commands run inside it.
//!
//! Kinds: [`NetnsNode`], a named network namespace; [`ContainerNode`] (module [`container`]),
//! a container whose network namespace the lab names and wires the same way; [`vm::VmNode`], a
//! QEMU VM whose interfaces are taps in its node's namespace and whose commands go through its
//! guest agent.

use std::{
    fs::File,
    io,
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    process::{Command, Output},
};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

pub mod container;
pub mod vm;

pub use container::ContainerNode;

/// A node of a lab that is up.
pub trait Node {
    /// The node's name in the topology.
    fn name(&self) -> &str;
    /// The network namespace holding the node's lab interfaces.
    fn netns(&self) -> &str;
    /// Runs `program` with `args` inside the node and collects its output.
    fn run(&self, program: &str, args: &[String]) -> io::Result<Output>;
    /// Replaces this process with `program` running inside the node (for interactive use);
    /// returns only on failure.
    fn exec(&self, program: &str, args: &[String]) -> io::Error;
}

/// A node that is a named network namespace (`/run/netns/<netns>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsNode {
    name: String,
    netns: String,
}

impl NetnsNode {
    /// The node `name`, living in namespace `netns`.
    pub fn new(name: impl Into<String>, netns: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            netns: netns.into(),
        }
    }

    /// A command whose process enters the namespace (setns in the child, before exec): /sys
    /// is not remounted, so bpffs and cgroupfs stay as they are.
    fn command(&self, program: &str, args: &[String]) -> io::Result<Command> {
        let path = format!("/run/netns/{}", self.netns);
        let ns = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("node {}: {path}: {e}", self.name)))?;
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: the closure runs in the forked child before exec and only makes the setns
        // system call (async-signal-safe) on a descriptor opened before the fork.
        unsafe {
            command.pre_exec(move || {
                move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(io::Error::from)
            });
        }
        Ok(command)
    }
}

impl Node for NetnsNode {
    fn name(&self) -> &str {
        &self.name
    }

    fn netns(&self) -> &str {
        &self.netns
    }

    fn run(&self, program: &str, args: &[String]) -> io::Result<Output> {
        self.command(program, args)?.output()
    }

    fn exec(&self, program: &str, args: &[String]) -> io::Error {
        match self.command(program, args) {
            Ok(mut command) => command.exec(),
            Err(e) => e,
        }
    }
}
