//! The FalkorDB [`GraphStore`]: `(:File)-[:TAGGED {score}]->(:Tag)` queried with Cypher over
//! the Redis protocol (`GRAPH.QUERY`).
//!
//! Every value reaches the server as a query parameter (`CYPHER name="…" MATCH … $name`), the
//! protocol's parameter mechanism, encoded by [`Param`]; the query texts are constants of this
//! module or built from its own fragments only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;

use crate::graph::add_edges;
use crate::redis_conn::{connect, redact};
use crate::{
    BoxFuture, Error, FileKind, FileMeta, Graph, GraphCenter, GraphNode, GraphStore, Result,
    SearchPage, SearchQuery, Tag,
};

/// Bounds every query; FalkorDB answers the store's queries in milliseconds.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: [&str; 5] = [
    "CREATE INDEX FOR (f:File) ON (f.name)",
    "CREATE INDEX FOR (f:File) ON (f.tagged)",
    "CREATE INDEX FOR (f:File) ON (f.kind)",
    "CREATE INDEX FOR (f:File) ON (f.trigrams)",
    "CREATE INDEX FOR (t:Tag) ON (t.name)",
];
/// Parameter names of the trigrams a name search looks up in the index (at most this many:
/// `CONTAINS` checks the whole name anyway).
const TRIGRAM_PARAMS: [&str; 8] = [
    "tri0", "tri1", "tri2", "tri3", "tri4", "tri5", "tri6", "tri7",
];
/// Files recorded before names had trigrams get them in batches of this many.
const BACKFILL_BATCH: u64 = 1000;
/// The version of the graph's layout that [`FalkorGraphStore`] writes, kept on a node of its
/// own: version 2 added name trigrams and kind labels, which older graphs get once.
const LAYOUT_VERSION: i64 = 2;
/// Each file node also carries the label of its kind: filtering a tag's files by a label
/// costs far less than reading each file's `kind` property.
const KIND_LABELS: [(FileKind, &str); 6] = [
    (FileKind::Text, "KindText"),
    (FileKind::Pdf, "KindPdf"),
    (FileKind::Image, "KindImage"),
    (FileKind::Audio, "KindAudio"),
    (FileKind::Video, "KindVideo"),
    (FileKind::Other, "KindOther"),
];
/// `REMOVE` of every kind label, before the file's own is set.
const REMOVE_KIND_LABELS: &str =
    "REMOVE f:KindText:KindPdf:KindImage:KindAudio:KindVideo:KindOther";

/// The label of files of `kind`.
fn kind_label(kind: FileKind) -> &'static str {
    KIND_LABELS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("KindOther", |(_, label)| label)
}
const FILE_FIELDS: &str = "f.name, f.size, f.sha256, f.kind, f.uploaded";
const PRUNE_TAGS: &str = "MATCH (t:Tag) WHERE NOT (t)<-[:TAGGED]-() DELETE t";
const TAGS_OF: &str = "MATCH (f:File {name: $name}) OPTIONAL MATCH (f)-[r:TAGGED]->(t:Tag)
     RETURN t.name, r.score ORDER BY r.score DESC, t.name";

