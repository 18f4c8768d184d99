//! The webhook outbox. (SQLite)

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::clock;
use crate::job::JobId;
use crate::store::{ClaimedWebhook, OutboxCap, Refusal, StoreError, WebhookOutbox, webhook_ttl};
use crate::webhooks::WebhookRecord;

fn to_json(rec: &WebhookRecord) -> Result<String, StoreError> {
    serde_json::to_string(rec).map_err(|e| StoreError::Internal(e.to_string()))
}

#[async_trait]
impl WebhookOutbox for SqliteStore {
    async fn put_webhook(
        &self,
        id: &JobId,
        rec: &crate::webhooks::WebhookRecord,
        due_ms: u64,
        cap: OutboxCap,
    ) -> Result<bool, StoreError> {
        let (id, json) = (id.as_str().to_owned(), to_json(rec)?);
        let owner = rec.owner.clone();
        let now = clock::now_ms() as i64;
        let expires = self.webhook_expiry(now);
        self.write(move |conn| {
            // Expired records go a few at a time, so the table does not grow for ever.
            conn.execute(
                "DELETE FROM webhooks WHERE rowid IN \
                 (SELECT rowid FROM webhooks WHERE expires_ms < ?1 LIMIT 100)",
                params![now],
            )?;
            let known: bool = conn
                .query_row(
                    "SELECT 1 FROM webhooks WHERE job_id = ?1 AND due_ms IS NOT NULL",
                    params![id],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if !known {
                let pending: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM webhooks WHERE due_ms IS NOT NULL",
                    [],
                    |r| r.get(0),
                )?;
                if pending as u64 >= cap.total {
                    return Ok((Some(false), Vec::new()));
                }
                let mine: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM webhooks WHERE owner = ?1 AND due_ms IS NOT NULL",
                    params![owner],
                    |r| r.get(0),
                )?;
                if mine as u64 >= cap.per_owner {
                    return Ok((None, Vec::new()));
                }
            }
            conn.execute(
                "INSERT INTO webhooks (job_id, record, due_ms, lease_ms, expires_ms, owner) \
                 VALUES (?1, ?2, ?3, 0, ?4, ?5) \
                 ON CONFLICT(job_id) DO UPDATE SET record = excluded.record, \
                 due_ms = excluded.due_ms, lease_ms = 0, expires_ms = excluded.expires_ms, \
                 owner = excluded.owner",
                params![id, json, super::sql_ms(due_ms), expires, owner],
            )?;
            Ok((Some(true), Vec::new()))
        })
        .await?
        .ok_or(StoreError::Refused(Refusal::WebhookQuota {
            limit: cap.per_owner,
        }))
    }

    async fn get_webhook(
        &self,
        id: &JobId,
    ) -> Result<Option<crate::webhooks::WebhookRecord>, StoreError> {
        let id = id.as_str().to_owned();
        let now = clock::now_ms() as i64;
        let json: Option<String> = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT record FROM webhooks WHERE job_id = ?1 AND expires_ms >= ?2",
                )?
                .query_row(params![id, now], |r| r.get(0))
                .optional()
            })
            .await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    async fn claim_webhooks(
        &self,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedWebhook>, StoreError> {
        let now = clock::now_ms() as i64;
        let till = now + lease.as_millis() as i64;
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM webhooks WHERE due_ms IS NOT NULL AND expires_ms < ?1",
                params![now],
            )?;
            let rows: Vec<(String, String)> = conn
                .prepare_cached(
                    "SELECT job_id, record FROM webhooks WHERE due_ms <= ?1 \
                     ORDER BY due_ms LIMIT ?2",
                )?
                .query_map(params![now, max as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut claimed = Vec::with_capacity(rows.len());
            for (id, json) in rows {
                conn.execute(
                    "UPDATE webhooks SET due_ms = ?2, lease_ms = ?2 WHERE job_id = ?1",
                    params![id, till],
                )?;
                if let (Ok(job_id), Ok(record)) = (JobId::parse(&id), serde_json::from_str(&json)) {
                    claimed.push(ClaimedWebhook {
                        job_id,
                        record,
                        lease: till as u64,
                    });
                }
            }
            Ok((claimed, Vec::new()))
        })
        .await
    }

    async fn settle_webhook(
        &self,
        claimed: &ClaimedWebhook,
        rec: &crate::webhooks::WebhookRecord,
        due_ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        let (id, json) = (claimed.job_id.as_str().to_owned(), to_json(rec)?);
        let lease = claimed.lease as i64;
        let expires = self.webhook_expiry(clock::now_ms() as i64);
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE webhooks SET record = ?2, due_ms = ?3, lease_ms = 0, expires_ms = ?4 \
                 WHERE job_id = ?1 AND lease_ms = ?5",
                params![id, json, due_ms.map(|d| d as i64), expires, lease],
            )?;
            Ok((n == 1, Vec::new()))
        })
        .await
    }

    async fn wake_webhook(&self, id: &JobId) -> Result<(), StoreError> {
        let id = id.as_str().to_owned();
        let now = clock::now_ms() as i64;
        self.write(move |conn| {
            conn.execute(
                "UPDATE webhooks SET due_ms = ?2 WHERE job_id = ?1 \
                 AND due_ms > ?2 AND lease_ms <= ?2",
                params![id, now],
            )?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn delete_webhook(&self, id: &JobId) -> Result<(), StoreError> {
        let id = id.as_str().to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM webhooks WHERE job_id = ?1", params![id])?;
            Ok(((), Vec::new()))
        })
        .await
    }
}

impl SqliteStore {
    fn webhook_expiry(&self, now: i64) -> i64 {
        now + webhook_ttl(&self.settings).as_millis() as i64
    }
}
