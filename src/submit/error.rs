//! Why a submission was refused, in words every front door can answer in its own
//! shape: a status class, a stable code, a message, the field at fault.

use crate::store::StoreError;
use crate::uploads::UploadError;
use crate::workflow::request::FieldError;

/// A submission the request itself, or a limit, refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status Studio Core's own API answers (400, 403, 409, 413, 422,
    /// 429, 503); other front doors map it to theirs.
    pub status: u16,
    /// A stable kebab-case code.
    pub code: &'static str,
    pub message: String,
    /// The request field at fault.
    pub field: Option<String>,
    /// Seconds after which the same request may succeed.
    pub retry_after: Option<u64>,
}

impl Rejection {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

/// Why a submission did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request is at fault, or a limit refuses it.
    #[error("{}", .0.message)]
    Rejected(Rejection),
    /// The store (or the storage) failed or did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SubmitError {
    /// The same refusal, saying which job of a batch (counted from 0) it is about.
    pub fn in_batch(self, index: usize) -> Self {
        match self {
            SubmitError::Rejected(mut r) => {
                r.message = format!("job {index} of the batch: {}", r.message);
                SubmitError::Rejected(r)
            }
            other => other,
        }
    }
}

impl From<Rejection> for SubmitError {
    fn from(r: Rejection) -> Self {
        SubmitError::Rejected(r)
    }
}

impl From<FieldError> for SubmitError {
    fn from(e: FieldError) -> Self {
        SubmitError::Rejected(Rejection {
            status: 400,
            code: e.code,
            message: e.message,
            field: e.field,
            retry_after: None,
        })
    }
}

impl From<UploadError> for SubmitError {
    fn from(e: UploadError) -> Self {
        SubmitError::Rejected(Rejection::new(e.status, e.code, e.message).field("image"))
    }
}
