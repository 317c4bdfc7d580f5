//! `lab images build`: the lab's container images, built locally (no registry is needed).
//!
//! Every image is `FROM scratch` with files copied from this machine:
//!
//! - `base`: busybox (static) as `/bin/busybox` and `/bin/sh`; sleeps until stopped;
//! - `storage`: base, plus Redis (Debian's), FalkorDB's redis-server and module and JuiceFS
//!   (from `setup`, under `/opt/disgrafs-lab`), each with the shared libraries it loads, at the
//!   paths they have here; `/start-storage` runs Redis on 6379 and FalkorDB on 6380;
//! - `server`, `tagger`: the DisGraFS server and tagger as static musl binaries.
//!
//! An image's *inputs* are its Dockerfile and the bytes, paths and modes of its files; their
//! SHA-256 names it `disgrafs-lab/NAME:in-<hash>`. That tag present means the image is up to
//! date and nothing is built; either way it is also tagged with the git revision
//! (`disgrafs-lab/NAME:<rev>`) and `latest`, which topologies use.

use std::{
    fmt,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};
use testcontainers::{
    GenericBuildableImage, bollard::query_parameters::TagImageOptions,
    core::build::build_options::BuildImageOptions, runners::AsyncBuilder as _,
};

use crate::node::container::{Engine, EngineError};

/// The repository every lab image lives in.
pub const REPOSITORY: &str = "disgrafs-lab";

/// The musl target the DisGraFS binaries are built for.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The lab's images, in build order.
pub const IMAGES: [&str; 4] = ["base", "storage", "server", "tagger"];

/// Why images could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name that is not one of [`IMAGES`].
    #[error("unknown image `{0}` (images: {list})", list = IMAGES.join(", "))]
    Unknown(String),
    /// An input file is missing or unreadable.
    #[error("input {path} of image {image}: {source}")]
    Input {
        /// The image.
        image: String,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A tool (cargo, ldd) failed.
    #[error("{0}")]
    Tool(String),
    /// The engine failed or cannot be reached.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Where build inputs come from.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The workspace (for `cargo build` and the git revision).
    pub workspace: PathBuf,
    /// Where `setup` installed JuiceFS and FalkorDB.
    pub tools: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            workspace: Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .to_owned(),
            tools: PathBuf::from(
                std::env::var_os("LAB_TOOLS_DIR").unwrap_or_else(|| "/opt/disgrafs-lab".into()),
            ),
        }
    }
}

/// One image's build recipe: a Dockerfile and the files it copies.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Recipe {
    name: &'static str,
    dockerfile: String,
    /// (file on this machine, path in the image)
    files: Vec<(PathBuf, String)>,
}

/// What happened to one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was built.
    Built,
    /// Its inputs were unchanged: nothing was built.
    Unchanged,
}

