//! Records of uploaded input pictures, per owner, within each owner's quota; and
//! the index of stored picture files (content-addressed, shared by owners) that
//! lets files no live record names be deleted.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::uploads::UploadRecord;

/// Caps on one owner's live uploads (`--upload-quota`, `--upload-quota-count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadQuota {
    /// Bytes of live uploads an owner may hold.
    pub max_bytes: u64,
    /// Live uploads an owner may hold.
    pub max_count: u64,
}

impl Default for UploadQuota {
    fn default() -> Self {
        UploadQuota {
            max_bytes: 1 << 30,
            max_count: 1000,
        }
    }
}

/// Records of uploaded input pictures, per owner. Safe to call from many tasks
/// and processes at once.
#[async_trait]
pub trait Uploads: Send + Sync + 'static {
    /// Records an uploaded image for its owner, for `ttl` (or longer if it was
    /// recorded before with a longer one), and notes that its file is named
    /// until then. A new record over the owner's `quota` is
    /// [`super::Refusal::UploadQuota`]; one the owner holds already is renewed.
    async fn put_upload(
        &self,
        rec: &UploadRecord,
        ttl: Duration,
        quota: &UploadQuota,
    ) -> Result<(), StoreError>;

    /// An owner's upload, if recorded and not expired; with `extend`, it (and
    /// its file) then lives at least that much longer (a job uses it).
    async fn get_upload(
        &self,
        owner: &str,
        id: &str,
        extend: Option<Duration>,
    ) -> Result<Option<UploadRecord>, StoreError>;

    /// Up to `max` stored picture files that no record has named since before
    /// `before_ms` (ms since the epoch).
    async fn expired_upload_files(
        &self,
        before_ms: u64,
        max: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Forgets file `id` if still no record has named it since before
    /// `before_ms`: `true` when the caller may delete it.
    async fn forget_upload_file(&self, id: &str, before_ms: u64) -> Result<bool, StoreError>;
}
