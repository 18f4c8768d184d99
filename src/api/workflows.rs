//! Workflows: `GET /api/workflows` (every workflow and its parameters, so a
//! client can build a form without reading our templates), publishing
//! (`POST /api/workflows`, in either of ComfyUI's formats), each one whole
//! (`GET /api/workflows/{name}`, `…/versions/{n}`), retiring (`DELETE`), and
//! converting ComfyUI's UI format (`POST /api/workflows/convert`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Number, Value};
use utoipa::ToSchema;

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{PathParams, WorkflowBody};
use super::guard::Deliberate;
use crate::auth::Identity;
use crate::capabilities::Requirements;
use crate::catalog::{Publish, PublishError, api_graph};
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
    /// Published: its latest version (`name@1` … `name@<version>` name each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
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
            .catalog
            .current()
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
        version: w.version,
    }
}

/// A published version (or a base workflow) as the API shows it whole: what a
/// designer published, with what its graph needs of a backend.
#[derive(Serialize, ToSchema)]
pub struct WorkflowDetail {
    pub name: String,
    /// The published version (absent for a built-in or file workflow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The name's latest version (published workflows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<u32>,
    /// Retired: no new jobs (jobs already queued still run their version).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retired: bool,
    pub description: String,
    /// Its parameters as a template declares them: type, bounds, default, and
    /// the node inputs each sets.
    #[schema(value_type = Object)]
    pub params: Value,
    /// Node classes and model files a backend must have.
    #[schema(value_type = Object)]
    pub requirements: Value,
    /// The API-format graph.
    #[schema(value_type = Object)]
    pub graph: Value,
    /// It came in ComfyUI's UI format and was converted (publishing only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub converted: bool,
}

fn detail(wf: &Workflow, latest: Option<u32>, retired: bool, converted: bool) -> WorkflowDetail {
    let graph = Value::Object(wf.graph.clone());
    WorkflowDetail {
        name: wf.name.clone(),
        version: wf.version,
        latest,
        retired,
        description: wf.description.clone(),
        params: serde_json::to_value(&wf.params).unwrap_or_default(),
        requirements: serde_json::to_value(Requirements::of_graph(&graph)).unwrap_or_default(),
        graph,
        converted,
    }
}

/// A retired workflow's answer to a read: `410 workflow-retired`, the error
/// with the workflow as it was.
#[derive(Serialize, ToSchema)]
pub struct RetiredWorkflow {
    pub error: String,
    /// `workflow-retired`.
    pub code: &'static str,
    /// `name`.
    pub field: &'static str,
    pub workflow: WorkflowDetail,
}

/// A published workflow's read: 200, or 410 once retired (its versions still
/// shown, for the jobs that ran them).
fn shown(d: WorkflowDetail) -> Response {
    if !d.retired {
        return Json(d).into_response();
    }
    (
        StatusCode::GONE,
        Json(RetiredWorkflow {
            error: format!("workflow {:?} is retired: no new jobs may name it", d.name),
            code: "workflow-retired",
            field: "name",
            workflow: d,
        }),
    )
        .into_response()
}

fn publish_error(e: PublishError) -> ApiError {
    match e {
        PublishError::Invalid { field, message } => {
            let code = if field == "workflow" {
                "invalid-workflow"
            } else {
                "invalid-param"
            };
            ApiError::bad_request(code, format!("{field}: {message}")).with_field(field)
        }
        PublishError::ReadOnly(name) => ApiError::new(
            StatusCode::CONFLICT,
            "workflow-read-only",
            format!("{name:?} is a built-in or --workflows file workflow: those are read-only; publish under another name"),
        )
        .with_field("name"),
        PublishError::NoNodeInfo => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-node-info",
            "no backend has reported its nodes yet, so a UI-format workflow cannot be converted; start a worker (or publish the API format)",
        )
        .retry_after(5),
        PublishError::Store(e) => e.into(),
    }
}

fn forbidden_publish() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "publish-not-allowed",
        "publishing workflows needs an admin key or a key made with --publish",
    )
}

fn not_published(name: &str, version: Option<u32>) -> ApiError {
    ApiError::not_found(
        "workflow-not-found",
        match version {
            Some(v) => format!("workflow {name:?} has no version {v}"),
            None => format!("no workflow {name:?}"),
        },
    )
    .with_field("name")
}

/// A `POST /api/workflows` body.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PublishRequest {
    /// 1–64 letters, digits, `-` or `_` (not a built-in's name, not starting
    /// with `_`). Publishing a name again makes its next version.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9_-]*$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
    /// What it makes, for people choosing one (at most 2000 characters).
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// An API-format graph, or a UI-format workflow as ComfyUI saves it
    /// (converted with the backends' `/object_info`).
    #[schema(value_type = Object)]
    pub workflow: Value,
    /// Parameters as a template file declares them; read from the graph when
    /// absent (prompt, negative_prompt, seed, steps, cfg, sampler_name,
    /// scheduler, denoise, width, height, batch_size, checkpoint, lora, image…, and
    /// the widgets of nodes titled `$name`).
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
}

