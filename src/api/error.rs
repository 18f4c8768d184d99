//! The API's one error type: detailed inside (logs), stable outside (clients get
//! `{"error": "...", "code": "..."}`, plus `field` when one field is to blame).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{Refusal, StoreError};
use crate::submit::{Rejection, SubmitError};
use crate::workflow::request::FieldError;

/// An error answer: a status, a stable kebab-case code, a message for people, and
/// the request field at fault if there is one.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`), for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Tells the client when to try again.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// The store could not answer in time: 503, so clients retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            message,
        )
        .retry_after(2)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                ApiError::unavailable(format!(
                    "the job store is unavailable ({m}); try again shortly"
                ))
            }
            StoreError::Refused(r) => r.into(),
            StoreError::Internal(m) => {
                tracing::error!(error = %m, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the job store gave an unexpected answer; the error is in the server log",
                )
            }
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::QueueFull { limit } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue-full",
                format!(
                    "the queue holds its maximum of {limit} waiting jobs (--max-queued); try again later"
                ),
            )
            .retry_after(30),
            Refusal::QuotaFull { limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue-quota",
                format!(
                    "this key has its maximum of {limit} jobs waiting (its max_queued); try again when one has started"
                ),
            )
            .retry_after(10),
            Refusal::UploadQuota { what } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "upload-quota",
                format!(
                    "this key's uploads would go over its quota ({what}); uploads expire with --job-ttl, or ask for a larger --upload-quota"
                ),
            ),
            Refusal::TooManyWorkflows { limit } => ApiError::new(
                StatusCode::CONFLICT,
                "too-many-workflows",
                format!("{limit} workflows are published already; publish a new version of an existing name instead"),
            ),
            Refusal::WebhookQuota { limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "webhook-quota",
                format!(
                    "this key has {limit} webhooks waiting to be delivered already (--webhook-max-pending-per-key); try again later, or submit without webhook_url"
                ),
            )
            .retry_after(30),
            // The HTTP gate answers these itself, with the limit's figures.
            Refusal::RateLimited => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "too many requests for this key's or address's rate limit; try again shortly",
            )
            .retry_after(1),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: e.code,
            message: e.message,
            field: e.field,
            retry_after: None,
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError {
            status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            code: r.code,
            message: r.message,
            field: r.field,
            retry_after: r.retry_after,
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Rejected(r) => r.into(),
            SubmitError::Store(e) => e.into(),
        }
    }
}

/// Every error answer's body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    #[schema(example = "prompt must not be empty or only whitespace")]
    pub error: String,
    /// A stable kebab-case code, for programs.
    #[schema(example = "invalid-prompt")]
    pub code: &'static str,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "prompt")]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code,
            field: self.field,
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}
