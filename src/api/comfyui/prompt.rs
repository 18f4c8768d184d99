//! `POST /prompt`: an API-format graph queued as a job, answered as ComfyUI
//! answers (`{"prompt_id", "number", "node_errors"}`, or its 400 shape naming
//! the node); `GET /prompt`: the caller's queue size.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{comfy_error, cross_site};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::extract::read_body;
use crate::job::{JobId, JobStatus, Priority};
use crate::submit::{Submission, SubmitError};
use crate::workflow::{COMFYUI_FIELD, GRAPH_FIELD};

/// The largest prompt taken (a graph, its client's extra data): ComfyUI's
/// frontend sends the whole UI workflow in `extra_data` too.
pub const MAX_PROMPT_BYTES: usize = 8 << 20;
/// The longest `client_id` kept.
const MAX_CLIENT_ID: usize = 128;
/// The largest `extra_pnginfo` kept with a job (ComfyUI's frontend puts the
/// whole UI workflow there, for the saved PNG).
const MAX_PNGINFO_BYTES: usize = 256 << 10;

/// The number this process gives the next prompt (ComfyUI's queue position
/// counter; each process counts its own).
static NUMBER: AtomicU64 = AtomicU64::new(0);

/// `GET /prompt`: `{"exec_info": {"queue_remaining": n}}`, the caller's jobs
/// waiting or running.
pub async fn queue_info(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, crate::api::error::ApiError> {
    let n = remaining(&state, &who).await?;
    Ok(Json(json!({"exec_info": {"queue_remaining": n}})).into_response())
}

/// The caller's jobs waiting or running (at most 1,000 counted).
pub async fn remaining(
    state: &AppState,
    who: &crate::auth::Identity,
) -> Result<usize, crate::api::error::ApiError> {
    let mut n = 0;
    for status in [JobStatus::Queued, JobStatus::Processing] {
        n += super::history::own_jobs(state, who, status, 500)
            .await?
            .len();
    }
    Ok(n)
}

/// `POST /prompt`.
pub async fn prompt(State(state): State<AppState>, Caller(who): Caller, req: Request) -> Response {
    if let Some(refused) = cross_site(req.headers()) {
        return refused;
    }
    let body = match read_body(req, MAX_PROMPT_BYTES, state.body_timeout).await {
        Ok(b) => b,
        Err(e) => return comfy_error(e.status, "invalid_request", &e.message, json!({})),
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return comfy_error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                &format!("the body is not JSON: {e}"),
                json!({}),
            );
        }
    };
    let Some(graph) = v.get("prompt").filter(|p| p.is_object()) else {
        return comfy_error(
            StatusCode::BAD_REQUEST,
            "no_prompt",
            "No prompt provided",
            json!({}),
        );
    };
    let client_id = match v.get("client_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_CLIENT_ID => Some(s.clone()),
        Some(_) => {
            return comfy_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_id",
                &format!("client_id must be a string of at most {MAX_CLIENT_ID} characters"),
                json!({}),
            );
        }
    };
    let prompt_id = match v.get("prompt_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match JobId::parse(s) {
            Ok(id) => Some(id),
            Err(_) => {
                return comfy_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_prompt_id",
                    "prompt_id must be a UUID",
                    json!({}),
                );
            }
        },
        Some(_) => {
            return comfy_error(
                StatusCode::BAD_REQUEST,
                "invalid_prompt_id",
                "prompt_id must be a UUID",
                json!({}),
            );
        }
    };
    let counted = NUMBER.fetch_add(1, Ordering::Relaxed) as i64;
    let front = v.get("front").and_then(Value::as_bool) == Some(true);
    // ComfyUI numbers a front prompt with the counter negated.
    let number = if front { -counted } else { counted };
    let mut kept = Map::new();
    kept.insert("client_id".into(), json!(client_id));
    kept.insert("number".into(), json!(number));
    kept.insert("create_time".into(), json!(crate::clock::now_ms()));
    if let Some(info) = v
        .pointer("/extra_data/extra_pnginfo")
        .filter(|i| i.is_object())
        && info.to_string().len() <= MAX_PNGINFO_BYTES
    {
        kept.insert("extra_pnginfo".into(), info.clone());
    }
    // ComfyUI's clients send no priority: normal, or the key's highest if that
    // is lower; `front` is the highest the key may use, ahead of the caller's
    // other waiting prompts (other keys keep their fair share).
    let highest = who
        .key
        .as_ref()
        .map_or(Priority::High, |k| k.limits.max_priority);
    let priority = if front {
        highest
    } else {
        Priority::Normal.min(highest)
    };
    let submission = Submission {
        who: &who,
        body: json!({GRAPH_FIELD: graph, "priority": priority.as_str()}),
        idempotency_key: None,
        extra: Some((COMFYUI_FIELD, Value::Object(kept))),
        job_id: prompt_id,
        rate: None,
    };
    match state.submit.submit(submission).await {
        Ok(accepted) => Json(json!({
            "prompt_id": accepted.job_id.as_str(),
            "number": number,
            "node_errors": {},
        }))
        .into_response(),
        Err(SubmitError::Rejected(r)) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
            let node_errors = node_errors(graph, &r.message);
            let kind = if r.code == "invalid-graph" {
                "prompt_outputs_failed_validation"
            } else {
                r.code
            };
            comfy_error(status, kind, &r.message, node_errors)
        }
        Err(e) => {
            let e = crate::api::error::ApiError::from(e);
            comfy_error(e.status, e.code, &e.message, json!({}))
        }
    }
}

/// ComfyUI's `node_errors` for a refusal that names a node (`node 3: …`).
fn node_errors(graph: &Value, message: &str) -> Value {
    let node = message
        .split("node ")
        .nth(1)
        .and_then(|rest| rest.split([':', ' ', ',', ')']).next())
        .map(|n| n.trim_matches(|c| c == '"' || c == '\''))
        .filter(|n| graph.get(n).is_some());
    let Some(node) = node else {
        return json!({});
    };
    json!({node: {
        "errors": [{"type": "invalid_input", "message": message, "details": "", "extra_info": {}}],
        "dependent_outputs": [],
        "class_type": graph[node]["class_type"],
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_naming_a_node_is_its_node_error() {
        let g = json!({"3": {"class_type": "KSampler", "inputs": {}}});
        let e = node_errors(&g, "node 3: no live backend has node class \"KSampler\"");
        assert_eq!(e["3"]["class_type"], "KSampler");
        assert_eq!(node_errors(&g, "node 9: missing"), json!({}));
        assert_eq!(node_errors(&g, "the graph has no nodes"), json!({}));
    }
}
