//! Search latency benchmark: generated graphs of `--files` files and `--tags` tags (five tags
//! per file, skewed towards popular tags) in the embedded SQLite store and in FalkorDB, then
//! `--queries` searches (one tag, two tags, tag + kind, name substring) on the store itself and
//! then through the HTTP API, latencies in HdrHistograms.
//!
//! `cargo run --release -p disgrafs-server --example bench_search -- [--files N] [--tags N]
//! [--queries N] [--backend sqlite|falkordb|both]`; FalkorDB comes from `./setup`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use disgrafs_core::{
    FalkorGraphStore, FileKind, FileMeta, GraphStore, SearchQuery, SqliteGraphStore, Tag,
};
use disgrafs_server::{Config, start};
use disgrafs_testsupport::RedisServer;
use hdrhistogram::Histogram;

#[derive(Debug, Parser)]
struct Args {
    /// Files in the generated graph.
    #[arg(long, default_value_t = 100_000)]
    files: u64,
    /// Distinct tags.
    #[arg(long, default_value_t = 1_000)]
    tags: u64,
    /// Timed searches per backend (after 10% as many untimed warm-up searches).
    #[arg(long, default_value_t = 2_000)]
    queries: u64,
    /// Which graph stores to measure.
    #[arg(long, default_value = "both")]
    backend: String,
}

/// xorshift64*: reproducible data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A tag index skewed towards 0 (popular tags): the square of a uniform number.
    fn tag(&mut self, tags: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u) * tags as f64) as u64
    }
}

const KINDS: [FileKind; 5] = [
    FileKind::Text,
    FileKind::Pdf,
    FileKind::Image,
    FileKind::Audio,
    FileKind::Video,
];

fn file_name(i: u64) -> String {
    format!("file-{i:06}.dat")
}

fn file_size(i: u64) -> u64 {
    1000 + i
}

/// Files per [`GraphStore::upsert_tagged`] call while filling.
const FILL_BATCH: u64 = 1_000;

/// Stores the files (sparse, of the recorded sizes) in `files_dir`, then records them with
/// their tags in the graph, as uploaded after they were written: a server started on them
/// keeps every record. Returns how long the graph took.
async fn fill(
    graph: &dyn GraphStore,
    files_dir: &std::path::Path,
    args: &Args,
) -> anyhow::Result<Duration> {
    std::fs::create_dir_all(files_dir)?;
    for i in 0..args.files {
        std::fs::File::create(files_dir.join(file_name(i)))?.set_len(file_size(i))?;
    }
    let uploaded = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        .try_into()?;
    let started = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut batch = Vec::new();
    for i in 0..args.files {
        let mut chosen: Vec<Tag> = Vec::new();
        while chosen.len() < 5 {
            let tag = format!("tag{:04}", rng.tag(args.tags));
            if !chosen.iter().any(|t| t.tag == tag) {
                chosen.push(Tag::new(tag, 1.0 / (chosen.len() + 1) as f32));
            }
        }
        let meta = FileMeta {
            name: file_name(i),
            size: file_size(i),
            sha256: format!("{i:064x}"),
            kind: KINDS[(i % 5) as usize],
            uploaded,
        };
        batch.push((meta, chosen));
        if batch.len() as u64 == FILL_BATCH || i + 1 == args.files {
            graph.upsert_tagged(std::mem::take(&mut batch)).await?;
        }
    }
    Ok(started.elapsed())
}

/// One search of the mix: its kind and query (50 per page).
fn query(rng: &mut Rng, args: &Args) -> (&'static str, SearchQuery) {
    let tag = |rng: &mut Rng| format!("tag{:04}", rng.tag(args.tags));
    let mut query = SearchQuery {
        limit: 50,
        ..SearchQuery::default()
    };
    let kind = match rng.next() % 4 {
        0 => {
            query.tags = vec![tag(rng)];
            "one tag"
        }
        1 => {
            query.tags = vec![tag(rng), tag(rng)];
            "two tags"
        }
        2 => {
            query.tags = vec![tag(rng)];
            query.kind = Some(KINDS[(rng.next() % 5) as usize]);
            "tag + kind"
        }
        _ => {
            query.name = Some(format!("{:04}", rng.next() % 10_000));
            "name substring"
        }
    };
    (kind, query)
}

