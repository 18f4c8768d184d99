//! Leases on Redis: fair, routed claims (claim.lua), fenced writes under a
//! lease token, hand-backs, delayed retries and the reaper.

use std::time::Duration;

use async_trait::async_trait;

use super::RedisStore;
use super::conn::Conn;
use super::scripts::Settle;
use crate::clock;
use crate::job::JobId;
use crate::store::lease::{log_completion, log_retry};
use crate::store::{AFFINITY_WINDOW, Completion, LeaseState, Leases, RetryOutcome, Route, Routed};
use crate::store::{Claim, DeadLetter, Lease, StoreError, WorkerId};

/// claim.lua's route arguments: the registry size it was made from (-1: any job),
/// the runnable sets, the preferred ones, and the affinity window.
fn route_args(inv: &mut ::redis::ScriptInvocation<'_>, route: &Route) {
    let Some(runnable) = &route.runnable else {
        inv.arg(-1);
        return;
    };
    inv.arg(route.known).arg(runnable.len());
    for r in runnable {
        inv.arg(r);
    }
    inv.arg(route.prefer.len());
    for r in &route.prefer {
        inv.arg(r);
    }
    inv.arg(AFFINITY_WINDOW);
}

/// How long claim.lua keeps a claim's answer for a retry under the same id.
const CLAIM_ANSWER_MS: u64 = 3_600_000;

/// How long the reaper lock is held at most (one reaper across all processes).
const REAPER_LOCK_MS: u64 = 10_000;

/// Delayed retries moved per promotion call.
const PROMOTE_BATCH: u64 = 500;

/// How often an idle claim looks at the queue again for entries that arrived
/// without an event (pushed onto `job_queue` by other programs).
const CLAIM_POLL: Duration = Duration::from_millis(200);

