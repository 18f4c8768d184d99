//! A ComfyUI stand-in: an axum app on port 0 that speaks ComfyUI's HTTP and
//! WebSocket protocol as the transcripts in `tests/fixtures/comfyui/` show it.
//!
//! - One prompt runs at a time, in queue order; `POST /prompt` accepts a client
//!   `prompt_id` and routes the prompt's events to the socket of its `client_id`.
//! - Per node: `progress_state` (running), `executing`, optional `progress` steps,
//!   `executed` for SaveImage, `progress_state` (finished); then
//!   `execution_success`, history written, `status`, `executing` with `node: null`.
//! - An identical graph right after itself is fully cached (no `executing`; the
//!   cached `executed`; the same files).
//! - Validation (400 with `node_errors`) for EmptyImage sizes out of 1..=16384 and
//!   unknown `class_type`s; ImageBlur with a radius ≥ the image side fails at run
//!   time with `execution_error`, like the real server.
//! - `POST /interrupt {prompt_id}` stops that prompt at its next node;
//!   `POST /queue {delete}` removes waiting prompts.
//! - A reconnecting socket of the running prompt's client gets `executing` without
//!   a `prompt_id`, as the real server does.
//!
//! Knobs: per-prompt duration and steps, socket silence, dropping sockets, failing
//! submissions, and a real crash (the server's runtime is dropped: every connection
//! closes, new ones are refused) with restart on the same port. It counts submitted
//! prompts per id, to prove there was no double work, and records when each prompt
//! ran, for the idle-gap benchmark.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};

/// The 64×64 PNG the real server produced (a1), the base of every file we make.
const BASE_PNG: &[u8] = include_bytes!("../../fixtures/comfyui/files/view_studio_view_00001_.png");

/// One prompt's run, as the benchmark needs it.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub prompt_id: String,
    pub started: Instant,
    pub ended: Instant,
}

/// Behaviour knobs; change them at any time through [`StandIn::knobs`].
#[derive(Clone, Debug)]
pub struct Knobs {
    /// How long one prompt takes (split over its nodes).
    pub duration: Duration,
    /// Sampler-like steps reported with `progress` messages on the node marked by
    /// `steps_node` (default: the first node).
    pub steps: u32,
    /// Send nothing on the sockets (they stay open and answer pings).
    pub silent: bool,
    /// Answer the next N `POST /prompt` with a 500.
    pub fail_submits: u32,
    /// Send a preview frame with each sampler-like step, as the real server does
    /// with `--preview-method`: type 4 (with the prompt id) to a client that
    /// asked for `supports_preview_metadata`, type 1 to others.
    pub previews: bool,
    /// SaveImage also reports a video (`gifs`), an audio file (`audio`, in a
    /// subfolder), a temp preview, and a file name that tries to escape (`../`).
    pub extra_outputs: bool,
    /// Checkpoints this server has: a CheckpointLoaderSimple asking for another one
    /// is refused as the real server does (`value_not_in_list`, echoing the value).
    pub checkpoints: Vec<String>,
    /// SaveImage writes a file of this many bytes instead of a PNG; `/view` streams
    /// it, generated on the fly (never held in memory).
    pub output_bytes: Option<u64>,
    /// SaveImage names its files with characters URLs must encode (`# ? ` and a space).
    pub odd_names: bool,
    /// More node classes `/object_info` lists.
    pub extra_nodes: Vec<String>,
    /// Preview frames are always type 1 (no prompt id), as ComfyUI sent them
    /// before it read clients' feature flags (2025-07).
    pub type1_previews: bool,
    /// `/object_info` gives the checkpoint input in a form with no list of
    /// choices (as an unknown future format would): Studio Core cannot tell which
    /// files it has, so it sends it any and ComfyUI's own validation speaks.
    pub unlisted_checkpoints: bool,
    /// `/object_info` describes its classes as a real ComfyUI 0.3.64 does
    /// (their inputs, types, bounds, widget order), for converting and reading
    /// workflows; by default it lists them with no inputs.
    pub real_info: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            duration: Duration::from_millis(60),
            steps: 4,
            silent: false,
            fail_submits: 0,
            previews: true,
            extra_outputs: false,
            checkpoints: vec![
                "sd_xl_base_1.0.safetensors".into(),
                "v1-5-pruned-emaonly.safetensors".into(),
            ],
            output_bytes: None,
            odd_names: false,
            extra_nodes: Vec::new(),
            unlisted_checkpoints: false,
            type1_previews: false,
            real_info: false,
        }
    }
}

struct Item {
    number: u64,
    id: String,
    prompt: Value,
    extra: Value,
    client_id: Option<String>,
}

