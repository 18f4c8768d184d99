//! The job store: the queue and the job records, behind one trait with two real
//! implementations ([`RedisStore`] for many machines, [`SqliteStore`] embedded) that
//! pass one conformance suite (`tests/it/store_conformance.rs`).
//!
//! Semantics shared by both:
//! - `enqueue` records a job `queued` and puts it at the back of the queue.
//! - `claim` hands the oldest due job to a worker under a **lease**: a fresh token,
//!   `attempt + 1`, status `processing`. Jobs already final are dropped at claim
//!   time (so a duplicated payload runs once); a cancelled job becomes
//!   `failed`/`cancelled`; a job that has used `max_attempts` (its workers kept
//!   dying) becomes `failed` and is dead-lettered (Redis at the claim, SQLite when
//!   reaped).
//! - A worker keeps its leases alive by heartbeating. `reap` returns the jobs of a
//!   worker whose heartbeat stopped to the front of the queue.
//! - Only the current lease holder may write progress or the outcome (fencing);
//!   a final state never changes.

pub mod redis;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::auth::ApiKey;
use crate::auth::rate::RateDecision;
use crate::job::{JobId, JobRecord, JobStatus, NewJob, Output};
use crate::webhooks::WebhookRecord;

pub use self::redis::RedisStore;
pub use self::sqlite::SqliteStore;

/// Which implementation is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Redis,
    Sqlite,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Redis => "redis",
            StoreKind::Sqlite => "sqlite",
        }
    }
}

/// A store operation that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time; try again later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered, but with something we did not expect.
    #[error("store error: {0}")]
    Internal(String),
    /// The store is fine, but a limit refuses the operation (the caller's answer,
    /// not an outage).
    #[error("refused: {0}")]
    Refused(Refusal),
}

/// A limit that refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The queue holds `limit` waiting jobs already.
    #[error("the queue is full ({limit} jobs waiting)")]
    QueueFull { limit: u64 },
    /// The owner has its `limit` of waiting jobs already.
    #[error("the key's quota of waiting jobs is used ({limit})")]
    QuotaFull { limit: u32 },
}

impl StoreError {
    /// Whether the same call may succeed later (the store is down, not broken).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Tunables shared by both stores. Defaults follow DESIGN.md §4.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// How long a job record lives after its last change (the prototype's 24 h TTL).
    pub job_ttl: Duration,
    /// Leases after which a job fails for good (and is dead-lettered).
    pub max_attempts: u32,
    /// A worker whose heartbeat is older than this is dead; its jobs are requeued.
    pub worker_ttl: Duration,
    /// How many recent jobs `GET /api/jobs` can page through.
    pub index_cap: u64,
    /// Jobs waiting (queued or delayed) at most; submissions beyond are refused.
    pub max_queued: u64,
    /// Redis only: replicas that must have a write before it is acknowledged
    /// (`WAIT`), 0 for none.
    pub wait_replicas: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            job_ttl: Duration::from_secs(24 * 3600),
            max_attempts: 3,
            worker_ttl: Duration::from_secs(30),
            index_cap: 100_000,
            max_queued: 100_000,
            wait_replicas: 0,
        }
    }
}

/// A worker's identity: `host:pid:nonce`, so a restarted process never adopts a
/// live worker's jobs by accident, and the embedded store can tell that a worker on
/// this host has died.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkerId(String);

impl WorkerId {
    /// A new id for this process.
    pub fn generate() -> Self {
        let host = hostname();
        let nonce = &uuid::Uuid::new_v4().simple().to_string()[..8];
        WorkerId(format!("{host}:{}:{nonce}", std::process::id()))
    }

