//! End-to-end tests: the server on 127.0.0.1:0 and a real HTTP client (reqwest, or raw TCP
//! where exact bytes or a broken connection matter).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use disgrafs_server::{Config, Running, start};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "secret-test-token";
const WAIT: Duration = Duration::from_secs(10);

struct TestServer {
    running: Running,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl TestServer {
    async fn start(max_upload: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, max_upload).await
    }

    async fn start_in(dir: tempfile::TempDir, max_upload: u64) -> Self {
        let running = start(Config {
            max_upload,
            redelivery: Duration::from_secs(30),
            ..Config::new(
                "127.0.0.1:0".parse().unwrap(),
                dir.path().to_owned(),
                TOKEN.to_owned(),
            )
        })
        .await
        .unwrap();
        Self {
            running,
            dir,
            client: reqwest::Client::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    fn files_dir(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    async fn put(&self, name: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/api/files/{name}")))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.get(path).await;
        let status = response.status();
        (status, json(response).await)
    }

    /// Polls the tags of `name` until they are non-empty.
    async fn wait_for_tags(&self, name: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = self.get_json(&format!("/api/files/{name}/tags")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let tags: Vec<String> = body
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["tag"].as_str().unwrap().to_owned())
                .collect();
            if !tags.is_empty() {
                return tags;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no tags for {name} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn json(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Polls until `condition` holds for the entries of `dir`.
async fn wait_for_entries(dir: &Path, what: &str, condition: impl Fn(&[String]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition(&entries(dir)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            entries(dir)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn has_temp(names: &[String]) -> bool {
    names.iter().any(|n| n.starts_with(".disgrafs-tmp-"))
}

/// Sends `head` (request line and headers, without the blank line) and `body` over a new
/// connection with `Connection: close`; returns the status and the body.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{head}\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stream.write_all(body).await.unwrap();
    read_response(stream).await
}

async fn read_response(mut stream: TcpStream) -> (u16, String) {
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// A mono 16-bit PCM WAV file.
fn wav(rate: u32, samples: &[i16]) -> Vec<u8> {
    let data_len = u32::try_from(samples.len() * 2).unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
    out
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn upload_download_roundtrip_with_sha256_etag_and_disposition() {
    let server = TestServer::start(1 << 20).await;
    let content = pattern(200_000);
    let response = server
        .put("%E6%8A%A5%E5%91%8A%201.bin", content.clone())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = json(response).await;
    assert_eq!(body["name"], "报告 1.bin");
    assert_eq!(body["size"], 200_000);
    assert_eq!(body["sha256"], sha256_hex(&content));
    assert_eq!(body["kind"], "other");
    assert_eq!(entries(&server.files_dir()), vec!["报告 1.bin"]);

    let response = server.get("/api/files/%E6%8A%A5%E5%91%8A%201.bin").await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(
        headers["etag"],
        format!("\"{}\"", sha256_hex(&content)).as_str()
    );
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"__ 1.bin\"; filename*=UTF-8''%E6%8A%A5%E5%91%8A%201.bin"
    );
    let downloaded = response.bytes().await.unwrap();
    assert_eq!(sha256_hex(&downloaded), sha256_hex(&content));

    let etag = headers["etag"].to_str().unwrap();
    let cached = server
        .client
        .get(server.url("/api/files/%E6%8A%A5%E5%91%8A%201.bin"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(cached.headers()["etag"], etag);
    assert!(cached.bytes().await.unwrap().is_empty());
    let stale = server
        .client
        .get(server.url("/api/files/%E6%8A%A5%E5%91%8A%201.bin"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
}

#[tokio::test]
async fn range_requests() {
    let server = TestServer::start(1 << 20).await;
    let content = pattern(1000);
    assert_eq!(
        server.put("r.bin", content.clone()).await.status(),
        StatusCode::CREATED
    );
    let ranged = |range: &'static str| {
        server
            .client
            .get(server.url("/api/files/r.bin"))
            .header("range", range)
            .send()
    };
    let response = ranged("bytes=10-19").await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.headers()["content-range"], "bytes 10-19/1000");
    assert_eq!(response.bytes().await.unwrap(), &content[10..20]);
    let response = ranged("bytes=-5").await.unwrap();
    assert_eq!(response.headers()["content-range"], "bytes 995-999/1000");
    assert_eq!(response.bytes().await.unwrap(), &content[995..]);
    let response = ranged("bytes=990-").await.unwrap();
    assert_eq!(response.bytes().await.unwrap(), &content[990..]);
    let response = ranged("bytes=1000-").await.unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(response.headers()["content-range"], "bytes */1000");
    assert!(
        json(response).await["error"]
            .as_str()
            .unwrap()
            .contains("1000 bytes")
    );
    let response = server
        .client
        .get(server.url("/api/files/r.bin"))
        .header("range", "bytes=0-9")
        .header("if-range", "\"old-etag\"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a stale If-Range gets the whole file"
    );
    assert_eq!(response.bytes().await.unwrap().len(), 1000);
}

#[tokio::test]
async fn oversize_uploads_are_413_and_leave_nothing() {
    let server = TestServer::start(1024).await;
    let response = server.put("big.bin", vec![1u8; 2000]).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        json(response).await["error"]
            .as_str()
            .unwrap()
            .contains("1024 bytes")
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![2u8; 800]), Ok(vec![2u8; 800])];
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = server.put("chunked.bin", streamed).await;
    assert_eq!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "no Content-Length: counted while streaming"
    );
    wait_for_entries(&server.files_dir(), "no files", |names| names.is_empty()).await;
    assert_eq!(
        server.put("fits.bin", vec![3u8; 1024]).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(entries(&server.files_dir()), vec!["fits.bin"]);
}

#[tokio::test]
async fn writes_need_the_bearer_token() {
    let server = TestServer::start(1024).await;
    let url = server.url("/api/files/a.txt");
    let response = server.client.put(&url).body("x").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert!(
        json(response).await["error"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    let response = server
        .client
        .put(&url)
        .bearer_auth("wrong")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(entries(&server.files_dir()).is_empty());
    assert_eq!(
        server.put("a.txt", "hello").await.status(),
        StatusCode::CREATED
    );
    let response = server.client.delete(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        server.get("/api/files/a.txt").await.status(),
        StatusCode::OK,
        "reads need no token"
    );
}

#[tokio::test]
async fn traversal_and_control_character_names_are_rejected() {
    let server = TestServer::start(1024).await;
    let long = "n".repeat(256);
    let encoded = [
        "..%2Fescape.txt",
        "%2E%2E",
        "sub%2Fdir.txt",
        "a%5Cb.txt",
        "a%00b.txt",
        "a%0Ab.txt",
        "a%7Fb.txt",
        ".hidden",
        long.as_str(),
    ];
    for name in encoded {
        let head = format!(
            "PUT /api/files/{name} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1"
        );
        let (status, body) = raw(server.addr(), &head, b"x").await;
        assert_eq!(status, 400, "{name}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("name"),
            "{name}: {body}"
        );
        let (status, _) = raw(
            server.addr(),
            &format!("GET /api/files/{name} HTTP/1.1"),
            b"",
        )
        .await;
        assert_eq!(status, 400, "GET {name}");
    }
    let head = format!(
        "PUT /api/files/../../escape.txt HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1"
    );
    let (status, body) = raw(server.addr(), &head, b"x").await;
    assert_eq!(status, 404, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    assert!(entries(&server.files_dir()).is_empty());
    assert_eq!(
        entries(server.dir.path())
            .iter()
            .filter(|n| n.contains("escape"))
            .count(),
        0
    );
}

#[tokio::test]
async fn a_client_disconnecting_mid_upload_leaves_no_file() {
    let server = TestServer::start(1 << 20).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "PUT /api/files/partial.bin HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 500000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&pattern(100_000)).await.unwrap();
    wait_for_entries(&server.files_dir(), "the upload's temp file", has_temp).await;
    assert!(!entries(&server.files_dir()).contains(&"partial.bin".to_owned()));
    drop(stream);
    wait_for_entries(&server.files_dir(), "the temp file's removal", |names| {
        names.is_empty()
    })
    .await;
    assert_eq!(
        server.get("/api/files/partial.bin").await.status(),
        StatusCode::NOT_FOUND
    );
    let (_, page) = server.get_json("/api/search?name=partial").await;
    assert_eq!(page["total"], 0);
}

/// Two uploads of one name overlap; the one whose body completes last wins, and the stored
/// file and its record are exactly that upload's bytes.
#[tokio::test]
async fn concurrent_uploads_of_one_name_last_to_finish_wins() {
    let server = TestServer::start(1 << 20).await;
    let first = pattern(300_000);
    let second = vec![9u8; 250_000];
    let mut slow = TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "PUT /api/files/same.bin HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        first.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&first[..150_000]).await.unwrap();
    wait_for_entries(&server.files_dir(), "the slow upload's temp file", has_temp).await;

    let response = server.put("same.bin", second.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(json(response).await["sha256"], sha256_hex(&second));
    let interim = server
        .get("/api/files/same.bin")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&interim), sha256_hex(&second));

    slow.write_all(&first[150_000..]).await.unwrap();
    let (status, body) = read_response(slow).await;
    assert_eq!(status, 201, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["sha256"], sha256_hex(&first));

    let response = server.get("/api/files/same.bin").await;
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let stored = response.bytes().await.unwrap();
    assert_eq!(sha256_hex(&stored), sha256_hex(&first));
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&first)));
    let (_, page) = server.get_json("/api/search?name=same.bin").await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["files"][0]["sha256"], sha256_hex(&first));
    assert_eq!(entries(&server.files_dir()), vec!["same.bin"]);
}

async fn upload_corpus(server: &TestServer) {
    let files: [(&str, Vec<u8>); 4] = [
        (
            "alpha-notes.txt",
            b"kernel kernel kernel networking".to_vec(),
        ),
        ("beta-notes.txt", b"kernel graph graph".to_vec()),
        (
            "gamma.txt",
            "graph storage 图数据库 图数据库".as_bytes().to_vec(),
        ),
        ("tone.wav", wav(8000, &vec![1000i16; 8000])),
    ];
    for (name, content) in files {
        assert_eq!(
            server.put(name, content).await.status(),
            StatusCode::CREATED,
            "{name}"
        );
    }
}

fn file_names(page: &Value) -> Vec<&str> {
    page["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn tags_appear_and_search_by_tag_name_kind_with_pages() {
    let server = TestServer::start(1 << 20).await;
    upload_corpus(&server).await;
    assert_eq!(
        server.wait_for_tags("alpha-notes.txt").await,
        vec!["kernel", "networking"]
    );
    assert_eq!(
        server.wait_for_tags("beta-notes.txt").await,
        vec!["graph", "kernel"]
    );
    let gamma = server.wait_for_tags("gamma.txt").await;
    assert!(
        gamma.contains(&"图数据库".to_owned()) || gamma.contains(&"数据库".to_owned()),
        "{gamma:?}"
    );
    let audio = server.wait_for_tags("tone.wav").await;
    for expected in [
        "format:wav",
        "duration:1s",
        "samplerate:8000",
        "channels:mono",
    ] {
        assert!(
            audio.contains(&expected.to_owned()),
            "{expected} not in {audio:?}"
        );
    }

    let search = |query: &'static str| server.get_json(query);
    let (_, page) = search("/api/search?tags=kernel").await;
    assert_eq!(
        (file_names(&page), &page["total"]),
        (vec!["alpha-notes.txt", "beta-notes.txt"], &Value::from(2))
    );
    let (_, page) = search("/api/search?tags=kernel,graph").await;
    assert_eq!(file_names(&page), vec!["beta-notes.txt"]);
    let (_, page) = search("/api/search?name=NOTES").await;
    assert_eq!(file_names(&page), vec!["alpha-notes.txt", "beta-notes.txt"]);
    let (_, page) = search("/api/search?kind=audio").await;
    assert_eq!(file_names(&page), vec!["tone.wav"]);
    let (_, page) = search("/api/search?kind=text&offset=1&limit=2").await;
    assert_eq!(
        (file_names(&page), &page["total"]),
        (vec!["beta-notes.txt", "gamma.txt"], &Value::from(3))
    );
    let (_, page) = search("/api/search?tags=graph&name=gamma&kind=text").await;
    assert_eq!(file_names(&page), vec!["gamma.txt"]);
    for bad in [
        "/api/search?kind=spreadsheet",
        "/api/search?limit=0",
        "/api/search?offset=-1",
    ] {
        let (status, body) = search(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
}

#[tokio::test]
async fn graph_around_a_file_and_a_tag() {
    let server = TestServer::start(1 << 20).await;
    upload_corpus(&server).await;
    for name in ["alpha-notes.txt", "beta-notes.txt", "gamma.txt"] {
        server.wait_for_tags(name).await;
    }
    let (status, graph) = server.get_json("/api/graph?file=beta-notes.txt").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "file:beta-notes.txt");
    for id in [
        "tag:kernel",
        "tag:graph",
        "file:alpha-notes.txt",
        "file:gamma.txt",
    ] {
        assert!(ids.contains(&id), "{id} not in {ids:?}");
    }
    assert!(!ids.contains(&"file:tone.wav"));
    let edges: Vec<(&str, &str)> = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["source"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert!(
        edges.contains(&("file:alpha-notes.txt", "tag:kernel")),
        "{edges:?}"
    );
    assert!(
        edges.contains(&("file:gamma.txt", "tag:graph")),
        "{edges:?}"
    );

    let (_, graph) = server.get_json("/api/graph?tag=graph").await;
    let files: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "file")
        .map(|n| n["label"].as_str().unwrap())
        .collect();
    assert_eq!(files, vec!["beta-notes.txt", "gamma.txt"]);
    assert_eq!(
        server.get_json("/api/graph").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        server.get_json("/api/graph?file=a&tag=b").await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, body) = server.get_json("/api/graph?tag=unknown").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no such tag: unknown");
}

#[tokio::test]
async fn delete_removes_the_file_and_its_graph_node() {
    let server = TestServer::start(1024).await;
    assert_eq!(
        server
            .put("gone.txt", "ephemeral words words")
            .await
            .status(),
        StatusCode::CREATED
    );
    server.wait_for_tags("gone.txt").await;
    let delete = || {
        server
            .client
            .delete(server.url("/api/files/gone.txt"))
            .bearer_auth(TOKEN)
            .send()
    };
    assert_eq!(delete().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert!(entries(&server.files_dir()).is_empty());
    assert_eq!(
        server.get("/api/files/gone.txt").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.get_json("/api/files/gone.txt/tags").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.get_json("/api/graph?tag=words").await.0,
        StatusCode::NOT_FOUND,
        "orphan tags go too"
    );
    let response = delete().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(json(response).await["error"], "no such file: gone.txt");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let server = TestServer::start(1024).await;
    let (status, body) = server.get_json("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no route for GET /nope");
    let response = server
        .client
        .post(server.url("/api/search"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        json(response).await["error"],
        "method POST is not allowed on /api/search"
    );
}

#[tokio::test]
async fn healthz_and_metrics() {
    let server = TestServer::start(1024).await;
    assert_eq!(
        server.get_json("/healthz").await,
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    assert_eq!(
        server.put("m.txt", "metric words").await.status(),
        StatusCode::CREATED
    );
    server.wait_for_tags("m.txt").await;
    let response = server.get("/metrics").await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    for line in [
        "disgrafs_http_requests_total{method=\"PUT\",route=\"/api/files/{name}\",status=\"201\"} 1",
        "disgrafs_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1",
        "disgrafs_upload_bytes_total 12",
        "disgrafs_tag_jobs_done_total 1",
        "disgrafs_files 1",
        "disgrafs_tags 2",
        "disgrafs_tag_queue_length 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing from\n{text}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.get("/metrics").await.text().await.unwrap();
        if text.lines().any(|l| l == "disgrafs_startup_reconciled 1") {
            break;
        }
        assert!(Instant::now() < deadline, "never reconciled:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every documented operation is served, and every other method on a documented path is 405.
#[tokio::test]
async fn openapi_document_matches_the_served_methods() {
    let server = TestServer::start(1024).await;
    let (status, doc) = server.get_json("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 9);
    for (path, item) in paths {
        let concrete = path
            .replace("{name}", "probe.txt")
            .replace("{asset}", "app.js");
        for method in ["get", "put", "delete", "post", "patch"] {
            let response = server
                .client
                .request(
                    method.to_uppercase().parse().unwrap(),
                    server.url(&concrete),
                )
                .bearer_auth(TOKEN)
                .body("probe")
                .send()
                .await
                .unwrap();
            let served = response.status() != StatusCode::METHOD_NOT_ALLOWED;
            assert_eq!(
                served,
                item.get(method).is_some(),
                "{method} {path}: {}",
                response.status()
            );
        }
    }
}

#[tokio::test]
async fn untagged_files_are_tagged_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let content = b"recovery recovery restart";
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    std::fs::write(dir.path().join("files/left.txt"), content).unwrap();
    let graph = disgrafs_core::SqliteGraphStore::open(&dir.path().join("graph.sqlite")).unwrap();
    disgrafs_core::GraphStore::upsert_file(
        &graph,
        disgrafs_core::FileMeta {
            name: "left.txt".to_owned(),
            size: content.len() as u64,
            sha256: sha256_hex(content),
            kind: disgrafs_core::FileKind::Text,
            uploaded: 0,
        },
    )
    .await
    .unwrap();
    drop(graph);
    let server = TestServer::start_in(dir, 1024).await;
    assert_eq!(
        server.wait_for_tags("left.txt").await,
        vec!["recovery", "restart"]
    );
}

/// Files on disk that the graph does not describe — never recorded (a crash between the
/// rename and the graph write), or replaced after their record was written — are recorded
/// with their real size and hash and tagged at start; matching records are left alone.
#[tokio::test]
async fn startup_records_and_tags_files_the_graph_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let graph_path = dir.path().join("graph.sqlite");
    let graph = disgrafs_core::SqliteGraphStore::open(&graph_path).unwrap();
    let record = |name: &str, content: &[u8], uploaded: i64| disgrafs_core::FileMeta {
        name: name.to_owned(),
        size: content.len() as u64,
        sha256: sha256_hex(content),
        kind: disgrafs_core::FileKind::Text,
        uploaded,
    };
    // Consistent: recorded after it was written (and tagged, so nothing re-queues it).
    let kept = b"kept content kept";
    std::fs::write(files.join("kept.txt"), kept).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    disgrafs_core::GraphStore::upsert_file(&graph, record("kept.txt", kept, now + 1))
        .await
        .unwrap();
    disgrafs_core::GraphStore::set_tags(
        &graph,
        "kept.txt",
        &sha256_hex(kept),
        vec![disgrafs_core::Tag::new("original", 1.0)],
    )
    .await
    .unwrap();
    // Replaced: the record describes older content of the same size.
    let old = b"older words here";
    let new = b"zebra zebra giraffe";
    disgrafs_core::GraphStore::upsert_file(&graph, record("swapped.txt", old, now - 100))
        .await
        .unwrap();
    std::fs::write(files.join("swapped.txt"), new).unwrap();
    drop(graph);
    // Never recorded, and a temporary file of an upload that was in progress.
    let orphan = "orphaned orphaned crash recovery".as_bytes();
    std::fs::write(files.join("orphan.txt"), orphan).unwrap();
    std::fs::write(files.join(".disgrafs-tmp-1-1"), b"partial").unwrap();

    let server = TestServer::start_in(dir, 1024).await;
    // Reconciliation runs in the background once the server serves.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.get_json("/api/files/orphan.txt/tags").await.0 != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "orphan.txt never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut orphan_tags = server.wait_for_tags("orphan.txt").await;
    assert_eq!(orphan_tags[0], "orphaned", "{orphan_tags:?}");
    orphan_tags.sort();
    assert_eq!(orphan_tags, ["crash", "orphaned", "recovery"]);
    assert_eq!(
        server.wait_for_tags("swapped.txt").await,
        ["zebra", "giraffe"]
    );
    let (status, page) = server.get_json("/api/search").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let by_name = |name: &str| {
        page["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {page}"))
            .clone()
    };
    assert_eq!(page["total"], 3, "{page}");
    assert_eq!(by_name("orphan.txt")["sha256"], sha256_hex(orphan));
    assert_eq!(by_name("orphan.txt")["size"], orphan.len());
    assert_eq!(by_name("orphan.txt")["kind"], "text");
    assert_eq!(by_name("swapped.txt")["sha256"], sha256_hex(new));
    assert_eq!(by_name("kept.txt")["uploaded"], now + 1);
    assert_eq!(server.wait_for_tags("kept.txt").await, vec!["original"]);
    assert_eq!(
        entries(&server.files_dir()),
        ["kept.txt", "orphan.txt", "swapped.txt"]
    );
}

/// Graph records whose file is gone — removed by hand, or a crash between a delete's removal
/// of the file and of its record — are removed at start, with their tags; records of stored
/// files stay.
#[tokio::test]
async fn startup_removes_records_whose_file_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let graph = disgrafs_core::SqliteGraphStore::open(&dir.path().join("graph.sqlite")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for (name, content, tag) in [
        ("kept.txt", &b"still here"[..], "kept"),
        ("gone.txt", &b"removed by hand"[..], "ghost"),
    ] {
        std::fs::write(files.join(name), content).unwrap();
        let meta = disgrafs_core::FileMeta {
            name: name.to_owned(),
            size: content.len() as u64,
            sha256: sha256_hex(content),
            kind: disgrafs_core::FileKind::Text,
            uploaded: now + 1,
        };
        disgrafs_core::GraphStore::upsert_file(&graph, meta)
            .await
            .unwrap();
        let tags = vec![disgrafs_core::Tag::new(tag, 1.0)];
        disgrafs_core::GraphStore::set_tags(&graph, name, &sha256_hex(content), tags)
            .await
            .unwrap();
    }
    drop(graph);
    std::fs::remove_file(files.join("gone.txt")).unwrap();

    let server = TestServer::start_in(dir, 1024).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.get_json("/api/files/gone.txt/tags").await.0 != StatusCode::NOT_FOUND {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record of gone.txt was never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, page) = server.get_json("/api/search").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(file_names(&page), ["kept.txt"]);
    assert_eq!(page["total"], 1, "{page}");
    let (status, body) = server.get_json("/api/graph?tag=ghost").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the tag outlived its file: {body}"
    );
    assert_eq!(server.wait_for_tags("kept.txt").await, vec!["kept"]);
    assert_eq!(
        server.get("/api/files/gone.txt").await.status(),
        StatusCode::NOT_FOUND
    );
}

/// The real binary: CLI flags, the token from the environment, the limit, and a clear error
/// without a token.
#[tokio::test]
async fn the_binary_serves_with_cli_flags_and_env_token() {
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let bin = env!("CARGO_BIN_EXE_disgrafs-server");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let output = std::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data", data])
        .env_remove("DISGRAFS_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("DISGRAFS_TOKEN"));

    let mut child = Child(
        std::process::Command::new(bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--data",
                data,
                "--max-upload",
                "100",
            ])
            .env("DISGRAFS_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("disgrafs-server listening on http://")
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/files/cli.txt");
    let put = |body: Vec<u8>| client.put(&url).bearer_auth(TOKEN).body(body).send();
    assert_eq!(
        put(vec![b'a'; 101]).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        put(vec![b'a'; 100]).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(entries(&dir.path().join("files")), vec!["cli.txt"]);
    assert!(dir.path().join("graph.sqlite").exists());
}

/// `src="…"` and `href="…"` values of a page, `import … from "…"` specifiers of a module and
/// `url(…)` references of a style sheet.
fn references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (open, close) in [
        ("src=\"", '"'),
        ("href=\"", '"'),
        ("from \"", '"'),
        ("url(", ')'),
    ] {
        let mut rest = text;
        while let Some(at) = rest.find(open) {
            rest = &rest[at + open.len()..];
            let end = rest.find(close).unwrap_or(rest.len());
            found.push(rest[..end].trim_matches(['"', '\'']).to_owned());
        }
    }
    found
}

/// Absolute URLs in `text`: anything with a scheme (`…://`) or protocol-relative in a
/// reference, except the SVG namespace name, which is an identifier that is never fetched.
fn external_urls(text: &str) -> Vec<String> {
    const SVG_NAMESPACE: &str = "http://www.w3.org/2000/svg";
    let mut found: Vec<String> = text
        .match_indices("://")
        .map(|(at, _)| {
            let start = text[..at]
                .rfind(|c: char| !c.is_ascii_alphanumeric() && c != '+' && c != '-')
                .map_or(0, |i| i + 1);
            let end = text[at..]
                .find(|c: char| c.is_whitespace() || "\"'`)<>".contains(c))
                .map_or(text.len(), |i| at + i);
            text[start..end].to_owned()
        })
        .filter(|url| url != SVG_NAMESPACE)
        .collect();
    found.extend(references(text).into_iter().filter(|r| r.starts_with("//")));
    found
}

#[test]
fn external_url_detection() {
    let page = r#"<script src="https://cdn.example/x.js"></script><img src="//evil.example/p.png">
        <link href="/ui/app.css"> <svg xmlns="http://www.w3.org/2000/svg"></svg>"#;
    assert_eq!(
        external_urls(page),
        vec!["https://cdn.example/x.js", "//evil.example/p.png"]
    );
    assert_eq!(
        external_urls("a { background: url(wss://x.example/a) }"),
        vec!["wss://x.example/a"]
    );
    assert!(external_urls("import { A } from \"./graph.js\"; // comment").is_empty());
}

/// The page and everything it loads (found by following its references): content types, a
/// strict Content-Security-Policy, revalidation by ETag, and no reference outside the origin.
#[tokio::test]
async fn the_ui_is_served_with_a_csp_and_references_only_its_own_origin() {
    let server = TestServer::start(1024).await;
    let mut pending = vec!["/".to_owned()];
    let mut served = Vec::new();
    while let Some(path) = pending.pop() {
        if served.contains(&path) {
            continue;
        }
        let response = server.get(&path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .unwrap_or_else(|| panic!("{path} has no {name}"))
                .to_str()
                .unwrap()
                .to_owned()
        };
        let expected_type = match path.rsplit_once('.').map_or("", |(_, ext)| ext) {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            _ => "text/html; charset=utf-8",
        };
        assert_eq!(header("content-type"), expected_type, "{path}");
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} not in {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("cache-control"), "no-cache");
        let etag = header("etag");
        let revalidated = server
            .client
            .get(server.url(&path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED, "{path}");

        let body = response.text().await.unwrap();
        assert_eq!(external_urls(&body), Vec::<String>::new(), "{path}");
        assert!(!body.contains("@import"), "{path}");
        for reference in references(&body) {
            let absolute = match reference.strip_prefix("./") {
                Some(relative) => format!("/ui/{relative}"),
                None => reference,
            };
            assert!(absolute.starts_with("/ui/"), "{path} refers to {absolute}");
            pending.push(absolute);
        }
        served.push(path);
    }
    served.sort();
    assert_eq!(
        served,
        [
            "/",
            "/ui/app.css",
            "/ui/app.js",
            "/ui/favicon.svg",
            "/ui/graph.js"
        ]
    );
    let (status, body) = server.get_json("/ui/missing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no such asset: missing.js");
}
