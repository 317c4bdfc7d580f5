use std::io::{self, IoSlice, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sha2::{Digest, Sha256};

use crate::{BoxFuture, Error, Result, validate_name};

/// Prefix of the temporary files that uploads are written to; valid names never start with '.'.
const TEMP_PREFIX: &str = ".disgrafs-tmp-";
/// How many leading bytes of an upload are kept for content sniffing.
const HEAD_BYTES: usize = 8 * 1024;
/// Received chunks an upload may have waiting for its writer (and writes at once).
const WRITE_QUEUE: usize = 32;

/// Stores file contents by name.
///
/// Writing is two-phase: [`BlobStore::write`] streams the body into a hidden temporary file
/// and [`PendingBlob::commit`] makes it visible atomically, so callers can serialise the commit
/// with their own bookkeeping (the graph record) while bodies arrive concurrently.
pub trait BlobStore: std::fmt::Debug + Send + Sync + 'static {
    /// Streams `body` into a hidden temporary file, failing with [`Error::TooLarge`] once more
    /// than `limit` bytes arrive. On any error, or if the future is dropped, the temporary file
    /// is removed and nothing is visible under `name`.
    fn write<'a>(
        &'a self,
        name: &'a str,
        body: BoxStream<'a, io::Result<Bytes>>,
        limit: u64,
    ) -> BoxFuture<'a, Result<PendingBlob>>;

    /// Opens the stored content of `name` for reading.
    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Blob>>;

    /// Removes `name`; returns whether it existed.
    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Every stored file (not the temporary files of uploads in progress), in no order.
    fn list(&self) -> BoxFuture<'_, Result<Vec<BlobInfo>>>;

    /// Reads `name` whole: its size, SHA-256 and first bytes, as [`BlobStore::write`] reports
    /// them for an upload, and its modification time.
    fn digest<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(Written, SystemTime)>>;
}

/// A stored file as listed by [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The file name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub modified: SystemTime,
}

/// What was received by [`BlobStore::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// The first bytes (up to 8 KiB), for content sniffing.
    pub head: Vec<u8>,
}

/// A fully received, fsynced upload that is not yet visible; dropping it discards the upload.
#[derive(Debug)]
pub struct PendingBlob {
    temp: TempFile,
    target: PathBuf,
    written: Written,
}

impl PendingBlob {
    /// What was received.
    pub fn written(&self) -> &Written {
        &self.written
    }

    /// Atomically replaces the visible file with this upload and syncs the directory.
    pub async fn commit(mut self) -> Result<Written> {
        let temp = self.temp.path.clone();
        let target = self.target.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            std::fs::rename(&temp, &target)
                .map_err(|e| Error::io(format!("renaming into {}", target.display()), e))?;
            if let Some(dir) = target.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Unavailable(format!("commit task failed: {e}")))??;
        self.temp.armed = false;
        Ok(self.written)
    }
}

/// An open stored file.
#[derive(Debug)]
pub struct Blob {
    /// The content, positioned at the start.
    pub file: tokio::fs::File,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub modified: SystemTime,
}

/// Removes its path when dropped unless disarmed.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(
                "could not remove temporary file {}: {e}",
                self.path.display()
            );
        }
    }
}

/// A [`BlobStore`] in a local directory; a JuiceFS (or any POSIX) mount point works the same.
#[derive(Debug)]
pub struct LocalDirBlobStore {
    root: PathBuf,
}

