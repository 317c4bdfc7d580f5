use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::{
    BoxFuture, Error, FileKind, FileMeta, Graph, GraphCenter, GraphEdge, GraphNode, Result,
    SearchPage, SearchQuery, Tag,
};

/// Stores the file–tag graph `(:File)-[:TAGGED {score}]->(:Tag)` and answers searches.
pub trait GraphStore: std::fmt::Debug + Send + Sync + 'static {
    /// Inserts or replaces a file's metadata; a replaced file loses its tags until retagged.
    fn upsert_file(&self, meta: FileMeta) -> BoxFuture<'_, Result<()>>;

    /// The metadata of `name`, if known.
    fn get_file<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<FileMeta>>>;

    /// Removes `name` and its edges (and tags no file uses any more); returns whether it existed.
    fn remove_file<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Replaces the tags of `name` if its content still has hash `sha256`; returns whether the
    /// tags were written (false if the file was removed or replaced meanwhile).
    fn set_tags<'a>(
        &'a self,
        name: &'a str,
        sha256: &'a str,
        tags: Vec<Tag>,
    ) -> BoxFuture<'a, Result<bool>>;

    /// The tags of `name`, best first, or `None` if the file is unknown.
    fn tags_of<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<Tag>>>>;

    /// Files matching every criterion of `query`, ordered by name.
    fn search<'a>(&'a self, query: &'a SearchQuery) -> BoxFuture<'a, Result<SearchPage>>;

    /// The graph around a file (its tags and up to `limit` files sharing them) or around a tag
    /// (up to `limit` of its files, best score first, and their tags); `None` if not found.
    fn neighbourhood(
        &self,
        center: GraphCenter,
        limit: u64,
    ) -> BoxFuture<'_, Result<Option<Graph>>>;

    /// Up to `limit` files whose current content has not been tagged yet, oldest first.
    fn untagged(&self, limit: u64) -> BoxFuture<'_, Result<Vec<FileMeta>>>;

    /// The number of files and of tags.
    fn counts(&self) -> BoxFuture<'_, Result<(u64, u64)>>;
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    kind TEXT NOT NULL,
    uploaded INTEGER NOT NULL,
    tagged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_kind ON files (kind, name);
CREATE INDEX IF NOT EXISTS files_untagged ON files (tagged, uploaded);
CREATE TABLE IF NOT EXISTS tags (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS tagged (
    file_id INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    tag_id INTEGER NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
    score REAL NOT NULL,
    PRIMARY KEY (file_id, tag_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tagged_by_tag ON tagged (tag_id, file_id);
";

const FILE_COLUMNS: &str = "f.name, f.size, f.sha256, f.kind, f.uploaded";
const PRUNE_TAGS: &str =
    "DELETE FROM tags WHERE NOT EXISTS (SELECT 1 FROM tagged WHERE tagged.tag_id = tags.id)";

/// The embedded [`GraphStore`]: one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteGraphStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteGraphStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| {
            Error::Unavailable(format!("opening sqlite database {}: {e}", path.display()))
        })?;
        Self::init(conn)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(sql_error)?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.execute_batch(SCHEMA).map_err(sql_error)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn with_conn<T, F>(&self, f: F) -> BoxFuture<'static, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                f(&mut conn).map_err(sql_error)
            })
            .await
            .map_err(|e| Error::Unavailable(format!("sqlite task failed: {e}")))?
        })
    }
}

fn sql_error(e: rusqlite::Error) -> Error {
    Error::Unavailable(format!("sqlite: {e}"))
}

fn file_from_row(row: &Row<'_>) -> rusqlite::Result<FileMeta> {
    let kind: String = row.get(3)?;
    Ok(FileMeta {
        name: row.get(0)?,
        size: row.get::<_, i64>(1)?.try_into().unwrap_or(0),
        sha256: row.get(2)?,
        kind: kind.parse().unwrap_or(FileKind::Other),
        uploaded: row.get(4)?,
    })
}

fn tags_of(conn: &Connection, file_id: i64) -> rusqlite::Result<Vec<Tag>> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.name, tg.score FROM tagged tg JOIN tags t ON t.id = tg.tag_id
         WHERE tg.file_id = ?1 ORDER BY tg.score DESC, t.name",
    )?;
    stmt.query_map([file_id], |row| {
        Ok(Tag::new(row.get::<_, String>(0)?, row.get(1)?))
    })?
    .collect()
}

fn file_id(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT id FROM files WHERE name = ?1", [name], |row| {
        row.get(0)
    })
    .optional()
}

