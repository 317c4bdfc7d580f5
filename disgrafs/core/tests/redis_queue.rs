//! The Redis Streams queue against a real `redis-server` that each test starts on 127.0.0.1.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use disgrafs_core::{Error, RedisQueueConfig, RedisTagQueue, TagJob, TagQueue};
use disgrafs_testsupport::RedisServer;

fn queue(server: &RedisServer, consumer: &str, claim_idle: Duration) -> RedisTagQueue {
    let config = RedisQueueConfig {
        claim_idle,
        block: Duration::from_millis(100),
        ..RedisQueueConfig::new(consumer)
    };
    RedisTagQueue::new(&server.url(), config).unwrap()
}

fn job(name: &str) -> TagJob {
    TagJob {
        name: name.to_owned(),
        sha256: format!("sha-of-{name}"),
    }
}

/// The next delivery; errors (the first command on a connection that broke in an outage
/// fails before the connection is re-established) are retried, as the worker does.
async fn next(queue: &RedisTagQueue) -> disgrafs_core::Delivery {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, queue.next()).await {
            Ok(Ok(delivery)) => return delivery,
            Ok(Err(e)) => assert!(Instant::now() < deadline, "no delivery: {e}"),
            Err(_) => panic!("no delivery within 10 s"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jobs enqueued before any worker existed reach the group; two consumers split them and
/// every job is delivered exactly once when nobody fails.
#[tokio::test]
async fn two_consumers_share_the_group_and_each_job_is_delivered_once() {
    two_consumers_share_the_group(&RedisServer::redis().unwrap()).await;
}

/// The same against Redis from the lab's storage image (`lab images build storage`), in a
/// container started through testcontainers.
#[tokio::test]
async fn two_consumers_share_the_group_on_the_lab_storage_image() {
    let Some(server) = RedisServer::redis_in_storage_image().unwrap() else {
        return;
    };
    two_consumers_share_the_group(&server).await;
}

async fn two_consumers_share_the_group(server: &RedisServer) {
    let producer = queue(server, "producer", Duration::from_secs(60));
    let jobs: BTreeSet<String> = (0..20).map(|i| format!("file-{i:02}")).collect();
    for name in &jobs {
        producer.enqueue(job(name)).await.unwrap();
    }
    assert_eq!(producer.backlog().await.unwrap(), 20);
    let consume = |consumer: &'static str| {
        let q = queue(server, consumer, Duration::from_secs(60));
        async move {
            let mut got = Vec::new();
            while let Ok(Ok(delivery)) =
                tokio::time::timeout(Duration::from_millis(500), q.next()).await
            {
                assert_eq!(delivery.attempt, 1);
                assert_eq!(delivery.job, job(&delivery.job.name));
                got.push(delivery.job.name.clone());
                q.ack(&delivery.id).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            got
        }
    };
    let (a, b) = tokio::join!(consume("a"), consume("b"));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both consumers work: {a:?} {b:?}"
    );
    let mut all: Vec<String> = a.into_iter().chain(b).collect();
    all.sort();
    assert_eq!(
        all,
        jobs.into_iter().collect::<Vec<_>>(),
        "each job exactly once"
    );
    assert_eq!(producer.backlog().await.unwrap(), 0);
}

/// A consumer that takes a job and dies (never acknowledges) loses it to another consumer once
/// the entry has been idle for the claim timeout; the late acknowledgement of the dead one is
/// harmless.
#[tokio::test]
async fn an_unacknowledged_job_is_claimed_by_another_consumer_after_the_idle_timeout() {
    let server = RedisServer::redis().unwrap();
    let claim_idle = Duration::from_millis(300);
    let dead = queue(&server, "dead", claim_idle);
    dead.enqueue(job("orphan")).await.unwrap();
    let first = next(&dead).await;
    assert_eq!((first.job.name.as_str(), first.attempt), ("orphan", 1));
    let survivor = queue(&server, "survivor", claim_idle);
    let started = Instant::now();
    let again = next(&survivor).await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "claimed too early"
    );
    assert_eq!(
        (again.job, again.attempt, &again.id),
        (first.job, 2, &first.id)
    );
    survivor.ack(&again.id).await.unwrap();
    dead.ack(&first.id).await.unwrap();
    dead.ack("not-an-id").await.unwrap();
    assert_eq!(survivor.backlog().await.unwrap(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(600), survivor.next())
            .await
            .is_err(),
        "nothing is left to deliver"
    );
}

/// While Redis is down every operation fails fast as unavailable; after a restart (with its
/// append-only file) the queued jobs and the group are still there.
#[tokio::test]
async fn jobs_survive_a_redis_outage_and_errors_are_fast_while_it_is_down() {
    let mut server = RedisServer::redis().unwrap();
    let q = queue(&server, "w", Duration::from_secs(60));
    q.enqueue(job("before")).await.unwrap();
    let taken = next(&q).await;
    server.stop();
    let started = Instant::now();
    let err = q.enqueue(job("during")).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert!(
        err.to_string()
            .contains("Redis queue at redis://127.0.0.1:"),
        "{err}"
    );
    assert!(q.backlog().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "errors take {:?}",
        started.elapsed()
    );
    server.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while q.enqueue(job("after")).await.is_err() {
        assert!(Instant::now() < deadline, "the queue did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        q.backlog().await.unwrap(),
        2,
        "'before' (pending) and 'after'"
    );
    let after = next(&q).await;
    assert_eq!(after.job.name, "after");
    q.ack(&taken.id).await.unwrap();
    q.ack(&after.id).await.unwrap();
    assert_eq!(q.backlog().await.unwrap(), 0);
}
