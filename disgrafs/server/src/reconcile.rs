//! Startup reconciliation of the graph store with the blob store: stored files that the graph
//! does not describe — left by a crash between an upload's rename and its graph write, or
//! copied into the data directory by hand — are recorded and queued for tagging; graph records
//! whose file is gone — removed by hand, or a crash between a delete's removal of the file and
//! of its record — are removed.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use disgrafs_core::tagger::detect_kind;
use disgrafs_core::{BlobInfo, Error, FileMeta, Result};

use crate::AppState;

fn secs(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether the graph's record can describe the stored file without reading it: same size,
/// and not modified after the record was written (an upload records its time after the
/// rename, so a later modification time means newer content than the record's).
fn matches(meta: &FileMeta, blob: &BlobInfo) -> bool {
    meta.size == blob.size && secs(blob.modified) <= meta.uploaded
}

/// Records every stored file that has no matching graph record and queues its tag job, then
/// removes every record whose file is not stored; names with an outbox entry are left to the
/// outbox replay. Runs while the server serves: each name is re-checked under the consistency
/// lock, so an upload or delete that happened meanwhile wins.
pub(crate) async fn run(state: &AppState) -> Result<()> {
    let pending: HashSet<String> = state.outbox.names().await?.into_iter().collect();
    let blobs = state.blobs.list().await?;
    let stored: HashSet<&str> = blobs.iter().map(|b| b.name.as_str()).collect();
    for name in state.graph.names().await? {
        if stored.contains(name.as_str()) || pending.contains(&name) {
            continue;
        }
        let _exclusive = state.consistency.write().await;
        let gone = match state.blobs.open(&name).await {
            Ok(_) => false,
            Err(Error::NotFound(_)) => state.outbox.get(&name).await?.is_none(),
            // A name the blob store cannot hold has no file (and no outbox entry).
            Err(Error::InvalidName(_)) => true,
            Err(e) => return Err(e),
        };
        if gone {
            state.graph.remove_file(&name).await?;
            tracing::info!("{name} was recorded but is not stored; its record is removed");
        }
    }
    for blob in blobs {
        if pending.contains(&blob.name) {
            continue;
        }
        let known = state.graph.get_file(&blob.name).await?;
        if known.as_ref().is_some_and(|meta| matches(meta, &blob)) {
            continue;
        }
        // Hashing happens outside the lock; the result is used only if nothing changed.
        let (written, modified) = match state.blobs.digest(&blob.name).await {
            Ok(digest) => digest,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if known
            .as_ref()
            .is_some_and(|meta| meta.sha256 == written.sha256)
        {
            continue;
        }
        let _exclusive = state.consistency.write().await;
        let unchanged = match state.blobs.open(&blob.name).await {
            Ok(now) => now.size == written.size && now.modified == modified,
            Err(Error::NotFound(_)) => false,
            Err(e) => return Err(e),
        };
        if !unchanged || state.graph.get_file(&blob.name).await? != known {
            continue;
        }
        let meta = FileMeta {
            name: blob.name.clone(),
            size: written.size,
            sha256: written.sha256,
            kind: detect_kind(&written.head),
            uploaded: secs(modified),
        };
        crate::outbox::index(state, meta).await?;
        tracing::info!(
            "{} was stored without a matching graph record; recorded and queued",
            blob.name
        );
    }
    Ok(())
}
