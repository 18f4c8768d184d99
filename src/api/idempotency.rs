//! `Idempotency-Key` on `POST /api/generate`: a client that retries a submission
//! (a timeout, a dropped connection) with the same key and body gets the first
//! answer again instead of a second job. The key is scoped to the API key that
//! sent it (anonymous callers share one scope), remembered for 24 hours in the
//! store, so every API process sees it; the same key with a different body is
//! `422 idempotency-key-reuse`. Two requests racing with one key make one job: the
//! store takes the key atomically before the job is queued.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::store::{Idempotency, IdempotencyClaim};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The answer's header on a replay.
pub const REPLAYED: &str = "idempotent-replayed";
/// Longest key accepted (the IETF draft leaves it open; Stripe takes 255).
pub const MAX_KEY_LEN: usize = 255;

/// The header's value, if sent: 1–255 visible ASCII characters.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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
    if s.is_empty() || s.len() > MAX_KEY_LEN {
        return Err(bad(&format!("must be 1 to {MAX_KEY_LEN} characters")));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("must be visible ASCII without spaces"));
    }
    Ok(Some(s.to_owned()))
}

/// The store's name for an owner's key: neither is kept in the clear.
pub fn scope(owner: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(owner.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    crate::auth::hex(&h.finalize())
}

/// SHA-256 of the body in canonical JSON (keys sorted, no spaces): the same
/// submission written with its fields in another order is the same request.
pub fn fingerprint(body: &Value) -> String {
    // serde_json's map is ordered by key, so its compact form is canonical.
    crate::auth::hex(&Sha256::digest(body.to_string().as_bytes()))
}

/// What taking the key decided.
pub enum Taken {
    /// This request holds the key: queue its job (and give the key back if that fails).
    Fresh,
    /// An earlier request with this key and body: answer what it was answered.
    Replay(IdempotencyClaim),
}

/// A key held this long whose job is not in the store never got one: the process
/// that took it died (or lost the store) before queueing it. Queueing takes a
/// second or two at most.
pub const ORPHANED_AFTER: Duration = Duration::from_secs(5);

/// Takes the key for `claim`, or finds the request that has it.
pub async fn take(
    state: &AppState,
    scope: &str,
    claim: &IdempotencyClaim,
) -> Result<Taken, ApiError> {
    // A holder whose job is not in the store yet may be one still queueing it, or
    // one whose job was refused and that is about to give the key back: wait a
    // little for either before deciding.
    let store = state.store.as_ref();
    let mut held = None;
    for attempt in 0..3 {
        let Some(h) = state
            .with_timeout(store.take_idempotency(scope, claim))
            .await?
        else {
            return Ok(Taken::Fresh);
        };
        if h.fingerprint != claim.fingerprint {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reuse",
                "this Idempotency-Key was used with a different request body in the last 24 hours",
            )
            .with_field("Idempotency-Key"));
        }
        // The key lives no longer than the job's record: if the job was made, it
        // is there.
        if state.with_timeout(store.get(&h.job_id)).await?.is_some() {
            return Ok(Taken::Replay(h));
        }
        held = Some(h);
        if attempt < 2 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let held = held.expect("set in the loop");
    let age = crate::clock::now_ms().saturating_sub(held.taken_ms);
    if age >= ORPHANED_AFTER.as_millis() as u64
        && state
            .with_timeout(store.replace_idempotency(scope, &held, claim))
            .await?
    {
        tracing::warn!(job_id = %held.job_id, "an Idempotency-Key whose job never reached the store is taken over");
        return Ok(Taken::Fresh);
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "idempotency-key-in-progress",
        "a request with this Idempotency-Key is still being handled; try again in a second",
    )
    .with_field("Idempotency-Key")
    .retry_after(1))
}

/// Gives the key back after the job was refused; best effort (it expires anyway).
pub async fn release(store: &dyn Idempotency, scope: &str) {
    if let Err(e) = store.release_idempotency(scope).await {
        tracing::warn!(error = %e, "could not release an idempotency key");
    }
}
