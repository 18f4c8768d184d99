//! Usage accounts in the embedded store: one row per attempt (its job and
//! attempt the key), summed for a key's spend.

use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteStore, internal};
use crate::clock;
use crate::store::usage::{day_of, month_start_ms};
use crate::store::{Spend, StoreError, Usage, UsageRecord};

#[async_trait]
impl Usage for SqliteStore {
    async fn record_usage(&self, r: &UsageRecord) -> Result<bool, StoreError> {
        let json = serde_json::to_string(r).map_err(internal)?;
        let r = r.clone();
        let keep_from =
            clock::now_ms().saturating_sub(self.settings.usage_retention.as_millis() as u64) as i64;
        self.write(move |conn| {
            // Accounts past the retention go a few at a time.
            conn.execute(
                "DELETE FROM usage WHERE rowid IN \
                 (SELECT rowid FROM usage WHERE ended_ms < ?1 LIMIT 100)",
                params![keep_from],
            )?;
            let n = conn.execute(
                "INSERT OR IGNORE INTO usage (job_id, attempt, owner, ended_ms, gpu_ms, record) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    r.job_id,
                    r.attempt,
                    r.owner,
                    r.ended_ms as i64,
                    r.gpu_ms as i64,
                    json
                ],
            )?;
            Ok((n == 1, Vec::new()))
        })
        .await
    }

    async fn usage(
        &self,
        from_ms: u64,
        to_ms: u64,
        owner: Option<&str>,
        max: usize,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let owner = owner.map(str::to_owned);
        let rows: Vec<String> = self
            .read(move |c| {
                let mut out = Vec::new();
                let (sql, has_owner) = match &owner {
                    Some(_) => ("SELECT record FROM usage WHERE owner = ?3 AND ended_ms >= ?1 AND ended_ms < ?2 ORDER BY ended_ms LIMIT ?4", true),
                    None => ("SELECT record FROM usage WHERE ended_ms >= ?1 AND ended_ms < ?2 AND ?3 IS NULL ORDER BY ended_ms LIMIT ?4", false),
                };
                let mut stmt = c.prepare_cached(sql)?;
                let o: Option<String> = if has_owner { owner.clone() } else { None };
                for row in stmt.query_map(params![super::sql_ms(from_ms), super::sql_ms(to_ms), o, max as i64], |r| r.get::<_, String>(0))? {
                    out.push(row?);
                }
                Ok(out)
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    async fn spend(&self, owner: &str, now_ms: u64) -> Result<Spend, StoreError> {
        let owner = owner.to_owned();
        let day_start = (day_of(now_ms) * 86_400_000) as i64;
        let month_start = month_start_ms(now_ms) as i64;
        self.read(move |c| {
            let sum = |from: i64| -> rusqlite::Result<u64> {
                c.prepare_cached("SELECT COALESCE(SUM(gpu_ms), 0) FROM usage WHERE owner = ?1 AND ended_ms >= ?2")?
                    .query_row(params![owner, from], |r| r.get::<_, i64>(0))
                    .map(|n| n.max(0) as u64)
            };
            Ok(Spend {
                day_ms: sum(day_start)?,
                month_ms: sum(month_start)?,
            })
        })
        .await
    }
}
