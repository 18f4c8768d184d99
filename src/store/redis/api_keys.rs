//! API keys, the URL-signing secret, and rate limits. (Redis)

use async_trait::async_trait;

use super::RedisStore;
use crate::auth::ApiKey;
use crate::auth::rate::RateDecision;
use crate::clock;
use crate::store::{KeyStore, StoreError};

#[async_trait]
impl KeyStore for RedisStore {
    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("HSET")
                .arg(self.keys.api_keys())
                .arg(&key.id)
                .arg(key.to_json())
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = self
            .run(
                ::redis::cmd("HGET")
                    .arg(self.keys.api_keys())
                    .arg(id)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(raw.as_deref().and_then(ApiKey::from_json))
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = self
            .run(
                ::redis::cmd("HVALS")
                    .arg(self.keys.api_keys())
                    .query_async(&mut conn),
            )
            .await?;
        let mut keys: Vec<ApiKey> = raw.iter().filter_map(|r| ApiKey::from_json(r)).collect();
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    async fn server_secret(&self) -> Result<Vec<u8>, StoreError> {
        let mut conn = self.conn.clone();
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| StoreError::Internal(e.to_string()))?;
        let (secret,): (String,) = self
            .run(
                ::redis::pipe()
                    .cmd("SET")
                    .arg(self.keys.server_secret())
                    .arg(crate::auth::hex(&fresh))
                    .arg("NX")
                    .ignore()
                    .cmd("GET")
                    .arg(self.keys.server_secret())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(secret.into_bytes())
    }

    async fn rate_limit(
        &self,
        bucket: &str,
        rate: f64,
        burst: u32,
    ) -> Result<RateDecision, StoreError> {
        let mut inv = self.scripts.gcra.prepare_invoke();
        inv.key(self.keys.rate_bucket(bucket))
            .arg(clock::now_ms())
            .arg(1000.0 / rate)
            .arg(burst);
        let mut conn = self.conn.clone();
        let r: Vec<i64> = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(super::queue::decision_of(&r))
    }
}
