//! Steering the queue (admins, or anyone with auth off): pause, resume and drain
//! the farm or one backend; the dead letters, and requeueing them; a new job
//! from a failed one (`POST /api/jobs/{id}/retry`, owners too).

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{JobIdPath, QueryParams, optional_object};
use super::guard::Deliberate;
use crate::auth::Identity;
use crate::job::{JobStatus, QueuePayload};
use crate::store::{DeadLetter, JobStore, ListQuery, MAX_PAUSED, Pauses};
use crate::submit::Retried;
use crate::workflow::param::as_whole;

/// Longest `timeout` of a drain, in seconds.
pub const MAX_DRAIN_SECS: u64 = 3600;
/// Dead letters shown or requeued at most per request.
pub const MAX_DEAD: usize = 1000;
/// How often a drain looks at what still runs.
const DRAIN_POLL: Duration = Duration::from_millis(250);

fn admin_only(who: &Identity) -> Result<(), ApiError> {
    if who.sees_all {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "steering the queue needs an admin key",
        ))
    }
}

/// Reads an optional JSON object body: empty is `{}`; fields other than
/// `allowed` are refused, naming the field.
async fn options(
    state: &AppState,
    request: Request,
    allowed: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    let m = optional_object(request, state.body_timeout).await?;
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "unknown-field",
            format!(
                "unknown field {k:?}; this request takes {}",
                allowed.join(", ")
            ),
        )
        .with_field(k.clone()));
    }
    Ok(m)
}

/// The `backend` an option names (`None`: the whole farm).
fn backend_of(m: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match m.get("backend") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 2048 && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid-backend",
            "backend must be a backend's URL as /health names it (1 to 2048 characters)",
        )
        .with_field("backend")),
    }
}

/// A pause or resume: which backend, if not the whole farm.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PauseRequest {
    /// A backend's URL, as `/health` names it; absent: the whole farm.
    #[schema(
        min_length = 1,
        max_length = 2048,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub backend: Option<String>,
}

/// What is paused.
#[utoipa::path(get, path = "/api/admin/pause", tag = "admin", operation_id = "get_pauses",
    responses(
        (status = 200, description = "What is paused", body = Pauses),
        (status = 403, description = "Auth is on and the key is not an admin's (`forbidden`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn get_pauses(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    admin_only(&who)?;
    Ok(Json(state.with_timeout(state.store.pauses()).await?).into_response())
}

async fn set_paused(
    state: &AppState,
    who: &Identity,
    request: Request,
    paused: bool,
) -> Result<Pauses, ApiError> {
    admin_only(who)?;
    let m = options(state, request, &["backend"]).await?;
    let backend = backend_of(&m)?;
    if paused && let Some(b) = &backend {
        let now = state.with_timeout(state.store.pauses()).await?;
        if !now.backends.contains(b) && now.backends.len() >= MAX_PAUSED {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too-many-paused",
                format!("{MAX_PAUSED} backends are paused already; pause the farm instead"),
            ));
        }
    }
    state
        .with_timeout(state.store.set_paused(backend.as_deref(), paused))
        .await?;
    tracing::warn!(
        backend = backend.as_deref().unwrap_or("(the farm)"),
        paused,
        by = who.owner_or("anonymous"),
        "queue steering"
    );
    state.with_timeout(state.store.pauses()).await
}

