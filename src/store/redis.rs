//! The Redis job store: the prototype's keys plus leases, heartbeats, a reaper,
//! fencing, delayed retries, dead letters and change events (DESIGN.md §4).
//!
//! Every multi-key step is one Lua script (`lua/*.lua`), and every script touches
//! either only `{job_queue}`-slot keys or only one status hash, so the layout works
//! on Redis Cluster. Steps that must touch both (claim, retry, reap) are two
//! scripts, ordered so that a crash between them leaves nothing lost: at worst a job
//! is run again, and the lease token fences off the stale runner.

mod access;
pub mod conn;
mod events;
mod keys;
mod lease;
mod scripts;
mod webhooks;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::RedisError;
use ::redis::aio::ConnectionManagerConfig;
use async_trait::async_trait;
use tokio::sync::{Notify, broadcast, watch};

use self::conn::Conn;
use self::events::subscribe_loop;
pub use self::keys::Keys;
use self::scripts::{Scripts, Settle};
use super::{
    AFFINITY_WINDOW, CancelOutcome, Claim, Completion, DeadLetter, EVENT_BUFFER, IdempotencyClaim,
    JobEvent, JobPage, JobStore, Lease, LeaseState, ListQuery, QueueStats, Refusal, RetryOutcome,
    Route, Routed, StoreError, StoreKind, StoreSettings, WorkerId, log_completion, log_retry,
};
use crate::auth::ApiKey;
use crate::auth::rate::RateDecision;
use crate::clock;
use crate::job::{JobId, JobRecord, NewJob};

/// How long any single Redis command may take before the caller gets
/// [`StoreError::Unavailable`]: an outage answers 503 within a second.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long the reaper lock is held at most (one reaper across all processes).
const REAPER_LOCK_MS: u64 = 10_000;

/// Delayed retries moved per promotion call.
const PROMOTE_BATCH: u64 = 500;

/// How often an idle claim looks at the queue again for entries that arrived
/// without an event (pushed onto `job_queue` by other programs).
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// Index entries examined at most by one `list` call when filtering by status.
const LIST_SCAN_LIMIT: usize = 2000;

/// A job store on Redis ≥ 6.2.
pub struct RedisStore {
    conn: Conn,
    /// Woken when a job is queued (seen on the events channel), for idle claims.
    wake: Arc<Notify>,
    keys: Keys,
    settings: StoreSettings,
    scripts: Scripts,
    events: broadcast::Sender<JobEvent>,
    subscriber: Mutex<Option<watch::Sender<bool>>>,
    op_timeout: Duration,
    url_for_logs: String,
    /// Queue entries moved into a worker's processing list whose lease could not
    /// be written (the store went away between the two steps): leased first by
    /// the next claim, so none is left behind in a live worker's list.
    stranded: Mutex<Vec<(WorkerId, String)>>,
    /// Ids of claims that got no answer: the next claim of that worker asks again
    /// under the same id (see claim.lua).
    unanswered: Mutex<Vec<(WorkerId, String)>>,
}

/// How long claim.lua keeps a claim's answer for a retry under the same id.
const CLAIM_ANSWER_MS: u64 = 3_600_000;

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