/// Writes all of `chunks` with as few (vectored) writes as the file takes.
fn write_chunks(file: &mut std::fs::File, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = file.write_vectored(slices)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

impl LocalDirBlobStore {
    /// Uses `root` (created if missing) and removes temporary files left by a crash.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let entries = std::fs::read_dir(&root)
            .map_err(|e| Error::io(format!("listing {}", root.display()), e))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("removing stale {}", path.display()), e))?;
            }
        }
        Ok(Self { root })
    }

    /// The directory the files live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.root.join(name))
    }

    async fn write_inner(
        &self,
        name: &str,
        mut body: BoxStream<'_, io::Result<Bytes>>,
        limit: u64,
    ) -> Result<PendingBlob> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let target = self.path_of(name)?;
        let temp_path = self.root.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // Created synchronously so that a dropped future can never leave a file behind the guard.
        let std_file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(|e| Error::io(format!("creating {}", temp_path.display()), e))?;
        let temp = TempFile {
            path: temp_path,
            armed: true,
        };
        // A blocking task writes what this one has received and hashed, so that hashing the
        // next chunks overlaps writing the previous ones.
        let (chunks, mut received) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            let mut file = std_file;
            let mut batch = Vec::with_capacity(WRITE_QUEUE);
            while let Some(chunk) = received.blocking_recv() {
                batch.push(chunk);
                while let Ok(chunk) = received.try_recv() {
                    batch.push(chunk);
                }
                write_chunks(&mut file, &batch)?;
                batch.clear();
            }
            Ok(file)
        });
        let mut hasher = Sha256::new();
        let mut head = Vec::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::BodyAborted(e.to_string()))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(Error::TooLarge { limit });
            }
            hasher.update(&chunk);
            if head.len() < HEAD_BYTES {
                let take = (HEAD_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            if chunks.send(chunk).await.is_err() {
                // The writer failed; its error is reported below.
                break;
            }
        }
        drop(chunks);
        let writing = |e| Error::io(format!("writing {}", temp.path.display()), e);
        let file = writer
            .await
            .map_err(|e| Error::Unavailable(format!("write task failed: {e}")))?
            .map_err(writing)?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| Error::Unavailable(format!("sync task failed: {e}")))?
            .map_err(|e| Error::io(format!("syncing {}", temp.path.display()), e))?;
        Ok(PendingBlob {
            temp,
            target,
            written: Written {
                size,
                sha256: hex::encode(hasher.finalize()),
                head,
            },
        })
    }

    async fn open_inner(&self, name: &str) -> Result<Blob> {
        let path = self.path_of(name)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotFound(name.to_owned()),
                _ => Error::io(format!("opening {}", path.display()), e),
            })?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| Error::io(format!("reading metadata of {}", path.display()), e))?;
        Ok(Blob {
            file,
            size: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }

    async fn remove_inner(&self, name: &str) -> Result<bool> {
        let path = self.path_of(name)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }
}

impl LocalDirBlobStore {
    fn list_blocking(root: &Path) -> Result<Vec<BlobInfo>> {
        let entries = std::fs::read_dir(root)
            .map_err(|e| Error::io(format!("listing {}", root.display()), e))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", root.display()), e))?;
            // Names that are not valid file names (temporary files, strays) are not files of
            // the store.
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_name(&name).is_err() {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) if meta.is_file() => meta,
                Ok(_) => continue,
                // Removed since it was listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::io(format!("reading metadata of {name}"), e));
                }
            };
            found.push(BlobInfo {
                name,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        Ok(found)
    }

    async fn digest_inner(&self, name: &str) -> Result<(Written, SystemTime)> {
        let mut blob = self.open_inner(name).await?;
        let mut hasher = Sha256::new();
        let mut head = Vec::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut blob.file, &mut buf)
                .await
                .map_err(|e| Error::io(format!("reading {name}"), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if head.len() < HEAD_BYTES {
                let take = (HEAD_BYTES - head.len()).min(n);
                head.extend_from_slice(&buf[..take]);
            }
            size += n as u64;
        }
        let written = Written {
            size,
            sha256: hex::encode(hasher.finalize()),
            head,
        };
        Ok((written, blob.modified))
    }
}

