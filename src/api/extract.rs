//! Extractors whose rejections are [`ApiError`]s, so malformed requests get the same
//! JSON error shape as everything else, never axum's plain-text rejections.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use crate::job::JobId;

/// Largest request body accepted, in bytes: room for two maximal prompts and
/// every workflow parameter.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Oversized bodies up to this size are read and dropped before the 413, so the
/// client gets the answer rather than a reset connection.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// A JSON request body: `Content-Type: application/json` (415 otherwise), at most
/// [`MAX_BODY_BYTES`] (413 otherwise), valid JSON (400 otherwise).
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        json_body(req, MAX_BODY_BYTES, state).await.map(JsonBody)
    }
}

/// Longest workflow body (`POST /api/workflows`, `/api/workflows/convert`): UI
/// files of the largest real workflows are a few hundred KiB.
pub const MAX_WORKFLOW_BYTES: usize = 4 << 20;

/// A JSON body as [`JsonBody`], up to [`MAX_WORKFLOW_BYTES`]: a workflow.
pub struct WorkflowBody(pub Value);

impl FromRequest<AppState> for WorkflowBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        json_body(req, MAX_WORKFLOW_BYTES, state)
            .await
            .map(WorkflowBody)
    }
}

/// A JSON body of at most `limit` bytes.
async fn json_body(req: Request, limit: usize, state: &AppState) -> Result<Value, ApiError> {
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            if ctype.is_empty() {
                "Content-Type must be application/json (none was given)".to_owned()
            } else {
                format!("Content-Type must be application/json, not {ctype:?}")
            },
        ));
    }
    let bytes = read_body(req, limit, state.body_timeout).await?;
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid-json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    Ok(value)
}

/// The body of a request that may carry none: empty is `{}`, anything else
/// must be a JSON object (what a cancel or a pause sends, so no web form can).
pub async fn optional_object(
    req: Request,
    timeout: Duration,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let body = read_body(req, MAX_BODY_BYTES, timeout).await?;
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid-json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request(
            "invalid-body",
            "request body must be a JSON object ({} will do) or empty",
        )),
    }
}

/// Reads a request body of at most `limit` bytes (413 beyond) within `timeout`
/// (408 beyond: a client trickling its body must not hold a connection for ever).
pub async fn read_body(req: Request, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("request body must be at most {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let read = async move {
        if let Some(n) = declared.filter(|n| *n > limit) {
            // Read (and drop) a moderately oversized body before answering: a client
            // still sending it would otherwise see the connection reset instead of
            // our 413. Beyond DRAIN_LIMIT, answer at once and let the connection go.
            if n <= DRAIN_LIMIT {
                let _ = axum::body::to_bytes(req.into_body(), DRAIN_LIMIT).await;
            }
            return Err(too_large());
        }
        axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| too_large())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )),
    }
}

/// A job id from the path: 400 `invalid-job-id` when malformed (so it can never
/// reach a store key), before any lookup.
pub struct JobIdPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let invalid = |m: String| ApiError::bad_request("invalid-job-id", m).with_field("job_id");
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| invalid(format!("malformed job id in the path: {e}")))?;
        JobId::parse(&raw)
            .map(JobIdPath)
            .map_err(|e| invalid(e.to_string()))
    }
}

/// Path parameters, with a JSON 400 when they do not decode (invalid
/// percent-encoding or UTF-8), never axum's plain-text rejection.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|e| ApiError::bad_request("invalid-path", e.body_text()))
    }
}

/// Query parameters, with a JSON 400 naming the problem when they do not parse.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| QueryParams(t))
            .map_err(|e| ApiError::bad_request("invalid-query", e.body_text()))
    }
}
