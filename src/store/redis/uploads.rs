//! Upload records on Redis: each owner's record under its own key with a TTL (the
//! layout of earlier versions), the owner's usage for its quota in a slot of its
//! own (`lua/upload_usage.lua`), and the upload files' index in the queue's slot.

use std::time::Duration;

use async_trait::async_trait;

use super::RedisStore;
use crate::clock;
use crate::store::{Refusal, StoreError, UploadQuota, Uploads};
use crate::uploads::UploadRecord;

impl RedisStore {
    /// Notes that a record names upload file `id` until `until_ms` (never
    /// earlier than it was: `GT` adds a new member, and raises only).
    async fn name_upload_file(&self, id: &str, until_ms: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("ZADD")
                .arg(self.keys.upload_files())
                .arg("GT")
                .arg(until_ms)
                .arg(id)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Uploads for RedisStore {
    async fn put_upload(
        &self,
        rec: &UploadRecord,
        ttl: Duration,
        quota: &UploadQuota,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| StoreError::Internal(e.to_string()))?;
        let now = clock::now_ms();
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let (exp, size) = self.keys.upload_usage(&rec.owner);
        let mut inv = self.scripts.upload_usage.prepare_invoke();
        inv.key(exp)
            .key(size)
            .arg(&rec.upload_id)
            .arg(rec.size)
            .arg(now + ttl_ms)
            .arg(now)
            .arg(quota.max_bytes)
            .arg(quota.max_count);
        let mut conn = self.conn.clone();
        let used: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        match used {
            -1 => {
                return Err(StoreError::Refused(Refusal::UploadQuota {
                    what: format!("{} uploads at once", quota.max_count),
                }));
            }
            -2 => {
                return Err(StoreError::Refused(Refusal::UploadQuota {
                    what: format!("{} bytes of uploads at once", quota.max_bytes),
                }));
            }
            _ => {}
        }
        self.name_upload_file(&rec.upload_id, now + ttl_ms).await?;
        self.run(
            ::redis::cmd("SET")
                .arg(self.keys.upload(&rec.owner, &rec.upload_id))
                .arg(json)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    async fn get_upload(
        &self,
        owner: &str,
        id: &str,
        extend: Option<Duration>,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let key = self.keys.upload(owner, id);
        let mut conn = self.conn.clone();
        let json: Option<String> = self
            .run(::redis::cmd("GET").arg(&key).query_async(&mut conn))
            .await?;
        let Some(json) = json else { return Ok(None) };
        if let Some(ttl) = extend {
            // A job uses it: it lives at least as long as the job's record (it was
            // recorded with the same TTL, so this never shortens it; no `GT`, which
            // needs Redis 7).
            let ttl_ms = ttl.as_millis().max(1) as u64;
            self.run(
                ::redis::cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl_ms)
                    .query_async::<i64>(&mut conn),
            )
            .await?;
            self.name_upload_file(id, clock::now_ms() + ttl_ms).await?;
        }
        Ok(serde_json::from_str(&json).ok())
    }

    async fn expired_upload_files(
        &self,
        before_ms: u64,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.upload_files())
                .arg("-inf")
                .arg(format!("({before_ms}"))
                .arg("LIMIT")
                .arg(0)
                .arg(max)
                .query_async(&mut conn),
        )
        .await
    }

    async fn forget_upload_file(&self, id: &str, before_ms: u64) -> Result<bool, StoreError> {
        let mut inv = self.scripts.forget_file.prepare_invoke();
        inv.key(self.keys.upload_files()).arg(id).arg(before_ms);
        let mut conn = self.conn.clone();
        let removed: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(removed == 1)
    }
}
