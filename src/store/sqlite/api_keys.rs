//! API keys, the URL-signing secret, and rate limits. (SQLite)

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::auth::ApiKey;
use crate::auth::rate::RateDecision;
use crate::clock;
use crate::store::{KeyStore, StoreError};

#[async_trait]
impl KeyStore for SqliteStore {
    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError> {
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

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
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

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
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

    async fn server_secret(&self) -> Result<Vec<u8>, StoreError> {
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

    async fn rate_limit(
        &self,
        bucket: &str,
        rate: f64,
        burst: u32,
    ) -> Result<RateDecision, StoreError> {
        Ok({
            self.limiter
                .check(bucket, clock::now_ms() as f64, rate, burst)
        })
    }
}
