//! Lab state files: what a lab that is up (or was being brought up) consists of.
//!
//! `lab up` writes the whole [`Plan`] to `<dir>/<prefix>/<lab>.json` *before* it creates the
//! first kernel object (an intent log): whatever a crash leaves behind is named in it, and
//! [`crate::apply::down`] removes it by working through the plan's teardown, tolerating objects
//! that were never made. The file is replaced atomically (write, fsync, rename).

use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::deploy::Deployed;
use crate::topology::Plan;

/// Where state files live by default (a tmpfs: a reboot, which removes all kernel state,
/// removes them too).
pub const DEFAULT_STATE_DIR: &str = "/run/disgrafs-lab";

/// How far `lab up` got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Objects are being created (or the process died while creating them).
    Applying,
    /// Every step of the plan succeeded.
    Up,
}

/// One lab's state file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    /// How far `lab up` got.
    pub phase: Phase,
    /// The process that brought it up.
    pub pid: u32,
    /// The topology file it came from.
    pub source: PathBuf,
    /// Everything the lab is made of, in creation order.
    pub plan: Plan,
    /// The services started in it (`[deploy]`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<Deployed>,
}

/// A directory of state files, one subdirectory per prefix.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// State files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The state file of lab `lab` with kernel-name prefix `prefix`.
    pub fn path(&self, prefix: &str, lab: &str) -> PathBuf {
        self.root.join(prefix).join(format!("{lab}.json"))
    }

    /// The directory holding the run directories of lab `lab`'s VM nodes (one per node).
    pub fn vm_dir(&self, prefix: &str, lab: &str) -> PathBuf {
        self.root.join(prefix).join(format!("{lab}.vm"))
    }

    /// The VM directories (see [`StateDir::vm_dir`]) of every lab of `prefix`, as
    /// (lab, directory) pairs.
    pub fn vm_dirs(&self, prefix: &str) -> io::Result<Vec<(String, PathBuf)>> {
        let entries = match fs::read_dir(self.root.join(prefix)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut dirs = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let lab = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".vm"))
                .map(str::to_owned);
            if let Some(lab) = lab
                && path.is_dir()
            {
                dirs.push((lab, path));
            }
        }
        dirs.sort();
        Ok(dirs)
    }

    /// The run directory of lab `lab`: logs and data of its services.
    pub fn run_dir(&self, prefix: &str, lab: &str) -> PathBuf {
        self.root.join(prefix).join(format!("{lab}.d"))
    }

    /// Writes `state` atomically.
    pub fn write(&self, state: &LabState) -> io::Result<()> {
        let path = self.path(&state.plan.prefix, &state.plan.lab);
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.json.tmp", state.plan.lab));
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(state).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    }

    /// Reads the state of `lab`, `None` if there is no state file.
    pub fn read(&self, prefix: &str, lab: &str) -> io::Result<Option<LabState>> {
        read_state(&self.path(prefix, lab))
    }

    /// Every lab state of `prefix`, sorted by lab name; unreadable files are reported as
    /// errors naming the file.
    pub fn list(&self, prefix: &str) -> io::Result<Vec<LabState>> {
        let dir = self.root.join(prefix);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut states = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let is_state = path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if is_state && let Some(state) = read_state(&path)? {
                states.push(state);
            }
        }
        states.sort_by(|a, b| a.plan.lab.cmp(&b.plan.lab));
        Ok(states)
    }

    /// Removes the state file of `lab`, and the prefix's directory once it is empty.
    pub fn remove(&self, prefix: &str, lab: &str) -> io::Result<()> {
        match fs::remove_file(self.path(prefix, lab)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for dir in [self.root.join(prefix), self.root.clone()] {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Default for StateDir {
    fn default() -> Self {
        Self::new(DEFAULT_STATE_DIR)
    }
}

fn read_state(path: &Path) -> io::Result<Option<LabState>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("state file {} is damaged: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Format, PlanOptions, parse};

    fn plan(name: &str) -> Plan {
        let text = format!(
            "name = \"{name}\"\n[nodes.a]\n[nodes.b]\n[[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n"
        );
        let loaded = parse("t.toml", &text, Format::Toml).expect("valid topology");
        Plan::new(&loaded.topology, &PlanOptions::default())
    }

    #[test]
    fn states_round_trip_list_and_remove() -> io::Result<()> {
        let root = std::env::temp_dir().join(format!("lab-state-test-{}", std::process::id()));
        let dir = StateDir::new(&root);
        for name in ["beta", "alpha"] {
            dir.write(&LabState {
                phase: Phase::Applying,
                pid: 1,
                source: "t.toml".into(),
                plan: plan(name),
                deployed: None,
            })?;
        }
        let listed = dir.list("dgl")?;
        assert_eq!(
            listed
                .iter()
                .map(|s| s.plan.lab.as_str())
                .collect::<Vec<_>>(),
            ["alpha", "beta"]
        );
        assert_eq!(dir.read("dgl", "alpha")?.as_ref(), listed.first());
        assert_eq!(dir.read("dgl", "gamma")?, None);

        fs::write(dir.path("dgl", "broken"), b"{")?;
        let err = dir.list("dgl").expect_err("a damaged file is an error");
        assert!(err.to_string().contains("broken.json"), "{err}");
        fs::remove_file(dir.path("dgl", "broken"))?;

        dir.remove("dgl", "alpha")?;
        dir.remove("dgl", "beta")?;
        assert!(!root.exists(), "empty state directories are removed");
        Ok(())
    }
}
