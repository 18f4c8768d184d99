//! The OpenAI Images API on Studio Core's port, for chat front ends and SDKs:
//! `POST /v1/images/generations`, `GET /v1/models`. A request becomes `n` jobs
//! of the workflow its `model` names, through the same queue, limits and fair
//! share as every other job; the answer waits for their pictures (at most
//! `--openai-timeout`), and a client that goes away cancels them. Answers and
//! errors are OpenAI's shapes (`{"error": {"message", "type", "param",
//! "code"}}`: [`crate::api::guard`] puts every error of `/v1/` in it).

use std::sync::Arc;

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
use crate::job::{JobId, JobRecord, JobStatus, JobView};
use crate::store::JobStore;
use crate::submit::{Submission, SubmitError};

/// Most pictures one request asks for (OpenAI's own limit).
const MAX_N: u64 = 10;
/// The largest request body.
const MAX_BODY: usize = 64 << 10;
/// The largest picture sent back as `b64_json`.
const MAX_B64_PICTURE: u64 = 32 << 20;

/// An error in OpenAI's shape.
fn oai_error(status: StatusCode, message: &str, param: Option<&str>, code: &str) -> Response {
    let kind = super::guard::openai_error_type(status);
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": param, "code": code}})),
    )
        .into_response()
}

fn bad(message: &str, param: &str) -> Response {
    oai_error(
        StatusCode::BAD_REQUEST,
        message,
        Some(param),
        "invalid_value",
    )
}

/// OpenAI's error shape, which every error of `/v1/` has.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OpenAiError {
    /// `{"message", "type", "param", "code"}`.
    #[schema(value_type = Object)]
    pub error: Value,
}

/// The workflows, as OpenAI models (for OpenAI's SDKs and chat front ends).
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses(
        (status = 200, description = "`{\"object\": \"list\", \"data\": [{\"id\": <workflow>, \"object\": \"model\", …}]}`", body = Object),
        (status = 401, description = "No valid key (with auth on)", body = OpenAiError),
    ))]
pub async fn models(State(state): State<AppState>, _: Caller) -> Response {
    let catalog = state.catalog.current();
    let data: Vec<Value> = catalog
        .names()
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "studio-core"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// The host the client addressed (for absolute picture URLs).
fn host_of(req: &Request) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned()
}

/// `response_format`: `url` (the default) or `b64_json`; `None` for another.
fn format_of(given: Option<&str>) -> Option<&'static str> {
    match given {
        None | Some("url") => Some("url"),
        Some("b64_json") => Some("b64_json"),
        Some(_) => None,
    }
}

/// The workflow a `model` names, or OpenAI's 404.
async fn workflow_of(
    state: &AppState,
    model: &str,
) -> Result<Arc<crate::workflow::Workflow>, Response> {
    state
        .catalog
        .resolve(model)
        .await
        .map(|r| r.workflow)
        .map_err(|_| {
            oai_error(
                StatusCode::NOT_FOUND,
                &format!("The model `{model}` does not exist: GET /v1/models lists the workflows"),
                Some("model"),
                "model_not_found",
            )
        })
}

/// Cancels the jobs of a request whose client went away before their pictures.
struct CancelOnDrop {
    store: Arc<dyn JobStore>,
    ids: Vec<JobId>,
    done: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.done || self.ids.is_empty() {
            return;
        }
        let (store, ids) = (self.store.clone(), std::mem::take(&mut self.ids));
        tokio::spawn(async move {
            for id in ids {
                let _ = store.cancel(&id).await;
            }
        });
    }
}