#[derive(Default)]
struct Inner {
    knobs: Knobs,
    /// Sockets whose client said `supports_preview_metadata` (they get type-4
    /// preview frames, with the prompt id; the others type 1).
    meta_clients: std::collections::HashSet<String>,
    pending: VecDeque<Item>,
    running: Option<(u64, String, Value, Value)>,
    running_node: Option<String>,
    interrupt: Option<String>,
    history: HashMap<String, Value>,
    files: HashMap<String, Vec<u8>>,
    counters: HashMap<String, u32>,
    last_graph: Option<(Value, Value)>,
    submitted: HashMap<String, u32>,
    /// When each prompt id was accepted, in order.
    submissions: Vec<(String, Instant)>,
    graphs: HashMap<String, Value>,
    runs: Vec<RunRecord>,
    sockets: HashMap<String, (u64, mpsc::UnboundedSender<Message>)>,
    /// Generated files: name → size (streamed by `/view`).
    generated: HashMap<String, u64>,
    /// Requests per path.
    requests: HashMap<String, u32>,
    /// Files in the `input` directory (`/upload/image`, `/upload/mask`): name → bytes.
    inputs: HashMap<String, Vec<u8>>,
}

struct Shared {
    inner: Mutex<Inner>,
    wake: Notify,
    number: AtomicU64,
    socket_seq: AtomicU64,
}

type St = Arc<Shared>;

/// A running stand-in.
pub struct StandIn {
    pub addr: SocketAddr,
    shared: St,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    netns: Option<String>,
}

impl StandIn {
    /// Starts on a free loopback port.
    pub fn start() -> StandIn {
        Self::start_on("127.0.0.1:0".parse().unwrap(), Knobs::default())
    }

    pub fn start_with(knobs: Knobs) -> StandIn {
        Self::start_on("127.0.0.1:0".parse().unwrap(), knobs)
    }

    /// Starts on a free port of the loopback of a network namespace (`ip netns`):
    /// only processes in that namespace reach it, as a ComfyUI beside a worker on
    /// another host. The test process still reads its records.
    pub fn start_in_netns(netns: &str, knobs: Knobs) -> StandIn {
        let mut s = Self::start_at(
            "127.0.0.1:0".parse().unwrap(),
            Some(netns.to_owned()),
            knobs,
        );
        s.netns = Some(netns.to_owned());
        s
    }

    /// Starts on a given address (the stand-in executable: the port it is told).
    pub fn start_on(addr: SocketAddr, knobs: Knobs) -> StandIn {
        Self::start_at(addr, None, knobs)
    }

    fn start_at(addr: SocketAddr, netns: Option<String>, knobs: Knobs) -> StandIn {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                knobs,
                ..Default::default()
            }),
            wake: Notify::new(),
            number: AtomicU64::new(0),
            socket_seq: AtomicU64::new(0),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let st = shared.clone();
        // Its own runtime, so a crash can drop every task and connection at once.
        let thread = std::thread::spawn(move || {
            // A thread may enter another network namespace; the sockets it makes
            // (and the threads it starts) stay in it.
            if let Some(ns) = netns {
                let f = std::fs::File::open(format!("/var/run/netns/{ns}"))
                    .unwrap_or_else(|e| panic!("network namespace {ns}: {e}"));
                use std::os::fd::AsRawFd;
                // SAFETY: a valid namespace descriptor; affects this thread only.
                let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut bound = None;
                for _ in 0..50 {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => {
                            bound = Some(l);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                let listener = bound.expect("stand-in cannot bind");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                tokio::spawn(executor(st.clone()));
                let app = router(st);
                tokio::spawn(async move { axum::serve(listener, app).await.ok() });
                tokio::task::spawn_blocking(move || {
                    let _ = stop_rx.recv();
                })
                .await
                .ok();
            });
            rt.shutdown_background();
        });
        let addr = addr_rx.recv().expect("stand-in started");
        StandIn {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
            netns: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes knobs.
    pub fn knobs(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.shared.inner.lock().unwrap().knobs);
    }

    /// Closes every socket now (clients must reconnect).
    pub fn drop_sockets(&self) {
        self.shared.inner.lock().unwrap().sockets.clear();
    }

    /// How many times a prompt id was accepted by `POST /prompt`.
    pub fn submitted(&self, prompt_id: &str) -> u32 {
        self.shared
            .inner
            .lock()
            .unwrap()
            .submitted
            .get(prompt_id)
            .copied()
            .unwrap_or(0)
    }

    /// Every accepted prompt id with the time it was accepted, in order.
    pub fn submissions(&self) -> Vec<(String, Instant)> {
        self.shared.inner.lock().unwrap().submissions.clone()
    }

    /// How many prompts were accepted in all.
    pub fn submitted_total(&self) -> u32 {
        self.shared.inner.lock().unwrap().submitted.values().sum()
    }

    /// How many requests reached a path (`/prompt`, `/history`, `/view`, …).
    pub fn requests(&self, path: &str) -> u32 {
        self.shared
            .inner
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(p, _)| p.starts_with(path))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Prompts that ran to an end (success, error or interrupt), in order.
    pub fn runs(&self) -> Vec<RunRecord> {
        self.shared.inner.lock().unwrap().runs.clone()
    }

    /// The bytes of a file this stand-in produced.
    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.shared.inner.lock().unwrap().files.get(name).cloned()
    }

    /// The graph submitted under a prompt id (the last one, if several).
    pub fn graph_of(&self, prompt_id: &str) -> Option<Value> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .graphs
            .get(prompt_id)
            .cloned()
    }

    /// Forgets all history (as `POST /history {"clear": true}` does); the cache and
    /// the files stay.
    pub fn clear_history(&self) {
        self.shared.inner.lock().unwrap().history.clear();
    }

    /// A file in the `input` directory (uploaded), by name.
    pub fn input(&self, name: &str) -> Option<Vec<u8>> {
        self.shared.inner.lock().unwrap().inputs.get(name).cloned()
    }

    /// The names in the `input` directory.
    pub fn input_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .shared
            .inner
            .lock()
            .unwrap()
            .inputs
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// The names of the files this stand-in produced.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .shared
            .inner
            .lock()
            .unwrap()
            .files
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Whether a prompt is running or waiting.
    pub fn is_queued_or_running(&self, prompt_id: &str) -> bool {
        let g = self.shared.inner.lock().unwrap();
        g.running.as_ref().is_some_and(|r| r.1 == prompt_id)
            || g.pending.iter().any(|i| i.id == prompt_id)
    }

    /// The prompt running now, if any.
    pub fn running(&self) -> Option<String> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .running
            .as_ref()
            .map(|r| r.1.clone())
    }

    /// Kills the server: every connection closes, the port refuses connections,
    /// and queue and history are lost.
    pub fn crash(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Starts a fresh server (empty queue and history) on the same port.
    pub fn restart(&mut self) {
        self.crash();
        let knobs = self.shared.inner.lock().unwrap().knobs.clone();
        let fresh = StandIn::start_at(self.addr, self.netns.clone(), knobs);
        let mut fresh = std::mem::ManuallyDrop::new(fresh);
        self.shared = fresh.shared.clone();
        self.stop = fresh.stop.take();
        self.thread = fresh.thread.take();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.crash();
    }
}

