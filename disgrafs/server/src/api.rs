//! Routes and handlers.

use std::io::SeekFrom;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use disgrafs_core::tagger::detect_kind;
use disgrafs_core::{FileKind, FileMeta, GraphCenter, SearchQuery, validate_name};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::AppState;
use crate::error::ApiError;
use crate::http_util::{RangeRequest, content_disposition, none_match, parse_range};
use crate::metrics::Gauges;

/// Bytes read from a stored file per chunk of a download body (`ReaderStream`'s default of
/// 4 KiB costs a blocking-pool round trip per 4 KiB).
const DOWNLOAD_CHUNK: usize = 256 * 1024;

/// Default and largest page size of searches and graph neighbourhoods.
const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 1000;

type ApiResult<T> = Result<T, ApiError>;

/// Every route of the API and the UI; the OpenAPI document must list exactly these paths.
pub(crate) fn routes() -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("/", get(crate::web::page)),
        ("/ui/{asset}", get(crate::web::asset)),
        (
            "/api/files/{name}",
            get(download).put(upload).delete(delete),
        ),
        ("/api/files/{name}/tags", get(file_tags)),
        ("/api/search", get(search)),
        ("/api/graph", get(graph)),
        ("/api/openapi.json", get(openapi)),
        ("/healthz", get(healthz)),
        ("/metrics", get(metrics)),
    ]
}

/// Builds the router: [`routes`], JSON errors for unknown routes and methods, request counting.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    state
        .metrics
        .record_request(method.as_str(), &route, response.status().as_u16());
    response
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// Checks the bearer token in constant time.
fn authorize(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs an Authorization: Bearer token",
        ));
    };
    let (a, b) = (given.as_bytes(), state.token.as_bytes());
    let diff = a
        .iter()
        .zip(b)
        .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
    if diff == 0 {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the bearer token is wrong",
        ))
    }
}

/// Extracts and validates the `{name}` path segment.
fn file_name(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    let Path(name) = path.map_err(|e| ApiError::bad_request(format!("bad file name: {e}")))?;
    validate_name(&name)?;
    Ok(name)
}

#[derive(Debug, Serialize)]
struct Uploaded {
    name: String,
    size: u64,
    sha256: String,
    kind: FileKind,
}

async fn upload(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Uploaded>)> {
    authorize(&state, &headers)?;
    let name = file_name(path)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_upload) {
        return Err(disgrafs_core::Error::TooLarge {
            limit: state.max_upload,
        }
        .into());
    }
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .boxed();
    let pending = state.blobs.write(&name, stream, state.max_upload).await?;
    let kind = detect_kind(&pending.written().head);
    let written = {
        let _exclusive = state.consistency.write().await;
        let written = pending.commit().await?;
        let uploaded = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let meta = FileMeta {
            name: name.clone(),
            size: written.size,
            sha256: written.sha256.clone(),
            kind,
            uploaded,
        };
        // Indexing and queueing happen under the lock, so that an outbox entry written on
        // failure is never older than the graph record of a later upload of the same name.
        match crate::outbox::index(&state, meta.clone()).await {
            Ok(()) => state.outbox.remove(&name).await?,
            Err(e) => {
                state.outbox.put(&meta).await?;
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{name} was stored (sha256 {}) but a backend is down; it will be \
                         indexed and tagged when the backend is back: {e}",
                        written.sha256
                    ),
                ));
            }
        }
        written
    };
    state
        .metrics
        .upload_bytes
        .fetch_add(written.size, Ordering::Relaxed);
    Ok((
        StatusCode::CREATED,
        Json(Uploaded {
            name,
            size: written.size,
            sha256: written.sha256,
            kind,
        }),
    ))
}

fn header_value(value: &str) -> ApiResult<HeaderValue> {
    HeaderValue::from_str(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("bad header: {e}"),
        )
    })
}

