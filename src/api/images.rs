//! `GET /images/{job_id}/{file}`: a job's stored outputs, with the right content
//! type and long cache headers (a stored file never changes), an `ETag` honoured
//! by `If-None-Match` (304), and single byte ranges (206) for video players.

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
use crate::storage::ByteRange;

/// The signature of a picture URL (with auth on).
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    /// When the URL stops working (seconds since 1970).
    exp: Option<u64>,
    /// HMAC-SHA256 of the job, the file and `exp`, hex.
    sig: Option<String>,
    /// A thumbnail this many pixels wide (128, 256 or 512; a JPEG), of a PNG,
    /// JPEG or WebP picture; made once, then kept.
    #[param(schema_with = thumb_widths)]
    w: Option<u32>,
}

/// The schema of `w`: one of the thumbnail widths.
fn thumb_widths() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .enum_values(Some(super::thumbs::WIDTHS))
        .description(Some(
            "A thumbnail this many pixels wide (a JPEG), of a PNG, JPEG or WebP picture; made once, then kept.",
        ))
        .build()
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

/// `Cache-Control` of stored outputs with auth off: names are unique per job,
/// contents final, and anyone may fetch them.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of stored outputs with auth on: final too, but for the one
/// client that was allowed (a shared cache must not serve it keyless or past
/// its URL's expiry), answered with `Vary: Authorization`.
pub const PRIVATE: &str = "private, max-age=3600, immutable";

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
        (status = 302, description = "With `--storage-serve redirect`: to a presigned URL of the object"),
        (status = 400, description = "A malformed path or query (`invalid-path`, `invalid-query`)", body = ErrorBody),
        (status = 403, description = "With auth on: no valid signature and no key that may see the job (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such file (`file-not-found`)", body = ErrorBody),
        (status = 422, description = "A thumbnail of a picture that cannot be read (`unreadable-picture`) or is too large (`picture-too-large`)", body = ErrorBody),
        (status = 416, description = "The `Range` asked for starts past the end of the file (`range-not-satisfiable`, with `Content-Range: bytes */<size>`)", body = ErrorBody),
    ))]
