//! The job store: the queue and the job records, behind one trait with two real
//! implementations ([`RedisStore`] for many machines, [`SqliteStore`] embedded) that
//! pass one conformance suite (`tests/it/store_conformance/`).
//!
//! Semantics shared by both:
//! - `enqueue` records a job `queued` and puts it at the back of the queue.
//! - `claim` hands the oldest due job to a worker under a **lease**: a fresh token,
//!   `attempt + 1`, status `processing`. Jobs already final are dropped at claim
//!   time (so a duplicated payload runs once); a cancelled job becomes
//!   `failed`/`cancelled`; a job that has used `max_attempts` (its workers kept
//!   dying) becomes `failed` and is dead-lettered (Redis at the claim, SQLite when
//!   reaped).
//! - A worker keeps its leases alive by heartbeating. `reap` returns the jobs of a
//!   worker whose heartbeat stopped to the front of the queue.
//! - Only the current lease holder may write progress or the outcome (fencing);
//!   a final state never changes.

pub mod api_keys;
pub mod batches;
pub mod error;
pub mod idempotency;
pub mod lease;
pub mod outbox;
pub mod previews;
pub mod queue;
pub mod redis;
pub mod retention;
pub mod routing;
pub mod sqlite;
pub mod steering;
pub mod uploads;
pub mod usage;
pub mod workflows;

pub use self::api_keys::{KeyStore, count_apart};
pub use self::batches::{Batches, MAX_BATCH};
pub use self::error::{Refusal, StoreError, within};
pub use self::idempotency::{IDEMPOTENCY_TTL, Idempotency, IdempotencyClaim};
pub use self::lease::{
    AFFINITY_WINDOW, Claim, Completion, EXPIRED_MESSAGE, Lease, LeaseState, Leases, RetryOutcome,
    Route, Routed, WorkerId, gave_up_message, hostname,
};
pub use self::outbox::{ClaimedWebhook, OutboxCap, WebhookOutbox, webhook_ttl};
pub use self::previews::{PREVIEW_TTL, Preview, Previews, RELAY_BUFFER, Relayed};
pub use self::queue::{
    CancelOutcome, DeadLetter, EVENT_BUFFER, JobEvent, JobPage, JobQueue, ListQuery, QueueStats,
};
pub use self::redis::RedisStore;
pub use self::retention::{Retention, StoredOutputs};
pub use self::routing::{MAX_REQUIREMENT_SETS, Routing, warn_registry_full};
pub use self::sqlite::SqliteStore;
pub use self::steering::{MAX_PAUSED, Pauses, Steering};
pub use self::uploads::{UploadQuota, Uploads};
pub use self::usage::{MAX_USAGE_ROWS, Spend, Usage, UsageRecord};
pub use self::workflows::{MAX_WORKFLOWS, StoredWorkflow, WorkflowEntry, WorkflowStore};

/// Every role trait, for code that calls a concrete store (`RedisStore`,
/// `SqliteStore`) rather than a `dyn JobStore`: `use store::prelude::*`.
pub mod prelude {
    pub use super::{
        Batches, Idempotency, JobQueue, JobStore, KeyStore, Leases, Previews, Retention, Routing,
        Steering, Uploads, Usage, WebhookOutbox, WorkflowStore,
    };
}

use std::time::Duration;

/// Which implementation is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Redis,
    Sqlite,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Redis => "redis",
            StoreKind::Sqlite => "sqlite",
        }
    }
}

/// Tunables shared by both stores. Defaults follow DESIGN.md §4.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// How long a job record lives after its last change (the prototype's 24 h TTL).
    pub job_ttl: Duration,
    /// Leases after which a job fails for good (and is dead-lettered).
    pub max_attempts: u32,
    /// A worker whose heartbeat is older than this is dead; its jobs are requeued.
    pub worker_ttl: Duration,
    /// How many recent jobs `GET /api/jobs` can page through.
    pub index_cap: u64,
    /// Jobs waiting (queued or delayed) at most; submissions beyond are refused.
    pub max_queued: u64,
    /// Redis only: replicas that must have a write before it is acknowledged
    /// (`WAIT`), 0 for none.
    pub wait_replicas: u32,
    /// How long usage accounts are kept (`--usage-retention`).
    pub usage_retention: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            job_ttl: Duration::from_secs(24 * 3600),
            max_attempts: 3,
            worker_ttl: Duration::from_secs(30),
            index_cap: 100_000,
            max_queued: 100_000,
            wait_replicas: 0,
            usage_retention: usage::DEFAULT_USAGE_RETENTION,
        }
    }
}

/// A whole job store: every role. What the service holds (`Arc<dyn JobStore>`);
/// code that needs one role takes that role (`&dyn KeyStore`, `&dyn WebhookOutbox`).
pub trait JobStore:
    JobQueue
    + Leases
    + Routing
    + KeyStore
    + Idempotency
    + WebhookOutbox
    + Uploads
    + Previews
    + WorkflowStore
    + Batches
    + Steering
    + Usage
    + Retention
{
}

impl<T> JobStore for T where
    T: JobQueue
        + Leases
        + Routing
        + KeyStore
        + Idempotency
        + WebhookOutbox
        + Uploads
        + Previews
        + WorkflowStore
        + Batches
        + Steering
        + Usage
        + Retention
{
}
