//! `Idempotency-Key` scopes. (SQLite)

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::clock;
use crate::store::{IDEMPOTENCY_TTL, Idempotency, IdempotencyClaim, StoreError};

#[async_trait]
impl Idempotency for SqliteStore {
    async fn take_idempotency(
        &self,
        scope: &str,
        claim: &IdempotencyClaim,
    ) -> Result<Option<IdempotencyClaim>, StoreError> {
        let scope = scope.to_owned();
        let encoded = claim.encode();
        let now = clock::now_ms() as i64;
        let stale = now - IDEMPOTENCY_TTL.min(self.settings.job_ttl).as_millis() as i64;
        let held: Option<String> = self
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM idempotency WHERE owner = ?1 AND key = '' AND created_ms <= ?2",
                    params![scope, stale],
                )?;
                let taken = conn.execute(
                    "INSERT OR IGNORE INTO idempotency (owner, key, body_hash, job_id, created_ms) \
                     VALUES (?1, '', ?2, '', ?3)",
                    params![scope, encoded, now],
                )?;
                if taken == 1 {
                    return Ok((None, Vec::new()));
                }
                let held = conn.query_row(
                    "SELECT body_hash FROM idempotency WHERE owner = ?1 AND key = ''",
                    params![scope],
                    |r| r.get(0),
                )?;
                Ok((Some(held), Vec::new()))
            })
            .await?;
        // Something unreadable counts as a different request.
        Ok(held.map(|h| {
            IdempotencyClaim::decode(&h).unwrap_or_else(|| IdempotencyClaim {
                fingerprint: String::new(),
                ..claim.clone()
            })
        }))
    }

    async fn release_idempotency(&self, scope: &str) -> Result<(), StoreError> {
        let scope = scope.to_owned();
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM idempotency WHERE owner = ?1 AND key = ''",
                params![scope],
            )?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn replace_idempotency(
        &self,
        scope: &str,
        held: &IdempotencyClaim,
        claim: &IdempotencyClaim,
    ) -> Result<bool, StoreError> {
        let (scope, old, new) = (scope.to_owned(), held.encode(), claim.encode());
        let now = clock::now_ms() as i64;
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE idempotency SET body_hash = ?3, created_ms = ?4 \
                 WHERE owner = ?1 AND key = '' AND body_hash = ?2",
                params![scope, old, new, now],
            )?;
            Ok((n == 1, Vec::new()))
        })
        .await
    }
}
