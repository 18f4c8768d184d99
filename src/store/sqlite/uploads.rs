//! Upload records in the embedded store: one row per owner and upload (with its
//! size, for the quota), and the upload files' index.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::clock;
use crate::store::{Refusal, StoreError, UploadQuota, Uploads};
use crate::uploads::UploadRecord;

/// What a quota check found.
enum Quota {
    Fits,
    Over(String),
}

#[async_trait]
impl Uploads for SqliteStore {
    async fn put_upload(
        &self,
        rec: &UploadRecord,
        ttl: Duration,
        quota: &UploadQuota,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| StoreError::Internal(e.to_string()))?;
        let (owner, id, size) = (rec.owner.clone(), rec.upload_id.clone(), rec.size as i64);
        let now = clock::now_ms() as i64;
        let expires = now + ttl.as_millis() as i64;
        let quota = *quota;
        let checked = self
            .write(move |conn| {
                // Expired records go a few at a time, so none of this grows for ever.
                conn.execute(
                    "DELETE FROM uploads WHERE rowid IN \
                     (SELECT rowid FROM uploads WHERE expires_ms < ?1 LIMIT 100)",
                    params![now],
                )?;
                let held: bool = conn
                    .prepare_cached(
                        "SELECT 1 FROM uploads WHERE owner = ?1 AND id = ?2 AND expires_ms >= ?3",
                    )?
                    .query_row(params![owner, id, now], |_| Ok(()))
                    .optional()?
                    .is_some();
                if !held {
                    let (count, bytes): (i64, i64) = conn
                        .prepare_cached(
                            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM uploads \
                             WHERE owner = ?1 AND expires_ms >= ?2",
                        )?
                        .query_row(params![owner, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    if count as u64 + 1 > quota.max_count {
                        let what = format!("{} uploads at once", quota.max_count);
                        return Ok((Quota::Over(what), Vec::new()));
                    }
                    if (bytes + size) as u64 > quota.max_bytes {
                        let what = format!("{} bytes of uploads at once", quota.max_bytes);
                        return Ok((Quota::Over(what), Vec::new()));
                    }
                }
                conn.execute(
                    "INSERT INTO uploads (owner, id, record, expires_ms, size) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT(owner, id) DO UPDATE SET expires_ms = MAX(expires_ms, excluded.expires_ms)",
                    params![owner, id, json, expires, size],
                )?;
                conn.execute(
                    "INSERT INTO upload_files (id, expires_ms) VALUES (?1, ?2) \
                     ON CONFLICT(id) DO UPDATE SET expires_ms = MAX(expires_ms, excluded.expires_ms)",
                    params![id, expires],
                )?;
                Ok((Quota::Fits, Vec::new()))
            })
            .await?;
        match checked {
            Quota::Fits => Ok(()),
            Quota::Over(what) => Err(StoreError::Refused(Refusal::UploadQuota { what })),
        }
    }

    async fn get_upload(
        &self,
        owner: &str,
        id: &str,
        extend: Option<Duration>,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        let now = clock::now_ms() as i64;
        let found: Option<String> = self
            .read({
                let (owner, id) = (owner.clone(), id.clone());
                move |c| {
                    c.prepare_cached(
                        "SELECT record FROM uploads WHERE owner = ?1 AND id = ?2 AND expires_ms >= ?3",
                    )?
                    .query_row(params![owner, id, now], |r| r.get(0))
                    .optional()
                }
            })
            .await?;
        let Some(json) = found else { return Ok(None) };
        if let Some(ttl) = extend {
            let until = now + ttl.as_millis() as i64;
            self.write(move |conn| {
                conn.execute(
                    "UPDATE uploads SET expires_ms = MAX(expires_ms, ?3) WHERE owner = ?1 AND id = ?2",
                    params![owner, id, until],
                )?;
                conn.execute(
                    "INSERT INTO upload_files (id, expires_ms) VALUES (?1, ?2) \
                     ON CONFLICT(id) DO UPDATE SET expires_ms = MAX(expires_ms, excluded.expires_ms)",
                    params![id, until],
                )?;
                Ok(((), Vec::new()))
            })
            .await?;
        }
        Ok(serde_json::from_str(&json).ok())
    }

    async fn expired_upload_files(
        &self,
        before_ms: u64,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.read(move |c| {
            c.prepare_cached("SELECT id FROM upload_files WHERE expires_ms < ?1 LIMIT ?2")?
                .query_map(params![super::sql_ms(before_ms), max as i64], |r| r.get(0))?
                .collect()
        })
        .await
    }

    async fn forget_upload_file(&self, id: &str, before_ms: u64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "DELETE FROM upload_files WHERE id = ?1 AND expires_ms < ?2",
                params![id, super::sql_ms(before_ms)],
            )?;
            Ok((n == 1, Vec::new()))
        })
        .await
    }
}
