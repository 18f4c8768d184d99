//! Workers and their leases: claim fairly, write under a lease, hand back, reap the dead.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::job::{JobId, JobRecord, Output};

/// Workers and their leases: claim fairly, write under a lease, hand back, reap the dead.
/// Safe to call from many tasks and processes at once.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Registers the worker and renews its liveness for one `worker_ttl`.
    async fn heartbeat(&self, worker: &WorkerId) -> Result<(), StoreError>;

    /// Removes a worker that has handed back all its jobs.
    async fn deregister(&self, worker: &WorkerId) -> Result<(), StoreError>;

    /// Takes the next due job (fairly: see [`Leases::claim_routed`]), waiting up
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

/// How far behind the next job (in submissions) a preferred one may be taken
/// before it: bounds how long a job that needs another model can be passed over.
pub const AFFINITY_WINDOW: u64 = 32;

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
pub(super) fn log_completion(job_id: &JobId, completion: &Completion, written: bool) {
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
pub(super) fn log_retry(job_id: &JobId, error: &str, delay: Duration, outcome: RetryOutcome) {
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
