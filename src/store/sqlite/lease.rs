//! Leases in the embedded store: claims, fenced writes, hand-backs, retries and
//! the reaper.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use super::{
    FRONT_OF_QUEUE, SqliteStore, changed, get_record, holds_lease, insert_dead_letter, next_seq,
};
use crate::clock;
use crate::job::JobId;
use crate::store::lease::{log_completion, log_retry};
use crate::store::{
    Completion, EXPIRED_MESSAGE, IDEMPOTENCY_TTL, Lease, LeaseState, Leases, RetryOutcome, Route,
    Routed, StoreError, WorkerId, gave_up_message,
};

/// How often a waiting claim looks again for jobs enqueued by another process (this
/// process's own enqueues wake it at once).
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// Jobs expired per housekeeping round, so one round stays short.
const EXPIRE_BATCH: i64 = 500;

#[async_trait]
impl Leases for SqliteStore {
    async fn heartbeat(&self, worker: &WorkerId) -> Result<(), StoreError> {
        {
            let mut own = self.own_workers.lock().expect("own workers");
            if !own.iter().any(|w| w == worker.as_str()) {
                own.push(worker.as_str().to_owned());
            }
        }
        let w = worker.clone();
        self.write(move |conn| {
            let (host, pid) = w
                .host_pid()
                .map(|(h, p)| (h.to_owned(), p))
                .unwrap_or_default();
            conn.execute(
                "INSERT INTO workers (id, host, pid, heartbeat_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
                params![w.as_str(), host, pid, clock::now_ms() as i64],
            )?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn deregister(&self, worker: &WorkerId) -> Result<(), StoreError> {
        let w = worker.as_str().to_owned();
        self.own_workers
            .lock()
            .expect("own workers")
            .retain(|x| *x != w);
        self.write(move |conn| {
            conn.execute("DELETE FROM workers WHERE id = ?1", params![w])?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn claim_routed(
        &self,
        worker: &WorkerId,
        wait: Duration,
        route: &Route,
    ) -> Result<Routed, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so an enqueue between the look and
            // the wait is not missed.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_claim(worker, route).await? {
                Routed::Nothing => {}
                found => return Ok(found),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Routed::Nothing);
            }
            let nap = (deadline - now).min(CLAIM_POLL);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn update(
        &self,
        lease: &Lease,
        progress: Option<u8>,
        backend: Option<&str>,
    ) -> Result<LeaseState, StoreError> {
        let (id, token) = (lease.job_id.to_string(), lease.token.clone());
        let backend = backend.map(str::to_owned);
        self.write(move |conn| {
            let Some(cancel) = holds_lease(conn, &id, &token)? else {
                return Ok((LeaseState::Lost, Vec::new()));
            };
            let micros = clock::now_micros();
            // Sent to a backend: the first time, it started.
            let updated = conn.execute(
                "UPDATE jobs SET progress = MAX(progress, COALESCE(?2, progress)), \
                 backend = COALESCE(?3, backend), updated_at = ?4, updated_ms = ?5, \
                 started_ms = CASE WHEN started_ms = 0 AND ?3 IS NOT NULL THEN ?5 ELSE started_ms END \
                 WHERE id = ?1 AND (progress < COALESCE(?2, -1) OR backend != COALESCE(?3, backend) \
                 OR (started_ms = 0 AND ?3 IS NOT NULL))",
                params![id, progress.map(|p| p.min(100) as i64), backend, clock::iso8601(micros), (micros / 1000) as i64],
            )?;
            let events = if updated > 0 { changed(conn, &id)?.into_iter().collect() } else { Vec::new() };
            let state = if cancel { LeaseState::CancelRequested } else { LeaseState::Held };
            Ok((state, events))
        })
        .await
    }

    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<bool, StoreError> {
        let (id, token) = (lease.job_id.to_string(), lease.token.clone());
        let c = completion.clone();
        let written = self
            .write(move |conn| {
                if holds_lease(conn, &id, &token)?.is_none() {
                    return Ok((false, Vec::new()));
                }
                let micros = clock::now_micros();
                let (now, now_ms) = (clock::iso8601(micros), (micros / 1000) as i64);
                match &c {
                    Completion::Finished { image_url, outputs } => conn.execute(
                        "UPDATE jobs SET status = 'finished', progress = 100, image_url = ?2, outputs = ?3, \
                         error = '', lease_token = NULL, updated_at = ?4, updated_ms = ?5 WHERE id = ?1",
                        params![id, image_url, serde_json::to_string(outputs).unwrap_or_default(), now, now_ms],
                    )?,
                    Completion::Failed { error } => conn.execute(
                        "UPDATE jobs SET status = 'failed', error = ?2, lease_token = NULL, \
                         updated_at = ?3, updated_ms = ?4 WHERE id = ?1",
                        params![id, error, now, now_ms],
                    )?,
                    Completion::Cancelled => conn.execute(
                        "UPDATE jobs SET status = 'failed', error = 'cancelled', cancelled = 1, \
                         lease_token = NULL, updated_at = ?2, updated_ms = ?3 WHERE id = ?1",
                        params![id, now, now_ms],
                    )?,
                };
                Ok((true, changed(conn, &id)?.into_iter().collect()))
            })
            .await?;
        log_completion(&lease.job_id, &completion, written);
        Ok(written)
    }

    async fn retry_later(
        &self,
        lease: &Lease,
        error: &str,
        delay: Duration,
    ) -> Result<RetryOutcome, StoreError> {
        let (id, token) = (lease.job_id.to_string(), lease.token.clone());
        let err_text = error.to_owned();
        let max_attempts = self.settings.max_attempts as i64;
        let payload = lease.payload.clone();
        let out = self
            .write(move |conn| {
                let Some(cancel) = holds_lease(conn, &id, &token)? else {
                    return Ok((RetryOutcome::Lost, Vec::new()));
                };
                let micros = clock::now_micros();
                let (now, now_ms) = (clock::iso8601(micros), (micros / 1000) as i64);
                let attempt: i64 = conn.query_row("SELECT attempt FROM jobs WHERE id = ?1", params![id], |r| r.get(0))?;
                let outcome = if cancel {
                    conn.execute(
                        "UPDATE jobs SET status = 'failed', error = 'cancelled', cancelled = 1, \
                         lease_token = NULL, updated_at = ?2, updated_ms = ?3 WHERE id = ?1",
                        params![id, now, now_ms],
                    )?;
                    RetryOutcome::Cancelled
                } else if attempt >= max_attempts {
                    let msg = gave_up_message(attempt as u32, &err_text);
                    conn.execute(
                        "UPDATE jobs SET status = 'failed', error = ?2, last_error = ?3, lease_token = NULL, \
                         updated_at = ?4, updated_ms = ?5 WHERE id = ?1",
                        params![id, msg, err_text, now, now_ms],
                    )?;
                    insert_dead_letter(conn, &id, &msg, attempt, &payload, &now)?;
                    RetryOutcome::GaveUp
                } else {
                    let due = now_ms + delay.as_millis() as i64;
                    conn.execute(
                        "UPDATE jobs SET status = 'queued', progress = 0, last_error = ?2, run_at = ?3, \
                         queue_seq = ?6, lease_token = NULL, worker_id = '', updated_at = ?4, \
                         updated_ms = ?5 WHERE id = ?1",
                        params![id, err_text, due, now, now_ms, next_seq(conn)?],
                    )?;
                    RetryOutcome::Scheduled { due_ms: due as u64 }
                };
                Ok((outcome, changed(conn, &id)?.into_iter().collect()))
            })
            .await?;
        log_retry(&lease.job_id, error, delay, out);
        Ok(out)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let (id, token) = (lease.job_id.to_string(), lease.token.clone());
        let released = self
            .write(move |conn| {
                if holds_lease(conn, &id, &token)?.is_none() {
                    return Ok((false, Vec::new()));
                }
                let micros = clock::now_micros();
                conn.execute(
                    &format!(
                        "UPDATE jobs SET status = 'queued', progress = 0, attempt = MAX(attempt - 1, 0), \
                         queue_seq = {FRONT_OF_QUEUE}, lease_token = NULL, worker_id = '', \
                         updated_at = ?2, updated_ms = ?3 WHERE id = ?1"
                    ),
                    params![id, clock::iso8601(micros), (micros / 1000) as i64],
                )?;
                Ok((true, changed(conn, &id)?.into_iter().collect()))
            })
            .await?;
        if released {
            self.wake.notify_waiters();
            tracing::info!(job_id = %lease.job_id, "job handed back to the queue");
        }
        Ok(())
    }

    async fn reap(&self) -> Result<Vec<JobId>, StoreError> {
        let ttl = self.settings.worker_ttl.as_millis() as i64;
        let max_attempts = self.settings.max_attempts as i64;
        let rows: Vec<(String, String, u32)> = self
            .read(|c| {
                c.prepare("SELECT id, host, pid FROM workers")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .await?;
        let dead_local: Vec<String> = rows
            .into_iter()
            .filter(|(id, host, pid)| self.dead_local_worker(id, host, *pid))
            .map(|(id, ..)| id)
            .collect();
        let reaped = self
            .write(move |conn| {
                let micros = clock::now_micros();
                let now_ms = (micros / 1000) as i64;
                for id in &dead_local {
                    conn.execute("DELETE FROM workers WHERE id = ?1", params![id])?;
                }
                let ids: Vec<String> = conn
                    .prepare(
                        "SELECT id FROM jobs WHERE status = 'processing' AND worker_id NOT IN \
                         (SELECT id FROM workers WHERE heartbeat_ms > ?1)",
                    )?
                    .query_map(params![now_ms - ttl], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut requeued = Vec::new();
                for id in &ids {
                    let Some(rec) = get_record(conn, id)? else { continue };
                    let (attempt, last_error, payload) =
                        (rec.attempt as i64, rec.last_error.clone(), rec.payload());
                    let now = clock::iso8601(micros);
                    if attempt >= max_attempts {
                        // Its workers keep dying on it: a poison pill. Fail it.
                        let msg = gave_up_message(attempt as u32, &last_error);
                        conn.execute(
                            "UPDATE jobs SET status = 'failed', error = ?2, lease_token = NULL, \
                             updated_at = ?3, updated_ms = ?4 WHERE id = ?1",
                            params![id, msg, now, now_ms],
                        )?;
                        insert_dead_letter(conn, id, &msg, attempt, &payload, &now)?;
                        tracing::warn!(job_id = %id, attempts = attempt, error = %msg, "job failed: out of attempts, dead-lettered");
                    } else {
                        conn.execute(
                            &format!(
                                "UPDATE jobs SET status = 'queued', progress = 0, lease_token = NULL, worker_id = '', \
                                 queue_seq = {FRONT_OF_QUEUE}, updated_at = ?2, updated_ms = ?3 WHERE id = ?1"
                            ),
                            params![id, now, now_ms],
                        )?;
                        tracing::warn!(job_id = %id, "job queued again: its worker stopped heartbeating");
                    }
                    requeued.extend(changed(conn, id)?);
                }
                // Forget workers long gone that hold nothing.
                conn.execute(
                    "DELETE FROM workers WHERE heartbeat_ms <= ?1 AND id NOT IN \
                     (SELECT worker_id FROM jobs WHERE status = 'processing')",
                    params![now_ms - ttl],
                )?;
                Ok((ids, requeued))
            })
            .await?;
        if !reaped.is_empty() {
            self.wake.notify_waiters();
        }
        Ok(reaped
            .into_iter()
            .filter_map(|id| JobId::parse(&id).ok())
            .collect())
    }

    async fn promote_due(&self) -> Result<u64, StoreError> {
        // Delayed retries need no moving here (a claim checks `run_at`); this is the
        // periodic housekeeping: wake claimers if retries are due, fail jobs that
        // waited past their time to live without starting, and drop final records
        // past theirs, as Redis's TTL does.
        let ttl = self.ttl_ms();
        let worker_ttl = self.settings.worker_ttl.as_millis() as i64;
        let (due, expired): (i64, usize) = self
            .write(move |conn| {
                let now = clock::now_ms() as i64;
                conn.execute(
                    "DELETE FROM jobs WHERE status IN ('finished', 'failed') AND updated_ms < ?1",
                    params![now - ttl],
                )?;
                conn.execute(
                    "DELETE FROM idempotency WHERE created_ms <= ?1",
                    params![now - IDEMPOTENCY_TTL.as_millis().min(ttl as u128) as i64],
                )?;
                conn.execute(
                    "DELETE FROM backend_reports WHERE updated_ms < ?1",
                    params![now - 10 * worker_ttl],
                )?;
                let stale: Vec<String> = conn
                    .prepare_cached(
                        "SELECT id FROM jobs WHERE status = 'queued' AND updated_ms < ?1 LIMIT ?2",
                    )?
                    .query_map(params![now - ttl, EXPIRE_BATCH], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let micros = clock::now_micros();
                let mut events = Vec::new();
                for id in &stale {
                    conn.execute(
                        "UPDATE jobs SET status = 'failed', error = ?2, updated_at = ?3, updated_ms = ?4 \
                         WHERE id = ?1",
                        params![id, EXPIRED_MESSAGE, clock::iso8601(micros), (micros / 1000) as i64],
                    )?;
                    events.extend(changed(conn, id)?);
                }
                let due: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND run_at > 0 AND run_at <= ?1",
                    params![now],
                    |r| r.get(0),
                )?;
                Ok(((due, stale.len()), events))
            })
            .await?;
        if expired > 0 {
            tracing::warn!(
                jobs = expired,
                "jobs failed: they waited past their time to live without starting"
            );
        }
        if due > 0 {
            self.wake.notify_waiters();
        }
        Ok(due as u64)
    }
}
