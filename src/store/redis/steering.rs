//! Pauses and dead letters on Redis: a hash of what is paused (`*` for the
//! farm, else a backend), in the queue's slot.

use async_trait::async_trait;

use super::RedisStore;
use crate::store::{DeadLetter, Pauses, Steering, StoreError};

/// The hash field that pauses the whole farm.
const FARM: &str = "*";

#[async_trait]
impl Steering for RedisStore {
    async fn set_paused(&self, backend: Option<&str>, paused: bool) -> Result<(), StoreError> {
        let field = backend.unwrap_or(FARM);
        let mut conn = self.conn.clone();
        let mut cmd = ::redis::cmd(if paused { "HSET" } else { "HDEL" });
        cmd.arg(self.keys.paused()).arg(field);
        if paused {
            cmd.arg(crate::clock::now_ms());
        }
        self.run(cmd.query_async::<()>(&mut conn)).await?;
        self.replicated().await
    }

    async fn pauses(&self) -> Result<Pauses, StoreError> {
        let mut conn = self.conn.clone();
        let fields: Vec<String> = self
            .run(
                ::redis::cmd("HKEYS")
                    .arg(self.keys.paused())
                    .query_async(&mut conn),
            )
            .await?;
        let mut p = Pauses::default();
        for f in fields {
            if f == FARM {
                p.farm = true;
            } else {
                p.backends.insert(f);
            }
        }
        Ok(p)
    }

    async fn remove_dead_letter(&self, id: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.keys.dead();
        let raw: Vec<String> = self
            .run(
                ::redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn),
            )
            .await?;
        let mut removed = 0;
        for r in raw {
            if serde_json::from_str::<DeadLetter>(&r).is_ok_and(|d| d.job_id == id) {
                let n: u64 = self
                    .run(
                        ::redis::cmd("LREM")
                            .arg(&key)
                            .arg(0)
                            .arg(&r)
                            .query_async(&mut conn),
                    )
                    .await?;
                removed += n;
            }
        }
        Ok(removed)
    }
}