    pub fn from_string(s: String) -> Self {
        WorkerId(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host and pid parts, if this id has the `host:pid:nonce` shape.
    pub fn host_pid(&self) -> Option<(&str, u32)> {
        let mut parts = self.0.rsplitn(3, ':');
        let _nonce = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        Some((parts.next()?, pid))
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// This machine's name, for worker ids.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().replace(':', "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The right to work on one job, held by one worker.
#[derive(Clone, Debug)]
pub struct Lease {
    pub job_id: JobId,
    pub worker: WorkerId,
    pub token: String,
    pub attempt: u32,
    /// The queue entry exactly as claimed (Redis removes it by value).
    pub payload: String,
}

/// A claimed job: the lease and the job's record as of the claim.
#[derive(Clone, Debug)]
pub struct Claim {
    pub lease: Lease,
    pub job: JobRecord,
}

/// What a lease-holder learns when it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease is ours; carry on.
    Held,
    /// The lease is ours, and someone asked to cancel the job.
    CancelRequested,
    /// The lease is gone (reaped, or the job was finished by another worker): stop,
    /// and do not write again.
    Lost,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Completion {
    Finished {
        image_url: String,
        outputs: Vec<Output>,
    },
    Failed {
        error: String,
    },
    Cancelled,
}

/// What happened to a job handed back for a later retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Queued again, due at this time (ms since epoch).
    Scheduled { due_ms: u64 },
    /// Out of attempts: failed and dead-lettered.
    GaveUp,
    /// Cancel was requested meanwhile: failed/cancelled.
    Cancelled,
    /// The lease was no longer ours; nothing was written.
    Lost,
}

/// What a cancel request did.
#[derive(Clone, Debug)]
pub enum CancelOutcome {
    /// The job was queued and is now `failed` with error `cancelled`.
    Cancelled(JobRecord),
    /// The job is running; its worker has been asked to stop it.
    Requested(JobRecord),
    /// The job had already finished or failed; nothing changed.
    AlreadyFinal(JobRecord),
    NotFound,
}

/// A change to a job: its record right after the change (shared, so fanning one
/// event out to thousands of streams copies a pointer, not the record).
#[derive(Clone, Debug)]
pub struct JobEvent {
    pub job: Arc<JobRecord>,
    /// Not a change of the record but a new preview of the picture forming, by
    /// its sequence number (the record then holds only the job's id and owner).
    pub preview: Option<u64>,
}

impl JobEvent {
    /// A change of the record.
    pub fn changed(job: JobRecord) -> JobEvent {
        JobEvent {
            job: Arc::new(job),
            preview: None,
        }
    }

    /// A new preview of job `id` (of `owner`).
    pub fn preview(id: &str, owner: &str, seq: u64) -> JobEvent {
        JobEvent {
            job: Arc::new(JobRecord {
                id: id.to_owned(),
                owner: owner.to_owned(),
                ..JobRecord::default()
            }),
            preview: Some(seq),
        }
    }
}

/// The latest preview of a job's picture as it forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preview {
    /// Its number within the attempt (1, 2, …): news when higher.
    pub seq: u64,
    pub content_type: String,
    pub image: bytes::Bytes,
}

/// How long a job's last preview is kept after it was put.
pub const PREVIEW_TTL: Duration = Duration::from_secs(600);

/// A page request for `GET /api/jobs`.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    pub limit: usize,
    /// Opaque position from a previous page's `next_cursor`.
    pub cursor: Option<u64>,
    /// Only this API key's jobs (`None`: everyone's).
    pub owner: Option<String>,
}

/// One page of jobs, newest first.
#[derive(Clone, Debug)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    pub next_cursor: Option<u64>,
}

/// A job that failed for good after running out of attempts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub job_id: String,
    pub error: String,
    pub attempts: u32,
    pub payload: String,
    pub failed_at: String,
}

/// Counts for `/health` and dashboards.
#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// Entries waiting in the queue (due now).
    pub queued: u64,
    /// Jobs running (claimed by a worker).
    pub processing: u64,
    /// Jobs waiting for a delayed retry.
    pub delayed: u64,
    /// Dead letters kept.
    pub dead: u64,
    /// Workers with a live heartbeat.
    pub workers: u64,
}

