//! The `disgrafs-tagger` binary against real Redis (and FalkorDB) servers that each test starts
//! on 127.0.0.1: redelivery after a worker is killed mid-job, and two workers sharing a group.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use disgrafs_core::{
    FalkorGraphStore, FileKind, FileMeta, GraphStore, RedisQueueConfig, RedisTagQueue,
    SqliteGraphStore, TagJob, TagQueue,
};
use disgrafs_testsupport::RedisServer;

const WAIT: Duration = Duration::from_secs(20);

/// A tagger process, killed when dropped.
struct Tagger {
    child: Child,
    log: PathBuf,
}

impl Tagger {
    fn start(redis: &RedisServer, data: &Path, extra: &[&str], consumer: &str) -> Self {
        let log = data.join(format!("{consumer}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_disgrafs-tagger"))
            .args(["--redis", &redis.url(), "--consumer", consumer, "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tagger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Stores `content` under `name` as the server does: blob in DIR/files, record, job.
async fn store(
    data: &Path,
    graph: &dyn GraphStore,
    queue: &RedisTagQueue,
    name: &str,
    content: &[u8],
) {
    std::fs::write(data.join("files").join(name), content).unwrap();
    let sha256 = sha256_hex(content);
    let meta = FileMeta {
        name: name.to_owned(),
        size: content.len() as u64,
        sha256: sha256.clone(),
        kind: FileKind::Text,
        uploaded: 1,
    };
    graph.upsert_file(meta).await.unwrap();
    queue
        .enqueue(TagJob {
            name: name.to_owned(),
            sha256,
        })
        .await
        .unwrap();
}

fn producer(redis: &RedisServer) -> RedisTagQueue {
    RedisTagQueue::new(&redis.url(), RedisQueueConfig::new("test-producer")).unwrap()
}

/// Waits until nothing is queued or pending and no file is untagged.
async fn wait_until_done(graph: &dyn GraphStore, queue: &RedisTagQueue, logs: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while queue.backlog().await.unwrap() > 0 || !graph.untagged(1).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "jobs left after {WAIT:?}; logs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the group has a pending (delivered, unacknowledged) entry owned by `consumer`.
fn pending_for(redis: &RedisServer, consumer: &str) -> bool {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let config = RedisQueueConfig::new(consumer);
    let entries: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(&config.stream)
        .arg(&config.group)
        .arg("-")
        .arg("+")
        .arg(10)
        .arg(consumer)
        .query(&mut conn)
        .unwrap_or_default();
    !entries.is_empty()
}

/// Worker A takes the job and hangs reading the file (a FIFO nobody writes: a stalled
/// storage read); it is SIGKILLed mid-job. Worker B claims the entry once it has been idle
/// for the claim timeout, tags the real content, and acknowledges: the graph ends with exactly
/// the content's tags and the queue is empty.
#[tokio::test]
async fn a_job_of_a_worker_killed_mid_job_is_redelivered_and_the_graph_ends_consistent() {
    let redis = RedisServer::redis().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    std::fs::create_dir(data.join("files")).unwrap();
    let graph = SqliteGraphStore::open(&data.join("graph.sqlite")).unwrap();
    let queue = producer(&redis);
    let content = b"redelivery keeps graphs consistent; redelivery after crashes";
    store(data, &graph, &queue, "stuck.txt", content).await;
    let blob = data.join("files/stuck.txt");
    std::fs::remove_file(&blob).unwrap();
    let status = Command::new("mkfifo").arg(&blob).status().unwrap();
    assert!(status.success(), "mkfifo failed");

    let mut a = Tagger::start(&redis, data, &["--claim-idle-ms", "600000"], "worker-a");
    let deadline = Instant::now() + WAIT;
    while !pending_for(&redis, "worker-a") {
        assert!(
            Instant::now() < deadline,
            "worker A took no job:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        a.child.try_wait().unwrap().is_none(),
        "worker A must still be mid-job"
    );
    let status = Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = a.child.wait();
    assert!(
        graph.untagged(10).await.unwrap().len() == 1,
        "A wrote nothing"
    );

    let temp = data.join("files/.incoming");
    std::fs::write(&temp, content).unwrap();
    std::fs::rename(&temp, &blob).unwrap();
    let b = Tagger::start(&redis, data, &["--claim-idle-ms", "300"], "worker-b");
    wait_until_done(&graph, &queue, || format!("{}\n{}", a.log(), b.log())).await;
    let tags: Vec<String> = graph
        .tags_of("stuck.txt")
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|t| t.tag)
        .collect();
    assert_eq!(tags[0], "redelivery", "{tags:?}");
    assert!(tags.contains(&"consistent".to_owned()), "{tags:?}");
    assert!(
        b.log().contains("stuck.txt (attempt 2): Tagged"),
        "{}",
        b.log()
    );
    assert!(!pending_for(&redis, "worker-a") && !pending_for(&redis, "worker-b"));
}

/// Two tagger processes share the group on FalkorDB: every file is tagged exactly once, and
/// both workers take part.
#[tokio::test]
async fn two_workers_share_the_group_and_tag_every_file_once() {
    let redis = RedisServer::redis().unwrap();
    let falkordb = RedisServer::falkordb().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    std::fs::create_dir(data.join("files")).unwrap();
    let graph: Arc<dyn GraphStore> =
        Arc::new(FalkorGraphStore::new(&falkordb.url(), "disgrafs").unwrap());
    let queue = producer(&redis);
    let extra = ["--falkordb", &falkordb.url(), "--claim-idle-ms", "60000"];
    let a = Tagger::start(&redis, data, &extra, "worker-a");
    let b = Tagger::start(&redis, data, &extra, "worker-b");
    let names: Vec<String> = (0..16).map(|i| format!("doc-{i:02}.txt")).collect();
    for (i, name) in names.iter().enumerate() {
        let text = format!("shared topic{i} topic{i} words");
        store(data, graph.as_ref(), &queue, name, text.as_bytes()).await;
    }
    wait_until_done(graph.as_ref(), &queue, || {
        format!("{}\n{}", a.log(), b.log())
    })
    .await;
    for (i, name) in names.iter().enumerate() {
        let tags: Vec<String> = graph
            .tags_of(name)
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|t| t.tag)
            .collect();
        assert_eq!(tags[0], format!("topic{i}"), "{name}: {tags:?}");
    }
    let logs = [a.log(), b.log()];
    let done: Vec<usize> = logs
        .iter()
        .map(|log| log.matches("): Tagged").count())
        .collect();
    assert_eq!(
        done.iter().sum::<usize>(),
        names.len(),
        "each file once: {logs:?}"
    );
    assert!(
        done.iter().all(|&n| n > 0),
        "both workers take part: {done:?}"
    );
}