pub async fn image(
    State(state): State<AppState>,
    Caller(who): Caller,
    PathParams((job, name)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<SignedQuery>,
    req_headers: axum::http::HeaderMap,
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
    // Input pictures share the storage but are not served back.
    if id.as_str() == crate::uploads::UPLOADS_DIR {
        return Err(missing());
    }
    if state.access.signs_urls() {
        allowed(&state, &who, &id, &name, &q).await?;
    }
    // A thumbnail is served as the stored file it becomes, and made only of a
    // file the job recorded as an output (not of a thumbnail, nor of a name a
    // client makes up).
    let name = match q.w {
        Some(w) => {
            let w = super::thumbs::width(w)?;
            let recorded = state
                .with_timeout(state.store.get(&id))
                .await?
                .is_some_and(|job| job.outputs.iter().any(|o| o.filename == name));
            if !recorded {
                return Err(missing());
            }
            super::thumbs::ensure(&state, &id, &name, w)
                .await?
                .ok_or_else(missing)?
        }
        None => name.clone(),
    };
    let private = state.access.signs_urls();
    let cache = if private { PRIVATE } else { IMMUTABLE };
    if state.redirect_images {
        // At most a week: the longest a SigV4 presigned URL may live.
        let ttl = state
            .access
            .url_ttl
            .min(std::time::Duration::from_secs(7 * 24 * 3600));
        let url = state
            .images
            .presigned_url(&id, &name, ttl)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot presign a stored output");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage-error",
                    "the stored file cannot be reached",
                )
            })?;
        if let Some(url) = url {
            return Ok((
                StatusCode::FOUND,
                [
                    (header::LOCATION, url),
                    (header::CACHE_CONTROL, "private, max-age=60".to_owned()),
                ],
            )
                .into_response());
        }
        // None: no such file, or a store that cannot presign (the local disk);
        // serving it below answers either.
    }
    // One range, as browsers ask for videos; anything else serves the whole file
    // (as RFC 9110 allows). If-Range with another validator also means the whole.
    let headers = req_headers;
    let mut range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let blob = state
        .images
        .open_part(&id, &name, range)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read a stored output");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage-error",
                "the stored file cannot be read",
            )
        })?;
    let Some((mut blob, satisfiable)) = blob else {
        return Err(missing());
    };
    let matches = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim() == blob.etag || t.trim() == "*")
            })
    };
    if matches(header::IF_NONE_MATCH) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, blob.etag.clone()),
                (header::CACHE_CONTROL, cache.to_owned()),
                (header::VARY, "authorization".to_owned()),
            ],
        )
            .into_response());
    }
    if range.is_some() && headers.contains_key(header::IF_RANGE) && !matches(header::IF_RANGE) {
        range = None;
        blob = state
            .images
            .open_part(&id, &name, None)
            .await
            .ok()
            .flatten()
            .ok_or_else(missing)?
            .0;
    }
    if range.is_some() && !satisfiable {
        let mut res = ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range-not-satisfiable",
            format!("the file has {} bytes", blob.total),
        )
        .into_response();
        if let Ok(v) = format!("bytes */{}", blob.total).parse() {
            res.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        return Ok(res);
    }
    let partial = range.is_some();
    let mut res = (
        [
            (header::CONTENT_TYPE, blob.content_type.to_owned()),
            (header::CONTENT_LENGTH, blob.size.to_string()),
            (header::CACHE_CONTROL, cache.to_owned()),
            (header::VARY, "authorization".to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::ACCEPT_RANGES, "bytes".to_owned()),
            (header::ETAG, blob.etag.clone()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{}\"", name.replace('"', "")),
            ),
        ],
        Body::from_stream(ReaderStream::new(blob.reader)),
    )
        .into_response();
    if partial {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = format!(
            "bytes {}-{}/{}",
            blob.start,
            blob.start + blob.size - 1,
            blob.total
        )
        .parse()
        {
            res.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(res)
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n`; `None` for anything else (several
/// ranges, other units, nonsense), which then serves the whole file.
/// A job's stored output read whole, if it is there and at most `max` bytes.
pub async fn read_whole(state: &AppState, job: &JobId, name: &str, max: u64) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut blob = state.images.open(job, name).await.ok().flatten()?;
    if blob.total > max {
        return None;
    }
    let mut bytes = Vec::with_capacity(blob.size as usize);
    blob.reader.read_to_end(&mut bytes).await.ok()?;
    Some(bytes)
}

pub fn parse_range(h: &str) -> Option<ByteRange> {
    let spec = h.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return Some(ByteRange::Last(b.parse().ok()?));
    }
    let start = a.parse().ok()?;
    let end = if b.is_empty() {
        None
    } else {
        let e: u64 = b.parse().ok()?;
        if e < start {
            return None;
        }
        Some(e)
    };
    Some(ByteRange::From { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        assert_eq!(
            parse_range("bytes=0-99"),
            Some(ByteRange::From {
                start: 0,
                end: Some(99)
            })
        );
        assert_eq!(
            parse_range("bytes=100-"),
            Some(ByteRange::From {
                start: 100,
                end: None
            })
        );
        assert_eq!(parse_range("bytes=-500"), Some(ByteRange::Last(500)));
        for ignored in [
            "bytes=0-1,5-9",
            "items=0-1",
            "bytes=9-1",
            "bytes=x-",
            "bytes=-",
        ] {
            assert_eq!(parse_range(ignored), None, "{ignored}");
        }
        assert_eq!(ByteRange::Last(500).resolve(100), Some((0, 99)));
        assert_eq!(
            ByteRange::From {
                start: 100,
                end: None
            }
            .resolve(100),
            None
        );
        assert_eq!(
            ByteRange::From {
                start: 10,
                end: Some(1000)
            }
            .resolve(100),
            Some((10, 99))
        );
    }
}