/// OpenAI's `POST /v1/images/generations`: `n` pictures of `prompt` from the
/// workflow `model` names (default `sdxl`), `size` its width and height; the
/// answer waits for them (at most `--openai-timeout`).
#[utoipa::path(post, path = "/v1/images/generations", tag = "openai",
    request_body(content = Object, content_type = "application/json",
        description = "OpenAI's: `prompt`, `model` (a workflow), `n` (1–10), `size` (`WxH` or `auto`), `response_format` (`url` or `b64_json`), `style` (where the workflow declares it), `output_format`, `user`"),
    responses(
        (status = 200, description = "`{\"created\", \"data\": [{\"url\" | \"b64_json\", \"revised_prompt\"}]}`", body = Object),
        (status = 400, description = "A bad field (`invalid_request_error`, naming it as `param`)", body = OpenAiError),
        (status = 401, description = "No valid key (with auth on)", body = OpenAiError),
        (status = 403, description = "Refused for this key", body = OpenAiError),
        (status = 404, description = "No such model (`model_not_found`)", body = OpenAiError),
        (status = 413, description = "Body over 64 KiB", body = OpenAiError),
        (status = 415, description = "Neither JSON nor a key or X-Requested-With header", body = OpenAiError),
        (status = 429, description = "Over a limit (`rate_limit_error`)", body = OpenAiError),
        (status = 502, description = "A job failed (`generation_failed`)", body = OpenAiError),
        (status = 503, description = "The store is unavailable", body = OpenAiError),
        (status = 504, description = "Not ready within `--openai-timeout` (the jobs are cancelled)", body = OpenAiError),
    ))]
pub async fn generations(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: super::guard::Deliberate,
    req: Request,
) -> Response {
    let host = host_of(&req);
    let body = match read_body(req, MAX_BODY, state.body_timeout).await {
        Ok(b) => b,
        Err(e) => return oai_error(e.status, &e.message, None, e.code),
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Value::Object(m),
        _ => return bad("the body must be a JSON object", "body"),
    };
    let Some(prompt) = v
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.trim().is_empty())
    else {
        return bad("prompt is required: a non-empty string", "prompt");
    };
    let n = match v.get("n") {
        None | Some(Value::Null) => 1,
        Some(n) => match n.as_u64() {
            Some(n) if (1..=MAX_N).contains(&n) => n,
            _ => return bad(&format!("n must be an integer from 1 to {MAX_N}"), "n"),
        },
    };
    let Some(format) = format_of(v.get("response_format").and_then(Value::as_str)) else {
        return bad("response_format must be url or b64_json", "response_format");
    };
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(crate::workflow::DEFAULT_WORKFLOW)
        .to_owned();
    let wf = match workflow_of(&state, &model).await {
        Ok(wf) => wf,
        Err(r) => return r,
    };
    let mut fields = Map::new();
    fields.insert("prompt".into(), json!(prompt));
    fields.insert("workflow".into(), json!(model));
    match v.get("size").and_then(Value::as_str) {
        None | Some("auto") => {}
        Some(size) => {
            let parsed = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u64>().ok()?, h.parse::<u64>().ok()?)));
            let Some((w, h)) = parsed else {
                return bad(
                    &format!("size must be WIDTHxHEIGHT (e.g. 1024x1024) or auto, not {size:?}"),
                    "size",
                );
            };
            if !(wf.params.contains_key("width") && wf.params.contains_key("height")) {
                return bad(
                    &format!("the model `{model}` takes no size (its pictures keep their own)"),
                    "size",
                );
            }
            fields.insert("width".into(), json!(w));
            fields.insert("height".into(), json!(h));
        }
    }
    // What the workflow declares of OpenAI's other fields.
    if let Some(style) = v.get("style").filter(|s| s.is_string())
        && wf.params.contains_key("style")
    {
        fields.insert("style".into(), style.clone());
    }
    if let Some(f @ ("png" | "jpeg" | "webp")) = v.get("output_format").and_then(Value::as_str) {
        fields.insert("output_format".into(), json!(f));
    }
    run(&state, &who, fields, n, format, &host).await
}

