//! Steering the queue: pausing the farm or one backend (dispatchers claim
//! nothing while paused; running jobs finish; submissions still queue), and
//! taking dead letters off their list once they are requeued.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;

use super::StoreError;

/// Backends paused at most (one farm-wide flag besides).
pub const MAX_PAUSED: usize = 1_000;

/// What is paused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Pauses {
    /// The whole farm: no dispatcher claims.
    pub farm: bool,
    /// Backends (as `/health` names them) whose dispatchers claim nothing.
    pub backends: BTreeSet<String>,
}

impl Pauses {
    /// Whether the dispatcher of `backend` may claim.
    pub fn blocks(&self, backend: &str) -> bool {
        self.farm || self.backends.contains(backend)
    }
}

/// Pauses and dead letters. Safe to call from many tasks and processes at once.
#[async_trait]
pub trait Steering: Send + Sync + 'static {
    /// Pauses (or resumes) the farm (`backend` `None`) or one backend. (The API
    /// keeps the backends paused to [`MAX_PAUSED`].)
    async fn set_paused(&self, backend: Option<&str>, paused: bool) -> Result<(), StoreError>;

    /// What is paused now.
    async fn pauses(&self) -> Result<Pauses, StoreError>;

    /// Takes job `id`'s dead letters off the list (it was requeued); how many.
    async fn remove_dead_letter(&self, id: &str) -> Result<u64, StoreError>;
}