#[async_trait]
impl Leases for RedisStore {
    async fn heartbeat(&self, worker: &WorkerId) -> Result<(), StoreError> {
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(self.keys.heartbeat(worker.as_str()))
            .key(self.keys.workers())
            .arg(worker.as_str())
            .arg(self.settings.worker_ttl.as_millis() as u64)
            .arg(clock::now_ms());
        let mut conn = self.conn.clone();
        self.run(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    async fn deregister(&self, worker: &WorkerId) -> Result<(), StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("DEL")
                .arg(k.heartbeat(worker.as_str()))
                .query_async::<i64>(&mut conn),
        )
        .await?;
        // With no payloads given, reap.lua only forgets the worker if its list is empty.
        let mut inv = self.scripts.reap.prepare_invoke();
        inv.key(k.queue())
            .key(k.processing(worker.as_str()))
            .key(k.heartbeat(worker.as_str()))
            .key(k.workers())
            .key(k.pending())
            .key(k.index());
        for key in k.status_indexes() {
            inv.key(key);
        }
        for key in k.lane_keys() {
            inv.key(key);
        }
        inv.arg(worker.as_str()).arg(k.tag());
        self.run(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    async fn claim_routed(
        &self,
        worker: &WorkerId,
        wait: Duration,
        route: &Route,
    ) -> Result<Routed, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Interest first, so a job queued between the look and the wait wakes us.
            let queued = self.wake.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            let k = &self.keys;
            let mut inv = self.scripts.claim.prepare_invoke();
            inv.key(k.queue()).key(k.processing(worker.as_str()));
            for key in k.lane_keys() {
                inv.key(key);
            }
            inv.key(k.requirement_sets());
            let mut conn = self.conn.clone();
            let stranded = {
                let mut s = self.stranded.lock().expect("stranded entries");
                s.iter()
                    .position(|(w, _)| w == worker)
                    .map(|i| s.swap_remove(i).1)
            };
            let claim_id = {
                let mut u = self.unanswered.lock().expect("unanswered claims");
                u.iter()
                    .position(|(w, _)| w == worker)
                    .map(|i| u.swap_remove(i).1)
            };
            if let (Some(_), Some(id)) = (&stranded, &claim_id) {
                // Not asked this time: keep it for the next claim.
                self.unanswered
                    .lock()
                    .expect("unanswered claims")
                    .push((worker.clone(), id.clone()));
            }
            let claim_id = claim_id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            inv.arg(k.tag()).arg(&claim_id).arg(CLAIM_ANSWER_MS);
            route_args(&mut inv, route);
            let moved: Option<String> = match stranded {
                Some(raw) => Some(raw),
                None => match self.run(inv.invoke_async(&mut conn)).await {
                    Err(e @ StoreError::Unavailable(_)) => {
                        self.unanswered
                            .lock()
                            .expect("unanswered claims")
                            .push((worker.clone(), claim_id));
                        return Err(e);
                    }
                    r => r?,
                },
            };
            if moved.as_deref() == Some("stale") {
                return Ok(Routed::Stale);
            }
            if let Some(raw) = moved {
                if let Some(claim) = self.lease_moved(worker, raw).await? {
                    // Not run before its lease is on a replica: else a failover
                    // could hand the same job to another worker.
                    self.replicated().await?;
                    return Ok(Routed::Job(Box::new(claim)));
                }
                // Dropped (final, cancelled, out of attempts): look again at once.
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Routed::Nothing);
            }
            // Our jobs announce themselves; entries other programs push onto
            // job_queue do not, so look again every so often regardless.
            let _ = tokio::time::timeout((deadline - now).min(CLAIM_POLL), queued).await;
        }
    }

    async fn update(
        &self,
        lease: &Lease,
        progress: Option<u8>,
        backend: Option<&str>,
    ) -> Result<LeaseState, StoreError> {
        let micros = clock::now_micros();
        let mut inv = self.scripts.update.prepare_invoke();
        inv.key(self.keys.status(lease.job_id.as_str()))
            .arg(self.keys.events())
            .arg(&lease.token)
            .arg(progress.map(|p| p.min(100).to_string()).unwrap_or_default())
            .arg(clock::iso8601(micros))
            .arg(micros / 1000)
            .arg(self.ttl_secs());
        if let Some(b) = backend {
            // Sent to a backend: the first time, it started.
            inv.arg("backend")
                .arg(b)
                .arg("?started_ms")
                .arg(micros / 1000);
        }
        let mut conn = self.conn.clone();
        let r: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(match r {
            1 => LeaseState::Held,
            2 => LeaseState::CancelRequested,
            _ => LeaseState::Lost,
        })
    }

    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<bool, StoreError> {
        let micros = clock::now_micros();
        let mut inv = self.scripts.complete.prepare_invoke();
        inv.key(self.keys.status(lease.job_id.as_str()))
            .arg(self.keys.events())
            .arg(&lease.token);
        let (status, fields): (&str, Vec<(&str, String)>) = match &completion {
            Completion::Finished { image_url, outputs } => (
                "finished",
                vec![
                    ("image_url", image_url.clone()),
                    (
                        "outputs",
                        serde_json::to_string(outputs).unwrap_or_default(),
                    ),
                    ("error", String::new()),
                ],
            ),
            Completion::Failed { error } => ("failed", vec![("error", error.clone())]),
            Completion::Cancelled => (
                "failed",
                vec![("error", "cancelled".into()), ("cancelled", "1".into())],
            ),
        };
        inv.arg(status)
            .arg(clock::iso8601(micros))
            .arg(micros / 1000)
            .arg(self.ttl_secs());
        for (k, v) in fields {
            inv.arg(k).arg(v);
        }
        let mut conn = self.conn.clone();
        let written: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        let now = match (written, &completion) {
            (0, _) => "",
            (_, Completion::Finished { .. }) => "finished",
            _ => "failed",
        };
        self.settle(
            &lease.worker,
            &lease.payload,
            lease.job_id.as_str(),
            Settle::Done(now),
        )
        .await?;
        self.replicated().await?;
        log_completion(&lease.job_id, &completion, written == 1);
        Ok(written == 1)
    }

    async fn retry_later(
        &self,
        lease: &Lease,
        error: &str,
        delay: Duration,
    ) -> Result<RetryOutcome, StoreError> {
        let micros = clock::now_micros();
        let due = micros / 1000 + delay.as_millis() as u64;
        let mut inv = self.scripts.retry_status.prepare_invoke();
        inv.key(self.keys.status(lease.job_id.as_str()))
            .arg(self.keys.events())
            .arg(&lease.token)
            .arg(clock::iso8601(micros))
            .arg(micros / 1000)
            .arg(self.ttl_secs())
            .arg(due)
            .arg(error)
            .arg(self.settings.max_attempts);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
        let id = lease.job_id.as_str();
        let outcome = match reply.first().map(String::as_str) {
            Some("scheduled") => {
                self.settle(&lease.worker, &lease.payload, id, Settle::Delay(due))
                    .await?;
                RetryOutcome::Scheduled { due_ms: due }
            }
            Some("dead") => {
                let dl = DeadLetter {
                    job_id: id.to_owned(),
                    error: reply.get(2).cloned().unwrap_or_default(),
                    attempts: reply.get(1).and_then(|a| a.parse().ok()).unwrap_or(0),
                    payload: lease.payload.clone(),
                    failed_at: clock::iso8601(micros),
                };
                self.settle(&lease.worker, &lease.payload, id, Settle::Dead(&dl))
                    .await?;
                RetryOutcome::GaveUp
            }
            Some("cancelled") => {
                self.settle(&lease.worker, &lease.payload, id, Settle::Done("failed"))
                    .await?;
                RetryOutcome::Cancelled
            }
            _ => {
                self.settle(&lease.worker, &lease.payload, id, Settle::Done(""))
                    .await?;
                RetryOutcome::Lost
            }
        };
        self.replicated().await?;
        log_retry(&lease.job_id, error, delay, outcome);
        Ok(outcome)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let micros = clock::now_micros();
        let mut inv = self.scripts.release_status.prepare_invoke();
        inv.key(self.keys.status(lease.job_id.as_str()))
            .arg(self.keys.events())
            .arg(&lease.token)
            .arg(clock::iso8601(micros))
            .arg(micros / 1000)
            .arg(self.ttl_secs());
        let mut conn = self.conn.clone();
        let released: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        let action = if released == 1 {
            Settle::Release
        } else {
            Settle::Done("")
        };
        self.settle(&lease.worker, &lease.payload, lease.job_id.as_str(), action)
            .await?;
        if released == 1 {
            tracing::info!(job_id = %lease.job_id, "job handed back to the queue");
        }
        Ok(())
    }

    async fn reap(&self) -> Result<Vec<JobId>, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        if !self.conn.is_cluster() && self.restarted_recently(&mut conn).await? {
            return Ok(Vec::new());
        }
        let lock_token = uuid::Uuid::new_v4().simple().to_string();
        let locked: Option<String> = self
            .run(
                ::redis::cmd("SET")
                    .arg(k.reaper_lock())
                    .arg(&lock_token)
                    .arg("NX")
                    .arg("PX")
                    .arg(REAPER_LOCK_MS)
                    .query_async(&mut conn),
            )
            .await?;
        if locked.is_none() {
            return Ok(Vec::new());
        }
        let result = self.reap_locked(&mut conn).await;
        let mut unlock = self.scripts.unlock.prepare_invoke();
        unlock.key(k.reaper_lock()).arg(&lock_token);
        let _ = self.run(unlock.invoke_async::<i64>(&mut conn)).await;
        result
    }

    async fn promote_due(&self) -> Result<u64, StoreError> {
        let k = &self.keys;
        let mut inv = self.scripts.promote.prepare_invoke();
        inv.key(k.delayed())
            .key(k.queue())
            .key(k.pending())
            .key(k.seq());
        for key in k.lane_keys() {
            inv.key(key);
        }
        inv.arg(clock::now_ms()).arg(PROMOTE_BATCH).arg(k.tag());
        let mut conn = self.conn.clone();
        let moved: u64 = self.run(inv.invoke_async(&mut conn)).await?;
        if moved > 0 {
            // Retries due now announce nothing on the channel: wake this process.
            self.wake.notify_waiters();
        }
        Ok(moved)
    }
}

