//! `disgrafs-tagger --redis URL --data DIR [--falkordb URL]`: a tagging worker that consumes
//! the Redis Streams tag queue as one consumer of its group, reads the files from DIR/files
//! (the server's data directory, or the same directory on a JuiceFS mount), and writes the
//! tags to FalkorDB or, without `--falkordb`, to DIR/graph.sqlite (same machine only).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use disgrafs_core::tagger::TaggerConfig;
use disgrafs_core::worker::Worker;
use disgrafs_core::{
    BlobStore, FalkorGraphStore, GraphStore, LocalDirBlobStore, RedisQueueConfig, RedisTagQueue,
    SqliteGraphStore,
};

/// DisGraFS tagging worker (one consumer of the Redis Streams tag queue).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Redis URL of the tag queue, e.g. redis://127.0.0.1:6379.
    #[arg(long, env = "DISGRAFS_REDIS", value_name = "URL")]
    redis: String,
    /// The server's data directory: files/ holds the uploads (graph.sqlite the graph unless
    /// --falkordb is given).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// FalkorDB URL of the tag graph, e.g. redis://127.0.0.1:6380.
    #[arg(long, env = "DISGRAFS_FALKORDB", value_name = "URL")]
    falkordb: Option<String>,
    /// Name of the FalkorDB graph.
    #[arg(long, value_name = "NAME", default_value = "disgrafs")]
    graph: String,
    /// This worker's consumer name in the group (default: tagger-HOST-PID).
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
    /// Milliseconds after which a job another worker has not acknowledged is taken over.
    #[arg(long, value_name = "MS", default_value_t = 300_000)]
    claim_idle_ms: u64,
    /// How many keywords or colours a tagger emits at most.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top_n: usize,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let files = args.data.join("files");
    let blobs: Arc<dyn BlobStore> = Arc::new(
        LocalDirBlobStore::new(&files)
            .with_context(|| format!("opening the blob store in {}", files.display()))?,
    );
    let graph: Arc<dyn GraphStore> = match &args.falkordb {
        Some(url) => Arc::new(FalkorGraphStore::new(url, &args.graph)?),
        None => {
            let db = args.data.join("graph.sqlite");
            Arc::new(
                SqliteGraphStore::open(&db)
                    .with_context(|| format!("opening the graph store {}", db.display()))?,
            )
        }
    };
    let consumer = args
        .consumer
        .unwrap_or_else(|| format!("tagger-{}-{}", hostname(), std::process::id()));
    let queue = RedisTagQueue::new(
        &args.redis,
        RedisQueueConfig {
            claim_idle: Duration::from_millis(args.claim_idle_ms),
            ..RedisQueueConfig::new(consumer.clone())
        },
    )?;
    let worker = Worker::new(
        graph,
        blobs,
        TaggerConfig {
            top_n: args.top_n,
            ..TaggerConfig::default()
        },
    );
    tracing::info!("disgrafs-tagger {consumer} consuming the tag queue");
    let run = worker.run(&queue, |delivery, result| {
        if let Ok(outcome) = result {
            tracing::info!(
                "{} (attempt {}): {outcome:?}",
                delivery.job.name,
                delivery.attempt
            );
        }
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        () = run => Ok(()),
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C"),
        _ = terminate.recv() => Ok(()),
    }
}
