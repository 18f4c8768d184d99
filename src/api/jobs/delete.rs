//! `DELETE /api/jobs/{id}`: a finished (or failed) job and its pictures, now.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::not_found;
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::extract::JobIdPath;
use crate::api::guard::Deliberate;
use crate::job::{JobId, JobRecord};
use crate::storage::files_of;

/// Deletes a job that has ended, its pictures and their thumbnails (on disk or
/// in the bucket), at once: its owner, or an admin. (A web page on another site
/// cannot send it: browsers ask CORS first for a DELETE.)
#[utoipa::path(delete, path = "/api/jobs/{job_id}", tag = "jobs", operation_id = "delete_job",
    params(("job_id" = String, Path, description = "The job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 204, description = "Deleted, pictures and all"),
        (status = 400, description = "Malformed job id (`invalid-job-id`)", body = ErrorBody),
        (status = 403, description = "A cross-site request (`forbidden-origin`)", body = ErrorBody),
        (status = 404, description = "Unknown job (`job-not-found`)", body = ErrorBody),
        (status = 409, description = "It is queued or running (`job-not-final`): cancel it first", body = ErrorBody),
        (status = 503, description = "The store or the storage is unavailable", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    JobIdPath(id): JobIdPath,
) -> Result<Response, ApiError> {
    let Some(job) = state
        .with_timeout(state.store.get(&id))
        .await?
        .filter(|j| who.may_see(&j.owner))
    else {
        return Err(not_found(id.as_str()));
    };
    if !job.status.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job-not-final",
            format!(
                "job {id} is {}; cancel it first, then delete it",
                job.status.as_str()
            ),
        ));
    }
    let files = delete_ended(&state, &id, &job).await?;
    tracing::info!(job_id = %id, by = who.owner_or("anonymous"), files, "job deleted with its pictures");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes an ended job's pictures and their thumbnails (on disk or in the
/// bucket), its entry in the outputs index, then its record; how many pictures
/// it had. What `DELETE /api/jobs/{id}` and ComfyUI's `POST /history` do.
pub(crate) async fn delete_ended(
    state: &AppState,
    id: &JobId,
    job: &JobRecord,
) -> Result<usize, ApiError> {
    let names: Vec<String> = job.outputs.iter().map(|o| o.filename.clone()).collect();
    state
        .images
        .delete(id, &files_of(&names))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable",
                format!("cannot delete the pictures: {e}"),
            )
        })?;
    state
        .with_timeout(state.store.forget_outputs(id.as_str()))
        .await?;
    state
        .with_timeout(state.store.delete_job(id.as_str()))
        .await?;
    Ok(names.len())
}
