//! The one submission path. Every front door (Studio Core's own `POST
//! /api/generate`, and the other APIs built on it) turns its request into a
//! [`Submission`] and hands it here; this module does the rest, the same for all:
//! inline pictures, parsing against the workflow, who may ask for what,
//! requirements, the webhook outbox, idempotency, the enqueue, and taking back
//! what a refused submission left behind. No HTTP here: refusals are
//! [`SubmitError`]s, which each front door answers in its own shape.

mod batch;
mod budget;
mod error;
mod graph;
mod idempotency;
mod pictures;
mod requirements;
mod retry;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use self::batch::{BATCH_FIELDS, BatchAccepted, BatchSubmission, DEFAULT_MAX_BATCH};
pub use self::error::{Rejection, SubmitError};
pub use self::idempotency::{IdempotencyKey, ORPHANED_AFTER, fingerprint, scope};
pub use self::pictures::{UploadLimits, Uploader};
pub use self::requirements::NeedMemory;
pub use self::retry::{RETRY_OF, Retried, retry_body};
use crate::auth::Identity;
use crate::auth::rate::RateCheck;
use crate::backends::Offers;
use crate::catalog::{Catalog, Unresolved};
use crate::job::{JobId, LaneLimits, NewJob};
use crate::metrics::Metrics;
use crate::store::{IdempotencyClaim, JobStore, StoreError, within};
use crate::webhooks::{WebhookRecord, WebhookSettings};
use crate::workflow::request::{self, parse_for};
use crate::workflow::{GRAPH_FIELD, GRAPH_WORKFLOW, Workflow};

/// The parameter a job keeps the published version of its workflow in (beside
/// `webhook_url` and the other submission fields it keeps).
pub const WORKFLOW_VERSION: &str = "workflow_version";

/// A workflow a submission names that cannot be used, as a refusal.
fn refusal_of(e: Unresolved) -> SubmitError {
    match e {
        Unresolved::Store(e) => SubmitError::Store(e),
        Unresolved::Retired(_) => Rejection::new(410, "workflow-retired", e.to_string())
            .field("workflow")
            .into(),
        Unresolved::Unknown { .. } | Unresolved::NoVersion { .. } | Unresolved::Malformed(_) => {
            Rejection::new(400, "unknown-workflow", e.to_string())
                .field("workflow")
                .into()
        }
    }
}

/// What the submission path needs of the rest of the service.
pub struct Submitter {
    pub store: Arc<dyn JobStore>,
    /// The workflows a job may name.
    pub catalog: Arc<Catalog>,
    pub offers: Arc<Offers>,
    pub webhooks: Arc<WebhookSettings>,
    pub uploads: Uploader,
    pub metrics: Arc<Metrics>,
    /// Longest any one store call may take before the submission is refused as
    /// unavailable.
    pub store_timeout: Duration,
    /// Jobs in one batch at most (`--max-batch`).
    pub max_batch: usize,
    /// Bytes of outputs one key may have stored (`--max-stored-bytes`).
    pub max_stored_bytes: Option<u64>,
    /// Requirement sets of recent submissions, worked out once.
    pub needs: NeedMemory,
}

/// A request for one job, as a front door received it.
pub struct Submission<'a> {
    /// Who asks (their key decides the owner, limits and priority allowed).
    pub who: &'a Identity,
    /// Studio Core's submission body (`prompt`, `seed`, `workflow`, parameters).
    pub body: Value,
    /// The client's `Idempotency-Key`, already checked for shape.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Recorded among the job's parameters after they are checked (what a
    /// ComfyUI client gave with a prompt: [`crate::workflow::COMFYUI_FIELD`]).
    pub extra: Option<(&'static str, Value)>,
    /// The id the client chose (ComfyUI's `prompt_id`); refused if taken.
    pub job_id: Option<JobId>,
    /// The rate limit the request is counted against when its job is queued
    /// (the HTTP gate leaves it to the submission on `POST /api/generate`).
    pub rate: Option<Arc<RateCheck>>,
}

/// A job the store has, new or (for a repeated `Idempotency-Key`) from before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub job_id: JobId,
    pub seed: u64,
    pub workflow: String,
    /// An earlier request with the same `Idempotency-Key` made this job.
    pub replayed: bool,
}

