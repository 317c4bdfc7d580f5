//! Search latency benchmark: generated graphs of `--files` files and `--tags` tags (five tags
//! per file, skewed towards popular tags) in the embedded SQLite store and in FalkorDB, then
//! `--queries` searches through the HTTP API (one tag, two tags, tag + kind, name substring),
//! latencies in an HdrHistogram.
//!
//! `cargo run --release -p disgrafs-server --example bench_search -- [--files N] [--tags N]
//! [--queries N] [--backend sqlite|falkordb|both]`; FalkorDB comes from `./setup`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use disgrafs_core::{FalkorGraphStore, FileKind, FileMeta, GraphStore, SqliteGraphStore, Tag};
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

async fn fill(graph: Arc<dyn GraphStore>, args: &Args) -> anyhow::Result<Duration> {
    let started = Instant::now();
    // A few writers at once: FalkorDB is a network round trip per write.
    let writers = 8;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let graph = Arc::clone(&graph);
        let (files, tags) = (args.files, args.tags);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
            for i in (w..files).step_by(writers as usize) {
                let name = format!("file-{i:06}.dat");
                let sha256 = format!("{i:064x}");
                let meta = FileMeta {
                    name: name.clone(),
                    size: 1000 + i,
                    sha256: sha256.clone(),
                    kind: KINDS[(i % 5) as usize],
                    uploaded: 1_700_000_000 + i as i64,
                };
                graph.upsert_file(meta).await?;
                let mut chosen: Vec<Tag> = Vec::new();
                while chosen.len() < 5 {
                    let tag = format!("tag{:04}", rng.tag(tags));
                    if !chosen.iter().any(|t| t.tag == tag) {
                        chosen.push(Tag::new(tag, 1.0 / (chosen.len() + 1) as f32));
                    }
                }
                graph.set_tags(&name, &sha256, chosen).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

/// One search URL (path and query) of the mix.
fn query(rng: &mut Rng, args: &Args) -> (&'static str, String) {
    let tag = |rng: &mut Rng| format!("tag{:04}", rng.tag(args.tags));
    match rng.next() % 4 {
        0 => ("one tag", format!("/api/search?tags={}&limit=50", tag(rng))),
        1 => (
            "two tags",
            format!("/api/search?tags={},{}&limit=50", tag(rng), tag(rng)),
        ),
        2 => (
            "tag + kind",
            format!(
                "/api/search?tags={}&kind={}&limit=50",
                tag(rng),
                KINDS[(rng.next() % 5) as usize]
            ),
        ),
        _ => (
            "name substring",
            format!("/api/search?name={:04}&limit=50", rng.next() % 10_000),
        ),
    }
}

async fn measure(backend: &str, graph: Arc<dyn GraphStore>, config: Config, args: &Args) {
    let fill_time = fill(Arc::clone(&graph), args)
        .await
        .expect("filling the graph");
    drop(graph);
    let running = start(config).await.expect("starting the server");
    let client = reqwest::Client::new();
    let base = format!("http://{}", running.addr);
    let mut rng = Rng(42);
    let mut all = Histogram::<u64>::new(3).unwrap();
    let mut by_kind: Vec<(&str, Histogram<u64>)> = Vec::new();
    let warmup = args.queries / 10;
    for i in 0..warmup + args.queries {
        let (kind, path) = query(&mut rng, args);
        let started = Instant::now();
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.bytes().await.unwrap();
        let micros = started.elapsed().as_micros() as u64;
        if i < warmup {
            continue;
        }
        all.record(micros).unwrap();
        match by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, h)) => h.record(micros).unwrap(),
            None => {
                let mut h = Histogram::<u64>::new(3).unwrap();
                h.record(micros).unwrap();
                by_kind.push((kind, h));
            }
        }
    }
    running.shutdown().await.unwrap();
    println!(
        "\n{backend}: {} files, {} tags, filled in {:.1} s; {} searches over HTTP (µs)",
        args.files,
        args.tags,
        fill_time.as_secs_f64(),
        args.queries
    );
    println!("| query | n | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|");
    by_kind.sort_by_key(|(k, _)| *k);
    for (kind, h) in by_kind.iter().chain([("all", all.clone())].iter()) {
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