async fn download(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let name = file_name(path)?;
    let (meta, mut blob) = {
        let _shared = state.consistency.read().await;
        let meta = state
            .graph
            .get_file(&name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no such file: {name}")))?;
        (meta, state.blobs.open(&name).await?)
    };
    let etag = format!("\"{}\"", meta.sha256);
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::ETAG, header_value(&etag)?);
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| none_match(v, &etag))
    {
        return Ok((StatusCode::NOT_MODIFIED, response_headers).into_response());
    }
    let size = blob.size;
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(range) if if_range_ok => parse_range(range, size),
        _ => RangeRequest::Full,
    };
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial { start, end } => {
            response_headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{size}"))?,
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the file has {size} bytes"),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}"))?,
            );
            return Ok(response);
        }
    };
    blob.file
        .seek(SeekFrom::Start(start))
        .await
        .map_err(|e| disgrafs_core::Error::io(format!("seeking in {name}"), e))?;
    response_headers.insert(header::CONTENT_LENGTH, header_value(&len.to_string())?);
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response_headers.insert(
        header::CONTENT_DISPOSITION,
        header_value(&content_disposition(&name))?,
    );
    let metrics_state = Arc::clone(&state);
    let stream =
        ReaderStream::with_capacity(blob.file.take(len), DOWNLOAD_CHUNK).inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                metrics_state
                    .metrics
                    .download_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
    Ok((status, response_headers, Body::from_stream(stream)).into_response())
}

async fn delete(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    authorize(&state, &headers)?;
    let name = file_name(path)?;
    let _exclusive = state.consistency.write().await;
    let had_blob = state.blobs.remove(&name).await?;
    state.outbox.remove(&name).await?;
    let had_record = state.graph.remove_file(&name).await?;
    if had_blob || had_record {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no such file: {name}")))
    }
}

async fn file_tags(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let name = file_name(path)?;
    let tags = state
        .graph
        .tags_of(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no such file: {name}")))?;
    Ok(Json(tags).into_response())
}

fn check_limit(limit: Option<u64>) -> ApiResult<u64> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        limit @ 1..=MAX_LIMIT => Ok(limit),
        _ => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct SearchParams {
    tags: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    offset: Option<u64>,
    limit: Option<u64>,
}

async fn search(
    State(state): State<Arc<AppState>>,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let kind = params
        .kind
        .filter(|k| !k.is_empty())
        .map(|k| k.parse::<FileKind>())
        .transpose()
        .map_err(ApiError::bad_request)?;
    let query = SearchQuery {
        tags: params
            .tags
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        name: params.name.filter(|n| !n.is_empty()),
        kind,
        offset: params.offset.unwrap_or(0),
        limit: check_limit(params.limit)?,
    };
    Ok(Json(state.graph.search(&query).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct GraphParams {
    file: Option<String>,
    tag: Option<String>,
    limit: Option<u64>,
}

async fn graph(
    State(state): State<Arc<AppState>>,
    params: Result<Query<GraphParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let center = match (params.file, params.tag) {
        (Some(file), None) => GraphCenter::File(file),
        (None, Some(tag)) => GraphCenter::Tag(tag),
        _ => return Err(ApiError::bad_request("give exactly one of file= or tag=")),
    };
    let limit = check_limit(params.limit)?;
    let graph = state
        .graph
        .neighbourhood(center.clone(), limit)
        .await?
        .ok_or_else(|| match center {
            GraphCenter::File(name) => ApiError::not_found(format!("no such file: {name}")),
            GraphCenter::Tag(tag) => ApiError::not_found(format!("no such tag: {tag}")),
        })?;
    Ok(Json(graph).into_response())
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi())
}

async fn healthz(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    state.graph.counts().await?;
    state.queue.backlog().await?;
    Ok(Json(json!({ "status": "ok" })))
}

async fn metrics(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let (files, tags) = state.graph.counts().await?;
    let queue = state.queue.backlog().await?;
    let body = state.metrics.render(Gauges { files, tags, queue });
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc = crate::openapi();
        let Some(documented) = doc["paths"].as_object() else {
            panic!("the document has no paths object");
        };
        let mut documented: Vec<&str> = documented.keys().map(String::as_str).collect();
        let mut served: Vec<&str> = routes().into_iter().map(|(path, _)| path).collect();
        documented.sort_unstable();
        served.sort_unstable();
        assert_eq!(documented, served);
    }
}
