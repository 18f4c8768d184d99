//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the response types' `ToSchema` derives.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use super::AppState;
use super::{
    admin, batches, events, health, images, jobs, keys, mcp, metrics, openai, ops, pages, previews,
    uploads, usage, workflows,
};
use crate::workflow::{DEFAULT_WORKFLOW, Workflow, WorkflowRegistry};

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Studio Core",
        description = "A job API in front of ComfyUI servers. Submit with POST /api/generate, follow with GET /api/status/{job_id} or the live events, fetch the pictures from /images. Every error is JSON: {\"error\", \"code\"} plus \"field\" when a request field is to blame. With auth on (`--auth keys`, or `auto` on a non-loopback address), every /api request needs an API key: `Authorization: Bearer sk_…` or `X-API-Key: sk_…`; without one, 401.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        health::health,
        metrics::metrics,
        jobs::generate,
        batches::submit,
        batches::get,
        batches::cancel,
        uploads::upload,
        jobs::status,
        jobs::get,
        jobs::list::list,
        jobs::cancel::cancel,
        jobs::delete::delete,
        admin::retry,
        admin::get_pauses,
        admin::pause,
        admin::resume,
        admin::drain,
        admin::dead,
        admin::requeue,
        events::job_events,
        events::all_events,
        previews::preview,
        workflows::list,
        workflows::publish,
        workflows::convert,
        workflows::check,
        openai::generations,
        openai::edits,
        openai::models,
        mcp::post,
        mcp::no_stream,
        mcp::no_session,
        workflows::get,
        workflows::version,
        workflows::retire,
        ops::ops,
        usage::usage,
        keys::list,
        keys::create,
        keys::update,
        keys::revoke,
        images::image,
        pages::index,
        pages::docs,
        pages::ops_page,
        openapi_json,
        pages::asset,
    ),
    components(schemas(pages::AssetName, jobs::list::ListStatus, usage::GroupBy)),
    tags(
        (name = "jobs", description = "Submit, follow, list and cancel generation jobs; download their outputs"),
        (name = "batches", description = "Many jobs as one: N variations, lists of seeds or prompts, grids over parameters"),
        (name = "uploads", description = "Input pictures for image and mask parameters (img2img, inpainting)"),
        (name = "events", description = "Live changes as Server-Sent Events"),
        (name = "workflows", description = "The workflows and their parameters"),
        (name = "keys", description = "API keys (admins only)"),
        (name = "usage", description = "GPU-seconds, queue wait and outputs by key, workflow, day or backend"),
        (name = "admin", description = "Steering the queue (admins only): pause, resume, drain; dead letters and requeue"),
        (name = "mcp", description = "An MCP server for agents (streamable HTTP; `studio mcp` relays stdio to it)"),
        (name = "openai", description = "The OpenAI Images API, for OpenAI's SDKs and chat front ends (its own request and error shapes)"),
        (name = "service", description = "Health"),
        (name = "pages", description = "The studio page and these docs"),
    )
)]
pub struct ApiDoc;

/// The document as served: the annotations, plus the request body of
/// `POST /api/generate` built from the workflows this server has loaded (one variant
/// per workflow, with exactly the fields it accepts, their types and bounds).
/// The document as this server answers: its `webhooks` (none offered without a
/// `--webhook-secret`), `keys` when every `/api` request needs an API key (then a
/// cancel needs no body: the key already shows no web form sent it).
pub fn document(
    workflows: &WorkflowRegistry,
    webhooks: WebhookDoc,
    keys: bool,
    max_batch: usize,
) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert(
            "GenerateRequest".into(),
            generate_request(workflows, webhooks),
        );
        schemas.insert(
            "BatchRequest".into(),
            batch_request(workflows, webhooks, max_batch),
        );
    }
    add_links(&mut doc);
    add_security(&mut doc);
    for cancel in [
        "/paths/~1api~1jobs~1{job_id}~1cancel/post/requestBody",
        "/paths/~1api~1batches~1{batch_id}~1cancel/post/requestBody",
        "/paths/~1api~1jobs~1{job_id}~1retry/post/requestBody",
        "/paths/~1api~1admin~1pause/post/requestBody",
        "/paths/~1api~1admin~1resume/post/requestBody",
        "/paths/~1api~1admin~1drain/post/requestBody",
        "/paths/~1api~1admin~1dead~1requeue/post/requestBody",
    ] {
        if keys && let Some(body) = doc.pointer_mut(cancel) {
            body["required"] = json!(false);
        }
    }
    doc
}

