//! An MCP server (Model Context Protocol) for agents, over MCP's streamable
//! HTTP at `/mcp` on Studio Core's port (`studio mcp` relays stdio to it): the
//! key as Bearer, JSON-RPC answered as JSON. Tools: `generate`, `get_job`,
//! `wait_for_job`, `cancel_job`, `list_workflows`, `list_jobs`, `upload_image`.
//! The `generate` tool's input schema comes from the workflow registry at each
//! `tools/list`, so a new workflow is a new choice without a restart.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::AppState;
use super::access::Caller;
use super::extract::read_body;
use crate::auth::Identity;
use crate::job::{JobId, JobView};
use crate::store::ListQuery;
use crate::submit::Submission;

/// The protocol versions we speak (the client's, when it is one of them).
const VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];
/// The largest request (an upload's base64 picture fits).
const MAX_BODY: usize = 48 << 20;
/// Longest a tool call waits for a job (`generate`, `wait_for_job`).
const MAX_WAIT: Duration = Duration::from_secs(120);
/// The largest picture returned as image content.
const MAX_IMAGE: u64 = 16 << 20;

/// A JSON-RPC error answer: `{"jsonrpc": "2.0", "id", "error": {"code", "message"}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct JsonRpcError {
    pub jsonrpc: String,
    #[schema(value_type = Object)]
    pub id: Value,
    /// `{"code", "message"}`.
    #[schema(value_type = Object)]
    pub error: Value,
}

fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// A tool's answer: text (and pictures), or an error the agent reads.
fn tool_text(text: String, is_error: bool) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": is_error})
}

/// MCP's streamable HTTP: one JSON-RPC message (or a batch) in, the answers
/// out as JSON (`initialize`, `tools/list`, `tools/call`, `ping`);
/// notifications are `202`.
#[utoipa::path(post, path = "/mcp", tag = "mcp",
    request_body(content = Object, content_type = "application/json", description = "A JSON-RPC 2.0 message of MCP"),
    responses(
        (status = 200, description = "The JSON-RPC answer", body = Object),
        (status = 202, description = "A notification, taken"),
        (status = 400, description = "Not JSON (a JSON-RPC parse error, -32700)", body = JsonRpcError),
        (status = 401, description = "No valid key (with auth on)", body = super::error::ErrorBody),
        (status = 403, description = "From a web page on another origin (`forbidden-origin`)", body = super::error::ErrorBody),
        (status = 413, description = "Over 48 MiB", body = super::error::ErrorBody),
        (status = 415, description = "Neither JSON nor a key or X-Requested-With header (`unsupported-media-type`)", body = super::error::ErrorBody),
        (status = 429, description = "Over the key's rate", body = super::error::ErrorBody),
    ))]
pub async fn post(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: super::guard::Deliberate,
    req: Request,
) -> Response {
    let body = match read_body(req, MAX_BODY, state.body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(rpc_error(
                    &Value::Null,
                    -32700,
                    &format!("parse error: {e}"),
                )),
            )
                .into_response();
        }
    };
    let answers: Vec<Value> = match &msg {
        Value::Array(batch) => {
            let mut out = Vec::new();
            for m in batch.iter().take(64) {
                if let Some(a) = handle(&state, &who, m).await {
                    out.push(a);
                }
            }
            if out.is_empty() {
                return StatusCode::ACCEPTED.into_response();
            }
            return Json(Value::Array(out)).into_response();
        }
        m => handle(&state, &who, m).await.into_iter().collect(),
    };
    match answers.into_iter().next() {
        // A notification or a response: accepted, nothing to say.
        None => StatusCode::ACCEPTED.into_response(),
        Some(a) => ([(header::CONTENT_TYPE, "application/json")], Json(a)).into_response(),
    }
}

/// No stream of the server's own (each POST is answered).
#[utoipa::path(get, path = "/mcp", tag = "mcp",
    responses(
        (status = 405, description = "No server-initiated stream (`method-not-allowed`)", body = super::error::ErrorBody),
        (status = 401, description = "No valid key (with auth on)", body = super::error::ErrorBody),
    ))]
pub async fn no_stream(_: Caller) -> Response {
    not_allowed()
}

/// No sessions to end.
#[utoipa::path(delete, path = "/mcp", tag = "mcp",
    responses(
        (status = 405, description = "No sessions (`method-not-allowed`)", body = super::error::ErrorBody),
        (status = 403, description = "From a web page on another origin (`forbidden-origin`)", body = super::error::ErrorBody),
        (status = 401, description = "No valid key (with auth on)", body = super::error::ErrorBody),
    ))]
pub async fn no_session(_: Caller, _: super::guard::Deliberate) -> Response {
    not_allowed()
}

fn not_allowed() -> Response {
    let mut res = super::error::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this MCP server answers each POST; it opens no stream and keeps no sessions",
    )
    .into_response();
    res.headers_mut()
        .insert(header::ALLOW, axum::http::HeaderValue::from_static("POST"));
    res
}

