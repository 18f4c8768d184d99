//! What jobs need and what backends offer: requirement sets, workers' backend reports, capability offers.

use std::time::Duration;

use async_trait::async_trait;

use super::{StoreError, WorkerId};

/// What jobs need and what backends offer: requirement sets, workers' backend reports,
/// capability offers. Safe to call from many tasks and processes at once.
#[async_trait]
pub trait Routing: Send + Sync + 'static {
    /// Registers a requirement set (its fingerprint and JSON) so dispatchers can
    /// judge it; `false` when the registry is full ([`MAX_REQUIREMENT_SETS`]) and
    /// the set is not in it (its jobs then go unrouted).
    async fn register_requirements(&self, fp: &str, json: &str) -> Result<bool, StoreError>;

    /// Every registered requirement set: (fingerprint, JSON).
    async fn requirement_sets(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// Publishes how a worker's backends are doing (a JSON array), replacing its
    /// last report. Readers ignore reports older than the worker TTL.
    async fn report_backends(&self, worker: &WorkerId, report: &str) -> Result<(), StoreError>;

    /// Every worker's report younger than the worker TTL: (worker, report).
    async fn backend_reports(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// Keeps a backend offer (capabilities JSON) under its fingerprint for `ttl`
    /// (workers put it again well within that while the backend lives).
    async fn put_capabilities(&self, fp: &str, json: &str, ttl: Duration)
    -> Result<(), StoreError>;

    /// An offer by its fingerprint.
    async fn get_capabilities(&self, fp: &str) -> Result<Option<String>, StoreError>;
}

/// The most requirement sets a store registers. Sets come from workflows times
/// the model files the backends offer, so a farm has tens or hundreds; this bound
/// is for submissions accepted before any backend reported (then any file name
/// passes).
pub const MAX_REQUIREMENT_SETS: usize = 10_000;

/// Says, once a minute at most (a flood of such jobs must not flood the log),
/// that the registry is full and jobs with new sets go to any backend.
pub fn warn_registry_full(fp: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WARNED_MS: AtomicU64 = AtomicU64::new(0);
    let now = crate::clock::now_ms();
    let last = WARNED_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60_000
        && WARNED_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            requirement_set = %fp,
            "the requirement-set registry is full: jobs with new sets go to any backend"
        );
    }
}
