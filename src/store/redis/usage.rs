//! Usage accounts on Redis: a hash per UTC day (`job:attempt` → JSON, expiring
//! with `--usage-retention`), and per key a hash of its spend by day and month,
//! both written by one script so an account is counted once.

use async_trait::async_trait;

use super::RedisStore;
use crate::store::usage::{day_name, day_of, month_name};
use crate::store::{Spend, StoreError, Usage, UsageRecord};

/// A key's spend is kept this long (a month and then some).
const SPEND_TTL_SECS: u64 = 40 * 86_400;

#[async_trait]
impl Usage for RedisStore {
    async fn record_usage(&self, r: &UsageRecord) -> Result<bool, StoreError> {
        let json = serde_json::to_string(r).map_err(|e| StoreError::Internal(e.to_string()))?;
        let k = &self.keys;
        let mut inv = self.scripts.usage_record.prepare_invoke();
        inv.key(k.usage_day(&day_name(day_of(r.ended_ms))))
            .key(k.spend(&r.owner))
            .arg(format!("{}:{}", r.job_id, r.attempt))
            .arg(json)
            .arg(self.settings.usage_retention.as_secs().max(1) + 86_400)
            .arg(format!("d:{}", day_name(day_of(r.ended_ms))))
            .arg(format!("m:{}", month_name(r.ended_ms)))
            .arg(r.gpu_ms)
            .arg(&r.owner)
            .arg(SPEND_TTL_SECS);
        let mut conn = self.conn.clone();
        let n: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        self.replicated().await?;
        Ok(n == 1)
    }

    async fn usage(
        &self,
        from_ms: u64,
        to_ms: u64,
        owner: Option<&str>,
        max: usize,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let mut out = Vec::new();
        if to_ms <= from_ms {
            return Ok(out);
        }
        let mut conn = self.conn.clone();
        for day in day_of(from_ms)..=day_of(to_ms - 1) {
            let key = self.keys.usage_day(&day_name(day));
            let mut cursor: u64 = 0;
            loop {
                let (next, pairs): (u64, Vec<String>) = self
                    .run(
                        ::redis::cmd("HSCAN")
                            .arg(&key)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut conn),
                    )
                    .await?;
                for json in pairs.iter().skip(1).step_by(2) {
                    let Ok(r) = serde_json::from_str::<UsageRecord>(json) else {
                        continue;
                    };
                    if r.ended_ms >= from_ms
                        && r.ended_ms < to_ms
                        && owner.is_none_or(|o| o == r.owner)
                    {
                        if out.len() >= max {
                            return Ok(out);
                        }
                        out.push(r);
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(out)
    }

    async fn spend(&self, owner: &str, now_ms: u64) -> Result<Spend, StoreError> {
        let mut conn = self.conn.clone();
        let (day, month): (Option<u64>, Option<u64>) = self
            .run(
                ::redis::cmd("HMGET")
                    .arg(self.keys.spend(owner))
                    .arg(format!("d:{}", day_name(day_of(now_ms))))
                    .arg(format!("m:{}", month_name(now_ms)))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(Spend {
            day_ms: day.unwrap_or(0),
            month_ms: month.unwrap_or(0),
        })
    }
}
