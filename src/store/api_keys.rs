//! API keys, the URL-signing secret and the rate limits shared by every process.

use async_trait::async_trait;

use super::StoreError;
use crate::auth::ApiKey;
use crate::auth::rate::{RateCheck, RateDecision};

/// API keys, the URL-signing secret and the rate limits shared by every process. Safe to
/// call from many tasks and processes at once.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores an API key (a new one, or a new version of one).
    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// An API key by id, revoked ones included.
    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Every API key, oldest first.
    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// The secret that signs image URLs (32 random bytes, hex) made by the first
    /// process that asks, the same for every process after.
    async fn server_secret(&self) -> Result<Vec<u8>, StoreError>;

    /// One request against a rate limit shared by every process using this store:
    /// `rate` per second, `burst` at once, counted in `bucket`.
    async fn rate_limit(
        &self,
        bucket: &str,
        rate: f64,
        burst: u32,
    ) -> Result<RateDecision, StoreError>;
}

/// Counts a request against its rate limit in a store call of its own (where it
/// cannot go with the request's work), recording the decision in `check`:
/// `Err(Refused(RateLimited))` when the limit refuses.
pub async fn count_apart<K: KeyStore + ?Sized>(
    keys: &K,
    check: &RateCheck,
) -> Result<(), StoreError> {
    let d = keys
        .rate_limit(&check.bucket, check.rate, check.burst)
        .await?;
    check.decide(d);
    if d.allowed {
        Ok(())
    } else {
        Err(StoreError::Refused(super::Refusal::RateLimited))
    }
}
