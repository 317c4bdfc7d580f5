//! `disgrafs-server --listen ADDR --data DIR [--max-upload BYTES] [--redis URL]
//! [--falkordb URL]`; the write token comes from the `DISGRAFS_TOKEN` environment variable,
//! the backend URLs also from `DISGRAFS_REDIS` and `DISGRAFS_FALKORDB`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use disgrafs_core::tagger::TaggerConfig;
use disgrafs_server::{Config, start};

/// DisGraFS file server with automatic tagging and a tag graph (embedded storage under DIR
/// unless a Redis queue or a FalkorDB graph is given).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Data directory: files/ holds the uploads, graph.sqlite the tag graph.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Largest accepted upload in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    max_upload: u64,
    /// How many keywords or colours a tagger emits at most.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top_n: usize,
    /// Seconds after which an unacknowledged tag job is delivered again.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    redelivery: u64,
    /// Redis URL of the tag queue (Redis Streams), e.g. redis://127.0.0.1:6379; without it
    /// the queue lives in this process.
    #[arg(long, env = "DISGRAFS_REDIS", value_name = "URL")]
    redis: Option<String>,
    /// FalkorDB URL of the tag graph, e.g. redis://127.0.0.1:6380; without it the graph is
    /// DIR/graph.sqlite.
    #[arg(long, env = "DISGRAFS_FALKORDB", value_name = "URL")]
    falkordb: Option<String>,
    /// Name of the FalkorDB graph.
    #[arg(long, value_name = "NAME", default_value = "disgrafs")]
    falkordb_graph: String,
    /// In-process tagging workers (default: 1 with the in-process queue, 0 with --redis,
    /// where disgrafs-tagger processes consume the queue).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
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
    let token = std::env::var("DISGRAFS_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .context("set DISGRAFS_TOKEN to the bearer token that write requests must carry")?;
    let running = start(Config {
        listen: args.listen,
        data: args.data,
        max_upload: args.max_upload,
        token,
        tagger: TaggerConfig {
            top_n: args.top_n,
            ..TaggerConfig::default()
        },
        redelivery: Duration::from_secs(args.redelivery),
        redis: args.redis,
        falkordb: args.falkordb,
        falkordb_graph: args.falkordb_graph,
        workers: args.workers,
    })
    .await?;
    println!("disgrafs-server listening on http://{}", running.addr);
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            result.context("waiting for Ctrl-C")?;
            running.shutdown().await
        }
        result = terminated() => {
            result?;
            running.shutdown().await
        }
    }
}

async fn terminated() -> anyhow::Result<()> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?
        .recv()
        .await;
    Ok(())
}
