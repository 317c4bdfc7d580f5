use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::types::Value;
use rusqlite::vtab::array::Array;
use rusqlite::{Connection, OptionalExtension, Row, ToSql, params, params_from_iter};

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

    /// Records many files with their tags, as [`upsert_file`](Self::upsert_file) then
    /// [`set_tags`](Self::set_tags) with its hash would for each in turn, in far fewer round
    /// trips (bulk imports, rebuilding a graph).
    fn upsert_tagged(&self, files: Vec<(FileMeta, Vec<Tag>)>) -> BoxFuture<'_, Result<()>>;

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

    /// The name of every file the graph describes, in no order.
    fn names(&self) -> BoxFuture<'_, Result<Vec<String>>>;
}

/// Connection settings, applied before the schema.
const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
";

/// The schema, created where missing. `tagged.kind` repeats its file's kind (a file's tags are
/// dropped whenever its record changes), so that a tag's files of one kind are one index
/// range; `file_names` indexes the names' trigrams for substring search.
const SCHEMA: &str = "
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
    kind TEXT NOT NULL,
    PRIMARY KEY (file_id, tag_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tagged_by_tag ON tagged (tag_id, file_id);
CREATE INDEX IF NOT EXISTS tagged_by_tag_kind ON tagged (tag_id, kind, file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS file_names
    USING fts5 (name, content = 'files', content_rowid = 'id', tokenize = 'trigram');
CREATE TRIGGER IF NOT EXISTS file_names_insert AFTER INSERT ON files BEGIN
    INSERT INTO file_names (rowid, name) VALUES (new.id, new.name);
END;
CREATE TRIGGER IF NOT EXISTS file_names_delete AFTER DELETE ON files BEGIN
    INSERT INTO file_names (file_names, rowid, name) VALUES ('delete', old.id, old.name);
END;
CREATE TRIGGER IF NOT EXISTS file_names_update AFTER UPDATE OF name ON files BEGIN
    INSERT INTO file_names (file_names, rowid, name) VALUES ('delete', old.id, old.name);
    INSERT INTO file_names (rowid, name) VALUES (new.id, new.name);
END;
";

/// `PRAGMA user_version` of [`SCHEMA`]; 0 is a new database or one of the first schema
/// (without `tagged.kind` and `file_names`), which [`SqliteGraphStore::open`] upgrades.
const SCHEMA_VERSION: i64 = 1;

/// Upgrades a database of the first schema (version 0) to [`SCHEMA`], in one transaction:
/// `tagged` gains its kind column, and the name index is built from the files.
const UPGRADE_FROM_0: &str = "
ALTER TABLE tagged ADD COLUMN kind TEXT NOT NULL DEFAULT '';
UPDATE tagged SET kind = (SELECT kind FROM files WHERE files.id = tagged.file_id);
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

    fn init(mut conn: Connection) -> Result<Self> {
        conn.execute_batch(PRAGMAS).map_err(sql_error)?;
        rusqlite::vtab::array::load_module(&conn).map_err(sql_error)?;
        migrate(&mut conn).map_err(sql_error)?;
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

/// Brings the database to [`SCHEMA_VERSION`].
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version == SCHEMA_VERSION {
        return conn.execute_batch(SCHEMA);
    }
    let tx = conn.transaction()?;
    let first_schema: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tagged')",
        [],
        |row| row.get(0),
    )?;
    if first_schema {
        tx.execute_batch(UPGRADE_FROM_0)?;
    }
    tx.execute_batch(SCHEMA)?;
    tx.execute("INSERT INTO file_names (file_names) VALUES ('rebuild')", [])?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
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

/// The shortest name query the trigram index can answer; shorter ones scan the names.
const TRIGRAM: usize = 3;

/// A phrase of the FTS5 query language matching `text` literally.
fn fts_phrase(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// `WHERE` with `conditions` joined by `AND`, or nothing.
fn where_clause(conditions: &[&str]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

const NAME_FILTER: &str = "instr(lower(f.name), lower(?)) > 0";
const KIND_FILTER: &str = "f.kind = ?";

/// Searches in one of two ways, whichever reads fewer rows for the page:
///
/// - by candidates: the ids in the tags' postings (of the kind, when one is given) and in the
///   trigram index of names, intersected in id order; the files among them that match are
///   counted, sorted by name and paged — the cost grows with the number of matches;
/// - by name: files are walked in name order (within the kind, when one is given), each
///   checked for the tags and the name, until the page is full — the cost grows with the
///   files walked per match, so it wins when the matches are dense.
///
/// Names match as ASCII case-insensitive substrings (`instr` on `lower`); the trigram index
/// (case-folded, a superset) only narrows the candidates, for names of three or more
/// characters.
fn search(conn: &Connection, query: &SearchQuery) -> rusqlite::Result<SearchPage> {
    let kind = query.kind.map(|k| Value::Text(k.as_str().to_owned()));
    let name = query.name.as_ref().map(|n| Value::Text(n.clone()));
    let mut tags = Vec::new();
    for tag in query.tags.iter().collect::<BTreeSet<_>>() {
        let id: Option<i64> = conn
            .prepare_cached("SELECT id FROM tags WHERE name = ?1")?
            .query_row([tag], |row| row.get(0))
            .optional()?;
        match id {
            Some(id) => tags.push(Value::Integer(id)),
            None => {
                return Ok(SearchPage {
                    files: Vec::new(),
                    total: 0,
                });
            }
        }
    }
    let limit = Value::Integer(i64::try_from(query.limit).unwrap_or(i64::MAX));
    let offset = Value::Integer(i64::try_from(query.offset).unwrap_or(i64::MAX));

    // The candidates: one sorted id list per tag and for the name, intersected.
    let mut arms = Vec::new();
    let mut arm_values = Vec::new();
    for tag in &tags {
        arm_values.push(tag.clone());
        if let Some(kind) = &kind {
            arms.push("SELECT file_id FROM tagged WHERE tag_id = ? AND kind = ?");
            arm_values.push(kind.clone());
        } else {
            arms.push("SELECT file_id FROM tagged WHERE tag_id = ?");
        }
    }
    if let Some(name) = &query.name
        && name.chars().count() >= TRIGRAM
    {
        arms.push("SELECT rowid FROM file_names WHERE file_names MATCH ?");
        arm_values.push(Value::Text(fts_phrase(name)));
    }
    // What the walk by name checks on each file.
    let mut walk = Vec::new();
    let mut walk_values = Vec::new();
    if let Some(kind) = &kind {
        walk.push(KIND_FILTER);
        walk_values.push(kind.clone());
    }
    for tag in &tags {
        walk.push("EXISTS (SELECT 1 FROM tagged x WHERE x.file_id = f.id AND x.tag_id = ?)");
        walk_values.push(tag.clone());
    }
    if let Some(name) = &name {
        walk.push(NAME_FILTER);
        walk_values.push(name.clone());
    }
    let walk_clause = where_clause(&walk);
    let walk_page = |total: u64| -> rusqlite::Result<SearchPage> {
        let mut values = walk_values.clone();
        values.extend([limit.clone(), offset.clone()]);
        let files = conn
            .prepare_cached(&format!(
                "SELECT {FILE_COLUMNS} FROM files f {walk_clause} ORDER BY f.name LIMIT ? OFFSET ?"
            ))?
            .query_map(params_from_iter(&values), file_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(SearchPage { files, total })
    };
    if arms.is_empty() {
        let total: i64 = conn
            .prepare_cached(&format!("SELECT count(*) FROM files f {walk_clause}"))?
            .query_row(params_from_iter(&walk_values), |row| row.get(0))?;
        return walk_page(total.unsigned_abs());
    }
    let candidates = if arms.len() == 1 {
        arms[0].to_owned()
    } else {
        format!("{} ORDER BY 1", arms.join(" INTERSECT "))
    };
    let ids: Vec<Value> = conn
        .prepare_cached(&candidates)?
        .query_map(params_from_iter(&arm_values), |row| row.get::<_, i64>(0))?
        .map(|id| id.map(Value::Integer))
        .collect::<rusqlite::Result<_>>()?;
    let ids: Array = std::rc::Rc::new(ids);
    // What the candidates do not settle yet: the kind without tags, the exact name match.
    let mut check = vec!["f.id IN rarray(?)"];
    let mut check_values = Vec::new();
    if let (Some(kind), true) = (&kind, tags.is_empty()) {
        check.push(KIND_FILTER);
        check_values.push(kind.clone());
    }
    if let Some(name) = &name {
        check.push(NAME_FILTER);
        check_values.push(name.clone());
    }
    let check_clause = where_clause(&check);
    fn with_ids<'a>(ids: &'a Array, values: &'a [Value]) -> Vec<&'a dyn ToSql> {
        std::iter::once(ids as &dyn ToSql)
            .chain(values.iter().map(|v| v as &dyn ToSql))
            .collect()
    }
    let total = if check_values.is_empty() {
        ids.len() as u64
    } else {
        let n: i64 = conn
            .prepare_cached(&format!("SELECT count(*) FROM files f {check_clause}"))?
            .query_row(with_ids(&ids, &check_values).as_slice(), |row| row.get(0))?;
        n.unsigned_abs()
    };
    // Walking by name reads about (offset + limit) · files / total files; paging the
    // candidates reads about total.
    let files: i64 = conn.query_row("SELECT coalesce(max(id), 0) FROM files", [], |row| {
        row.get(0)
    })?;
    let walked = query.offset.saturating_add(query.limit) as f64 * files as f64;
    if total as f64 * total as f64 > walked {
        return walk_page(total);
    }
    check_values.extend([limit, offset]);
    let files = conn
        .prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM files f {check_clause} ORDER BY f.name LIMIT ? OFFSET ?"
        ))?
        .query_map(with_ids(&ids, &check_values).as_slice(), file_from_row)?
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

/// Inserts or replaces a file's record and drops its tags (tags left unused stay).
fn upsert(conn: &Connection, meta: &FileMeta) -> rusqlite::Result<()> {
    let size = i64::try_from(meta.size).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO files (name, size, sha256, kind, uploaded, tagged)
         VALUES (?1, ?2, ?3, ?4, ?5, 0)
         ON CONFLICT (name) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256,
         kind = excluded.kind, uploaded = excluded.uploaded, tagged = 0",
    )?
    .execute(params![
        meta.name,
        size,
        meta.sha256,
        meta.kind.as_str(),
        meta.uploaded
    ])?;
    conn.prepare_cached(
        "DELETE FROM tagged WHERE file_id = (SELECT id FROM files WHERE name = ?1)",
    )?
    .execute([&meta.name])?;
    Ok(())
}

/// Replaces the tags of `name` if its content has hash `sha256` and marks it tagged; returns
/// whether it did (tags left unused stay).
fn write_tags(conn: &Connection, name: &str, sha256: &str, tags: &[Tag]) -> rusqlite::Result<bool> {
    let id: Option<i64> = conn
        .prepare_cached("SELECT id FROM files WHERE name = ?1 AND sha256 = ?2")?
        .query_row([name, sha256], |row| row.get(0))
        .optional()?;
    let Some(id) = id else {
        return Ok(false);
    };
    conn.prepare_cached("DELETE FROM tagged WHERE file_id = ?1")?
        .execute([id])?;
    for tag in tags {
        conn.prepare_cached("INSERT INTO tags (name) VALUES (?1) ON CONFLICT (name) DO NOTHING")?
            .execute([&tag.tag])?;
        conn.prepare_cached(
            "INSERT INTO tagged (file_id, tag_id, score, kind)
             SELECT f.id, t.id, ?3, f.kind FROM files f, tags t
             WHERE f.id = ?1 AND t.name = ?2
             ON CONFLICT (file_id, tag_id) DO UPDATE SET score = max(score, excluded.score)",
        )?
        .execute(params![id, tag.tag, tag.score])?;
    }
    conn.prepare_cached("UPDATE files SET tagged = 1 WHERE id = ?1")?
        .execute([id])?;
    Ok(true)
}

impl GraphStore for SqliteGraphStore {
    fn upsert_file(&self, meta: FileMeta) -> BoxFuture<'_, Result<()>> {
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            upsert(&tx, &meta)?;
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
            let written = write_tags(&tx, &name, &sha256, &tags)?;
            if written {
                tx.execute(PRUNE_TAGS, [])?;
                tx.commit()?;
            }
            Ok(written)
        })
    }

    fn upsert_tagged(&self, files: Vec<(FileMeta, Vec<Tag>)>) -> BoxFuture<'_, Result<()>> {
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            for (meta, tags) in &files {
                upsert(&tx, meta)?;
                write_tags(&tx, &meta.name, &meta.sha256, tags)?;
            }
            tx.execute(PRUNE_TAGS, [])?;
            tx.commit()
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

    fn names(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached("SELECT name FROM files")?;
            stmt.query_map([], |row| row.get(0))?.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first schema (user_version 0), as databases written before the name index have it.
    const FIRST_SCHEMA: &str = "
        CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
            size INTEGER NOT NULL, sha256 TEXT NOT NULL, kind TEXT NOT NULL,
            uploaded INTEGER NOT NULL, tagged INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX files_kind ON files (kind, name);
        CREATE INDEX files_untagged ON files (tagged, uploaded);
        CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        CREATE TABLE tagged (
            file_id INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            tag_id INTEGER NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
            score REAL NOT NULL, PRIMARY KEY (file_id, tag_id)) WITHOUT ROWID;
        CREATE INDEX tagged_by_tag ON tagged (tag_id, file_id);
        INSERT INTO files VALUES (1, 'Old-Report.pdf', 3, 'h', 'pdf', 1, 1),
                                 (2, 'old-notes.txt', 3, 'h', 'text', 1, 1);
        INSERT INTO tags VALUES (1, 'old');
        INSERT INTO tagged VALUES (1, 1, 0.5), (2, 1, 0.5);
    ";

    #[tokio::test]
    async fn a_database_of_the_first_schema_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graph.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch(FIRST_SCHEMA)
            .unwrap();
        for _ in 0..2 {
            let store = SqliteGraphStore::open(&path).unwrap();
            let search = |tags: &[&str], name: Option<&str>, kind: Option<FileKind>| SearchQuery {
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                name: name.map(str::to_owned),
                kind,
                offset: 0,
                limit: 10,
            };
            let names = |page: SearchPage| -> Vec<String> {
                page.files.into_iter().map(|f| f.name).collect()
            };
            let by_tag_and_kind = store
                .search(&search(&["old"], None, Some(FileKind::Pdf)))
                .await
                .unwrap();
            assert_eq!(names(by_tag_and_kind), ["Old-Report.pdf"]);
            let by_name = store
                .search(&search(&[], Some("REPORT"), None))
                .await
                .unwrap();
            assert_eq!(names(by_name), ["Old-Report.pdf"]);
            let version: i64 = store
                .conn
                .lock()
                .unwrap()
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION);
        }
    }
}
