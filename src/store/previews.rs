//! The latest preview of each running job's picture, and ComfyUI's messages about
//! jobs sent through its API, relayed to every process.

use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::StoreError;
use crate::job::JobId;

/// The latest preview of each running job's picture. Safe to call from many tasks and
/// processes at once.
#[async_trait]
pub trait Previews: Send + Sync + 'static {
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

    /// Hands one of ComfyUI's messages about job `id` (its JSON text, with the
    /// job's id as its `prompt_id`) to every process's [`Previews::relayed`]
    /// receivers. Fire and forget: not kept.
    async fn relay(&self, id: &JobId, owner: &str, message: &str) -> Result<(), StoreError>;

    /// The messages [`Previews::relay`] hands out, from every process.
    fn relayed(&self) -> broadcast::Receiver<Relayed>;
}

/// One of ComfyUI's messages about a job, relayed.
#[derive(Clone, Debug)]
pub struct Relayed {
    pub job_id: String,
    pub owner: String,
    /// The message's JSON text.
    pub text: Arc<str>,
}

/// Messages buffered per receiver before a slow one misses some.
pub const RELAY_BUFFER: usize = 1024;

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
