//! The caller's prompts as ComfyUI shows them: `/history` (those that ended;
//! `POST` forgets them),
//! `/queue` (waiting and running; `POST` deletes), `/interrupt`.

use axum::Json;
use axum::extract::{FromRequest, Query, Request, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{cross_site, graph_of, outputs_by_node, prompt_entry};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::api::extract::{PathParams, read_body};
use crate::api::jobs::delete::delete_ended;
use crate::auth::Identity;
use crate::job::{JobId, JobRecord, JobStatus};
use crate::store::ListQuery;

/// Most entries `/history` gives at once.
const MAX_HISTORY: usize = 500;
/// Most prompts a `POST /queue` deletes or `/interrupt` stops at once.
const MAX_EDITS: usize = 500;

#[derive(Deserialize)]
pub struct HistoryQuery {
    max_items: Option<usize>,
}

/// The caller's jobs (everyone's for an admin, or with auth off) of a status,
/// newest first.
pub(super) async fn own_jobs(
    state: &AppState,
    who: &Identity,
    status: JobStatus,
    limit: usize,
) -> Result<Vec<JobRecord>, ApiError> {
    let owner = (!who.sees_all).then(|| who.owner().to_owned());
    let page = state
        .with_timeout(state.store.list(&ListQuery {
            status: Some(status),
            limit,
            cursor: None,
            owner,
        }))
        .await?;
    Ok(page.jobs)
}

/// What the caller's `/history` holds: its prompts that ended (finished or
/// failed jobs carrying a graph), at most `limit` of each, newest first.
async fn ended_prompts(
    state: &AppState,
    who: &Identity,
    limit: usize,
) -> Result<Vec<JobRecord>, ApiError> {
    let mut jobs = own_jobs(state, who, JobStatus::Finished, limit).await?;
    jobs.extend(own_jobs(state, who, JobStatus::Failed, limit).await?);
    jobs.retain(|j| graph_of(j).is_some());
    Ok(jobs)
}

/// One `/history` entry: the prompt, its outputs by node, how it ended.
fn history_entry(job: &JobRecord) -> Value {
    let ts = job.updated_ms;
    let start = json!(["execution_start", {"prompt_id": job.id, "timestamp": ts}]);
    let (status_str, completed, end) = match job.status {
        JobStatus::Finished => (
            "success",
            true,
            json!(["execution_success", {"prompt_id": job.id, "timestamp": ts}]),
        ),
        _ if job.cancelled => (
            "error",
            false,
            json!(["execution_interrupted", {"prompt_id": job.id, "node_id": "", "node_type": "",
                "executed": [], "timestamp": ts}]),
        ),
        _ => (
            "error",
            false,
            json!(["execution_error", {"prompt_id": job.id, "node_id": "", "node_type": "",
                "executed": [], "exception_message": job.error, "exception_type": "",
                "traceback": [], "current_inputs": {}, "current_outputs": {}, "timestamp": ts}]),
        ),
    };
    let outputs = outputs_by_node(job);
    let meta: Map<String, Value> = outputs
        .keys()
        .map(|n| {
            (
                n.clone(),
                json!({"node_id": n, "display_node": n, "parent_node": null, "real_node_id": n}),
            )
        })
        .collect();
    json!({
        "prompt": prompt_entry(job),
        "outputs": outputs,
        "status": {"status_str": status_str, "completed": completed, "messages": [start, end]},
        "meta": meta,
    })
}

/// `GET /history?max_items=`: the caller's prompts that ended, oldest first
/// (as ComfyUI lists them), at most 500.
pub async fn history(
    State(state): State<AppState>,
    Caller(who): Caller,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    let limit = q.max_items.unwrap_or(MAX_HISTORY).clamp(1, MAX_HISTORY);
    let mut jobs = ended_prompts(&state, &who, limit).await?;
    jobs.sort_by_key(|j| j.updated_ms);
    let skip = jobs.len().saturating_sub(limit);
    let out: Map<String, Value> = jobs[skip..]
        .iter()
        .map(|j| (j.id.clone(), history_entry(j)))
        .collect();
    Ok(Json(Value::Object(out)).into_response())
}

/// `GET /history/{prompt_id}`: `{}` until it ends (and for another's prompt).
pub async fn history_of(
    State(state): State<AppState>,
    Caller(who): Caller,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let Ok(id) = JobId::parse(&id) else {
        return Ok(Json(json!({})).into_response());
    };
    let job = state
        .with_timeout(state.store.get(&id))
        .await?
        .filter(|j| who.may_see(&j.owner) && graph_of(j).is_some() && j.status.is_final());
    Ok(match job {
        Some(j) => Json(json!({j.id.clone(): history_entry(&j)})).into_response(),
        None => Json(json!({})).into_response(),
    })
}

/// What a `POST /queue` or `POST /history` body asks: the prompts named in
/// `delete`, and whether to `clear` all of the caller's.
fn named_edits(body: &Value) -> (Vec<String>, bool) {
    let named = body
        .get("delete")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    (
        named,
        body.get("clear").and_then(Value::as_bool) == Some(true),
    )
}

/// `POST /history` (`{"clear": true}`, `{"delete": [ids]}`): forgets the
/// caller's ended prompts. On one ComfyUI that drops history entries; on the
/// farm an entry is the job, whose pictures only it reaches, so the job goes
/// with its pictures, as `DELETE /api/jobs/{id}` does. Prompts still waiting or
/// running are left alone (they are not history yet), as are jobs from Studio
/// Core's own API (they are not in this history).
pub async fn history_edit(
    State(state): State<AppState>,
    Caller(who): Caller,
    EditBody(body): EditBody,
) -> Response {
    let (named, clear) = named_edits(&body);
    let mut ended: Vec<(JobId, JobRecord)> = Vec::new();
    if clear {
        match ended_prompts(&state, &who, MAX_EDITS).await {
            Ok(jobs) => ended.extend(
                jobs.into_iter()
                    .filter_map(|j| Some((JobId::parse(&j.id).ok()?, j))),
            ),
            Err(e) => return e.into_response(),
        }
    }
    for id in named.iter().take(MAX_EDITS) {
        let Ok(jid) = JobId::parse(id) else { continue };
        match state.with_timeout(state.store.get(&jid)).await {
            Ok(Some(j))
                if who.may_see(&j.owner) && j.status.is_final() && graph_of(&j).is_some() =>
            {
                ended.push((jid, j))
            }
            Ok(_) => {}
            Err(e) => return e.into_response(),
        }
    }
    let mut deleted = 0;
    let mut seen = std::collections::HashSet::new();
    for (id, job) in &ended {
        if !seen.insert(id.as_str()) {
            continue;
        }
        if let Err(e) = delete_ended(&state, id, job).await {
            return e.into_response();
        }
        deleted += 1;
    }
    if deleted > 0 {
        tracing::info!(
            by = who.owner_or("anonymous"),
            deleted,
            "ComfyUI history deleted with its pictures"
        );
    }
    axum::http::StatusCode::OK.into_response()
}

/// `GET /queue`: `{"queue_running": [...], "queue_pending": [...]}`, the
/// caller's.
pub async fn queue(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let entries = |jobs: Vec<JobRecord>| -> Vec<Value> {
        let mut jobs: Vec<JobRecord> = jobs.into_iter().filter(|j| graph_of(j).is_some()).collect();
        jobs.sort_by_key(|j| j.updated_ms);
        jobs.iter().map(prompt_entry).collect()
    };
    let running = entries(own_jobs(&state, &who, JobStatus::Processing, MAX_HISTORY).await?);
    let pending = entries(own_jobs(&state, &who, JobStatus::Queued, MAX_HISTORY).await?);
    Ok(Json(json!({"queue_running": running, "queue_pending": pending})).into_response())
}

/// The body ComfyUI's clients send to `POST /queue`, `/history` and
/// `/interrupt`: a JSON object (`{}` for none) from this origin; ComfyUI's 400
/// otherwise (or the cross-site refusal).
pub struct EditBody(Value);

impl FromRequest<AppState> for EditBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        object_body(state, req).await.map(EditBody)
    }
}

