//! API keys, the URL-signing secret and rate limits in the embedded store. Rate
//! limits are counted in this process: with the embedded store, one process
//! (`studio serve`) answers every request.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::auth::ApiKey;
use crate::auth::rate::RateDecision;
use crate::clock;
use crate::store::{IDEMPOTENCY_TTL, IdempotencyClaim, StoreError};

impl SqliteStore {
    pub(super) async fn put_key_impl(&self, key: &ApiKey) -> Result<(), StoreError> {
        let (id, record) = (key.id.clone(), key.to_json());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO api_keys (id, record) VALUES (?1, ?2) \
                 ON CONFLICT(id) DO UPDATE SET record = excluded.record",
                params![id, record],
            )?;
            Ok(((), Vec::new()))
        })
        .await
    }

    pub(super) async fn get_key_impl(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let id = id.to_owned();
        let raw: Option<String> = self
            .read(move |c| {
                c.prepare_cached("SELECT record FROM api_keys WHERE id = ?1")?
                    .query_row(params![id], |r| r.get(0))
                    .optional()
            })
            .await?;
        Ok(raw.as_deref().and_then(ApiKey::from_json))
    }

    pub(super) async fn list_keys_impl(&self) -> Result<Vec<ApiKey>, StoreError> {
        let raw: Vec<String> = self
            .read(|c| {
                c.prepare("SELECT record FROM api_keys")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .await?;
        let mut keys: Vec<ApiKey> = raw.iter().filter_map(|r| ApiKey::from_json(r)).collect();
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    pub(super) async fn server_secret_impl(&self) -> Result<Vec<u8>, StoreError> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| StoreError::Internal(e.to_string()))?;
        let fresh = crate::auth::hex(&fresh);
        let secret: String = self
            .write(move |conn| {
                conn.execute(
                    "INSERT OR IGNORE INTO settings (name, value) VALUES ('url_secret', ?1)",
                    params![fresh],
                )?;
                let s = conn.query_row(
                    "SELECT value FROM settings WHERE name = 'url_secret'",
                    [],
                    |r| r.get(0),
                )?;
                Ok((s, Vec::new()))
            })
            .await?;
        Ok(secret.into_bytes())
    }

    pub(super) fn rate_limit_impl(&self, bucket: &str, rate: f64, burst: u32) -> RateDecision {
        self.limiter
            .check(bucket, clock::now_ms() as f64, rate, burst)
    }

    /// The idempotency table's `owner` column holds the scope (already specific to
    /// the owner), `body_hash` the whole claim encoded, `key` and `job_id` are unused
    /// (''); housekeeping drops records past the TTL.
    pub(super) async fn take_idempotency_impl(
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

    pub(super) async fn release_idempotency_impl(&self, scope: &str) -> Result<(), StoreError> {
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

    pub(super) async fn report_backends_impl(
        &self,
        worker: &crate::store::WorkerId,
        report: &str,
    ) -> Result<(), StoreError> {
        let (worker, report) = (worker.as_str().to_owned(), report.to_owned());
        let now = clock::now_ms() as i64;
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO backend_reports (worker, report, updated_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(worker) DO UPDATE SET report = excluded.report, updated_ms = excluded.updated_ms",
                params![worker, report, now],
            )?;
            Ok(((), Vec::new()))
        })
        .await
    }

    pub(super) async fn backend_reports_impl(&self) -> Result<Vec<(String, String)>, StoreError> {
        let oldest = clock::now_ms() as i64 - self.settings.worker_ttl.as_millis() as i64;
        self.read(move |c| {
            c.prepare_cached(
                "SELECT worker, report FROM backend_reports WHERE updated_ms >= ?1 ORDER BY worker",
            )?
            .query_map(params![oldest], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
        .await
    }

    pub(super) async fn replace_idempotency_impl(
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

    pub(super) async fn put_upload_impl(
        &self,
        rec: &crate::uploads::UploadRecord,
        ttl: std::time::Duration,
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

    pub(super) async fn get_upload_impl(
        &self,
        owner: &str,
        id: &str,
        extend: Option<std::time::Duration>,
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

    pub(super) async fn put_capabilities_impl(
        &self,
        fp: &str,
        json: &str,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        let (fp, json) = (fp.to_owned(), json.to_owned());
        let now = clock::now_ms() as i64;
        let expires = now + ttl.as_millis() as i64;
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM capabilities WHERE expires_ms < ?1",
                params![now],
            )?;
            conn.execute(
                "INSERT INTO capabilities (fp, json, expires_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(fp) DO UPDATE SET expires_ms = excluded.expires_ms",
                params![fp, json, expires],
            )?;
            Ok(((), Vec::new()))
        })
        .await
    }

    pub(super) async fn get_capabilities_impl(
        &self,
        fp: &str,
    ) -> Result<Option<String>, StoreError> {
        let fp = fp.to_owned();
        let now = clock::now_ms() as i64;
        self.read(move |c| {
            use rusqlite::OptionalExtension;
            c.prepare_cached("SELECT json FROM capabilities WHERE fp = ?1 AND expires_ms >= ?2")?
                .query_row(params![fp, now], |r| r.get(0))
                .optional()
        })
        .await
    }

    pub(super) async fn register_requirements_impl(
        &self,
        fp: &str,
        json: &str,
    ) -> Result<bool, StoreError> {
        let (fp, json) = (fp.to_owned(), json.to_owned());
        self.write(move |conn| {
            let there: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM requirement_sets WHERE fp = ?1")?
                .query_row(params![fp], |r| r.get(0))?;
            if there > 0 {
                return Ok((true, Vec::new()));
            }
            let n: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM requirement_sets")?
                .query_row([], |r| r.get(0))?;
            if n as usize >= crate::store::MAX_REQUIREMENT_SETS {
                return Ok((false, Vec::new()));
            }
            conn.prepare_cached("INSERT INTO requirement_sets (fp, json) VALUES (?1, ?2)")?
                .execute(params![fp, json])?;
            Ok((true, Vec::new()))
        })
        .await
    }

    pub(super) async fn requirement_sets_impl(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT fp, json FROM requirement_sets")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }
}
