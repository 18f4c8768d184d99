//! A job being submitted ([`NewJob`]) and the prototype's queue entry
//! ([`QueuePayload`]) that other programs may push too.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{JobId, JobRecord, Priority};
use crate::clock;

/// A valid, accepted submission: what `POST /api/generate` hands to the store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub prompt: String,
    pub seed: u64,
    pub workflow: String,
    pub params: Map<String, Value>,
    pub created_at: String,
    pub created_ms: u64,
    /// The API key submitting it ("" for none).
    pub owner: String,
    pub priority: Priority,
    /// The fingerprint of its requirement set ("" for none known).
    pub req: String,
    /// That set's JSON, which the store registers with the job if it has not
    /// yet ("" with no set). Not part of the job.
    pub req_json: String,
    /// What the owner's lane allows (from its key): not part of the job.
    pub lane: LaneLimits,
    /// The rate limit the request that submits it is counted against, with the
    /// enqueue (see [`crate::limit::RateCheck`]). Not part of the job.
    pub rate: Option<std::sync::Arc<crate::limit::RateCheck>>,
    /// Jobs of the same batch queued right after this one: the queue and the
    /// owner's quota must have room for them too, so a batch that does not fit
    /// is refused at its first job, whole. Not part of the job.
    pub following: u32,
}

/// An owner's quota of waiting jobs, cap on running ones, and share: what a
/// submission tells the store about its owner's lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneLimits {
    pub max_queued: Option<u32>,
    pub max_running: Option<u32>,
    pub weight: u32,
}

impl Default for LaneLimits {
    fn default() -> Self {
        LaneLimits {
            max_queued: None,
            max_running: None,
            weight: 1,
        }
    }
}

impl NewJob {
    /// A new job stamped with the current time.
    pub fn new(prompt: String, seed: u64, workflow: String, params: Map<String, Value>) -> Self {
        let micros = clock::now_micros();
        NewJob {
            id: JobId::random(),
            prompt,
            seed,
            workflow,
            params,
            created_at: clock::iso8601(micros),
            created_ms: micros / 1000,
            owner: String::new(),
            priority: Priority::Normal,
            req: String::new(),
            req_json: String::new(),
            lane: LaneLimits::default(),
            rate: None,
            following: 0,
        }
    }

    /// The same job, with its owner's lane limits.
    pub fn limited(mut self, lane: LaneLimits) -> Self {
        self.lane = lane;
        self
    }

    /// The same job, routed by the requirement set `req` (a fingerprint; its
    /// JSON `json`, registered with the job).
    pub fn needing(mut self, req: String, json: String) -> Self {
        self.req = req;
        self.req_json = json;
        self
    }

    /// The same job, submitted by `owner` at `priority`.
    pub fn owned(mut self, owner: &str, priority: Priority) -> Self {
        self.owner = owner.to_owned();
        self.priority = priority;
        self
    }

    /// The JSON the prototype pushes onto `job_queue`, with our `params` added when
    /// there are any (other consumers ignore keys they do not know).
    pub fn payload(&self) -> String {
        JobRecord::queued(self).payload()
    }
}

/// The prototype's queue entry: `{"job_id", "prompt", "seed", "workflow",
/// "created_at"}`. Other programs may push it with fields missing or extra.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuePayload {
    pub job_id: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default, deserialize_with = "lenient_seed")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
    /// Ours: the API key that submitted it (absent for none).
    #[serde(
        default,
        rename = "owner_key",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub owner: Option<String>,
    /// Ours: its priority (absent for normal; what another program means by a
    /// `priority` that is not one of our words is left alone).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_priority"
    )]
    pub priority: Option<Priority>,
    /// Ours: the fingerprint of its requirement set (absent for none).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub req: Option<String>,
}

fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

fn lenient_priority<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Priority>, D::Error> {
    Ok(Value::deserialize(d)?.as_str().and_then(Priority::parse))
}

impl QueuePayload {
    /// The entry as pushed onto `job_queue`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a payload always serializes")
    }

    /// Parses a queue entry; `None` when it is not JSON or has no usable job id.
    pub fn parse(raw: &str) -> Option<(QueuePayload, JobId)> {
        let p: QueuePayload = serde_json::from_str(raw).ok()?;
        let id = JobId::parse(&p.job_id).ok()?;
        Some((p, id))
    }
}

/// Another program may write the seed as a number, a numeric string, or null.
fn lenient_seed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}
