//! The DisGraFS HTTP server: streaming upload and download, search, the tag graph, metrics,
//! in-process tagging workers, and the browser UI (`disgrafs/web/`, embedded at build time).
//!
//! Backends: the embedded defaults under the data directory (SQLite graph, in-process queue)
//! unless [`Config::falkordb`] or [`Config::redis`] name a server. With a Redis queue the
//! server runs no worker of its own unless [`Config::workers`] asks for some: the
//! `disgrafs-tagger` binaries consume the queue.

mod api;
mod error;
mod http_util;
mod metrics;
mod openapi;
mod outbox;
mod reconcile;
mod web;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use disgrafs_core::tagger::TaggerConfig;
use disgrafs_core::{
    BlobStore, FalkorGraphStore, GraphStore, InProcessTagQueue, LocalDirBlobStore,
    RedisQueueConfig, RedisTagQueue, SqliteGraphStore, TagQueue,
};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, oneshot};
use tokio::task::JoinHandle;

pub use openapi::openapi;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Data directory: `files/` holds the blobs, `graph.sqlite` the embedded graph, `outbox/`
    /// the uploads waiting for a backend to come back.
    pub data: PathBuf,
    /// Largest accepted upload in bytes.
    pub max_upload: u64,
    /// Bearer token required by write endpoints.
    pub token: String,
    /// Tagger settings.
    pub tagger: TaggerConfig,
    /// A tag job not acknowledged within this time is delivered again.
    pub redelivery: Duration,
    /// Redis URL of the tag queue (Redis Streams); `None` for the in-process queue.
    pub redis: Option<String>,
    /// FalkorDB URL of the tag graph; `None` for SQLite under the data directory.
    pub falkordb: Option<String>,
    /// The FalkorDB graph name.
    pub falkordb_graph: String,
    /// In-process tagging workers; `None` for the default: one with the in-process queue,
    /// none with a Redis queue.
    pub workers: Option<usize>,
}

impl Config {
    /// Embedded defaults: listen on `listen`, keep everything under `data`, one worker.
    pub fn new(listen: SocketAddr, data: PathBuf, token: String) -> Self {
        Self {
            listen,
            data,
            max_upload: 1 << 30,
            token,
            tagger: TaggerConfig::default(),
            redelivery: Duration::from_secs(300),
            redis: None,
            falkordb: None,
            falkordb_graph: "disgrafs".to_owned(),
            workers: None,
        }
    }
}

/// Shared state of the handlers and the worker.
#[derive(Debug)]
struct AppState {
    blobs: Arc<dyn BlobStore>,
    graph: Arc<dyn GraphStore>,
    queue: Arc<dyn TagQueue>,
    token: String,
    max_upload: u64,
    tagger: TaggerConfig,
    metrics: metrics::Metrics,
    outbox: outbox::Outbox,
    /// Commits (blob rename + graph record) and deletes take it exclusively; readers that need
    /// the record and the content to agree take it shared.
    consistency: RwLock<()>,
}

/// A started server; dropping it does not stop it, call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    serve: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting connections, waits for open requests, and stops the workers (a job in
    /// progress is delivered again later).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let served = self.serve.await;
        for task in self.background {
            task.abort();
        }
        served
            .context("server task panicked")?
            .context("serving HTTP")
    }
}

/// Opens the stores, binds the listener and starts serving, tagging (in-process workers) and
/// the outbox replay (which also re-queues files not yet tagged and records stored files the
/// graph does not know).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    anyhow::ensure!(!config.token.is_empty(), "the write token is empty");
    let files = config.data.join("files");
    let blobs = LocalDirBlobStore::new(&files)
        .with_context(|| format!("opening the blob store in {}", files.display()))?;
    let graph: Arc<dyn GraphStore> = match &config.falkordb {
        Some(url) => Arc::new(FalkorGraphStore::new(url, &config.falkordb_graph)?),
        None => {
            let db = config.data.join("graph.sqlite");
            Arc::new(
                SqliteGraphStore::open(&db)
                    .with_context(|| format!("opening the graph store {}", db.display()))?,
            )
        }
    };
    let redis_queue = |consumer: String| -> anyhow::Result<Option<Arc<dyn TagQueue>>> {
        let Some(url) = &config.redis else {
            return Ok(None);
        };
        let queue_config = RedisQueueConfig {
            claim_idle: config.redelivery,
            ..RedisQueueConfig::new(consumer)
        };
        Ok(Some(Arc::new(RedisTagQueue::new(url, queue_config)?)))
    };
    let pid = std::process::id();
    let queue: Arc<dyn TagQueue> = match redis_queue(format!("server-{pid}"))? {
        Some(queue) => queue,
        None => Arc::new(InProcessTagQueue::new(config.redelivery)),
    };
    let workers = config
        .workers
        .unwrap_or(if config.redis.is_some() { 0 } else { 1 });
    // Each worker on a Redis queue is a consumer of its own, so blocking reads do not queue up.
    let mut worker_queues = Vec::with_capacity(workers);
    for i in 0..workers {
        let own = redis_queue(format!("server-{pid}-{i}"))?;
        worker_queues.push(own.unwrap_or_else(|| Arc::clone(&queue)));
    }
    let outbox_dir = config.data.join("outbox");
    let outbox = outbox::Outbox::open(outbox_dir.clone())
        .with_context(|| format!("opening the outbox {}", outbox_dir.display()))?;
    let state = Arc::new(AppState {
        blobs: Arc::new(blobs),
        graph,
        queue,
        token: config.token,
        max_upload: config.max_upload,
        tagger: config.tagger,
        metrics: metrics::Metrics::default(),
        outbox,
        consistency: RwLock::new(()),
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let mut background = vec![tokio::spawn(outbox::run(Arc::clone(&state)))];
    for queue in worker_queues {
        background.push(tokio::spawn(worker::run(Arc::clone(&state), queue)));
    }
    let (stop, stopped) = oneshot::channel();
    let app = api::router(state);
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Running {
        addr,
        stop,
        serve,
        background,
    })
}
