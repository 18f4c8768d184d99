//! Jobs: submit (`POST /api/generate`), status (`GET /api/status/{id}`), list
//! (`GET /api/jobs`), cancel (`POST /api/jobs/{id}/cancel`).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{JobIdPath, JsonBody, MAX_BODY_BYTES, QueryParams, read_body};
use super::guard::Deliberate;
use super::idempotency;
use crate::clock;
use crate::job::{JobStatus, JobView, LaneLimits, WebhookView};
use crate::store::{CancelOutcome, IdempotencyClaim, ListQuery};
use crate::workflow::request::parse_submission;

/// Jobs per page of `GET /api/jobs` when the request does not say.
pub const DEFAULT_PAGE: usize = 20;
/// Most jobs per page.
pub const MAX_PAGE: usize = 100;
/// Largest cursor: sequence numbers stay below 2^53, so they are exact as JSON
/// numbers, SQLite integers and Redis scores alike (both stores answer the same).
pub const MAX_CURSOR: u64 = (1 << 53) - 1;

/// A submission: `prompt`, `seed` and `workflow`, plus the workflow's declared
/// parameters (`negative_prompt`, `steps`, `cfg`, `width`, `height`, `batch_size`,
/// ... as `GET /api/workflows` lists them), each checked against its type and
/// bounds; undeclared fields are refused. (The body is read as JSON and checked
/// field by field by `parse_submission`, so errors can name the field. This type
/// only names the schema: the served document replaces it with one built from
/// the loaded workflows, `openapi::document`.)
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"prompt": "a lighthouse at dusk", "seed": 42, "workflow": "sdxl", "steps": 30}))]
pub struct GenerateRequest {
    /// What to draw: not empty, not only whitespace, at most 10,000 characters.
    pub prompt: String,
    /// 0..=18446744073709551615; random (and returned) when absent.
    pub seed: Option<u64>,
    /// A workflow name from `GET /api/workflows` (default `sdxl`).
    pub workflow: Option<String>,
}

/// `202` to a submission: the prototype's `{"job_id", "status": "queued"}` plus more.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// A UUID v4.
    pub job_id: String,
    /// Always `queued`.
    #[schema(example = "queued")]
    pub status: &'static str,
    /// The seed used (chosen at random when the request had none).
    pub seed: u64,
    pub workflow: String,
    /// Where to follow it.
    pub status_url: String,
}

/// Submits a job.
#[utoipa::path(post, path = "/api/generate", tag = "jobs",
    request_body(content = GenerateRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]+$", description = "Makes a retry safe: the same key (1–255 visible ASCII characters) with the same body within 24 hours answers the first answer again, with `Idempotent-Replayed: true`, instead of queueing a second job. Scoped to the API key.")),
    responses(
        (status = 202, description = "Queued (or, for a repeated Idempotency-Key, queued before)", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "A field is missing or invalid (`invalid-prompt`, `prompt-too-long`, `invalid-seed`, `invalid-priority`, `unknown-workflow`, `invalid-workflow`, `unknown-field`, `invalid-param`, `invalid-json`, `invalid-body`, `invalid-idempotency-key`, `invalid-webhook-url`, `invalid-webhook-events`, `webhooks-not-configured`)", body = ErrorBody),
        (status = 401, description = "Auth is on and the request has no valid key (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Sent by a web page on an origin `--cors-origins` does not name (`forbidden-origin`), or a priority above the key's (`priority-not-allowed`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `--body-timeout` (`body-timeout`)", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB (`payload-too-large`)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json (`unsupported-media-type`)", body = ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is still being handled (`idempotency-key-in-progress`, with `Retry-After`)", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with a different body (`idempotency-key-reuse`)", body = ErrorBody),
        (status = 429, description = "The key has its maximum of jobs waiting (`queue-quota`), or is over its rate (`rate-limited`), with `Retry-After`", body = ErrorBody),
        (status = 503, description = "The queue is full (`queue-full`, with `Retry-After`), the webhook outbox is full (`webhook-outbox-full`, with `Retry-After`), or the store is unavailable (`store-unavailable`)", body = ErrorBody),
    ))]
