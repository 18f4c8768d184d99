//! What a store operation that did not happen says.

/// A store operation that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time; try again later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered, but with something we did not expect.
    #[error("store error: {0}")]
    Internal(String),
    /// The store is fine, but a limit refuses the operation (the caller's answer,
    /// not an outage).
    #[error("refused: {0}")]
    Refused(Refusal),
}

/// A limit that refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The queue holds `limit` waiting jobs already.
    #[error("the queue is full ({limit} jobs waiting)")]
    QueueFull { limit: u64 },
    /// The owner has its `limit` of waiting jobs already.
    #[error("the key's quota of waiting jobs is used ({limit})")]
    QuotaFull { limit: u32 },
    /// The owner's live uploads would go over its quota (`what`: the bound, in
    /// words).
    #[error("the key's upload quota is used ({what})")]
    UploadQuota { what: String },
    /// [`super::MAX_WORKFLOWS`] names are published already.
    #[error("{limit} workflows are published already")]
    TooManyWorkflows { limit: u64 },
    /// The owner has its `limit` of webhooks waiting to be delivered already.
    #[error("the key's quota of pending webhooks is used ({limit})")]
    WebhookQuota { limit: u64 },
    /// The request's rate limit, counted with the operation, refuses it (its
    /// decision is in the [`crate::auth::rate::RateCheck`]).
    #[error("the rate limit refuses the request")]
    RateLimited,
}

impl StoreError {
    /// Whether the same call may succeed later (the store is down, not broken).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Runs a store call, giving up with [`StoreError::Unavailable`] after `limit`
/// (the Redis store times out each command sooner; this also bounds the
/// embedded store and calls made of several commands).
pub async fn within<T>(
    limit: std::time::Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "the job store did not answer within {} s",
            limit.as_secs_f64()
        ))),
    }
}
