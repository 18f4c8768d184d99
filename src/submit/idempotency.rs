//! `Idempotency-Key`: a client that retries a submission (a timeout, a dropped
//! connection) with the same key and body gets the first answer again instead
//! of a second job. The key is scoped to the API key that sent it (anonymous
//! callers share one scope), remembered for 24 hours in the store, so every API
//! process sees it; the same key with a different body is refused. Two requests
//! racing with one key make one job: the store takes the key atomically before
//! the job is queued.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Rejection, SubmitError, Submitter};
use crate::auth::hex;
use crate::store::{Idempotency, IdempotencyClaim};

/// Longest key accepted (the IETF draft leaves it open; Stripe takes 255).
pub const MAX_KEY_LEN: usize = 255;

/// A key held this long whose job is not in the store never got one: the
/// process that took it died (or lost the store) before queueing it. Queueing
/// takes a second or two at most.
pub const ORPHANED_AFTER: Duration = Duration::from_secs(5);

/// A client's `Idempotency-Key`: 1–255 visible ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a key as sent; the reason when it is not one.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_KEY_LEN {
            return Err(format!("must be 1 to {MAX_KEY_LEN} characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be visible ASCII without spaces".into());
        }
        Ok(IdempotencyKey(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The store's name for an owner's key: neither is kept in the clear.
pub fn scope(owner: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(owner.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    hex(&h.finalize())
}

/// SHA-256 of the body in canonical JSON (keys sorted, no spaces): the same
/// submission written with its fields in another order is the same request.
pub fn fingerprint(body: &Value) -> String {
    // serde_json's map is ordered by key, so its compact form is canonical.
    hex(&Sha256::digest(body.to_string().as_bytes()))
}

impl Submitter {
    /// Takes the key for `claim` (`None`: this request holds it now), or finds
    /// the earlier request that has it (`Some`: answer what it was answered).
    pub(super) async fn take_idempotency(
        &self,
        scope: &str,
        claim: &IdempotencyClaim,
    ) -> Result<Option<IdempotencyClaim>, SubmitError> {
        // A holder whose job is not in the store yet may be one still queueing
        // it, or one whose job was refused and that is about to give the key
        // back: wait a little for either before deciding.
        let store = self.store.as_ref();
        let mut attempt = 0;
        let held = loop {
            let Some(h) = self.within(store.take_idempotency(scope, claim)).await? else {
                return Ok(None);
            };
            if h.fingerprint != claim.fingerprint {
                return Err(Rejection::new(
                    422,
                    "idempotency-key-reuse",
                    "this Idempotency-Key was used with a different request body in the last 24 hours",
                )
                .field("Idempotency-Key")
                .into());
            }
            // The key lives no longer than the job's record: if the job was
            // made, it is there.
            if self.within(store.get(&h.job_id)).await?.is_some() {
                return Ok(Some(h));
            }
            attempt += 1;
            if attempt == 3 {
                break h;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let age = crate::clock::now_ms().saturating_sub(held.taken_ms);
        if age >= ORPHANED_AFTER.as_millis() as u64
            && self
                .within(store.replace_idempotency(scope, &held, claim))
                .await?
        {
            tracing::warn!(job_id = %held.job_id, "an Idempotency-Key whose job never reached the store is taken over");
            return Ok(None);
        }
        Err(Rejection::new(
            409,
            "idempotency-key-in-progress",
            "a request with this Idempotency-Key is still being handled; try again in a second",
        )
        .field("Idempotency-Key")
        .retry_after(1)
        .into())
    }
}

/// Gives the key back after the job was refused; best effort (it expires anyway).
pub(super) async fn release(store: &dyn Idempotency, scope: &str) {
    if let Err(e) = store.release_idempotency(scope).await {
        tracing::warn!(error = %e, "could not release an idempotency key");
    }
}
