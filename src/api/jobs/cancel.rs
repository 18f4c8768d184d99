//! `POST /api/jobs/{id}/cancel`.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::not_found;
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::extract::{JobIdPath, optional_object};
use crate::api::guard::Deliberate;
use crate::job::JobView;
use crate::store::CancelOutcome;

/// Cancels a job: a queued one at once, a running one by asking its worker. Send
/// `Content-Type: application/json` (any body, `{}` will do): a request no web
/// form can make. (An `X-Requested-With` header or an API key says the same, and
/// then no body is needed.)
#[utoipa::path(post, path = "/api/jobs/{job_id}/cancel", tag = "jobs",
    params(("job_id" = String, Path, description = "The job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = Object, content_type = "application/json", description = "Ignored; `{}`"),
    responses(
        (status = 200, description = "It was queued: now `failed` with error `cancelled`", body = JobView),
        (status = 202, description = "It is running: its worker stops it (`cancel_requested: true`); it ends `failed`/`cancelled` within seconds", body = JobView),
        (status = 400, description = "Malformed job id (`invalid-job-id`), or a body that is not a JSON object (`invalid-json`, `invalid-body`)", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 403, description = "Sent by a web page on an origin `--cors-origins` does not name (`forbidden-origin`)", body = ErrorBody),
        (status = 409, description = "It already finished or failed (`job-final`)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor an `X-Requested-With` header (`unsupported-media-type`)", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    JobIdPath(id): JobIdPath,
    request: Request,
) -> Result<Response, ApiError> {
    no_body(&state, request).await?;
    // Someone else's job is not there, as far as this caller can tell.
    let visible = state
        .with_timeout(state.store.get(&id))
        .await?
        .is_some_and(|job| who.may_see(&job.owner));
    if !visible {
        return Err(not_found(id.as_str()));
    }
    let signing = state.signing().await?;
    match state.with_timeout(state.store.cancel(&id)).await? {
        CancelOutcome::Cancelled(job) => Ok((
            StatusCode::OK,
            Json(JobView::new(&job, None, signing.as_ref(), who.sees_all)),
        )
            .into_response()),
        CancelOutcome::Requested(job) => Ok((
            StatusCode::ACCEPTED,
            Json(JobView::new(&job, None, signing.as_ref(), who.sees_all)),
        )
            .into_response()),
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

/// Reads the body of a request that needs none: empty, or a JSON object (what a
/// cancel sends so no web form can make it).
pub(crate) async fn no_body(state: &AppState, request: Request) -> Result<(), ApiError> {
    optional_object(request, state.body_timeout).await.map(drop)
}
