//! A batch: many jobs submitted as one (`POST /api/batches`), its record and its
//! public view. Pure types, no I/O.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{JobRecord, JobStatus, JobView, UrlSigning};
use crate::clock;

/// The parameter each job of a batch keeps its batch's id in.
pub const BATCH_FIELD: &str = "batch_id";

/// What the store keeps of a batch: who made it and its jobs, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    /// The API key that submitted it ("" for none).
    pub owner: String,
    pub workflow: String,
    pub created_ms: u64,
    pub job_ids: Vec<String>,
    /// It has a webhook (`batch.finished` is sent when its last job ends).
    #[serde(default)]
    pub webhook: bool,
}

/// How many of a batch's jobs are in each state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct BatchCounts {
    pub queued: u32,
    pub processing: u32,
    pub finished: u32,
    /// Failed, cancelled ones included.
    pub failed: u32,
    /// Of the failed ones, how many were cancelled.
    pub cancelled: u32,
    /// Jobs whose records are gone (expired).
    pub expired: u32,
}

/// A batch as the API shows it (`GET /api/batches/{id}`, the `batch.finished`
/// webhook).
#[derive(Serialize, ToSchema)]
pub struct BatchView<'a> {
    pub batch_id: &'a str,
    /// `queued` (nothing started), `processing`, then, once every job has ended,
    /// `finished` (all finished), `failed` (none finished) or `partial`.
    #[schema(example = "processing")]
    pub status: &'static str,
    /// Jobs in the batch.
    pub total: u32,
    pub counts: BatchCounts,
    /// 0–100: the jobs' progress, an ended one counting 100.
    pub progress: u8,
    pub workflow: &'a str,
    pub created_at: String,
    /// The API key that submitted it (absent for none).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub owner: &'a str,
    /// Every job still on record, in the order they were made.
    pub jobs: Vec<JobView<'a>>,
}

impl<'a> BatchView<'a> {
    /// The view of `batch`, whose jobs' records are `jobs` (in `job_ids` order,
    /// `None` for one gone).
    pub fn new(
        batch: &'a BatchRecord,
        jobs: &'a [Option<JobRecord>],
        signing: Option<&impl UrlSigning>,
        internal: bool,
    ) -> Self {
        let counts = counts(jobs);
        let total = batch.job_ids.len() as u32;
        let progress_sum: u64 = jobs
            .iter()
            .map(|j| match j {
                Some(j) if !j.status.is_final() => u64::from(j.progress.min(99)),
                _ => 100,
            })
            .sum();
        BatchView {
            batch_id: &batch.id,
            status: status_of(&counts),
            total,
            progress: (progress_sum / u64::from(total.max(1))) as u8,
            workflow: &batch.workflow,
            created_at: clock::iso8601(batch.created_ms * 1000),
            owner: &batch.owner,
            jobs: jobs
                .iter()
                .flatten()
                .map(|j| JobView::new(j, None, signing, internal))
                .collect(),
            counts,
        }
    }
}

/// Counts the states of a batch's jobs.
pub fn counts(jobs: &[Option<JobRecord>]) -> BatchCounts {
    let mut c = BatchCounts::default();
    for j in jobs {
        match j {
            None => c.expired += 1,
            Some(j) => match j.status {
                JobStatus::Queued => c.queued += 1,
                JobStatus::Processing => c.processing += 1,
                JobStatus::Finished => c.finished += 1,
                JobStatus::Failed => {
                    c.failed += 1;
                    if j.cancelled || j.error == "cancelled" {
                        c.cancelled += 1;
                    }
                }
                // A word another program wrote: running, as far as we know.
                _ => c.processing += 1,
            },
        }
    }
    c
}

/// Every job of the batch has ended (or is gone).
pub fn ended(c: &BatchCounts) -> bool {
    c.queued == 0 && c.processing == 0
}

/// The batch's status word from its counts.
pub fn status_of(c: &BatchCounts) -> &'static str {
    if !ended(c) {
        if c.processing == 0 && c.finished == 0 && c.failed == 0 {
            "queued"
        } else {
            "processing"
        }
    } else if c.failed == 0 && c.expired == 0 {
        "finished"
    } else if c.finished == 0 {
        "failed"
    } else {
        "partial"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: JobStatus, progress: u8) -> Option<JobRecord> {
        Some(JobRecord {
            id: "j".into(),
            status,
            progress,
            ..JobRecord::default()
        })
    }

    #[test]
    fn the_status_follows_the_jobs() {
        let q = job(JobStatus::Queued, 0);
        let p = job(JobStatus::Processing, 50);
        let f = job(JobStatus::Finished, 100);
        let x = job(JobStatus::Failed, 0);
        assert_eq!(status_of(&counts(&[q.clone(), q.clone()])), "queued");
        assert_eq!(status_of(&counts(&[q.clone(), p.clone()])), "processing");
        assert_eq!(status_of(&counts(&[q.clone(), f.clone()])), "processing");
        assert_eq!(status_of(&counts(&[f.clone(), f.clone()])), "finished");
        assert_eq!(status_of(&counts(&[x.clone(), x.clone()])), "failed");
        assert_eq!(status_of(&counts(&[f.clone(), x.clone()])), "partial");
        assert_eq!(status_of(&counts(&[f.clone(), None])), "partial");
        assert!(!ended(&counts(&[f, p])));
    }

    #[test]
    fn progress_counts_an_ended_job_whole() {
        let batch = BatchRecord {
            id: "b".into(),
            owner: String::new(),
            workflow: "smoke".into(),
            created_ms: 0,
            job_ids: vec!["1".into(), "2".into()],
            webhook: false,
        };
        let jobs = [job(JobStatus::Failed, 0), job(JobStatus::Processing, 50)];
        let v = BatchView::new(&batch, &jobs, None::<&NoSigning>, false);
        assert_eq!(v.progress, 75);
        assert_eq!(v.counts.failed, 1);
        assert_eq!(v.total, 2);
    }

    struct NoSigning;
    impl UrlSigning for NoSigning {
        fn sign(&self, _: &str, _: &str, url: &str) -> String {
            url.to_owned()
        }
    }
}