/// API keys: the two ways to send one, and on every `/api` operation the answers
/// the access gate gives before any handler runs (`401` without a valid key when
/// auth is on, `429` over the key's or the address's rate). The empty requirement
/// says a key is optional: with auth off none is needed.
fn add_security(doc: &mut Value) {
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        components.insert(
            "securitySchemes".into(),
            json!({
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API key, `sk_<id>_<secret>`, made with `studio keys create` or `POST /api/keys`."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                           "description": "The same key in a header of its own."},
            }),
        );
    }
    let error = json!({"$ref": "#/components/schemas/ErrorBody"});
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/api/") {
            continue;
        }
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            if !matches!(method.as_str(), "get" | "post" | "patch" | "delete" | "put") {
                continue;
            }
            op["security"] = json!([{"bearer": []}, {"apiKey": []}, {}]);
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            responses.entry("401").or_insert_with(|| {
                json!({"description": "Auth is on and the request has no valid API key (`unauthorized`)",
                       "content": {"application/json": {"schema": error}}})
            });
            responses.entry("429").or_insert_with(|| {
                json!({"description": "Over the key's (or, without keys, the address's) rate (`rate-limited`), with `Retry-After` and `RateLimit` headers",
                       "content": {"application/json": {"schema": error}}})
            });
        }
    }
}

/// OpenAPI links: where a job id or an output's file name in one answer can be
/// used next (for people reading the docs, and for tools that follow them).
fn add_links(doc: &mut Value) {
    let job = |id: &str| {
        let by_id = json!({"job_id": id});
        json!({
            "GetStatus": {"operationId": "status", "parameters": by_id},
            "GetJob": {"operationId": "get", "parameters": by_id},
            "CancelJob": {"operationId": "cancel", "parameters": by_id},
            "JobEvents": {"operationId": "job_events", "parameters": by_id},
        })
    };
    let image = |base: &str| {
        json!({"operationId": "image", "parameters": {
            "job_id": format!("{base}/job_id"),
            "file": format!("{base}/outputs/0/filename"),
        }})
    };
    let mut links = [
        (
            "/paths/~1api~1generate/post/responses/202",
            job("$response.body#/job_id"),
        ),
        (
            "/paths/~1api~1jobs/get/responses/200",
            job("$response.body#/jobs/0/job_id"),
        ),
        (
            "/paths/~1api~1status~1{job_id}/get/responses/200",
            json!({}),
        ),
        ("/paths/~1api~1jobs~1{job_id}/get/responses/200", json!({})),
        (
            "/paths/~1api~1batches/post/responses/202",
            job("$response.body#/job_ids/0"),
        ),
    ];
    let batch = json!({"batch_id": "$response.body#/batch_id"});
    links[4].1["GetBatch"] = json!({"operationId": "get_batch", "parameters": batch});
    links[4].1["CancelBatch"] = json!({"operationId": "cancel_batch", "parameters": batch});
    links[1].1["FirstOutput"] = image("$response.body#/jobs/0");
    links[2].1["Output"] = image("$response.body#");
    links[3].1["Output"] = image("$response.body#");
    for (at, l) in links {
        if let Some(res) = doc.pointer_mut(at).and_then(Value::as_object_mut) {
            res.insert("links".into(), l);
        }
    }
}

/// `{"oneOf": [...]}`, one object schema per workflow, told apart by `workflow`
/// (which the default workflow's variant may leave out).
fn generate_request(workflows: &WorkflowRegistry, webhooks: WebhookDoc) -> Value {
    let variants: Vec<Value> = workflows.iter().map(|w| variant(w, webhooks)).collect();
    json!({
        "description": "A submission: `prompt`, `seed` and `workflow`, plus the workflow's declared parameters (as `GET /api/workflows` lists them), each checked against its type and bounds; fields the workflow does not declare are refused (`unknown-field`). A `null` field counts as absent. Beyond what a schema can say: `width` × `height` × `batch_size` must stay within the workflow's pixel budget (`max_pixels`, default 16,777,216), else `invalid-param`.",
        "oneOf": variants,
    })
}

/// `POST /api/batches`'s body: each workflow's submission plus `count`. The
/// other ways (`seeds`, `prompts`, `grid`) are described, not in the schema:
/// which pairs of fields exclude each other, and that a grid's product stays
/// within `--max-batch`, are beyond what a schema says plainly.
fn batch_request(workflows: &WorkflowRegistry, webhooks: WebhookDoc, max_batch: usize) -> Value {
    let variants: Vec<Value> = workflows
        .iter()
        .map(|w| {
            let mut v = variant(w, webhooks);
            v["properties"]["count"] = json!({"type": "integer", "minimum": 1, "maximum": max_batch,
                "description": "How many jobs: seeds count up from `seed` (random when absent)."});
            if let Some(r) = v["required"].as_array_mut() {
                r.push(json!("count"));
            }
            v
        })
        .collect();
    json!({
        "description": format!("A batch: one job's fields, as POST /api/generate takes them, plus exactly one of `count` (N jobs, seeds counting up from `seed` or a random one), `seeds` (a list: one job per seed; no `seed`), `prompts` (a list: one job per prompt; no `prompt`) or `grid` (an object of field: [values]: one job per combination, fields in name order, the first varying slowest; a grid cannot vary `workflow`). 1 to {max_batch} jobs (`--max-batch`); every job is checked as a submission is, and the batch is queued whole or refused whole (the key's quota of waiting jobs counts every job). The schema below states the `count` form."),
        "oneOf": variants,
    })
}

