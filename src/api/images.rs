//! `GET /images/{job_id}/{file}`: a job's stored outputs, with the right content
//! type and long cache headers (a stored file never changes).

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::io::ReaderStream;

use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{PathParams, QueryParams};
use crate::auth::Identity;
use crate::clock;
use crate::job::JobId;

/// The signature of a picture URL (with auth on).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    /// When the URL stops working (seconds since 1970).
    exp: Option<u64>,
    /// HMAC-SHA256 of the job, the file and `exp`, hex.
    sig: Option<String>,
}

/// With auth on, a picture is served for a valid signature, or to a key that may
/// see its job; otherwise 403.
async fn allowed(
    state: &AppState,
    who: &Identity,
    id: &JobId,
    name: &str,
    q: &SignedQuery,
) -> Result<(), ApiError> {
    if let (Some(exp), Some(sig)) = (q.exp, q.sig.as_deref()) {
        let signer = state.with_timeout(state.access.signer()).await?;
        if signer.verify(id.as_str(), name, exp, sig, clock::now_ms() / 1000) {
            return Ok(());
        }
        return Err(forbidden(
            "this picture URL has expired or its signature does not match; ask for the job again for a fresh one",
        ));
    }
    if who.key.is_some() {
        let job = state.with_timeout(state.store.get(id)).await?;
        if job.is_some_and(|j| who.may_see(&j.owner)) {
            return Ok(());
        }
    }
    Err(forbidden(
        "pictures need the signed URL a job's status gives (exp and sig), or an API key that may see the job",
    ))
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// `Cache-Control` of stored outputs: names are unique per job, contents final.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A stored output file, with its content type and long cache headers.
#[utoipa::path(get, path = "/images/{job_id}/{file}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$"), ("file" = String, Path, description = "A file name from the job's outputs"), SignedQuery),
    responses(
        (status = 200, description = "The file, with the content type of its kind", content(
            (Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/webp"),
            (Vec<u8> = "image/gif"), (Vec<u8> = "image/avif"), (Vec<u8> = "video/mp4"),
            (Vec<u8> = "video/webm"), (Vec<u8> = "video/quicktime"), (Vec<u8> = "audio/wav"),
            (Vec<u8> = "audio/mpeg"), (Vec<u8> = "audio/flac"), (Vec<u8> = "audio/ogg"),
            (String = "text/plain"), (Object = "application/json"),
            (Vec<u8> = "application/octet-stream"),
        )),
        (status = 400, description = "A malformed path or query (`invalid-path`, `invalid-query`)", body = ErrorBody),
        (status = 403, description = "With auth on: no valid signature and no key that may see the job (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such file (`file-not-found`)", body = ErrorBody),
    ))]
pub async fn image(
    State(state): State<AppState>,
    Caller(who): Caller,
    PathParams((job, name)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<SignedQuery>,
) -> Result<Response, ApiError> {
    let missing = || {
        ApiError::not_found(
            "file-not-found",
            format!("no file {name:?} for job {job:?}"),
        )
    };
    let Ok(id) = JobId::parse(&job) else {
        return Err(missing());
    };
    if state.access.signs_urls() {
        allowed(&state, &who, &id, &name, &q).await?;
    }
    let blob = state.images.open(&id, &name).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read a stored output");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage-error",
            "the stored file cannot be read",
        )
    })?;
    let Some(blob) = blob else {
        return Err(missing());
    };
    Ok((
        [
            (header::CONTENT_TYPE, blob.content_type.to_owned()),
            (header::CONTENT_LENGTH, blob.size.to_string()),
            (header::CACHE_CONTROL, IMMUTABLE.to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{}\"", name.replace('"', "")),
            ),
        ],
        Body::from_stream(ReaderStream::new(blob.reader)),
    )
        .into_response())
}
