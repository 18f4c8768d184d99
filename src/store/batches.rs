//! Batches: the record of many jobs submitted as one, kept as long as a job's.

use async_trait::async_trait;

use super::StoreError;
use crate::job::BatchRecord;

/// Jobs in one batch at most, whatever `--max-batch` says (a record stays small).
pub const MAX_BATCH: usize = 1_000;

/// Batch records. Safe to call from many tasks and processes at once.
#[async_trait]
pub trait Batches: Send + Sync + 'static {
    /// Stores a batch's record (written before its jobs are queued), kept for the
    /// job time to live.
    async fn put_batch(&self, batch: &BatchRecord) -> Result<(), StoreError>;

    /// A batch's record, if known and not expired.
    async fn get_batch(&self, id: &str) -> Result<Option<BatchRecord>, StoreError>;

    /// Forgets a batch (it was refused, so it never existed).
    async fn delete_batch(&self, id: &str) -> Result<(), StoreError>;
}