/// Pauses the farm, or one backend: dispatchers claim nothing (within a
/// quarter of a second); running jobs finish; submissions still queue.
#[utoipa::path(post, path = "/api/admin/pause", tag = "admin", operation_id = "pause",
    request_body(content = PauseRequest, content_type = "application/json", description = "`{}` for the farm"),
    responses(
        (status = 200, description = "What is paused now", body = Pauses),
        (status = 400, description = "A bad field (`invalid-backend`, `unknown-field`, `invalid-json`, `invalid-body`)", body = ErrorBody),
        (status = 403, description = "Not an admin (`forbidden`), or a cross-site request (`forbidden-origin`)", body = ErrorBody),
        (status = 409, description = "Too many backends paused (`too-many-paused`)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor an `X-Requested-With` header", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    request: Request,
) -> Result<Response, ApiError> {
    Ok(Json(set_paused(&state, &who, request, true).await?).into_response())
}

/// Resumes the farm, or one backend.
#[utoipa::path(post, path = "/api/admin/resume", tag = "admin", operation_id = "resume",
    request_body(content = PauseRequest, content_type = "application/json", description = "`{}` for the farm"),
    responses(
        (status = 200, description = "What is paused now", body = Pauses),
        (status = 400, description = "A bad field (`invalid-backend`, `unknown-field`, `invalid-json`, `invalid-body`)", body = ErrorBody),
        (status = 403, description = "Not an admin (`forbidden`), or a cross-site request (`forbidden-origin`)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor an `X-Requested-With` header", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    request: Request,
) -> Result<Response, ApiError> {
    Ok(Json(set_paused(&state, &who, request, false).await?).into_response())
}

/// A drain: which backend, and how long to wait.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct DrainRequest {
    /// A backend's URL, as `/health` names it; absent: the whole farm.
    #[schema(
        min_length = 1,
        max_length = 2048,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub backend: Option<String>,
    /// Seconds to wait for the running jobs to end, 0–3600 (default 600).
    #[schema(minimum = 0, maximum = 3600)]
    pub timeout: Option<u64>,
}

/// How a drain went.
#[derive(Serialize, ToSchema)]
pub struct Drained {
    /// Nothing runs (on the backend, or anywhere): maintenance may begin.
    pub drained: bool,
    /// Jobs still running when it answered.
    pub running: u64,
    pub paused: Pauses,
}

/// Pauses, then waits until nothing runs (on the backend, or on the farm), for
/// maintenance. It stays paused until resumed.
#[utoipa::path(post, path = "/api/admin/drain", tag = "admin", operation_id = "drain",
    request_body(content = DrainRequest, content_type = "application/json", description = "`{}` for the farm, waiting up to 10 minutes"),
    responses(
        (status = 200, description = "Nothing runs any more", body = Drained),
        (status = 202, description = "Paused, but jobs still ran when `timeout` passed (`drained: false`)", body = Drained),
        (status = 400, description = "A bad field (`invalid-backend`, `invalid-timeout`, `unknown-field`, `invalid-json`, `invalid-body`)", body = ErrorBody),
        (status = 403, description = "Not an admin (`forbidden`), or a cross-site request (`forbidden-origin`)", body = ErrorBody),
        (status = 409, description = "Too many backends paused (`too-many-paused`)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor an `X-Requested-With` header", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn drain(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    request: Request,
) -> Result<Response, ApiError> {
    admin_only(&who)?;
    let m = options(&state, request, &["backend", "timeout"]).await?;
    let backend = backend_of(&m)?;
    let timeout = match m.get("timeout") {
        None | Some(Value::Null) => 600,
        Some(v) => as_whole(v)
            .filter(|t| *t <= MAX_DRAIN_SECS)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-timeout",
                    format!("timeout must be whole seconds from 0 to {MAX_DRAIN_SECS}"),
                )
                .with_field("timeout")
            })?,
    };
    let mut pause_body = Map::new();
    if let Some(b) = &backend {
        pause_body.insert("backend".into(), Value::String(b.clone()));
    }
    // The same checks and record as a pause.
    let request = Request::new(axum::body::Body::from(
        Value::Object(pause_body).to_string(),
    ));
    set_paused(&state, &who, request, true).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let running = loop {
        let running = state
            .with_timeout(running_on(state.store.as_ref(), backend.as_deref()))
            .await?;
        if running == 0 || tokio::time::Instant::now() >= deadline {
            break running;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    };
    let paused = state.with_timeout(state.store.pauses()).await?;
    let status = if running == 0 {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(Drained {
            drained: running == 0,
            running,
            paused,
        }),
    )
        .into_response())
}

/// Jobs running on `backend` (or anywhere).
async fn running_on(
    store: &dyn JobStore,
    backend: Option<&str>,
) -> Result<u64, crate::store::StoreError> {
    let Some(backend) = backend else {
        return Ok(store.stats().await?.processing);
    };
    let mut n = 0;
    let mut cursor = None;
    // Bounded: 100 pages of 100 running jobs.
    for _ in 0..100 {
        let page = store
            .list(&ListQuery {
                status: Some(JobStatus::Processing),
                limit: 100,
                cursor,
                owner: None,
            })
            .await?;
        n += page.jobs.iter().filter(|j| j.backend == backend).count() as u64;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(n)
}

/// Query of `GET /api/admin/dead`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadParams {
    /// How many, newest first, 1–1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// Jobs that failed for good after running out of attempts.
#[derive(Serialize, ToSchema)]
pub struct DeadList {
    #[schema(value_type = Vec<Object>)]
    pub dead: Vec<DeadLetter>,
}

fn limit_of(raw: Option<&str>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(100),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_DEAD).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-limit",
                    format!("limit must be an integer from 1 to {MAX_DEAD}"),
                )
                .with_field("limit")
            }),
    }
}

