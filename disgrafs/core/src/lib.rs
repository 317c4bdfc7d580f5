//! DisGraFS core: the domain model, the storage traits with their embedded defaults, and the
//! local taggers.
//!
//! Callers depend on the traits [`BlobStore`], [`GraphStore`] and [`TagQueue`] only. Each has
//! an embedded default ([`LocalDirBlobStore`], [`SqliteGraphStore`], [`InProcessTagQueue`])
//! and a networked backend: a JuiceFS mount (a [`LocalDirBlobStore`] on another root),
//! [`FalkorGraphStore`] and [`RedisTagQueue`] (Redis Streams). The [`worker::Worker`] ties
//! them together for the server's in-process worker and the `disgrafs-tagger` binary.

mod blob;
mod error;
mod falkordb;
mod graph;
mod model;
mod name;
mod queue;
mod redis_conn;
mod redis_queue;
pub mod tagger;
pub mod worker;

pub use blob::{Blob, BlobInfo, BlobStore, LocalDirBlobStore, PendingBlob, Written};
pub use error::{Error, Result};
pub use falkordb::FalkorGraphStore;
pub use graph::{GraphStore, SqliteGraphStore};
pub use model::{
    FileKind, FileMeta, Graph, GraphCenter, GraphEdge, GraphNode, NodeKind, SearchPage,
    SearchQuery, Tag,
};
pub use name::{MAX_NAME_BYTES, validate_name};
pub use queue::{Delivery, InProcessTagQueue, TagJob, TagQueue};
pub use redis_queue::{RedisQueueConfig, RedisTagQueue};

/// A boxed, sendable future: the return type of the storage traits, which keeps them usable as
/// trait objects (`Arc<dyn GraphStore>`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;