/// Publishes a workflow: the next version of its name.
#[utoipa::path(post, path = "/api/workflows", tag = "workflows", operation_id = "publish_workflow",
    request_body(content = PublishRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Published", body = WorkflowDetail),
        (status = 400, description = "A bad name, graph (naming the node) or parameter (`invalid-workflow`, `invalid-param`, `invalid-json`, `invalid-body`)", body = ErrorBody),
        (status = 403, description = "Not a key that may publish (`publish-not-allowed`)", body = ErrorBody),
        (status = 409, description = "A built-in's name (`workflow-read-only`), or too many workflows (`too-many-workflows`)", body = ErrorBody),
        (status = 413, description = "Over 4 MiB (`payload-too-large`)", body = ErrorBody),
        (status = 415, description = "Not JSON (`unsupported-media-type`)", body = ErrorBody),
        (status = 503, description = "A UI-format workflow and no backend has reported its nodes (`no-node-info`), or the store is unavailable", body = ErrorBody),
    ))]
pub async fn publish(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    WorkflowBody(body): WorkflowBody,
) -> Result<Response, ApiError> {
    publish_or_check(state, who, body, false).await
}

/// What publishing a workflow would give (checked, converted, its parameters
/// read from the graph), storing nothing: the same body as `POST /api/workflows`.
#[utoipa::path(post, path = "/api/workflows/check", tag = "workflows", operation_id = "check_workflow",
    request_body(content = PublishRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "What would be published (no `version`; nothing stored)", body = WorkflowDetail),
        (status = 400, description = "A bad name, graph (naming the node) or parameter (`invalid-workflow`, `invalid-param`, `invalid-json`, `invalid-body`)", body = ErrorBody),
        (status = 403, description = "Not a key that may publish (`publish-not-allowed`)", body = ErrorBody),
        (status = 409, description = "A built-in's name (`workflow-read-only`)", body = ErrorBody),
        (status = 413, description = "Over 4 MiB (`payload-too-large`)", body = ErrorBody),
        (status = 415, description = "Not JSON (`unsupported-media-type`)", body = ErrorBody),
        (status = 503, description = "A UI-format workflow and no backend has reported its nodes (`no-node-info`), or the store is unavailable", body = ErrorBody),
    ))]
pub async fn check(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    WorkflowBody(body): WorkflowBody,
) -> Result<Response, ApiError> {
    publish_or_check(state, who, body, true).await
}

async fn publish_or_check(
    state: AppState,
    who: Identity,
    body: Value,
    dry_run: bool,
) -> Result<Response, ApiError> {
    if !who.may_publish() {
        return Err(forbidden_publish());
    }
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("invalid-body", "the body must be a JSON object"))?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "name" | "description" | "workflow" | "params") {
            return Err(ApiError::bad_request(
                "unknown-field",
                format!("unknown field {k:?}; a workflow has name, description, workflow, params"),
            )
            .with_field(k.clone()));
        }
    }
    let text = |k: &'static str, required: bool| -> Result<Option<String>, ApiError> {
        match obj.get(k) {
            None | Some(Value::Null) if !required => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(ApiError::bad_request(
                "invalid-param",
                format!(
                    "{k} {}",
                    if required {
                        "is required (a string)"
                    } else {
                        "must be a string"
                    }
                ),
            )
            .with_field(k)),
        }
    };
    let name = text("name", true)?.unwrap_or_default();
    let description = text("description", false)?;
    let workflow = obj
        .get("workflow")
        .filter(|v| v.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-workflow",
                "workflow is required: an API-format graph or a UI-format workflow (a JSON object)",
            )
            .with_field("workflow")
        })?;
    let info = state
        .with_timeout(state.offers.object_info(state.store.as_ref()))
        .await?;
    let published = state
        .catalog
        .publish(
            Publish {
                name,
                description,
                workflow,
                params: obj.get("params").cloned(),
                by: who.owner_or("(auth off)").to_owned(),
                dry_run,
            },
            info.as_deref(),
        )
        .await
        .map_err(publish_error)?;
    let wf = &published.workflow;
    if dry_run {
        return Ok(Json(detail(wf, None, false, published.converted)).into_response());
    }
    Ok((
        StatusCode::CREATED,
        Json(detail(wf, wf.version, false, published.converted)),
    )
        .into_response())
}

/// Converts a UI-format workflow (the body, as ComfyUI saves it) to the API
/// format, with the backends' `/object_info`, without storing anything.
#[utoipa::path(post, path = "/api/workflows/convert", tag = "workflows", operation_id = "convert_workflow",
    request_body(content = Object, content_type = "application/json", description = "A UI-format workflow"),
    responses(
        (status = 200, description = "`{\"prompt\": <API-format graph>}`, as ComfyUI's frontend would send it", body = Object),
        (status = 400, description = "Not convertible, naming the node (`invalid-workflow`)", body = ErrorBody),
        (status = 413, description = "Over 4 MiB (`payload-too-large`)", body = ErrorBody),
        (status = 415, description = "Not JSON (`unsupported-media-type`)", body = ErrorBody),
        (status = 503, description = "No backend has reported its nodes (`no-node-info`)", body = ErrorBody),
    ))]
