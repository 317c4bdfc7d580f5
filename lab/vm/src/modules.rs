//! Kernel module dependency resolution from `modules.dep` (and `modules.builtin`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::{Error, Result, io_err};

/// The parsed `modules.dep` of one kernel plus its built-in module names.
#[derive(Debug, Clone, Default)]
pub struct ModuleDeps {
    /// Normalized module name → (path relative to the modules directory, dependency paths).
    entries: HashMap<String, (PathBuf, Vec<PathBuf>)>,
    builtin: HashSet<String>,
    origin: String,
}

/// A module name as the kernel sees it: file stem without `.ko[.xz|.zst|.gz]`, `-` → `_`.
pub fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy())
        .unwrap_or_default();
    let stem = file.split(".ko").next().unwrap_or_default();
    stem.replace('-', "_")
}

impl ModuleDeps {
    /// Reads `modules.dep` and (if present) `modules.builtin` from a modules directory
    /// (`.../lib/modules/<release>`).
    ///
    /// # Errors
    /// A missing or malformed `modules.dep`.
    pub fn load(modules_dir: &Path) -> Result<ModuleDeps> {
        let dep_path = modules_dir.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path)
            .map_err(io_err(format!("reading {}", dep_path.display())))?;
        let builtin =
            std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
        ModuleDeps::parse(&dep, &builtin, &dep_path.display().to_string())
    }

    /// Parses `modules.dep` text (`path: dep dep ...` per line) and `modules.builtin` text
    /// (one path per line); `origin` names the source in errors.
    ///
    /// # Errors
    /// A non-empty line without the `:` separator (named by line number).
    pub fn parse(dep: &str, builtin: &str, origin: &str) -> Result<ModuleDeps> {
        let mut entries = HashMap::new();
        for (i, line) in dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((module, deps)) = line.split_once(':') else {
                return Err(Error::Module(format!(
                    "{origin}:{}: no ':' in {line:?}",
                    i + 1
                )));
            };
            let module = PathBuf::from(module.trim());
            let deps = deps.split_whitespace().map(PathBuf::from).collect();
            entries.insert(module_name(&module), (module, deps));
        }
        let builtin = builtin
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| module_name(Path::new(l.trim())))
            .collect();
        Ok(ModuleDeps {
            entries,
            builtin,
            origin: origin.to_owned(),
        })
    }

    /// Whether `name` is built into the kernel image.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    /// The module files to load, in load order (dependencies first, each once), for the
    /// `wanted` module names. Built-in modules are skipped.
    ///
    /// # Errors
    /// A name that is neither a module nor built in; a dependency that has no entry of its own;
    /// a dependency cycle.
    pub fn resolve<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Vec<PathBuf>> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in wanted {
            let name = name.as_ref().replace('-', "_");
            if self.is_builtin(&name) {
                continue;
            }
            if !self.entries.contains_key(&name) {
                return Err(Error::Module(format!(
                    "module {name:?} is neither in {} nor built in (is it enabled in this kernel's config?)",
                    self.origin
                )));
            }
            self.visit(&name, &mut Vec::new(), &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        stack: &mut Vec<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(Error::Module(format!(
                "{}: dependency cycle {} -> {name}",
                self.origin,
                stack.join(" -> ")
            )));
        }
        let Some((path, deps)) = self.entries.get(name) else {
            let needed_by = stack.last().map_or("the request", String::as_str);
            return Err(Error::Module(format!(
                "{}: {needed_by} depends on {name:?}, which has no entry",
                self.origin
            )));
        };
        stack.push(name.to_owned());
        // modules.dep lists dependencies so that loading them in reverse order works.
        for dep in deps.iter().rev() {
            self.visit(&module_name(dep), stack, done, order)?;
        }
        stack.pop();
        done.insert(name.to_owned());
        order.push(path.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko:
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
kernel/net/sched/sch-netem.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
kernel/c.ko: kernel/missing.ko
";

    fn deps() -> ModuleDeps {
        ModuleDeps::parse(
            DEP,
            "kernel/drivers/char/virtio_console.ko\n",
            "syn/modules.dep",
        )
        .unwrap()
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths.iter().map(|p| module_name(p)).collect()
    }

    #[test]
    fn resolves_dependencies_first_once_and_skips_builtins() {
        let order = deps()
            .resolve(&[
                "virtio_net",
                "virtio_console",
                "9p",
                "9pnet_virtio",
                "sch_netem",
            ])
            .unwrap();
        assert_eq!(
            names(&order),
            [
                "failover",
                "net_failover",
                "virtio_net",
                "netfs",
                "9pnet",
                "9p",
                "9pnet_virtio",
                "sch_netem"
            ]
        );
        assert_eq!(order[0], Path::new("kernel/net/core/failover.ko.xz"));
        assert_eq!(order[7], Path::new("kernel/net/sched/sch-netem.ko"));
    }

    #[test]
    fn reports_unknown_modules_cycles_and_dangling_dependencies() {
        let e = deps().resolve(&["nosuch"]).unwrap_err().to_string();
        assert!(
            e.contains("\"nosuch\"") && e.contains("syn/modules.dep"),
            "{e}"
        );
        let e = deps().resolve(&["a"]).unwrap_err().to_string();
        assert!(e.contains("cycle a -> b -> a"), "{e}");
        let e = deps().resolve(&["c"]).unwrap_err().to_string();
        assert!(e.contains("c depends on \"missing\""), "{e}");
        let e = ModuleDeps::parse("ok.ko:\nbroken line\n", "", "x.dep")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.dep:2"), "{e}");
    }

    #[test]
    fn loads_from_a_synthetic_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), DEP).unwrap();
        let d = ModuleDeps::load(dir.path()).unwrap();
        assert!(!d.is_builtin("virtio_console"));
        assert_eq!(
            names(&d.resolve(&["9p"]).unwrap()),
            ["netfs", "9pnet", "9p"]
        );
        let e = ModuleDeps::load(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope/modules.dep"), "{e}");
    }
}
