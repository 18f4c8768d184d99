//! What one attempt at a job works with ([`RunContext`]) and how it ended
//! ([`Outcome`]): the types the run, its following of the prompt and its output
//! collection share, below all three.

use std::sync::Arc;

use tokio::sync::watch;

use super::WorkerConfig;
use super::backend::Backend;
use crate::catalog::Catalog;
use crate::comfy::ComfyClient;
use crate::job::Output;
use crate::storage::ImageStore;
use crate::store::JobStore;

/// Everything a job run needs.
#[derive(Clone)]
pub struct RunContext {
    pub store: Arc<dyn JobStore>,
    /// The workflows jobs name (a published one at the version the job records).
    pub catalog: Arc<Catalog>,
    pub images: Arc<dyn ImageStore>,
    pub config: Arc<WorkerConfig>,
    pub backend: Arc<Backend>,
    /// Turns true when the grace period after shutdown is over: hand jobs back.
    pub abort: watch::Receiver<bool>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What the live backends of every worker offer (shared by the process).
    pub offers: Arc<crate::backends::Offers>,
    /// What an operator has paused (read from the store every [`super::PAUSE_POLL`]).
    pub pauses: watch::Receiver<crate::store::Pauses>,
    /// What the running attempt learned of its prompt's run (one per job).
    pub ran: Arc<std::sync::Mutex<Ran>>,
}

/// Where an attempt's prompt ran and for how long, by the backend's clock.
#[derive(Clone, Debug, Default)]
pub struct Ran {
    pub backend: String,
    pub run_ms: Option<u64>,
}

/// How an attempt ended.
#[derive(Debug)]
pub(super) enum Outcome {
    Finished {
        image_url: String,
        outputs: Vec<Output>,
    },
    /// The job's own fault: no retry.
    Failed(String),
    /// Cancelled; if a prompt was stopped on the backend, wait for it to leave (after
    /// recording the cancel) before the slot goes to the next job.
    Cancelled { drain: Option<ComfyClient> },
    /// Not the job's fault: retry later, maybe elsewhere.
    Retry(String),
    /// Someone else holds the job now.
    LeaseLost,
    /// Shutting down: hand the job back.
    HandBack,
}