/// Makes `n` jobs of `fields`, waits for them, answers their pictures.
async fn run(
    state: &AppState,
    who: &Identity,
    fields: Map<String, Value>,
    n: u64,
    format: &str,
    host: &str,
) -> Response {
    let mut guard = CancelOnDrop {
        store: state.store.clone(),
        ids: Vec::new(),
        done: false,
    };
    for _ in 0..n {
        // No seed: each job gets a random one, so the n pictures differ.
        let submission = Submission {
            who,
            body: Value::Object(fields.clone()),
            idempotency_key: None,
            extra: None,
            job_id: None,
            rate: None,
        };
        match state.submit.submit(submission).await {
            Ok(a) => guard.ids.push(a.job_id),
            Err(e) => return refusal(e, None),
        }
    }
    let deadline = tokio::time::Instant::now() + state.openai_timeout;
    let mut jobs = Vec::new();
    for id in &guard.ids {
        match super::events::wait_final(state, id, deadline).await {
            Ok(Some(j)) if j.status.is_final() => jobs.push(j),
            Ok(_) => {
                // The guard cancels them.
                return oai_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "the pictures were not ready within {} s (--openai-timeout); the jobs were cancelled",
                        state.openai_timeout.as_secs()
                    ),
                    None,
                    "timeout",
                );
            }
            Err(e) => return oai_error(e.status, &e.message, None, e.code),
        }
    }
    guard.done = true;
    if let Some(failed) = jobs.iter().find(|j| j.status != JobStatus::Finished) {
        return oai_error(
            StatusCode::BAD_GATEWAY,
            &format!("generation failed: {}", failed.error),
            None,
            "generation_failed",
        );
    }
    let data = match pictures(state, who, &jobs, format, host).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    Json(json!({"created": crate::clock::now_ms() / 1000, "data": data})).into_response()
}

/// Each job's first output: its URL, or its bytes in base64.
async fn pictures(
    state: &AppState,
    who: &Identity,
    jobs: &[JobRecord],
    format: &str,
    host: &str,
) -> Result<Vec<Value>, Response> {
    let signing = state
        .signing()
        .await
        .map_err(|e| oai_error(e.status, &e.message, None, e.code))?;
    let base = if state.public_url.is_empty() {
        format!("http://{host}")
    } else {
        state.public_url.clone()
    };
    let mut data = Vec::new();
    for job in jobs {
        let Some(out) = job.outputs.first() else {
            return Err(oai_error(
                StatusCode::BAD_GATEWAY,
                "the workflow made no picture",
                None,
                "no_output",
            ));
        };
        let mut item = json!({"revised_prompt": job.prompt});
        if format == "url" {
            let view =
                serde_json::to_value(JobView::new(job, None, signing.as_ref(), who.sees_all))
                    .unwrap_or_default();
            let url = view["outputs"][0]["url"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            item["url"] = json!(if url.starts_with("http") {
                url
            } else {
                format!("{base}{url}")
            });
        } else {
            let id = JobId::parse(&job.id).map_err(|_| bad("a bad job id", "id"))?;
            let Some(bytes) =
                super::images::read_whole(state, &id, &out.filename, MAX_B64_PICTURE).await
            else {
                return Err(oai_error(
                    StatusCode::BAD_GATEWAY,
                    "the picture cannot be read",
                    None,
                    "storage_error",
                ));
            };
            item["b64_json"] = json!(base64::engine::general_purpose::STANDARD.encode(&bytes));
        }
        data.push(item);
    }
    Ok(data)
}

/// A refusal from the submission path, in OpenAI's shape.
fn refusal(e: SubmitError, param: Option<&str>) -> Response {
    let e = super::error::ApiError::from(e);
    oai_error(e.status, &e.message, e.field.as_deref().or(param), e.code)
}

/// OpenAI's `POST /v1/images/edits` (multipart: `image`, `mask`, `prompt`,
/// `model`, `n`, `response_format`): the picture (and mask) become uploads, and
/// `n` jobs of an img2img workflow (`sdxl-img2img` by default) or, with a mask,
/// an inpainting one (`sd15-inpaint`) take them.
#[utoipa::path(post, path = "/v1/images/edits", tag = "openai",
    request_body(content = Object, content_type = "multipart/form-data",
        description = "OpenAI's: `image` (PNG, JPEG or WebP), `mask` (optional), `prompt`, `model` (a workflow taking an image), `n`, `response_format`"),
    responses(
        (status = 200, description = "`{\"created\", \"data\": [{\"url\" | \"b64_json\"}]}`", body = Object),
        (status = 400, description = "A bad field or picture (`invalid_request_error`, naming it as `param`)", body = OpenAiError),
        (status = 401, description = "No valid key (with auth on)", body = OpenAiError),
        (status = 403, description = "From a web page on another origin", body = OpenAiError),
        (status = 404, description = "No such model (`model_not_found`)", body = OpenAiError),
        (status = 413, description = "A picture over the upload limit", body = OpenAiError),
        (status = 415, description = "Not multipart, or not a picture we take", body = OpenAiError),
        (status = 429, description = "Over a limit", body = OpenAiError),
        (status = 502, description = "A job failed", body = OpenAiError),
        (status = 504, description = "Not ready within `--openai-timeout`", body = OpenAiError),
    ))]