fn search(conn: &Connection, query: &SearchQuery) -> rusqlite::Result<SearchPage> {
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    let tags: BTreeSet<&str> = query.tags.iter().map(String::as_str).collect();
    if !tags.is_empty() {
        let placeholders = vec!["?"; tags.len()].join(", ");
        conditions.push(format!(
            "f.id IN (SELECT tg.file_id FROM tagged tg JOIN tags t ON t.id = tg.tag_id
             WHERE t.name IN ({placeholders}) GROUP BY tg.file_id HAVING COUNT(*) = {})",
            tags.len()
        ));
        values.extend(tags.iter().map(|t| Value::Text((*t).to_owned())));
    }
    if let Some(name) = &query.name {
        conditions.push("instr(lower(f.name), lower(?)) > 0".to_owned());
        values.push(Value::Text(name.clone()));
    }
    if let Some(kind) = query.kind {
        conditions.push("f.kind = ?".to_owned());
        values.push(Value::Text(kind.as_str().to_owned()));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let total: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM files f {filter}"),
        params_from_iter(values.iter()),
        |row| row.get(0),
    )?;
    let total = u64::try_from(total).unwrap_or(0);
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    let offset = i64::try_from(query.offset).unwrap_or(i64::MAX);
    values.push(Value::Integer(limit));
    values.push(Value::Integer(offset));
    let mut stmt = conn.prepare(&format!(
        "SELECT {FILE_COLUMNS} FROM files f {filter} ORDER BY f.name LIMIT ? OFFSET ?"
    ))?;
    let files = stmt
        .query_map(params_from_iter(values.iter()), file_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(SearchPage { files, total })
}

/// Adds the nodes and edges of `(file, tag, score)` rows, skipping nodes already present.
pub(crate) fn add_edges(
    graph: &mut Graph,
    seen: &mut BTreeSet<String>,
    rows: Vec<(String, String, f32)>,
) {
    for (file, tag, score) in rows {
        for node in [GraphNode::file(&file), GraphNode::tag(&tag)] {
            if seen.insert(node.id.clone()) {
                graph.nodes.push(node);
            }
        }
        graph.edges.push(GraphEdge {
            source: format!("file:{file}"),
            target: format!("tag:{tag}"),
            score,
        });
    }
}

fn edge_rows(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<(String, String, f32)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    stmt.query_map(params, |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect()
}

fn neighbourhood(
    conn: &Connection,
    center: &GraphCenter,
    limit: i64,
) -> rusqlite::Result<Option<Graph>> {
    let mut graph = Graph::default();
    let mut seen = BTreeSet::new();
    match center {
        GraphCenter::File(name) => {
            let Some(id) = file_id(conn, name)? else {
                return Ok(None);
            };
            let center = GraphNode::file(name);
            seen.insert(center.id.clone());
            graph.nodes.push(center);
            let own = edge_rows(
                conn,
                "SELECT f.name, t.name, tg.score FROM tagged tg
                 JOIN files f ON f.id = tg.file_id JOIN tags t ON t.id = tg.tag_id
                 WHERE tg.file_id = ?1 ORDER BY tg.score DESC, t.name",
                [id],
            )?;
            add_edges(&mut graph, &mut seen, own);
            let shared = edge_rows(
                conn,
                "WITH mine AS (SELECT tag_id FROM tagged WHERE file_id = ?1),
                 near AS (SELECT DISTINCT f.id, f.name FROM tagged tg JOIN files f ON f.id = tg.file_id
                          WHERE tg.tag_id IN mine AND f.id != ?1 ORDER BY f.name LIMIT ?2)
                 SELECT near.name, t.name, tg.score FROM near
                 JOIN tagged tg ON tg.file_id = near.id JOIN tags t ON t.id = tg.tag_id
                 WHERE tg.tag_id IN mine ORDER BY near.name, tg.score DESC, t.name",
                params![id, limit],
            )?;
            add_edges(&mut graph, &mut seen, shared);
        }
        GraphCenter::Tag(tag) => {
            let id: Option<i64> = conn
                .query_row("SELECT id FROM tags WHERE name = ?1", [tag], |row| {
                    row.get(0)
                })
                .optional()?;
            let Some(id) = id else {
                return Ok(None);
            };
            let center = GraphNode::tag(tag);
            seen.insert(center.id.clone());
            graph.nodes.push(center);
            let rows = edge_rows(
                conn,
                "WITH near AS (SELECT tg.file_id AS id FROM tagged tg JOIN files f ON f.id = tg.file_id
                               WHERE tg.tag_id = ?1 ORDER BY tg.score DESC, f.name LIMIT ?2)
                 SELECT f.name, t.name, tg.score FROM near
                 JOIN files f ON f.id = near.id JOIN tagged tg ON tg.file_id = near.id
                 JOIN tags t ON t.id = tg.tag_id
                 ORDER BY f.name, tg.tag_id != ?1, tg.score DESC, t.name",
                params![id, limit],
            )?;
            add_edges(&mut graph, &mut seen, rows);
        }
    }
    Ok(Some(graph))
}

