//! `GET /api/workflows`: the workflows and their parameters, so a client can build
//! a form (types, defaults, bounds) without reading our templates.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Number, Value};
use utoipa::ToSchema;

use super::AppState;
use crate::workflow::{DEFAULT_WORKFLOW, ParamKind, Workflow};

/// Parameters shown first, in this order; the rest alphabetically.
const FIRST: &[&str] = &["prompt", "negative_prompt", "seed"];

/// Every workflow.
#[derive(Serialize, ToSchema)]
pub struct WorkflowList {
    /// The workflow used when a request names none.
    #[schema(example = "sdxl")]
    pub default: &'static str,
    pub workflows: Vec<WorkflowInfo>,
}

/// One workflow.
#[derive(Serialize, ToSchema)]
pub struct WorkflowInfo {
    pub name: String,
    pub description: String,
    /// Whether this is the default workflow.
    pub default: bool,
    /// Its parameters: `prompt` first, then `negative_prompt` and `seed`.
    pub params: Vec<ParamInfo>,
    /// Most pixels one job may ask for (`width` × `height` × `batch_size`).
    pub max_pixels: u64,
    /// Whether a live backend has every node and model file it needs with its
    /// defaults (absent when no backend has reported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runnable: Option<bool>,
}

/// One declared parameter.
#[derive(Serialize, ToSchema)]
pub struct ParamInfo {
    pub name: String,
    /// `string`, `int`, `float`, `bool`, `enum`, `image` or `mask`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "int")]
    pub kind: ParamKind,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Used when a request leaves the parameter out (of the parameter's type).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub default: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = f64)]
    pub min: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = f64)]
    pub max: Option<Number>,
    /// For strings: the most characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// For enums: the allowed values. For a parameter naming a model file: the
    /// files the live backends have (`from_backends`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// The choices are what the live backends have now, not a fixed list.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_backends: bool,
    /// `prompt`, and pictures without a default.
    pub required: bool,
}

/// Lists the workflows and their parameters.
#[utoipa::path(get, path = "/api/workflows", tag = "workflows", operation_id = "list_workflows",
    responses((status = 200, description = "Every workflow", body = WorkflowList)))]
pub async fn list(State(state): State<AppState>) -> Json<WorkflowList> {
    // Model parameters get the files the live backends have as their choices
    // (none when nobody has reported, or the store does not answer in time).
    let offers = state
        .with_timeout(state.offers.live(state.store.as_ref()))
        .await
        .unwrap_or_default();
    Json(WorkflowList {
        default: DEFAULT_WORKFLOW,
        workflows: state
            .workflows
            .iter()
            .map(|w| {
                let mut info = describe(w);
                fill_model_choices(w, &mut info, &offers);
                if !offers.is_empty() {
                    let graph = w.render("probe", "", 0, &serde_json::Map::new());
                    let need = crate::capabilities::Requirements::of_graph(&graph);
                    info.runnable = Some(crate::capabilities::refusal(&need, &offers).is_none());
                }
                info
            })
            .collect(),
    })
}

/// Fills the choices of string parameters that name a model file.
fn fill_model_choices(
    w: &Workflow,
    info: &mut WorkflowInfo,
    offers: &[crate::capabilities::Capabilities],
) {
    if offers.is_empty() {
        return;
    }
    for p in &mut info.params {
        let Some(spec) = w.params.get(&p.name) else {
            continue;
        };
        if spec.kind != ParamKind::String {
            continue;
        }
        let mut files = std::collections::BTreeSet::new();
        let mut is_model = false;
        for t in &spec.targets {
            if !crate::capabilities::is_model_input(&t.input) {
                continue;
            }
            let key = w.input_key(t);
            for caps in offers {
                if let Some(list) = caps.models.get(&key) {
                    is_model = true;
                    files.extend(list.iter().cloned());
                }
            }
        }
        if is_model {
            p.choices = files.into_iter().collect();
            p.from_backends = true;
        }
    }
}

/// One workflow as the API shows it.
pub fn describe(w: &Workflow) -> WorkflowInfo {
    let mut names: Vec<&String> = w.params.keys().collect();
    names.sort_by_key(|n| {
        (
            FIRST.iter().position(|f| f == n).unwrap_or(FIRST.len()),
            n.as_str(),
        )
    });
    let params = names
        .into_iter()
        .map(|n| {
            let p = &w.params[n];
            ParamInfo {
                name: n.clone(),
                kind: p.kind,
                description: p.description.clone(),
                default: p.default.clone(),
                min: p.min.clone(),
                max: p.max.clone(),
                max_length: p.max_length,
                choices: p.choices.clone(),
                from_backends: false,
                required: n == "prompt" || (p.kind.is_picture() && p.default.is_none()),
            }
        })
        .collect();
    WorkflowInfo {
        name: w.name.clone(),
        description: w.description.clone(),
        default: w.name == DEFAULT_WORKFLOW,
        params,
        max_pixels: w.pixel_budget(),
        runnable: None,
    }
}
