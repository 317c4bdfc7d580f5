//! One conformance suite for every `GraphStore`: each check runs against SQLite (in memory)
//! and against a real FalkorDB server that the test starts on 127.0.0.1 and kills at the end,
//! so the backends cannot drift apart.

use disgrafs_core::{
    FalkorGraphStore, FileKind, FileMeta, GraphCenter, GraphStore, SearchPage, SearchQuery,
    SqliteGraphStore, Tag,
};
use disgrafs_testsupport::RedisServer;

fn meta(name: &str, kind: FileKind, sha: &str, uploaded: i64) -> FileMeta {
    FileMeta {
        name: name.to_owned(),
        size: 3,
        sha256: sha.to_owned(),
        kind,
        uploaded,
    }
}

fn names(page: &SearchPage) -> Vec<&str> {
    page.files.iter().map(|f| f.name.as_str()).collect()
}

async fn fill(store: &dyn GraphStore, files: &[(&str, FileKind, &[&str])]) {
    for (name, kind, tags) in files {
        store.upsert_file(meta(name, *kind, "h", 1)).await.unwrap();
        let tags = tags.iter().map(|t| Tag::new(*t, 0.5)).collect();
        assert!(store.set_tags(name, "h", tags).await.unwrap());
    }
}

fn query(
    tags: &[&str],
    name: Option<&str>,
    kind: Option<FileKind>,
    offset: u64,
    limit: u64,
) -> SearchQuery {
    SearchQuery {
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        name: name.map(str::to_owned),
        kind,
        offset,
        limit,
    }
}

async fn search_intersects_tags_and_filters_name_kind_with_pages(store: &dyn GraphStore) {
    fill(
        store,
        &[
            ("a-report.pdf", FileKind::Pdf, &["rust", "graph"]),
            ("b-notes.txt", FileKind::Text, &["rust"]),
            ("c-Report.txt", FileKind::Text, &["rust", "graph", "ebpf"]),
            ("d.png", FileKind::Image, &["graph"]),
        ],
    )
    .await;
    let page = store
        .search(&query(&["rust", "graph"], None, None, 0, 10))
        .await
        .unwrap();
    assert_eq!(
        (names(&page), page.total),
        (vec!["a-report.pdf", "c-Report.txt"], 2)
    );
    let page = store
        .search(&query(&["rust", "rust"], None, None, 0, 10))
        .await
        .unwrap();
    assert_eq!(
        page.total, 3,
        "duplicate tags must not change the intersection"
    );
    let page = store
        .search(&query(&[], Some("REPORT"), None, 0, 10))
        .await
        .unwrap();
    assert_eq!(names(&page), vec!["a-report.pdf", "c-Report.txt"]);
    let page = store
        .search(&query(&["graph"], None, Some(FileKind::Text), 0, 10))
        .await
        .unwrap();
    assert_eq!(names(&page), vec!["c-Report.txt"]);
    let page = store
        .search(&query(&["graph"], Some("a-"), Some(FileKind::Pdf), 0, 10))
        .await
        .unwrap();
    assert_eq!(names(&page), vec!["a-report.pdf"]);
    let page = store.search(&query(&[], None, None, 1, 2)).await.unwrap();
    assert_eq!(
        (names(&page), page.total),
        (vec!["b-notes.txt", "c-Report.txt"], 4)
    );
    let page = store
        .search(&query(&["nothing"], None, None, 0, 10))
        .await
        .unwrap();
    assert_eq!((page.files.len(), page.total), (0, 0));
    let page = store.search(&query(&[], None, None, 9, 10)).await.unwrap();
    assert_eq!((page.files.len(), page.total), (0, 4), "past the end");
    assert_eq!(page.files, vec![]);
    let full = store
        .search(&query(&["ebpf"], None, None, 0, 1))
        .await
        .unwrap();
    assert_eq!(
        full.files,
        vec![meta("c-Report.txt", FileKind::Text, "h", 1)]
    );
}