impl Submitter {
    /// Runs a store call under the store timeout.
    async fn within<T>(
        &self,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, SubmitError> {
        within(self.store_timeout, f)
            .await
            .map_err(SubmitError::from)
    }

    /// Submits one job: checks it whole, then records its webhook, takes its
    /// idempotency key and queues it, undoing the first two if the store refuses.
    pub async fn submit(&self, s: Submission<'_>) -> Result<Accepted, SubmitError> {
        let who = s.who;
        self.within_budget(who).await?;
        let (wf, version, body) = self.workflow_of(who, s.body).await?;
        let wf = wf.as_ref();
        let (body, inline) = self.uploads.inline_pictures(wf, body).await?;
        let (mut job, webhook) = self
            .check(who, wf, version, &body, &inline, s.extra, s.job_id)
            .await?;
        match s.rate {
            // Pictures given inline are stored before the job is queued: the
            // request is counted first, so a refused one stores nothing.
            Some(check) if !inline.is_empty() => {
                let d = self
                    .within(
                        self.store
                            .rate_limit(&check.bucket, check.rate, check.burst),
                    )
                    .await?;
                check.decide(d);
                if !d.allowed {
                    return Err(SubmitError::Store(StoreError::Refused(
                        crate::store::Refusal::RateLimited,
                    )));
                }
            }
            // Else counted with the enqueue, in the same round trip.
            rate => job.rate = rate,
        }
        // Pictures given inline are stored only now that the rest is valid.
        self.uploads
            .store_all(self.store.as_ref(), who.owner(), inline, self.store_timeout)
            .await?;
        let Some(key) = s.idempotency_key else {
            return self.enqueue(&job, webhook.as_ref()).await;
        };
        let scope = scope(&job.owner, key.as_str());
        let claim = IdempotencyClaim {
            fingerprint: fingerprint(&body),
            job_id: job.id.clone(),
            seed: job.seed,
            workflow: job.workflow.clone(),
            taken_ms: crate::clock::now_ms(),
        };
        match self.take_idempotency(&scope, &claim).await? {
            Some(first) => Ok(Accepted {
                job_id: first.job_id,
                seed: first.seed,
                workflow: first.workflow,
                replayed: true,
            }),
            None => match self.enqueue(&job, webhook.as_ref()).await {
                Ok(accepted) => Ok(accepted),
                Err(e) => {
                    idempotency::release(self.store.as_ref(), &scope).await;
                    Err(e)
                }
            },
        }
    }

    /// The workflow a submission runs (a raw graph, or one named in the
    /// catalog), its published version, and the body to parse against it.
    async fn workflow_of(
        &self,
        who: &Identity,
        body: Value,
    ) -> Result<(Arc<Workflow>, Option<u32>, Value), SubmitError> {
        if Self::carries_graph(&body) {
            let (wf, body) = self.raw_graph(who, body).await?;
            return Ok((wf, None, body));
        }
        request::precheck(&body)?;
        let spec = request::workflow_field(&body)?.to_owned();
        let resolved = self.catalog.resolve(&spec).await.map_err(refusal_of)?;
        Ok((resolved.workflow, resolved.version, body))
    }

    /// Checks one job's body against its workflow and its submitter: the job to
    /// queue and its webhook, nothing written yet.
    #[allow(clippy::too_many_arguments)]
    async fn check(
        &self,
        who: &Identity,
        wf: &Workflow,
        version: Option<u32>,
        body: &Value,
        inline: &[pictures::Picture],
        extra: Option<(&'static str, Value)>,
        job_id: Option<JobId>,
    ) -> Result<(NewJob, Option<WebhookRecord>), SubmitError> {
        let mut job = parse_for(body, wf)?;
        if let Some(v) = version {
            job.params.insert(WORKFLOW_VERSION.into(), Value::from(v));
        }
        if let Some((k, v)) = extra {
            job.params.insert(k.into(), v);
        }
        if let Some(id) = job_id {
            if self.within(self.store.get(&id)).await?.is_some() {
                return Err(Rejection::new(
                    409,
                    "job-id-taken",
                    format!("a job with id {id} already exists"),
                )
                .field("prompt_id")
                .into());
            }
            job.id = id;
        }
        if wf.name == GRAPH_WORKFLOW {
            job.params
                .insert(GRAPH_FIELD.into(), Value::Object(wf.graph.clone()));
        }
        self.pictures_exist(who, wf, &job, inline).await?;
        let (req, req_json) = self.requirements(wf, &job).await?;
        if let Some(key) = &who.key
            && job.priority > key.limits.max_priority
        {
            return Err(Rejection::new(
                403,
                "priority-not-allowed",
                format!(
                    "priority {} is above this key's highest, {}",
                    job.priority.as_str(),
                    key.limits.max_priority.as_str()
                ),
            )
            .field("priority")
            .into());
        }
        let webhook = self.webhook_of(&mut job, who.owner())?;
        let priority = job.priority;
        let mut job = job.owned(who.owner(), priority).needing(req, req_json);
        if let Some(key) = &who.key {
            job = job.limited(LaneLimits {
                max_queued: key.limits.max_queued,
                max_running: key.limits.max_running,
                weight: key.limits.weight,
            });
        }
        Ok((job, webhook))
    }

    /// Records the job's webhook (if any) and queues the job; takes the webhook
    /// back if the store refuses the job.
    async fn enqueue(
        &self,
        job: &NewJob,
        webhook: Option<&WebhookRecord>,
    ) -> Result<Accepted, SubmitError> {
        self.put_webhook(&job.id, webhook).await?;
        let record = match self.within(self.store.enqueue(job)).await {
            Ok(r) => r,
            Err(e) => {
                self.forget_webhook(&job.id, webhook).await;
                return Err(e);
            }
        };
        self.metrics
            .jobs_submitted
            .get_or_create(&self.metrics.workflow(&job.workflow))
            .inc();
        Ok(Accepted {
            job_id: JobId::parse(&record.id).unwrap_or_else(|_| job.id.clone()),
            seed: job.seed,
            workflow: job.workflow.clone(),
            replayed: false,
        })
    }

    /// Every picture a job names must be an upload of its owner's, still kept
    /// (or one given inline, stored once the rest is checked); each then lives at
    /// least as long as the job's record.
    async fn pictures_exist(
        &self,
        who: &Identity,
        wf: &Workflow,
        job: &NewJob,
        inline: &[pictures::Picture],
    ) -> Result<(), SubmitError> {
        for (param, spec) in &wf.params {
            if !spec.kind.is_picture() {
                continue;
            }
            let Some(id) = job.params.get(param).and_then(Value::as_str) else {
                continue;
            };
            if inline.iter().any(|p| p.upload_id == id) {
                continue;
            }
            let found = self
                .within(
                    self.store
                        .get_upload(who.owner(), id, Some(self.uploads.limits.ttl)),
                )
                .await?;
            if found.is_none() {
                return Err(Rejection::new(
                    400,
                    "upload-not-found",
                    format!("{param}: no upload {id} (unknown, expired, or another key's); upload it with POST /api/uploads"),
                )
                .field(param.clone())
                .into());
            }
        }
        Ok(())
    }
}