pub async fn convert(
    State(state): State<AppState>,
    _: Caller,
    _: Deliberate,
    WorkflowBody(body): WorkflowBody,
) -> Result<Response, ApiError> {
    if !crate::workflow::is_ui_format(&body) {
        return Err(ApiError::bad_request(
            "invalid-workflow",
            "not a UI-format workflow (it has no \"nodes\" and \"links\")",
        )
        .with_field("workflow"));
    }
    let info = state
        .with_timeout(state.offers.object_info(state.store.as_ref()))
        .await?;
    let (graph, _) = api_graph(&body, info.as_deref(), "workflow").map_err(publish_error)?;
    Ok(Json(serde_json::json!({"prompt": graph})).into_response())
}

/// A workflow, at its latest version.
#[utoipa::path(get, path = "/api/workflows/{name}", tag = "workflows", operation_id = "get_workflow",
    params(("name" = String, Path, description = "The workflow's name")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowDetail),
        (status = 404, description = "No such workflow (`workflow-not-found`)", body = ErrorBody),
        (status = 410, description = "Retired (`workflow-retired`), with the workflow as it was", body = RetiredWorkflow),
    ))]
pub async fn get(
    State(state): State<AppState>,
    _: Caller,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    if let Some(wf) = state.catalog.base().get(&name) {
        return Ok(Json(detail(wf, None, false, false)).into_response());
    }
    let snap = state.catalog.snapshot();
    let Some(entry) = snap.published.get(&name) else {
        return Err(not_published(&name, None));
    };
    let wf = state
        .with_timeout(state.catalog.version(&name, entry.latest))
        .await?
        .ok_or_else(|| not_published(&name, None))?;
    Ok(shown(detail(&wf, Some(entry.latest), entry.retired, false)))
}

/// One version of a published workflow (versions never change).
#[utoipa::path(get, path = "/api/workflows/{name}/versions/{version}", tag = "workflows", operation_id = "get_workflow_version",
    params(("name" = String, Path, description = "The workflow's name"),
           ("version" = u32, Path, description = "A version, from 1", minimum = 1)),
    responses(
        (status = 200, description = "That version", body = WorkflowDetail),
        (status = 400, description = "Not a version number (`invalid-path`)", body = ErrorBody),
        (status = 404, description = "No such workflow or version (`workflow-not-found`)", body = ErrorBody),
        (status = 410, description = "The workflow is retired (`workflow-retired`), with that version", body = RetiredWorkflow),
    ))]
pub async fn version(
    State(state): State<AppState>,
    _: Caller,
    PathParams((name, version)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let v: u32 = version.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        ApiError::bad_request(
            "invalid-path",
            format!("{version:?} is not a version (1, 2, …)"),
        )
        .with_field("version")
    })?;
    let snap = state.catalog.snapshot();
    let wf = state
        .with_timeout(state.catalog.version(&name, v))
        .await?
        .ok_or_else(|| not_published(&name, Some(v)))?;
    let entry = snap.published.get(&name);
    Ok(shown(detail(
        &wf,
        entry.map(|e| e.latest),
        entry.is_some_and(|e| e.retired),
        false,
    )))
}

/// Retires a published workflow: new jobs naming it get `410 workflow-retired`;
/// jobs already queued run the version they were given.
#[utoipa::path(delete, path = "/api/workflows/{name}", tag = "workflows", operation_id = "retire_workflow",
    params(("name" = String, Path, description = "The workflow's name")),
    responses(
        (status = 200, description = "Retired", body = WorkflowDetail),
        (status = 403, description = "Not a key that may publish (`publish-not-allowed`)", body = ErrorBody),
        (status = 404, description = "No such published workflow (`workflow-not-found`)", body = ErrorBody),
        (status = 409, description = "A built-in or file workflow (`workflow-read-only`)", body = ErrorBody),
    ))]
pub async fn retire(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    if !who.may_publish() {
        return Err(forbidden_publish());
    }
    if state.catalog.base().contains(&name) {
        return Err(publish_error(PublishError::ReadOnly(name)));
    }
    let by = who.owner_or("(auth off)");
    if !state.with_timeout(state.catalog.retire(&name, by)).await? {
        return Err(not_published(&name, None));
    }
    let entry = state.catalog.snapshot().published.get(&name).cloned();
    let latest = entry.as_ref().map_or(0, |e| e.latest);
    let wf = state
        .with_timeout(state.catalog.version(&name, latest))
        .await?
        .ok_or_else(|| not_published(&name, None))?;
    Ok(Json(detail(&wf, Some(latest), true, false)).into_response())
}
