//! `POST /api/uploads`: an input picture for img2img, inpainting and the like.
//! Checked ([`crate::uploads::check`]), stored content-addressed in the output
//! storage, recorded for its owner with the job TTL.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::read_body;
use super::guard::Deliberate;
use crate::uploads::{UploadError, UploadRecord};

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        ApiError::new(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.code,
            e.message,
        )
        .with_field("image")
    }
}

/// Multipart framing allowed on top of the picture itself.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

/// Uploads a picture (PNG, JPEG or WebP) for a job's image or mask parameter.
#[utoipa::path(post, path = "/api/uploads", tag = "uploads",
    params(("X-Requested-With" = Option<String>, Header, description = "Required with `multipart/form-data` (any value, e.g. `XMLHttpRequest`; an API key header does as well): a header no web form can send. Not needed for a raw body with the picture's own type.")),
    request_body(description = "The picture as the raw body with its own type (`image/png`, `image/jpeg`, `image/webp`), or `multipart/form-data` with the file in a field named `image` (or the first file field) and an `X-Requested-With` header",
        content(
            (Vec<u8> = "image/png"),
            (Vec<u8> = "image/jpeg"),
            (Vec<u8> = "image/webp"),
            (Vec<u8> = "multipart/form-data"),
        )),
    responses(
        (status = 201, description = "Stored (the same bytes again answer the same id)", body = UploadRecord),
        (status = 400, description = "Not a whole image: truncated, corrupt, or with data after its end (`invalid-image`)", body = ErrorBody),
        (status = 413, description = "Too many bytes (`upload-too-large`) or pixels (`image-too-large`), or over the key's upload quota (`upload-quota`)", body = ErrorBody),
        (status = 415, description = "Not PNG, JPEG or WebP, or not what its content type says (`unsupported-image-type`); multipart without `X-Requested-With` (`unsupported-media-type`)", body = ErrorBody),
        (status = 429, description = "This client sends its maximum of uploads at once (`too-many-uploads`, with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "The store or the storage is unavailable, or the server reads its maximum of upload bytes at once (`upload-busy`, with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    req: Request,
) -> Result<Response, ApiError> {
    let record = receive(&state, &who, req).await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// Reads, checks and stores an uploaded picture (the raw body, or the `image`
/// field of a form): what `POST /api/uploads` and the ComfyUI port's
/// `/upload/image` both do.
pub async fn receive(
    state: &AppState,
    who: &crate::auth::Identity,
    req: Request,
) -> Result<crate::uploads::UploadRecord, ApiError> {
    let limits = state.submit.uploads.limits;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let is_multipart = content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data");
    let limit = limits.max_bytes + if is_multipart { MULTIPART_OVERHEAD } else { 0 };
    // Room in this process's upload buffer, and a slot among the client's
    // uploads in flight, before a byte of the body is read.
    let declared_len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n <= limit)
        .unwrap_or(limit);
    let client = super::access::client_of(who, &req);
    let _room = state
        .submit
        .uploads
        .reserve(declared_len, &client)
        .await
        .map_err(ApiError::from)?;
    let body = read_body(req, limit as usize, state.body_timeout)
        .await
        .map_err(|e| e.with_field("image"))?;
    let (declared, bytes) = if is_multipart {
        picture_from_multipart(&content_type, body).await?
    } else if content_type.is_empty() || content_type.starts_with("application/octet-stream") {
        (None, body)
    } else {
        (Some(content_type), body)
    };
    let declared = declared.filter(|d| !d.starts_with("application/octet-stream"));
    let uploader = &state.submit.uploads;
    let picture = uploader.check(bytes.to_vec(), declared.as_deref()).await?;
    Ok(uploader
        .store(
            state.store.as_ref(),
            who.owner(),
            &picture,
            super::STORE_TIMEOUT,
        )
        .await?)
}

/// The picture in a `multipart/form-data` body (already read, under the cap):
/// the field named `image`, else the first file. Parsed with multer directly, so
/// axum's 2 MiB default for its own extractor does not apply.
async fn picture_from_multipart(
    content_type: &str,
    body: bytes::Bytes,
) -> Result<(Option<String>, bytes::Bytes), ApiError> {
    let bad = |m: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-multipart", m).with_field("image")
    };
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| bad(format!("not a multipart/form-data body: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut first_file = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| bad(format!("broken multipart body: {e}")))?
    {
        let named_image = field.name() == Some("image");
        let is_file = field.file_name().is_some();
        if !(named_image || is_file) {
            continue;
        }
        let ct = field.content_type().map(|m| m.to_string());
        let data = field
            .bytes()
            .await
            .map_err(|e| bad(format!("broken multipart body: {e}")))?;
        if named_image {
            return Ok((ct, data));
        }
        if first_file.is_none() {
            first_file = Some((ct, data));
        }
    }
    first_file.ok_or_else(|| {
        bad("no file in the form: send the picture in a field named \"image\"".into())
    })
}
