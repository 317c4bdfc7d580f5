//! The server on real backends that each test starts on 127.0.0.1 (Redis Streams queue,
//! FalkorDB graph): outages of Redis and FalkorDB answer 503 with a JSON error and lose
//! nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use disgrafs_server::{Config, Running, start};
use disgrafs_testsupport::RedisServer;
use reqwest::StatusCode;
use serde_json::Value;

const TOKEN: &str = "backend-test-token";
const WAIT: Duration = Duration::from_secs(20);

struct Server {
    running: Running,
    client: reqwest::Client,
}

impl Server {
    async fn start(
        data: &Path,
        redis: Option<&RedisServer>,
        falkordb: Option<&RedisServer>,
    ) -> Self {
        let running = start(Config {
            redis: redis.map(RedisServer::url),
            falkordb: falkordb.map(RedisServer::url),
            workers: Some(1),
            redelivery: Duration::from_secs(2),
            ..Config::new(
                "127.0.0.1:0".parse().unwrap(),
                data.to_owned(),
                TOKEN.to_owned(),
            )
        })
        .await
        .unwrap();
        Self {
            running,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }

    async fn put(&self, name: &str, body: &'static [u8]) -> (StatusCode, Value) {
        let response = self
            .client
            .put(self.url(&format!("/api/files/{name}")))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status(), json(response).await)
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (response.status(), json(response).await)
    }

    async fn download(&self, name: &str) -> (StatusCode, Vec<u8>) {
        let response = self
            .client
            .get(self.url(&format!("/api/files/{name}")))
            .send()
            .await
            .unwrap();
        (response.status(), response.bytes().await.unwrap().to_vec())
    }

    /// Polls until `name` has tags; returns them.
    async fn wait_for_tags(&self, name: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.get_json(&format!("/api/files/{name}/tags")).await;
            if status == StatusCode::OK {
                let tags: Vec<String> = body
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["tag"].as_str().unwrap().to_owned())
                    .collect();
                if !tags.is_empty() {
                    return tags;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no tags for {name}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn json(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

fn assert_unavailable((status, body): (StatusCode, Value), backend: &str) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"));
    assert!(
        message.contains(backend),
        "{message:?} should name {backend}"
    );
}

fn outbox(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// FalkorDB down: reads and health answer 503 naming FalkorDB; an upload is stored, answered
/// 503 ("stored … will be indexed and tagged"), kept in the outbox, and indexed and tagged
/// once FalkorDB is back.
#[tokio::test]
async fn falkordb_down_answers_503_and_uploads_are_tagged_when_it_returns() {
    let redis = RedisServer::redis().unwrap();
    let mut falkordb = RedisServer::falkordb().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(&redis), Some(&falkordb)).await;
    assert_eq!(
        server.put("before.txt", b"graph database graph").await.0,
        StatusCode::CREATED
    );
    assert_eq!(server.wait_for_tags("before.txt").await[0], "graph");

    falkordb.stop();
    assert_unavailable(server.get_json("/api/search?tags=graph").await, "FalkorDB");
    assert_unavailable(server.get_json("/healthz").await, "FalkorDB");
    assert_unavailable(
        server.get_json("/api/files/before.txt/tags").await,
        "FalkorDB",
    );
    let (status, body) = server.put("during.txt", b"outage survives outage").await;
    assert_unavailable((status, body.clone()), "FalkorDB");
    assert!(
        body["error"].as_str().unwrap().contains("was stored"),
        "{body}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("files/during.txt")).unwrap(),
        b"outage survives outage"
    );
    assert_eq!(outbox(dir.path()), vec!["during.txt"]);

    falkordb.restart().unwrap();
    assert_eq!(server.wait_for_tags("during.txt").await[0], "outage");
    assert!(outbox(dir.path()).is_empty());
    let (status, body) = server.get_json("/api/search?tags=graph").await;
    assert_eq!(
        (status, body["total"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    assert_eq!(server.get_json("/healthz").await.0, StatusCode::OK);
    server.running.shutdown().await.unwrap();
}

/// Redis (the queue) down: health answers 503 naming Redis; an upload is stored and indexed
/// (downloadable, searchable by name) but answered 503 because it could not be queued; it is
/// queued and tagged once Redis is back.
#[tokio::test]
async fn redis_down_answers_503_and_uploads_are_queued_when_it_returns() {
    let mut redis = RedisServer::redis().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(&redis), None).await;
    assert_eq!(
        server.put("first.txt", b"queue queue streams").await.0,
        StatusCode::CREATED
    );
    assert_eq!(server.wait_for_tags("first.txt").await[0], "queue");

    redis.stop();
    assert_unavailable(server.get_json("/healthz").await, "Redis");
    let (status, body) = server.put("late.txt", b"redis returns; redis tags").await;
    assert_unavailable((status, body.clone()), "Redis");
    assert!(
        body["error"].as_str().unwrap().contains("was stored"),
        "{body}"
    );
    assert_eq!(
        server.download("late.txt").await,
        (StatusCode::OK, b"redis returns; redis tags".to_vec())
    );
    let (status, body) = server.get_json("/api/search?name=late").await;
    assert_eq!(
        (status, body["total"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    assert_eq!(outbox(dir.path()), vec!["late.txt"]);

    redis.restart().unwrap();
    assert_eq!(server.wait_for_tags("late.txt").await[0], "redis");
    assert!(outbox(dir.path()).is_empty());
    assert_eq!(server.get_json("/healthz").await.0, StatusCode::OK);
    server.running.shutdown().await.unwrap();
}