/// One image's result.
#[derive(Clone, Debug)]
pub struct Report {
    /// Image name (`base`, …).
    pub name: String,
    /// `disgrafs-lab/NAME:in-<hash>`.
    pub reference: String,
    /// The git revision tag it also carries.
    pub rev: String,
    /// Built or unchanged.
    pub outcome: Outcome,
    /// Time spent on it (inputs, hash, build, tags).
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.outcome {
            Outcome::Built => "built",
            Outcome::Unchanged => "unchanged",
        };
        write!(
            f,
            "{:<8} {what:<9} {} (also :{} and :latest) {:.1} s",
            self.name,
            self.reference,
            self.rev,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Builds `names` (all of [`IMAGES`] when empty) unless their inputs are unchanged, and tags
/// each with the git revision and `latest`.
pub async fn build(names: &[String], sources: &Sources) -> Result<Vec<Report>, Error> {
    let wanted: Vec<&'static str> = if names.is_empty() {
        IMAGES.to_vec()
    } else {
        names
            .iter()
            .map(|n| {
                IMAGES
                    .iter()
                    .find(|i| *i == n)
                    .copied()
                    .ok_or_else(|| Error::Unknown(n.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    let engine = Engine::connect().await?;
    if wanted.iter().any(|n| matches!(*n, "server" | "tagger")) {
        cargo_build_musl(&sources.workspace)?;
    }
    let rev = git_rev(&sources.workspace);
    let mut reports = Vec::new();
    for name in wanted {
        let started = Instant::now();
        let recipe = recipe(name, sources)?;
        let hash = input_hash(&recipe)?;
        let repo = format!("{REPOSITORY}/{name}");
        let tag = format!("in-{}", &hash[..16]);
        let reference = format!("{repo}:{tag}");
        let outcome = if engine.docker().inspect_image(&reference).await.is_ok() {
            Outcome::Unchanged
        } else {
            let dockerfile = format!(
                "{}LABEL org.disgrafs-lab.inputs=\"{hash}\"\n",
                recipe.dockerfile
            );
            let mut image =
                GenericBuildableImage::new(&repo, &tag).with_dockerfile_string(dockerfile);
            for (i, (source, _)) in recipe.files.iter().enumerate() {
                image = image.with_file(source, format!("f{i}"));
            }
            image
                .build_image_with(BuildImageOptions::new().with_skip_if_exists(true))
                .await
                .map(drop)
                .map_err(|e| EngineError::Failed {
                    action: format!("build {reference}"),
                    message: e.to_string(),
                })?;
            Outcome::Built
        };
        for alias in [rev.as_str(), "latest"] {
            let options = TagImageOptions {
                repo: Some(repo.clone()),
                tag: Some(alias.to_owned()),
            };
            engine
                .docker()
                .tag_image(&reference, Some(options))
                .await
                .map_err(|e| EngineError::Failed {
                    action: format!("tag {reference} as {repo}:{alias}"),
                    message: e.to_string(),
                })?;
        }
        reports.push(Report {
            name: name.to_owned(),
            reference,
            rev: rev.clone(),
            outcome,
            elapsed: started.elapsed(),
        });
    }
    Ok(reports)
}

/// The recipe of image `name`. The Dockerfile copies context file `f<i>` for `files[i]`.
fn recipe(name: &'static str, sources: &Sources) -> Result<Recipe, Error> {
    let mut files: Vec<(PathBuf, String)> = vec![
        ("/bin/busybox".into(), "/bin/busybox".into()),
        ("/bin/busybox".into(), "/bin/sh".into()),
    ];
    let cmd = match name {
        "base" => r#"CMD ["/bin/busybox", "sleep", "2147483647"]"#.to_owned(),
        "storage" => {
            let juicefs = sources.tools.join("bin/juicefs");
            let falkordb = sources.tools.join("bin/falkordb-server");
            let module = sources.tools.join("lib/falkordb.so");
            let redis = PathBuf::from("/usr/bin/redis-server");
            let mut libs = Vec::new();
            for binary in [&redis, &falkordb, &module] {
                for lib in shared_libraries(name, binary)? {
                    if !libs.contains(&lib) {
                        libs.push(lib);
                    }
                }
            }
            files.extend([
                (redis, "/usr/bin/redis-server".to_owned()),
                (falkordb, "/opt/falkordb/redis-server".to_owned()),
                (module, "/opt/falkordb/falkordb.so".to_owned()),
                (juicefs, "/usr/bin/juicefs".to_owned()),
            ]);
            files.extend(libs.into_iter().map(|lib| {
                let target = lib.display().to_string();
                (lib, target)
            }));
            r#"CMD ["/bin/sh", "-c", "/bin/busybox mkdir -p /data/redis /data/falkordb /tmp && /opt/falkordb/redis-server --port 6380 --protected-mode no --dir /data/falkordb --loadmodule /opt/falkordb/falkordb.so --daemonize yes && exec /usr/bin/redis-server --port 6379 --protected-mode no --dir /data/redis"]"#.to_owned()
        }
        "server" | "tagger" => {
            let binary = format!("disgrafs-{name}");
            let path = sources
                .workspace
                .join("target")
                .join(MUSL_TARGET)
                .join("release")
                .join(&binary);
            files.push((path, format!("/usr/bin/{binary}")));
            format!(r#"ENTRYPOINT ["/usr/bin/{binary}"]"#)
        }
        other => return Err(Error::Unknown(other.to_owned())),
    };
    let mut dockerfile = String::from("FROM scratch\n");
    for (i, (_, target)) in files.iter().enumerate() {
        dockerfile.push_str(&format!("COPY f{i} {target}\n"));
    }
    dockerfile.push_str(&cmd);
    dockerfile.push('\n');
    Ok(Recipe {
        name,
        dockerfile,
        files,
    })
}

/// SHA-256 of a recipe's Dockerfile and, per file, its path in the image, mode and bytes.
fn input_hash(recipe: &Recipe) -> Result<String, Error> {
    let mut hasher = Sha256::new();
    hasher.update(recipe.dockerfile.as_bytes());
    for (source, target) in &recipe.files {
        let input_error = |source_error| Error::Input {
            image: recipe.name.to_owned(),
            path: source.clone(),
            source: source_error,
        };
        let bytes = std::fs::read(source).map_err(input_error)?;
        let mode = std::fs::metadata(source)
            .map_err(input_error)?
            .permissions()
            .mode();
        hasher.update((target.len() as u64).to_le_bytes());
        hasher.update(target.as_bytes());
        hasher.update(mode.to_le_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The shared libraries `binary` loads (and the dynamic loader), as absolute paths, from ldd.
fn shared_libraries(image: &str, binary: &Path) -> Result<Vec<PathBuf>, Error> {
    if !binary.exists() {
        return Err(Error::Input {
            image: image.to_owned(),
            path: binary.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "missing; ./setup installs it",
            ),
        });
    }
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| Error::Tool(format!("ldd {}: {e}", binary.display())))?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// Library paths from ldd's output (`name => /path (addr)` or `/path (addr)`).
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Builds the DisGraFS binaries for the musl target (a no-op when they are up to date).
fn cargo_build_musl(workspace: &Path) -> Result<(), Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            MUSL_TARGET,
            "-p",
            "disgrafs-server",
            "-p",
            "disgrafs-tagger",
        ])
        .status()
        .map_err(|e| Error::Tool(format!("cargo build --target {MUSL_TARGET}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Tool(format!(
            "cargo build --target {MUSL_TARGET} -p disgrafs-server -p disgrafs-tagger: {status}"
        )))
    }
}

/// The workspace's git revision (12 hex digits, `-dirty` with uncommitted changes), or
/// `norev` outside a git checkout.
fn git_rev(workspace: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) if !rev.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        _ => "norev".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libm.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn input_hash_follows_bytes_paths_and_dockerfile() -> Result<(), Error> {
        let dir = std::env::temp_dir().join(format!("lab-images-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::Tool(e.to_string()))?;
        let file = dir.join("a");
        std::fs::write(&file, b"one").map_err(|e| Error::Tool(e.to_string()))?;
        let recipe = Recipe {
            name: "t",
            dockerfile: "FROM scratch\nCOPY f0 /a\n".into(),
            files: vec![(file.clone(), "/a".into())],
        };
        let first = input_hash(&recipe)?;
        assert_eq!(first, input_hash(&recipe)?, "the hash is stable");
        let moved = Recipe {
            files: vec![(file.clone(), "/b".into())],
            ..recipe.clone()
        };
        assert_ne!(first, input_hash(&moved)?, "the target path counts");
        let other_cmd = Recipe {
            dockerfile: "FROM scratch\nCOPY f0 /a\nCMD [\"x\"]\n".into(),
            ..recipe.clone()
        };
        assert_ne!(first, input_hash(&other_cmd)?, "the Dockerfile counts");
        std::fs::write(&file, b"two").map_err(|e| Error::Tool(e.to_string()))?;
        assert_ne!(first, input_hash(&recipe)?, "the bytes count");
        std::fs::remove_dir_all(&dir).map_err(|e| Error::Tool(e.to_string()))?;
        let missing = input_hash(&recipe).expect_err("a missing input is an error");
        assert!(missing.to_string().contains("lab-images-hash"), "{missing}");
        Ok(())
    }
}