/// Every way a search can be answered (by candidates or by a walk in name order, with the
/// name index or a scan) gives the page and total of a reference filter over generated files:
/// tags as a set intersection, kinds, ASCII case-insensitive name substrings (so `ärger` does
/// not match `ÄRGER`), offsets and limits.
async fn search_matches_a_reference_on_generated_files(store: &dyn GraphStore) {
    const PREFIXES: [&str; 4] = ["Report", "notes", "ÄRGER", "data"];
    const KINDS: [FileKind; 3] = [FileKind::Text, FileKind::Pdf, FileKind::Image];
    let mut files: Vec<(String, FileKind, Vec<String>)> = Vec::new();
    for i in 0..120u32 {
        let name = format!(
            "{}-{i:03}.{}",
            PREFIXES[i as usize % 4],
            ["txt", "pdf"][i as usize % 2]
        );
        let kind = KINDS[i as usize % 3];
        let mut tags = vec![format!("t{}", i % 7)];
        if i % 10 != 0 {
            tags.push("common".to_owned());
        }
        if i % 29 == 0 {
            tags.push("rare".to_owned());
        }
        store.upsert_file(meta(&name, kind, "h", 1)).await.unwrap();
        let list = tags.iter().map(|t| Tag::new(t.clone(), 0.5)).collect();
        assert!(store.set_tags(&name, "h", list).await.unwrap());
        files.push((name, kind, tags));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let tag_sets: [&[&str]; 6] = [
        &[],
        &["common"],
        &["common", "t3"],
        &["rare"],
        &["t1", "t2"],
        &["common", "t0", "rare"],
    ];
    let name_queries = [
        None,
        Some("rep"),
        Some("REPORT-0"),
        Some("00"),
        Some("ärger"),
        Some("Ärger-01"),
        Some("1.p"),
        Some("-"),
    ];
    for tags in tag_sets {
        for name in name_queries {
            for kind in [None, Some(FileKind::Pdf)] {
                for (offset, limit) in [(0, 1), (0, 7), (5, 7), (0, 200), (50, 3)] {
                    let matching: Vec<&str> = files
                        .iter()
                        .filter(|(n, k, t)| {
                            tags.iter().all(|tag| t.iter().any(|x| x == tag))
                                && kind.is_none_or(|kind| *k == kind)
                                && name.is_none_or(|q| {
                                    n.to_ascii_lowercase().contains(&q.to_ascii_lowercase())
                                })
                        })
                        .map(|(n, _, _)| n.as_str())
                        .collect();
                    let page = store
                        .search(&query(tags, name, kind, offset, limit))
                        .await
                        .unwrap();
                    let expected: Vec<&str> = matching
                        .iter()
                        .skip(offset as usize)
                        .take(limit as usize)
                        .copied()
                        .collect();
                    assert_eq!(
                        (names(&page), page.total),
                        (expected, matching.len() as u64),
                        "tags {tags:?}, name {name:?}, kind {kind:?}, offset {offset}, limit {limit}"
                    );
                }
            }
        }
    }
}

async fn replacing_content_drops_stale_tags_and_rejects_late_tag_writes(store: &dyn GraphStore) {
    fill(store, &[("a.txt", FileKind::Text, &["old"])]).await;
    store
        .upsert_file(meta("a.txt", FileKind::Text, "new", 2))
        .await
        .unwrap();
    assert_eq!(store.tags_of("a.txt").await.unwrap(), Some(vec![]));
    assert_eq!(store.untagged(10).await.unwrap().len(), 1);
    let late = vec![Tag::new("stale", 1.0)];
    assert!(!store.set_tags("a.txt", "h", late).await.unwrap());
    assert!(!store.set_tags("missing", "h", vec![]).await.unwrap());
    assert!(
        store
            .set_tags("a.txt", "new", vec![Tag::new("fresh", 0.7)])
            .await
            .unwrap()
    );
    assert_eq!(
        store.tags_of("a.txt").await.unwrap(),
        Some(vec![Tag::new("fresh", 0.7)])
    );
    assert!(store.untagged(10).await.unwrap().is_empty());
    assert_eq!(
        store.counts().await.unwrap(),
        (1, 1),
        "the orphaned tag 'old' is pruned"
    );
    assert_eq!(
        store.get_file("a.txt").await.unwrap(),
        Some(meta("a.txt", FileKind::Text, "new", 2))
    );
    assert!(store.remove_file("a.txt").await.unwrap());
    assert!(!store.remove_file("a.txt").await.unwrap());
    assert_eq!(store.tags_of("a.txt").await.unwrap(), None);
    assert_eq!(store.get_file("a.txt").await.unwrap(), None);
    assert_eq!(store.counts().await.unwrap(), (0, 0));
}

async fn neighbourhood_around_file_and_tag(store: &dyn GraphStore) {
    fill(
        store,
        &[
            ("a", FileKind::Text, &["x", "y"]),
            ("b", FileKind::Text, &["y", "z"]),
            ("c", FileKind::Text, &["z"]),
        ],
    )
    .await;
    let graph = store
        .neighbourhood(GraphCenter::File("a".into()), 10)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["file:a", "tag:x", "tag:y", "file:b"]);
    let edges: Vec<(&str, &str)> = graph
        .edges
        .iter()
        .map(|e| (e.source.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        edges,
        vec![
            ("file:a", "tag:x"),
            ("file:a", "tag:y"),
            ("file:b", "tag:y")
        ]
    );
    let graph = store
        .neighbourhood(GraphCenter::Tag("z".into()), 1)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["tag:z", "file:b", "tag:y"],
        "limit 1 keeps the first file"
    );
    let graph = store
        .neighbourhood(GraphCenter::File("c".into()), 10)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["file:c", "tag:z", "file:b"]);
    assert!(
        store
            .neighbourhood(GraphCenter::Tag("none".into()), 5)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .neighbourhood(GraphCenter::File("none".into()), 5)
            .await
            .unwrap()
            .is_none()
    );
}

