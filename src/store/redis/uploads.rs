//! Upload records. (Redis)

use std::time::Duration;

use super::RedisStore;
use crate::store::{StoreError, Uploads};
use async_trait::async_trait;

#[async_trait]
impl Uploads for RedisStore {
    async fn put_upload(
        &self,
        rec: &crate::uploads::UploadRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("SET")
                .arg(self.keys.upload(&rec.owner, &rec.upload_id))
                .arg(json)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    async fn get_upload(
        &self,
        owner: &str,
        id: &str,
        extend: Option<Duration>,
    ) -> Result<Option<crate::uploads::UploadRecord>, StoreError> {
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
            self.run(
                ::redis::cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl.as_millis().max(1) as u64)
                    .query_async::<i64>(&mut conn),
            )
            .await?;
        }
        Ok(serde_json::from_str(&json).ok())
    }
}
