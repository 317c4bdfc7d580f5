//! The DisGraFS HTTP server: streaming upload and download, search, the tag graph, metrics,
//! and an in-process tagging worker, on the embedded storage defaults.

mod api;
mod error;
mod http_util;
mod metrics;
mod openapi;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use disgrafs_core::tagger::TaggerConfig;
use disgrafs_core::{
    BlobStore, GraphStore, InProcessTagQueue, LocalDirBlobStore, SqliteGraphStore, TagJob, TagQueue,
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
    /// Data directory: `files/` holds the blobs, `graph.sqlite` the graph.
    pub data: PathBuf,
    /// Largest accepted upload in bytes.
    pub max_upload: u64,
    /// Bearer token required by write endpoints.
    pub token: String,
    /// Tagger settings.
    pub tagger: TaggerConfig,
    /// A tag job not acknowledged within this time is delivered again.
    pub redelivery: Duration,
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
    worker: JoinHandle<()>,
}

impl Running {
    /// Stops accepting connections, waits for open requests, and stops the worker.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let served = self.serve.await;
        self.worker.abort();
        served
            .context("server task panicked")?
            .context("serving HTTP")
    }
}

/// Opens the embedded stores under `config.data`, re-queues files not yet tagged, binds the
/// listener and starts serving and tagging.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    anyhow::ensure!(!config.token.is_empty(), "the write token is empty");
    let files = config.data.join("files");
    let blobs = LocalDirBlobStore::new(&files)
        .with_context(|| format!("opening the blob store in {}", files.display()))?;
    let db = config.data.join("graph.sqlite");
    let graph = SqliteGraphStore::open(&db)
        .with_context(|| format!("opening the graph store {}", db.display()))?;
    let queue = InProcessTagQueue::new(config.redelivery);
    for meta in graph.untagged(u64::MAX).await? {
        queue
            .enqueue(TagJob {
                name: meta.name,
                sha256: meta.sha256,
            })
            .await?;
    }
    let state = Arc::new(AppState {
        blobs: Arc::new(blobs),
        graph: Arc::new(graph),
        queue: Arc::new(queue),
        token: config.token,
        max_upload: config.max_upload,
        tagger: config.tagger,
        metrics: metrics::Metrics::default(),
        consistency: RwLock::new(()),
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let worker = tokio::spawn(worker::run(Arc::clone(&state)));
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
        worker,
    })
}