/// Strings that break naive query building are stored and found verbatim.
async fn awkward_strings_round_trip_verbatim(store: &dyn GraphStore) {
    let name = r#"q"uote's \back\\slash $x {y} `z` "}) DETACH DELETE (n) // 报告.txt"#;
    let tags = [
        r#"say "hi""#,
        r"C:\path\",
        "multi\nline\ttab",
        "$param",
        "' OR 1=1 --",
        "中文标签",
    ];
    fill(store, &[("victim", FileKind::Other, &["keep"])]).await;
    store
        .upsert_file(meta(name, FileKind::Text, "s\"h", 5))
        .await
        .unwrap();
    let list = tags.iter().map(|t| Tag::new(*t, 0.25)).collect();
    assert!(store.set_tags(name, "s\"h", list).await.unwrap());
    assert_eq!(
        store.get_file(name).await.unwrap(),
        Some(meta(name, FileKind::Text, "s\"h", 5))
    );
    let mut expected: Vec<Tag> = tags.iter().map(|t| Tag::new(*t, 0.25)).collect();
    expected.sort_by(|a, b| a.tag.cmp(&b.tag));
    assert_eq!(store.tags_of(name).await.unwrap(), Some(expected));
    for tag in tags {
        let page = store
            .search(&query(&[tag], None, None, 0, 10))
            .await
            .unwrap();
        assert_eq!(names(&page), vec![name], "search by {tag:?}");
    }
    let page = store
        .search(&query(&[], Some("DETACH DELETE"), None, 0, 10))
        .await
        .unwrap();
    assert_eq!(names(&page), vec![name]);
    assert_eq!(
        store.counts().await.unwrap(),
        (2, 7),
        "nothing else was touched"
    );
}

