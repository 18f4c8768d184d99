//! Upload records. (SQLite)

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::clock;
use crate::store::{StoreError, Uploads};

#[async_trait]
impl Uploads for SqliteStore {
    async fn put_upload(
        &self,
        rec: &crate::uploads::UploadRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| StoreError::Internal(e.to_string()))?;
        let (owner, id) = (rec.owner.clone(), rec.upload_id.clone());
        let now = clock::now_ms() as i64;
        let expires = now + ttl.as_millis() as i64;
        self.write(move |conn| {
            // Expired records go a few at a time, so none of this grows for ever.
            conn.execute(
                "DELETE FROM uploads WHERE rowid IN \
                 (SELECT rowid FROM uploads WHERE expires_ms < ?1 LIMIT 100)",
                params![now],
            )?;
            conn.execute(
                "INSERT INTO uploads (owner, id, record, expires_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(owner, id) DO UPDATE SET expires_ms = MAX(expires_ms, excluded.expires_ms)",
                params![owner, id, json, expires],
            )?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn get_upload(
        &self,
        owner: &str,
        id: &str,
        extend: Option<Duration>,
    ) -> Result<Option<crate::uploads::UploadRecord>, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        let now = clock::now_ms() as i64;
        let found: Option<String> = self
            .read({
                let (owner, id) = (owner.clone(), id.clone());
                move |c| {
                    use rusqlite::OptionalExtension;
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
                Ok(((), Vec::new()))
            })
            .await?;
        }
        Ok(serde_json::from_str(&json).ok())
    }
}