fn router(st: St) -> Router {
    Router::new()
        .route("/prompt", post(submit).get(prompt_info))
        .route("/queue", get(queue).post(queue_manage))
        .route("/history/{id}", get(history))
        .route("/interrupt", post(interrupt))
        .route("/view", get(view))
        .route("/system_stats", get(system_stats))
        .route("/object_info", get(object_info))
        .route("/upload/image", post(upload))
        .route("/upload/mask", post(upload))
        .route("/ws", get(ws))
        .layer(axum::middleware::from_fn_with_state(st.clone(), count))
        .with_state(st)
}

async fn count(
    State(st): State<St>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    *st.inner
        .lock()
        .unwrap()
        .requests
        .entry(req.uri().path().to_owned())
        .or_default() += 1;
    next.run(req).await
}

fn send_to(g: &Inner, sid: Option<&str>, msg: Value) {
    if g.knobs.silent {
        return;
    }
    let text = Message::Text(msg.to_string().into());
    match sid {
        Some(sid) => {
            if let Some((_, tx)) = g.sockets.get(sid) {
                let _ = tx.send(text);
            }
        }
        None => {
            for (_, tx) in g.sockets.values() {
                let _ = tx.send(text.clone());
            }
        }
    }
}

/// A type-1 preview frame the real server sent (format 2, an 87-byte PNG).
const RECORDED_PREVIEW: &[u8] =
    include_bytes!("../../fixtures/comfyui/files/g_progress_savewebsocket_main_ws_binary_1.bin");

/// A type-4 preview frame as the real server sends it, for `prompt_id`: the
/// recorded picture with this prompt's metadata.
fn preview_frame_with_metadata(prompt_id: &str, node: &str) -> Vec<u8> {
    let meta = json!({"node_id": node, "prompt_id": prompt_id, "display_node_id": node,
        "parent_node_id": null, "real_node_id": node, "image_type": "image/png"})
    .to_string();
    [
        &4u32.to_be_bytes()[..],
        &(meta.len() as u32).to_be_bytes()[..],
        meta.as_bytes(),
        &RECORDED_PREVIEW[8..],
    ]
    .concat()
}

fn send_binary(g: &Inner, sid: Option<&str>, bytes: Vec<u8>) {
    if g.knobs.silent {
        return;
    }
    if let Some((_, tx)) = sid.and_then(|s| g.sockets.get(s)) {
        let _ = tx.send(Message::Binary(bytes.into()));
    }
}

fn status_msg(remaining: usize) -> Value {
    json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}})
}

fn remaining(g: &Inner) -> usize {
    g.pending.len() + usize::from(g.running.is_some())
}

fn node_error(id: &str, class: &str, typ: &str, message: String, input: &str) -> Value {
    json!({id: {"errors": [{"type": typ, "message": message, "details": input, "extra_info": {"input_name": input}}],
        "dependent_outputs": [], "class_type": class}})
}

