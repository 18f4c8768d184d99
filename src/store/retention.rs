//! Pictures that do not live forever: each job's stored outputs with when they
//! may go (`--output-ttl`, and never while the job's record lives), each key's
//! stored bytes (`--max-stored-bytes`), and deleting a job's record on request.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// A job's stored outputs, as the sweep knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOutputs {
    pub job_id: String,
    /// The API key whose storage they count against ("" for none).
    pub owner: String,
    /// The outputs' file names (their thumbnails go with them).
    pub files: Vec<String>,
    pub bytes: u64,
}

/// Stored outputs and their deletion. Safe to call from many tasks and
/// processes at once.
#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// Records a job's outputs, due for deletion at `due_ms`, and adds their
    /// bytes to the owner's; a job already recorded is left as it is.
    async fn keep_outputs(&self, o: &StoredOutputs, due_ms: u64) -> Result<(), StoreError>;

    /// Up to `max` entries due by `now_ms`.
    async fn due_outputs(&self, now_ms: u64, max: usize) -> Result<Vec<StoredOutputs>, StoreError>;

    /// Makes an entry due again later (its record still lives).
    async fn postpone_outputs(&self, job_id: &str, due_ms: u64) -> Result<(), StoreError>;

    /// Takes a job's entry out and its bytes off its owner's count; the entry
    /// as it was, `None` when there was none (another sweep took it).
    async fn forget_outputs(&self, job_id: &str) -> Result<Option<StoredOutputs>, StoreError>;

    /// Bytes of outputs stored for `owner`.
    async fn stored_bytes(&self, owner: &str) -> Result<u64, StoreError>;

    /// Deletes a job's record now (`DELETE /api/jobs/{id}`); `false` if none.
    async fn delete_job(&self, job_id: &str) -> Result<bool, StoreError>;
}
