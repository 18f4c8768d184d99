//! The job: its id, its status words, its record, the queue payload of the
//! prototype, and its public view. Pure types, no I/O.

pub mod batch;
mod new;
mod priority;
pub mod view;

pub use batch::{BATCH_FIELD, BatchCounts, BatchRecord, BatchView};
pub use new::{LaneLimits, NewJob, QueuePayload};
pub use priority::Priority;
pub use view::{JobView, UrlSigning, WebhookView};

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest job id we accept in a URL. UUIDs are 36 characters; ids written by other
/// programs into `job:status:<id>` get some room beyond that.
pub const MAX_JOB_ID_LEN: usize = 128;

/// A job id: a UUID v4 for jobs we create; for jobs other programs push, any id of
/// 1–128 characters from `[A-Za-z0-9._:-]`, so it can sit in a Redis key and a URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(String);

/// Why a string is not a job id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobIdError {
    #[error("job id must not be empty")]
    Empty,
    #[error("job id must be at most {MAX_JOB_ID_LEN} characters")]
    TooLong,
    #[error("job id may contain only letters, digits, '.', '_', ':' and '-'")]
    BadCharacter,
}

impl JobId {
    /// A fresh random id (UUID v4, as the prototype made them).
    pub fn random() -> Self {
        JobId(uuid::Uuid::new_v4().to_string())
    }

    /// Checks a job id that came from outside (a URL, a queue payload).
    pub fn parse(s: &str) -> Result<Self, JobIdError> {
        if s.is_empty() {
            return Err(JobIdError::Empty);
        }
        if s.len() > MAX_JOB_ID_LEN {
            return Err(JobIdError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(JobIdError::BadCharacter);
        }
        Ok(JobId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The prototype's four status words. A status hash written by another program may
/// hold some other word; it is kept and reported as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Processing,
    Finished,
    Failed,
    Other(String),
}

impl JobStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => JobStatus::Queued,
            "processing" => JobStatus::Processing,
            "finished" => JobStatus::Finished,
            "failed" => JobStatus::Failed,
            other => JobStatus::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Finished => "finished",
            JobStatus::Failed => "failed",
            JobStatus::Other(s) => s,
        }
    }

    /// Finished and failed are final: nothing changes them afterwards.
    pub fn is_final(&self) -> bool {
        matches!(self, JobStatus::Finished | JobStatus::Failed)
    }
}

impl Serialize for JobStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One file a job produced, as stored by the image store and served by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Output {
    /// The ComfyUI node that produced it.
    pub node: String,
    /// File name under the job's directory.
    pub filename: String,
    /// `image`, `video`, `audio` or `file`.
    pub kind: String,
    /// MIME type the file is served with.
    pub content_type: String,
    /// Where to download it.
    pub url: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
}

/// Everything the store knows about a job. The same fields live in the Redis status
/// hash (`job:status:<id>`, see [`JobRecord::to_fields`]) and in the SQLite row.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub status: JobStatus,
    /// 0–100.
    pub progress: u8,
    /// URL of the first image, empty until finished.
    pub image_url: String,
    /// Empty unless failed; `cancelled` for a cancelled job.
    pub error: String,
    pub created_at: String,
    pub updated_at: String,
    /// Milliseconds since the epoch of the last change (orders events).
    pub updated_ms: u64,
    pub prompt: String,
    pub seed: Option<u64>,
    pub workflow: String,
    /// Workflow parameters beyond prompt and seed, as accepted at submission.
    pub params: Map<String, Value>,
    /// How many times a worker has leased this job.
    pub attempt: u32,
    pub cancel_requested: bool,
    pub cancelled: bool,
    pub outputs: Vec<Output>,
    /// The ComfyUI backend (URL) the job was last submitted to.
    pub backend: String,
    pub worker_id: String,
    /// The error of the last attempt while a retry is pending.
    pub last_error: String,
    /// When a delayed retry becomes due (ms since epoch), 0 if none.
    pub retry_at: u64,
    /// The record's revision: raised by every change the stores make, so event
    /// consumers can order changes without trusting clocks.
    pub rev: u64,
    /// The API key that submitted it; empty for jobs without one (auth off, or
    /// pushed onto `job_queue` by another program).
    pub owner: String,
    /// Its priority within its owner's lane.
    pub priority: Priority,
    /// The fingerprint of what it needs of a backend (its requirement set), which
    /// routes it to the backends that have it; empty: any backend.
    pub req: String,
    /// When it was first sent to a backend (ms since the epoch; 0: not yet).
    pub started_ms: u64,
    /// Fields written by other programs that we do not know; reported as written.
    pub extra: BTreeMap<String, String>,
}

