//! Jobs: submit (`POST /api/generate`), status (`GET /api/status/{id}`), list
//! (`GET /api/jobs`), cancel (`POST /api/jobs/{id}/cancel`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{JobIdPath, JsonBody, QueryParams};
use crate::clock;
use crate::job::{JobRecord, JobStatus, Output};
use crate::store::{CancelOutcome, ListQuery};
use crate::workflow::request::parse_submission;

/// Jobs per page of `GET /api/jobs` when the request does not say.
pub const DEFAULT_PAGE: usize = 20;
/// Most jobs per page.
pub const MAX_PAGE: usize = 100;

/// `POST /api/generate`: 202 `{"job_id", "status": "queued", ...}`.
pub async fn generate(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let job = parse_submission(&body, &state.workflows)?;
    let record = state.with_timeout(state.store.enqueue(&job)).await?;
    let body = json!({
        "job_id": record.id,
        "status": "queued",
        "seed": job.seed,
        "workflow": job.workflow,
        "status_url": format!("{}/api/status/{}", state.public_url, record.id),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `GET /api/status/{job_id}`: the prototype's five keys plus ours.
pub async fn status(
    State(state): State<AppState>,
    JobIdPath(id): JobIdPath,
) -> Result<Response, ApiError> {
    let Some((job, position)) = state.with_timeout(state.store.status(&id)).await? else {
        return Err(not_found(id.as_str()));
    };
    Ok(Json(JobView::new(&job, position)).into_response())
}

/// Query of `GET /api/jobs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/jobs?status=&limit=&cursor=`: recent jobs, newest first.
pub async fn list(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let status = match p.status.as_deref() {
        None | Some("") => None,
        Some(s @ ("queued" | "processing" | "finished" | "failed")) => Some(JobStatus::parse(s)),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-status",
                format!(
                    "status must be one of queued, processing, finished, failed (got {other:?})"
                ),
            )
            .with_field("status"));
        }
    };
    let limit = match p.limit.as_deref() {
        None | Some("") => DEFAULT_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid-limit",
                    format!("limit must be an integer from 1 to {MAX_PAGE} (got {s:?})"),
                )
                .with_field("limit"));
            }
        },
    };
    let cursor = match p.cursor.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid-cursor",
                "cursor must be a next_cursor value from a previous page",
            )
            .with_field("cursor")
        })?),
    };
    let page = state
        .with_timeout(state.store.list(&ListQuery {
            status,
            limit,
            cursor,
        }))
        .await?;
    Ok(Json(json!({
        "jobs": page.jobs.iter().map(|j| JobView::new(j, None)).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor.map(|c| c.to_string()),
    })))
}

/// `POST /api/jobs/{job_id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    JobIdPath(id): JobIdPath,
) -> Result<Response, ApiError> {
    match state.with_timeout(state.store.cancel(&id)).await? {
        CancelOutcome::Cancelled(job) => {
            Ok((StatusCode::OK, Json(JobView::new(&job, None))).into_response())
        }
        CancelOutcome::Requested(job) => {
            Ok((StatusCode::ACCEPTED, Json(JobView::new(&job, None))).into_response())
        }
        CancelOutcome::AlreadyFinal(job) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "job-final",
            format!(
                "job {} has already {}; there is nothing to cancel",
                job.id,
                job.status.as_str()
            ),
        )),
        CancelOutcome::NotFound => Err(not_found(id.as_str())),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "job-not-found",
        format!("no job with id {id} (unknown, or expired after 24 h)"),
    )
    .with_field("job_id")
}

/// A job as the API shows it: the prototype's `job_id`, `status`, `progress`,
/// `image_url`, `error` (strings empty when unset), then ours, then any fields other
/// programs wrote, as written.
#[derive(Serialize)]
pub struct JobView<'a> {
    job_id: &'a str,
    status: &'a str,
    progress: u8,
    image_url: &'a str,
    error: &'a str,
    workflow: &'a str,
    seed: Option<u64>,
    prompt: &'a str,
    params: &'a Map<String, Value>,
    created_at: &'a str,
    updated_at: &'a str,
    attempt: u32,
    outputs: &'a [Output],
    cancelled: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cancel_requested: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    backend: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    last_error: &'a str,
    #[serde(flatten)]
    extra: &'a BTreeMap<String, String>,
}

impl<'a> JobView<'a> {
    pub fn new(job: &'a JobRecord, queue_position: Option<u64>) -> Self {
        let queued = job.status == JobStatus::Queued;
        JobView {
            job_id: &job.id,
            status: job.status.as_str(),
            progress: job.progress,
            image_url: &job.image_url,
            error: &job.error,
            workflow: &job.workflow,
            seed: job.seed,
            prompt: &job.prompt,
            params: &job.params,
            created_at: &job.created_at,
            updated_at: &job.updated_at,
            attempt: job.attempt,
            outputs: &job.outputs,
            cancelled: job.cancelled,
            cancel_requested: job.cancel_requested && !job.status.is_final(),
            backend: &job.backend,
            queue_position: queue_position.filter(|_| queued),
            retry_at: (queued && job.retry_at > 0).then(|| clock::iso8601(job.retry_at * 1000)),
            last_error: &job.last_error,
            extra: &job.extra,
        }
    }
}