/// The queue and the job records. Every method is safe to call from many tasks and
/// many processes at once.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    fn kind(&self) -> StoreKind;

    /// Where the store lives, for logs (no secrets).
    fn describe(&self) -> String;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Records a new job as queued and puts it at the back of the queue. Idempotent
    /// by job id: a job already known is returned as it is, not queued again.
    /// [`Refusal::QueueFull`] when `max_queued` jobs are waiting already.
    async fn enqueue(&self, job: &NewJob) -> Result<JobRecord, StoreError>;

    /// A job's record, or `None` if unknown (or expired).
    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError>;

    /// How many jobs are ahead of a queued job, if the store can tell cheaply.
    async fn queue_position(&self, id: &JobId) -> Result<Option<u64>, StoreError>;

    /// A job's record and, while it is queued, its queue position: what
    /// `GET /api/status` shows. Stores that can answer both in one round trip do.
    async fn status(&self, id: &JobId) -> Result<Option<(JobRecord, Option<u64>)>, StoreError> {
        let Some(job) = self.get(id).await? else {
            return Ok(None);
        };
        let position = if job.status == JobStatus::Queued {
            self.queue_position(id).await?
        } else {
            None
        };
        Ok(Some((job, position)))
    }

    /// Recent jobs, newest first.
    async fn list(&self, query: &ListQuery) -> Result<JobPage, StoreError>;

    /// Cancels a queued job at once, or asks the worker of a running one to stop.
    async fn cancel(&self, id: &JobId) -> Result<CancelOutcome, StoreError>;

    /// Queue counts.
    async fn stats(&self) -> Result<QueueStats, StoreError>;

    /// Registers the worker and renews its liveness for one `worker_ttl`.
    async fn heartbeat(&self, worker: &WorkerId) -> Result<(), StoreError>;

    /// Removes a worker that has handed back all its jobs.
    async fn deregister(&self, worker: &WorkerId) -> Result<(), StoreError>;

    /// Takes the next due job (fairly: see [`JobStore::claim_routed`]), waiting up
    /// to `wait` for one.
    async fn claim(&self, worker: &WorkerId, wait: Duration) -> Result<Option<Claim>, StoreError> {
        match self.claim_routed(worker, wait, &Route::default()).await? {
            Routed::Job(claim) => Ok(Some(*claim)),
            Routed::Nothing | Routed::Stale => Ok(None),
        }
    }

    /// Takes the next due job that `route` allows, waiting up to `wait` for one: of
    /// the owners with such a job (and room to run one more), the one with the
    /// lowest virtual time; within its lane, the first by priority and arrival, or
    /// a preferred one close behind it. Jobs the route does not allow are passed
    /// over, never in the way. [`Routed::Stale`] at once when requirement sets were
    /// registered since the route was made.
    async fn claim_routed(
        &self,
        worker: &WorkerId,
        wait: Duration,
        route: &Route,
    ) -> Result<Routed, StoreError>;

    /// Registers a requirement set (its fingerprint and JSON) so dispatchers can
    /// judge it; `false` when the registry is full ([`MAX_REQUIREMENT_SETS`]) and
    /// the set is not in it (its jobs then go unrouted).
    async fn register_requirements(&self, fp: &str, json: &str) -> Result<bool, StoreError>;

    /// Every registered requirement set: (fingerprint, JSON).
    async fn requirement_sets(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// Writes progress (it never goes down) and, optionally, the backend running the
    /// job; also how a worker learns that a cancel was requested.
    async fn update(
        &self,
        lease: &Lease,
        progress: Option<u8>,
        backend: Option<&str>,
    ) -> Result<LeaseState, StoreError>;

    /// Records the outcome. `false` if the lease was no longer ours (nothing written).
    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<bool, StoreError>;

    /// Hands the job back to be retried after `delay`, or fails it for good when it
    /// has used its attempts.
    async fn retry_later(
        &self,
        lease: &Lease,
        error: &str,
        delay: Duration,
    ) -> Result<RetryOutcome, StoreError>;

    /// Hands a job back untouched (graceful shutdown): front of the queue, status
    /// `queued`, and the attempt does not count.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Returns the jobs of dead workers to the front of the queue. Returns their ids.
    async fn reap(&self) -> Result<Vec<JobId>, StoreError>;

    /// Moves delayed retries that are due onto the queue. Returns how many.
    async fn promote_due(&self) -> Result<u64, StoreError>;

    /// The most recent dead letters.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;

    /// Every change to every job, from now on.
    fn subscribe(&self) -> broadcast::Receiver<JobEvent>;

    /// Stores an API key (a new one, or a new version of one).
    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// An API key by id, revoked ones included.
    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Every API key, oldest first.
    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// The secret that signs image URLs: made (32 random bytes) by the first
    /// process that asks, the same for every process after.
    async fn server_secret(&self) -> Result<Vec<u8>, StoreError>;

    /// One request against a rate limit shared by every process using this store:
    /// `rate` per second, `burst` at once, counted in `bucket`.
    async fn rate_limit(
        &self,
        bucket: &str,
        rate: f64,
        burst: u32,
    ) -> Result<RateDecision, StoreError>;

    /// Takes an idempotency scope (an owner's `Idempotency-Key`, hashed) for
    /// `claim` unless another request took it first: `None` when this call took it,
    /// else what holds it. Atomic across every process on the store; a record
    /// lives [`IDEMPOTENCY_TTL`], or the job TTL if that is shorter (so while a key
    /// is held, its job's record, if it was ever made, is still there).
    async fn take_idempotency(
        &self,
        scope: &str,
        claim: &IdempotencyClaim,
    ) -> Result<Option<IdempotencyClaim>, StoreError>;

    /// Gives a scope back: the job it was taken for was refused, so a retry may
    /// succeed later.
    async fn release_idempotency(&self, scope: &str) -> Result<(), StoreError>;

    /// Hands a scope from `held` (as it was read) to `claim`, if it still holds
    /// `held`: a key whose job never reached the store (a crash in between).
    async fn replace_idempotency(
        &self,
        scope: &str,
        held: &IdempotencyClaim,
        claim: &IdempotencyClaim,
    ) -> Result<bool, StoreError>;

    /// Publishes how a worker's backends are doing (a JSON array), replacing its
    /// last report. Readers ignore reports older than the worker TTL.
    async fn report_backends(&self, worker: &WorkerId, report: &str) -> Result<(), StoreError>;

    /// Every worker's report younger than the worker TTL: (worker, report).
    async fn backend_reports(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// Keeps a backend offer (capabilities JSON) under its fingerprint for `ttl`
    /// (workers put it again well within that while the backend lives).
    async fn put_capabilities(&self, fp: &str, json: &str, ttl: Duration)
    -> Result<(), StoreError>;

    /// An offer by its fingerprint.
    async fn get_capabilities(&self, fp: &str) -> Result<Option<String>, StoreError>;

    /// Records an uploaded image for its owner, for `ttl` (or longer if it was
    /// recorded before with a longer one).
    async fn put_upload(
        &self,
        rec: &crate::uploads::UploadRecord,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Keeps `preview` as job `id`'s latest (for [`PREVIEW_TTL`]) and announces it
    /// to every process's subscribers (a [`JobEvent`] with `preview`).
    async fn put_preview(
        &self,
        id: &JobId,
        owner: &str,
        preview: &Preview,
    ) -> Result<(), StoreError>;

    /// Job `id`'s latest preview, if one was put and has not expired.
    async fn get_preview(&self, id: &JobId) -> Result<Option<Preview>, StoreError>;

    /// Puts job `id`'s webhook record in the outbox, due at `due_ms` (ms since the
    /// epoch); `false` (nothing written) when the outbox holds `cap` entries.
    async fn put_webhook(
        &self,
        id: &JobId,
        rec: &WebhookRecord,
        due_ms: u64,
        cap: u64,
    ) -> Result<bool, StoreError>;

    /// Job `id`'s webhook record, if it has one.
    async fn get_webhook(&self, id: &JobId) -> Result<Option<WebhookRecord>, StoreError>;

    /// Takes up to `max` due webhooks, each under a lease of `lease` (then it is
    /// due again, for another worker).
    async fn claim_webhooks(
        &self,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedWebhook>, StoreError>;

    /// Writes what a delivery did and when the webhook is due again (`None`: out
    /// of the outbox), if `claimed`'s lease is still held; `false` otherwise.
    async fn settle_webhook(
        &self,
        claimed: &ClaimedWebhook,
        rec: &WebhookRecord,
        due_ms: Option<u64>,
    ) -> Result<bool, StoreError>;

    /// Makes job `id`'s webhook due now (its job changed), unless it is held.
    async fn wake_webhook(&self, id: &JobId) -> Result<(), StoreError>;

    /// Forgets job `id`'s webhook (its job was refused, so it never existed).
    async fn delete_webhook(&self, id: &JobId) -> Result<(), StoreError>;

    /// An owner's upload, if recorded and not expired; with `extend`, it then lives
    /// at least that much longer (a job uses it).
    async fn get_upload(
        &self,
        owner: &str,
        id: &str,
        extend: Option<Duration>,
    ) -> Result<Option<crate::uploads::UploadRecord>, StoreError>;
}

/// A webhook a worker took from the outbox.
#[derive(Clone, Debug)]
pub struct ClaimedWebhook {
    pub job_id: JobId,
    pub record: WebhookRecord,
    /// The lease's end (ms since the epoch), which also names it.
    pub lease: u64,
}

/// How long a webhook record lives: its job's time to live, and then some, so
/// the retries of a job that expired meanwhile can still be made and seen.
pub fn webhook_ttl(settings: &StoreSettings) -> Duration {
    settings.job_ttl + crate::webhooks::RECORD_EXTRA_TTL
}

/// Which queued jobs a dispatcher may claim, by requirement set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The fingerprints of the sets its backend can run; `None`: every job. Jobs
    /// without a set (pushed by other programs, or refused by a full registry)
    /// are always allowed.
    pub runnable: Option<Vec<String>>,
    /// Of those, the ones to take first when they are close behind the next job:
    /// the sets that load the same model files as the backend's last job.
    pub prefer: Vec<String>,
    /// How many sets were registered when the route was made.
    pub known: usize,
}

/// What a routed claim found.
#[derive(Debug)]
pub enum Routed {
    Job(Box<Claim>),
    /// Nothing the route allows came within the wait.
    Nothing,
    /// Sets were registered since the route was made: judge them, then claim again.
    Stale,
}

/// The most requirement sets a store registers. Sets come from workflows times
/// the model files the backends offer, so a farm has tens or hundreds; this bound
/// is for submissions accepted before any backend reported (then any file name
/// passes).
pub const MAX_REQUIREMENT_SETS: usize = 10_000;

/// How far behind the next job (in submissions) a preferred one may be taken
/// before it: bounds how long a job that needs another model can be passed over.
pub const AFFINITY_WINDOW: u64 = 32;

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// What an `Idempotency-Key` stands for: the request's fingerprint, what its
/// first answer said (so a replay answers the same), and when it was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// SHA-256 (hex) of the request body in canonical JSON.
    pub fingerprint: String,
    pub job_id: JobId,
    pub seed: u64,
    pub workflow: String,
    /// Milliseconds since the epoch when the key was taken.
    pub taken_ms: u64,
}

impl IdempotencyClaim {
    /// `fingerprint job_id seed taken_ms workflow`, as both stores keep it.
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.fingerprint,
            self.job_id.as_str(),
            self.seed,
            self.taken_ms,
            self.workflow
        )
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.splitn(5, ' ');
        Some(IdempotencyClaim {
            fingerprint: parts.next()?.to_owned(),
            job_id: JobId::parse(parts.next()?).ok()?,
            seed: parts.next()?.parse().ok()?,
            taken_ms: parts.next()?.parse().ok()?,
            workflow: parts.next()?.to_owned(),
        })
    }
}

