//! PDF tagging: keywords from the text of every page, plus the page count.

use crate::tagger::text;
use crate::{Error, Result, Tag};

/// Upper bound on the decompressed content of one page, against decompression bombs.
const MAX_PAGE_CONTENT_BYTES: usize = 64 * 1024 * 1024;

/// Extracts the text of all pages of the PDF in `bytes` (pages that fail to decode are
/// skipped).
pub fn extract_text(bytes: &[u8]) -> Result<(String, u32)> {
    let doc = lopdf::Document::load_mem(bytes)
        .map_err(|e| Error::Tagging(format!("parsing the PDF: {e}")))?;
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    let mut text = String::new();
    for chunk in doc
        .extract_text_chunks_with_limit(&pages, MAX_PAGE_CONTENT_BYTES)
        .into_iter()
        .flatten()
    {
        text.push_str(&chunk);
        text.push('\n');
    }
    Ok((text, pages.len() as u32))
}

/// Tags a PDF with `pages:N` and the `top_n` keywords of its text.
pub fn tag(bytes: &[u8], top_n: usize) -> Result<Vec<Tag>> {
    let (text, pages) = extract_text(bytes)?;
    let mut tags = vec![Tag::new(format!("pages:{pages}"), 1.0)];
    tags.extend(text::keywords(&text, top_n));
    Ok(tags)
}

#[cfg(test)]
pub(crate) mod tests {
    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};

    use super::*;

    /// A PDF with one page per entry of `pages`, each showing that text in Helvetica.
    pub(crate) fn make_pdf(pages: &[&str]) -> Vec<u8> {
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font",
            "Subtype" => "Type1",
            "BaseFont" => "Helvetica",
        });
        let resources_id = doc.add_object(dictionary! {
            "Font" => dictionary! { "F1" => font_id },
        });
        let mut kids = Vec::new();
        for page_text in pages {
            let content = Content {
                operations: vec![
                    Operation::new("BT", vec![]),
                    Operation::new("Tf", vec!["F1".into(), 12.into()]),
                    Operation::new("Td", vec![72.into(), 700.into()]),
                    Operation::new("Tj", vec![Object::string_literal(*page_text)]),
                    Operation::new("ET", vec![]),
                ],
            };
            let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
            let page_id = doc.add_object(dictionary! {
                "Type" => "Page",
                "Parent" => pages_id,
                "Contents" => content_id,
            });
            kids.push(Object::from(page_id));
        }
        let count = kids.len() as i64;
        doc.objects.insert(
            pages_id,
            Object::Dictionary(dictionary! {
                "Type" => "Pages",
                "Kids" => kids,
                "Count" => count,
                "Resources" => resources_id,
                "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
            }),
        );
        let catalog_id = doc.add_object(dictionary! {
            "Type" => "Catalog",
            "Pages" => pages_id,
        });
        doc.trailer.set("Root", catalog_id);
        let mut bytes = Vec::new();
        doc.save_to(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn tags_words_from_every_page() {
        let bytes = make_pdf(&[
            "Introduction about kernels and kernels",
            "middle page filler text",
            "Conclusion mentions zebras zebras zebras",
        ]);
        assert_eq!(crate::tagger::detect_kind(&bytes), crate::FileKind::Pdf);
        let (text, pages) = extract_text(&bytes).unwrap();
        assert_eq!(pages, 3);
        assert!(
            text.contains("Introduction") && text.contains("Conclusion"),
            "{text:?}"
        );
        let tags = tag(&bytes, 3).unwrap();
        let words: Vec<&str> = tags.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(words, vec!["pages:3", "zebras", "kernels", "introduction"]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let err = tag(b"%PDF-1.4 this is not really a pdf", 5).unwrap_err();
        assert!(err.to_string().contains("parsing the PDF"), "{err}");
    }
}
