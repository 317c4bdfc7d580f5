//! A writer for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Parent directories are created implicitly (mode 0755) before the first entry inside them;
//! every entry gets its own inode number; timestamps are 0 so images are reproducible.

use std::collections::HashSet;
use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Streams a newc archive into `W`. Call [`CpioWriter::finish`] to write the trailer.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    names: HashSet<String>,
}

struct Header<'a> {
    name: &'a str,
    mode: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
            names: HashSet::new(),
        }
    }

    /// Adds a directory (and any missing parents).
    ///
    /// # Errors
    /// I/O errors; an invalid or duplicate path.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let name = self.prepare(path)?;
        self.entry(
            &Header {
                name: &name,
                mode: S_IFDIR | (mode & 0o7777),
                size: 0,
                rdev: (0, 0),
            },
            &[],
        )
    }

    /// Adds a regular file with the given permission bits.
    ///
    /// # Errors
    /// I/O errors; an invalid or duplicate path; files of 4 GiB or more.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let name = self.prepare(path)?;
        let size = u32::try_from(data.len()).map_err(|_| {
            invalid(format!(
                "{path}: {} bytes is too large for cpio",
                data.len()
            ))
        })?;
        self.entry(
            &Header {
                name: &name,
                mode: S_IFREG | (mode & 0o7777),
                size,
                rdev: (0, 0),
            },
            data,
        )
    }

    /// Adds a symbolic link `path` → `target`.
    ///
    /// # Errors
    /// I/O errors; an invalid or duplicate path.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let name = self.prepare(path)?;
        let size = u32::try_from(target.len())
            .map_err(|_| invalid(format!("{path}: link target too long")))?;
        self.entry(
            &Header {
                name: &name,
                mode: S_IFLNK | 0o777,
                size,
                rdev: (0, 0),
            },
            target.as_bytes(),
        )
    }

    /// Adds a character device node.
    ///
    /// # Errors
    /// I/O errors; an invalid or duplicate path.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let name = self.prepare(path)?;
        self.entry(
            &Header {
                name: &name,
                mode: S_IFCHR | (mode & 0o7777),
                size: 0,
                rdev: (major, minor),
            },
            &[],
        )
    }

    /// Whether `path` (absolute or relative) is already in the archive.
    pub fn contains(&self, path: &str) -> bool {
        self.names.contains(path.trim_start_matches('/'))
    }

    /// Writes the trailer and returns the output and the archive size in bytes.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.entry(
            &Header {
                name: TRAILER,
                mode: 0,
                size: 0,
                rdev: (0, 0),
            },
            &[],
        )?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    /// Normalizes `path`, rejects duplicates and bad names, and adds missing parent directories.
    fn prepare(&mut self, path: &str) -> io::Result<String> {
        let name = path.trim_start_matches('/');
        if name.is_empty()
            || name == TRAILER
            || name.contains('\0')
            || name.ends_with('/')
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(invalid(format!("invalid archive path {path:?}")));
        }
        if self.names.contains(name) {
            return Err(invalid(format!("{path:?} is already in the archive")));
        }
        let mut parent = String::new();
        let components: Vec<&str> = name.split('/').collect();
        for c in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            if !self.names.contains(&parent) {
                let dir = parent.clone();
                self.entry(
                    &Header {
                        name: &dir,
                        mode: S_IFDIR | 0o755,
                        size: 0,
                        rdev: (0, 0),
                    },
                    &[],
                )?;
                self.names.insert(dir);
            }
        }
        self.names.insert(name.to_owned());
        Ok(name.to_owned())
    }

    fn entry(&mut self, h: &Header<'_>, data: &[u8]) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if h.mode & 0o170_000 == S_IFDIR { 2 } else { 1 };
        let namesize = h.name.len() + 1;
        let header = format!(
            "{MAGIC}{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            mode = h.mode,
            uid = 0,
            gid = 0,
            mtime = 0,
            size = h.size,
            maj = 0,
            min = 0,
            rmaj = h.rdev.0,
            rmin = h.rdev.1,
            check = 0,
        );
        self.put(header.as_bytes())?;
        self.put(h.name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0u8; 3][..4 - rem])?;
        }
        Ok(())
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// A reader for tests: parses an archive back into entries.
#[cfg(test)]
pub(crate) mod read {
    /// One parsed entry: name, mode, rdev (major, minor), data.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Entry {
        pub name: String,
        pub mode: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    /// Parses `bytes` up to the trailer; panics on malformed input (test helper only).
    pub(crate) fn entries(bytes: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut pos = 0;
        let field = |pos: usize, i: usize| {
            let s = std::str::from_utf8(&bytes[pos + 6 + i * 8..pos + 14 + i * 8]).unwrap();
            u32::from_str_radix(s, 16).unwrap() as usize
        };
        let align = |n: usize| n.div_ceil(4) * 4;
        loop {
            assert_eq!(&bytes[pos..pos + 6], b"070701", "bad magic at {pos}");
            let (mode, size, rmaj, rmin, namesize) = (
                field(pos, 1),
                field(pos, 6),
                field(pos, 9),
                field(pos, 10),
                field(pos, 11),
            );
            let name_start = pos + 110;
            let name = std::str::from_utf8(&bytes[name_start..name_start + namesize - 1])
                .unwrap()
                .to_owned();
            assert_eq!(bytes[name_start + namesize - 1], 0);
            let data_start = align(name_start + namesize);
            let data = bytes[data_start..data_start + size].to_vec();
            pos = align(data_start + size);
            if name == "TRAILER!!!" {
                assert_eq!(pos, bytes.len(), "bytes after the trailer");
                return out;
            }
            out.push(Entry {
                name,
                mode: mode as u32,
                rdev: (rmaj as u32, rmin as u32),
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read::entries;
    use super::*;

    #[test]
    fn writes_entries_that_read_back() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        w.file("lib/modules/a.ko", 0o644, &[1, 2, 3, 4, 5]).unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        w.dir("/tmp", 0o1777).unwrap();
        assert!(w.contains("/lib/modules") && w.contains("bin") && !w.contains("/usr"));
        let (bytes, size) = w.finish().unwrap();
        assert_eq!(size as usize, bytes.len());
        assert_eq!(bytes.len() % 4, 0);
        let got = entries(&bytes);
        let names: Vec<_> = got.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "lib",
                "lib/modules",
                "lib/modules/a.ko",
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "tmp"
            ]
        );
        assert_eq!(got[0].mode, S_IFREG | 0o755);
        assert_eq!(got[0].data, b"#!/bin/sh\n");
        assert_eq!(got[1].mode, S_IFDIR | 0o755);
        assert_eq!(got[3].data, [1, 2, 3, 4, 5]);
        assert_eq!(
            (got[5].mode, got[5].data.as_slice()),
            (S_IFLNK | 0o777, &b"busybox"[..])
        );
        assert_eq!((got[7].mode, got[7].rdev), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!(got[8].mode, S_IFDIR | 0o1777);
    }

    #[test]
    fn rejects_bad_and_duplicate_paths() {
        let mut w = CpioWriter::new(Vec::new());
        for bad in ["", "/", "a//b", "a/../b", "./a", "a/", "TRAILER!!!"] {
            assert!(w.file(bad, 0o644, b"").is_err(), "{bad:?} accepted");
        }
        w.file("/etc/x", 0o644, b"").unwrap();
        let e = w.dir("etc", 0o755).unwrap_err();
        assert!(e.to_string().contains("already in the archive"), "{e}");
    }
}
