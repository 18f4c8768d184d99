//! The embedded job store: one SQLite file in the data directory (WAL mode), with
//! the same states and semantics as the Redis store.
//!
//! All writes go through one writer thread that commits whatever has piled up in one
//! transaction (group commit), each operation in its own savepoint; reads use a small
//! pool of connections. Events are published in-process after each commit.
//! Several processes may share the file (SQLite's locking; `busy_timeout`), but
//! events only reach the process that wrote them.

mod access;
mod rows;
mod schema;
mod webhooks;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::{Notify, Semaphore, broadcast, oneshot};

use self::rows::{
    COLUMN_COUNT, COLUMNS, FRONT_OF_QUEUE, changed, get_record, holds_lease, insert_dead_letter,
    next_seq, record_from_row,
};
use self::schema::migrate;
use self::writer::{Deliver, WriteOp, in_savepoint, writer_loop};
use super::{
    AFFINITY_WINDOW, CancelOutcome, Claim, Completion, DeadLetter, EVENT_BUFFER, EXPIRED_MESSAGE,
    IDEMPOTENCY_TTL, IdempotencyClaim, JobEvent, JobPage, JobStore, Lease, LeaseState, ListQuery,
    PREVIEW_TTL, Preview, QueueStats, Refusal, RetryOutcome, Route, Routed, StoreError, StoreKind,
    StoreSettings, WorkerId, gave_up_message, hostname, log_completion, log_retry,
};
use crate::auth::ApiKey;
use crate::auth::rate::{LocalLimiter, RateDecision};
use crate::clock;
use crate::job::{JobId, JobRecord, JobStatus, NewJob};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "studio.db";

/// Read connections kept open (reads run on tokio's blocking pool).
const READERS: usize = 4;

/// How often a waiting claim looks again for jobs enqueued by another process (this
/// process's own enqueues wake it at once).
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// Jobs expired per housekeeping round, so one round stays short.
const EXPIRE_BATCH: i64 = 500;

/// Above this estimated position, `queue_position` reports the estimate instead of
/// counting exactly, so a status read stays cheap on a million-job queue.
const EXACT_POSITION_LIMIT: i64 = 10_000;

/// A job store in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<WriteOp>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_permits: Arc<Semaphore>,
    settings: StoreSettings,
    events: broadcast::Sender<JobEvent>,
    /// Woken whenever a job becomes claimable in this process.
    wake: Arc<Notify>,
    /// Worker ids this process registered (never reaped as "a previous life").
    own_workers: Mutex<Vec<String>>,
    /// Rate limits, counted in this process.
    limiter: LocalLimiter,
    /// Each job's latest preview (only this process uses the file), with when it
    /// was put; at most [`MAX_PREVIEWS`], the oldest forgotten first.
    previews: Mutex<HashMap<String, (Instant, Preview)>>,
}