pub async fn generate(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency::key(&headers)?;
    let body = inline_pictures(&state, who.owner(), body).await?;
    let job = parse_submission(&body, &state.workflows)?;
    pictures_exist(&state, &who, &job).await?;
    let req = requirements(&state, &job).await?;
    if let Some(key) = &who.key
        && job.priority > key.limits.max_priority
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "priority-not-allowed",
            format!(
                "priority {} is above this key's highest, {}",
                job.priority.as_str(),
                key.limits.max_priority.as_str()
            ),
        )
        .with_field("priority"));
    }
    let mut job = job;
    let webhook = webhook_of(&state, &mut job)?;
    let priority = job.priority;
    let mut job = job.owned(who.owner(), priority).needing(req);
    if let Some(key) = &who.key {
        job = job.limited(LaneLimits {
            max_queued: key.limits.max_queued,
            max_running: key.limits.max_running,
            weight: key.limits.weight,
        });
    }
    let counted = |workflow: &str| {
        state
            .metrics
            .jobs_submitted
            .get_or_create(&state.metrics.workflow(workflow))
            .inc();
    };
    let accepted = |job_id: String, seed: u64, workflow: String| Accepted {
        status_url: format!("{}/api/status/{}", state.public_url, job_id),
        job_id,
        status: "queued",
        seed,
        workflow,
    };
    let Some(idempotency_key) = idempotency_key else {
        put_webhook(&state, &job.id, webhook.as_ref()).await?;
        let record = match state.with_timeout(state.store.enqueue(&job)).await {
            Ok(r) => r,
            Err(e) => {
                forget_webhook(&state, &job.id, webhook.as_ref()).await;
                return Err(e);
            }
        };
        counted(&job.workflow);
        let body = accepted(record.id.as_str().to_owned(), job.seed, job.workflow);
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    };
    let scope = idempotency::scope(&job.owner, &idempotency_key);
    let claim = IdempotencyClaim {
        fingerprint: idempotency::fingerprint(&body),
        job_id: job.id.clone(),
        seed: job.seed,
        workflow: job.workflow.clone(),
        taken_ms: crate::clock::now_ms(),
    };
    let store = state.store.as_ref();
    match idempotency::take(&state, &scope, &claim).await? {
        idempotency::Taken::Replay(first) => {
            let body = accepted(first.job_id.as_str().to_owned(), first.seed, first.workflow);
            Ok((
                StatusCode::ACCEPTED,
                [(idempotency::REPLAYED, "true")],
                Json(body),
            )
                .into_response())
        }
        idempotency::Taken::Fresh => match async {
            put_webhook(&state, &job.id, webhook.as_ref()).await?;
            state.with_timeout(store.enqueue(&job)).await
        }
        .await
        {
            Ok(record) => {
                counted(&job.workflow);
                let body = accepted(record.id.as_str().to_owned(), job.seed, job.workflow);
                Ok((StatusCode::ACCEPTED, Json(body)).into_response())
            }
            Err(e) => {
                forget_webhook(&state, &job.id, webhook.as_ref()).await;
                idempotency::release(store, &scope).await;
                Err(e)
            }
        },
    }
}

/// The webhook a submission asks for (its `webhook_url`, or the server's
/// `--webhook-url`), checked against where webhooks may go; the default URL is
/// written into the job's parameters, as if the submission had named it.
fn webhook_of(
    state: &AppState,
    job: &mut crate::job::NewJob,
) -> Result<Option<crate::webhooks::WebhookRecord>, ApiError> {
    let settings = &state.webhooks;
    let url = match job.params.get("webhook_url").and_then(Value::as_str) {
        Some(u) => u.to_owned(),
        None => match &settings.default_url {
            Some(u) => {
                job.params
                    .insert("webhook_url".into(), Value::String(u.clone()));
                u.clone()
            }
            None if job.params.contains_key("webhook_events") => {
                return Err(ApiError::bad_request(
                    "invalid-webhook-events",
                    "webhook_events needs a webhook_url (this server has no --webhook-url default)",
                )
                .with_field("webhook_events"));
            }
            None => return Ok(None),
        },
    };
    crate::webhooks::check_url(&url, settings.allow_private).map_err(|e| {
        ApiError::bad_request("invalid-webhook-url", format!("webhook_url {e}"))
            .with_field("webhook_url")
    })?;
    if settings.secrets.is_empty() {
        return Err(ApiError::bad_request(
            "webhooks-not-configured",
            "this server cannot sign webhooks: it was started without --webhook-secret",
        )
        .with_field("webhook_url"));
    }
    let events: Vec<String> = match job.params.get("webhook_events").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect(),
        None => crate::webhooks::DEFAULT_EVENTS
            .iter()
            .map(|e| e.to_string())
            .collect(),
    };
    Ok(Some(crate::webhooks::WebhookRecord::new(
        url,
        events,
        clock::now_ms(),
    )))
}