/// Field names of the status hash that are ours (everything else goes to `extra`).
const KNOWN_FIELDS: &[&str] = &[
    "job_id",
    "status",
    "progress",
    "image_url",
    "error",
    "created_at",
    "updated_at",
    "updated_ms",
    "prompt",
    "seed",
    "workflow",
    "params",
    "attempt",
    "cancel_requested",
    "cancelled",
    "outputs",
    "backend",
    "worker_id",
    "last_error",
    "retry_at",
    "lease_token",
    "created_ms",
    "payload",
    "rev",
    "owner_key",
    "started_ms",
];

impl Default for JobRecord {
    /// An empty queued record (what a hash with no fields reads as).
    fn default() -> Self {
        JobRecord {
            id: String::new(),
            status: JobStatus::Queued,
            progress: 0,
            image_url: String::new(),
            error: String::new(),
            created_at: String::new(),
            updated_at: String::new(),
            updated_ms: 0,
            prompt: String::new(),
            seed: None,
            workflow: String::new(),
            params: Map::new(),
            attempt: 0,
            cancel_requested: false,
            cancelled: false,
            outputs: Vec::new(),
            backend: String::new(),
            worker_id: String::new(),
            last_error: String::new(),
            retry_at: 0,
            rev: 0,
            owner: String::new(),
            priority: Priority::Normal,
            req: String::new(),
            started_ms: 0,
            extra: BTreeMap::new(),
        }
    }
}

impl JobRecord {
    /// A fresh queued record for a new job.
    pub fn queued(job: &NewJob) -> Self {
        JobRecord {
            id: job.id.to_string(),
            created_at: job.created_at.clone(),
            updated_at: job.created_at.clone(),
            updated_ms: job.created_ms,
            prompt: job.prompt.clone(),
            seed: Some(job.seed),
            workflow: job.workflow.clone(),
            params: job.params.clone(),
            owner: job.owner.clone(),
            priority: job.priority,
            req: job.req.clone(),
            ..JobRecord::default()
        }
    }

