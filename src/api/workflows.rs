//! `GET /api/workflows`: the workflows and their parameters, so a client can build
//! a form (types, defaults, bounds) without reading our templates.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use crate::workflow::{DEFAULT_WORKFLOW, Workflow};

/// Parameters shown first, in this order; the rest alphabetically.
const FIRST: &[&str] = &["prompt", "negative_prompt", "seed"];

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let workflows: Vec<Value> = state.workflows.iter().map(describe).collect();
    Json(json!({"default": DEFAULT_WORKFLOW, "workflows": workflows}))
}

/// One workflow as the API shows it.
pub fn describe(w: &Workflow) -> Value {
    let mut names: Vec<&String> = w.params.keys().collect();
    names.sort_by_key(|n| {
        (
            FIRST.iter().position(|f| f == n).unwrap_or(FIRST.len()),
            n.as_str(),
        )
    });
    let params: Vec<Value> = names
        .into_iter()
        .map(|n| {
            let mut v = serde_json::to_value(&w.params[n]).unwrap_or_default();
            v["name"] = n.as_str().into();
            v["required"] = (n == "prompt").into();
            v
        })
        .collect();
    json!({
        "name": w.name,
        "description": w.description,
        "default": w.name == DEFAULT_WORKFLOW,
        "params": params,
    })
}
