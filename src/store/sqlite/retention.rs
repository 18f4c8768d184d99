//! Stored outputs in the embedded store: a row per job with its files, when
//! they may go, and their bytes (summed per owner).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, internal};
use crate::store::{Retention, StoreError, StoredOutputs};

#[async_trait]
impl Retention for SqliteStore {
    async fn keep_outputs(&self, o: &StoredOutputs, due_ms: u64) -> Result<(), StoreError> {
        let files = serde_json::to_string(&o.files).map_err(internal)?;
        let o = o.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO outputs (job_id, owner, files, bytes, due_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT(job_id) DO NOTHING",
                params![o.job_id, o.owner, files, o.bytes as i64, super::sql_ms(due_ms)],
            )?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn due_outputs(&self, now_ms: u64, max: usize) -> Result<Vec<StoredOutputs>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT job_id, owner, files, bytes FROM outputs WHERE due_ms <= ?1 ORDER BY due_ms LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![super::sql_ms(now_ms), max as i64], |r| {
                let files: String = r.get(2)?;
                Ok(StoredOutputs {
                    job_id: r.get(0)?,
                    owner: r.get(1)?,
                    files: serde_json::from_str(&files).unwrap_or_default(),
                    bytes: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn postpone_outputs(&self, job_id: &str, due_ms: u64) -> Result<(), StoreError> {
        let id = job_id.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE outputs SET due_ms = ?2 WHERE job_id = ?1",
                params![id, super::sql_ms(due_ms)],
            )?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn forget_outputs(&self, job_id: &str) -> Result<Option<StoredOutputs>, StoreError> {
        let id = job_id.to_owned();
        self.write(move |conn| {
            let row = conn
                .query_row(
                    "DELETE FROM outputs WHERE job_id = ?1 RETURNING owner, files, bytes",
                    params![id],
                    |r| {
                        let files: String = r.get(1)?;
                        Ok(StoredOutputs {
                            job_id: id.clone(),
                            owner: r.get(0)?,
                            files: serde_json::from_str(&files).unwrap_or_default(),
                            bytes: r.get::<_, i64>(2)?.max(0) as u64,
                        })
                    },
                )
                .optional()?;
            Ok((row, Vec::new()))
        })
        .await
    }

    async fn stored_bytes(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_owned();
        self.read(move |c| {
            c.prepare_cached("SELECT COALESCE(SUM(bytes), 0) FROM outputs WHERE owner = ?1")?
                .query_row(params![owner], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        })
        .await
    }

    async fn delete_job(&self, job_id: &str) -> Result<bool, StoreError> {
        let id = job_id.to_owned();
        self.write(move |conn| {
            let n = conn.execute("DELETE FROM jobs WHERE id = ?1", params![id])?;
            Ok((n == 1, Vec::new()))
        })
        .await
    }
}
