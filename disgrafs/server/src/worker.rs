//! The in-process tagging worker: [`disgrafs_core::worker::Worker`] on the server's stores,
//! counting outcomes in the server's metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use disgrafs_core::TagQueue;
use disgrafs_core::worker::{Outcome, Worker};

use crate::AppState;

/// Runs until aborted, taking jobs from `queue`.
pub(crate) async fn run(state: Arc<AppState>, queue: Arc<dyn TagQueue>) {
    let worker = Worker::new(
        Arc::clone(&state.graph),
        Arc::clone(&state.blobs),
        state.tagger,
    );
    worker
        .run(queue.as_ref(), |_, result| {
            let counter = match result {
                Ok(Outcome::Tagged) => &state.metrics.tag_jobs_done,
                Ok(Outcome::Stale) => &state.metrics.tag_jobs_stale,
                Ok(Outcome::Unreadable) => &state.metrics.tag_jobs_unreadable,
                Err(_) => &state.metrics.tag_jobs_failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .await;
}
