//! DisGraFS core: the domain model, the storage traits with their embedded defaults, and the
//! local taggers.
//!
//! Callers depend on the traits [`BlobStore`], [`GraphStore`] and [`TagQueue`] only, so that a
//! JuiceFS mount (a [`LocalDirBlobStore`] on another root), FalkorDB and Redis Streams can be
//! added as backends without changing them.

mod blob;
mod error;
mod graph;
mod model;
mod name;
mod queue;
pub mod tagger;

pub use blob::{Blob, BlobStore, LocalDirBlobStore, PendingBlob, Written};
pub use error::{Error, Result};
pub use graph::{GraphStore, SqliteGraphStore};
pub use model::{
    FileKind, FileMeta, Graph, GraphCenter, GraphEdge, GraphNode, NodeKind, SearchPage,
    SearchQuery, Tag,
};
pub use name::{MAX_NAME_BYTES, validate_name};
pub use queue::{Delivery, InProcessTagQueue, TagJob, TagQueue};

/// A boxed, sendable future: the return type of the storage traits, which keeps them usable as
/// trait objects (`Arc<dyn GraphStore>`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;
