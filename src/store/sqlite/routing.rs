//! Requirement sets, backend reports and capability offers. (SQLite)

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::clock;
use crate::store::{Routing, StoreError, WorkerId};

/// Registers requirement set `fp` with its JSON unless it is there: `false` when
/// it is not and cannot be (the registry is full, or no JSON came with it).
pub(super) fn register_set(
    conn: &rusqlite::Connection,
    fp: &str,
    json: &str,
) -> rusqlite::Result<bool> {
    let there: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM requirement_sets WHERE fp = ?1")?
        .query_row(params![fp], |r| r.get(0))?;
    if there > 0 {
        return Ok(true);
    }
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM requirement_sets")?
        .query_row([], |r| r.get(0))?;
    if json.is_empty() || n as usize >= crate::store::MAX_REQUIREMENT_SETS {
        return Ok(false);
    }
    conn.prepare_cached("INSERT INTO requirement_sets (fp, json) VALUES (?1, ?2)")?
        .execute(params![fp, json])?;
    Ok(true)
}

#[async_trait]
impl Routing for SqliteStore {
    async fn register_requirements(&self, fp: &str, json: &str) -> Result<bool, StoreError> {
        let (fp, json) = (fp.to_owned(), json.to_owned());
        self.write(move |conn| Ok((register_set(conn, &fp, &json)?, Vec::new())))
            .await
    }

    async fn requirement_sets(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT fp, json FROM requirement_sets")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }

    async fn report_backends(&self, worker: &WorkerId, report: &str) -> Result<(), StoreError> {
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

    async fn backend_reports(&self) -> Result<Vec<(String, String)>, StoreError> {
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

    async fn put_capabilities(
        &self,
        fp: &str,
        json: &str,
        ttl: Duration,
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

    async fn get_capabilities(&self, fp: &str) -> Result<Option<String>, StoreError> {
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
}