impl GraphStore for SqliteGraphStore {
    fn upsert_file(&self, meta: FileMeta) -> BoxFuture<'_, Result<()>> {
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            let size = i64::try_from(meta.size).unwrap_or(i64::MAX);
            tx.execute(
                "INSERT INTO files (name, size, sha256, kind, uploaded, tagged)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0)
                 ON CONFLICT (name) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256,
                 kind = excluded.kind, uploaded = excluded.uploaded, tagged = 0",
                params![
                    meta.name,
                    size,
                    meta.sha256,
                    meta.kind.as_str(),
                    meta.uploaded
                ],
            )?;
            tx.execute(
                "DELETE FROM tagged WHERE file_id = (SELECT id FROM files WHERE name = ?1)",
                [&meta.name],
            )?;
            tx.execute(PRUNE_TAGS, [])?;
            tx.commit()
        })
    }

    fn get_file<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<FileMeta>>> {
        let name = name.to_owned();
        self.with_conn(move |conn| {
            conn.query_row(
                &format!("SELECT {FILE_COLUMNS} FROM files f WHERE f.name = ?1"),
                [name],
                file_from_row,
            )
            .optional()
        })
    }

    fn remove_file<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool>> {
        let name = name.to_owned();
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            let removed = tx.execute("DELETE FROM files WHERE name = ?1", [name])? > 0;
            tx.execute(PRUNE_TAGS, [])?;
            tx.commit()?;
            Ok(removed)
        })
    }

    fn set_tags<'a>(
        &'a self,
        name: &'a str,
        sha256: &'a str,
        tags: Vec<Tag>,
    ) -> BoxFuture<'a, Result<bool>> {
        let (name, sha256) = (name.to_owned(), sha256.to_owned());
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM files WHERE name = ?1 AND sha256 = ?2",
                    [&name, &sha256],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(id) = id else {
                return Ok(false);
            };
            tx.execute("DELETE FROM tagged WHERE file_id = ?1", [id])?;
            for tag in &tags {
                tx.execute(
                    "INSERT INTO tags (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                    [&tag.tag],
                )?;
                tx.execute(
                    "INSERT INTO tagged (file_id, tag_id, score)
                     SELECT ?1, id, ?3 FROM tags WHERE name = ?2
                     ON CONFLICT (file_id, tag_id) DO UPDATE SET score = max(score, excluded.score)",
                    params![id, tag.tag, tag.score],
                )?;
            }
            tx.execute("UPDATE files SET tagged = 1 WHERE id = ?1", [id])?;
            tx.execute(PRUNE_TAGS, [])?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn tags_of<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<Tag>>>> {
        let name = name.to_owned();
        self.with_conn(move |conn| match file_id(conn, &name)? {
            Some(id) => tags_of(conn, id).map(Some),
            None => Ok(None),
        })
    }

    fn search<'a>(&'a self, query: &'a SearchQuery) -> BoxFuture<'a, Result<SearchPage>> {
        let query = query.clone();
        self.with_conn(move |conn| search(conn, &query))
    }

    fn neighbourhood(
        &self,
        center: GraphCenter,
        limit: u64,
    ) -> BoxFuture<'_, Result<Option<Graph>>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |conn| neighbourhood(conn, &center, limit))
    }

    fn untagged(&self, limit: u64) -> BoxFuture<'_, Result<Vec<FileMeta>>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {FILE_COLUMNS} FROM files f WHERE f.tagged = 0
                 ORDER BY f.uploaded, f.name LIMIT ?1"
            ))?;
            stmt.query_map([limit], file_from_row)?.collect()
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<(u64, u64)>> {
        self.with_conn(|conn| {
            let (files, tags): (i64, i64) = conn.query_row(
                "SELECT (SELECT COUNT(*) FROM files), (SELECT COUNT(*) FROM tags)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            Ok((files.unsigned_abs(), tags.unsigned_abs()))
        })
    }
}
