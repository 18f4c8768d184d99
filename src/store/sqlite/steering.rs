//! Pauses and dead letters in the embedded store.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::store::{Pauses, Steering, StoreError};

/// The row that pauses the whole farm.
const FARM: &str = "*";

#[async_trait]
impl Steering for SqliteStore {
    async fn set_paused(&self, backend: Option<&str>, paused: bool) -> Result<(), StoreError> {
        let target = backend.unwrap_or(FARM).to_owned();
        let now = crate::clock::now_ms() as i64;
        self.write(move |conn| {
            if paused {
                conn.execute(
                    "INSERT OR IGNORE INTO pauses (target, since_ms) VALUES (?1, ?2)",
                    params![target, now],
                )?;
            } else {
                conn.execute("DELETE FROM pauses WHERE target = ?1", params![target])?;
            }
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn pauses(&self) -> Result<Pauses, StoreError> {
        self.read(|c| {
            let mut p = Pauses::default();
            let mut stmt = c.prepare_cached("SELECT target FROM pauses")?;
            for t in stmt.query_map([], |r| r.get::<_, String>(0))? {
                let t = t?;
                if t == FARM {
                    p.farm = true;
                } else {
                    p.backends.insert(t);
                }
            }
            Ok(p)
        })
        .await
    }

    async fn remove_dead_letter(&self, id: &str) -> Result<u64, StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let n = conn.execute("DELETE FROM dead_letters WHERE job_id = ?1", params![id])?;
            Ok((n as u64, Vec::new()))
        })
        .await
    }
}