/// A JSON object body, or `{}` for none.
async fn object_body(state: &AppState, req: Request) -> Result<Value, Response> {
    if let Some(refused) = cross_site(req.headers()) {
        return Err(refused);
    }
    let body = read_body(req, 256 << 10, state.body_timeout)
        .await
        .map_err(IntoResponse::into_response)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(super::comfy_error(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object",
            json!({}),
        )),
    }
}

/// Cancels each of `ids` the caller may see (queued: at once; running: its
/// worker stops it).
async fn cancel_all(state: &AppState, who: &Identity, ids: &[String]) -> Result<usize, ApiError> {
    let mut n = 0;
    for id in ids.iter().take(MAX_EDITS) {
        let Ok(id) = JobId::parse(id) else { continue };
        let visible = state
            .with_timeout(state.store.get(&id))
            .await?
            .is_some_and(|j| who.may_see(&j.owner));
        if visible {
            state.with_timeout(state.store.cancel(&id)).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// `POST /queue`: `{"delete": [prompt ids]}` takes waiting prompts out,
/// `{"clear": true}` all of the caller's.
pub async fn queue_edit(
    State(state): State<AppState>,
    Caller(who): Caller,
    EditBody(body): EditBody,
) -> Response {
    let (mut ids, clear) = named_edits(&body);
    if clear {
        match own_jobs(&state, &who, JobStatus::Queued, MAX_EDITS).await {
            Ok(jobs) => ids.extend(jobs.into_iter().map(|j| j.id)),
            Err(e) => return e.into_response(),
        }
    }
    // Only waiting ones: ComfyUI's queue deletes what has not started.
    let mut waiting = Vec::new();
    for id in ids.into_iter().take(MAX_EDITS) {
        let Ok(jid) = JobId::parse(&id) else { continue };
        match state.with_timeout(state.store.get(&jid)).await {
            Ok(Some(j)) if j.status == JobStatus::Queued => waiting.push(id),
            Ok(_) => {}
            Err(e) => return e.into_response(),
        }
    }
    match cancel_all(&state, &who, &waiting).await {
        Ok(_) => axum::http::StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /interrupt` (`{"prompt_id"}` optional): stops that running prompt, or
/// every running prompt of the caller's.
pub async fn interrupt(
    State(state): State<AppState>,
    Caller(who): Caller,
    EditBody(body): EditBody,
) -> Response {
    let ids: Vec<String> = match body.get("prompt_id").and_then(Value::as_str) {
        Some(id) => vec![id.to_owned()],
        None => match own_jobs(&state, &who, JobStatus::Processing, MAX_EDITS).await {
            Ok(jobs) => jobs.into_iter().map(|j| j.id).collect(),
            Err(e) => return e.into_response(),
        },
    };
    match cancel_all(&state, &who, &ids).await {
        Ok(_) => axum::http::StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

/// ComfyUI's newer jobs API: a job as `GET /api/jobs` shows it (`status`
/// pending, in_progress, completed, failed or cancelled; counts and a preview
/// of its outputs), with its outputs and prompt for `GET /api/jobs/{id}`.
fn job_summary(job: &JobRecord, detail: bool) -> Value {
    let status = match job.status {
        JobStatus::Queued => "pending",
        JobStatus::Processing => "in_progress",
        JobStatus::Finished => "completed",
        _ if job.cancelled => "cancelled",
        _ => "failed",
    };
    let comfy = job.params.get(crate::workflow::COMFYUI_FIELD);
    let outputs = outputs_by_node(job);
    let preview = outputs.iter().find_map(|(node, o)| {
        let (media, items) = o.as_object()?.iter().next()?;
        let mut item = items.get(0)?.clone();
        item["nodeId"] = json!(node);
        item["mediaType"] = json!(media);
        Some(item)
    });
    let mut v = json!({
        "id": job.id,
        "status": status,
        "priority": super::number_of(job),
        "outputs_count": job.outputs.len(),
        "previewable_outputs_count": job.outputs.len(),
    });
    if let Some(t) = comfy.and_then(|c| c.get("create_time")) {
        v["create_time"] = t.clone();
    }
    if let Some(id) = comfy.and_then(|c| c.pointer("/extra_pnginfo/workflow/id")) {
        v["workflow_id"] = id.clone();
    }
    if job.status.is_final() {
        v["execution_end_time"] = json!(job.updated_ms);
    }
    if let Some(p) = preview {
        v["preview_output"] = p;
    }
    if status == "failed" {
        v["execution_error"] = json!({"prompt_id": job.id, "exception_message": job.error});
    }
    if detail {
        v["outputs"] = Value::Object(outputs);
        v["workflow"] = json!({
            "prompt": graph_of(job),
            "extra_data": {"client_id": super::client_of(job)},
        });
        if job.status.is_final() {
            v["execution_status"] = history_entry(job)["status"].clone();
        }
    }
    v
}

#[derive(Deserialize)]
pub struct JobsQuery {
    status: Option<String>,
    sort_order: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

/// `GET /api/jobs?status=&sort_order=&limit=&offset=`: the caller's prompts in
/// every state, newest first unless `sort_order=asc`.
pub async fn jobs(
    State(state): State<AppState>,
    Caller(who): Caller,
    Query(q): Query<JobsQuery>,
) -> Result<Response, ApiError> {
    let wanted: Vec<&str> = q
        .status
        .as_deref()
        .map(|s| s.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let mut all = Vec::new();
    for status in [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Finished,
        JobStatus::Failed,
    ] {
        all.extend(own_jobs(&state, &who, status, MAX_HISTORY).await?);
    }
    let mut list: Vec<Value> = all
        .iter()
        .filter(|j| graph_of(j).is_some())
        .map(|j| (j.updated_ms, job_summary(j, false)))
        .filter(|(_, v)| wanted.is_empty() || wanted.contains(&v["status"].as_str().unwrap_or("")))
        .map(|(t, mut v)| {
            v["_t"] = json!(t);
            v
        })
        .collect();
    list.sort_by_key(|v| v["_t"].as_u64().unwrap_or(0));
    if q.sort_order.as_deref() != Some("asc") {
        list.reverse();
    }
    for v in &mut list {
        if let Some(o) = v.as_object_mut() {
            o.remove("_t");
        }
    }
    let total = list.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_HISTORY);
    let page: Vec<Value> = list.into_iter().skip(offset).take(limit).collect();
    let has_more = offset + page.len() < total;
    Ok(Json(json!({
        "jobs": page,
        "pagination": {"offset": offset, "limit": limit, "total": total, "has_more": has_more},
    }))
    .into_response())
}

/// The caller's job of that id, if it is one of ComfyUI's (a graph).
async fn own_job(
    state: &AppState,
    who: &Identity,
    id: &str,
) -> Result<Option<JobRecord>, ApiError> {
    let Ok(id) = JobId::parse(id) else {
        return Ok(None);
    };
    Ok(state
        .with_timeout(state.store.get(&id))
        .await?
        .filter(|j| who.may_see(&j.owner) && graph_of(j).is_some()))
}

/// `GET /api/jobs/{id}`: the job with its outputs and prompt; 404 if none.
pub async fn job(
    State(state): State<AppState>,
    Caller(who): Caller,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    match own_job(&state, &who, &id).await? {
        Some(j) => Ok(Json(job_summary(&j, true)).into_response()),
        None => Err(ApiError::not_found(
            "job-not-found",
            format!("no job {id:?}"),
        )),
    }
}

/// `POST /api/jobs/{id}/cancel`: a waiting job is taken out, a running one
/// stopped; the job as it is then.
pub async fn cancel_job(
    State(state): State<AppState>,
    Caller(who): Caller,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let Some(j) = own_job(&state, &who, &id).await? else {
        return Err(ApiError::not_found(
            "job-not-found",
            format!("no job {id:?}"),
        ));
    };
    let jid =
        JobId::parse(&j.id).map_err(|_| ApiError::not_found("job-not-found", "no such job"))?;
    state.with_timeout(state.store.cancel(&jid)).await?;
    let now = state
        .with_timeout(state.store.get(&jid))
        .await?
        .unwrap_or(j);
    Ok(Json(job_summary(&now, false)).into_response())
}
