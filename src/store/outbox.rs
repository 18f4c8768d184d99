//! The webhook outbox: records written before their job is queued, claimed under a lease by deliverers.

use std::time::Duration;

use async_trait::async_trait;

use super::{StoreError, StoreSettings};
use crate::job::JobId;
use crate::webhooks::WebhookRecord;

/// The webhook outbox: records written before their job is queued, claimed under a lease by
/// deliverers. Safe to call from many tasks and processes at once.
#[async_trait]
pub trait WebhookOutbox: Send + Sync + 'static {
    /// Puts job `id`'s webhook record in the outbox, due at `due_ms` (ms since the
    /// epoch); `false` (nothing written) when the outbox holds `cap.total`
    /// entries, [`super::Refusal::WebhookQuota`] when the record's owner has
    /// `cap.per_owner` waiting.
    async fn put_webhook(
        &self,
        id: &JobId,
        rec: &WebhookRecord,
        due_ms: u64,
        cap: OutboxCap,
    ) -> Result<bool, StoreError>;

    /// Job `id`'s webhook record, if it has one.
    async fn get_webhook(&self, id: &JobId) -> Result<Option<WebhookRecord>, StoreError>;

    /// Takes up to `max` due webhooks, each under a lease of `lease` (then it is
    /// due again, for another worker).
    async fn claim_webhooks(
        &self,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedWebhook>, StoreError>;

    /// Writes what a delivery did and when the webhook is due again (`None`: out
    /// of the outbox), if `claimed`'s lease is still held; `false` otherwise.
    async fn settle_webhook(
        &self,
        claimed: &ClaimedWebhook,
        rec: &WebhookRecord,
        due_ms: Option<u64>,
    ) -> Result<bool, StoreError>;

    /// Makes job `id`'s webhook due now (its job changed), unless it is held.
    async fn wake_webhook(&self, id: &JobId) -> Result<(), StoreError>;

    /// Forgets job `id`'s webhook (its job was refused, so it never existed).
    async fn delete_webhook(&self, id: &JobId) -> Result<(), StoreError>;
}

/// Bounds on the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxCap {
    /// Entries in all (`--webhook-max-pending`).
    pub total: u64,
    /// Entries of one owner (`--webhook-max-pending-per-key`).
    pub per_owner: u64,
}

/// A webhook a worker took from the outbox.
#[derive(Clone, Debug)]
pub struct ClaimedWebhook {
    pub job_id: JobId,
    pub record: WebhookRecord,
    /// The lease's end (ms since the epoch), which also names it.
    pub lease: u64,
}

/// How long a webhook record lives: its job's time to live, and then some, so
/// the retries of a job that expired meanwhile can still be made and seen.
pub fn webhook_ttl(settings: &StoreSettings) -> Duration {
    settings.job_ttl + crate::webhooks::RECORD_EXTRA_TTL
}
