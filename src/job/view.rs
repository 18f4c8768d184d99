//! A job as the API shows it (`GET /api/status`, listings, live events, webhook
//! bodies): the prototype's five keys, then ours, then other programs' fields.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{JobRecord, JobStatus, Output, Priority};
use crate::clock;
use crate::webhooks::WebhookRecord;

/// Signs the picture URLs of one answer (auth on), so `<img src>` works without
/// a header.
pub trait UrlSigning {
    /// `url` (an output's stored URL) with its signature appended.
    fn sign(&self, job_id: &str, file: &str, url: &str) -> String;
}

/// A job as the API shows it: the prototype's `job_id`, `status`, `progress`,
/// `image_url`, `error` (strings empty when unset), then ours, then any fields other
/// programs wrote into its Redis status hash, as written (strings).
#[derive(Serialize, ToSchema)]
pub struct JobView<'a> {
    job_id: &'a str,
    /// `queued`, `processing`, `finished` or `failed` (or a word another program wrote).
    #[schema(example = "processing")]
    status: &'a str,
    /// 0–100; 100 only when finished.
    progress: u8,
    /// The first image, once finished; empty before. With auth on, signed and
    /// valid for a while (`?exp=…&sig=…`).
    #[schema(value_type = String)]
    image_url: Cow<'a, str>,
    /// Why it failed (`cancelled` for a cancelled job); empty otherwise.
    #[schema(value_type = String)]
    error: Cow<'a, str>,
    workflow: &'a str,
    /// The published version of the workflow it runs (absent for a built-in).
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow_version: Option<u32>,
    /// The batch it was submitted in (`POST /api/batches`).
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_id: Option<&'a str>,
    /// The failed job this one runs again (`POST /api/jobs/{id}/retry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_of: Option<&'a str>,
    seed: Option<u64>,
    prompt: &'a str,
    /// The workflow parameters used (with defaults filled in). A raw graph's
    /// job leaves its graph out (it may be large).
    #[schema(value_type = Object)]
    params: Cow<'a, Map<String, Value>>,
    created_at: &'a str,
    updated_at: &'a str,
    /// When it was submitted (the same as `created_at`).
    queued_at: &'a str,
    /// When it was first sent to a backend (absent before).
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    /// When it finished or failed (absent before).
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<&'a str>,
    /// From its first start to its end, in seconds (absent before it ends, or
    /// if it never started).
    #[serde(skip_serializing_if = "Option::is_none")]
    run_seconds: Option<f64>,
    /// While queued: about how long until it starts, from the recent run times
    /// of its workflow and the jobs ahead of it (absent when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// How many times a worker has taken it.
    attempt: u32,
    /// Every file it produced, once finished (URLs signed as `image_url`).
    #[schema(value_type = Vec<Output>)]
    outputs: Cow<'a, [Output]>,
    cancelled: bool,
    /// A cancel was asked for and its worker is stopping it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cancel_requested: bool,
    /// The ComfyUI backend it runs (or ran) on.
    #[serde(skip_serializing_if = "str::is_empty")]
    backend: &'a str,
    /// While queued: how many jobs are ahead.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_position: Option<u64>,
    /// While waiting for a retry: when it becomes due.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at: Option<String>,
    /// The error of the last attempt, when it was retried.
    #[serde(skip_serializing_if = "str::is_empty")]
    #[schema(value_type = String)]
    last_error: Cow<'a, str>,
    /// The record's revision, raised by every change: of two views of a job, the
    /// higher `rev` is the newer (also the `id` of its live events).
    rev: u64,
    /// The id of the API key that submitted it (absent for none).
    #[serde(skip_serializing_if = "str::is_empty")]
    owner: &'a str,
    /// `low`, `normal` or `high`.
    #[schema(value_type = String)]
    priority: Priority,
    /// Its webhook's delivery (jobs submitted with one; not in webhook bodies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookView>,
    #[serde(flatten)]
    #[schema(ignore)]
    extra: Cow<'a, BTreeMap<String, String>>,
}

