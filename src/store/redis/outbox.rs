//! The webhook outbox on Redis: a record hash per job and one sorted set of job
//! ids by due time, both in the queue's slot (`lua/webhook_*.lua`).

use std::time::Duration;

use async_trait::async_trait;

use super::RedisStore;
use crate::clock;
use crate::job::JobId;
use crate::store::{ClaimedWebhook, OutboxCap, Refusal, StoreError, WebhookOutbox, webhook_ttl};
use crate::webhooks::WebhookRecord;

fn to_json(rec: &WebhookRecord) -> Result<String, StoreError> {
    serde_json::to_string(rec).map_err(|e| StoreError::Internal(e.to_string()))
}

#[async_trait]
impl WebhookOutbox for RedisStore {
    async fn put_webhook(
        &self,
        id: &JobId,
        rec: &crate::webhooks::WebhookRecord,
        due_ms: u64,
        cap: OutboxCap,
    ) -> Result<bool, StoreError> {
        let mut inv = self.scripts.webhook_put.prepare_invoke();
        inv.key(self.keys.webhook(id.as_str()))
            .key(self.keys.webhooks())
            .key(self.keys.webhook_owners())
            .key(self.keys.webhooks_of(&rec.owner))
            .arg(to_json(rec)?)
            .arg(due_ms)
            .arg(self.webhook_ttl_ms())
            .arg(cap.total)
            .arg(id.as_str())
            .arg(&rec.owner)
            .arg(cap.per_owner);
        let mut conn = self.conn.clone();
        let put: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        if put == -1 {
            return Err(StoreError::Refused(Refusal::WebhookQuota {
                limit: cap.per_owner,
            }));
        }
        Ok(put == 1)
    }

    async fn get_webhook(
        &self,
        id: &JobId,
    ) -> Result<Option<crate::webhooks::WebhookRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = self
            .run(
                ::redis::cmd("HGET")
                    .arg(self.keys.webhook(id.as_str()))
                    .arg("rec")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    async fn claim_webhooks(
        &self,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedWebhook>, StoreError> {
        let mut inv = self.scripts.webhook_claim.prepare_invoke();
        inv.key(self.keys.webhooks())
            .key(self.keys.webhook_owners())
            .arg(clock::now_ms())
            .arg(lease.as_millis() as u64)
            .arg(max)
            .arg(self.keys.webhook(""))
            .arg(self.keys.webhooks_of(""));
        let mut conn = self.conn.clone();
        let flat: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(flat
            .chunks_exact(3)
            .filter_map(|c| {
                Some(ClaimedWebhook {
                    job_id: JobId::parse(&c[0]).ok()?,
                    record: serde_json::from_str(&c[1]).ok()?,
                    lease: c[2].parse().ok()?,
                })
            })
            .collect())
    }

    async fn settle_webhook(
        &self,
        claimed: &ClaimedWebhook,
        rec: &crate::webhooks::WebhookRecord,
        due_ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        let id = claimed.job_id.as_str();
        let mut inv = self.scripts.webhook_settle.prepare_invoke();
        inv.key(self.keys.webhook(id))
            .key(self.keys.webhooks())
            .key(self.keys.webhook_owners())
            .arg(to_json(rec)?)
            .arg(due_ms.map(|d| d.to_string()).unwrap_or_default())
            .arg(self.webhook_ttl_ms())
            .arg(id)
            .arg(claimed.lease.to_string())
            .arg(self.keys.webhooks_of(""));
        let mut conn = self.conn.clone();
        let done: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }

    async fn wake_webhook(&self, id: &JobId) -> Result<(), StoreError> {
        let mut inv = self.scripts.webhook_wake.prepare_invoke();
        inv.key(self.keys.webhook(id.as_str()))
            .key(self.keys.webhooks())
            .arg(clock::now_ms())
            .arg(id.as_str());
        let mut conn = self.conn.clone();
        let _: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn delete_webhook(&self, id: &JobId) -> Result<(), StoreError> {
        let mut inv = self.scripts.webhook_delete.prepare_invoke();
        inv.key(self.keys.webhook(id.as_str()))
            .key(self.keys.webhooks())
            .key(self.keys.webhook_owners())
            .arg(id.as_str())
            .arg(self.keys.webhooks_of(""));
        let mut conn = self.conn.clone();
        let _: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }
}

impl RedisStore {
    fn webhook_ttl_ms(&self) -> u64 {
        webhook_ttl(&self.settings).as_millis() as u64
    }
}