/// Checks the graph the way ComfyUI's validation would for the nodes we know.
fn validate(
    prompt: &Value,
    checkpoints: &[String],
    inputs: &HashMap<String, Vec<u8>>,
) -> Result<(), Value> {
    let Some(nodes) = prompt.as_object() else {
        return Err(
            json!({"error": {"type": "invalid_prompt", "message": "Cannot execute because the prompt is not an object.", "details": "", "extra_info": {}}, "node_errors": {}}),
        );
    };
    let mut errors = Map::new();
    for (id, node) in nodes {
        let Some(class) = node.get("class_type").and_then(Value::as_str) else {
            return Err(
                json!({"error": {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type property.", "details": format!("Node ID '#{id}'"), "extra_info": {}}, "node_errors": {}}),
            );
        };
        if class.starts_with("NoSuch") {
            return Err(
                json!({"error": {"type": "invalid_prompt", "message": format!("Cannot execute because node {class} does not exist."), "details": format!("Node ID '#{id}'"), "extra_info": {}}, "node_errors": {}}),
            );
        }
        if class == "LoadImage" || class == "LoadImageMask" {
            // As the real server's VALIDATE_INPUTS: the file must be in `input`.
            let want = node["inputs"]["image"].as_str().unwrap_or("");
            if !inputs.contains_key(want) {
                errors.insert(
                    id.clone(),
                    json!({"errors": [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
                        "details": format!("image - Invalid image file: {want}"),
                        "extra_info": {"input_name": "image"}}],
                        "dependent_outputs": [], "class_type": class}),
                );
            }
        }
        if class == "CheckpointLoaderSimple" {
            let want = node["inputs"]["ckpt_name"].as_str().unwrap_or("");
            if !checkpoints.iter().any(|c| c == want) {
                // As the real server says it: the value is echoed as received.
                let list = checkpoints
                    .iter()
                    .map(|c| format!("'{c}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                errors.insert(
                    id.clone(),
                    json!({"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                        "details": format!("ckpt_name: '{want}' not in [{list}]"),
                        "extra_info": {"input_name": "ckpt_name", "input_config": [checkpoints, {}], "received_value": want}}],
                        "dependent_outputs": [], "class_type": class}),
                );
            }
        }
        if class == "EmptyImage" {
            for input in ["width", "height"] {
                let v = node["inputs"][input].as_i64().unwrap_or(0);
                let e = if v < 1 {
                    Some(node_error(
                        id,
                        class,
                        "value_smaller_than_min",
                        format!("Value {v} smaller than min of 1"),
                        input,
                    ))
                } else if v > 16384 {
                    Some(node_error(
                        id,
                        class,
                        "value_bigger_than_max",
                        format!("Value {v} bigger than max of 16384"),
                        input,
                    ))
                } else {
                    None
                };
                if let Some(Value::Object(m)) = e {
                    errors.extend(m);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(
            json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}, "node_errors": errors}),
        )
    }
}

/// `POST /upload/image` and `/upload/mask`: the file in the form's `image` field
/// goes to `input` under its own name (a `subfolder` field puts it below).
async fn upload(State(st): State<St>, mut form: axum::extract::Multipart) -> Response {
    let mut file: Option<(String, Vec<u8>)> = None;
    let mut subfolder = String::new();
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("image") => {
                let name = field.file_name().unwrap_or("image.png").to_owned();
                let Ok(bytes) = field.bytes().await else {
                    return StatusCode::BAD_REQUEST.into_response();
                };
                file = Some((name, bytes.to_vec()));
            }
            Some("subfolder") => subfolder = field.text().await.unwrap_or_default(),
            _ => {}
        }
    }
    let Some((name, bytes)) = file else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let key = if subfolder.is_empty() {
        name.clone()
    } else {
        format!("{subfolder}/{name}")
    };
    st.inner.lock().unwrap().inputs.insert(key, bytes);
    Json(json!({"name": name, "subfolder": subfolder, "type": "input"})).into_response()
}

async fn submit(State(st): State<St>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 Internal Server Error\n\nServer got itself in trouble",
        )
            .into_response();
    };
    let number = st.number.fetch_add(1, Ordering::SeqCst);
    let mut g = st.inner.lock().unwrap();
    if g.knobs.fail_submits > 0 {
        g.knobs.fail_submits -= 1;
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 Internal Server Error\n\nServer got itself in trouble",
        )
            .into_response();
    }
    let Some(prompt) = v.get("prompt").cloned() else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}))).into_response();
    };
    if let Err(e) = validate(&prompt, &g.knobs.checkpoints, &g.inputs) {
        return (StatusCode::BAD_REQUEST, Json(e)).into_response();
    }
    let id = match v.get("prompt_id") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let client_id = v
        .get("client_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut extra = v.get("extra_data").cloned().unwrap_or_else(|| json!({}));
    if let Some(c) = &client_id {
        extra["client_id"] = c.clone().into();
    }
    *g.submitted.entry(id.clone()).or_default() += 1;
    g.submissions.push((id.clone(), Instant::now()));
    g.graphs.insert(id.clone(), prompt.clone());
    g.pending.push_back(Item {
        number,
        id: id.clone(),
        prompt,
        extra,
        client_id,
    });
    let r = remaining(&g);
    send_to(&g, None, status_msg(r));
    drop(g);
    st.wake.notify_one();
    Json(json!({"prompt_id": id, "number": number, "node_errors": {}})).into_response()
}

async fn prompt_info(State(st): State<St>) -> Json<Value> {
    let g = st.inner.lock().unwrap();
    Json(json!({"exec_info": {"queue_remaining": remaining(&g)}}))
}

fn outputs_of(prompt: &Value) -> Vec<String> {
    prompt
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n["class_type"] == "SaveImage")
                .map(|(id, _)| id.clone())
                .collect()
        })
        .unwrap_or_default()
}