/// The error of a job that waited in the queue past its time to live without
/// starting (both stores).
pub const EXPIRED_MESSAGE: &str =
    "expired: the job waited longer than its time to live (--job-ttl) without starting";

/// The error text of a job that ran out of attempts.
pub fn gave_up_message(attempts: u32, last_error: &str) -> String {
    let plural = if attempts == 1 { "" } else { "s" };
    if last_error.is_empty() {
        format!("gave up after {attempts} attempt{plural}")
    } else {
        format!("gave up after {attempts} attempt{plural}; last error: {last_error}")
    }
}

/// The job-state log line of a recorded (or refused) outcome, the same for every
/// store.
fn log_completion(job_id: &JobId, completion: &Completion, written: bool) {
    match (written, completion) {
        (false, _) => {
            tracing::warn!(%job_id, "outcome refused: this worker no longer holds the lease")
        }
        (true, Completion::Finished { .. }) => tracing::info!(%job_id, "job finished"),
        (true, Completion::Failed { error }) => tracing::info!(%job_id, %error, "job failed"),
        (true, Completion::Cancelled) => tracing::info!(%job_id, "job failed: cancelled"),
    }
}

/// The job-state log line of a retry decision, the same for every store.
fn log_retry(job_id: &JobId, error: &str, delay: Duration, outcome: RetryOutcome) {
    match outcome {
        RetryOutcome::Scheduled { .. } => {
            tracing::info!(%job_id, %error, retry_in_ms = delay.as_millis() as u64, "job queued for retry")
        }
        RetryOutcome::GaveUp => {
            tracing::warn!(%job_id, %error, "job failed: out of attempts, dead-lettered")
        }
        RetryOutcome::Cancelled => tracing::info!(%job_id, "job failed: cancelled"),
        RetryOutcome::Lost => {}
    }
}

/// Capacity of the in-process event fan-out. A subscriber that falls this far
/// behind skips ahead (and re-reads the job), rather than slowing the writers.
pub const EVENT_BUFFER: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_carry_host_and_pid() {
        let w = WorkerId::generate();
        let (host, pid) = w.host_pid().unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(host, hostname());
        assert_eq!(WorkerId::from_string("nonsense".into()).host_pid(), None);
    }
}