/// The dead letters, newest first.
#[utoipa::path(get, path = "/api/admin/dead", tag = "admin", operation_id = "dead_letters", params(DeadParams),
    responses(
        (status = 200, description = "Dead letters, newest first", body = DeadList),
        (status = 400, description = "A bad query parameter (`invalid-limit`, `invalid-query`)", body = ErrorBody),
        (status = 403, description = "Not an admin (`forbidden`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn dead(
    State(state): State<AppState>,
    Caller(who): Caller,
    QueryParams(p): QueryParams<DeadParams>,
) -> Result<Response, ApiError> {
    admin_only(&who)?;
    let limit = limit_of(p.limit.as_deref())?;
    let dead = state.with_timeout(state.store.dead_letters(limit)).await?;
    Ok(Json(DeadList { dead }).into_response())
}

/// Which dead letters to requeue.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RequeueRequest {
    /// These jobs' dead letters (at most 1000); absent: the newest `limit`.
    #[schema(max_items = 1000)]
    pub job_ids: Option<Vec<String>>,
    /// How many of the newest, 1–1000 (default 100), when `job_ids` is absent.
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One requeued dead letter.
#[derive(Serialize, ToSchema)]
pub struct Requeued {
    pub job_id: String,
    /// The new job (its `retry_of` is `job_id`).
    pub new_job_id: String,
}

/// One dead letter that was not requeued, and why.
#[derive(Serialize, ToSchema)]
pub struct NotRequeued {
    pub job_id: String,
    pub error: String,
}

/// What a requeue did.
#[derive(Serialize, ToSchema)]
pub struct RequeueAnswer {
    pub requeued: Vec<Requeued>,
    pub skipped: Vec<NotRequeued>,
}

/// Requeues dead letters: each becomes a new job (its owner's, checked as any
/// submission, `retry_of` recorded) and leaves the list.
#[utoipa::path(post, path = "/api/admin/dead/requeue", tag = "admin", operation_id = "requeue_dead",
    request_body(content = RequeueRequest, content_type = "application/json", description = "`{}` for the newest 100"),
    responses(
        (status = 200, description = "What was requeued, and what was not and why", body = RequeueAnswer),
        (status = 400, description = "A bad field (`invalid-job-ids`, `invalid-limit`, `unknown-field`, `invalid-json`, `invalid-body`)", body = ErrorBody),
        (status = 403, description = "Not an admin (`forbidden`), or a cross-site request (`forbidden-origin`)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor an `X-Requested-With` header", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn requeue(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    request: Request,
) -> Result<Response, ApiError> {
    admin_only(&who)?;
    let m = options(&state, request, &["job_ids", "limit"]).await?;
    let wanted: Option<Vec<String>> = match m.get("job_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(ids)) if ids.len() <= MAX_DEAD => Some(
            ids.iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::bad_request("invalid-job-ids", "job_ids must be a list of job ids")
                        .with_field("job_ids")
                })?,
        ),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid-job-ids",
                format!("job_ids must be a list of at most {MAX_DEAD} job ids"),
            )
            .with_field("job_ids"));
        }
    };
    let limit = match m.get("limit") {
        None | Some(Value::Null) => 100,
        Some(v) => as_whole(v)
            .map(|n| n as usize)
            .filter(|n| (1..=MAX_DEAD).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-limit",
                    format!("limit must be an integer from 1 to {MAX_DEAD}"),
                )
                .with_field("limit")
            })?,
    };
    let all = state.with_timeout(state.store.dead_letters(10_000)).await?;
    let mut chosen: Vec<DeadLetter> = Vec::new();
    for d in all {
        let pick = match &wanted {
            Some(ids) => ids.contains(&d.job_id),
            None => chosen.len() < limit,
        };
        if pick && !chosen.iter().any(|c| c.job_id == d.job_id) {
            chosen.push(d);
        }
    }
    let mut answer = RequeueAnswer {
        requeued: Vec::new(),
        skipped: Vec::new(),
    };
    if let Some(ids) = &wanted {
        for id in ids
            .iter()
            .filter(|id| !chosen.iter().any(|c| &c.job_id == *id))
        {
            answer.skipped.push(NotRequeued {
                job_id: id.clone(),
                error: "no dead letter for this job".into(),
            });
        }
    }
    for d in chosen {
        let retried = match crate::job::JobId::parse(&d.job_id) {
            Ok(id) => match state.with_timeout(state.store.get(&id)).await? {
                Some(job) => Retried::from(&job),
                None => match serde_json::from_str::<QueuePayload>(&d.payload) {
                    Ok(p) => Retried::from(p),
                    Err(e) => {
                        answer.skipped.push(NotRequeued {
                            job_id: d.job_id,
                            error: format!("its queue entry cannot be read: {e}"),
                        });
                        continue;
                    }
                },
            },
            Err(e) => {
                answer.skipped.push(NotRequeued {
                    job_id: d.job_id,
                    error: e.to_string(),
                });
                continue;
            }
        };
        let owner = owner_of(&state, &retried).await?;
        let Some(as_owner) = owner else {
            answer.skipped.push(NotRequeued {
                job_id: d.job_id,
                error: "the key that submitted it is gone".into(),
            });
            continue;
        };
        match state.submit.retry(&as_owner, &retried).await {
            Ok(accepted) => {
                state
                    .with_timeout(state.store.remove_dead_letter(&d.job_id))
                    .await?;
                answer.requeued.push(Requeued {
                    job_id: d.job_id,
                    new_job_id: accepted.job_id.to_string(),
                });
            }
            Err(crate::submit::SubmitError::Rejected(r)) => {
                answer.skipped.push(NotRequeued {
                    job_id: d.job_id,
                    error: format!("{} ({})", r.message, r.code),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(answer).into_response())
}

/// Who a retry is submitted as: the original job's key (its limits and quota),
/// `None` if that key is gone or revoked.
async fn owner_of(state: &AppState, r: &Retried) -> Result<Option<Identity>, ApiError> {
    if r.owner.is_empty() {
        return Ok(Some(Identity {
            key: None,
            sees_all: true,
        }));
    }
    Ok(state
        .with_timeout(state.store.get_key(&r.owner))
        .await?
        .filter(|k| !k.is_revoked())
        .map(|k| Identity {
            key: Some(std::sync::Arc::new(k)),
            sees_all: false,
        }))
}

/// A new job from a failed one: the same prompt, seed, workflow version and
/// parameters, queued as the job's owner, `retry_of` recorded.
#[utoipa::path(post, path = "/api/jobs/{job_id}/retry", tag = "jobs", operation_id = "retry_job",
    params(("job_id" = String, Path, description = "The failed job", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = Object, content_type = "application/json", description = "Ignored; `{}`"),
    responses(
        (status = 202, description = "The new job, queued", body = crate::api::jobs::Accepted),
        (status = 400, description = "Malformed job id (`invalid-job-id`), a body that is not a JSON object, or the job can no longer be submitted as it was (the submission's own codes)", body = ErrorBody),
        (status = 403, description = "A cross-site request (`forbidden-origin`)", body = ErrorBody),
        (status = 404, description = "Unknown job (`job-not-found`)", body = ErrorBody),
        (status = 409, description = "The job has not failed (`job-not-failed`), or the key that submitted it is gone (`key-gone`)", body = ErrorBody),
        (status = 410, description = "Its workflow is retired (`workflow-retired`)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor an `X-Requested-With` header", body = ErrorBody),
        (status = 429, description = "The owner's quota or rate (`queue-quota`, `rate-limited`)", body = ErrorBody),
        (status = 503, description = "The queue is full, or the store is unavailable", body = ErrorBody),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    JobIdPath(id): JobIdPath,
    request: Request,
) -> Result<Response, ApiError> {
    super::jobs::cancel::no_body(&state, request).await?;
    let Some(job) = state
        .with_timeout(state.store.get(&id))
        .await?
        .filter(|j| who.may_see(&j.owner))
    else {
        return Err(super::jobs::not_found(id.as_str()));
    };
    if job.status != JobStatus::Failed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job-not-failed",
            format!(
                "job {id} is {}; only a failed job can be retried",
                job.status.as_str()
            ),
        ));
    }
    let retried = Retried::from(&job);
    // An admin retries someone's job as theirs: their limits, their quota.
    let as_owner = if job.owner.is_empty() || job.owner == who.owner() {
        who.clone()
    } else {
        owner_of(&state, &retried).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "key-gone",
                "the key that submitted this job is gone; submit it again yourself",
            )
        })?
    };
    let accepted = state.submit.retry(&as_owner, &retried).await?;
    Ok(super::jobs::accepted_answer(&state, accepted))
}
