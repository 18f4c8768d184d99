//! The floor: what the prototype's two requests cost with nothing but the
//! hardware, the kernel and the libraries in the way. An HTTP server on the same
//! stack as Studio Core (hyper under axum, a tokio runtime with one worker
//! thread, mimalloc) that does exactly the prototype's work for each request
//! (DESIGN.md section 1: the status hash, its TTL, `LPUSH job_queue`; a status
//! read is one `HGETALL`) in one Redis round trip, and nothing else: no
//! validation beyond the prompt, no keys, no lanes, no indexes, no events, no
//! log. No service could do a request for less on this machine; the bench prints
//! it beside Studio Core so the gap that is Studio Core's own is plain. With
//! `COST_FLOOR_REDIS=memory` the jobs live in a map in the process instead: the
//! floor of any embedded store (SQLite's reads and writes cost more than a map's).
//!
//! Run by the bench itself: the bench's own binary, started again with
//! `COST_FLOOR_REDIS` and `COST_FLOOR_PORT` set, serves this and nothing else.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STATUS_TTL: u64 = 24 * 3600;

/// Serves the floor when this process was started as it; returns otherwise.
pub fn serve_if_asked() {
    let (Ok(url), Ok(port)) = (
        std::env::var("COST_FLOOR_REDIS"),
        std::env::var("COST_FLOOR_PORT"),
    ) else {
        return;
    };
    let port: u16 = port.parse().expect("COST_FLOOR_PORT is a port");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the port is free");
        if url == "memory" {
            let app = Router::new()
                .route("/api/generate", post(generate_in_memory))
                .route("/api/status/{id}", get(status_in_memory))
                .with_state(Memory::default());
            axum::serve(listener, app).await.expect("serves");
            return;
        }
        let client = redis::Client::open(url).expect("a Redis URL");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        let app = Router::new()
            .route("/api/generate", post(generate))
            .route("/api/status/{id}", get(status))
            .with_state(conn);
        axum::serve(listener, app).await.expect("serves");
    });
    std::process::exit(0);
}

/// A new job, as the prototype makes it: its id, its time stamp, its queue entry.
struct Accepted {
    id: String,
    created: String,
    job: Value,
}

/// The prototype's check (a prompt) and its new job; `None` without a prompt.
fn accept(body: &Value) -> Option<Accepted> {
    let prompt = body["prompt"].as_str().filter(|p| !p.trim().is_empty())?;
    let seed = body["seed"].as_u64().unwrap_or_else(rand_seed);
    let workflow = body["workflow"].as_str().unwrap_or("sdxl");
    let id = uuid::Uuid::new_v4().to_string();
    let created = studio_core::clock::iso8601(studio_core::clock::now_micros());
    let job = json!({"job_id": id, "prompt": prompt, "seed": seed, "workflow": workflow,
        "created_at": created});
    Some(Accepted { id, created, job })
}

fn no_prompt() -> (StatusCode, Json<Value>) {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "prompt is required"})),
    )
}

async fn generate(
    State(mut conn): State<MultiplexedConnection>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(Accepted { id, created, job }) = accept(&body) else {
        return no_prompt();
    };
    let key = format!("job:status:{id}");
    let written: Result<(), _> = redis::pipe()
        .atomic()
        .hset_multiple(
            &key,
            &[
                ("job_id", id.as_str()),
                ("status", "queued"),
                ("progress", "0"),
                ("image_url", ""),
                ("error", ""),
                ("updated_at", created.as_str()),
            ],
        )
        .ignore()
        .expire(&key, STATUS_TTL as i64)
        .ignore()
        .lpush("job_queue", job.to_string())
        .ignore()
        .query_async(&mut conn)
        .await;
    match written {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({"job_id": id, "status": "queued"})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

async fn status(
    State(mut conn): State<MultiplexedConnection>,
    Path(id): Path<String>,
) -> (StatusCode, Json<Value>) {
    let read: Result<HashMap<String, String>, _> = redis::cmd("HGETALL")
        .arg(format!("job:status:{id}"))
        .query_async(&mut conn)
        .await;
    match read {
        Ok(h) if h.is_empty() => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "job not found"})),
        ),
        Ok(h) => {
            let field = |k: &str| h.get(k).map_or("", String::as_str);
            (
                StatusCode::OK,
                Json(json!({
                    "job_id": h.get("job_id").unwrap_or(&id),
                    "status": field("status"),
                    "progress": field("progress").parse::<u64>().unwrap_or(0),
                    "image_url": field("image_url"),
                    "error": field("error"),
                })),
            )
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

/// The jobs, in memory: their status hashes' fields and queue entries. The
/// bench's phases are bounded, so the map is too.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Jobs>>);

/// Status hashes by job id (the prototype's six fields), and the queue.
type Jobs = (HashMap<String, [String; 6]>, VecDeque<String>);

async fn generate_in_memory(
    State(mem): State<Memory>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(Accepted { id, created, job }) = accept(&body) else {
        return no_prompt();
    };
    let hash = [
        id.clone(),
        "queued".to_owned(),
        "0".to_owned(),
        String::new(),
        String::new(),
        created,
    ];
    {
        let mut m = mem.0.lock().expect("the map");
        m.0.insert(id.clone(), hash);
        m.1.push_front(job.to_string());
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"job_id": id, "status": "queued"})),
    )
}

async fn status_in_memory(
    State(mem): State<Memory>,
    Path(id): Path<String>,
) -> (StatusCode, Json<Value>) {
    let found = mem.0.lock().expect("the map").0.get(&id).cloned();
    match found {
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "job not found"})),
        ),
        Some([job_id, status, progress, image_url, error, _]) => (
            StatusCode::OK,
            Json(json!({
                "job_id": job_id,
                "status": status,
                "progress": progress.parse::<u64>().unwrap_or(0),
                "image_url": image_url,
                "error": error,
            })),
        ),
    }
}

fn rand_seed() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_u128() as u32)
}
