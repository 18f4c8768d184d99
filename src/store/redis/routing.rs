//! Requirement sets, backend reports and capability offers. (Redis)

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use super::RedisStore;
use crate::clock;
use crate::store::{Routing, StoreError, WorkerId};

#[async_trait]
impl Routing for RedisStore {
    async fn register_requirements(&self, fp: &str, json: &str) -> Result<bool, StoreError> {
        let mut inv = self.scripts.register.prepare_invoke();
        inv.key(self.keys.requirement_sets())
            .arg(fp)
            .arg(json)
            .arg(crate::store::MAX_REQUIREMENT_SETS);
        let mut conn = self.conn.clone();
        let added: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(added == 1)
    }

    async fn requirement_sets(&self) -> Result<Vec<(String, String)>, StoreError> {
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

    async fn report_backends(&self, worker: &WorkerId, report: &str) -> Result<(), StoreError> {
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

    async fn backend_reports(&self) -> Result<Vec<(String, String)>, StoreError> {
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

    async fn put_capabilities(
        &self,
        fp: &str,
        json: &str,
        ttl: Duration,
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

    async fn get_capabilities(&self, fp: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("GET")
                .arg(self.keys.capabilities(fp))
                .query_async(&mut conn),
        )
        .await
    }
}