/// Scores keep their exact value, order tags (best first, then by text), and duplicates keep
/// the best score.
async fn scores_order_tags_and_duplicates_keep_the_best(store: &dyn GraphStore) {
    store
        .upsert_file(meta("s", FileKind::Text, "h", 1))
        .await
        .unwrap();
    let tags = vec![
        Tag::new("b", 0.1),
        Tag::new("a", 0.1),
        Tag::new("c", 1.0 / 3.0),
        Tag::new("tiny", 1e-7),
        Tag::new("c", 0.2),
        Tag::new("top", 1.0),
    ];
    assert!(store.set_tags("s", "h", tags).await.unwrap());
    assert_eq!(
        store.tags_of("s").await.unwrap(),
        Some(vec![
            Tag::new("top", 1.0),
            Tag::new("c", 1.0 / 3.0),
            Tag::new("a", 0.1),
            Tag::new("b", 0.1),
            Tag::new("tiny", 1e-7),
        ])
    );
    assert!(
        store.set_tags("s", "h", vec![]).await.unwrap(),
        "retagging is idempotent"
    );
    assert_eq!(store.tags_of("s").await.unwrap(), Some(vec![]));
    assert_eq!(store.counts().await.unwrap(), (1, 0));
}

async fn untagged_lists_oldest_first_with_a_limit_and_names_lists_all(store: &dyn GraphStore) {
    store
        .upsert_file(meta("late", FileKind::Text, "h", 30))
        .await
        .unwrap();
    store
        .upsert_file(meta("b-early", FileKind::Text, "h", 10))
        .await
        .unwrap();
    store
        .upsert_file(meta("a-early", FileKind::Text, "h", 10))
        .await
        .unwrap();
    store
        .upsert_file(meta("done", FileKind::Text, "h", 1))
        .await
        .unwrap();
    assert!(
        store
            .set_tags("done", "h", vec![Tag::new("t", 1.0)])
            .await
            .unwrap()
    );
    let untagged: Vec<String> = store
        .untagged(2)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(untagged, vec!["a-early", "b-early"]);
    assert_eq!(store.untagged(10).await.unwrap().len(), 3);
    assert_eq!(store.counts().await.unwrap(), (4, 1));
    let mut names = store.names().await.unwrap();
    names.sort();
    assert_eq!(names, ["a-early", "b-early", "done", "late"]);
    assert!(store.remove_file("late").await.unwrap());
    assert_eq!(store.names().await.unwrap().len(), 3);
}

/// A batch write leaves what writing its files one by one would: the last record of a name
/// repeated in the batch, a replaced file's old tags gone (and pruned), duplicate tags at their
/// best score, a file without tags counted as tagged.
async fn upsert_tagged_writes_like_one_by_one(store: &dyn GraphStore) {
    fill(store, &[("old.txt", FileKind::Text, &["stale", "kept"])]).await;
    let tags =
        |list: &[(&str, f32)]| -> Vec<Tag> { list.iter().map(|(t, s)| Tag::new(*t, *s)).collect() };
    let awkward = r#"q"uote \ $x {y} 报告.pdf"#;
    store
        .upsert_tagged(vec![
            (
                meta("old.txt", FileKind::Pdf, "new", 2),
                tags(&[("kept", 0.5), ("fresh", 0.25)]),
            ),
            (meta("a.txt", FileKind::Text, "h1", 3), tags(&[("x", 0.1)])),
            (
                meta(awkward, FileKind::Pdf, "s\"h", 4),
                tags(&[("kept", 0.2), ("say \"hi\"", 0.1), ("kept", 0.9)]),
            ),
            (meta("bare.bin", FileKind::Other, "h", 5), vec![]),
            (
                meta("a.txt", FileKind::Image, "h2", 6),
                tags(&[("fresh", 1.0)]),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.get_file("a.txt").await.unwrap(),
        Some(meta("a.txt", FileKind::Image, "h2", 6))
    );
    assert_eq!(
        store.tags_of("a.txt").await.unwrap(),
        Some(tags(&[("fresh", 1.0)]))
    );
    assert_eq!(
        store.tags_of("old.txt").await.unwrap(),
        Some(tags(&[("kept", 0.5), ("fresh", 0.25)]))
    );
    assert_eq!(
        store.tags_of(awkward).await.unwrap(),
        Some(tags(&[("kept", 0.9), ("say \"hi\"", 0.1)]))
    );
    assert_eq!(store.tags_of("bare.bin").await.unwrap(), Some(vec![]));
    assert!(store.untagged(10).await.unwrap().is_empty());
    assert_eq!(
        store.counts().await.unwrap(),
        (4, 3),
        "'stale' and 'x' are pruned"
    );
    let page = store
        .search(&query(&["kept"], None, Some(FileKind::Pdf), 0, 10))
        .await
        .unwrap();
    assert_eq!(names(&page), vec!["old.txt", awkward]);
    let page = store
        .search(&query(&[], Some("报告"), None, 0, 10))
        .await
        .unwrap();
    assert_eq!(names(&page), vec![awkward]);
    assert!(
        !store.set_tags("old.txt", "h", vec![]).await.unwrap(),
        "the batch recorded the new hash"
    );
    store.upsert_tagged(vec![]).await.unwrap();
    assert_eq!(store.counts().await.unwrap(), (4, 3));
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(&SqliteGraphStore::in_memory().unwrap()).await;
                }
            )*
        }
        mod falkordb {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let server = RedisServer::falkordb().unwrap();
                    let store = FalkorGraphStore::new(&server.url(), "conformance").unwrap();
                    super::$check(&store).await;
                }
            )*
        }
    };
}