async fn queue(State(st): State<St>) -> Json<Value> {
    let g = st.inner.lock().unwrap();
    let running: Vec<Value> = g
        .running
        .iter()
        .map(|(n, id, p, e)| json!([n, id, p, e, outputs_of(p)]))
        .collect();
    let pending: Vec<Value> = g
        .pending
        .iter()
        .map(|i| json!([i.number, i.id, i.prompt, i.extra, outputs_of(&i.prompt)]))
        .collect();
    Json(json!({"queue_running": running, "queue_pending": pending}))
}

async fn queue_manage(State(st): State<St>, body: Bytes) -> StatusCode {
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut g = st.inner.lock().unwrap();
    if v.get("clear").and_then(Value::as_bool) == Some(true) {
        g.pending.clear();
    }
    if let Some(ids) = v.get("delete").and_then(Value::as_array) {
        let ids: Vec<&str> = ids.iter().filter_map(Value::as_str).collect();
        g.pending.retain(|i| !ids.contains(&i.id.as_str()));
    }
    let r = remaining(&g);
    send_to(&g, None, status_msg(r));
    StatusCode::OK
}

async fn history(State(st): State<St>, Path(id): Path<String>) -> Json<Value> {
    let g = st.inner.lock().unwrap();
    match g.history.get(&id) {
        Some(h) => Json(json!({ id: h })),
        None => Json(json!({})),
    }
}

async fn interrupt(State(st): State<St>, body: Bytes) -> StatusCode {
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut g = st.inner.lock().unwrap();
    let running = g.running.as_ref().map(|r| r.1.clone());
    match (v.get("prompt_id").and_then(Value::as_str), running) {
        (Some(target), Some(run)) if target == run => g.interrupt = Some(run),
        (None, Some(run)) => g.interrupt = Some(run),
        _ => {}
    }
    StatusCode::OK
}

