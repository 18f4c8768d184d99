//! Batch records in the embedded store: one row per batch (JSON), expiring with
//! the job time to live.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, internal};
use crate::clock;
use crate::job::BatchRecord;
use crate::store::{Batches, StoreError};

#[async_trait]
impl Batches for SqliteStore {
    async fn put_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(batch).map_err(internal)?;
        let id = batch.id.clone();
        let now = clock::now_ms() as i64;
        let expires = now + self.ttl_ms();
        self.write(move |conn| {
            // Expired records go a few at a time, so the table does not grow for ever.
            conn.execute(
                "DELETE FROM batches WHERE rowid IN \
                 (SELECT rowid FROM batches WHERE expires_ms < ?1 LIMIT 100)",
                params![now],
            )?;
            conn.execute(
                "INSERT OR REPLACE INTO batches (id, record, expires_ms) VALUES (?1, ?2, ?3)",
                params![id, json, expires],
            )?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn get_batch(&self, id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let id = id.to_owned();
        let now = clock::now_ms() as i64;
        let json: Option<String> = self
            .read(move |c| {
                c.prepare_cached("SELECT record FROM batches WHERE id = ?1 AND expires_ms >= ?2")?
                    .query_row(params![id, now], |r| r.get(0))
                    .optional()
            })
            .await?;
        json.map(|j| serde_json::from_str(&j).map_err(internal))
            .transpose()
    }

    async fn delete_batch(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM batches WHERE id = ?1", params![id])?;
            Ok(((), Vec::new()))
        })
        .await
    }
}
