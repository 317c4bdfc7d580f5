//! The kernel matrix: `vm-images/kernels.toml` parsed and validated.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result, io_err};

/// The matrix shipped with this crate (`vm-images/kernels.toml`, embedded at build time).
pub const BUILTIN: &str = include_str!("../../../vm-images/kernels.toml");

/// All kernels of the matrix, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    /// The `[[kernel]]` entries.
    #[serde(rename = "kernel", default)]
    pub kernels: Vec<KernelPin>,
}

/// One kernel of the matrix: where it comes from and the exact packages making it up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    /// Matrix name, e.g. `6.1` (topologies and `--kernel` use it).
    pub name: String,
    /// Debian archive root URL, e.g. `http://deb.debian.org/debian-security`.
    pub archive: String,
    /// Archive suite, e.g. `bookworm-security`.
    pub suite: String,
    /// Kernel release (`uname -r`), also the name of its modules directory.
    pub release: String,
    /// Packages unpacked together into the kernel tree.
    pub packages: Vec<PackagePin>,
}

/// One Debian package pinned by exact version and digest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagePin {
    /// Package name.
    pub name: String,
    /// Exact package version.
    pub version: String,
    /// SHA-256 of the .deb (lowercase hex), as in the archive's Packages index.
    pub sha256: String,
}

impl Matrix {
    /// The matrix embedded in this crate.
    ///
    /// # Errors
    /// Only if the embedded file is invalid (a unit test guards against that).
    pub fn builtin() -> Result<Matrix> {
        Matrix::parse(BUILTIN, "vm-images/kernels.toml (built in)")
    }

    /// Reads and validates a matrix file.
    ///
    /// # Errors
    /// I/O errors and everything [`Matrix::parse`] rejects.
    pub fn load(path: &Path) -> Result<Matrix> {
        let text =
            std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
        Matrix::parse(&text, &path.display().to_string())
    }

    /// Parses and validates matrix text; `origin` names it in errors.
    ///
    /// # Errors
    /// TOML syntax errors (with line and column), unknown fields, and invalid values: empty
    /// matrix, duplicate or malformed names, non-HTTP archives, malformed versions or digests.
    pub fn parse(text: &str, origin: &str) -> Result<Matrix> {
        let matrix: Matrix =
            toml::from_str(text).map_err(|e| Error::Matrix(format!("{origin}: {e}")))?;
        matrix.validate(origin)?;
        Ok(matrix)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |what: String| Err(Error::Matrix(format!("{origin}: {what}")));
        if self.kernels.is_empty() {
            return bad("no [[kernel]] entries".into());
        }
        let mut names = HashSet::new();
        for k in &self.kernels {
            let at = format!("kernel {:?}", k.name);
            if k.name.is_empty()
                || !k
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return bad(format!(
                    "{at}: name must be non-empty and use only A-Z a-z 0-9 . _ -"
                ));
            }
            if !names.insert(k.name.as_str()) {
                return bad(format!("{at}: defined twice"));
            }
            if !(k.archive.starts_with("http://") || k.archive.starts_with("https://")) {
                return bad(format!(
                    "{at}: archive {:?} is not an http(s) URL",
                    k.archive
                ));
            }
            if !is_token(&k.suite) {
                return bad(format!(
                    "{at}: suite {:?} must be one non-empty word",
                    k.suite
                ));
            }
            if !is_token(&k.release) || k.release.contains('/') || k.release.starts_with('.') {
                return bad(format!(
                    "{at}: release {:?} is not a kernel release name",
                    k.release
                ));
            }
            if k.packages.is_empty() {
                return bad(format!("{at}: packages is empty"));
            }
            for p in &k.packages {
                let at = format!("{at}: package {:?}", p.name);
                if p.name.len() < 2
                    || !p
                        .name
                        .starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    || !p
                        .name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
                {
                    return bad(format!("{at}: not a Debian package name"));
                }
                if !is_token(&p.version) || !p.version.starts_with(|c: char| c.is_ascii_digit()) {
                    return bad(format!(
                        "{at}: version {:?} is not a Debian version",
                        p.version
                    ));
                }
                if p.sha256.len() != 64
                    || !p.sha256.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
                {
                    return bad(format!(
                        "{at}: sha256 {:?} is not 64 lowercase hex digits",
                        p.sha256
                    ));
                }
            }
        }
        Ok(())
    }

    /// The kernel called `name`.
    ///
    /// # Errors
    /// [`Error::Matrix`] listing the known names when there is none.
    pub fn kernel(&self, name: &str) -> Result<&KernelPin> {
        self.kernels.iter().find(|k| k.name == name).ok_or_else(|| {
            let known: Vec<_> = self.kernels.iter().map(|k| k.name.as_str()).collect();
            Error::Matrix(format!(
                "no kernel {name:?} in the matrix (known: {})",
                known.join(", ")
            ))
        })
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
[[kernel]]
name = "6.1"
archive = "http://deb.debian.org/debian-security"
suite = "bookworm-security"
release = "6.1.0-56-amd64"
packages = [{ name = "linux-image-6.1.0-56-amd64-unsigned", version = "6.1.192-2", sha256 = "530631662c9ad84758eca2d7609cf40623309afd4bccbeb563f33e9c7f220bdf" }]
"#;

    fn err(text: &str) -> String {
        Matrix::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn builtin_matrix_is_valid_and_has_the_required_kernels() {
        let m = Matrix::builtin().unwrap();
        for name in ["5.10", "6.1", "6.12"] {
            m.kernel(name).unwrap();
        }
        assert!(
            m.kernels.iter().any(|k| k.name.starts_with("7.")),
            "no 7.x kernel"
        );
    }

    #[test]
    fn parses_a_valid_entry() {
        let m = Matrix::parse(ONE, "t.toml").unwrap();
        let k = m.kernel("6.1").unwrap();
        assert_eq!(k.release, "6.1.0-56-amd64");
        assert_eq!(k.packages[0].version, "6.1.192-2");
    }

    #[test]
    fn rejects_bad_files_with_clear_errors() {
        let e = err("[[kernel]]\nname = \"6.1\"\n");
        assert!(
            e.starts_with("t.toml: ") && e.contains("missing field"),
            "{e}"
        );
        let e = err(&ONE.replace("suite =", "colour = \"red\"\nsuite ="));
        assert!(e.contains("unknown field") && e.contains("colour"), "{e}");
        let e = err(&format!("{ONE}{ONE}"));
        assert!(e.contains("kernel \"6.1\": defined twice"), "{e}");
        let e = err(&ONE.replace("530631662c", "530631662C"));
        assert!(
            e.contains("sha256") && e.contains("linux-image-6.1.0-56-amd64-unsigned"),
            "{e}"
        );
        let e = err(&ONE.replace("6.1.192-2", "latest"));
        assert!(e.contains("version \"latest\""), "{e}");
        let e = err(&ONE.replace("http://deb", "ftp://deb"));
        assert!(e.contains("archive"), "{e}");
        let e = err(&ONE.replace("name = \"6.1\"", "name = \"6 1\""));
        assert!(e.contains("name must be"), "{e}");
        assert!(err("").contains("no [[kernel]] entries"));
        assert!(err("[[kernel]\n").starts_with("t.toml: "));
    }

    #[test]
    fn unknown_kernel_lists_known_names() {
        let m = Matrix::parse(ONE, "t.toml").unwrap();
        let e = m.kernel("4.19").unwrap_err().to_string();
        assert!(e.contains("\"4.19\"") && e.contains("known: 6.1"), "{e}");
    }
}