/// Previews kept in memory at most (one per running job).
const MAX_PREVIEWS: usize = 1024;

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a commit survives a crash of the process (kill -9); only a
    // power loss can lose the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("SQLite: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/studio.db`.
    pub fn open(dir: &Path, settings: StoreSettings) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let conn = open(&path).map_err(internal)?;
        migrate(&conn)?;
        let mut readers = Vec::new();
        for _ in 0..READERS {
            readers.push(open(&path).map_err(internal)?);
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (tx, rx) = mpsc::channel::<WriteOp>();
        let ev = events.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, ev))
            .map_err(internal)?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(tx),
            readers: Arc::new(Mutex::new(readers)),
            read_permits: Arc::new(Semaphore::new(READERS)),
            settings,
            events,
            wake: Arc::new(Notify::new()),
            own_workers: Mutex::new(Vec::new()),
            limiter: LocalLimiter::default(),
            previews: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` in the writer's next transaction.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<(T, Vec<JobRecord>)> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let op: WriteOp = Box::new(move |conn| {
            let Some(conn) = conn else {
                let deliver: Deliver = Box::new(move |r| {
                    let _ = tx.send(Err(internal(r.err().unwrap_or_default())));
                });
                return (Vec::new(), deliver);
            };
            let r = in_savepoint(conn, f);
            let (value, events) = match r {
                Ok((v, ev)) => (Ok(v), ev),
                Err(e) => (Err(internal(e)), Vec::new()),
            };
            let deliver: Deliver = Box::new(move |committed| {
                let out = match committed {
                    Ok(()) => value,
                    Err(e) => Err(internal(e)),
                };
                let _ = tx.send(out);
            });
            (events, deliver)
        });
        self.writer
            .lock()
            .expect("writer lock")
            .send(op)
            .map_err(|_| internal("the writer thread has stopped"))?;
        rx.await
            .map_err(|_| internal("the writer thread has stopped"))?
    }

    /// Runs `f` on a pooled read connection.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        // At most READERS reads at once: each holds one pooled connection, so the
        // pool (and its page caches) never grows under load.
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(internal)?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .lock()
                .expect("reader pool")
                .pop()
                .expect("a permit guarantees a connection");
            let r = f(&conn);
            pool.lock().expect("reader pool").push(conn);
            drop(permit);
            r
        })
        .await
        .map_err(internal)?
        .map_err(internal)
    }

    fn ttl_ms(&self) -> i64 {
        self.settings.job_ttl.as_millis() as i64
    }

    /// Leases the next due job the route allows in one `UPDATE … RETURNING`;
    /// `None` when nothing is due. (A queued job here is never cancelled — cancel
    /// fails queued jobs at once — and never out of attempts: the reaper fails
    /// those instead of requeueing them.)
    async fn try_claim(&self, worker: &WorkerId, route: &Route) -> Result<Routed, StoreError> {
        let w = worker.as_str().to_owned();
        // The route as a JSON array for `json_each`, jobs without a set included
        // (None: any job).
        let runnable = route.runnable.as_ref().map(|r| {
            let mut all: Vec<&str> = r.iter().map(String::as_str).collect();
            all.push("");
            serde_json::to_string(&all).unwrap_or_default()
        });
        let prefer_list = route.prefer.clone();
        let prefer = serde_json::to_string(&route.prefer).unwrap_or_default();
        let known = route.known as i64;
        self.write(move |conn| {
            if runnable.is_some() {
                let n: i64 = conn
                    .prepare_cached("SELECT COUNT(*) FROM requirement_sets")?
                    .query_row([], |r| r.get(0))?;
                if n != known {
                    return Ok((Routed::Stale, Vec::new()));
                }
            }
            let micros = clock::now_micros();
            let token = uuid::Uuid::new_v4().simple().to_string();
            let now_ms = (micros / 1000) as i64;
            // The fair pick: of the lanes with a job due that the route allows and
            // room to run one more, the lowest virtual time, walking `lanes_by_vt`
            // (the triggers lift a lane that comes back to the current virtual
            // time, so an idle one counts from now).
            let vtime: f64 = conn
                .prepare_cached("SELECT value FROM counters WHERE name = 'vtime'")?
                .query_row([], |r| r.get(0))?;
            // Routed, a job is found through `jobs_route` one set at a time: the
            // cost grows with the sets this backend runs, not with the jobs of
            // other sets queued ahead.
            let lane_sql = if runnable.is_some() {
                "SELECT owner, MAX(vt, ?1), weight FROM lanes \
                 WHERE queued > 0 AND (max_running = 0 OR running < max_running) \
                   AND EXISTS (SELECT 1 FROM jobs WHERE jobs.owner = lanes.owner \
                               AND status = 'queued' \
                               AND req IN (SELECT value FROM json_each(?3)) AND run_at <= ?2) \
                 ORDER BY vt, owner LIMIT 1"
            } else {
                "SELECT owner, MAX(vt, ?1), weight FROM lanes \
                 WHERE queued > 0 AND (max_running = 0 OR running < max_running) \
                   AND EXISTS (SELECT 1 FROM jobs WHERE jobs.owner = lanes.owner \
                               AND status = 'queued' AND run_at <= ?2 AND ?3 IS NULL) \
                 ORDER BY vt, owner LIMIT 1"
            };
            let lane: Option<(String, f64, i64)> = conn
                .prepare_cached(lane_sql)?
                .query_row(params![vtime, now_ms, runnable], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let Some((owner, start, weight)) = lane else {
                return Ok((Routed::Nothing, Vec::new()));
            };
            // Within the lane: the first the route allows, or a preferred one
            // (same model files as the backend's last job) close behind it.
            let first_sql = if runnable.is_some() {
                "SELECT j.id, j.priority, j.queue_seq, j.req FROM json_each(?3) AS r, jobs AS j \
                 WHERE j.id = (SELECT id FROM jobs WHERE owner = ?1 AND status = 'queued' \
                               AND req = r.value AND run_at <= ?2 \
                               ORDER BY priority, queue_seq LIMIT 1) \
                 ORDER BY j.priority, j.queue_seq LIMIT 1"
            } else {
                "SELECT id, priority, queue_seq, req FROM jobs WHERE owner = ?1 \
                 AND status = 'queued' AND run_at <= ?2 AND ?3 IS NULL \
                 ORDER BY priority, queue_seq LIMIT 1"
            };
            let first: Option<(String, i64, i64, String)> = conn
                .prepare_cached(first_sql)?
                .query_row(params![owner, now_ms, runnable], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            let Some((first_id, priority, seq, req)) = first else {
                return Ok((Routed::Nothing, Vec::new()));
            };
            let chosen = if !prefer_list.is_empty() && !prefer_list.contains(&req) {
                conn.prepare_cached(
                    "SELECT id FROM jobs WHERE owner = ?1 AND status = 'queued' AND run_at <= ?2 \
                     AND priority = ?3 AND queue_seq > ?4 AND queue_seq <= ?4 + ?5 \
                     AND req IN (SELECT value FROM json_each(?6)) \
                     ORDER BY queue_seq LIMIT 1",
                )?
                .query_row(
                    params![owner, now_ms, priority, seq, AFFINITY_WINDOW as i64, prefer],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(first_id)
            } else {
                first_id
            };
            let claimed = conn
                .prepare_cached(&format!(
                    "UPDATE jobs SET status = 'processing', attempt = attempt + 1, worker_id = ?1, \
                     lease_token = ?2, progress = 0, run_at = 0, updated_at = ?3, updated_ms = ?4, \
                     rev = rev + 1 WHERE id = ?5 RETURNING {COLUMNS}"
                ))?
                .query_row(
                    params![w, token, clock::iso8601(micros), now_ms, chosen],
                    record_from_row,
                )
                .optional()?;
            if claimed.is_some() {
                conn.prepare_cached(
                    "UPDATE counters SET value = MAX(value, ?1) WHERE name = 'vtime'",
                )?
                .execute(params![start])?;
                conn.prepare_cached("UPDATE lanes SET vt = ?2 WHERE owner = ?1")?
                    .execute(params![owner, start + 1.0 / weight.max(1) as f64])?;
            }
            let Some(rec) = claimed else {
                return Ok((Routed::Nothing, Vec::new()));
            };
            let lease = Lease {
                job_id: JobId::parse(&rec.id).unwrap_or_else(|_| JobId::random()),
                worker: WorkerId::from_string(w.clone()),
                token,
                attempt: rec.attempt,
                payload: rec.payload(),
            };
            tracing::info!(job_id = %rec.id, attempt = rec.attempt, worker = %w, "job processing");
            Ok((
                Routed::Job(Box::new(Claim {
                    lease,
                    job: rec.clone(),
                })),
                vec![rec],
            ))
        })
        .await
    }

    /// Whether a worker row on this host belongs to a process that no longer runs.
    fn dead_local_worker(&self, id: &str, host: &str, pid: u32) -> bool {
        if host != hostname() || !Path::new("/proc/self").exists() {
            return false;
        }
        if self
            .own_workers
            .lock()
            .expect("own workers")
            .iter()
            .any(|w| w == id)
        {
            return false;
        }
        // Our own pid under an id we did not register: our previous life (a restarted
        // container gets the same pid).
        pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists()
    }
}

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

#[async_trait]
impl JobStore for SqliteStore {
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
        let rec = JobRecord::queued(job);
        let params_json = serde_json::Value::Object(job.params.clone()).to_string();
        let max_queued = self.settings.max_queued as i64;
        let lane = job.lane.clone();
        let r = rec.clone();
        let out = self
            .write(move |conn| {
                // The caps first, so a refusal writes nothing. (A resubmission of a
                // known id when the queue is full is refused too, rather than
                // answered with the existing job: only our own callers reuse ids.)
                let queued: i64 = conn
                    .prepare_cached("SELECT value FROM counters WHERE name = 'queued'")?
                    .query_row([], |row| row.get(0))?;
                if queued >= max_queued {
                    return Ok((Err(Refusal::QueueFull { limit: max_queued as u64 }), Vec::new()));
                }
                if !r.owner.is_empty() {
                    if let Some(limit) = lane.max_queued {
                        let mine: i64 = conn
                            .prepare_cached("SELECT queued FROM lanes WHERE owner = ?1")?
                            .query_row(params![r.owner], |row| row.get(0))
                            .optional()?
                            .unwrap_or(0);
                        if mine >= i64::from(limit) {
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
        self.read(move |c| get_record(c, &id)).await
    }

    async fn queue_position(&self, id: &JobId) -> Result<Option<u64>, StoreError> {
        let id = id.to_string();
        self.read(move |c| queue_position(c, &id)).await
    }

    async fn status(&self, id: &JobId) -> Result<Option<(JobRecord, Option<u64>)>, StoreError> {
        // Both on one pooled connection, in one trip to the blocking pool.
        let id = id.to_string();
        self.read(move |c| {
            let Some(job) = get_record(c, &id)? else {
                return Ok(None);
            };
            let position = if job.status == JobStatus::Queued {
                queue_position(c, &id)?
            } else {
                None
            };
            Ok(Some((job, position)))
        })
        .await
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
            let updated = conn.execute(
                "UPDATE jobs SET progress = MAX(progress, COALESCE(?2, progress)), \
                 backend = COALESCE(?3, backend), updated_at = ?4, updated_ms = ?5 \
                 WHERE id = ?1 AND (progress < COALESCE(?2, -1) OR backend != COALESCE(?3, backend))",
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

    fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.put_key_impl(key).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.get_key_impl(id).await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.list_keys_impl().await
    }

    async fn server_secret(&self) -> Result<Vec<u8>, StoreError> {
        self.server_secret_impl().await
    }

    async fn rate_limit(
        &self,
        bucket: &str,
        rate: f64,
        burst: u32,
    ) -> Result<RateDecision, StoreError> {
        Ok(self.rate_limit_impl(bucket, rate, burst))
    }

    async fn take_idempotency(
        &self,
        scope: &str,
        claim: &IdempotencyClaim,
    ) -> Result<Option<IdempotencyClaim>, StoreError> {
        self.take_idempotency_impl(scope, claim).await
    }

    async fn release_idempotency(&self, scope: &str) -> Result<(), StoreError> {
        self.release_idempotency_impl(scope).await
    }

    async fn replace_idempotency(
        &self,
        scope: &str,
        held: &IdempotencyClaim,
        claim: &IdempotencyClaim,
    ) -> Result<bool, StoreError> {
        self.replace_idempotency_impl(scope, held, claim).await
    }

    async fn report_backends(&self, worker: &WorkerId, report: &str) -> Result<(), StoreError> {
        self.report_backends_impl(worker, report).await
    }

    async fn backend_reports(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.backend_reports_impl().await
    }

    async fn put_upload(
        &self,
        rec: &crate::uploads::UploadRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.put_upload_impl(rec, ttl).await
    }

    async fn put_capabilities(
        &self,
        fp: &str,
        json: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.put_capabilities_impl(fp, json, ttl).await
    }

    async fn get_capabilities(&self, fp: &str) -> Result<Option<String>, StoreError> {
        self.get_capabilities_impl(fp).await
    }

    async fn register_requirements(&self, fp: &str, json: &str) -> Result<bool, StoreError> {
        self.register_requirements_impl(fp, json).await
    }

    async fn put_webhook(
        &self,
        id: &JobId,
        rec: &crate::webhooks::WebhookRecord,
        due_ms: u64,
        cap: u64,
    ) -> Result<bool, StoreError> {
        self.put_webhook_impl(id, rec, due_ms, cap).await
    }

    async fn get_webhook(
        &self,
        id: &JobId,
    ) -> Result<Option<crate::webhooks::WebhookRecord>, StoreError> {
        self.get_webhook_impl(id).await
    }

    async fn claim_webhooks(
        &self,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<super::ClaimedWebhook>, StoreError> {
        self.claim_webhooks_impl(lease, max).await
    }

    async fn settle_webhook(
        &self,
        claimed: &super::ClaimedWebhook,
        rec: &crate::webhooks::WebhookRecord,
        due_ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.settle_webhook_impl(claimed, rec, due_ms).await
    }

    async fn wake_webhook(&self, id: &JobId) -> Result<(), StoreError> {
        self.wake_webhook_impl(id).await
    }

    async fn delete_webhook(&self, id: &JobId) -> Result<(), StoreError> {
        self.delete_webhook_impl(id).await
    }

    async fn put_preview(
        &self,
        id: &JobId,
        owner: &str,
        preview: &Preview,
    ) -> Result<(), StoreError> {
        {
            let mut m = self.previews.lock().expect("previews");
            m.retain(|_, (at, _)| at.elapsed() < PREVIEW_TTL);
            if m.len() >= MAX_PREVIEWS && !m.contains_key(id.as_str()) {
                let oldest = m
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    m.remove(&k);
                }
            }
            m.insert(id.to_string(), (Instant::now(), preview.clone()));
        }
        let _ = self
            .events
            .send(JobEvent::preview(id.as_str(), owner, preview.seq));
        Ok(())
    }

    async fn get_preview(&self, id: &JobId) -> Result<Option<Preview>, StoreError> {
        Ok(self
            .previews
            .lock()
            .expect("previews")
            .get(id.as_str())
            .filter(|(at, _)| at.elapsed() < PREVIEW_TTL)
            .map(|(_, p)| p.clone()))
    }

    async fn requirement_sets(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.requirement_sets_impl().await
    }

    async fn get_upload(
        &self,
        owner: &str,
        id: &str,
        extend: Option<Duration>,
    ) -> Result<Option<crate::uploads::UploadRecord>, StoreError> {
        self.get_upload_impl(owner, id, extend).await
    }
}