/// One JSON-RPC message; `None` for a notification.
async fn handle(state: &AppState, who: &Identity, m: &Value) -> Option<Value> {
    let id = m.get("id")?.clone();
    let method = m.get("method").and_then(Value::as_str).unwrap_or("");
    let params = m.get("params").cloned().unwrap_or_else(|| json!({}));
    Some(match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str);
            let version = asked
                .filter(|v| VERSIONS.contains(v))
                .unwrap_or(VERSIONS[0]);
            rpc_result(
                &id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": "studio-core", "version": env!("CARGO_PKG_VERSION")},
                    "instructions": "Studio Core runs ComfyUI workflows on a farm of GPUs. list_workflows says what each takes; generate makes pictures (and returns them when they are ready within the call).",
                }),
            )
        }
        "ping" => rpc_result(&id, json!({})),
        "tools/list" => rpc_result(&id, json!({"tools": tools(state)})),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            let args = params
                .get("arguments")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            match call(state, who, name, args).await {
                Ok(v) => rpc_result(&id, v),
                Err(ToolError::Unknown) => rpc_error(&id, -32602, &format!("no tool {name:?}")),
                Err(ToolError::Failed(text)) => rpc_result(&id, tool_text(text, true)),
            }
        }
        other => rpc_error(&id, -32601, &format!("method not found: {other}")),
    })
}

/// The tools, with `generate`'s schema from the workflows there are now.
fn tools(state: &AppState) -> Vec<Value> {
    let catalog = state.catalog.current();
    let mut props = Map::new();
    let names: Vec<&str> = catalog.names().collect();
    props.insert(
        "workflow".into(),
        json!({"type": "string", "enum": names, "description": "Which workflow (list_workflows says what each takes)", "default": crate::workflow::DEFAULT_WORKFLOW}),
    );
    props.insert(
        "prompt".into(),
        json!({"type": "string", "minLength": 1, "description": "What to make"}),
    );
    for wf in catalog.iter() {
        for (name, spec) in &wf.params {
            if name == "prompt" || props.contains_key(name) {
                continue;
            }
            let mut s = spec.json_schema(name);
            if let Some(o) = s.as_object_mut() {
                o.remove("default");
                o.insert(
                    "description".into(),
                    json!(format!(
                        "{} (the workflows that declare it)",
                        spec.description
                    )),
                );
            }
            props.insert(name.clone(), s);
        }
    }
    props.insert("seed".into(), json!({"type": "integer", "minimum": 0, "description": "Fixes the result; random without one"}));
    let id = json!({"type": "object", "properties": {"job_id": {"type": "string"}}, "required": ["job_id"]});
    vec![
        json!({"name": "generate", "description": "Queues a job of a workflow and waits up to two minutes for it; returns the job and, when it finished, its picture.",
               "inputSchema": {"type": "object", "properties": props, "required": ["prompt"]}}),
        json!({"name": "get_job", "description": "A job's status, progress and outputs.", "inputSchema": id}),
        json!({"name": "wait_for_job", "description": "Waits (up to two minutes) until a job ends; returns it and its picture.", "inputSchema": id}),
        json!({"name": "cancel_job", "description": "Cancels a job that has not ended.", "inputSchema": id}),
        json!({"name": "list_workflows", "description": "The workflows, each with its parameters as JSON Schema.", "inputSchema": {"type": "object", "properties": {}}}),
        json!({"name": "list_jobs", "description": "Your recent jobs, newest first.",
               "inputSchema": {"type": "object", "properties": {"status": {"enum": ["queued", "processing", "finished", "failed"]}, "limit": {"type": "integer", "minimum": 1, "maximum": 100}}}}),
        json!({"name": "upload_image", "description": "Stores a picture (base64 PNG, JPEG or WebP) for a workflow's image or mask parameter; returns its upload_id.",
               "inputSchema": {"type": "object", "properties": {"data": {"type": "string", "description": "The picture, base64"}}, "required": ["data"]}}),
    ]
}

enum ToolError {
    Unknown,
    Failed(String),
}

impl From<super::error::ApiError> for ToolError {
    fn from(e: super::error::ApiError) -> Self {
        ToolError::Failed(format!("{} ({})", e.message, e.code))
    }
}

fn job_id(args: &Map<String, Value>) -> Result<JobId, ToolError> {
    args.get("job_id")
        .and_then(Value::as_str)
        .and_then(|s| JobId::parse(s).ok())
        .ok_or_else(|| ToolError::Failed("job_id must be a job's id (a UUID)".into()))
}

