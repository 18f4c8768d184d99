//! A submission's webhook: which one it asks for, checked, and put in the outbox
//! before its job is queued (so no path to the job's end can miss it).

use serde_json::Value;

use super::{Rejection, SubmitError, Submitter};
use crate::clock;
use crate::job::{JobId, NewJob};
use crate::store::OutboxCap;
use crate::webhooks::{self, WebhookRecord};

/// A webhook is first due this long after its job is queued: a change of the
/// job wakes it sooner; this is the recheck if a wake-up is missed.
const FIRST_RECHECK_MS: u64 = 10_000;

impl Submitter {
    /// The webhook a submission asks for (its `webhook_url`, or the server's
    /// `--webhook-url`), checked against where webhooks may go; the default URL
    /// is written into the job's parameters, as if the submission had named it.
    pub(super) fn webhook_of(
        &self,
        job: &mut NewJob,
        owner: &str,
    ) -> Result<Option<WebhookRecord>, SubmitError> {
        let settings = &self.webhooks;
        let url = match job.params.get("webhook_url").and_then(Value::as_str) {
            Some(u) => u.to_owned(),
            None => match &settings.default_url {
                Some(u) => {
                    job.params
                        .insert("webhook_url".into(), Value::String(u.clone()));
                    u.clone()
                }
                None if job.params.contains_key("webhook_events") => {
                    return Err(Rejection::new(
                        400,
                        "invalid-webhook-events",
                        "webhook_events needs a webhook_url (this server has no --webhook-url default)",
                    )
                    .field("webhook_events")
                    .into());
                }
                None => return Ok(None),
            },
        };
        webhooks::check_url(&url, settings.allow_private).map_err(|e| {
            Rejection::new(400, "invalid-webhook-url", format!("webhook_url {e}"))
                .field("webhook_url")
        })?;
        if settings.secrets.is_empty() {
            return Err(Rejection::new(
                400,
                "webhooks-not-configured",
                "this server cannot sign webhooks: it was started without --webhook-secret",
            )
            .field("webhook_url")
            .into());
        }
        let events: Vec<String> = match job.params.get("webhook_events").and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect(),
            None => webhooks::DEFAULT_EVENTS
                .iter()
                .map(|e| e.to_string())
                .collect(),
        };
        let mut rec = WebhookRecord::new(url, events, clock::now_ms());
        rec.owner = owner.to_owned();
        Ok(Some(rec))
    }

    /// Puts a job's webhook in the outbox before the job is queued.
    pub(super) async fn put_webhook(
        &self,
        id: &JobId,
        webhook: Option<&WebhookRecord>,
    ) -> Result<(), SubmitError> {
        let Some(rec) = webhook else { return Ok(()) };
        let due = clock::now_ms() + FIRST_RECHECK_MS;
        let max = self.webhooks.max_pending;
        let cap = OutboxCap {
            total: max,
            per_owner: self.webhooks.max_pending_per_key,
        };
        if !self
            .within(self.store.put_webhook(id, rec, due, cap))
            .await?
        {
            return Err(Rejection::new(
                503,
                "webhook-outbox-full",
                format!(
                    "{max} webhooks are waiting to be delivered already (--webhook-max-pending); try again later, or submit without webhook_url"
                ),
            )
            .retry_after(30)
            .into());
        }
        Ok(())
    }

    /// Takes back the webhook of a job the store refused (a full queue, a
    /// quota), so refused submissions do not fill the outbox. Best effort: one
    /// left behind is dropped when a worker finds no job for it (after
    /// [`webhooks::ORPHAN_GRACE`]).
    pub(super) async fn forget_webhook(&self, id: &JobId, webhook: Option<&WebhookRecord>) {
        if webhook.is_some()
            && let Err(e) = self.within(self.store.delete_webhook(id)).await
        {
            tracing::debug!(job_id = %id, error = %e, "could not take back a refused job's webhook");
        }
    }
}