/// The API path of `query` (its tags and names need no escaping).
fn url(query: &SearchQuery) -> String {
    let mut path = format!("/api/search?limit={}", query.limit);
    if !query.tags.is_empty() {
        path.push_str(&format!("&tags={}", query.tags.join(",")));
    }
    if let Some(kind) = query.kind {
        path.push_str(&format!("&kind={kind}"));
    }
    if let Some(name) = &query.name {
        path.push_str(&format!("&name={name}"));
    }
    path
}

/// Latencies in µs, overall and per query kind.
struct Latencies {
    all: Histogram<u64>,
    by_kind: Vec<(&'static str, Histogram<u64>)>,
}

impl Latencies {
    fn new() -> Self {
        Self {
            all: Histogram::new(3).unwrap(),
            by_kind: Vec::new(),
        }
    }

    fn record(&mut self, kind: &'static str, took: Duration) {
        let micros = took.as_micros() as u64;
        self.all.record(micros).unwrap();
        match self.by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, h)) => h.record(micros).unwrap(),
            None => {
                let mut h = Histogram::<u64>::new(3).unwrap();
                h.record(micros).unwrap();
                self.by_kind.push((kind, h));
            }
        }
    }

    fn print(&mut self) {
        println!("| query | n | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|");
        self.by_kind.sort_by_key(|(k, _)| *k);
        for (kind, h) in self
            .by_kind
            .iter()
            .chain([("all", self.all.clone())].iter())
        {
            println!(
                "| {kind} | {} | {} | {} | {} | {} |",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.max()
            );
        }
    }
}

/// Fills the graph, times the searches on the store itself, then through the server.
async fn measure(backend: &str, graph: Arc<dyn GraphStore>, config: Config, args: &Args) {
    let fill_time = fill(graph.as_ref(), &config.data.join("files"), args)
        .await
        .expect("filling the graph");
    let warmup = args.queries / 10;
    let mut direct = Latencies::new();
    let mut rng = Rng(42);
    for i in 0..warmup + args.queries {
        let (kind, query) = query(&mut rng, args);
        let started = Instant::now();
        graph.search(&query).await.expect("searching the store");
        if i >= warmup {
            direct.record(kind, started.elapsed());
        }
    }
    drop(graph);
    let running = start(config).await.expect("starting the server");
    let client = reqwest::Client::new();
    let base = format!("http://{}", running.addr);
    // The server's startup reconciliation looks up every stored file in the graph; the
    // searches are timed after it.
    let reconciling = Instant::now();
    while !client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .any(|l| l == "disgrafs_startup_reconciled 1")
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reconciled = reconciling.elapsed();
    let mut http = Latencies::new();
    let mut rng = Rng(42);
    for i in 0..warmup + args.queries {
        let (kind, query) = query(&mut rng, args);
        let path = url(&query);
        let started = Instant::now();
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.bytes().await.unwrap();
        if i >= warmup {
            http.record(kind, started.elapsed());
        }
    }
    running.shutdown().await.unwrap();
    println!(
        "\n{backend}: {} files, {} tags, filled in {:.1} s, server reconciled in {:.1} s; \
         {} searches (µs)",
        args.files,
        args.tags,
        fill_time.as_secs_f64(),
        reconciled.as_secs_f64(),
        args.queries
    );
    println!("\nOn the store (`GraphStore::search`):\n");
    direct.print();
    println!("\nOver HTTP:\n");
    http.print();
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("load average before: {}", loadavg().trim());
    if matches!(args.backend.as_str(), "sqlite" | "both") {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("graph.sqlite");
        let graph = Arc::new(SqliteGraphStore::open(&db)?);
        let config = Config::new("127.0.0.1:0".parse()?, dir.path().to_owned(), "t".into());
        measure("SQLite (embedded)", graph, config, &args).await;
    }
    if matches!(args.backend.as_str(), "falkordb" | "both") {
        let falkordb = RedisServer::falkordb().context("starting FalkorDB")?;
        let dir = tempfile::tempdir()?;
        let graph = Arc::new(FalkorGraphStore::new(&falkordb.url(), "bench")?);
        let config = Config {
            falkordb: Some(falkordb.url()),
            falkordb_graph: "bench".to_owned(),
            ..Config::new("127.0.0.1:0".parse()?, dir.path().to_owned(), "t".into())
        };
        measure("FalkorDB", graph, config, &args).await;
    }
    println!("\nload average after: {}", loadavg().trim());
    Ok(())
}
