//! Records of uploaded input pictures, per owner.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::uploads::UploadRecord;

/// Records of uploaded input pictures, per owner. Safe to call from many tasks and
/// processes at once.
#[async_trait]
pub trait Uploads: Send + Sync + 'static {
    /// Records an uploaded image for its owner, for `ttl` (or longer if it was
    /// recorded before with a longer one).
    async fn put_upload(&self, rec: &UploadRecord, ttl: Duration) -> Result<(), StoreError>;

    /// An owner's upload, if recorded and not expired; with `extend`, it then lives
    /// at least that much longer (a job uses it).
    async fn get_upload(
        &self,
        owner: &str,
        id: &str,
        extend: Option<Duration>,
    ) -> Result<Option<UploadRecord>, StoreError>;
}
