//! `GET /api/jobs/{job_id}/preview`: the latest preview of a job's picture as it
//! forms (what ComfyUI's samplers send with `--preview-method`), from whichever
//! worker runs it, through the store.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{JobIdPath, QueryParams};

/// Query of the preview: `seq` only makes each preview's URL its own (caches).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    /// The preview's sequence number, as `event: preview` gives it (the latest
    /// is served whatever it says).
    #[param(minimum = 1)]
    seq: Option<i64>,
}

/// The latest preview of a running job's picture (PNG, JPEG or WebP, as ComfyUI
/// sent it), with its number in `X-Preview-Seq`. `404 preview-not-found` while
/// there is none: ComfyUI sends previews only from samplers, and only when started
/// with `--preview-method auto` (or `taesd`); a preview is kept 10 minutes.
#[utoipa::path(get, path = "/api/jobs/{job_id}/preview", tag = "jobs",
    params(
        ("job_id" = String, Path, description = "The job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$"),
        PreviewParams,
    ),
    responses(
        (status = 200, description = "The picture", content(
            (Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/webp"),
        )),
        (status = 400, description = "Malformed job id (`invalid-job-id`)", body = ErrorBody),
        (status = 404, description = "Unknown job (`job-not-found`), or no preview yet (`preview-not-found`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn preview(
    State(state): State<AppState>,
    Caller(who): Caller,
    JobIdPath(id): JobIdPath,
    QueryParams(q): QueryParams<PreviewParams>,
) -> Result<Response, ApiError> {
    if q.seq.is_some_and(|n| n < 1) {
        return Err(
            ApiError::bad_request("invalid-query", "seq: a preview's number, from 1")
                .with_field("seq"),
        );
    }
    let visible = state
        .with_timeout(state.store.get(&id))
        .await?
        .is_some_and(|job| who.may_see(&job.owner));
    if !visible {
        return Err(super::jobs::not_found(id.as_str()));
    }
    let Some(p) = state.with_timeout(state.store.get_preview(&id)).await? else {
        return Err(ApiError::not_found(
            "preview-not-found",
            format!(
                "no preview of job {id} yet: ComfyUI sends previews from samplers when started with --preview-method auto"
            ),
        )
        .with_field("job_id"));
    };
    let mut res = p.image.into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&p.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-preview-seq", HeaderValue::from(p.seq));
    Ok(res)
}
