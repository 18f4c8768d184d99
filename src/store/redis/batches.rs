//! Batch records on Redis: one string per batch (`studio:batch:<id>`, JSON),
//! expiring with the job time to live.

use async_trait::async_trait;

use super::RedisStore;
use crate::job::BatchRecord;
use crate::store::{Batches, StoreError};

#[async_trait]
impl Batches for RedisStore {
    async fn put_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(batch).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("SET")
                .arg(self.keys.batch(&batch.id))
                .arg(json)
                .arg("EX")
                .arg(self.ttl_secs())
                .query_async::<()>(&mut conn),
        )
        .await?;
        self.replicated().await
    }

    async fn get_batch(&self, id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = self
            .run(
                ::redis::cmd("GET")
                    .arg(self.keys.batch(id))
                    .query_async(&mut conn),
            )
            .await?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| StoreError::Internal(e.to_string())))
            .transpose()
    }

    async fn delete_batch(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("DEL")
                .arg(self.keys.batch(id))
                .query_async::<()>(&mut conn),
        )
        .await
    }
}
