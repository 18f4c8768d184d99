//! One conformance suite, run against both job stores: the embedded SQLite store
//! and a real Redis (each test under its own key prefix). Grouped as the store's
//! role traits are: one file per role.

mod api_keys;
mod batches;
mod idempotency;
mod lease;
mod outbox;
mod previews;
mod queue;
mod routing;
mod uploads;
mod usage;
mod workflows;

use std::time::Duration;

use serde_json::Map;
use studio_core::job::NewJob;
use studio_core::store::WorkerId;

pub fn job(prompt: &str) -> NewJob {
    NewJob::new(prompt.into(), 1, "smoke".into(), Map::new())
}

pub fn worker(name: &str) -> WorkerId {
    // Not host:pid shaped, so the embedded store's local-process check leaves it to
    // the heartbeat alone, like a worker on another machine.
    WorkerId::from_string(format!("{name}-{}", uuid::Uuid::new_v4().simple()))
}

pub const WAIT: Duration = Duration::from_millis(300);
