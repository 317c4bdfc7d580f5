//! Keyword extraction for English and Chinese text: term frequency after stop-word removal,
//! with Chinese segmented by jieba.

use std::collections::HashMap;
use std::sync::OnceLock;

use jieba_rs::Jieba;

use crate::Tag;

/// At most this many bytes of text are analysed.
const MAX_TEXT_BYTES: usize = 1024 * 1024;

const ENGLISH_STOP_WORDS: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "and",
    "any",
    "are",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "can",
    "could",
    "did",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "even",
    "every",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "into",
    "its",
    "itself",
    "just",
    "let",
    "many",
    "may",
    "might",
    "more",
    "most",
    "much",
    "must",
    "myself",
    "nor",
    "not",
    "now",
    "off",
    "once",
    "one",
    "only",
    "other",
    "ought",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "shall",
    "she",
    "should",
    "since",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "too",
    "two",
    "under",
    "until",
    "upon",
    "use",
    "used",
    "using",
    "very",
    "was",
    "way",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "within",
    "without",
    "would",
    "yet",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

const CHINESE_STOP_WORDS: &[&str] = &[
    "一个", "一些", "一种", "一样", "上面", "下面", "不同", "不是", "不会", "不能", "为了", "什么",
    "他们", "以及", "以后", "以前", "但是", "作为", "你们", "例如", "其中", "其他", "具有", "可以",
    "可能", "各种", "同时", "因为", "因此", "如果", "如何", "它们", "对于", "就是", "已经", "并且",
    "应该", "很多", "我们", "所以", "所有", "或者", "所谓", "然后", "然而", "由于", "由此", "的话",
    "目前", "而且", "自己", "虽然", "这个", "这些", "这样", "这种", "通过", "那么", "那些", "那个",
    "需要", "非常", "还是", "进行", "没有", "只是", "之后", "之前", "之间", "此外", "这里", "那里",
    "时候", "现在", "其实", "还有", "主要", "一直", "一定", "就会", "也是", "都是", "只有", "大家",
];

fn jieba() -> &'static Jieba {
    static JIEBA: OnceLock<Jieba> = OnceLock::new();
    JIEBA.get_or_init(Jieba::new)
}

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{f900}'..='\u{faff}')
}

/// Normalises a token into a keyword candidate, or `None` for stop words, numbers and noise.
fn candidate(token: &str) -> Option<String> {
    if token.chars().any(is_cjk) {
        let ok = token.chars().all(is_cjk)
            && token.chars().count() >= 2
            && !CHINESE_STOP_WORDS.contains(&token);
        return ok.then(|| token.to_owned());
    }
    let word = token.to_lowercase();
    let ok = word.chars().count() >= 3
        && word.chars().all(char::is_alphanumeric)
        && word.chars().any(char::is_alphabetic)
        && !ENGLISH_STOP_WORDS.contains(&word.as_str());
    ok.then_some(word)
}

/// The `top_n` most frequent non-stop-word terms of `text`, scored by frequency relative to the
/// most frequent one; ties are broken by first occurrence.
pub fn keywords(text: &str, top_n: usize) -> Vec<Tag> {
    let mut end = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for (position, token) in jieba().cut(&text[..end], true).into_iter().enumerate() {
        if let Some(word) = candidate(token.word) {
            counts.entry(word).or_insert((0, position)).0 += 1;
        }
    }
    let mut ranked: Vec<(String, usize, usize)> = counts
        .into_iter()
        .map(|(word, (count, first))| (word, count, first))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    let max = ranked.first().map_or(1, |r| r.1) as f32;
    ranked
        .into_iter()
        .take(top_n)
        .map(|(word, count, _)| Tag::new(word, count as f32 / max))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};

    use super::*;
    use crate::FileKind;
    use crate::tagger::{TaggerConfig, detect_kind, tag_file};

    fn words(tags: &[Tag]) -> Vec<&str> {
        tags.iter().map(|t| t.tag.as_str()).collect()
    }

    #[test]
    fn english_keywords_skip_stop_words_and_rank_by_frequency() {
        let text = "The graph stores files. Every file in the graph has tags; \
                    tags connect files to the graph. The kernel is fast.";
        let tags = keywords(text, 3);
        assert_eq!(words(&tags), vec!["graph", "files", "tags"]);
        assert_eq!(tags[0].score, 1.0);
        assert!((tags[1].score - 2.0 / 3.0).abs() < 1e-6);
        assert!(
            words(&keywords(text, 20))
                .iter()
                .all(|w| !["the", "every", "is"].contains(w))
        );
    }

    #[test]
    fn chinese_keywords_are_segmented_and_skip_stop_words() {
        let text = "我们的文件系统把文件和标签连成图。文件系统自动给文件打标签，\
                    因为标签可以帮助我们搜索文件。";
        let tags = keywords(text, 4);
        let found = words(&tags);
        assert_eq!(found[0], "文件", "{found:?}");
        assert!(found.contains(&"标签"), "{found:?}");
        assert!(found.contains(&"文件系统"), "{found:?}");
        assert!(
            !found.iter().any(|w| ["我们", "因为", "可以"].contains(w)),
            "{found:?}"
        );
    }

    #[test]
    fn tags_a_generated_text_file() {
        let mut file = tempfile::tempfile().unwrap();
        let body = "eBPF programs accelerate networking. eBPF maps hold state. 网络加速 网络";
        file.write_all(body.as_bytes()).unwrap();
        file.rewind().unwrap();
        assert_eq!(detect_kind(body.as_bytes()), FileKind::Text);
        let config = TaggerConfig {
            top_n: 2,
            ..TaggerConfig::default()
        };
        let tags = tag_file(&mut file, FileKind::Text, &config).unwrap();
        assert_eq!(words(&tags), vec!["ebpf", "网络"]);
    }
}