/// What a `webhook_url` looks like, stated so that every string it allows is one
/// the server takes: http(s), a host name of at most four labels of letters and
/// digits with single inner hyphens, each at most 61 characters (the URL parser
/// refuses labels over 63), the last starting with a letter (so it is never read
/// as an IPv4 number), an optional port, a path of plain characters. (The server also
/// takes any other URL the WHATWG URL parser reads, IP literals on a server that
/// allows private addresses among them.)
pub const WEBHOOK_URL_PATTERN: &str = "^https?://([A-Za-z0-9](-?[A-Za-z0-9]){0,30}\\.){0,3}[A-Za-z](-?[A-Za-z0-9]){0,30}(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~-]*)*$";

/// What the server does with webhooks, as the document says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookDoc {
    /// No `--webhook-secret`: `webhook_url` is refused, so not offered.
    Off,
    /// Webhooks are signed; a submission names its own URL.
    On,
    /// And the server has a `--webhook-url` for submissions that name none.
    OnWithDefault,
}

fn variant(w: &Workflow, webhooks: WebhookDoc) -> Value {
    let default = w.name == DEFAULT_WORKFLOW;
    let mut props = Map::new();
    props.insert(
        "workflow".into(),
        if default {
            json!({"enum": [w.name, null], "description": "This workflow (the default when absent)."})
        } else {
            json!({"const": w.name})
        },
    );
    props.insert(
        "priority".into(),
        json!({"enum": ["low", "normal", "high", null],
               "description": "Served first within the key's own jobs: high, then normal, then low. At most the key's max_priority."}),
    );
    props.insert(
        "output_format".into(),
        json!({"enum": ["png", "jpeg", "webp", null],
               "description": "What the pictures are stored as: png (the default: ComfyUI's bytes, untouched), jpeg, or webp (lossless); the prompt metadata is kept (EXIF, as ComfyUI writes it)."}),
    );
    props.insert(
        "quality".into(),
        json!({"type": ["integer", "null"], "minimum": 1, "maximum": 100,
               "description": "JPEG quality (default 90); WebP is lossless."}),
    );
    if webhooks != WebhookDoc::Off {
        props.insert(
        "webhook_url".into(),
        json!({"type": ["string", "null"], "maxLength": crate::webhooks::MAX_URL_LEN, "pattern": WEBHOOK_URL_PATTERN,
               "description": "Where to POST the job's end (Standard Webhooks: signed with the server's whsec_ secret; headers webhook-id, webhook-timestamp, webhook-signature). http or https, no credentials; public addresses only unless the server allows private ones. The server's --webhook-url when absent."}),
    );
        props.insert(
        "webhook_events".into(),
        json!({"type": ["array", "null"], "minItems": 1,
               "items": {"enum": crate::webhooks::EVENTS},
               "description": "Which messages to send (default job.finished and job.failed); needs a webhook_url or the server's --webhook-url."}),
    );
    }
    props.insert(
        "seed".into(),
        json!({"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX,
               "description": "Random (and returned) when absent."}),
    );
    for (name, spec) in &w.params {
        if name == "seed" {
            continue;
        }
        props.insert(name.clone(), spec.json_schema(name));
    }
    let mut required = vec!["prompt"];
    if !default {
        required.push("workflow");
    }
    // Pictures without a default must be given (an upload id).
    for (name, spec) in &w.params {
        if spec.kind.is_picture() && spec.default.is_none() {
            required.push(name.as_str());
        }
    }
    let mut v = json!({
        "title": w.name,
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
        "x-max-pixels": w.pixel_budget(),
    });
    if webhooks == WebhookDoc::On {
        // Without the server's --webhook-url, events need a URL of their own.
        v["if"] = json!({"required": ["webhook_events"], "properties": {"webhook_events": {"type": "array"}}});
        v["then"] =
            json!({"required": ["webhook_url"], "properties": {"webhook_url": {"type": "string"}}});
    }
    v
}

/// This API's OpenAPI 3 document, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "pages",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    let snap = state.catalog.snapshot();
    let cached = state
        .openapi
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .filter(|(generation, _)| *generation == snap.generation)
        .map(|(_, doc)| doc.clone());
    let doc = match cached {
        Some(doc) => doc,
        None => {
            let webhooks = match (
                state.webhooks.secrets.is_empty(),
                &state.webhooks.default_url,
            ) {
                (true, _) => WebhookDoc::Off,
                (false, None) => WebhookDoc::On,
                (false, Some(_)) => WebhookDoc::OnWithDefault,
            };
            let doc = document(
                &snap.registry,
                webhooks,
                state.access.keys_required(),
                state.submit.max_batch,
            );
            let doc = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
            *state.openapi.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((snap.generation, doc.clone()));
            doc
        }
    };
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc,
    )
        .into_response()
}