pub async fn edits(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: super::guard::Deliberate,
    req: Request,
) -> Response {
    let host = host_of(&req);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let Ok(boundary) = multer::parse_boundary(&content_type) else {
        return oai_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be multipart/form-data with an image",
            Some("image"),
            "invalid_content_type",
        );
    };
    let uploader = &state.submit.uploads;
    let limit = 2 * uploader.limits.max_bytes + (64 << 10);
    let client = super::access::client_of(&who, &req);
    let _room = match uploader.reserve(limit, &client).await {
        Ok(r) => r,
        Err(r) => return refusal(r.into(), Some("image")),
    };
    let body = match read_body(req, limit as usize, state.body_timeout).await {
        Ok(b) => b,
        Err(e) => return oai_error(e.status, &e.message, Some("image"), e.code),
    };
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut text: Map<String, Value> = Map::new();
    let (mut image, mut mask) = (None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return bad(&format!("a broken multipart body: {e}"), "image"),
        };
        let name = field.name().unwrap_or("").to_owned();
        let declared = field.content_type().map(|m| m.to_string());
        let Ok(bytes) = field.bytes().await else {
            return bad("a broken multipart body", &name);
        };
        match name.as_str() {
            "image" | "image[]" => {
                image.get_or_insert((declared, bytes));
            }
            "mask" => mask = Some((declared, bytes)),
            _ if bytes.len() <= 32 << 10 => {
                let Ok(t) = String::from_utf8(bytes.to_vec()) else {
                    return bad("a text field that is not UTF-8", &name);
                };
                text.insert(name, Value::String(t));
            }
            _ => return bad("a text field over 32 KiB", &name),
        }
    }
    let Some(prompt) = text
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.trim().is_empty())
    else {
        return bad("prompt is required: a non-empty string", "prompt");
    };
    let Some(image) = image else {
        return bad("image is required: the picture to edit", "image");
    };
    let n = match text.get("n").and_then(Value::as_str) {
        None => 1,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (1..=MAX_N).contains(&n) => n,
            _ => return bad(&format!("n must be an integer from 1 to {MAX_N}"), "n"),
        },
    };
    let Some(format) = format_of(text.get("response_format").and_then(Value::as_str)) else {
        return bad("response_format must be url or b64_json", "response_format");
    };
    let model = text
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if mask.is_some() {
                "sd15-inpaint"
            } else {
                "sdxl-img2img"
            }
            .into()
        });
    let wf = match workflow_of(&state, &model).await {
        Ok(wf) => wf,
        Err(r) => return r,
    };
    let takes = |kind: crate::workflow::ParamKind| {
        wf.params
            .iter()
            .find(|(_, p)| p.kind == kind)
            .map(|(n, _)| n.clone())
    };
    let Some(image_param) = takes(crate::workflow::ParamKind::Image) else {
        return bad(&format!("the model `{model}` takes no image"), "model");
    };
    let mut fields = Map::new();
    fields.insert("prompt".into(), json!(prompt));
    fields.insert("workflow".into(), json!(model));
    for (param, picture, name) in [
        (Some(image_param), Some(image), "image"),
        (takes(crate::workflow::ParamKind::Mask), mask, "mask"),
    ] {
        let Some((declared, bytes)) = picture else {
            continue;
        };
        let Some(param) = param else {
            return bad(&format!("the model `{model}` takes no mask"), "mask");
        };
        let checked = match uploader.check(bytes.to_vec(), declared.as_deref()).await {
            Ok(p) => p,
            Err(e) => return refusal(e, Some(name)),
        };
        match uploader
            .store(
                state.store.as_ref(),
                who.owner(),
                &checked,
                super::STORE_TIMEOUT,
            )
            .await
        {
            Ok(record) => {
                fields.insert(param, json!(record.upload_id));
            }
            Err(e) => return refusal(e, Some(name)),
        }
    }
    run(&state, &who, fields, n, format, &host).await
}