impl<'a> JobView<'a> {
    /// The view of a job; with `signing`, its picture URLs are signed. Without
    /// `internal` (callers other than admins, and webhook receivers), the
    /// backend's address is left out, also from the errors.
    pub fn new(
        job: &'a JobRecord,
        queue_position: Option<u64>,
        signing: Option<&impl UrlSigning>,
        internal: bool,
    ) -> Self {
        let queued = job.status == JobStatus::Queued;
        let (image_url, outputs) = match signing {
            Some(s) if !job.outputs.is_empty() => {
                let signed: Vec<Output> = job
                    .outputs
                    .iter()
                    .map(|o| Output {
                        url: s.sign(&job.id, &o.filename, &o.url),
                        ..o.clone()
                    })
                    .collect();
                let image = job
                    .outputs
                    .iter()
                    .zip(&signed)
                    .find(|(o, _)| o.url == job.image_url)
                    .map_or(Cow::Borrowed(job.image_url.as_str()), |(_, s)| {
                        Cow::Owned(s.url.clone())
                    });
                (image, Cow::Owned(signed))
            }
            _ => (
                Cow::Borrowed(job.image_url.as_str()),
                Cow::Borrowed(job.outputs.as_slice()),
            ),
        };
        JobView {
            job_id: &job.id,
            status: job.status.as_str(),
            progress: job.progress,
            image_url,
            error: redact(&job.error, &job.backend, internal),
            workflow: &job.workflow,
            workflow_version: job.workflow_version(),
            batch_id: job.batch_id(),
            retry_of: job.params.get("retry_of").and_then(Value::as_str),
            seed: job.seed,
            prompt: &job.prompt,
            // A raw graph (up to 4 MiB) and what a ComfyUI client gave with it
            // are not shown on every status read.
            params: if job.params.contains_key("graph") || job.params.contains_key("comfyui") {
                let mut p = job.params.clone();
                p.remove("graph");
                p.remove("comfyui");
                Cow::Owned(p)
            } else {
                Cow::Borrowed(&job.params)
            },
            created_at: &job.created_at,
            updated_at: &job.updated_at,
            queued_at: &job.created_at,
            started_at: (job.started_ms > 0).then(|| clock::iso8601(job.started_ms * 1000)),
            ended_at: job.status.is_final().then_some(job.updated_at.as_str()),
            run_seconds: (job.status.is_final() && job.started_ms > 0)
                .then(|| job.updated_ms.saturating_sub(job.started_ms) as f64 / 1000.0),
            eta_seconds: None,
            attempt: job.attempt,
            outputs,
            cancelled: job.cancelled,
            cancel_requested: job.cancel_requested && !job.status.is_final(),
            backend: if internal { &job.backend } else { "" },
            queue_position: queue_position.filter(|_| queued),
            retry_at: (queued && job.retry_at > 0).then(|| clock::iso8601(job.retry_at * 1000)),
            last_error: redact(&job.last_error, &job.backend, internal),
            rev: job.rev,
            owner: &job.owner,
            priority: job.priority,
            webhook: None,
            extra: if job.owner.is_empty() || !job.extra.contains_key("owner") {
                Cow::Borrowed(&job.extra)
            } else {
                // Another program's `owner` field gives way to ours.
                let mut extra = job.extra.clone();
                extra.remove("owner");
                Cow::Owned(extra)
            },
        }
    }
}

/// `text` without the backend's address (unless `internal`).
fn redact<'a>(text: &'a str, backend: &str, internal: bool) -> Cow<'a, str> {
    if internal || backend.is_empty() || !text.contains(backend) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.replace(backend, "the backend"))
    }
}

/// How a job's webhook is doing.
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    pub url: String,
    /// Of `job.started`, `job.finished`, `job.failed`.
    pub events: Vec<String>,
    /// `waiting` (for the job to start or end), `retrying`, `delivered`,
    /// `skipped` (no message was wanted for how it ended), `failed` (out of
    /// retries), `gone` (the receiver answered 410), `refused` (not a public
    /// address).
    #[schema(example = "delivered")]
    pub state: String,
    /// Attempts at the message being sent now (0 after a success).
    pub attempts: u32,
    /// Messages delivered.
    pub delivered: u32,
    /// Why the last attempt failed; empty after a success.
    pub last_error: String,
    /// The HTTP status of the last answer (absent: none came).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The `webhook-id` of the last message attempted.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub last_message_id: String,
    /// When the next attempt is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// When the last message was delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
}

impl From<WebhookRecord> for WebhookView {
    fn from(r: WebhookRecord) -> Self {
        let at = |ms: u64| (ms > 0).then(|| clock::iso8601(ms * 1000));
        WebhookView {
            next_attempt_at: at(r.next_attempt_ms),
            delivered_at: at(r.delivered_ms),
            last_status: (r.last_status > 0).then_some(r.last_status),
            url: r.url,
            events: r.events,
            state: r.state,
            attempts: r.attempts,
            delivered: r.delivered,
            last_error: r.last_error,
            last_message_id: r.last_message_id,
        }
    }
}
