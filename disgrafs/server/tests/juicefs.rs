//! The `disgrafs-server` binary with its data directory (blobs and the embedded graph) on a
//! JuiceFS volume: Redis metadata, local object storage, a FUSE mount that the test makes and
//! removes again (also when it fails: the suite runs inside tools/leak-check).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use disgrafs_testsupport::{JuiceFs, Unmounted, mount_type};
use reqwest::StatusCode;
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use sha2::{Digest, Sha256};

const TOKEN: &str = "juicefs-test-token";
const WAIT: Duration = Duration::from_secs(30);

/// A `disgrafs-server` process, stopped with SIGTERM (killed if need be) when dropped.
struct ServerProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

impl ServerProcess {
    fn start(data: &Path, logs: &Path) -> Self {
        let out = logs.join("server.out");
        let log = logs.join("server.log");
        let child = Command::new(env!("CARGO_BIN_EXE_disgrafs-server"))
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("DISGRAFS_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            url: String::new(),
            log,
        };
        let deadline = Instant::now() + WAIT;
        server.url = loop {
            let printed = std::fs::read_to_string(&out).unwrap();
            if let Some(url) = printed
                .lines()
                .find_map(|l| l.strip_prefix("disgrafs-server listening on "))
            {
                break url.to_owned();
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "disgrafs-server exited with {status}: {}",
                    server.log_text()
                );
            }
            assert!(Instant::now() < deadline, "no listen line: {printed}");
            std::thread::sleep(Duration::from_millis(20));
        };
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits: the server must stop cleanly on its own.
    fn stop(mut self) {
        let pid = Pid::from_raw(self.child.id().try_into().unwrap()).unwrap();
        kill_process(pid, Signal::TERM).unwrap();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}: {}", self.log_text());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn json(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

async fn put(client: &reqwest::Client, url: &str, name: &str, body: Vec<u8>) -> Value {
    let response = client
        .put(format!("{url}/api/files/{name}"))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    json(response).await
}

async fn download(client: &reqwest::Client, url: &str, name: &str) -> Vec<u8> {
    let response = client
        .get(format!("{url}/api/files/{name}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap().to_vec()
}

async fn wait_for_tags(client: &reqwest::Client, url: &str, name: &str) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = client
            .get(format!("{url}/api/files/{name}/tags"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let tags: Vec<String> = json(response)
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tag"].as_str().unwrap().to_owned())
            .collect();
        if !tags.is_empty() {
            return tags;
        }
        assert!(Instant::now() < deadline, "no tags for {name}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Total size of the objects under `dir`.
fn stored_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Upload, download (whole and a range), tagging and search with everything on the mount; a
/// restarted server finds it all again; the volume unmounts cleanly afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_its_data_on_a_juicefs_mount() {
    let mut volume = JuiceFs::start().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let data = volume.mountpoint().join("data");
    let client = reqwest::Client::new();

    let server = ServerProcess::start(&data, logs.path());
    let text = "JuiceFS keeps metadata in Redis and chunks in object storage. \
                The graph of files and tags lives on the same mount as the files. \
                Metadata, chunks, mount, metadata."
        .as_bytes()
        .to_vec();
    let blob: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let answer = put(&client, &server.url, "notes.txt", text.clone()).await;
    assert_eq!(answer["sha256"], sha256_hex(&text));
    let answer = put(&client, &server.url, "blob.bin", blob.clone()).await;
    assert_eq!(
        (answer["size"].as_u64(), answer["sha256"].as_str()),
        (Some(blob.len() as u64), Some(sha256_hex(&blob).as_str()))
    );

    assert!(download(&client, &server.url, "blob.bin").await == blob);
    let range = client
        .get(format!("{}/api/files/blob.bin", server.url))
        .header("Range", "bytes=5000000-5000999")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert!(range.bytes().await.unwrap() == blob[5_000_000..5_001_000]);

    // The files are plain files on the mount, their bytes chunk objects in the bucket.
    assert!(std::fs::read(data.join("files/blob.bin")).unwrap() == blob);
    assert!(stored_bytes(&volume.bucket()) >= (blob.len() + text.len()) as u64);
    assert!(data.join("graph.sqlite").exists());

    let tags = wait_for_tags(&client, &server.url, "notes.txt").await;
    assert!(tags.iter().any(|t| t == "metadata"), "{tags:?}");
    let found = json(
        client
            .get(format!("{}/api/search?tags=metadata", server.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(found["total"], 1, "{found}");
    server.stop();

    // A new server on the same mount serves the same files and graph.
    let server = ServerProcess::start(&data, logs.path());
    assert!(download(&client, &server.url, "notes.txt").await == text);
    let tags_again = wait_for_tags(&client, &server.url, "notes.txt").await;
    assert_eq!(tags_again, tags);
    let deleted = client
        .delete(format!("{}/api/files/blob.bin", server.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert!(!data.join("files/blob.bin").exists());
    server.stop();

    let mnt = volume.mountpoint().to_owned();
    assert_eq!(volume.unmount().unwrap(), Unmounted::Cleanly);
    assert_eq!(mount_type(&mnt).unwrap(), None);
}
