//! Published workflows: each name's versions (immutable once written), which is
//! the latest, whether the name is retired, and a generation every change
//! raises, so every process sees a new version within a poll.

use async_trait::async_trait;

use super::StoreError;

/// Published workflow names kept at most (`Refusal::TooManyWorkflows` beyond).
pub const MAX_WORKFLOWS: u64 = 10_000;

/// One version of a published workflow, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredWorkflow {
    pub version: u32,
    /// Its definition (JSON, without its version).
    pub definition: String,
    /// The name is retired: no new jobs.
    pub retired: bool,
}

/// A published name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowEntry {
    pub name: String,
    pub latest: u32,
    pub retired: bool,
}

/// Published workflows. Safe to call from many tasks and processes at once.
#[async_trait]
pub trait WorkflowStore: Send + Sync + 'static {
    /// Stores `definition` as the next version of `name` (1 for a new name) and
    /// returns it; a retired name is in use again. Refused when
    /// [`MAX_WORKFLOWS`] names exist and this is a new one.
    async fn publish_workflow(&self, name: &str, definition: &str) -> Result<u32, StoreError>;

    /// Version `version` of `name` (the latest when `None`), if published.
    async fn get_workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<StoredWorkflow>, StoreError>;

    /// Retires `name`: `false` when no such name was published.
    async fn retire_workflow(&self, name: &str) -> Result<bool, StoreError>;

    /// Every published name, by name.
    async fn list_workflows(&self) -> Result<Vec<WorkflowEntry>, StoreError>;

    /// A number every publish and retirement raises.
    async fn workflows_generation(&self) -> Result<u64, StoreError>;
}
