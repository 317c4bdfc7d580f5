use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The broad kind of a file's content, detected by content sniffing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Plain text (UTF-8).
    Text,
    /// A PDF document.
    Pdf,
    /// A raster image.
    Image,
    /// An audio recording.
    Audio,
    /// A video.
    Video,
    /// Anything else.
    Other,
}

impl FileKind {
    /// Every kind, in a stable order.
    pub const ALL: [FileKind; 6] = [
        FileKind::Text,
        FileKind::Pdf,
        FileKind::Image,
        FileKind::Audio,
        FileKind::Video,
        FileKind::Other,
    ];

    /// The lowercase name used in the API and the graph store.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Text => "text",
            FileKind::Pdf => "pdf",
            FileKind::Image => "image",
            FileKind::Audio => "audio",
            FileKind::Video => "video",
            FileKind::Other => "other",
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FileKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                format!("unknown kind {s:?} (expected text, pdf, image, audio, video or other)")
            })
    }
}

/// What the graph store knows about one stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// The validated file name (unique key).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Kind detected from the content.
    pub kind: FileKind,
    /// Upload time, seconds since the Unix epoch.
    pub uploaded: i64,
}

/// A tag attached to a file, with a relevance score in `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tag {
    /// The tag text, e.g. `rust`, `colour:red`, `artist:Nobody`.
    pub tag: String,
    /// Relevance in `0.0..=1.0`; metadata facts score 1.0.
    pub score: f32,
}

impl Tag {
    /// Creates a tag, clamping the score into `0.0..=1.0`.
    pub fn new(tag: impl Into<String>, score: f32) -> Self {
        Self {
            tag: tag.into(),
            score: if score.is_nan() {
                0.0
            } else {
                score.clamp(0.0, 1.0)
            },
        }
    }
}

/// A file search; all given criteria must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// Files must carry every one of these tags.
    pub tags: Vec<String>,
    /// Files whose name contains this (ASCII case-insensitive).
    pub name: Option<String>,
    /// Files of this kind.
    pub kind: Option<FileKind>,
    /// Number of matches to skip (ordered by name).
    pub offset: u64,
    /// Maximum number of matches returned.
    pub limit: u64,
}

/// One page of search results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPage {
    /// The matching files of this page, ordered by name.
    pub files: Vec<FileMeta>,
    /// The number of matching files over all pages.
    pub total: u64,
}

/// The node a neighbourhood graph is built around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphCenter {
    /// A file, by name.
    File(String),
    /// A tag, by text.
    Tag(String),
}

/// Whether a graph node is a file or a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A file node.
    File,
    /// A tag node.
    Tag,
}

/// A node of the file–tag graph; `id` is `file:NAME` or `tag:TEXT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphNode {
    /// Unique id within the graph.
    pub id: String,
    /// File or tag.
    pub kind: NodeKind,
    /// The file name or the tag text.
    pub label: String,
}

/// A `TAGGED` edge from a file node to a tag node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphEdge {
    /// Id of the file node.
    pub source: String,
    /// Id of the tag node.
    pub target: String,
    /// The tag's score on that file.
    pub score: f32,
}

/// A neighbourhood of the file–tag graph.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Files and tags, the center first.
    pub nodes: Vec<GraphNode>,
    /// Edges between the nodes.
    pub edges: Vec<GraphEdge>,
}

impl GraphNode {
    /// A file node.
    pub fn file(name: &str) -> Self {
        Self {
            id: format!("file:{name}"),
            kind: NodeKind::File,
            label: name.to_owned(),
        }
    }

    /// A tag node.
    pub fn tag(tag: &str) -> Self {
        Self {
            id: format!("tag:{tag}"),
            kind: NodeKind::Tag,
            label: tag.to_owned(),
        }
    }
}