/// FalkorDB from the lab's storage image (`lab images build storage`), in a container started
/// through testcontainers.
#[tokio::test]
async fn search_on_falkordb_of_the_lab_storage_image() {
    let Some(server) = RedisServer::falkordb_in_storage_image().unwrap() else {
        return;
    };
    let store = FalkorGraphStore::new(&server.url(), "search").unwrap();
    search_intersects_tags_and_filters_name_kind_with_pages(&store).await;
    let store = FalkorGraphStore::new(&server.url(), "neighbourhood").unwrap();
    neighbourhood_around_file_and_tag(&store).await;
}

conformance!(
    search_intersects_tags_and_filters_name_kind_with_pages,
    search_matches_a_reference_on_generated_files,
    replacing_content_drops_stale_tags_and_rejects_late_tag_writes,
    neighbourhood_around_file_and_tag,
    awkward_strings_round_trip_verbatim,
    scores_order_tags_and_duplicates_keep_the_best,
    untagged_lists_oldest_first_with_a_limit_and_names_lists_all,
    upsert_tagged_writes_like_one_by_one,
);

/// A FalkorDB graph written before names had trigrams and files kind labels is upgraded when
/// the store first connects: searches by name and by kind find its files.
#[tokio::test]
async fn falkordb_graph_of_the_first_layout_is_upgraded() {
    let server = RedisServer::falkordb().unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: redis::Value = redis::cmd("GRAPH.QUERY")
        .arg("old")
        .arg(
            "CREATE (:File {name: 'Old-Report.pdf', lname: 'old-report.pdf', size: 3, \
             sha256: 'h', kind: 'pdf', uploaded: 1, tagged: true})-[:TAGGED {score: 0.5}]->\
             (t:Tag {name: 'old'}), (:File {name: 'notes.txt', lname: 'notes.txt', size: 3, \
             sha256: 'h', kind: 'text', uploaded: 1, tagged: true})-[:TAGGED {score: 0.5}]->(t)",
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = FalkorGraphStore::new(&server.url(), "old").unwrap();
    let page = store
        .search(&query(&[], Some("REPORT"), None, 0, 10))
        .await
        .unwrap();
    assert_eq!(names(&page), ["Old-Report.pdf"]);
    let page = store
        .search(&query(&["old"], None, Some(FileKind::Text), 0, 10))
        .await
        .unwrap();
    assert_eq!(names(&page), ["notes.txt"]);
    let page = store
        .search(&query(&[], None, Some(FileKind::Pdf), 0, 10))
        .await
        .unwrap();
    assert_eq!((names(&page), page.total), (vec!["Old-Report.pdf"], 1));
}