    /// Reads a record from string fields (a Redis hash, or an event). Lenient: a
    /// hash written by another program may lack fields or hold odd values.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut r = JobRecord::default();
        for (k, v) in fields {
            match k {
                "job_id" => r.id = v.to_owned(),
                "status" => r.status = JobStatus::parse(v),
                "progress" => r.progress = parse_progress(v),
                "image_url" => r.image_url = v.to_owned(),
                "error" => r.error = v.to_owned(),
                "created_at" => r.created_at = v.to_owned(),
                "updated_at" => r.updated_at = v.to_owned(),
                "updated_ms" => r.updated_ms = v.parse().unwrap_or(0),
                "prompt" => r.prompt = v.to_owned(),
                "seed" => r.seed = v.parse().ok(),
                "workflow" => r.workflow = v.to_owned(),
                "params" => r.params = serde_json::from_str(v).unwrap_or_default(),
                "attempt" => r.attempt = v.parse().unwrap_or(0),
                "cancel_requested" => r.cancel_requested = v == "1",
                "cancelled" => r.cancelled = v == "1",
                "outputs" => r.outputs = serde_json::from_str(v).unwrap_or_default(),
                "backend" => r.backend = v.to_owned(),
                "worker_id" => r.worker_id = v.to_owned(),
                "last_error" => r.last_error = v.to_owned(),
                "retry_at" => r.retry_at = v.parse().unwrap_or(0),
                "rev" => r.rev = v.parse().unwrap_or(0),
                "owner_key" => r.owner = v.to_owned(),
                "started_ms" => r.started_ms = v.parse().unwrap_or(0),
                // Ours only if it is one of our words: another program may keep
                // something else under this name.
                "priority" if Priority::parse(v).is_some() => {
                    r.priority = Priority::parse(v).unwrap_or_default()
                }
                k if KNOWN_FIELDS.contains(&k) => {}
                k => {
                    r.extra.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        r
    }

    /// The published version of its workflow it runs (kept in its parameters;
    /// `None`: a built-in, a file, or a job another program pushed).
    pub fn workflow_version(&self) -> Option<u32> {
        self.params
            .get("workflow_version")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    }

    /// The batch it was submitted in (kept in its parameters).
    pub fn batch_id(&self) -> Option<&str> {
        self.params.get(BATCH_FIELD).and_then(Value::as_str)
    }

    /// The prototype's queue entry for this job (what `job_queue` holds): the
    /// fields of [`QueuePayload`], in its order, written from the record as it is.
    pub fn payload(&self) -> String {
        #[derive(Serialize)]
        struct Entry<'a> {
            job_id: &'a str,
            prompt: &'a str,
            seed: Option<u64>,
            workflow: &'a str,
            created_at: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            params: Option<&'a Map<String, Value>>,
            #[serde(rename = "owner_key", skip_serializing_if = "Option::is_none")]
            owner: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            priority: Option<Priority>,
            #[serde(skip_serializing_if = "Option::is_none")]
            req: Option<&'a str>,
        }
        serde_json::to_string(&Entry {
            job_id: &self.id,
            prompt: &self.prompt,
            seed: self.seed,
            workflow: &self.workflow,
            created_at: &self.created_at,
            params: (!self.params.is_empty()).then_some(&self.params),
            owner: (!self.owner.is_empty()).then_some(self.owner.as_str()),
            priority: (self.priority != Priority::Normal).then_some(self.priority),
            req: (!self.req.is_empty()).then_some(self.req.as_str()),
        })
        .expect("a payload always serializes")
    }

    /// The fields a new job's status hash starts with: the prototype's six plus ours.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("job_id", self.id.clone()),
            ("status", self.status.as_str().to_owned()),
            ("progress", self.progress.to_string()),
            ("image_url", self.image_url.clone()),
            ("error", self.error.clone()),
            ("updated_at", self.updated_at.clone()),
            ("created_at", self.created_at.clone()),
            ("updated_ms", self.updated_ms.to_string()),
            ("prompt", self.prompt.clone()),
            ("workflow", self.workflow.clone()),
            ("attempt", self.attempt.to_string()),
            ("rev", self.rev.to_string()),
        ];
        if let Some(seed) = self.seed {
            f.push(("seed", seed.to_string()));
        }
        if !self.params.is_empty() {
            f.push(("params", Value::Object(self.params.clone()).to_string()));
        }
        if !self.owner.is_empty() {
            f.push(("owner_key", self.owner.clone()));
        }
        if self.priority != Priority::Normal {
            f.push(("priority", self.priority.as_str().to_owned()));
        }
        f
    }
}

