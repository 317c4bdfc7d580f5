//! Local taggers: content sniffing and one tagger per kind.
//!
//! Tags are plain keywords (`graph`, `文件`) or `facet:value` facts (`format:png`,
//! `colour:red`, `artist:Nobody`); keyword-like tags are limited to [`TaggerConfig::top_n`].

pub mod audio;
pub mod image;
pub mod pdf;
pub mod text;
pub mod video;

use std::io::{Read, Seek, SeekFrom};

use crate::{Error, FileKind, Result, Tag};

/// Tuning shared by the taggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaggerConfig {
    /// How many keywords (or colours) a tagger emits at most.
    pub top_n: usize,
    /// Files larger than this are tagged from their metadata only (kind and format).
    pub max_bytes: u64,
}

impl Default for TaggerConfig {
    fn default() -> Self {
        Self {
            top_n: 10,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Detects a file's kind from its first bytes (magic numbers), falling back to UTF-8 text.
pub fn detect_kind(head: &[u8]) -> FileKind {
    if let Some(found) = infer::get(head) {
        return match found.matcher_type() {
            infer::MatcherType::Image => FileKind::Image,
            infer::MatcherType::Audio => FileKind::Audio,
            infer::MatcherType::Video => FileKind::Video,
            infer::MatcherType::Text => FileKind::Text,
            _ if found.mime_type() == "application/pdf" => FileKind::Pdf,
            _ => FileKind::Other,
        };
    }
    let utf8 = match std::str::from_utf8(head) {
        Ok(_) => true,
        // A multi-byte character cut off by the end of the head is still text.
        Err(e) => e.error_len().is_none(),
    };
    if !head.is_empty() && utf8 && !head.contains(&0) {
        FileKind::Text
    } else {
        FileKind::Other
    }
}

/// Tags the content of `reader`, a file of kind `kind`.
pub fn tag_file<R: Read + Seek>(
    reader: &mut R,
    kind: FileKind,
    config: &TaggerConfig,
) -> Result<Vec<Tag>> {
    let size = reader
        .seek(SeekFrom::End(0))
        .and_then(|size| reader.rewind().map(|()| size))
        .map_err(|e| Error::Tagging(format!("reading the file size: {e}")))?;
    let mut head = [0u8; 512];
    let head_len = read_up_to(reader, &mut head)?;
    reader
        .rewind()
        .map_err(|e| Error::Tagging(format!("rewinding: {e}")))?;
    let format =
        infer::get(&head[..head_len]).map(|t| Tag::new(format!("format:{}", t.extension()), 1.0));
    let mut tags: Vec<Tag> = format.into_iter().collect();
    if size > config.max_bytes {
        return Ok(tags);
    }
    let read_all = |reader: &mut R| -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Tagging(format!("reading the file: {e}")))?;
        Ok(bytes)
    };
    match kind {
        FileKind::Text => {
            let bytes = read_all(reader)?;
            tags.extend(text::keywords(
                &String::from_utf8_lossy(&bytes),
                config.top_n,
            ));
        }
        FileKind::Pdf => tags.extend(pdf::tag(&read_all(reader)?, config.top_n)?),
        FileKind::Image => tags = image::tag(&read_all(reader)?, config.top_n)?,
        FileKind::Audio => tags.extend(audio::tag(reader)?),
        FileKind::Video => tags.extend(video::tag(reader)?),
        FileKind::Other => {}
    }
    dedup(&mut tags);
    Ok(tags)
}

/// Keeps the first occurrence of each tag text.
fn dedup(tags: &mut Vec<Tag>) {
    let mut seen = std::collections::HashSet::new();
    tags.retain(|t| seen.insert(t.tag.clone()));
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Tagging(format!("reading the file: {e}"))),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn detects_kinds_from_content_not_names() {
        assert_eq!(detect_kind(b"%PDF-1.7\n%..."), FileKind::Pdf);
        assert_eq!(
            detect_kind(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            FileKind::Image
        );
        assert_eq!(detect_kind(b"RIFF\x24\0\0\0WAVEfmt "), FileKind::Audio);
        assert_eq!(
            detect_kind(b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom"),
            FileKind::Video
        );
        assert_eq!(detect_kind("plain words 中文".as_bytes()), FileKind::Text);
        assert_eq!(detect_kind(&"中".as_bytes()[..2]), FileKind::Text);
        assert_eq!(detect_kind(b"bin\0ary"), FileKind::Other);
        assert_eq!(detect_kind(b"\xff\xfe\xfd"), FileKind::Other);
        assert_eq!(detect_kind(b""), FileKind::Other);
    }

    #[test]
    fn oversize_files_get_only_their_format() {
        let config = TaggerConfig {
            top_n: 5,
            max_bytes: 4,
        };
        let tags = tag_file(&mut Cursor::new(b"%PDF-1.7 broken"), FileKind::Pdf, &config).unwrap();
        assert_eq!(tags, vec![Tag::new("format:pdf", 1.0)]);
    }
}
