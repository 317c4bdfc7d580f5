//! Uploads that are stored but not yet indexed or queued because a backend (the graph store or
//! the tag queue) was down: one JSON file per name under `DATA/outbox/`, written before the
//! upload is answered, and replayed by [`run`] when the backends answer again.
//!
//! Entries are written, replaced and removed only under the server's exclusive consistency
//! lock, so an entry always describes the newest upload of its name.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use disgrafs_core::{Error, FileMeta, Result, TagJob};

use crate::AppState;

/// How often the outbox is replayed.
const RETRY: Duration = Duration::from_millis(500);

/// The directory of pending entries.
#[derive(Debug)]
pub(crate) struct Outbox {
    dir: PathBuf,
    next_temp: AtomicU64,
}

impl Outbox {
    /// Opens (creating) the outbox directory.
    pub(crate) fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Self {
            dir,
            next_temp: AtomicU64::new(0),
        })
    }

    /// Durably records `meta` as the pending state of its name (fsync, atomic rename).
    pub(crate) async fn put(&self, meta: &FileMeta) -> Result<()> {
        let json = serde_json::to_vec(meta)
            .map_err(|e| Error::Unavailable(format!("encoding an outbox entry: {e}")))?;
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let target = self.dir.join(&meta.name);
        let dir = self.dir.clone();
        blocking(move || {
            let write = || -> std::io::Result<()> {
                let mut file = std::fs::File::create(&temp)?;
                std::io::Write::write_all(&mut file, &json)?;
                file.sync_all()?;
                std::fs::rename(&temp, &target)?;
                std::fs::File::open(&dir)?.sync_all()
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&temp);
                Error::io(format!("recording {} in the outbox", target.display()), e)
            })
        })
        .await
    }

    /// Removes the entry of `name`, if any.
    pub(crate) async fn remove(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        })
        .await
    }

    /// The entry of `name`, if any.
    pub(crate) async fn get(&self, name: &str) -> Result<Option<FileMeta>> {
        let path = self.dir.join(name);
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Unavailable(format!("bad outbox entry {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        })
        .await
    }

    /// The names with pending entries.
    pub(crate) async fn names(&self) -> Result<Vec<String>> {
        let dir = self.dir.clone();
        blocking(move || {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            Ok(entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| !name.starts_with('.'))
                .collect())
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("outbox task failed: {e}")))?
}

/// Records `meta` in the graph store and queues its tag job.
pub(crate) async fn index(state: &AppState, meta: FileMeta) -> Result<()> {
    let job = TagJob {
        name: meta.name.clone(),
        sha256: meta.sha256.clone(),
    };
    state.graph.upsert_file(meta).await?;
    state.queue.enqueue(job).await
}

/// Replays the outbox every [`RETRY`] while both backends answer. First, once the backends
/// answer: re-queues the files that the graph store lists as untagged (jobs lost with a
/// restart of the embedded queue, or never queued because the server stopped in between),
/// then reconciles the graph with the stored files ([`crate::reconcile`]).
pub(crate) async fn run(state: Arc<AppState>) {
    let mut requeued = false;
    let mut reconciled = false;
    loop {
        if !requeued {
            match requeue_untagged(&state).await {
                Ok(()) => requeued = true,
                Err(e) => tracing::warn!("re-queueing untagged files: {e}"),
            }
        }
        if requeued && !reconciled {
            match crate::reconcile::run(&state).await {
                Ok(()) => {
                    reconciled = true;
                    state.metrics.reconciled.store(true, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!("reconciling stored files with the graph: {e}"),
            }
        }
        if let Err(e) = replay(&state).await {
            tracing::debug!("outbox replay postponed: {e}");
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn requeue_untagged(state: &AppState) -> Result<()> {
    for meta in state.graph.untagged(u64::MAX).await? {
        state
            .queue
            .enqueue(TagJob {
                name: meta.name,
                sha256: meta.sha256,
            })
            .await?;
    }
    Ok(())
}

async fn replay(state: &AppState) -> Result<()> {
    let names = state.outbox.names().await?;
    if names.is_empty() {
        return Ok(());
    }
    // Probe without the lock, so that an outage does not stall every upload and download.
    state.graph.counts().await?;
    state.queue.backlog().await?;
    for name in names {
        let _exclusive = state.consistency.write().await;
        if let Some(meta) = state.outbox.get(&name).await? {
            index(state, meta).await?;
            state.outbox.remove(&name).await?;
            tracing::info!("{name} is indexed and queued after a backend outage");
        }
    }
    Ok(())
}
