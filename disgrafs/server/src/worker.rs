//! The in-process tagging worker: takes jobs from the queue, tags the file, writes the tags to
//! the graph, and only then acknowledges the job.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use disgrafs_core::tagger::tag_file;
use disgrafs_core::{Error, Result, TagJob};

use crate::AppState;

/// What became of one job.
enum Outcome {
    /// Tags written.
    Tagged,
    /// The file was removed or replaced; its replacement has its own job.
    Stale,
    /// The content could not be analysed; the file is recorded with no tags.
    Unreadable,
}

/// Runs forever, one job at a time.
pub(crate) async fn run(state: Arc<AppState>) {
    loop {
        let delivery = match state.queue.next().await {
            Ok(delivery) => delivery,
            Err(e) => {
                tracing::warn!("tag queue unavailable: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match process(&state, &delivery.job).await {
            Ok(outcome) => {
                let counter = match outcome {
                    Outcome::Tagged => &state.metrics.tag_jobs_done,
                    Outcome::Stale => &state.metrics.tag_jobs_stale,
                    Outcome::Unreadable => &state.metrics.tag_jobs_unreadable,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = state.queue.ack(&delivery.id).await {
                    tracing::warn!("acknowledging tag job {}: {e}", delivery.id);
                }
            }
            Err(e) => {
                // Not acknowledged: the queue delivers it again after its timeout.
                state
                    .metrics
                    .tag_jobs_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "tagging {} (attempt {}) failed: {e}",
                    delivery.job.name,
                    delivery.attempt
                );
            }
        }
    }
}

async fn process(state: &AppState, job: &TagJob) -> Result<Outcome> {
    let (meta, blob) = {
        let _shared = state.consistency.read().await;
        let Some(meta) = state.graph.get_file(&job.name).await? else {
            return Ok(Outcome::Stale);
        };
        if meta.sha256 != job.sha256 {
            return Ok(Outcome::Stale);
        }
        match state.blobs.open(&job.name).await {
            Ok(blob) => (meta, blob),
            Err(Error::NotFound(_)) => return Ok(Outcome::Stale),
            Err(e) => return Err(e),
        }
    };
    let mut file = blob.file.into_std().await;
    let config = state.tagger;
    let tagged = tokio::task::spawn_blocking(move || tag_file(&mut file, meta.kind, &config))
        .await
        .map_err(|e| Error::Tagging(format!("tagger task failed: {e}")))?;
    let (tags, outcome) = match tagged {
        Ok(tags) => (tags, Outcome::Tagged),
        Err(e) => {
            tracing::info!("{} is recorded without tags: {e}", job.name);
            (Vec::new(), Outcome::Unreadable)
        }
    };
    if state.graph.set_tags(&job.name, &job.sha256, tags).await? {
        Ok(outcome)
    } else {
        Ok(Outcome::Stale)
    }
}
