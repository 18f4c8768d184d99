//! The `Idempotency-Key` header of `POST /api/generate`: read and checked here;
//! what it means is the submission path's ([`crate::submit`]).

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::submit::IdempotencyKey;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The answer's header on a replay.
pub const REPLAYED: &str = "idempotent-replayed";

/// The header's value, if sent: 1–255 visible ASCII characters, once.
pub fn key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::bad_request("invalid-idempotency-key", format!("Idempotency-Key {why}"))
            .with_field("Idempotency-Key")
    };
    if values.next().is_some() {
        return Err(bad("is sent more than once"));
    }
    let s = v.to_str().map_err(|_| bad("must be visible ASCII"))?;
    IdempotencyKey::parse(s).map(Some).map_err(|why| bad(&why))
}

/// `202` with `body`, saying `Idempotent-Replayed: true` when it answers an
/// earlier request with the same key.
pub fn accepted(body: impl IntoResponse, replayed: bool) -> Response {
    if replayed {
        (StatusCode::ACCEPTED, [(REPLAYED, "true")], body).into_response()
    } else {
        (StatusCode::ACCEPTED, body).into_response()
    }
}
