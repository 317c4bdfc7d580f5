//! The browser UI: the files of `disgrafs/web/`, embedded into the binary at build time and
//! served at `/` (the page) and `/ui/{asset}` (script modules, style sheet, icon).
//!
//! Every response carries a strict Content-Security-Policy (only this origin's scripts,
//! styles, images and API; no inline code, no eval, Trusted Types enforced so that no script
//! can assign a string to `innerHTML`), `Cache-Control: no-cache` and a strong ETag, so that
//! browsers revalidate with `If-None-Match` and get `304` until the binary changes.

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::http_util::none_match;

/// The policy of every UI response.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'; \
     trusted-types 'none'";

/// One embedded file.
#[derive(Debug)]
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// FNV-1a of the body, the entity tag.
    hash: u64,
}

impl Asset {
    const fn new(name: &'static str, content_type: &'static str, body: &'static str) -> Self {
        Self {
            name,
            content_type,
            body,
            hash: fnv1a(body.as_bytes()),
        }
    }
}

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const JS: &str = "text/javascript; charset=utf-8";

static PAGE: Asset = Asset::new(
    "index.html",
    "text/html; charset=utf-8",
    include_str!("../../web/index.html"),
);

static ASSETS: [Asset; 4] = [
    Asset::new("app.js", JS, include_str!("../../web/app.js")),
    Asset::new("graph.js", JS, include_str!("../../web/graph.js")),
    Asset::new(
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../web/app.css"),
    ),
    Asset::new(
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../web/favicon.svg"),
    ),
];

/// `GET /`: the page.
pub(crate) async fn page(headers: HeaderMap) -> Response {
    serve(&PAGE, &headers)
}

/// `GET /ui/{asset}`: a script, style sheet or image of the page.
pub(crate) async fn asset(
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::bad_request(format!("bad asset name: {e}")))?;
    let asset = ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no such asset: {name}")))?;
    Ok(serve(asset, &headers))
}

fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    let revalidated = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| none_match(v, &etag));
    if revalidated {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, asset.body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_only_this_origin_and_no_inline_code() {
        let directives: Vec<(&str, Vec<&str>)> = CONTENT_SECURITY_POLICY
            .split(';')
            .map(|directive| {
                let mut words = directive.split_whitespace();
                (words.next().unwrap_or_default(), words.collect())
            })
            .collect();
        let sources = |name: &str| {
            directives
                .iter()
                .find(|(directive, _)| *directive == name)
                .map(|(_, sources)| sources.clone())
        };
        assert_eq!(sources("default-src"), Some(vec!["'none'"]));
        for name in ["script-src", "style-src", "img-src", "connect-src"] {
            assert_eq!(sources(name), Some(vec!["'self'"]), "{name}");
        }
        assert_eq!(sources("frame-ancestors"), Some(vec!["'none'"]));
        assert_eq!(sources("require-trusted-types-for"), Some(vec!["'script'"]));
        for (name, values) in &directives {
            for value in values {
                assert!(
                    value.starts_with('\'') && value.ends_with('\''),
                    "{name} allows {value}, not a keyword"
                );
                assert!(!value.contains("unsafe"), "{name} allows {value}");
            }
        }
    }

    #[test]
    fn assets_have_distinct_names_and_entity_tags() {
        let mut names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        let mut hashes: Vec<u64> = ASSETS.iter().chain([&PAGE]).map(|a| a.hash).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), ASSETS.len() + 1);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
