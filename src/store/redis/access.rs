//! API keys, the URL-signing secret and rate limits, in Redis: one hash holds every
//! key (a lookup is one `HGET`, and one key name works on Cluster too), the secret
//! is set once with `NX`, a rate limit is one GCRA script on its bucket's key.

use std::collections::HashMap;

use super::RedisStore;
use crate::auth::ApiKey;
use crate::auth::rate::RateDecision;
use crate::clock;
use crate::store::{IDEMPOTENCY_TTL, IdempotencyClaim, StoreError};

impl RedisStore {
    pub(super) async fn put_key_impl(&self, key: &ApiKey) -> Result<(), StoreError> {
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

    pub(super) async fn get_key_impl(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
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

    pub(super) async fn list_keys_impl(&self) -> Result<Vec<ApiKey>, StoreError> {
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

    pub(super) async fn server_secret_impl(&self) -> Result<Vec<u8>, StoreError> {
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

    pub(super) async fn rate_limit_impl(
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
        let get = |i: usize| r.get(i).copied().unwrap_or(0);
        Ok(RateDecision {
            allowed: get(0) == 1,
            remaining: get(1).max(0) as u32,
            reset_secs: get(2).max(0) as f64 / 1000.0,
            retry_after_secs: get(3).max(0) as f64 / 1000.0,
        })
    }

    pub(super) async fn take_idempotency_impl(
        &self,
        scope: &str,
        claim: &IdempotencyClaim,
    ) -> Result<Option<IdempotencyClaim>, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.keys.idempotency(scope);
        // SET NX GET: one atomic step that either takes the key or tells who has it.
        let held: Option<String> = self
            .run(
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(claim.encode())
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(self.idempotency_ttl_ms())
                    .query_async(&mut conn),
            )
            .await?;
        // Something unreadable under the key counts as a different request.
        Ok(held.map(|h| {
            IdempotencyClaim::decode(&h).unwrap_or_else(|| IdempotencyClaim {
                fingerprint: String::new(),
                ..claim.clone()
            })
        }))
    }

    pub(super) async fn release_idempotency_impl(&self, scope: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("DEL")
                .arg(self.keys.idempotency(scope))
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn report_backends_impl(
        &self,
        worker: &crate::store::WorkerId,
        report: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("HSET")
                .arg(self.keys.backend_reports())
                .arg(worker.as_str())
                .arg(format!("{} {report}", clock::now_ms()))
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn backend_reports_impl(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = self
            .run(
                ::redis::cmd("HGETALL")
                    .arg(self.keys.backend_reports())
                    .query_async(&mut conn),
            )
            .await?;
        let oldest = clock::now_ms().saturating_sub(self.settings.worker_ttl.as_millis() as u64);
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for (worker, value) in all {
            match value.split_once(' ') {
                Some((ms, report)) if ms.parse::<u64>().is_ok_and(|ms| ms >= oldest) => {
                    live.push((worker, report.to_owned()))
                }
                _ => stale.push(worker),
            }
        }
        if !stale.is_empty() {
            // Best effort: a worker gone for good leaves nothing behind.
            let _ = self
                .run(
                    ::redis::cmd("HDEL")
                        .arg(self.keys.backend_reports())
                        .arg(&stale)
                        .query_async::<i64>(&mut conn),
                )
                .await;
        }
        live.sort();
        Ok(live)
    }

    fn idempotency_ttl_ms(&self) -> u64 {
        IDEMPOTENCY_TTL
            .min(self.settings.job_ttl)
            .as_millis()
            .max(1) as u64
    }

    pub(super) async fn replace_idempotency_impl(
        &self,
        scope: &str,
        held: &IdempotencyClaim,
        claim: &IdempotencyClaim,
    ) -> Result<bool, StoreError> {
        static CAS: std::sync::OnceLock<::redis::Script> = std::sync::OnceLock::new();
        let script = CAS.get_or_init(|| {
            ::redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end return 0",
            )
        });
        let mut conn = self.conn.clone();
        let mut inv = script.prepare_invoke();
        inv.key(self.keys.idempotency(scope))
            .arg(held.encode())
            .arg(claim.encode())
            .arg(self.idempotency_ttl_ms());
        let done: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }

    pub(super) async fn put_upload_impl(
        &self,
        rec: &crate::uploads::UploadRecord,
        ttl: std::time::Duration,
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

    pub(super) async fn get_upload_impl(
        &self,
        owner: &str,
        id: &str,
        extend: Option<std::time::Duration>,
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

    pub(super) async fn put_capabilities_impl(
        &self,
        fp: &str,
        json: &str,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("SET")
                .arg(self.keys.capabilities(fp))
                .arg(json)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    pub(super) async fn get_capabilities_impl(
        &self,
        fp: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("GET")
                .arg(self.keys.capabilities(fp))
                .query_async(&mut conn),
        )
        .await
    }

    pub(super) async fn register_requirements_impl(
        &self,
        fp: &str,
        json: &str,
    ) -> Result<bool, StoreError> {
        let mut inv = self.scripts.register.prepare_invoke();
        inv.key(self.keys.requirement_sets())
            .arg(fp)
            .arg(json)
            .arg(crate::store::MAX_REQUIREMENT_SETS);
        let mut conn = self.conn.clone();
        let added: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(added == 1)
    }

    pub(super) async fn requirement_sets_impl(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut conn = self.conn.clone();
        let all: HashMap<String, String> = self
            .run(
                ::redis::cmd("HGETALL")
                    .arg(self.keys.requirement_sets())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(all.into_iter().collect())
    }

    pub(super) async fn put_preview_impl(
        &self,
        id: &crate::job::JobId,
        owner: &str,
        preview: &crate::store::Preview,
    ) -> Result<(), StoreError> {
        let key = self.keys.preview(id.as_str());
        let announce = serde_json::json!({
            "job_id": id.as_str(),
            "owner_key": owner,
            super::events::PREVIEW_FIELD: preview.seq.to_string(),
        })
        .to_string();
        let mut conn = self.conn.clone();
        self.run(
            ::redis::pipe()
                .cmd("HSET")
                .arg(&key)
                .arg("seq")
                .arg(preview.seq)
                .arg("type")
                .arg(&preview.content_type)
                .arg("image")
                .arg(preview.image.as_ref())
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(crate::store::PREVIEW_TTL.as_millis() as u64)
                .ignore()
                .cmd("PUBLISH")
                .arg(self.keys.events())
                .arg(announce)
                .ignore()
                .query_async::<()>(&mut conn),
        )
        .await
    }

    pub(super) async fn get_preview_impl(
        &self,
        id: &crate::job::JobId,
    ) -> Result<Option<crate::store::Preview>, StoreError> {
        let mut conn = self.conn.clone();
        let (seq, content_type, image): (Option<u64>, Option<String>, Option<Vec<u8>>) = self
            .run(
                ::redis::cmd("HMGET")
                    .arg(self.keys.preview(id.as_str()))
                    .arg("seq")
                    .arg("type")
                    .arg("image")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(match (seq, content_type, image) {
            (Some(seq), Some(content_type), Some(image)) => Some(crate::store::Preview {
                seq,
                content_type,
                image: image.into(),
            }),
            _ => None,
        })
    }
}