async fn view(State(st): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    let name = q.get("filename").cloned().unwrap_or_default();
    if name.starts_with('/') || name.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let g = st.inner.lock().unwrap();
    if let Some(size) = g.generated.get(&name).copied() {
        // Generated chunk by chunk as the client reads: a gigabyte costs nothing here.
        const CHUNK: u64 = 64 * 1024;
        let chunks = futures_util::stream::iter((0..size.div_ceil(CHUNK)).map(move |i| {
            let n = CHUNK.min(size - i * CHUNK) as usize;
            Ok::<_, std::io::Error>(Bytes::from(vec![(i % 251) as u8; n]))
        }));
        return (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (header::CONTENT_LENGTH, size.to_string()),
            ],
            axum::body::Body::from_stream(chunks),
        )
            .into_response();
    }
    match g.files.get(&name) {
        Some(bytes) => ([(header::CONTENT_TYPE, "image/png")], bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn system_stats() -> Json<Value> {
    Json(
        json!({"system": {"os": "posix", "ram_total": 1, "ram_free": 1, "comfyui_version": "0.3.64", "python_version": "3.11.7", "pytorch_version": "stand-in", "embedded_python": false, "argv": ["main.py"]},
        "devices": [{"name": "stand-in", "type": "cpu", "index": null, "vram_total": 1, "vram_free": 1, "torch_vram_total": 1, "torch_vram_free": 1}]}),
    )
}

/// The node classes this stand-in runs (as `/object_info` lists them), with the
/// checkpoints of its knobs as the choices of `CheckpointLoaderSimple.ckpt_name`
/// (a V1 combo) and one V3 combo model list.
async fn object_info(State(st): State<St>) -> Json<Value> {
    let knobs = st.inner.lock().unwrap().knobs.clone();
    let mut info = Map::new();
    let real: Value = if knobs.real_info {
        serde_json::from_slice(REAL_INFO).expect("the recorded object_info reads")
    } else {
        Value::Null
    };
    for class in STANDIN_NODES {
        let def = match real.get(*class) {
            Some(def) => def.clone(),
            None => json!({"input": {"required": {}}, "output_node": *class == "SaveImage"}),
        };
        info.insert((*class).to_owned(), def);
    }
    let ckpt = if knobs.unlisted_checkpoints {
        json!(["STRING", {}])
    } else {
        json!([knobs.checkpoints, {"tooltip": "The name of the checkpoint (model) to load."}])
    };
    match real.get("CheckpointLoaderSimple") {
        Some(def) => {
            let mut def = def.clone();
            def["input"]["required"]["ckpt_name"] = ckpt;
            info.insert("CheckpointLoaderSimple".into(), def);
        }
        None => {
            info.insert(
                "CheckpointLoaderSimple".into(),
                json!({"input": {"required": {"ckpt_name": ckpt}}, "output_node": false}),
            );
        }
    }
    info.insert(
        "UpscaleModelLoader".into(),
        json!({"input": {"required": {"model_name": ["COMBO", {"multiselect": false, "options": ["4x-UltraSharp.pth"]}]}}, "output_node": false}),
    );
    for class in &knobs.extra_nodes {
        info.insert(
            class.clone(),
            json!({"input": {"required": {}}, "output_node": false}),
        );
    }
    // Every definition with the fields a real ComfyUI gives each (its frontend
    // reads them).
    for (class, def) in info.iter_mut() {
        let Some(d) = def.as_object_mut() else {
            continue;
        };
        for (k, v) in [
            ("name", json!(class)),
            ("display_name", json!(class)),
            ("category", json!("stand-in")),
            ("output", json!([])),
            ("output_is_list", json!([])),
            ("output_name", json!([])),
            ("description", json!("")),
            ("python_module", json!("nodes")),
            ("deprecated", json!(false)),
            ("experimental", json!(false)),
        ] {
            d.entry(k).or_insert(v);
        }
    }
    Json(Value::Object(info))
}

/// What a real ComfyUI 0.3.64 on CPU answered at `/object_info`.
const REAL_INFO: &[u8] = include_bytes!("../../fixtures/comfyui/files/object_info_full.json");

/// Classes every stand-in offers besides the checkpoint loader.
const STANDIN_NODES: &[&str] = &[
    "EmptyImage",
    "ImageInvert",
    "ImageBlur",
    "SaveImage",
    "LoadImage",
    "LoadImageMask",
    "KSampler",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "VAEDecode",
    "VAEEncode",
    "VAEEncodeForInpaint",
];

async fn ws(
    State(st): State<St>,
    Query(q): Query<HashMap<String, String>>,
    up: WebSocketUpgrade,
) -> Response {
    let sid = q
        .get("clientId")
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    up.on_upgrade(move |socket| serve_socket(st, sid, socket))
}

async fn serve_socket(st: St, sid: String, socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn = st.socket_seq.fetch_add(1, Ordering::SeqCst);
    {
        let mut g = st.inner.lock().unwrap();
        g.sockets.insert(sid.clone(), (conn, tx.clone()));
        let first = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining(&g)}}, "sid": sid}});
        if !g.knobs.silent {
            let _ = tx.send(Message::Text(first.to_string().into()));
        }
        // Like the real server: the running prompt's client gets the current node
        // again, without a prompt id.
        let ours = g
            .running
            .as_ref()
            .is_some_and(|r| r.3.get("client_id").and_then(Value::as_str) == Some(sid.as_str()));
        if let (true, Some(node)) = (ours, g.running_node.clone()) {
            send_to(
                &g,
                Some(&sid),
                json!({"type": "executing", "data": {"node": node}}),
            );
        }
    }
    drop(tx);
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(m) => if sink.send(m).await.is_err() { break },
                // Dropped from the registry (drop_sockets, or replaced): close.
                None => break,
            },
            inc = stream.next() => match inc {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(Message::Text(t))) => {
                    // The only client message the real server reads.
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "feature_flags" && v["data"]["supports_preview_metadata"] == true {
                        st.inner.lock().unwrap().meta_clients.insert(sid.clone());
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = sink.close().await;
    let mut g = st.inner.lock().unwrap();
    // Only remove our own registration (a newer socket with the same id may exist).
    if g.sockets.get(&sid).is_some_and(|(c, _)| *c == conn) {
        g.sockets.remove(&sid);
    }
}

/// A PNG that is the real server's 64×64 image plus text chunks, as SaveImage writes
/// `prompt` and each `extra_pnginfo` key.
fn make_png(prompt_id: &str, extra: &Value) -> Vec<u8> {
    let iend = BASE_PNG.len() - 12;
    let mut out = BASE_PNG[..iend].to_vec();
    let mut chunks = vec![("standin_prompt_id".to_owned(), prompt_id.to_owned())];
    if let Some(info) = extra.get("extra_pnginfo").and_then(Value::as_object) {
        for (k, v) in info {
            chunks.push((k.clone(), v.to_string()));
        }
    }
    for (k, v) in chunks {
        let mut data = k.into_bytes();
        data.push(0);
        data.extend(v.as_bytes());
        out.extend((data.len() as u32).to_be_bytes());
        let mut typed = b"tEXt".to_vec();
        typed.extend(&data);
        out.extend(&typed);
        out.extend(crc32(&typed).to_be_bytes());
    }
    out.extend(&BASE_PNG[iend..]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Node order: dependencies first (ids ascending among the ready ones).
fn order(prompt: &Value) -> Vec<String> {
    let nodes = prompt.as_object().cloned().unwrap_or_default();
    let deps = |n: &Value| -> Vec<String> {
        n["inputs"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| {
                        v.as_array()
                            .filter(|a| a.len() == 2)
                            .and_then(|a| a[0].as_str())
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut done: Vec<String> = Vec::new();
    let mut ids: Vec<String> = nodes.keys().cloned().collect();
    ids.sort_by_key(|i| (i.parse::<u64>().unwrap_or(u64::MAX), i.clone()));
    while done.len() < ids.len() {
        let before = done.len();
        for id in &ids {
            if !done.contains(id)
                && deps(&nodes[id])
                    .iter()
                    .all(|d| done.contains(d) || !nodes.contains_key(d))
            {
                done.push(id.clone());
            }
        }
        if done.len() == before {
            break;
        }
    }
    done
}

fn progress_state(prompt_id: &str, states: &BTreeMap<String, (f64, f64, &str)>) -> Value {
    let nodes: Map<String, Value> = states
        .iter()
        .map(|(id, (v, m, s))| {
            (id.clone(), json!({"value": v, "max": m, "state": s, "node_id": id, "prompt_id": prompt_id, "display_node_id": id, "parent_node_id": null, "real_node_id": id}))
        })
        .collect();
    json!({"type": "progress_state", "data": {"prompt_id": prompt_id, "nodes": nodes}})
}

fn ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Runs prompts one at a time, in queue order.
async fn executor(st: St) {
    loop {
        let item = loop {
            let next = {
                let mut g = st.inner.lock().unwrap();
                let next = g.pending.pop_front();
                if let Some(i) = &next {
                    g.running = Some((i.number, i.id.clone(), i.prompt.clone(), i.extra.clone()));
                    g.interrupt = None;
                }
                next
            };
            match next {
                Some(i) => break i,
                None => st.wake.notified().await,
            }
        };
        let started = Instant::now();
        run_prompt(&st, &item).await;
        let mut g = st.inner.lock().unwrap();
        g.running = None;
        g.running_node = None;
        g.runs.push(RunRecord {
            prompt_id: item.id.clone(),
            started,
            ended: Instant::now(),
        });
        let r = remaining(&g);
        send_to(&g, None, status_msg(r));
        let sid = item.client_id.as_deref();
        send_to(
            &g,
            sid,
            json!({"type": "executing", "data": {"node": null, "prompt_id": item.id}}),
        );
    }
}

async fn run_prompt(st: &St, item: &Item) {
    let id = item.id.as_str();
    let sid = item.client_id.as_deref();
    let (knobs, cached) = {
        let mut g = st.inner.lock().unwrap();
        let r = remaining(&g);
        send_to(&g, None, status_msg(r));
        send_to(
            &g,
            sid,
            json!({"type": "execution_start", "data": {"prompt_id": id, "timestamp": ms()}}),
        );
        let cached = g
            .last_graph
            .as_ref()
            .filter(|(graph, _)| *graph == item.prompt)
            .map(|(_, outputs)| outputs.clone());
        let nodes: Vec<String> = match &cached {
            Some(_) => order(&item.prompt),
            None => Vec::new(),
        };
        send_to(
            &g,
            sid,
            json!({"type": "execution_cached", "data": {"nodes": nodes, "prompt_id": id, "timestamp": ms()}}),
        );
        if cached.is_none() {
            g.last_graph = None;
        }
        (g.knobs.clone(), cached)
    };
    let mut messages = vec![
        json!(["execution_start", {"prompt_id": id, "timestamp": ms()}]),
        json!(["execution_cached", {"nodes": [], "prompt_id": id, "timestamp": ms()}]),
    ];
    if let Some(outputs) = cached {
        // Fully cached: no executing, the cached executed, the same files.
        let g = st.inner.lock().unwrap();
        for (node, out) in outputs.as_object().cloned().unwrap_or_default() {
            send_to(
                &g,
                sid,
                json!({"type": "executed", "data": {"node": node, "display_node": node, "output": out, "prompt_id": id}}),
            );
        }
        drop(g);
        finish(st, item, outputs, "success", messages);
        return;
    }
    let nodes = order(&item.prompt);
    // Deadlines from the start, not sleeps in a row: timer rounding must not add up,
    // so a prompt takes `duration`, not `duration` plus a millisecond per step.
    let started = tokio::time::Instant::now();
    let per_node = knobs.duration / nodes.len().max(1) as u32;
    let mut states: BTreeMap<String, (f64, f64, &str)> = BTreeMap::new();
    let mut executed: Vec<String> = Vec::new();
    let mut outputs = Map::new();
    for (idx, node) in nodes.iter().enumerate() {
        let class = item.prompt[node]["class_type"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        {
            let mut g = st.inner.lock().unwrap();
            if g.interrupt.as_deref() == Some(id) {
                let data = json!({"prompt_id": id, "node_id": node, "node_type": class, "executed": executed, "timestamp": ms()});
                send_to(
                    &g,
                    sid,
                    json!({"type": "execution_interrupted", "data": data}),
                );
                drop(g);
                messages.push(json!(["execution_interrupted", data]));
                finish(st, item, Value::Object(outputs), "error", messages);
                return;
            }
            g.running_node = Some(node.clone());
            states.insert(node.clone(), (0.0, 1.0, "running"));
            send_to(&g, sid, progress_state(id, &states));
            send_to(
                &g,
                sid,
                json!({"type": "executing", "data": {"node": node, "display_node": node, "prompt_id": id}}),
            );
        }
        let steps = if idx == 0 { knobs.steps.max(1) } else { 1 };
        for step in 1..=steps {
            tokio::time::sleep_until(started + per_node * idx as u32 + per_node / steps * step)
                .await;
            if steps > 1 {
                let g = st.inner.lock().unwrap();
                // A sampler's preview of each step, as recorded: with metadata
                // (type 4) before the step's `progress`, else (type 1) after it.
                let meta = !knobs.type1_previews && sid.is_some_and(|c| g.meta_clients.contains(c));
                if knobs.previews && meta {
                    send_binary(&g, sid, preview_frame_with_metadata(id, node));
                }
                send_to(
                    &g,
                    sid,
                    json!({"type": "progress", "data": {"value": step, "max": steps, "prompt_id": id, "node": node}}),
                );
                if knobs.previews && !meta {
                    send_binary(&g, sid, RECORDED_PREVIEW.to_vec());
                }
                states.insert(node.clone(), (step as f64, steps as f64, "running"));
                send_to(&g, sid, progress_state(id, &states));
            }
        }
        if class == "ImageBlur" {
            let radius = item.prompt[node]["inputs"]["blur_radius"]
                .as_i64()
                .unwrap_or(1);
            let side = item
                .prompt
                .as_object()
                .and_then(|m| m.values().find(|n| n["class_type"] == "EmptyImage"))
                .map(|n| {
                    n["inputs"]["width"]
                        .as_i64()
                        .unwrap_or(64)
                        .min(n["inputs"]["height"].as_i64().unwrap_or(64))
                })
                .unwrap_or(64);
            if radius >= side {
                let data = json!({"prompt_id": id, "node_id": node, "node_type": class, "executed": executed,
                    "exception_message": format!("Argument #4: Padding size should be less than the corresponding input dimension, but got: padding ({radius}, {radius}) at dimension 3 of input [1, 3, {side}, {side}]\n"),
                    "exception_type": "RuntimeError", "traceback": ["  File \"/srv/ComfyUI/execution.py\", line 496, in execute\n"],
                    "current_inputs": {}, "current_outputs": nodes, "timestamp": ms()});
                let g = st.inner.lock().unwrap();
                send_to(&g, sid, json!({"type": "execution_error", "data": data}));
                drop(g);
                messages.push(json!(["execution_error", data]));
                finish(st, item, Value::Object(outputs), "error", messages);
                return;
            }
        }
        let mut g = st.inner.lock().unwrap();
        if class == "SaveImage" {
            let prefix = item.prompt[node]["inputs"]["filename_prefix"]
                .as_str()
                .unwrap_or("ComfyUI")
                .to_owned();
            let batch = item
                .prompt
                .as_object()
                .and_then(|m| m.values().find(|n| n["class_type"] == "EmptyImage"))
                .and_then(|n| n["inputs"]["batch_size"].as_u64())
                .unwrap_or(1);
            let mut images = Vec::new();
            for _ in 0..batch {
                let counter = g.counters.entry(prefix.clone()).or_insert(0);
                *counter += 1;
                let n = *counter;
                let odd = if knobs.odd_names { "a#b?c d_" } else { "" };
                if let Some(size) = knobs.output_bytes {
                    let filename = format!("{odd}{prefix}_{n:05}_.bin");
                    g.generated.insert(filename.clone(), size);
                    images.push(json!({"filename": filename, "subfolder": "", "type": "output"}));
                    continue;
                }
                let filename = format!("{odd}{prefix}_{n:05}_.png");
                let png = make_png(id, &item.extra);
                g.files.insert(filename.clone(), png);
                images.push(json!({"filename": filename, "subfolder": "", "type": "output"}));
            }
            let mut out = json!({"images": images});
            if knobs.extra_outputs {
                let video = format!("{prefix}_00001_.mp4");
                let audio = format!("{prefix}_00001_.flac");
                g.files.insert(
                    video.clone(),
                    b"\x00\x00\x00\x18ftypmp42 stand-in video".to_vec(),
                );
                g.files
                    .insert(audio.clone(), b"fLaC stand-in audio".to_vec());
                out["gifs"] = json!([{"filename": video, "subfolder": "", "type": "output", "format": "video/h264-mp4"}]);
                out["audio"] = json!([{"filename": audio, "subfolder": "clips", "type": "output"}]);
                out["images"].as_array_mut().unwrap().extend([
                    json!({"filename": "../escape.png", "subfolder": "", "type": "output"}),
                    json!({"filename": format!("{prefix}_temp_00001_.png"), "subfolder": "", "type": "temp"}),
                ]);
            }
            send_to(
                &g,
                sid,
                json!({"type": "executed", "data": {"node": node, "display_node": node, "output": out, "prompt_id": id}}),
            );
            outputs.insert(node.clone(), out);
        }
        states.insert(node.clone(), (1.0, 1.0, "finished"));
        send_to(&g, sid, progress_state(id, &states));
        executed.push(node.clone());
    }
    {
        let mut g = st.inner.lock().unwrap();
        g.last_graph = Some((item.prompt.clone(), Value::Object(outputs.clone())));
    }
    finish(st, item, Value::Object(outputs), "success", messages);
}

/// Writes history (before the final `executing null`, as the real server does).
fn finish(st: &St, item: &Item, outputs: Value, status: &str, mut messages: Vec<Value>) {
    let id = item.id.as_str();
    let mut g = st.inner.lock().unwrap();
    if status == "success" {
        let data = json!({"prompt_id": id, "timestamp": ms()});
        send_to(
            &g,
            item.client_id.as_deref(),
            json!({"type": "execution_success", "data": data}),
        );
        messages.push(json!(["execution_success", data]));
    }
    let entry = json!({
        "prompt": [item.number, id, item.prompt, item.extra, outputs_of(&item.prompt)],
        "outputs": outputs,
        "status": {"status_str": status, "completed": status == "success", "messages": messages},
        "meta": {},
    });
    g.history.insert(id.to_owned(), entry);
}
