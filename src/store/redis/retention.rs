//! Stored outputs on Redis, in the queue's slot: a sorted set of jobs by when
//! their outputs may go, their files (JSON), and each owner's stored bytes.

use async_trait::async_trait;

use super::RedisStore;
use crate::store::{Retention, StoreError, StoredOutputs};

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Internal(e.to_string())
}

#[async_trait]
impl Retention for RedisStore {
    async fn keep_outputs(&self, o: &StoredOutputs, due_ms: u64) -> Result<(), StoreError> {
        let k = &self.keys;
        let mut inv = self.scripts.outputs_keep.prepare_invoke();
        inv.key(k.outputs())
            .key(k.output_files())
            .key(k.stored())
            .arg(&o.job_id)
            .arg(serde_json::to_string(o).map_err(json_err)?)
            .arg(due_ms)
            .arg(&o.owner)
            .arg(o.bytes);
        let mut conn = self.conn.clone();
        self.run(inv.invoke_async::<i64>(&mut conn)).await?;
        self.replicated().await
    }

    async fn due_outputs(&self, now_ms: u64, max: usize) -> Result<Vec<StoredOutputs>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = self
            .run(
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.outputs())
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(max)
                    .query_async(&mut conn),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = ::redis::cmd("HMGET");
        cmd.arg(self.keys.output_files());
        for id in &ids {
            cmd.arg(id);
        }
        let found: Vec<Option<String>> = self.run(cmd.query_async(&mut conn)).await?;
        let mut out = Vec::new();
        for (id, j) in ids.into_iter().zip(found) {
            match j.and_then(|j| serde_json::from_str::<StoredOutputs>(&j).ok()) {
                Some(o) => out.push(o),
                // An index entry without files: nothing to delete.
                None => {
                    let _ = self
                        .run(
                            ::redis::cmd("ZREM")
                                .arg(self.keys.outputs())
                                .arg(&id)
                                .query_async::<i64>(&mut conn),
                        )
                        .await;
                }
            }
        }
        Ok(out)
    }

    async fn postpone_outputs(&self, job_id: &str, due_ms: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("ZADD")
                .arg(self.keys.outputs())
                .arg("XX")
                .arg(due_ms)
                .arg(job_id)
                .query_async::<i64>(&mut conn),
        )
        .await
        .map(drop)
    }

    async fn forget_outputs(&self, job_id: &str) -> Result<Option<StoredOutputs>, StoreError> {
        let k = &self.keys;
        let mut inv = self.scripts.outputs_forget.prepare_invoke();
        inv.key(k.outputs())
            .key(k.output_files())
            .key(k.stored())
            .arg(job_id);
        let mut conn = self.conn.clone();
        let j: Option<String> = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(j.and_then(|j| serde_json::from_str(&j).ok()))
    }

    async fn stored_bytes(&self, owner: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let n: Option<i64> = self
            .run(
                ::redis::cmd("HGET")
                    .arg(self.keys.stored())
                    .arg(owner)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    async fn delete_job(&self, job_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        // The listings drop an entry whose record is gone when they meet it.
        let n: i64 = self
            .run(
                ::redis::cmd("DEL")
                    .arg(self.keys.status(job_id))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(n == 1)
    }
}
