//! Submitting, reading, listing, cancelling and counting jobs; change events. (SQLite)

use async_trait::async_trait;
use rusqlite::Row;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::broadcast;

use super::{COLUMN_COUNT, COLUMNS, SqliteStore, changed, get_record, next_seq, record_from_row};
use crate::auth::rate::RateCheck;
use crate::clock;
use crate::job::{JobId, JobRecord, JobStatus, NewJob};
use crate::store::{
    CancelOutcome, DeadLetter, JobEvent, JobPage, JobQueue, ListQuery, QueueStats, Refusal,
    StoreError, StoreKind,
};

/// How many queued jobs are ahead of this one: exact up to [`EXACT_POSITION_LIMIT`],
/// the sequence distance (an upper bound) beyond.
fn queue_position(c: &Connection, id: &str) -> rusqlite::Result<Option<u64>> {
    let mine: Option<i64> = c
        .prepare_cached("SELECT queue_seq FROM jobs WHERE id = ?1 AND status = 'queued'")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    let Some(mine) = mine else { return Ok(None) };
    // NULL when the last queued job was claimed since the line above.
    let head: Option<i64> = c
        .prepare_cached("SELECT MIN(queue_seq) FROM jobs WHERE status = 'queued'")?
        .query_row([], |r| r.get(0))?;
    let Some(head) = head else { return Ok(None) };
    let estimate = (mine - head).max(0);
    if estimate > EXACT_POSITION_LIMIT {
        return Ok(Some(estimate as u64));
    }
    let exact: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND queue_seq < ?1")?
        .query_row(params![mine], |r| r.get(0))?;
    Ok(Some(exact as u64))
}

/// Above this estimated position, `queue_position` reports the estimate instead of
/// counting exactly, so a status read stays cheap on a million-job queue.
const EXACT_POSITION_LIMIT: i64 = 10_000;