/// Longest a write waits for `--redis-wait-replicas` replicas.
const WAIT_MS: u64 = 1000;

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
    /// A store on the Redis at `url` (`redis://[user:pass@]host:port[/db]`, or
    /// `redis+sentinel://host:26379[,…]/<master>[/db]`). Connects
    /// lazily: the service starts, and reports 503, while Redis is down.
    pub fn connect(url: &str, prefix: &str, settings: StoreSettings) -> Result<Self, StoreError> {
        let op_timeout = DEFAULT_OP_TIMEOUT;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout / 2))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = Conn::open(url, config)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(RedisStore {
            stranded: Mutex::new(Vec::new()),
            unanswered: Mutex::new(Vec::new()),
            conn,
            wake: Arc::new(Notify::new()),
            keys: Keys::new(prefix),
            settings,
            scripts: Scripts::new(),
            events,
            subscriber: Mutex::new(None),
            op_timeout,
            url_for_logs: redact(url),
        })
    }

    /// With `--redis-wait-replicas N`: waits until N replicas have this
    /// connection's writes (up to [`WAIT_MS`]); fewer is `Unavailable`, so the
    /// caller is not told a write happened that a failover could lose.
    async fn replicated(&self) -> Result<(), StoreError> {
        let n = self.settings.wait_replicas;
        if n == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let acked: i64 = self
            .run_for(
                Duration::from_millis(WAIT_MS) + self.op_timeout,
                ::redis::cmd("WAIT")
                    .arg(n)
                    .arg(WAIT_MS)
                    .query_async(&mut conn),
            )
            .await?;
        if acked < i64::from(n) {
            return Err(StoreError::Unavailable(format!(
                "only {acked} of {n} Redis replicas acknowledged the write within {WAIT_MS} ms"
            )));
        }
        Ok(())
    }

    /// The connection handle (Sentinel: always to the current master).
    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }

    fn ttl_secs(&self) -> u64 {
        self.settings.job_ttl.as_secs().max(1)
    }

    /// Runs one Redis call under the operation timeout.
    async fn run<T>(
        &self,
        f: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        self.run_for(self.op_timeout, f).await
    }

    async fn run_for<T>(
        &self,
        limit: Duration,
        f: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "Redis did not answer within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// Lists a job of `owner` under `status` (or `gone`: not at all); `unqueue`
    /// also takes it out of the queue-position index.
    async fn relist(
        &self,
        id: &str,
        owner: &str,
        status: &str,
        unqueue: bool,
    ) -> Result<(), StoreError> {
        let k = &self.keys;
        let mut inv = self.scripts.relist.prepare_invoke();
        inv.key(k.index()).key(k.pending());
        for key in k.status_indexes() {
            inv.key(key);
        }
        for key in k.lane_keys() {
            inv.key(key);
        }
        inv.arg(id)
            .arg(status)
            .arg(if unqueue { "1" } else { "0" })
            .arg(k.tag())
            .arg(owner);
        let mut conn = self.conn.clone();
        self.run(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    fn start_subscriber(&self) {
        let mut guard = self.subscriber.lock().expect("subscriber lock");
        if guard.is_some() {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        *guard = Some(stop_tx);
        let channel = self.keys.events();
        let tx = self.events.clone();
        let connect_timeout = self.op_timeout;
        tokio::spawn(subscribe_loop(
            self.conn.clone(),
            channel,
            tx,
            self.wake.clone(),
            stop_rx,
            connect_timeout,
        ));
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(stop) = self.subscriber.lock().ok().and_then(|mut g| g.take()) {
            let _ = stop.send(true);
        }
    }
}

fn map_err(e: RedisError) -> StoreError {
    // Answers that mean "not now" are an outage too: a Redis still loading its
    // AOF after a restart, a replica during a failover, a busy script, a cluster
    // resharding or without a master.
    let transient = matches!(
        e.code(),
        Some("LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "BUSY")
    );
    if transient
        || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
    {
        StoreError::Unavailable(format!("Redis: {e}"))
    } else {
        StoreError::Internal(format!("Redis: {e}"))
    }
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn record_from_map(id: &str, map: HashMap<String, String>) -> Option<JobRecord> {
    if map.is_empty() {
        return None;
    }
    let mut job = JobRecord::from_fields(map.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if job.id.is_empty() {
        job.id = id.to_owned();
    }
    Some(job)
}

#[async_trait]
impl JobStore for RedisStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }

    fn describe(&self) -> String {
        if self.keys.prefix().is_empty() {
            format!("redis at {}", self.url_for_logs)
        } else {
            format!(
                "redis at {} (key prefix {:?})",
                self.url_for_logs,
                self.keys.prefix()
            )
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let pong: String = self
            .run(::redis::cmd("PING").query_async(&mut conn))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Internal(format!(
                "unexpected PING reply {pong:?}"
            )))
        }
    }

    async fn enqueue(&self, job: &NewJob) -> Result<JobRecord, StoreError> {
        let mut record = JobRecord::queued(job);
        record.rev = 1;
        let fields = record.to_fields();
        let k = &self.keys;
        let mut status = self.scripts.enqueue_status.prepare_invoke();
        status.key(k.status(job.id.as_str())).arg(self.ttl_secs());
        for (f, v) in &fields {
            status.arg(*f).arg(v);
        }
        let mut conn = self.conn.clone();
        let created: i64 = self.run(status.invoke_async(&mut conn)).await?;
        if created == 0 {
            return Ok(self.get(&job.id).await?.unwrap_or(record));
        }
        // The event other processes see: the hash as the scripts publish it.
        let event: serde_json::Map<String, serde_json::Value> = fields
            .into_iter()
            .map(|(f, v)| (f.to_owned(), serde_json::Value::String(v)))
            .collect();
        let mut push = self.scripts.enqueue_push.prepare_invoke();
        push.key(k.queue())
            .key(k.index())
            .key(k.pending())
            .key(k.seq());
        for key in k.status_indexes() {
            push.key(key);
        }
        for key in k.lane_keys() {
            push.key(key);
        }
        push.arg(job.payload())
            .arg(job.id.as_str())
            .arg(self.settings.index_cap)
            .arg(self.settings.max_queued)
            .arg(k.events())
            .arg(serde_json::Value::Object(event).to_string())
            .arg(k.tag())
            .arg(&job.owner)
            .arg(job.lane.max_queued.unwrap_or(0))
            .arg(job.lane.weight.max(1))
            .arg(job.lane.max_running.unwrap_or(0));
        let pushed = self.run(push.invoke_async::<i64>(&mut conn)).await;
        if !matches!(pushed, Ok(seq) if seq > 0) {
            // Nothing is queued: take the record back, best effort (the caller's
            // refusal means nobody will ask for this job).
            let _ = self
                .run(
                    ::redis::cmd("DEL")
                        .arg(k.status(job.id.as_str()))
                        .query_async::<i64>(&mut conn),
                )
                .await;
            let refusal = match pushed? {
                -2 => Refusal::QuotaFull {
                    limit: job.lane.max_queued.unwrap_or(0),
                },
                _ => Refusal::QueueFull {
                    limit: self.settings.max_queued,
                },
            };
            return Err(StoreError::Refused(refusal));
        }
        self.replicated().await?;
        tracing::info!(job_id = %job.id, workflow = %job.workflow, "job queued");
        Ok(record)
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let map: HashMap<String, String> = self
            .run(
                ::redis::cmd("HGETALL")
                    .arg(self.keys.status(id.as_str()))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(record_from_map(id.as_str(), map))
    }

    async fn queue_position(&self, id: &JobId) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let rank: Option<u64> = self
            .run(
                ::redis::cmd("ZRANK")
                    .arg(self.keys.pending())
                    .arg(id.as_str())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(rank)
    }

    async fn status(&self, id: &JobId) -> Result<Option<(JobRecord, Option<u64>)>, StoreError> {
        // One round trip for both (a plain pipeline: the two need not be atomic).
        let mut conn = self.conn.clone();
        let (map, rank): (HashMap<String, String>, Option<u64>) = if self.conn.is_cluster() {
            // Two slots: two calls.
            let map = self
                .run(
                    ::redis::cmd("HGETALL")
                        .arg(self.keys.status(id.as_str()))
                        .query_async(&mut conn),
                )
                .await?;
            (map, self.queue_position(id).await?)
        } else {
            self.run(
                ::redis::pipe()
                    .cmd("HGETALL")
                    .arg(self.keys.status(id.as_str()))
                    .cmd("ZRANK")
                    .arg(self.keys.pending())
                    .arg(id.as_str())
                    .query_async(&mut conn),
            )
            .await?
        };
        Ok(record_from_map(id.as_str(), map).map(|job| {
            let position = (job.status == crate::job::JobStatus::Queued)
                .then_some(rank)
                .flatten();
            (job, position)
        }))
    }

    async fn list(&self, query: &ListQuery) -> Result<JobPage, StoreError> {
        // A filtered listing reads that status's index only, so it costs what it
        // returns however many jobs are in other states.
        let index = match (&query.owner, &query.status) {
            (Some(o), Some(s)) => self.keys.owner_status(o, s.as_str()),
            (Some(o), None) => self.keys.owner_index(o),
            (None, Some(s)) => self.keys.by_status(s.as_str()),
            (None, None) => self.keys.index(),
        };
        // Whose listing this is, to clean it when an entry has expired.
        let listed_owner = query.owner.as_deref().unwrap_or("");
        let limit = query.limit.max(1);
        let mut max = match query.cursor {
            Some(c) => format!("({c}"),
            None => "+inf".to_owned(),
        };
        let mut jobs = Vec::new();
        let mut scanned = 0;
        let mut conn = self.conn.clone();
        loop {
            // One more than needed tells whether there is a next page.
            let batch = limit - jobs.len() + 1;
            let entries: Vec<(String, f64)> = self
                .run(
                    ::redis::cmd("ZREVRANGEBYSCORE")
                        .arg(&index)
                        .arg(&max)
                        .arg("-inf")
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(batch)
                        .query_async(&mut conn),
                )
                .await?;
            let more = entries.len() == batch;
            let wanted = &entries[..entries.len().min(limit - jobs.len())];
            let maps: Vec<HashMap<String, String>> = if wanted.is_empty() {
                Vec::new()
            } else if self.conn.is_cluster() {
                // Each hash in its own slot: concurrent calls, routed one by one.
                let calls = wanted.iter().map(|(id, _)| {
                    let mut c = self.conn.clone();
                    let key = self.keys.status(id);
                    async move { ::redis::cmd("HGETALL").arg(key).query_async(&mut c).await }
                });
                self.run(futures_util::future::try_join_all(calls)).await?
            } else {
                let mut pipe = ::redis::pipe();
                for (id, _) in wanted {
                    pipe.cmd("HGETALL").arg(self.keys.status(id));
                }
                self.run(pipe.query_async(&mut conn)).await?
            };
            let mut last_score = None;
            for ((id, score), map) in wanted.iter().zip(maps) {
                scanned += 1;
                last_score = Some(*score as u64);
                match record_from_map(id, map) {
                    // Expired: it leaves the listing.
                    None => self.relist(id, listed_owner, "gone", false).await?,
                    Some(job) => match &query.status {
                        // A stale index entry (a crash between a job's two
                        // scripts): list it where it belongs now.
                        Some(s) if *s != job.status => {
                            self.relist(id, &job.owner, job.status.as_str(), false)
                                .await?
                        }
                        _ => jobs.push(job),
                    },
                }
            }
            let next = last_score.filter(|_| more || wanted.len() < entries.len());
            if jobs.len() == limit || scanned >= LIST_SCAN_LIMIT || next.is_none() {
                return Ok(JobPage {
                    next_cursor: if jobs.len() == limit || scanned >= LIST_SCAN_LIMIT {
                        next
                    } else {
                        None
                    },
                    jobs,
                });
            }
            max = format!("({}", next.unwrap_or(0));
        }
    }

    async fn cancel(&self, id: &JobId) -> Result<CancelOutcome, StoreError> {
        let micros = clock::now_micros();
        let mut inv = self.scripts.cancel.prepare_invoke();
        inv.key(self.keys.status(id.as_str()))
            .arg(self.keys.events())
            .arg(clock::iso8601(micros))
            .arg(micros / 1000)
            .arg(self.ttl_secs());
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
        let outcome = reply.first().cloned().unwrap_or_default();
        if outcome == "missing" {
            return Ok(CancelOutcome::NotFound);
        }
        if outcome == "cancelled" {
            // Best effort: the queue entry is dropped at claim time anyway.
            let owner = reply.get(1).cloned().unwrap_or_default();
            let _ = self.relist(id.as_str(), &owner, "failed", true).await;
            tracing::info!(job_id = %id, "job failed: cancelled while queued");
        } else if outcome == "requested" {
            tracing::info!(job_id = %id, "cancel requested for running job");
        }
        self.replicated().await?;
        let Some(job) = self.get(id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        Ok(match outcome.as_str() {
            "final" => CancelOutcome::AlreadyFinal(job),
            "requested" => CancelOutcome::Requested(job),
            "cancelled" => CancelOutcome::Cancelled(job),
            other => {
                return Err(StoreError::Internal(format!(
                    "unexpected cancel reply {other:?}"
                )));
            }
        })
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        // Waiting: the ownerless queue plus every key's lane.
        let (queued, in_lanes, processing, delayed, dead, workers): (
            u64,
            u64,
            u64,
            u64,
            u64,
            Vec<String>,
        ) = self
            .run(
                ::redis::pipe()
                    .cmd("LLEN")
                    .arg(k.queue())
                    .cmd("HLEN")
                    .arg(k.lane_entries())
                    .cmd("ZCARD")
                    .arg(k.by_status("processing"))
                    .cmd("ZCARD")
                    .arg(k.delayed())
                    .cmd("LLEN")
                    .arg(k.dead())
                    .cmd("SMEMBERS")
                    .arg(k.workers())
                    .query_async(&mut conn),
            )
            .await?;
        let mut live = 0;
        if !workers.is_empty() {
            let mut pipe = ::redis::pipe();
            for w in &workers {
                pipe.cmd("EXISTS").arg(k.heartbeat(w));
            }
            let alive: Vec<u64> = self.run(pipe.query_async(&mut conn)).await?;
            live = alive.iter().sum();
        }
        Ok(QueueStats {
            queued: queued + in_lanes,
            processing,
            delayed,
            dead,
            workers: live,
        })
    }

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
            inv.arg("backend").arg(b);
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

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = self
            .run(
                ::redis::cmd("LRANGE")
                    .arg(self.keys.dead())
                    .arg(0)
                    .arg(limit.saturating_sub(1) as i64)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.start_subscriber();
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
        self.rate_limit_impl(bucket, rate, burst).await
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

    async fn put_preview(
        &self,
        id: &JobId,
        owner: &str,
        preview: &super::Preview,
    ) -> Result<(), StoreError> {
        self.put_preview_impl(id, owner, preview).await
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

    async fn get_preview(&self, id: &JobId) -> Result<Option<super::Preview>, StoreError> {
        self.get_preview_impl(id).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(redact("redis://me:hunter2@db"), "redis://me:***@db");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
