//! What the farm offers, as one ComfyUI would answer: `/object_info` (the live
//! backends' node classes, merged), `/models` (their model files by folder),
//! `/embeddings`, `/system_stats`, `/features`; and `/view`, a picture from
//! Studio Core's storage.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::api::extract::{PathParams, QueryParams};
use crate::api::images::{SignedQuery, image};
use crate::job::JobId;

/// The version of ComfyUI whose API this port speaks (checked against its
/// recordings, `tests/fixtures/comfyui/`).
pub const COMFYUI_VERSION: &str = "0.3.64";

/// `GET /object_info`: every node class a live backend has (the last reported
/// when none is live; `{}` before any has).
pub async fn object_info(State(state): State<AppState>, _: Caller) -> Result<Response, ApiError> {
    let info = state
        .with_timeout(state.offers.object_info(state.store.as_ref()))
        .await?;
    Ok(match info {
        Some(v) => Json(v.as_ref().clone()).into_response(),
        None => Json(json!({})).into_response(),
    })
}

/// `GET /object_info/{node_class}`: `{class: definition}`, or `{}`.
pub async fn object_info_of(
    State(state): State<AppState>,
    _: Caller,
    PathParams(class): PathParams<String>,
) -> Result<Response, ApiError> {
    let info = state
        .with_timeout(state.offers.object_info(state.store.as_ref()))
        .await?;
    let one = info
        .as_deref()
        .and_then(|i| i.get(&class))
        .map(|d| json!({class: d}))
        .unwrap_or_else(|| json!({}));
    Ok(Json(one).into_response())
}

/// The model folder a loader's input names files of (ComfyUI's folder names).
fn folder_of(input: &str) -> Option<&'static str> {
    Some(match input {
        "ckpt_name" => "checkpoints",
        "lora_name" => "loras",
        "vae_name" => "vae",
        "control_net_name" => "controlnet",
        "unet_name" => "diffusion_models",
        "clip_name" | "clip_name1" | "clip_name2" | "clip_name3" => "text_encoders",
        "model_name" => "upscale_models",
        "style_model_name" => "style_models",
        "gligen_name" => "gligen",
        "hypernetwork_name" => "hypernetworks",
        "audio_encoder_name" => "audio_encoders",
        _ => return None,
    })
}

/// Every live backend's model files, by ComfyUI folder.
async fn folders(state: &AppState) -> Result<BTreeMap<&'static str, BTreeSet<String>>, ApiError> {
    let live = state
        .with_timeout(state.offers.live(state.store.as_ref()))
        .await?;
    let mut out: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for offer in live.iter() {
        for (slot, files) in &offer.models {
            let input = slot.rsplit('.').next().unwrap_or(slot);
            if let Some(folder) = folder_of(input) {
                out.entry(folder).or_default().extend(files.iter().cloned());
            }
        }
    }
    Ok(out)
}

/// `GET /models`: the folders some live backend has files in.
pub async fn model_folders(State(state): State<AppState>, _: Caller) -> Result<Response, ApiError> {
    let f = folders(&state).await?;
    Ok(Json(f.keys().collect::<Vec<_>>()).into_response())
}

/// `GET /experiment/models`: the folders, as ComfyUI's model library reads
/// them (`[{"name", "folders"}]`).
pub async fn model_folder_list(
    State(state): State<AppState>,
    _: Caller,
) -> Result<Response, ApiError> {
    let f = folders(&state).await?;
    let list: Vec<_> = f
        .keys()
        .map(|k| json!({"name": k, "folders": []}))
        .collect();
    Ok(Json(list).into_response())
}

/// `GET /models/{folder}`: the files in it, on any live backend.
pub async fn models(
    State(state): State<AppState>,
    _: Caller,
    PathParams(folder): PathParams<String>,
) -> Result<Response, ApiError> {
    let f = folders(&state).await?;
    let files: Vec<&String> = f
        .get(folder.as_str())
        .map(|s| s.iter().collect())
        .unwrap_or_default();
    Ok(Json(files).into_response())
}

/// `GET /embeddings`: none are listed (the backends do not report theirs).
pub async fn embeddings(_: Caller) -> Response {
    Json(json!([])).into_response()
}

/// `GET /features`: what ComfyUI's frontend asks the server about.
pub async fn features(State(state): State<AppState>, _: Caller) -> Response {
    Json(json!({
        "supports_preview_metadata": true,
        "max_upload_size": state.submit.uploads.limits.max_bytes,
    }))
    .into_response()
}

/// `GET /system_stats`: the farm as one machine (no one machine's RAM or GPU
/// is the farm's; `/health` and `/metrics` have each backend's).
pub async fn system_stats(State(state): State<AppState>, _: Caller) -> Result<Response, ApiError> {
    let live = state
        .with_timeout(state.offers.live(state.store.as_ref()))
        .await?;
    Ok(Json(json!({
        "system": {
            "os": std::env::consts::OS,
            "ram_total": 0,
            "ram_free": 0,
            "comfyui_version": COMFYUI_VERSION,
            "python_version": "",
            "pytorch_version": "",
            "embedded_python": false,
            "argv": ["studio-core", env!("CARGO_PKG_VERSION")],
        },
        "devices": [{
            "name": format!("Studio Core farm ({} backends)", live.len()),
            "type": "farm",
            "index": 0,
            "vram_total": 0,
            "vram_free": 0,
            "torch_vram_total": 0,
            "torch_vram_free": 0,
        }],
    }))
    .into_response())
}

#[derive(Deserialize)]
pub struct ViewQuery {
    filename: String,
    #[serde(default)]
    subfolder: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// `GET /view?filename=&subfolder=&type=output`: an output, from Studio Core's
/// storage; the subfolder is its job's id, as `/history` and `executed` give
/// it. Only outputs: inputs and temporary files stay on the backends.
pub async fn view(
    State(state): State<AppState>,
    who: Caller,
    Query(q): Query<ViewQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found("file-not-found", format!("no output {:?}", q.filename));
    if q.kind.as_deref().is_some_and(|k| k != "output") {
        return Err(missing());
    }
    let Ok(job) = JobId::parse(&q.subfolder) else {
        return Err(missing());
    };
    // Another's job is not there, as far as this caller can tell.
    let visible = state
        .with_timeout(state.store.get(&job))
        .await?
        .is_some_and(|j| who.0.may_see(&j.owner));
    if !visible {
        return Err(missing());
    }
    image(
        State(state),
        who,
        PathParams((job.as_str().to_owned(), q.filename.clone())),
        QueryParams(SignedQuery::default()),
        headers,
    )
    .await
}