/// Progress as written by anyone: an integer, or a float string, clamped to 0–100.
fn parse_progress(v: &str) -> u8 {
    let v = v.trim();
    if let Ok(i) = v.parse::<i64>() {
        return i.clamp(0, 100) as u8;
    }
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() => f.clamp(0.0, 100.0) as u8,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_checked() {
        assert!(JobId::parse("5b0e0a52-6c8c-4d69-9a59-2e2f0a0f5b1c").is_ok());
        assert!(JobId::parse("legacy_job:42").is_ok());
        assert_eq!(JobId::parse(""), Err(JobIdError::Empty));
        assert_eq!(JobId::parse("a/b"), Err(JobIdError::BadCharacter));
        assert_eq!(JobId::parse("a b"), Err(JobIdError::BadCharacter));
        assert_eq!(JobId::parse("é"), Err(JobIdError::BadCharacter));
        assert_eq!(JobId::parse(&"a".repeat(129)), Err(JobIdError::TooLong));
    }

    #[test]
    fn random_ids_are_uuid_v4() {
        let id = JobId::random();
        let u = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(u.get_version_num(), 4);
    }

    #[test]
    fn a_hash_written_by_another_program_is_read_leniently() {
        let r = JobRecord::from_fields([
            ("job_id", "abc"),
            ("status", "running"),
            ("progress", "42.7"),
            ("image_url", "http://x/y.png"),
            ("seed", "not a number"),
            ("colour", "blue"),
            ("lease_token", "secret"),
        ]);
        assert_eq!(r.id, "abc");
        assert_eq!(r.status, JobStatus::Other("running".into()));
        assert_eq!(r.progress, 42);
        assert_eq!(r.seed, None);
        assert_eq!(r.extra.get("colour").map(String::as_str), Some("blue"));
        assert!(!r.extra.contains_key("lease_token"));
        assert_eq!(JobRecord::from_fields([("progress", "250")]).progress, 100);
        assert_eq!(JobRecord::from_fields([("progress", "-3")]).progress, 0);
    }

    #[test]
    fn fields_round_trip() {
        let mut params = Map::new();
        params.insert("steps".into(), Value::from(20));
        let job = NewJob::new(
            "a \"cat\" {braces} ünïcode".into(),
            u64::MAX,
            "sdxl".into(),
            params,
        );
        let rec = JobRecord::queued(&job);
        let fields = rec.to_fields();
        let back = JobRecord::from_fields(fields.iter().map(|(k, v)| (*k, v.as_str())));
        assert_eq!(back, rec);
    }

    #[test]
    fn payload_is_the_prototype_shape() {
        let job = NewJob::new("p".into(), 7, "sdxl".into(), Map::new());
        let v: Value = serde_json::from_str(&job.payload()).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["created_at", "job_id", "prompt", "seed", "workflow"]);
        assert_eq!(v["seed"], 7);
        let (p, id) = QueuePayload::parse(&job.payload()).unwrap();
        assert_eq!(id, job.id);
        assert_eq!(p.seed, Some(7));
    }

    #[test]
    fn owners_and_priorities_travel_and_others_fields_do_not_break_anything() {
        let job = NewJob::new("p".into(), 7, "sdxl".into(), Map::new())
            .owned("0123456789ab", Priority::High);
        let (p, _) = QueuePayload::parse(&job.payload()).unwrap();
        assert_eq!(p.owner.as_deref(), Some("0123456789ab"));
        assert_eq!(p.priority, Some(Priority::High));
        let (p, _) = QueuePayload::parse(r#"{"job_id":"j1","owner_key":5,"priority":9}"#).unwrap();
        assert_eq!((p.owner, p.priority), (None, None));
        let r = JobRecord::from_fields([("priority", "9"), ("owner", "batch-script")]);
        assert_eq!(r.priority, Priority::Normal);
        assert_eq!(r.extra.get("priority").map(String::as_str), Some("9"));
        assert_eq!(r.owner, "");
        assert_eq!(
            r.extra.get("owner").map(String::as_str),
            Some("batch-script")
        );
    }

    #[test]
    fn payloads_from_other_programs_parse_leniently() {
        let (p, _) = QueuePayload::parse(r#"{"job_id":"j1","prompt":"x","seed":"12"}"#).unwrap();
        assert_eq!(p.seed, Some(12));
        assert_eq!(p.workflow, None);
        assert!(QueuePayload::parse(r#"{"prompt":"x"}"#).is_none());
        assert!(QueuePayload::parse("not json").is_none());
        assert!(QueuePayload::parse(r#"{"job_id":"../etc"}"#).is_none());
    }
}