/// Puts a job's webhook in the outbox before the job is queued (so no path to
/// its end can miss it). Due after a first recheck: a change of the job wakes it
/// sooner.
async fn put_webhook(
    state: &AppState,
    id: &crate::job::JobId,
    webhook: Option<&crate::webhooks::WebhookRecord>,
) -> Result<(), ApiError> {
    let Some(rec) = webhook else { return Ok(()) };
    let due = clock::now_ms() + 10_000;
    let put = state
        .with_timeout(
            state
                .store
                .put_webhook(id, rec, due, state.webhooks.max_pending),
        )
        .await?;
    if !put {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook-outbox-full",
            format!(
                "{} webhooks are waiting to be delivered already (--webhook-max-pending); try again later, or submit without webhook_url",
                state.webhooks.max_pending
            ),
        )
        .retry_after(30));
    }
    Ok(())
}

/// Takes back the webhook of a job the store refused (a full queue, a quota), so
/// refused submissions do not fill the outbox. Best effort: one left behind is
/// dropped when a worker finds no job for it (after [`crate::webhooks::ORPHAN_GRACE`]).
async fn forget_webhook(
    state: &AppState,
    id: &crate::job::JobId,
    webhook: Option<&crate::webhooks::WebhookRecord>,
) {
    if webhook.is_some()
        && let Err(e) = state.with_timeout(state.store.delete_webhook(id)).await
    {
        tracing::debug!(job_id = %id, error = %e.message, "could not take back a refused job's webhook");
    }
}

/// Stores the `data:` URLs given for picture parameters as uploads, and puts their
/// upload ids in their place.
async fn inline_pictures(
    state: &AppState,
    owner: &str,
    mut body: serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let name = body
        .get("workflow")
        .and_then(serde_json::Value::as_str)
        .unwrap_or(crate::workflow::DEFAULT_WORKFLOW)
        .to_owned();
    let Some(wf) = state.workflows.get(&name) else {
        return Ok(body);
    };
    for (param, spec) in &wf.params {
        if !spec.kind.is_picture() {
            continue;
        }
        let Some(url) = body
            .get(param)
            .and_then(serde_json::Value::as_str)
            .filter(|v| v.starts_with("data:"))
            .map(str::to_owned)
        else {
            continue;
        };
        let limits = state.uploads;
        let checked =
            crate::uploads::decode_data_url(&url, limits.max_bytes).and_then(|(mime, bytes)| {
                crate::uploads::check(&bytes, Some(&mime), limits.max_bytes, limits.max_pixels)
                    .map(|(kind, w, h)| (kind, w, h, bytes))
            });
        let (kind, w, h, bytes) =
            checked.map_err(|e| ApiError::from(e).with_field(param.clone()))?;
        let rec = super::uploads::store_upload(state, owner, kind, w, h, &bytes).await?;
        body[param] = serde_json::Value::String(rec.upload_id);
    }
    Ok(body)
}

/// Every picture a job names must be an upload of its owner's, still kept; each
/// then lives at least as long as the job's record.
async fn pictures_exist(
    state: &AppState,
    who: &crate::auth::Identity,
    job: &crate::job::NewJob,
) -> Result<(), ApiError> {
    let Some(wf) = state.workflows.get(&job.workflow) else {
        return Ok(());
    };
    for (param, spec) in &wf.params {
        if !spec.kind.is_picture() {
            continue;
        }
        let Some(id) = job.params.get(param).and_then(serde_json::Value::as_str) else {
            continue;
        };
        let found = state
            .with_timeout(
                state
                    .store
                    .get_upload(who.owner(), id, Some(state.uploads.ttl)),
            )
            .await?;
        if found.is_none() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "upload-not-found",
                format!("{param}: no upload {id} (unknown, expired, or another key's); upload it with POST /api/uploads"),
            )
            .with_field(param.clone()));
        }
    }
    Ok(())
}

