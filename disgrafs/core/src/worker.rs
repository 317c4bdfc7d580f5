//! The tagging worker shared by the server's in-process worker and the `disgrafs-tagger`
//! binary: take a job, tag the file, write the graph, and only then acknowledge the job.

use std::sync::Arc;
use std::time::Duration;

use crate::tagger::{TaggerConfig, tag_file};
use crate::{BlobStore, Delivery, Error, GraphStore, Result, TagJob, TagQueue};

/// How long the worker waits after the queue failed before asking again.
const QUEUE_RETRY: Duration = Duration::from_secs(1);

/// What became of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The tags were written.
    Tagged,
    /// The file was removed or replaced meanwhile; a replacement has its own job.
    Stale,
    /// The content could not be analysed; the file is recorded with no tags.
    Unreadable,
}

/// Tags the files named by jobs, reading them from a blob store and writing a graph store.
///
/// Needs no lock shared with the server: [`GraphStore::set_tags`] writes only if the file
/// still has the job's hash, and an upload always renames the new content into place before
/// it records the new hash (which drops any tags), so tags computed from newer content than
/// the job's are replaced by the newer job's.
#[derive(Debug, Clone)]
pub struct Worker {
    graph: Arc<dyn GraphStore>,
    blobs: Arc<dyn BlobStore>,
    config: TaggerConfig,
}

impl Worker {
    /// A worker on these stores.
    pub fn new(
        graph: Arc<dyn GraphStore>,
        blobs: Arc<dyn BlobStore>,
        config: TaggerConfig,
    ) -> Self {
        Self {
            graph,
            blobs,
            config,
        }
    }

    /// Tags the file of `job` and writes its tags; an error leaves the job for redelivery.
    pub async fn process(&self, job: &TagJob) -> Result<Outcome> {
        let Some(meta) = self.graph.get_file(&job.name).await? else {
            return Ok(Outcome::Stale);
        };
        if meta.sha256 != job.sha256 {
            return Ok(Outcome::Stale);
        }
        let blob = match self.blobs.open(&job.name).await {
            Ok(blob) => blob,
            Err(Error::NotFound(_)) => return Ok(Outcome::Stale),
            Err(e) => return Err(e),
        };
        let mut file = blob.file.into_std().await;
        let config = self.config;
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
        if self.graph.set_tags(&job.name, &job.sha256, tags).await? {
            Ok(outcome)
        } else {
            Ok(Outcome::Stale)
        }
    }

    /// Takes jobs from `queue` until the task is cancelled: processes each, acknowledges it
    /// after the graph write, and reports every attempt to `observe`. A failed attempt is not
    /// acknowledged, so the queue delivers the job again after its timeout.
    pub async fn run(
        &self,
        queue: &dyn TagQueue,
        mut observe: impl FnMut(&Delivery, &Result<Outcome>),
    ) {
        loop {
            let delivery = match queue.next().await {
                Ok(delivery) => delivery,
                Err(e) => {
                    tracing::warn!("tag queue unavailable: {e}");
                    tokio::time::sleep(QUEUE_RETRY).await;
                    continue;
                }
            };
            let result = self.process(&delivery.job).await;
            match &result {
                Ok(_) => {
                    if let Err(e) = queue.ack(&delivery.id).await {
                        tracing::warn!("acknowledging tag job {}: {e}", delivery.id);
                    }
                }
                Err(e) => tracing::warn!(
                    "tagging {} (attempt {}) failed: {e}",
                    delivery.job.name,
                    delivery.attempt
                ),
            }
            observe(&delivery, &result);
        }
    }
}