impl RedisStore {
    /// Leases an entry claim.lua just moved into the worker's processing list.
    /// The store may go away between the two steps: keep trying for a worker TTL
    /// (the worker's heartbeat keeps its list from being reaped meanwhile), then
    /// keep the entry for the next claim, so it never sits unowned in the list of
    /// a live worker.
    async fn lease_moved(
        &self,
        worker: &WorkerId,
        raw: String,
    ) -> Result<Option<Claim>, StoreError> {
        let until = tokio::time::Instant::now() + self.settings.worker_ttl;
        loop {
            match self.lease_payload(worker, raw.clone()).await {
                Err(StoreError::Unavailable(_)) if tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a claimed job's lease is not written yet; the next claim takes it first");
                    self.stranded
                        .lock()
                        .expect("stranded entries")
                        .push((worker.clone(), raw));
                    return Err(e);
                }
                Ok(claim) => return Ok(claim),
            }
        }
    }

    /// Whether Redis started less than a worker TTL (plus a second) ago. Workers
    /// cannot heartbeat while Redis is down, so right after a restart every
    /// heartbeat may have run out: the reaper waits one TTL for them to come back
    /// instead of requeueing every running job (and running it twice).
    async fn restarted_recently(&self, conn: &mut Conn) -> Result<bool, StoreError> {
        let info: String = self
            .run(::redis::cmd("INFO").arg("server").query_async(conn))
            .await?;
        let uptime_s = info
            .lines()
            .find_map(|l| l.strip_prefix("uptime_in_seconds:"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        Ok(uptime_s.is_some_and(|s| {
            Duration::from_secs(s) < self.settings.worker_ttl + Duration::from_secs(1)
        }))
    }
}