async fn call(
    state: &AppState,
    who: &Identity,
    name: &str,
    args: Map<String, Value>,
) -> Result<Value, ToolError> {
    match name {
        "generate" => {
            let mut body = args;
            body.entry("workflow")
                .or_insert_with(|| json!(crate::workflow::DEFAULT_WORKFLOW));
            let accepted = state
                .submit
                .submit(Submission {
                    who,
                    body: Value::Object(body),
                    idempotency_key: None,
                    extra: None,
                    job_id: None,
                    rate: None,
                })
                .await
                .map_err(|e| ToolError::from(super::error::ApiError::from(e)))?;
            finished(state, who, &accepted.job_id).await
        }
        "wait_for_job" => {
            let id = job_id(&args)?;
            visible(state, who, &id).await?;
            finished(state, who, &id).await
        }
        "get_job" => {
            let id = job_id(&args)?;
            let job = visible(state, who, &id).await?;
            Ok(tool_text(view(state, who, &job).await?.to_string(), false))
        }
        "cancel_job" => {
            let id = job_id(&args)?;
            visible(state, who, &id).await?;
            state.with_timeout(state.store.cancel(&id)).await?;
            let job = visible(state, who, &id).await?;
            Ok(tool_text(view(state, who, &job).await?.to_string(), false))
        }
        "list_workflows" => {
            let catalog = state.catalog.current();
            let list: Vec<Value> = catalog
                .iter()
                .map(|wf| {
                    let props: Map<String, Value> = wf
                        .params
                        .iter()
                        .map(|(n, s)| (n.clone(), s.json_schema(n)))
                        .collect();
                    json!({"name": wf.name, "description": wf.description, "version": wf.version,
                           "parameters": {"type": "object", "properties": props}})
                })
                .collect();
            Ok(tool_text(Value::Array(list).to_string(), false))
        }
        "list_jobs" => {
            let status = args
                .get("status")
                .and_then(Value::as_str)
                .map(crate::job::JobStatus::parse);
            let limit = args
                .get("limit")
                .and_then(Value::as_u64)
                .unwrap_or(20)
                .clamp(1, 100);
            let page = state
                .with_timeout(state.store.list(&ListQuery {
                    status,
                    limit: limit as usize,
                    cursor: None,
                    owner: (!who.sees_all).then(|| who.owner().to_owned()),
                }))
                .await?;
            let mut views = Vec::new();
            for job in &page.jobs {
                views.push(view(state, who, job).await?);
            }
            Ok(tool_text(Value::Array(views).to_string(), false))
        }
        "upload_image" => {
            let data = args.get("data").and_then(Value::as_str).unwrap_or("");
            let data = data.rsplit(',').next().unwrap_or(data);
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| ToolError::Failed("data must be a base64 picture".into()))?;
            let uploader = &state.submit.uploads;
            let picture = uploader
                .check(bytes, None)
                .await
                .map_err(|e| ToolError::from(super::error::ApiError::from(e)))?;
            let record = uploader
                .store(
                    state.store.as_ref(),
                    who.owner(),
                    &picture,
                    super::STORE_TIMEOUT,
                )
                .await
                .map_err(|e| ToolError::from(super::error::ApiError::from(e)))?;
            Ok(tool_text(
                serde_json::to_string(&record).unwrap_or_default(),
                false,
            ))
        }
        _ => Err(ToolError::Unknown),
    }
}

/// The job, if the caller may see it.
async fn visible(
    state: &AppState,
    who: &Identity,
    id: &JobId,
) -> Result<crate::job::JobRecord, ToolError> {
    state
        .with_timeout(state.store.get(id))
        .await?
        .filter(|j| who.may_see(&j.owner))
        .ok_or_else(|| ToolError::Failed(format!("no job {id}")))
}

async fn view(
    state: &AppState,
    who: &Identity,
    job: &crate::job::JobRecord,
) -> Result<Value, ToolError> {
    let signing = state.signing().await?;
    Ok(
        serde_json::to_value(JobView::new(job, None, signing.as_ref(), who.sees_all))
            .unwrap_or_default(),
    )
}

/// Waits (up to [`MAX_WAIT`]) for a job to end: the job, and its first picture
/// as image content when it finished.
async fn finished(state: &AppState, who: &Identity, id: &JobId) -> Result<Value, ToolError> {
    visible(state, who, id).await?;
    let deadline = tokio::time::Instant::now() + MAX_WAIT;
    let job = super::events::wait_final(state, id, deadline)
        .await?
        .ok_or_else(|| ToolError::Failed(format!("no job {id}")))?;
    let mut content =
        vec![json!({"type": "text", "text": view(state, who, &job).await?.to_string()})];
    if job.status == crate::job::JobStatus::Finished
        && let Some(out) = job.outputs.iter().find(|o| o.kind == "image")
        && let Some(bytes) = super::images::read_whole(state, id, &out.filename, MAX_IMAGE).await
    {
        content.push(json!({"type": "image", "mimeType": out.content_type,
            "data": base64::engine::general_purpose::STANDARD.encode(&bytes)}));
    }
    let failed = job.status == crate::job::JobStatus::Failed;
    Ok(json!({"content": content, "isError": failed}))
}