impl BlobStore for LocalDirBlobStore {
    fn write<'a>(
        &'a self,
        name: &'a str,
        body: BoxStream<'a, io::Result<Bytes>>,
        limit: u64,
    ) -> BoxFuture<'a, Result<PendingBlob>> {
        Box::pin(self.write_inner(name, body, limit))
    }

    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Blob>> {
        Box::pin(self.open_inner(name))
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.remove_inner(name))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<BlobInfo>>> {
        let root = self.root.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Self::list_blocking(&root))
                .await
                .map_err(|e| Error::Unavailable(format!("listing task failed: {e}")))?
        })
    }

    fn digest<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(Written, SystemTime)>> {
        Box::pin(self.digest_inner(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use tokio::io::AsyncReadExt;

    fn body(chunks: Vec<io::Result<Bytes>>) -> BoxStream<'static, io::Result<Bytes>> {
        stream::iter(chunks).boxed()
    }

    fn visible_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn write_commit_open_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirBlobStore::new(dir.path()).unwrap();
        let chunks = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        let pending = store.write("a.txt", body(chunks), 100).await.unwrap();
        assert!(
            visible_entries(dir.path())
                .iter()
                .all(|n| n.starts_with(TEMP_PREFIX))
        );
        let written = pending.commit().await.unwrap();
        assert_eq!(written.size, 11);
        assert_eq!(written.sha256, hex::encode(Sha256::digest(b"hello world")));
        assert_eq!(written.head, b"hello world");
        assert_eq!(visible_entries(dir.path()), vec!["a.txt"]);
        let mut blob = store.open("a.txt").await.unwrap();
        let mut content = String::new();
        blob.file.read_to_string(&mut content).await.unwrap();
        assert_eq!((content.as_str(), blob.size), ("hello world", 11));
        assert!(store.remove("a.txt").await.unwrap());
        assert!(!store.remove("a.txt").await.unwrap());
        assert!(matches!(store.open("a.txt").await, Err(Error::NotFound(_))));
    }

    #[tokio::test]
    async fn oversize_body_aborted_stream_and_dropped_pending_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirBlobStore::new(dir.path()).unwrap();
        let big = vec![
            Ok(Bytes::from(vec![7u8; 60])),
            Ok(Bytes::from(vec![7u8; 60])),
        ];
        let err = store.write("big", body(big), 100).await.unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 100 }), "{err}");
        let broken = vec![
            Ok(Bytes::from_static(b"part")),
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer gone")),
        ];
        let err = store.write("broken", body(broken), 100).await.unwrap_err();
        assert!(matches!(err, Error::BodyAborted(_)), "{err}");
        let pending = store
            .write("dropped", body(vec![Ok(Bytes::from_static(b"x"))]), 100)
            .await
            .unwrap();
        drop(pending);
        assert!(visible_entries(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn lists_and_digests_stored_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirBlobStore::new(dir.path()).unwrap();
        let pending = store
            .write("kept.txt", body(vec![Ok(Bytes::from_static(b"kept"))]), 100)
            .await
            .unwrap();
        let committed = pending.commit().await.unwrap();
        // An upload in progress, a directory and a file written behind the store's back.
        let _in_progress = store
            .write("busy", body(vec![Ok(Bytes::from_static(b"..."))]), 100)
            .await
            .unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        std::fs::write(dir.path().join("outside.bin"), [0u8, 1, 2]).unwrap();
        let mut listed = store.list().await.unwrap();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<(&str, u64)> = listed.iter().map(|b| (b.name.as_str(), b.size)).collect();
        assert_eq!(names, [("kept.txt", 4), ("outside.bin", 3)]);
        let (digest, modified) = store.digest("kept.txt").await.unwrap();
        assert_eq!(digest, committed);
        assert_eq!(modified, listed[0].modified);
        assert!(matches!(
            store.digest("gone").await,
            Err(Error::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn rejects_bad_names_and_cleans_stale_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{TEMP_PREFIX}1-1")), b"stale").unwrap();
        let store = LocalDirBlobStore::new(dir.path()).unwrap();
        assert!(visible_entries(dir.path()).is_empty());
        let err = store.write("../x", body(vec![]), 10).await.unwrap_err();
        assert!(matches!(err, Error::InvalidName(_)));
        assert!(matches!(store.open("..").await, Err(Error::InvalidName(_))));
    }
}
