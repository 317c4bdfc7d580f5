//! Where accelerators pin their links and maps in bpffs, and how those pins are removed.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::{Error, Result};

/// The default bpffs mount point.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The default name prefix of the lab's kernel objects.
pub const DEFAULT_PREFIX: &str = "dgl";
/// `statfs` magic number of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin tree of one lab prefix: `<bpffs>/<prefix>/<accelerator>/<scope>/<interface>/`.
///
/// `scope` tells apart interfaces of the same name in different network namespaces: it is the
/// namespace's name, or `host` for the initial one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    /// The pin tree for `prefix` under the bpffs mounted at `bpffs`.
    pub fn new(bpffs: impl AsRef<Path>, prefix: &str) -> Self {
        Self {
            root: bpffs.as_ref().join(prefix),
        }
    }

    /// The root of this prefix's pins, `<bpffs>/<prefix>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding one attachment's pins.
    pub fn attachment_dir(&self, accelerator: &str, scope: &str, iface: &str) -> PathBuf {
        self.root.join(accelerator).join(scope).join(iface)
    }

    /// Creates `dir` (and its parents) for new pins, after checking that it lies on bpffs and
    /// holds nothing yet.
    pub(crate) fn create_attachment_dir(
        &self,
        accelerator: &'static str,
        dir: &Path,
    ) -> Result<()> {
        let bpffs = self.root.parent().unwrap_or(&self.root);
        let on_bpffs = rustix::fs::statfs(bpffs)
            .map(|st| st.f_type == BPF_FS_MAGIC)
            .unwrap_or(false);
        if !on_bpffs {
            return Err(Error::NoBpffs(bpffs.to_owned()));
        }
        if dir.exists() {
            return Err(Error::AlreadyAttached {
                accelerator,
                path: dir.to_owned(),
            });
        }
        fs::create_dir_all(dir).map_err(Error::io(dir))
    }

    /// Makes `dir` for a new attachment and runs `pin` to attach and pin into it; if that
    /// fails, removes the directory again, so nothing is left half pinned (handles that were
    /// not pinned detach when `pin` drops them).
    pub(crate) fn pin_attachment(
        &self,
        accelerator: &'static str,
        dir: PathBuf,
        pin: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PinnedDir> {
        self.create_attachment_dir(accelerator, &dir)?;
        if let Err(e) = pin(&dir) {
            self.remove_attachment_dir(&dir)?;
            return Err(e);
        }
        Ok(PinnedDir {
            dir,
            layout: self.clone(),
        })
    }

    /// The attachment pinned at `dir`, recognised by its `marker` pin.
    pub(crate) fn open_attachment(
        &self,
        accelerator: &'static str,
        dir: PathBuf,
        marker: &str,
    ) -> Result<PinnedDir> {
        if !dir.join(marker).exists() {
            return Err(Error::NotAttached {
                accelerator,
                path: dir,
            });
        }
        Ok(PinnedDir {
            dir,
            layout: self.clone(),
        })
    }

    /// Removes the pin files in `dir`, then `dir` and every parent that became empty, up to and
    /// including this layout's root. Unpinning a link detaches its program once no process
    /// holds it open.
    pub fn remove_attachment_dir(&self, dir: &Path) -> Result<()> {
        for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
            let path = entry.map_err(Error::io(dir))?.path();
            fs::remove_file(&path).map_err(Error::io(&path))?;
        }
        let mut current = Some(dir);
        while let Some(d) = current.filter(|d| d.starts_with(&self.root)) {
            match fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => break,
                Err(e) => return Err(Error::io(d)(e)),
            }
            current = d.parent();
        }
        Ok(())
    }
}

/// The pins of one attachment: where they are, and how they go away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedDir {
    dir: PathBuf,
    layout: PinLayout,
}

impl PinnedDir {
    /// The directory holding the pins.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The pin tree it belongs to.
    pub(crate) fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// The pin called `file`.
    pub(crate) fn join(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Detaches the pinned `links` at once (`BPF_LINK_DETACH`), then removes every pin: the
    /// kernel frees programs and maps once nothing else holds them.
    pub(crate) fn detach(self, links: &[&str]) -> Result<()> {
        for link in links {
            crate::object::detach_pinned_link(&self.dir.join(link))?;
        }
        self.layout.remove_attachment_dir(&self.dir)
    }
}

impl Default for PinLayout {
    fn default() -> Self {
        Self::new(BPFFS, DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_dirs_are_scoped_by_namespace_and_interface() {
        let layout = PinLayout::new("/sys/fs/bpf", "dgl");
        assert_eq!(
            layout.attachment_dir("monitor", "host", "eth0"),
            Path::new("/sys/fs/bpf/dgl/monitor/host/eth0")
        );
        assert_ne!(
            layout.attachment_dir("monitor", "ns1", "eth0"),
            layout.attachment_dir("monitor", "ns2", "eth0")
        );
    }

    #[test]
    fn pins_outside_bpffs_are_refused() {
        let dir = std::env::temp_dir().join(format!("accel-pin-test-{}", std::process::id()));
        let layout = PinLayout::new(&dir, "dgl");
        let err = layout
            .create_attachment_dir("monitor", &layout.attachment_dir("monitor", "host", "lo"))
            .unwrap_err();
        assert!(matches!(err, Error::NoBpffs(_)), "{err}");
        assert!(!dir.exists());
    }
}
