use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{BoxFuture, Result};

/// A request to tag the content of `name` that has hash `sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagJob {
    /// The file name.
    pub name: String,
    /// The content hash the job was created for; stale jobs are detected with it.
    pub sha256: String,
}

/// A job handed to a worker; it must be acknowledged with [`TagQueue::ack`] after the graph
/// write, or it is delivered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Opaque delivery id (a stream entry id for Redis Streams).
    pub id: String,
    /// The job.
    pub job: TagJob,
    /// 1 for the first delivery, counting up on each redelivery.
    pub attempt: u32,
}

/// A work queue of tagging jobs with at-least-once delivery.
pub trait TagQueue: std::fmt::Debug + Send + Sync + 'static {
    /// Adds a job.
    fn enqueue(&self, job: TagJob) -> BoxFuture<'_, Result<()>>;

    /// Waits for the next job: a new one, or one whose delivery was not acknowledged in time.
    fn next(&self) -> BoxFuture<'_, Result<Delivery>>;

    /// Marks a delivery as done; unknown ids are ignored.
    fn ack<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// The number of jobs not yet acknowledged (waiting or in flight).
    fn backlog(&self) -> BoxFuture<'_, Result<u64>>;
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    ready: VecDeque<(u64, TagJob, u32)>,
    in_flight: HashMap<u64, (TagJob, u32, Instant)>,
}

/// The embedded [`TagQueue`]: jobs live in this process's memory.
///
/// At-least-once within the process: a delivery not acknowledged within the visibility timeout
/// (the worker crashed, hung or failed to write the graph) is handed out again, as Redis
/// Streams' stale pending entries are reclaimed. Jobs do not survive a restart; the server
/// re-enqueues the files that the graph store lists as untagged when it starts.
#[derive(Debug)]
pub struct InProcessTagQueue {
    state: Mutex<State>,
    notify: Notify,
    visibility: Duration,
}

impl InProcessTagQueue {
    /// A queue that redelivers jobs not acknowledged within `visibility`.
    pub fn new(visibility: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            visibility,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a job if one is ready, else returns when the earliest in-flight job expires.
    fn try_take(&self) -> Result<Delivery, Option<Instant>> {
        let mut state = self.state();
        let now = Instant::now();
        let mut expired: Vec<u64> = state
            .in_flight
            .iter()
            .filter(|(_, (_, _, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        for id in expired.into_iter().rev() {
            if let Some((job, attempt, _)) = state.in_flight.remove(&id) {
                state.ready.push_front((id, job, attempt));
            }
        }
        match state.ready.pop_front() {
            Some((id, job, attempt)) => {
                let attempt = attempt + 1;
                state
                    .in_flight
                    .insert(id, (job.clone(), attempt, now + self.visibility));
                Ok(Delivery {
                    id: id.to_string(),
                    job,
                    attempt,
                })
            }
            None => Err(state.in_flight.values().map(|(_, _, d)| *d).min()),
        }
    }

    async fn next_inner(&self) -> Delivery {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_take() {
                Ok(delivery) => return delivery,
                Err(Some(deadline)) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                Err(None) => notified.await,
            }
        }
    }
}

impl TagQueue for InProcessTagQueue {
    fn enqueue(&self, job: TagJob) -> BoxFuture<'_, Result<()>> {
        {
            let mut state = self.state();
            let id = state.next_id;
            state.next_id += 1;
            state.ready.push_back((id, job, 0));
        }
        self.notify.notify_one();
        Box::pin(async { Ok(()) })
    }

    fn next(&self) -> BoxFuture<'_, Result<Delivery>> {
        Box::pin(async { Ok(self.next_inner().await) })
    }

    fn ack<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        if let Ok(id) = id.parse::<u64>() {
            self.state().in_flight.remove(&id);
        }
        Box::pin(async { Ok(()) })
    }

    fn backlog(&self) -> BoxFuture<'_, Result<u64>> {
        let state = self.state();
        let len = (state.ready.len() + state.in_flight.len()) as u64;
        Box::pin(async move { Ok(len) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn job(name: &str) -> TagJob {
        TagJob {
            name: name.to_owned(),
            sha256: "h".to_owned(),
        }
    }

    #[tokio::test]
    async fn unacknowledged_jobs_are_redelivered_after_the_timeout() {
        let queue = InProcessTagQueue::new(Duration::from_millis(50));
        queue.enqueue(job("a")).await.unwrap();
        queue.enqueue(job("b")).await.unwrap();
        let a = queue.next().await.unwrap();
        let b = queue.next().await.unwrap();
        assert_eq!((a.job.name.as_str(), a.attempt), ("a", 1));
        assert_eq!((b.job.name.as_str(), b.attempt), ("b", 1));
        queue.ack(&a.id).await.unwrap();
        assert_eq!(queue.backlog().await.unwrap(), 1);
        let started = Instant::now();
        let again = queue.next().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert_eq!((again.job, again.attempt, &again.id), (b.job, 2, &b.id));
        queue.ack(&again.id).await.unwrap();
        assert_eq!(queue.backlog().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn next_waits_for_an_enqueue() {
        let queue = Arc::new(InProcessTagQueue::new(Duration::from_secs(60)));
        let waiter = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.next().await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        queue.enqueue(job("late")).await.unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(delivery.job.name, "late");
    }
}
