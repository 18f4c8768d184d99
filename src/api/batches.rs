//! Batches: many jobs as one submission (`POST /api/batches`), followed and
//! cancelled together (`GET /api/batches/{id}`, `POST /api/batches/{id}/cancel`).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, PathParams};
use super::guard::Deliberate;
use super::idempotency;
use crate::auth::Identity;
use crate::job::{BatchRecord, BatchView, JobId, JobRecord};
use crate::submit::BatchSubmission;

/// A batch: one job's fields (as `POST /api/generate` takes them) plus exactly
/// one of `count`, `seeds`, `prompts` or `grid`. (Checked field by field; this
/// type only names the schema.)
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"prompt": "a lighthouse at dusk", "workflow": "sdxl", "grid": {"steps": [20, 30], "cfg": [5, 7]}}))]
pub struct BatchRequest {
    /// What to draw (each job's, unless `prompts` gives them).
    pub prompt: Option<String>,
    /// With `count`: the first job's seed, the next ones counting up (random when absent).
    pub seed: Option<u64>,
    pub workflow: Option<String>,
    /// N jobs, 1 to `--max-batch` (default 64), seeds counting up.
    #[schema(minimum = 1)]
    pub count: Option<u32>,
    /// One job per seed.
    pub seeds: Option<Vec<u64>>,
    /// One job per prompt.
    pub prompts: Option<Vec<String>>,
    /// One job per combination of these fields' values, e.g. `{"steps": [20, 30],
    /// "cfg": [5, 7]}`: 4 jobs. Fields in name order, the first varying slowest.
    #[schema(value_type = Option<Object>)]
    pub grid: Option<serde_json::Value>,
}

/// `202` to a batch.
#[derive(Serialize, ToSchema)]
pub struct BatchAccepted {
    pub batch_id: String,
    /// Its jobs, in order (each also listed by `GET /api/jobs?batch_id=`).
    pub job_ids: Vec<String>,
    pub workflow: String,
    /// Where to follow it.
    pub status_url: String,
}

/// Submits a batch of jobs: all are queued, or none.
#[utoipa::path(post, path = "/api/batches", tag = "batches", operation_id = "submit_batch",
    request_body(content = BatchRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]+$", description = "One key for the whole batch: the same key with the same body within 24 hours answers the first batch again (`Idempotent-Replayed: true`).")),
    responses(
        (status = 202, description = "Every job queued (or, for a repeated Idempotency-Key, queued before)", body = BatchAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "No batch field, two of them, or one out of bounds (`invalid-batch`), or a job's field is invalid (the codes of `POST /api/generate`; the message names the job)", body = ErrorBody),
        (status = 401, description = "Auth is on and the request has no valid key (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Sent by a web page on an origin `--cors-origins` does not name (`forbidden-origin`), or a priority above the key's (`priority-not-allowed`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `--body-timeout` (`body-timeout`)", body = ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is still being handled (`idempotency-key-in-progress`)", body = ErrorBody),
        (status = 410, description = "The workflow is retired (`workflow-retired`)", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB (`payload-too-large`)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json (`unsupported-media-type`)", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with a different body (`idempotency-key-reuse`)", body = ErrorBody),
        (status = 429, description = "The key's quota of waiting jobs cannot hold the whole batch (`queue-quota`), or it is over its rate (`rate-limited`), with `Retry-After`", body = ErrorBody),
        (status = 503, description = "The queue cannot hold the whole batch (`queue-full`), the webhook outbox is full, or the store is unavailable", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let accepted = state
        .submit
        .submit_batch(BatchSubmission {
            who: &who,
            body,
            idempotency_key: idempotency::key(&headers)?,
        })
        .await?;
    let replayed = accepted.replayed;
    let body = Json(BatchAccepted {
        status_url: format!("{}/api/batches/{}", state.public_url, accepted.batch_id),
        batch_id: accepted.batch_id,
        job_ids: accepted.job_ids,
        workflow: accepted.workflow,
    });
    Ok(idempotency::accepted(body, replayed))
}

/// A batch: counts by status, progress, and every job.
#[utoipa::path(get, path = "/api/batches/{batch_id}", tag = "batches", operation_id = "get_batch",
    params(("batch_id" = String, Path, description = "The batch id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, description = "The batch", body = BatchView),
        (status = 400, description = "Malformed batch id (`invalid-batch-id`)", body = ErrorBody),
        (status = 404, description = "Unknown or expired batch (`batch-not-found`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Caller(who): Caller,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let (batch, jobs) = read(&state, &who, &id).await?;
    let signing = state.signing().await?;
    Ok(Json(BatchView::new(
        &batch,
        &jobs,
        signing.as_ref(),
        who.sees_all,
    ))
    .into_response())
}

/// Cancels every job of a batch that has not ended: queued ones at once,
/// running ones by asking their workers. Send `Content-Type: application/json`
/// (any body, `{}` will do), as for a job's cancel.
#[utoipa::path(post, path = "/api/batches/{batch_id}/cancel", tag = "batches", operation_id = "cancel_batch",
    params(("batch_id" = String, Path, description = "The batch id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = Object, content_type = "application/json", description = "Ignored; `{}`"),
    responses(
        (status = 200, description = "The batch after the cancel: its running jobs end `failed`/`cancelled` within seconds", body = BatchView),
        (status = 400, description = "Malformed batch id (`invalid-batch-id`), or a body that is not a JSON object", body = ErrorBody),
        (status = 403, description = "Sent by a web page on an origin `--cors-origins` does not name (`forbidden-origin`)", body = ErrorBody),
        (status = 404, description = "Unknown or expired batch (`batch-not-found`)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor an `X-Requested-With` header (`unsupported-media-type`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    PathParams(id): PathParams<String>,
    request: Request,
) -> Result<Response, ApiError> {
    super::jobs::cancel::no_body(&state, request).await?;
    let (batch, jobs) = read(&state, &who, &id).await?;
    for job in jobs.iter().flatten().filter(|j| !j.status.is_final()) {
        if let Ok(id) = JobId::parse(&job.id) {
            state.with_timeout(state.store.cancel(&id)).await?;
        }
    }
    let jobs = state
        .with_timeout(state.store.get_many(&batch.job_ids))
        .await?;
    let signing = state.signing().await?;
    Ok(Json(BatchView::new(
        &batch,
        &jobs,
        signing.as_ref(),
        who.sees_all,
    ))
    .into_response())
}

/// Batch `id` and its jobs' records, if `who` may see it.
pub(crate) async fn read(
    state: &AppState,
    who: &Identity,
    id: &str,
) -> Result<(BatchRecord, Vec<Option<JobRecord>>), ApiError> {
    let id = JobId::parse(id).map_err(|e| {
        ApiError::bad_request(
            "invalid-batch-id",
            e.to_string().replace("job id", "batch id"),
        )
        .with_field("batch_id")
    })?;
    let batch = state
        .with_timeout(state.store.get_batch(id.as_str()))
        .await?
        .filter(|b| who.may_see(&b.owner))
        .ok_or_else(|| {
            ApiError::not_found(
                "batch-not-found",
                format!("no batch with id {id} (unknown, or expired with its jobs)"),
            )
            .with_field("batch_id")
        })?;
    let jobs = state
        .with_timeout(state.store.get_many(&batch.job_ids))
        .await?;
    Ok((batch, jobs))
}
