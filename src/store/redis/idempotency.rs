//! `Idempotency-Key` scopes. (Redis)

use super::RedisStore;
use crate::store::{IDEMPOTENCY_TTL, Idempotency, IdempotencyClaim, StoreError};
use async_trait::async_trait;

#[async_trait]
impl Idempotency for RedisStore {
    async fn take_idempotency(
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

    async fn release_idempotency(&self, scope: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("DEL")
                .arg(self.keys.idempotency(scope))
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn replace_idempotency(
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
}

impl RedisStore {
    fn idempotency_ttl_ms(&self) -> u64 {
        IDEMPOTENCY_TTL
            .min(self.settings.job_ttl)
            .as_millis()
            .max(1) as u64
    }
}