/// What a job needs of a backend: refused now, not failed later on a GPU, when no
/// live backend has it (a node or a model none offers; accepted when no backend
/// has reported yet); else registered, so dispatchers route the job by it. The
/// set's fingerprint, or "" when it cannot be registered (the registry is full:
/// the job then goes to any backend).
async fn requirements(state: &AppState, job: &crate::job::NewJob) -> Result<String, ApiError> {
    let Some(wf) = state.workflows.get(&job.workflow) else {
        return Ok(String::new());
    };
    let graph = wf.render(job.id.as_str(), &job.prompt, job.seed, &job.params);
    let need = crate::capabilities::Requirements::of_graph(&graph);
    let offers = state
        .with_timeout(state.offers.live(state.store.as_ref()))
        .await?;
    if let Some(why) = crate::capabilities::refusal(&need, &offers) {
        // Name the parameter that chose the missing file, if one did.
        let inputs = crate::capabilities::missing_inputs(&need, &offers);
        let field = wf
            .params
            .iter()
            .find(|(_, spec)| {
                spec.targets
                    .iter()
                    .any(|t| inputs.contains(&wf.input_key(t)))
            })
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| "workflow".to_owned());
        return Err(
            ApiError::new(StatusCode::BAD_REQUEST, "model-unavailable", why).with_field(field),
        );
    }
    let fp = need.fingerprint();
    let json = serde_json::to_string(&need).unwrap_or_default();
    let registered = state
        .with_timeout(state.store.register_requirements(&fp, &json))
        .await?;
    if !registered {
        // Once a minute at most: a flood of such jobs must not flood the log.
        static WARNED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = crate::clock::now_ms();
        let last = WARNED_MS.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= 60_000
            && WARNED_MS
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                requirement_set = %fp,
                "the requirement-set registry is full: jobs with new sets go to any backend"
            );
        }
        return Ok(String::new());
    }
    Ok(fp)
}

/// A job's status: the prototype's five keys plus ours.
#[utoipa::path(get, path = "/api/status/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Malformed job id (`invalid-job-id`)", body = ErrorBody),
        (status = 404, description = "Unknown or expired job (`job-not-found`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    Caller(who): Caller,
    JobIdPath(id): JobIdPath,
) -> Result<Response, ApiError> {
    let Some((job, position)) = state
        .with_timeout(state.store.status(&id))
        .await?
        .filter(|(job, _)| who.may_see(&job.owner))
    else {
        return Err(not_found(id.as_str()));
    };
    let signing = state.signing().await?;
    let webhook = if job.params.contains_key("webhook_url") {
        state
            .with_timeout(state.store.get_webhook(&id))
            .await?
            .map(WebhookView::from)
    } else {
        None
    };
    let mut view = JobView::new(&job, position, signing.as_ref());
    view.webhook = webhook;
    Ok(Json(view).into_response())
}

/// The same as `GET /api/status/{job_id}`.
#[utoipa::path(get, path = "/api/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Malformed job id (`invalid-job-id`)", body = ErrorBody),
        (status = 404, description = "Unknown or expired job (`job-not-found`)", body = ErrorBody),
    ))]
pub async fn get(state: State<AppState>, who: Caller, id: JobIdPath) -> Result<Response, ApiError> {
    status(state, who, id).await
}

/// Query of `GET /api/jobs`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs in this state.
    #[param(value_type = Option<ListStatus>)]
    status: Option<String>,
    /// Jobs per page, 1–100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9007199254740991_u64)]
    cursor: Option<String>,
}

/// The states a listing can be filtered by.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ListStatus {
    Queued,
    Processing,
    Finished,
    Failed,
}

