//! Jobs: submit (`POST /api/generate`), status (`GET /api/status/{id}`), list
//! (`GET /api/jobs`, in `list.rs`), cancel (`POST /api/jobs/{id}/cancel`, in
//! `cancel.rs`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use serde::Serialize;
use utoipa::ToSchema;

pub mod cancel;
pub mod delete;
pub mod list;

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{JobIdPath, JsonBody};
use super::guard::Deliberate;
use super::idempotency;
use crate::auth::rate::RateCheck;
use crate::job::{JobView, WebhookView};
use crate::submit::Submission;

/// A submission: `prompt`, `seed` and `workflow`, plus the workflow's declared
/// parameters (`negative_prompt`, `steps`, `cfg`, `width`, `height`, `batch_size`,
/// ... as `GET /api/workflows` lists them), each checked against its type and
/// bounds; undeclared fields are refused. (The body is read as JSON and checked
/// field by field by `parse_submission`, so errors can name the field. This type
/// only names the schema: the served document replaces it with one built from
/// the loaded workflows, `openapi::document`.)
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"prompt": "a lighthouse at dusk", "seed": 42, "workflow": "sdxl", "steps": 30}))]
pub struct GenerateRequest {
    /// What to draw: not empty, not only whitespace, at most 10,000 characters.
    pub prompt: String,
    /// 0..=18446744073709551615; random (and returned) when absent.
    pub seed: Option<u64>,
    /// A workflow name from `GET /api/workflows` (default `sdxl`).
    pub workflow: Option<String>,
}

/// `202` to a submission: the prototype's `{"job_id", "status": "queued"}` plus more.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// A UUID v4.
    pub job_id: String,
    /// Always `queued`.
    #[schema(example = "queued")]
    pub status: &'static str,
    /// The seed used (chosen at random when the request had none).
    pub seed: u64,
    pub workflow: String,
    /// Where to follow it.
    pub status_url: String,
}

/// Submits a job.
#[utoipa::path(post, path = "/api/generate", tag = "jobs",
    request_body(content = GenerateRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]+$", description = "Makes a retry safe: the same key (1–255 visible ASCII characters) with the same body within 24 hours answers the first answer again, with `Idempotent-Replayed: true`, instead of queueing a second job. Scoped to the API key.")),
    responses(
        (status = 202, description = "Queued (or, for a repeated Idempotency-Key, queued before)", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "A field is missing or invalid (`invalid-prompt`, `prompt-too-long`, `invalid-seed`, `invalid-priority`, `unknown-workflow`, `invalid-workflow`, `unknown-field`, `invalid-param`, `invalid-json`, `invalid-body`, `invalid-idempotency-key`, `invalid-webhook-url`, `invalid-webhook-events`, `webhooks-not-configured`)", body = ErrorBody),
        (status = 401, description = "Auth is on and the request has no valid key (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Sent by a web page on an origin `--cors-origins` does not name (`forbidden-origin`), or a priority above the key's (`priority-not-allowed`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `--body-timeout` (`body-timeout`)", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB (`payload-too-large`)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json (`unsupported-media-type`)", body = ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is still being handled (`idempotency-key-in-progress`, with `Retry-After`)", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with a different body (`idempotency-key-reuse`)", body = ErrorBody),
        (status = 429, description = "The key has its maximum of jobs waiting (`queue-quota`), or is over its rate (`rate-limited`), with `Retry-After`", body = ErrorBody),
        (status = 503, description = "The queue is full (`queue-full`, with `Retry-After`), the webhook outbox is full (`webhook-outbox-full`, with `Retry-After`), or the store is unavailable (`store-unavailable`)", body = ErrorBody),
    ))]
pub async fn generate(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    headers: HeaderMap,
    rate: Option<Extension<Arc<RateCheck>>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let submission = Submission {
        who: &who,
        body,
        idempotency_key: idempotency::key(&headers)?,
        extra: None,
        job_id: None,
        rate: rate.map(|Extension(c)| c),
    };
    let accepted = state.submit.submit(submission).await?;
    Ok(accepted_answer(&state, accepted))
}

/// `202` to a job the submission path accepted (a replay says so).
pub(crate) fn accepted_answer(state: &AppState, accepted: crate::submit::Accepted) -> Response {
    let replayed = accepted.replayed;
    let body = Json(Accepted {
        status_url: format!("{}/api/status/{}", state.public_url, accepted.job_id),
        job_id: accepted.job_id.to_string(),
        status: "queued",
        seed: accepted.seed,
        workflow: accepted.workflow,
    });
    idempotency::accepted(body, replayed)
}

/// A job's status: the prototype's five keys plus ours.
#[utoipa::path(get, path = "/api/status/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Malformed job id (`invalid-job-id`)", body = ErrorBody),
        (status = 404, description = "Unknown or expired job (`job-not-found`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    Caller(who): Caller,
    rate: Option<Extension<Arc<RateCheck>>>,
    JobIdPath(id): JobIdPath,
) -> Result<Response, ApiError> {
    let found = match &rate {
        Some(Extension(check)) => {
            state
                .with_timeout(state.store.status_counted(&id, check))
                .await?
        }
        None => state.with_timeout(state.store.status(&id)).await?,
    };
    let Some((job, position)) = found.filter(|(job, _)| who.may_see(&job.owner)) else {
        return Err(not_found(id.as_str()));
    };
    let signing = state.signing().await?;
    let webhook = if job.params.contains_key("webhook_url") {
        state
            .with_timeout(state.store.get_webhook(&id))
            .await?
            .map(WebhookView::from)
    } else {
        None
    };
    let mut view = JobView::new(&job, position, signing.as_ref(), who.sees_all);
    view.webhook = webhook;
    if let Some(ahead) = position.filter(|_| job.status == crate::job::JobStatus::Queued) {
        let backends = state
            .offers
            .live(state.store.as_ref())
            .await
            .map_or(1, |l| l.len());
        view.eta_seconds = state.run_times.eta(&job.workflow, ahead, backends);
    }
    Ok(Json(view).into_response())
}

/// The same as `GET /api/status/{job_id}`.
#[utoipa::path(get, path = "/api/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Malformed job id (`invalid-job-id`)", body = ErrorBody),
        (status = 404, description = "Unknown or expired job (`job-not-found`)", body = ErrorBody),
    ))]
pub async fn get(
    state: State<AppState>,
    who: Caller,
    rate: Option<Extension<Arc<RateCheck>>>,
    id: JobIdPath,
) -> Result<Response, ApiError> {
    status(state, who, rate, id).await
}

pub(crate) fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "job-not-found",
        format!("no job with id {id} (unknown, or expired after 24 h)"),
    )
    .with_field("job_id")
}
