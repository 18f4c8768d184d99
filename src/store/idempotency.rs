//! `Idempotency-Key` scopes, taken atomically across processes.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::job::JobId;

/// `Idempotency-Key` scopes, taken atomically across processes. Safe to call from many
/// tasks and processes at once.
#[async_trait]
pub trait Idempotency: Send + Sync + 'static {
    /// Takes an idempotency scope (an owner's `Idempotency-Key`, hashed) for
    /// `claim` unless another request took it first: `None` when this call took it,
    /// else what holds it. Atomic across every process on the store; a record
    /// lives [`IDEMPOTENCY_TTL`], or the job TTL if that is shorter (so while a key
    /// is held, its job's record, if it was ever made, is still there).
    async fn take_idempotency(
        &self,
        scope: &str,
        claim: &IdempotencyClaim,
    ) -> Result<Option<IdempotencyClaim>, StoreError>;

    /// Gives a scope back: the job it was taken for was refused, so a retry may
    /// succeed later.
    async fn release_idempotency(&self, scope: &str) -> Result<(), StoreError>;

    /// Hands a scope from `held` (as it was read) to `claim`, if it still holds
    /// `held`: a key whose job never reached the store (a crash in between).
    async fn replace_idempotency(
        &self,
        scope: &str,
        held: &IdempotencyClaim,
        claim: &IdempotencyClaim,
    ) -> Result<bool, StoreError>;
}

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// What an `Idempotency-Key` stands for: the request's fingerprint, what its
/// first answer said (so a replay answers the same), and when it was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// SHA-256 (hex) of the request body in canonical JSON.
    pub fingerprint: String,
    pub job_id: JobId,
    pub seed: u64,
    pub workflow: String,
    /// Milliseconds since the epoch when the key was taken.
    pub taken_ms: u64,
}

impl IdempotencyClaim {
    /// `fingerprint job_id seed taken_ms workflow`, as both stores keep it.
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.fingerprint,
            self.job_id.as_str(),
            self.seed,
            self.taken_ms,
            self.workflow
        )
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.splitn(5, ' ');
        Some(IdempotencyClaim {
            fingerprint: parts.next()?.to_owned(),
            job_id: JobId::parse(parts.next()?).ok()?,
            seed: parts.next()?.parse().ok()?,
            taken_ms: parts.next()?.parse().ok()?,
            workflow: parts.next()?.to_owned(),
        })
    }
}
