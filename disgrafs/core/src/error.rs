use std::io;

/// Errors of the storage layer and the taggers; the server maps each variant to a status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file name failed validation.
    #[error("invalid file name: {0}")]
    InvalidName(String),
    /// No file of that name exists.
    #[error("no such file: {0}")]
    NotFound(String),
    /// An upload exceeded the size limit.
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The upload body stream failed (client disconnected or sent a malformed body).
    #[error("upload body aborted: {0}")]
    BodyAborted(String),
    /// An I/O operation on the blob store failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A backend (graph database, queue) failed or is unreachable.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// A tagger could not read the file's content.
    #[error("tagging failed: {0}")]
    Tagging(String),
}

impl Error {
    /// Wraps an I/O error with a description of the failed operation.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
