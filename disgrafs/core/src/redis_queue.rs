//! The Redis Streams [`TagQueue`]: one stream, one consumer group, one consumer per worker.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{RedisError, Value};

use crate::redis_conn::{connect, redact};
use crate::{BoxFuture, Delivery, Error, Result, TagJob, TagQueue};

/// Bounds the non-blocking commands.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Names and timings of a [`RedisTagQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisQueueConfig {
    /// The stream key.
    pub stream: String,
    /// The consumer group shared by all workers.
    pub group: String,
    /// This worker's consumer name, unique among the group's live workers.
    pub consumer: String,
    /// A delivery not acknowledged for this long is claimed by the next worker that asks
    /// (`XAUTOCLAIM`), so a job of a crashed or hung worker is redelivered.
    pub claim_idle: Duration,
    /// How long one `XREADGROUP` waits for a new entry before stale entries are checked again.
    pub block: Duration,
}

impl RedisQueueConfig {
    /// The defaults (`disgrafs:tag-jobs`, group `taggers`, claim after 5 minutes, 1 s polls)
    /// for the consumer `consumer`.
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            stream: "disgrafs:tag-jobs".to_owned(),
            group: "taggers".to_owned(),
            consumer: consumer.into(),
            claim_idle: Duration::from_secs(300),
            block: Duration::from_secs(1),
        }
    }
}

/// A [`TagQueue`] on a Redis stream with a consumer group: several workers (each with its own
/// consumer name) share the jobs, each job goes to one of them.
///
/// At-least-once: an entry stays in the group's pending list until [`TagQueue::ack`], which
/// acknowledges and deletes it in one transaction (so the stream's length is the backlog);
/// entries pending longer than [`RedisQueueConfig::claim_idle`] are reclaimed with
/// `XAUTOCLAIM`. The group is created on first use starting at the stream's beginning, so
/// jobs enqueued before any worker started are not missed, and recreated if the server lost
/// it. Durability of the jobs is Redis's: run it with `appendonly yes`.
#[derive(Debug)]
pub struct RedisTagQueue {
    /// Short commands (enqueue, ack, claims, backlog).
    conn: ConnectionManager,
    /// Blocking reads, on their own connection so they never delay the short commands.
    reader: ConnectionManager,
    config: RedisQueueConfig,
    url: String,
    group_ready: AtomicBool,
    /// Where the next `XAUTOCLAIM` scan of the pending list continues.
    claim_cursor: Mutex<String>,
}

impl RedisTagQueue {
    /// A queue on the Redis server at `url`; connects lazily, so this fails only for a
    /// malformed URL.
    pub fn new(url: &str, config: RedisQueueConfig) -> Result<Self> {
        Ok(Self {
            conn: connect(url, COMMAND_TIMEOUT)?,
            reader: connect(url, config.block + COMMAND_TIMEOUT)?,
            url: redact(url),
            config,
            group_ready: AtomicBool::new(false),
            claim_cursor: Mutex::new("0-0".to_owned()),
        })
    }

    fn unavailable(&self, e: &RedisError) -> Error {
        if e.code() == Some("NOGROUP") {
            self.group_ready.store(false, Ordering::Release);
        }
        Error::Unavailable(format!("Redis queue at {}: {e}", self.url))
    }

    async fn ensure_group(&self) -> Result<()> {
        if self.group_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(self.unavailable(&e)),
            _ => {
                self.group_ready.store(true, Ordering::Release);
                Ok(())
            }
        }
    }

    /// Turns a stream entry into a delivery; `None` for a malformed entry, which is dropped.
    async fn delivery(&self, entry: StreamId, attempt: u32) -> Result<Option<Delivery>> {
        let field = |key: &str| -> Option<String> {
            redis::from_redis_value_ref::<String>(entry.map.get(key)?).ok()
        };
        if let (Some(name), Some(sha256)) = (field("name"), field("sha256")) {
            return Ok(Some(Delivery {
                id: entry.id,
                job: TagJob { name, sha256 },
                attempt,
            }));
        }
        tracing::warn!(
            "dropping malformed entry {} of stream {}",
            entry.id,
            self.config.stream
        );
        self.ack(&entry.id).await?;
        Ok(None)
    }

    /// Claims one entry that has been pending longer than the idle timeout, if any.
    async fn claim_stale(&self) -> Result<Option<Delivery>> {
        let cursor = self
            .claim_cursor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut conn = self.conn.clone();
        let idle_ms = u64::try_from(self.config.claim_idle.as_millis()).unwrap_or(u64::MAX);
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg(idle_ms)
            .arg(&cursor)
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.unavailable(&e))?;
        *self
            .claim_cursor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reply.next_stream_id;
        let Some(entry) = reply.claimed.into_iter().next() else {
            return Ok(None);
        };
        // XAUTOCLAIM counted this delivery; XPENDING tells how many there were.
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(&entry.id)
            .arg(&entry.id)
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.unavailable(&e))?;
        let attempt = pending.first().map_or(2, |(_, _, _, count)| {
            u32::try_from(*count).unwrap_or(u32::MAX)
        });
        self.delivery(entry, attempt).await
    }

    /// Waits up to the block time for a new entry.
    async fn read_new(&self) -> Result<Option<Delivery>> {
        let mut reader = self.reader.clone();
        let block_ms = u64::try_from(self.config.block.as_millis()).unwrap_or(u64::MAX);
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.config.stream)
            .arg(">")
            .query_async(&mut reader)
            .await
            .map_err(|e| self.unavailable(&e))?;
        let entry = reply.and_then(|r| r.keys.into_iter().flat_map(|k| k.ids).next());
        match entry {
            Some(entry) => self.delivery(entry, 1).await,
            None => Ok(None),
        }
    }

    async fn next_inner(&self) -> Result<Delivery> {
        loop {
            self.ensure_group().await?;
            if let Some(delivery) = self.claim_stale().await? {
                return Ok(delivery);
            }
            if let Some(delivery) = self.read_new().await? {
                return Ok(delivery);
            }
        }
    }
}

/// Whether `id` looks like a stream entry id (`MS-SEQ`).
fn is_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq]
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    })
}

impl TagQueue for RedisTagQueue {
    fn enqueue(&self, job: TagJob) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: String = redis::cmd("XADD")
                .arg(&self.config.stream)
                .arg("*")
                .arg("name")
                .arg(&job.name)
                .arg("sha256")
                .arg(&job.sha256)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.unavailable(&e))?;
            Ok(())
        })
    }

    fn next(&self) -> BoxFuture<'_, Result<Delivery>> {
        Box::pin(self.next_inner())
    }

    fn ack<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if !is_entry_id(id) {
                return Ok(());
            }
            let mut conn = self.conn.clone();
            let _: (u64, u64) = redis::pipe()
                .atomic()
                .cmd("XACK")
                .arg(&self.config.stream)
                .arg(&self.config.group)
                .arg(id)
                .cmd("XDEL")
                .arg(&self.config.stream)
                .arg(id)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.unavailable(&e))?;
            Ok(())
        })
    }

    fn backlog(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("XLEN")
                .arg(&self.config.stream)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.unavailable(&e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entry_ids_are_acknowledged() {
        assert!(is_entry_id("1700000000000-0"));
        assert!(!is_entry_id("7"));
        assert!(!is_entry_id("1-"));
        assert!(!is_entry_id("a-1"));
        assert!(!is_entry_id("1-2-3"));
    }
}
