//! Shared by the `lab` binary's root tests: a lab under a unique name, with a temporary
//! directory of its own (the topology file and the state directory), taken down on drop — also
//! when the test fails.
//!
//! Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, ensure};

/// A topology under a unique lab name and state directory; `Drop` runs `lab down NAME` for it.
#[derive(Debug)]
pub struct TestLab {
    /// The lab's (unique) name.
    pub name: String,
    /// The kernel-name prefix its `lab` commands use.
    pub prefix: String,
    /// Its temporary directory: the topology file and `state/`.
    pub dir: PathBuf,
    /// The topology file.
    pub file: PathBuf,
    /// Extra environment for its `lab` commands.
    pub env: Vec<(String, String)>,
}

impl TestLab {
    /// The shipped topology `scenarios/topologies/FILE` (TOML or containerlab YAML) renamed to
    /// a unique lab, with the default prefix.
    pub fn shipped(file: &str) -> anyhow::Result<Self> {
        Self::shipped_with_prefix(file, "dgl")
    }

    /// [`TestLab::shipped`] with another prefix.
    pub fn shipped_with_prefix(file: &str, prefix: &str) -> anyhow::Result<Self> {
        let shipped = shipped_path(file);
        let text = std::fs::read_to_string(&shipped)
            .with_context(|| format!("reading {}", shipped.display()))?;
        let old = text
            .lines()
            .find_map(|line| {
                line.strip_prefix("name = \"")
                    .and_then(|rest| rest.strip_suffix('"'))
                    .or_else(|| line.strip_prefix("name: "))
            })
            .with_context(|| format!("{} has no name line", shipped.display()))?
            .to_owned();
        let name = testkit::unique_name();
        let renamed = text
            .replacen(
                &format!("name = \"{old}\""),
                &format!("name = \"{name}\""),
                1,
            )
            .replacen(&format!("name: {old}"), &format!("name: {name}"), 1);
        ensure!(renamed != text, "{}: name not replaced", shipped.display());
        Self::write(name, file, &renamed, prefix)
    }

    /// A TOML topology `body` (everything but its `name` line) under a unique name.
    pub fn toml(body: &str, prefix: &str) -> anyhow::Result<Self> {
        let name = testkit::unique_name();
        let text = format!("name = \"{name}\"\n{body}");
        Self::write(name, "topology.toml", &text, prefix)
    }

    fn write(name: String, file_name: &str, text: &str, prefix: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("lab-test-{name}"));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(file_name);
        std::fs::write(&file, text)?;
        Ok(Self {
            name,
            prefix: prefix.to_owned(),
            dir,
            file,
            env: Vec::new(),
        })
    }

    /// The lab's state directory (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The topology file's path as text.
    pub fn file_arg(&self) -> anyhow::Result<&str> {
        self.file.to_str().context("utf-8 path")
    }

    /// `lab ARGS` with this lab's state directory and prefix (put before a `--`).
    pub fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let state_dir = self.state_dir();
        let ours = [
            "--state-dir",
            state_dir.to_str().context("utf-8 path")?,
            "--prefix",
            &self.prefix,
        ];
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        let mut command = Command::new(env!("CARGO_BIN_EXE_lab"));
        command
            .args(&args[..split])
            .args(ours)
            .args(&args[split..])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(command)
    }

    /// Runs `lab ARGS` (see [`TestLab::command`]).
    pub fn lab(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.command(args)?.output()?)
    }

    /// Runs `lab ARGS`; fails with its output unless it succeeds; returns its stdout.
    pub fn lab_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        ok(self.lab(args)?, &format!("lab {args:?}"))
    }

    /// `lab up` of the topology file; returns its stdout.
    pub fn up(&self) -> anyhow::Result<String> {
        self.lab_ok(&["up", self.file_arg()?])
    }

    /// `lab exec NODE -- COMMAND`; returns its stdout.
    pub fn exec(&self, node: &str, command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", "--lab", &self.name, node, "--"];
        args.extend_from_slice(command);
        self.lab_ok(&args)
    }

    /// The network namespace of `node`.
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{}.{node}", self.prefix, self.name)
    }

    /// This lab's namespaces that exist now.
    pub fn namespaces_left(&self) -> anyhow::Result<Vec<String>> {
        let start = format!("{}-{}.", self.prefix, self.name);
        Ok(lab_netlink::Netns::list()?
            .into_iter()
            .filter(|n| n.starts_with(&start))
            .collect())
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = self.lab_ok(&["down", &self.name]) {
            eprintln!("cleanup of lab {}: {e}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `scenarios/topologies/FILE`.
pub fn shipped_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/topologies")
        .join(file)
}

/// `out`'s stdout when it succeeded; otherwise an error with its status, stdout and stderr.
pub fn ok(out: Output, what: &str) -> anyhow::Result<String> {
    ensure!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    Ok(lab_netlink::Netns::open(ns)?.run(f)?)
}
