//! The farm as one ComfyUI: ComfyUI's own HTTP and WebSocket API on a port of
//! its own (`--comfyui-api-port`), over Studio Core's queue, stores, storage,
//! keys and fair share. Its clients (ComfyUI's frontend, its SDKs, the MCP
//! servers agents use) talk to the farm as they would to one ComfyUI.
//!
//! - `POST /prompt` takes an API-format graph: a job like any other (a raw
//!   graph: admin keys and keys made with `--graphs`, or anyone with auth off),
//!   its `client_id` kept with it (`history.rs`, `prompt.rs`);
//! - `GET /ws?clientId=` streams ComfyUI's messages about that client's prompts,
//!   relayed from whichever backend runs each (`ws.rs`);
//! - `/history`, `/queue`, `/interrupt`, `/view`: the caller's own jobs;
//! - `/upload/image`, `/upload/mask`: into Studio Core's uploads, which a
//!   graph's `LoadImage` then names (`upload.rs`);
//! - `/object_info`, `/system_stats`, `/models`, `/embeddings`, `/features`:
//!   what the live backends offer, as one ComfyUI would answer (`info.rs`).
//!
//! Every route is also under `/api/`, as ComfyUI serves them.

mod frontend;
mod history;
mod info;
pub mod paths;
mod prompt;
mod upload;
mod ws;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub use self::frontend::Frontend;
use super::{ApiService, AppState};
use crate::job::JobRecord;
use crate::workflow::{COMFYUI_FIELD, GRAPH_FIELD};

fn routes() -> Router<AppState> {
    let mut r = Router::new();
    for prefix in ["", "/api"] {
        let p = |path: &str| format!("{prefix}{path}");
        r = r
            .route(&p("/prompt"), get(prompt::queue_info).post(prompt::prompt))
            .route(
                &p("/history"),
                get(history::history).post(history::history_edit),
            )
            .route(&p("/history/{prompt_id}"), get(history::history_of))
            .route(&p("/queue"), get(history::queue).post(history::queue_edit))
            .route(&p("/interrupt"), post(history::interrupt))
            .route(&p("/view"), get(info::view))
            .route(&p("/object_info"), get(info::object_info))
            .route(&p("/object_info/{node_class}"), get(info::object_info_of))
            .route(&p("/system_stats"), get(info::system_stats))
            .route(&p("/embeddings"), get(info::embeddings))
            .route(&p("/models"), get(info::model_folders))
            .route(&p("/models/{folder}"), get(info::models))
            .route(&p("/features"), get(info::features))
            .route(&p("/ws"), get(ws::ws))
            .route(&p("/upload/image"), post(upload::upload))
            .route(&p("/upload/mask"), post(upload::upload))
            .route(&p("/users"), get(frontend::users))
            .route(
                &p("/settings"),
                get(frontend::settings).post(frontend::save_settings),
            )
            .route(
                &p("/settings/{id}"),
                get(frontend::setting).post(frontend::save_setting),
            )
            .route(&p("/userdata"), get(frontend::userdata_list))
            .route(&p("/v2/userdata"), get(frontend::userdata_list))
            .route(
                &p("/userdata/{file}"),
                get(frontend::userdata_file).post(frontend::userdata_save),
            )
            .route(&p("/extensions"), get(frontend::extensions))
            .route(&p("/i18n"), get(frontend::empty_object))
            .route(&p("/workflow_templates"), get(frontend::empty_object))
            .route(&p("/experiment/models"), get(info::model_folder_list));
    }
    // ComfyUI's newer jobs API, only under /api.
    r.route("/api/jobs", get(history::jobs))
        .route("/api/jobs/{job_id}", get(history::job))
        .route("/api/jobs/{job_id}/cancel", post(history::cancel_job))
        .route("/login", get(frontend::login_page).post(frontend::login))
        .fallback(frontend::file)
}

/// The ComfyUI-compatible service: the same layers as Studio Core's own API
/// (who is asking, rate limits, the panic guard, the request log), every route
/// counted as API.
pub fn router(state: AppState) -> ApiService {
    super::layered(routes(), state, super::access::Surface::ComfyUi)
}

/// ComfyUI's error shape: `{"error": {"type", "message", "details",
/// "extra_info"}, "node_errors": {…}}`.
pub fn comfy_error(status: StatusCode, kind: &str, message: &str, node_errors: Value) -> Response {
    (
        status,
        axum::Json(json!({
            "error": {"type": kind, "message": message, "details": "", "extra_info": {}},
            "node_errors": node_errors,
        })),
    )
        .into_response()
}

/// A page on another site driving this port with a visitor's browser: ComfyUI
/// itself refuses a request whose `Origin` names another host than `Host`.
fn cross_site(headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("");
    (!super::guard::same_origin(origin, headers)).then(|| {
        comfy_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a request from another site (its Origin is not this host)",
            json!({}),
        )
    })
}

/// What a ComfyUI client gave with a prompt, kept with its job.
fn client_of(job: &JobRecord) -> Option<&str> {
    job.params.get(COMFYUI_FIELD)?.get("client_id")?.as_str()
}

/// The number ComfyUI shows a prompt with in its queue.
fn number_of(job: &JobRecord) -> Value {
    job.params
        .get(COMFYUI_FIELD)
        .and_then(|c| c.get("number"))
        .cloned()
        .unwrap_or_else(|| json!(0))
}

/// A job's graph, if it carries one (a prompt from this port, or a raw graph).
fn graph_of(job: &JobRecord) -> Option<&Value> {
    job.params.get(GRAPH_FIELD)
}

/// A job's outputs by node, as ComfyUI's `executed` and `/history` give them:
/// `{"images": [{"filename", "subfolder", "type"}]}`, the subfolder being the
/// job's id (which `/view` reads them by).
fn outputs_by_node(job: &JobRecord) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for o in &job.outputs {
        let key = if o.kind == "audio" { "audio" } else { "images" };
        let node = out
            .entry(o.node.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object");
        node.entry(key)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("a list")
            .push(json!({"filename": o.filename, "subfolder": job.id, "type": "output"}));
    }
    out
}

/// A queue or history entry's `prompt`: `[number, id, graph, extra_data,
/// outputs_to_execute]`.
fn prompt_entry(job: &JobRecord) -> Value {
    let mut outputs: Vec<&str> = job.outputs.iter().map(|o| o.node.as_str()).collect();
    outputs.dedup();
    json!([
        number_of(job),
        job.id,
        graph_of(job).cloned().unwrap_or_else(|| json!({})),
        {"client_id": client_of(job)},
        outputs,
    ])
}