#[async_trait]
impl JobQueue for SqliteStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Sqlite
    }

    fn describe(&self) -> String {
        format!("sqlite at {}", self.path.display())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
            .await?;
        Ok(())
    }

    async fn enqueue(&self, job: &NewJob) -> Result<JobRecord, StoreError> {
        if let Some(check) = &job.rate {
            // Counted in memory here: no round trip to save.
            crate::store::count_apart(self, check).await?;
        }
        let rec = JobRecord::queued(job);
        let params_json = serde_json::Value::Object(job.params.clone()).to_string();
        let max_queued = self.settings.max_queued as i64;
        let lane = job.lane.clone();
        let following = i64::from(job.following);
        let mut r = rec.clone();
        let req_json = job.req_json.clone();
        let out = self
            .write(move |conn| {
                // The caps first, so a refusal writes nothing. (A resubmission of a
                // known id when the queue is full is refused too, rather than
                // answered with the existing job: only our own callers reuse ids.)
                let queued: i64 = conn
                    .prepare_cached("SELECT value FROM counters WHERE name = 'queued'")?
                    .query_row([], |row| row.get(0))?;
                if queued + following >= max_queued {
                    return Ok((Err(Refusal::QueueFull { limit: max_queued as u64 }), Vec::new()));
                }
                if !r.owner.is_empty() {
                    if let Some(limit) = lane.max_queued {
                        let mine: i64 = conn
                            .prepare_cached("SELECT queued FROM lanes WHERE owner = ?1")?
                            .query_row(params![r.owner], |row| row.get(0))
                            .optional()?
                            .unwrap_or(0);
                        if mine + following >= i64::from(limit) {
                            return Ok((Err(Refusal::QuotaFull { limit }), Vec::new()));
                        }
                    }
                    // The lane's share and cap follow the key's settings; a lane
                    // coming back after being idle starts at the current virtual time.
                    conn.prepare_cached(
                        "INSERT INTO lanes (owner, weight, max_running) VALUES (?1, ?2, ?3) \
                         ON CONFLICT(owner) DO UPDATE SET weight = excluded.weight, \
                         max_running = excluded.max_running",
                    )?
                    .execute(params![r.owner, lane.weight.max(1), lane.max_running.unwrap_or(0)])?;
                }
                if !r.req.is_empty() && !super::routing::register_set(conn, &r.req, &req_json)? {
                    // No room for a new set: the job goes to any backend.
                    crate::store::warn_registry_full(&r.req);
                    r.req.clear();
                }
                let seq = next_seq(conn)?;
                let inserted = conn
                    .prepare_cached(
                        "INSERT INTO jobs (id, list_seq, queue_seq, status, created_at, updated_at, \
                         updated_ms, prompt, seed, workflow, params, owner, priority, req) VALUES (?1, ?8, \
                         ?8, 'queued', ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?9, ?10, ?11) ON CONFLICT(id) DO NOTHING",
                    )?
                    .execute(params![
                        r.id,
                        r.created_at,
                        r.updated_ms as i64,
                        r.prompt,
                        r.seed.map(|s| s.to_string()),
                        r.workflow,
                        params_json,
                        seq,
                        r.owner,
                        r.priority.rank(),
                        r.req
                    ])?;
                if inserted == 0 {
                    let existing = get_record(conn, &r.id)?.unwrap_or(r);
                    return Ok((Ok(existing), Vec::new()));
                }
                Ok((Ok(r.clone()), vec![r]))
            })
            .await?
            .map_err(StoreError::Refused)?;
        self.wake.notify_waiters();
        tracing::info!(job_id = %job.id, workflow = %job.workflow, "job queued");
        Ok(out)
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let id = id.to_string();
        self.read_now(move |c| get_record(c, &id)).await
    }

    async fn queue_position(&self, id: &JobId) -> Result<Option<u64>, StoreError> {
        let id = id.to_string();
        self.read(move |c| queue_position(c, &id)).await
    }

    async fn status(&self, id: &JobId) -> Result<Option<(JobRecord, Option<u64>)>, StoreError> {
        // Both on one pooled connection, in one read transaction: the position
        // is of the record read (one snapshot), and the file's read lock is
        // taken once instead of once per statement.
        let id = id.to_string();
        self.read_now(move |c| {
            let tx = c.unchecked_transaction()?;
            let Some(job) = get_record(&tx, &id)? else {
                return Ok(None);
            };
            let position = if job.status == JobStatus::Queued {
                queue_position(&tx, &id)?
            } else {
                None
            };
            tx.commit()?;
            Ok(Some((job, position)))
        })
        .await
    }

    async fn status_counted(
        &self,
        id: &JobId,
        check: &RateCheck,
    ) -> Result<Option<(JobRecord, Option<u64>)>, StoreError> {
        crate::store::count_apart(self, check).await?;
        self.status(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<JobPage, StoreError> {
        let limit = query.limit.max(1) as i64;
        let cursor = query.cursor.map(|c| c as i64).unwrap_or(i64::MAX);
        let status = query.status.as_ref().map(|s| s.as_str().to_owned());
        let owner = query.owner.clone();
        let fetch = limit + 1;
        self.read(move |c| {
            // One statement per filter shape, so each uses its index.
            let mut sql = format!("SELECT {COLUMNS}, list_seq FROM jobs WHERE list_seq < ?1");
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![&cursor, &fetch];
            if let Some(s) = &status {
                args.push(s);
                sql.push_str(&format!(" AND status = ?{}", args.len()));
            }
            if let Some(o) = &owner {
                args.push(o);
                sql.push_str(&format!(" AND owner = ?{}", args.len()));
            }
            sql.push_str(" ORDER BY list_seq DESC LIMIT ?2");
            let mut stmt = c.prepare_cached(&sql)?;
            let map = |r: &Row<'_>| Ok((record_from_row(r)?, r.get::<_, i64>(COLUMN_COUNT)?));
            let rows: Vec<(JobRecord, i64)> = stmt
                .query_map(args.as_slice(), map)?
                .collect::<Result<_, _>>()?;
            let more = rows.len() as i64 > limit;
            let mut jobs: Vec<(JobRecord, i64)> = rows;
            jobs.truncate(limit as usize);
            let next_cursor = if more {
                jobs.last().map(|(_, s)| *s as u64)
            } else {
                None
            };
            Ok(JobPage {
                jobs: jobs.into_iter().map(|(j, _)| j).collect(),
                next_cursor,
            })
        })
        .await
    }

    async fn cancel(&self, id: &JobId) -> Result<CancelOutcome, StoreError> {
        let id = id.to_string();
        let out = self
            .write(move |conn| {
                let Some(rec) = get_record(conn, &id)? else {
                    return Ok((CancelOutcome::NotFound, Vec::new()));
                };
                if rec.status.is_final() {
                    return Ok((CancelOutcome::AlreadyFinal(rec), Vec::new()));
                }
                let micros = clock::now_micros();
                let (now, now_ms) = (clock::iso8601(micros), (micros / 1000) as i64);
                if rec.status == JobStatus::Processing {
                    conn.execute(
                        "UPDATE jobs SET cancel_requested = 1, updated_at = ?2, updated_ms = ?3 WHERE id = ?1",
                        params![id, now, now_ms],
                    )?;
                    let rec = changed(conn, &id)?.expect("exists");
                    return Ok((CancelOutcome::Requested(rec.clone()), vec![rec]));
                }
                conn.execute(
                    "UPDATE jobs SET status = 'failed', error = 'cancelled', cancelled = 1, \
                     cancel_requested = 1, lease_token = NULL, updated_at = ?2, updated_ms = ?3 WHERE id = ?1",
                    params![id, now, now_ms],
                )?;
                let rec = changed(conn, &id)?.expect("exists");
                Ok((CancelOutcome::Cancelled(rec.clone()), vec![rec]))
            })
            .await?;
        match &out {
            CancelOutcome::Cancelled(j) => {
                tracing::info!(job_id = %j.id, "job failed: cancelled while queued")
            }
            CancelOutcome::Requested(j) => {
                tracing::info!(job_id = %j.id, "cancel requested for running job")
            }
            _ => {}
        }
        Ok(out)
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let ttl = self.settings.worker_ttl.as_millis() as i64;
        self.read(move |c| {
            let now = clock::now_ms() as i64;
            let (queued, delayed): (i64, i64) = c.query_row(
                "SELECT COALESCE(SUM(run_at <= ?1), 0), COALESCE(SUM(run_at > ?1), 0) FROM jobs WHERE status = 'queued'",
                params![now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let processing: i64 = c.query_row(
                "SELECT COUNT(*) FROM jobs WHERE status = 'processing'",
                [],
                |r| r.get(0),
            )?;
            let dead: i64 = c.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))?;
            let workers: i64 = c.query_row(
                "SELECT COUNT(*) FROM workers WHERE heartbeat_ms > ?1",
                params![now - ttl],
                |r| r.get(0),
            )?;
            Ok(QueueStats {
                queued: queued as u64,
                processing: processing as u64,
                delayed: delayed as u64,
                dead: dead as u64,
                workers: workers as u64,
            })
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(move |c| {
            c.prepare("SELECT job_id, error, attempts, payload, failed_at FROM dead_letters ORDER BY seq DESC LIMIT ?1")?
                .query_map(params![limit as i64], |r| {
                    Ok(DeadLetter {
                        job_id: r.get(0)?,
                        error: r.get(1)?,
                        attempts: r.get::<_, i64>(2)? as u32,
                        payload: r.get(3)?,
                        failed_at: r.get(4)?,
                    })
                })?
                .collect()
        })
        .await
    }
}