/// A page of jobs, newest first.
#[derive(Serialize, ToSchema)]
pub struct JobPage<'a> {
    pub jobs: Vec<JobView<'a>>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Recent jobs, newest first.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", operation_id = "list_jobs", params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "A bad query parameter (`invalid-status`, `invalid-limit`, `invalid-cursor`, `invalid-query`)", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Response, ApiError> {
    let status = match p.status.as_deref() {
        None => None,
        Some(s @ ("queued" | "processing" | "finished" | "failed")) => Some(JobStatus::parse(s)),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-status",
                format!(
                    "status must be one of queued, processing, finished, failed (got {other:?})"
                ),
            )
            .with_field("status"));
        }
    };
    let limit = match p.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid-limit",
                    format!("limit must be an integer from 1 to {MAX_PAGE} (got {s:?})"),
                )
                .with_field("limit"));
            }
        },
    };
    let cursor = match p.cursor.as_deref() {
        None => None,
        Some(s) => Some(
            s.parse::<u64>()
                .ok()
                .filter(|c| *c <= MAX_CURSOR)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-cursor",
                        format!(
                            "cursor must be a next_cursor value from a previous page (an integer from 0 to {MAX_CURSOR})"
                        ),
                    )
                    .with_field("cursor")
                })?,
        ),
    };
    let page = state
        .with_timeout(state.store.list(&ListQuery {
            status,
            limit,
            cursor,
            owner: (!who.sees_all).then(|| who.owner().to_owned()),
        }))
        .await?;
    let signing = state.signing().await?;
    Ok(Json(JobPage {
        jobs: page
            .jobs
            .iter()
            .map(|j| JobView::new(j, None, signing.as_ref()))
            .collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
    .into_response())
}

/// Cancels a job: a queued one at once, a running one by asking its worker. Send
/// `Content-Type: application/json` (any body, `{}` will do): a request no web
/// form can make. (An `X-Requested-With` header or an API key says the same, and
/// then no body is needed.)
#[utoipa::path(post, path = "/api/jobs/{job_id}/cancel", tag = "jobs",
    params(("job_id" = String, Path, description = "The job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = Object, content_type = "application/json", description = "Ignored; `{}`"),
    responses(
        (status = 200, description = "It was queued: now `failed` with error `cancelled`", body = JobView),
        (status = 202, description = "It is running: its worker stops it (`cancel_requested: true`); it ends `failed`/`cancelled` within seconds", body = JobView),
        (status = 400, description = "Malformed job id (`invalid-job-id`), or a body that is not a JSON object (`invalid-json`, `invalid-body`)", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 403, description = "Sent by a web page on an origin `--cors-origins` does not name (`forbidden-origin`)", body = ErrorBody),
        (status = 409, description = "It already finished or failed (`job-final`)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor an `X-Requested-With` header (`unsupported-media-type`)", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    JobIdPath(id): JobIdPath,
    request: Request,
) -> Result<Response, ApiError> {
    // No body is needed; one that is sent must be a JSON object.
    let body = read_body(request, MAX_BODY_BYTES, state.body_timeout).await?;
    if !body.is_empty() {
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid-json",
                format!("request body is not valid JSON: {e}"),
            )
        })?;
        if !v.is_object() {
            return Err(ApiError::bad_request(
                "invalid-body",
                "request body must be a JSON object ({} will do) or empty",
            ));
        }
    }
    // Someone else's job is not there, as far as this caller can tell.
    let visible = state
        .with_timeout(state.store.get(&id))
        .await?
        .is_some_and(|job| who.may_see(&job.owner));
    if !visible {
        return Err(not_found(id.as_str()));
    }
    let signing = state.signing().await?;
    match state.with_timeout(state.store.cancel(&id)).await? {
        CancelOutcome::Cancelled(job) => Ok((
            StatusCode::OK,
            Json(JobView::new(&job, None, signing.as_ref())),
        )
            .into_response()),
        CancelOutcome::Requested(job) => Ok((
            StatusCode::ACCEPTED,
            Json(JobView::new(&job, None, signing.as_ref())),
        )
            .into_response()),
        CancelOutcome::AlreadyFinal(job) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "job-final",
            format!(
                "job {} has already {}; there is nothing to cancel",
                job.id,
                job.status.as_str()
            ),
        )),
        CancelOutcome::NotFound => Err(not_found(id.as_str())),
    }
}

pub(super) fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "job-not-found",
        format!("no job with id {id} (unknown, or expired after 24 h)"),
    )
    .with_field("job_id")
}