/// A Cypher parameter value.
#[derive(Debug, Clone, PartialEq)]
enum Param {
    Str(String),
    Int(i64),
    Float(f64),
    List(Vec<Param>),
    /// A map literal; the keys are identifiers chosen by this module.
    Map(Vec<(&'static str, Param)>),
}

impl Param {
    fn str(s: &str) -> Self {
        Self::Str(s.to_owned())
    }

    /// Appends the value as a Cypher literal: strings double-quoted with `\` and `"` escaped
    /// (the server reads backslash escapes), floats in plain decimal notation.
    fn encode(&self, out: &mut String) -> Result<()> {
        match self {
            Param::Str(s) => {
                if s.contains('\0') {
                    return Err(Error::Unavailable(
                        "FalkorDB cannot store strings containing NUL bytes".to_owned(),
                    ));
                }
                out.push('"');
                for c in s.chars() {
                    if matches!(c, '"' | '\\') {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            Param::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Param::Float(f) if f.is_finite() => {
                let _ = write!(out, "{f:?}");
            }
            Param::Float(_) => out.push_str("0.0"),
            Param::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.encode(out)?;
                }
                out.push(']');
            }
            Param::Map(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(key);
                    out.push(':');
                    value.encode(out)?;
                }
                out.push('}');
            }
        }
        Ok(())
    }
}

/// The distinct trigrams (three consecutive characters) of `text`, in order, each as the hex
/// digits of its UTF-8 bytes: the index trims whitespace at the ends of the strings it holds
/// (` de` would not be found), hex digits are kept as they are.
fn trigrams(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut seen = BTreeSet::new();
    chars
        .windows(3)
        .map(|w| hex::encode(w.iter().collect::<String>()))
        .filter(|t| seen.insert(t.clone()))
        .collect()
}

/// The indexed form of a file name: its ASCII-lowercased trigrams.
fn name_trigrams(name: &str) -> Param {
    Param::List(
        trigrams(&name.to_ascii_lowercase())
            .into_iter()
            .map(Param::Str)
            .collect(),
    )
}

/// Up to [`TRIGRAM_PARAMS`] trigrams of `query`, spread over it.
fn query_trigrams(query: &str) -> Vec<String> {
    let all = trigrams(query);
    let n = all.len().min(TRIGRAM_PARAMS.len());
    (0..n).map(|i| all[i * all.len() / n].clone()).collect()
}

/// The parameter header plus the query: `CYPHER a=1 b="x" MATCH …`.
fn parameterised(query: &str, params: &[(&str, Param)]) -> Result<String> {
    let mut text = String::from("CYPHER ");
    for (name, value) in params {
        text.push_str(name);
        text.push('=');
        value.encode(&mut text)?;
        text.push(' ');
    }
    text.push_str(query);
    Ok(text)
}

/// A parsed `GRAPH.QUERY` reply.
#[derive(Debug, Default)]
struct Reply {
    rows: Vec<Vec<Value>>,
    stats: Vec<String>,
}

impl Reply {
    fn parse(value: Value) -> Result<Self> {
        let Value::Array(mut parts) = value else {
            return Err(bad_reply("the reply is not an array"));
        };
        let stats = match parts.pop() {
            Some(Value::Array(stats)) => stats.into_iter().filter_map(|s| text(s).ok()).collect(),
            _ => return Err(bad_reply("the reply has no statistics")),
        };
        let rows = match parts.pop() {
            Some(Value::Array(rows)) => rows
                .into_iter()
                .map(|row| match row {
                    Value::Array(cells) => Ok(cells),
                    _ => Err(bad_reply("a row is not an array")),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad_reply("the rows are not an array")),
            None => Vec::new(),
        };
        Ok(Self { rows, stats })
    }

    /// A counter of the statistics, e.g. `Nodes deleted`.
    fn stat(&self, name: &str) -> u64 {
        self.stats
            .iter()
            .filter_map(|s| s.strip_prefix(name)?.strip_prefix(':'))
            .find_map(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn bad_reply(what: &str) -> Error {
    Error::Unavailable(format!("unexpected FalkorDB reply: {what}"))
}

fn text(value: Value) -> Result<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).map_err(|_| bad_reply("non-UTF-8")),
        Value::SimpleString(s) => Ok(s),
        other => Err(bad_reply(&format!("expected a string, got {other:?}"))),
    }
}

fn int(value: Value) -> Result<i64> {
    match value {
        Value::Int(i) => Ok(i),
        other => text(other)?
            .parse()
            .map_err(|_| bad_reply("expected an integer")),
    }
}

/// A list of integers, which the server sends as its text, `[1, 2, 3]`.
fn int_list(value: Value) -> Result<Vec<i64>> {
    let list = text(value)?;
    let items = list
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .ok_or_else(|| bad_reply("expected a list"))?;
    items
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| item.parse().map_err(|_| bad_reply("expected an integer")))
        .collect()
}

fn float(value: Value) -> Result<f32> {
    match value {
        Value::Double(f) => Ok(f as f32),
        Value::Int(i) => Ok(i as f32),
        other => text(other)?
            .parse::<f64>()
            .map(|f| f as f32)
            .map_err(|_| bad_reply("expected a number")),
    }
}

fn cells<const N: usize>(row: Vec<Value>) -> Result<[Value; N]> {
    row.try_into()
        .map_err(|_| bad_reply(&format!("expected {N} columns")))
}

fn file_from_row(row: Vec<Value>) -> Result<FileMeta> {
    let [name, size, sha256, kind, uploaded] = cells(row)?;
    Ok(FileMeta {
        name: text(name)?,
        size: int(size)?.try_into().unwrap_or(0),
        sha256: text(sha256)?,
        kind: text(kind)?.parse().unwrap_or(FileKind::Other),
        uploaded: int(uploaded)?,
    })
}

fn edge_from_row(row: Vec<Value>) -> Result<(String, String, f32)> {
    let [file, tag, score] = cells(row)?;
    Ok((text(file)?, text(tag)?, float(score)?))
}

fn count(reply: Reply) -> Result<u64> {
    let row = reply
        .rows
        .into_iter()
        .next()
        .ok_or_else(|| bad_reply("no row"))?;
    let [n] = cells(row)?;
    Ok(int(n)?.unsigned_abs())
}

fn clamp(n: u64) -> Param {
    Param::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The [`GraphStore`] on FalkorDB: one graph (a Redis key) holding `File` and `Tag` nodes.
///
/// Same semantics as [`crate::SqliteGraphStore`] (a shared conformance suite runs against both).
/// A write that needs several queries repeats the content-hash check in each, so a concurrent
/// re-upload never receives stale tags, and an interrupted `set_tags` leaves the file untagged,
/// to be tagged again by the job's redelivery.
#[derive(Debug, Clone)]
pub struct FalkorGraphStore {
    conn: ConnectionManager,
    graph: String,
    url: String,
    schema_ready: std::sync::Arc<AtomicBool>,
}

impl FalkorGraphStore {
    /// A store for graph `graph` on the server at `url` (`redis://HOST:PORT`); connects lazily,
    /// so this fails only for a malformed URL.
    pub fn new(url: &str, graph: &str) -> Result<Self> {
        Ok(Self {
            conn: connect(url, QUERY_TIMEOUT)?,
            graph: graph.to_owned(),
            url: redact(url),
            schema_ready: std::sync::Arc::new(AtomicBool::new(false)),
        })
    }

    async fn raw_query(&self, text: String) -> Result<Reply> {
        let mut conn = self.conn.clone();
        let value: Value = redis::cmd("GRAPH.QUERY")
            .arg(&self.graph)
            .arg(text)
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::Unavailable(format!("FalkorDB at {}: {e}", self.url)))?;
        Reply::parse(value)
    }

    async fn query(&self, query: &str, params: &[(&str, Param)]) -> Result<Reply> {
        if !self.schema_ready.load(Ordering::Acquire) {
            for index in SCHEMA {
                match self.raw_query(index.to_owned()).await {
                    Err(Error::Unavailable(e)) if e.contains("already indexed") => {}
                    other => {
                        other?;
                    }
                }
            }
            self.upgrade_layout().await?;
            self.schema_ready.store(true, Ordering::Release);
        }
        self.raw_query(parameterised(query, params)?).await
    }

    /// Brings a graph written by an earlier version to [`LAYOUT_VERSION`]: name trigrams and
    /// kind labels for the files that lack them, then the version node.
    async fn upgrade_layout(&self) -> Result<()> {
        let version = self
            .raw_query("MATCH (s:DisgrafsLayout) RETURN s.version".to_owned())
            .await?;
        if let Some(row) = version.rows.into_iter().next() {
            let [version] = cells(row)?;
            if int(version)? >= LAYOUT_VERSION {
                return Ok(());
            }
        }
        self.backfill_trigrams().await?;
        for (kind, label) in KIND_LABELS {
            self.raw_query(parameterised(
                &format!("MATCH (f:File) WHERE f.kind = $kind SET f:{label}"),
                &[("kind", Param::str(kind.as_str()))],
            )?)
            .await?;
        }
        self.raw_query(parameterised(
            "MERGE (s:DisgrafsLayout) SET s.version = $version",
            &[("version", Param::Int(LAYOUT_VERSION))],
        )?)
        .await?;
        Ok(())
    }

    /// Gives the files recorded without name trigrams (by an earlier version) theirs.
    async fn backfill_trigrams(&self) -> Result<()> {
        loop {
            let reply = self
                .raw_query(parameterised(
                    "MATCH (f:File) WHERE f.trigrams IS NULL RETURN f.name LIMIT $limit",
                    &[("limit", clamp(BACKFILL_BATCH))],
                )?)
                .await?;
            if reply.rows.is_empty() {
                return Ok(());
            }
            let mut batch = Vec::new();
            for row in reply.rows {
                let [name] = cells(row)?;
                let name = text(name)?;
                batch.push(Param::Map(vec![
                    ("trigrams", name_trigrams(&name)),
                    ("name", Param::Str(name)),
                ]));
            }
            self.raw_query(parameterised(
                "UNWIND $batch AS b MATCH (f:File {name: b.name}) SET f.trigrams = b.trigrams",
                &[("batch", Param::List(batch))],
            )?)
            .await?;
        }
    }

    async fn tags(&self, name: &str) -> Result<Option<Vec<Tag>>> {
        let reply = self.query(TAGS_OF, &[("name", Param::str(name))]).await?;
        if reply.rows.is_empty() {
            return Ok(None);
        }
        let mut tags = Vec::new();
        for row in reply.rows {
            let [tag, score] = cells(row)?;
            if tag != Value::Nil {
                tags.push(Tag::new(text(tag)?, float(score)?));
            }
        }
        Ok(Some(tags))
    }

    /// Searches in one of three ways:
    ///
    /// - without tags: files of the kind (its label), with the name's trigrams looked up in
    ///   the index and `CONTAINS` deciding, counted and sorted by the store;
    /// - one tag and no name: the tag's files (of the kind), counted and sorted by the store;
    /// - otherwise: the ids of each tag's files (of the kind), queried at once, are intersected
    ///   here, and the store looks them up, checks the tags again (ids of deleted nodes are
    ///   reused) and the name, counts, sorts and pages them in one query.
    async fn search_inner(&self, query: &SearchQuery) -> Result<SearchPage> {
        let tags: BTreeSet<&str> = query.tags.iter().map(String::as_str).collect();
        let file = match query.kind {
            Some(kind) => format!("f:File:{}", kind_label(kind)),
            None => "f:File".to_owned(),
        };
        // Only files are tagged: a tag's neighbours need no label check but their kind's.
        let tagged = match query.kind {
            Some(kind) => format!("f:{}", kind_label(kind)),
            None => "f".to_owned(),
        };
        let lowered = query.name.as_ref().map(|n| n.to_ascii_lowercase());
        let page_params = [
            ("offset", clamp(query.offset)),
            ("limit", clamp(query.limit)),
        ];
        if tags.is_empty() {
            let mut params = Vec::new();
            let mut conditions = Vec::new();
            if let Some(name) = &lowered {
                for (&param, trigram) in TRIGRAM_PARAMS.iter().zip(query_trigrams(name)) {
                    conditions.push(format!("${param} IN f.trigrams"));
                    params.push((param, Param::Str(trigram)));
                }
                conditions.push("f.lname CONTAINS $name".to_owned());
                params.push(("name", Param::Str(name.clone())));
            }
            let mut matching = format!("MATCH ({file})");
            if !conditions.is_empty() {
                matching.push_str(" WHERE ");
                matching.push_str(&conditions.join(" AND "));
            }
            return self.sorted_page(&matching, params, &page_params).await;
        }
        if let ([tag], None) = (tags.iter().collect::<Vec<_>>().as_slice(), &lowered) {
            let matching = format!("MATCH (:Tag {{name: $tag}})<-[:TAGGED]-({tagged})");
            return self
                .sorted_page(&matching, vec![("tag", Param::str(tag))], &page_params)
                .await;
        }
        // One row holding a list: far less reply to build and parse than a row per file.
        let ids_of =
            &format!("MATCH (:Tag {{name: $tag}})<-[:TAGGED]-({tagged}) RETURN collect(id(f))");
        let lists = futures_util::future::try_join_all(tags.iter().map(|tag| async move {
            let reply = self.query(ids_of, &[("tag", Param::str(tag))]).await?;
            let row = reply
                .rows
                .into_iter()
                .next()
                .ok_or_else(|| bad_reply("no row"))?;
            let [list] = cells(row)?;
            let mut ids = int_list(list)?;
            ids.sort_unstable();
            ids.dedup();
            Ok::<_, Error>(ids)
        }))
        .await?;
        let mut candidates: Option<Vec<i64>> = None;
        for ids in lists {
            candidates = Some(match candidates {
                None => ids,
                Some(known) => intersect(&known, &ids),
            });
        }
        if candidates.as_ref().is_some_and(Vec::is_empty) {
            return Ok(SearchPage {
                files: Vec::new(),
                total: 0,
            });
        }
        let ids = candidates.unwrap_or_default();
        let mut params = vec![
            (
                "ids",
                Param::List(ids.into_iter().map(Param::Int).collect()),
            ),
            (
                "tags",
                Param::List(tags.iter().map(|t| Param::str(t)).collect()),
            ),
            ("ntags", clamp(tags.len() as u64)),
            ("end", clamp(query.offset.saturating_add(query.limit))),
        ];
        let mut conditions = "id(f) = i".to_owned();
        if let Some(name) = lowered {
            conditions.push_str(" AND f.lname CONTAINS $name");
            params.push(("name", Param::Str(name)));
        }
        params.extend(page_params);
        // One row per file of the page, or one row of nulls when the page is empty, each with
        // the total.
        let reply = self
            .query(
                &format!(
                    "UNWIND $ids AS i MATCH ({file}) WHERE {conditions}
                     WITH f MATCH (f)-[:TAGGED]->(t:Tag) WHERE t.name IN $tags
                     WITH f, count(t) AS n WHERE n = $ntags
                     WITH f ORDER BY f.name WITH collect(f) AS fs
                     UNWIND CASE WHEN size(fs[$offset..$end]) = 0 THEN [null]
                                 ELSE fs[$offset..$end] END AS f
                     RETURN size(fs), {FILE_FIELDS}"
                ),
                &params,
            )
            .await?;
        let mut total = 0;
        let mut files = Vec::new();
        for mut row in reply.rows {
            if row.is_empty() {
                return Err(bad_reply("no columns"));
            }
            total = int(row.remove(0))?.unsigned_abs();
            if row.first().is_some_and(|name| *name != Value::Nil) {
                files.push(file_from_row(row)?);
            }
        }
        Ok(SearchPage { files, total })
    }

    /// The count of the files `matching` binds to `f` and the page of them sorted by name, in
    /// two queries sent at once (the server runs reads on several threads).
    async fn sorted_page(
        &self,
        matching: &str,
        params: Vec<(&str, Param)>,
        page: &[(&'static str, Param)],
    ) -> Result<SearchPage> {
        let counted = format!("{matching} RETURN count(f)");
        let sorted = format!(
            "{matching} WITH f ORDER BY f.name SKIP $offset LIMIT $limit RETURN {FILE_FIELDS}"
        );
        let mut page_params = params.clone();
        page_params.extend(page.iter().cloned());
        let (total, reply) = tokio::try_join!(
            self.query(&counted, &params),
            self.query(&sorted, &page_params)
        )?;
        let total = count(total)?;
        let files = reply
            .rows
            .into_iter()
            .map(file_from_row)
            .collect::<Result<_>>()?;
        Ok(SearchPage { files, total })
    }

    async fn neighbourhood_inner(&self, center: GraphCenter, limit: u64) -> Result<Option<Graph>> {
        let mut graph = Graph::default();
        let mut seen = BTreeSet::new();
        match center {
            GraphCenter::File(name) => {
                let Some(own) = self.tags(&name).await? else {
                    return Ok(None);
                };
                let node = GraphNode::file(&name);
                seen.insert(node.id.clone());
                graph.nodes.push(node);
                let own = own
                    .into_iter()
                    .map(|t| (name.clone(), t.tag, t.score))
                    .collect();
                add_edges(&mut graph, &mut seen, own);
                let reply = self
                    .query(
                        "MATCH (c:File {name: $name})-[:TAGGED]->(:Tag)<-[:TAGGED]-(n:File)
                         WHERE n <> c WITH DISTINCT n ORDER BY n.name LIMIT $limit
                         MATCH (c2:File {name: $name})-[:TAGGED]->(t:Tag)<-[r:TAGGED]-(n)
                         RETURN n.name, t.name, r.score ORDER BY n.name, r.score DESC, t.name",
                        &[("name", Param::Str(name)), ("limit", clamp(limit))],
                    )
                    .await?;
                add_edges(&mut graph, &mut seen, edges(reply)?);
            }
            GraphCenter::Tag(tag) => {
                let exists = self
                    .query(
                        "MATCH (t:Tag {name: $tag}) RETURN count(t)",
                        &[("tag", Param::str(&tag))],
                    )
                    .await?;
                if count(exists)? == 0 {
                    return Ok(None);
                }
                let node = GraphNode::tag(&tag);
                seen.insert(node.id.clone());
                graph.nodes.push(node);
                let reply = self
                    .query(
                        "MATCH (:Tag {name: $tag})<-[c:TAGGED]-(f:File)
                         WITH f, c ORDER BY c.score DESC, f.name LIMIT $limit
                         MATCH (f)-[r:TAGGED]->(t:Tag)
                         RETURN f.name, t.name, r.score
                         ORDER BY f.name, CASE WHEN t.name = $tag THEN 0 ELSE 1 END,
                                  r.score DESC, t.name",
                        &[("tag", Param::Str(tag)), ("limit", clamp(limit))],
                    )
                    .await?;
                add_edges(&mut graph, &mut seen, edges(reply)?);
            }
        }
        Ok(Some(graph))
    }

    /// Writes the last record of each name in batches: the records of one kind in one query,
    /// then the tags of the batch in another (each file's only if its hash is still the one
    /// recorded, as [`GraphStore::set_tags`] checks), then prunes unused tags once.
    async fn upsert_tagged_inner(&self, files: Vec<(FileMeta, Vec<Tag>)>) -> Result<()> {
        let last: BTreeMap<String, (FileMeta, Vec<Tag>)> = files
            .into_iter()
            .map(|(meta, tags)| (meta.name.clone(), (meta, tags)))
            .collect();
        let files: Vec<(FileMeta, Vec<Tag>)> = last.into_values().collect();
        for batch in files.chunks(UPSERT_BATCH) {
            for (kind, label) in KIND_LABELS {
                let records: Vec<Param> = batch
                    .iter()
                    .filter(|(meta, _)| meta.kind == kind)
                    .map(|(meta, _)| file_param(meta))
                    .collect();
                if !records.is_empty() {
                    self.query(
                        &format!("UNWIND $files AS x {}", upsert_files(label)),
                        &[("files", Param::List(records))],
                    )
                    .await?;
                }
            }
            let tagged = batch
                .iter()
                .map(|(meta, tags)| {
                    Param::Map(vec![
                        ("name", Param::str(&meta.name)),
                        ("sha", Param::str(&meta.sha256)),
                        ("tags", tags_param(tags.clone())),
                    ])
                })
                .collect();
            self.query(
                "UNWIND $files AS x MATCH (f:File {name: x.name}) WHERE f.sha256 = x.sha
                 SET f.tagged = true
                 WITH f, x UNWIND x.tags AS tag MERGE (t:Tag {name: tag.tag})
                 MERGE (f)-[e:TAGGED]->(t) SET e.score = tag.score",
                &[("files", Param::List(tagged))],
            )
            .await?;
        }
        self.query(PRUNE_TAGS, &[]).await?;
        Ok(())
    }

    async fn set_tags_inner(&self, name: &str, sha256: &str, tags: Vec<Tag>) -> Result<bool> {
        let key = [("name", Param::str(name)), ("sha", Param::str(sha256))];
        let cleared = self
            .query(
                "MATCH (f:File {name: $name}) WHERE f.sha256 = $sha
                 OPTIONAL MATCH (f)-[r:TAGGED]->(:Tag) DELETE r
                 RETURN count(DISTINCT f)",
                &key,
            )
            .await?;
        if count(cleared)? == 0 {
            return Ok(false);
        }
        let mut params = key.to_vec();
        params.push(("tags", tags_param(tags)));
        self.query(
            "MATCH (f:File {name: $name}) WHERE f.sha256 = $sha
             UNWIND $tags AS tag MERGE (t:Tag {name: tag.tag})
             MERGE (f)-[e:TAGGED]->(t) SET e.score = tag.score",
            &params,
        )
        .await?;
        let marked = self
            .query(
                "MATCH (f:File {name: $name}) WHERE f.sha256 = $sha
                 SET f.tagged = true RETURN count(f)",
                &key,
            )
            .await?;
        self.query(PRUNE_TAGS, &[]).await?;
        Ok(count(marked)? > 0)
    }
}

/// Files per query of [`FalkorGraphStore::upsert_tagged`]: each query's text holds them all.
const UPSERT_BATCH: usize = 500;

/// Sets the record of the file of map `x` (merged by name) and its kind `label`, and drops
/// its tags: `x` as [`file_param`] encodes it.
fn upsert_files(label: &str) -> String {
    format!(
        "MERGE (f:File {{name: x.name}})
         SET f.size = x.size, f.sha256 = x.sha, f.kind = x.kind, f.uploaded = x.uploaded,
             f.lname = x.lname, f.trigrams = x.trigrams, f.tagged = false
         WITH f {REMOVE_KIND_LABELS} SET f:{label}
         WITH f OPTIONAL MATCH (f)-[r:TAGGED]->(:Tag) DELETE r"
    )
}

/// A file's record as the map [`upsert_files`] reads.
fn file_param(meta: &FileMeta) -> Param {
    Param::Map(vec![
        ("name", Param::str(&meta.name)),
        ("size", clamp(meta.size)),
        ("sha", Param::str(&meta.sha256)),
        ("kind", Param::str(meta.kind.as_str())),
        ("uploaded", Param::Int(meta.uploaded)),
        ("lname", Param::Str(meta.name.to_ascii_lowercase())),
        ("trigrams", name_trigrams(&meta.name)),
    ])
}

/// `{tag, score}` maps of the distinct tags, each with its best score, as SQLite's
/// `ON CONFLICT` keeps it.
fn tags_param(tags: Vec<Tag>) -> Param {
    let mut best: BTreeMap<String, f32> = BTreeMap::new();
    for tag in tags {
        let score = best.entry(tag.tag).or_insert(tag.score);
        *score = score.max(tag.score);
    }
    Param::List(
        best.into_iter()
            .map(|(tag, score)| {
                Param::Map(vec![
                    ("tag", Param::Str(tag)),
                    ("score", Param::Float(f64::from(score))),
                ])
            })
            .collect(),
    )
}

/// The ids in both sorted lists, sorted.
fn intersect(a: &[i64], b: &[i64]) -> Vec<i64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn edges(reply: Reply) -> Result<Vec<(String, String, f32)>> {
    reply.rows.into_iter().map(edge_from_row).collect()
}

impl GraphStore for FalkorGraphStore {
    fn upsert_file(&self, meta: FileMeta) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.query(
                &format!("WITH $file AS x {}", upsert_files(kind_label(meta.kind))),
                &[("file", file_param(&meta))],
            )
            .await?;
            self.query(PRUNE_TAGS, &[]).await?;
            Ok(())
        })
    }

    fn get_file<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<FileMeta>>> {
        Box::pin(async move {
            let reply = self
                .query(
                    &format!("MATCH (f:File {{name: $name}}) RETURN {FILE_FIELDS}"),
                    &[("name", Param::str(name))],
                )
                .await?;
            reply.rows.into_iter().next().map(file_from_row).transpose()
        })
    }

    fn remove_file<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let reply = self
                .query(
                    "MATCH (f:File {name: $name}) DETACH DELETE f",
                    &[("name", Param::str(name))],
                )
                .await?;
            self.query(PRUNE_TAGS, &[]).await?;
            Ok(reply.stat("Nodes deleted") > 0)
        })
    }

    fn set_tags<'a>(
        &'a self,
        name: &'a str,
        sha256: &'a str,
        tags: Vec<Tag>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.set_tags_inner(name, sha256, tags))
    }

    fn upsert_tagged(&self, files: Vec<(FileMeta, Vec<Tag>)>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.upsert_tagged_inner(files))
    }

    fn tags_of<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<Tag>>>> {
        Box::pin(self.tags(name))
    }

    fn search<'a>(&'a self, query: &'a SearchQuery) -> BoxFuture<'a, Result<SearchPage>> {
        Box::pin(self.search_inner(query))
    }

    fn neighbourhood(
        &self,
        center: GraphCenter,
        limit: u64,
    ) -> BoxFuture<'_, Result<Option<Graph>>> {
        Box::pin(self.neighbourhood_inner(center, limit))
    }

    fn untagged(&self, limit: u64) -> BoxFuture<'_, Result<Vec<FileMeta>>> {
        Box::pin(async move {
            let reply = self
                .query(
                    &format!(
                        "MATCH (f:File) WHERE f.tagged = false
                         RETURN {FILE_FIELDS} ORDER BY f.uploaded, f.name LIMIT $limit"
                    ),
                    &[("limit", clamp(limit))],
                )
                .await?;
            reply.rows.into_iter().map(file_from_row).collect()
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<(u64, u64)>> {
        Box::pin(async move {
            let reply = self
                .query(
                    "OPTIONAL MATCH (f:File) WITH count(f) AS files
                     OPTIONAL MATCH (t:Tag) RETURN files, count(t)",
                    &[],
                )
                .await?;
            let row = reply
                .rows
                .into_iter()
                .next()
                .ok_or_else(|| bad_reply("no row"))?;
            let [files, tags] = cells(row)?;
            Ok((int(files)?.unsigned_abs(), int(tags)?.unsigned_abs()))
        })
    }

    fn names(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let reply = self.query("MATCH (f:File) RETURN f.name", &[]).await?;
            reply
                .rows
                .into_iter()
                .map(|row| {
                    let [name] = cells(row)?;
                    text(name)
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_escaped_literals() {
        let text = parameterised(
            "RETURN $s",
            &[
                ("s", Param::str("a\"b\\c $x'}")),
                ("n", Param::Int(-3)),
                ("f", Param::Float(1e-7)),
                (
                    "l",
                    Param::List(vec![Param::Map(vec![("tag", Param::str("x"))])]),
                ),
            ],
        )
        .unwrap();
        assert_eq!(
            text,
            "CYPHER s=\"a\\\"b\\\\c $x'}\" n=-3 f=1e-7 l=[{tag:\"x\"}] RETURN $s"
        );
        assert!(matches!(
            parameterised("RETURN 1", &[("s", Param::str("a\0b"))]),
            Err(Error::Unavailable(_))
        ));
    }

    #[test]
    fn trigrams_are_distinct_character_windows_in_hex() {
        let plain = |text: &str| -> Vec<String> {
            trigrams(text)
                .into_iter()
                .map(|t| String::from_utf8(hex::decode(t).unwrap()).unwrap())
                .collect()
        };
        assert_eq!(plain("abcabc"), ["abc", "bca", "cab"]);
        assert_eq!(
            plain("报告书.TXT"),
            ["报告书", "告书.", "书.T", ".TX", "TXT"]
        );
        assert_eq!(trigrams(" de"), ["206465"]);
        assert!(trigrams("ab").is_empty());
        assert_eq!(
            name_trigrams("A-b"),
            Param::List(vec![Param::str("612d62")])
        );
        let long = "abcdefghijklmnopqrstuvwxyz";
        let picked = query_trigrams(long);
        assert_eq!(picked.len(), TRIGRAM_PARAMS.len());
        assert_eq!(picked[0], hex::encode("abc"));
        assert!(trigrams(long).starts_with(&picked[..1]));
        assert!(picked.iter().all(|t| trigrams(long).contains(t)));
        assert_eq!(query_trigrams("abcd"), trigrams("abcd"));
    }

    #[test]
    fn intersects_sorted_lists() {
        assert_eq!(intersect(&[1, 3, 5, 7, 9], &[2, 3, 4, 9, 10]), [3, 9]);
        assert!(intersect(&[1, 2], &[]).is_empty());
        assert!(intersect(&[1, 2], &[3, 4]).is_empty());
    }

    #[test]
    fn every_kind_has_its_label() {
        for kind in FileKind::ALL {
            let label = kind_label(kind);
            assert!(REMOVE_KIND_LABELS.contains(&format!(":{label}")), "{label}");
            assert!(
                label.ends_with(&format!("{kind:?}")),
                "{label} for {kind:?}"
            );
        }
    }

    #[test]
    fn replies_parse_rows_and_statistics() {
        let reply = Reply::parse(Value::Array(vec![
            Value::Array(vec![Value::BulkString(b"x".to_vec())]),
            Value::Array(vec![Value::Array(vec![Value::Int(7)])]),
            Value::Array(vec![Value::BulkString(b"Nodes deleted: 2".to_vec())]),
        ]))
        .unwrap();
        assert_eq!(reply.stat("Nodes deleted"), 2);
        assert_eq!(reply.stat("Nodes created"), 0);
        assert_eq!(count(reply).unwrap(), 7);
        let list = |s: &str| int_list(Value::BulkString(s.as_bytes().to_vec()));
        assert_eq!(list("[1, -2, 30]").unwrap(), [1, -2, 30]);
        assert!(list("[]").unwrap().is_empty());
        assert!(list("1, 2").is_err());
        assert!(list("[1, x]").is_err());
        assert!(Reply::parse(Value::Int(1)).is_err());
    }
}
