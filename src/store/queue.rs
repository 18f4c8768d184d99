//! The queue and the job records: submit, read, list, cancel, count, follow changes.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{StoreError, StoreKind};
use crate::auth::rate::RateCheck;
use crate::job::{JobId, JobRecord, JobStatus, NewJob};

/// The queue and the job records: submit, read, list, cancel, count, follow changes. Safe
/// to call from many tasks and processes at once.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
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

    /// The records of jobs `ids` (a batch's), in order; `None` for one unknown.
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<JobRecord>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(match JobId::parse(id) {
                Ok(id) => self.get(&id).await?,
                Err(_) => None,
            });
        }
        Ok(out)
    }

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

    /// [`JobQueue::status`], the request first counted against `check` (its
    /// decision recorded there): `Err(Refused(RateLimited))`, nothing read, when
    /// the limit refuses. Stores that can do both in one round trip do.
    async fn status_counted(
        &self,
        id: &JobId,
        check: &RateCheck,
    ) -> Result<Option<(JobRecord, Option<u64>)>, StoreError>;

    /// Recent jobs, newest first.
    async fn list(&self, query: &ListQuery) -> Result<JobPage, StoreError>;

    /// Cancels a queued job at once, or asks the worker of a running one to stop.
    async fn cancel(&self, id: &JobId) -> Result<CancelOutcome, StoreError>;

    /// Queue counts.
    async fn stats(&self) -> Result<QueueStats, StoreError>;

    /// The most recent dead letters.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;

    /// Every change to every job, from now on.
    fn subscribe(&self) -> broadcast::Receiver<JobEvent>;
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

/// Capacity of the in-process event fan-out. A subscriber that falls this far
/// behind skips ahead (and re-reads the job), rather than slowing the writers.
pub const EVENT_BUFFER: usize = 4096;
