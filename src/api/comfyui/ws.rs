//! `GET /ws?clientId=`: ComfyUI's message stream for one client's prompts.
//!
//! On connect, `status` (the caller's queue size, with the client's `sid`).
//! While one of the client's prompts runs, what ComfyUI says about it
//! (`execution_start`, `execution_cached`, `executing`, `progress`,
//! `progress_state`) is relayed from whichever backend runs it, by the worker
//! following it, with the farm's prompt id; previews go as ComfyUI's binary
//! frames (type 1: a 4-byte format, 1 JPEG or 2 PNG, then the picture). How a
//! prompt ended is told once its pictures are stored, so that `/view` has them:
//! `executed` for each output node, then `execution_success` (or
//! `execution_error` / `execution_interrupted`), `status`, and `executing` with
//! no node. Another client's prompts, and another key's, are never shown.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::{client_of, outputs_by_node};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::auth::Identity;
use crate::job::{JobId, JobRecord, JobStatus};
use crate::shutdown::signalled;

/// The largest message taken from a client (ComfyUI's clients send none that
/// matter).
const MAX_INCOMING: usize = 64 << 10;
/// Jobs remembered as this client's or not (a bound on a long-lived socket).
const MAX_KNOWN: usize = 4096;

#[derive(Deserialize)]
pub struct WsQuery {
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

/// `GET /ws?clientId=`.
pub async fn ws(
    State(state): State<AppState>,
    Caller(who): Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let slot = state.streams.acquire(peer.ip())?;
    let client_id = q
        .client_id
        .filter(|c| !c.is_empty() && c.len() <= 128)
        .unwrap_or_else(|| JobId::random().as_str().replace('-', ""));
    Ok(upgrade
        .max_message_size(MAX_INCOMING)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            run(socket, state, who, client_id).await;
        }))
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

fn status(remaining: usize, sid: Option<&str>) -> Message {
    let mut data = json!({"status": {"exec_info": {"queue_remaining": remaining}}});
    if let Some(sid) = sid {
        data["sid"] = json!(sid);
    }
    text(json!({"type": "status", "data": data}))
}

/// What a client is told when one of its prompts ends.
fn ending(job: &JobRecord, remaining: usize, last_state: Option<Message>) -> Vec<Message> {
    let id = job.id.as_str();
    let ts = job.updated_ms;
    let mut out = Vec::new();
    match job.status {
        JobStatus::Finished => {
            for (node, output) in outputs_by_node(job) {
                out.push(text(json!({"type": "executed", "data": {
                    "node": node, "display_node": node, "output": output, "prompt_id": id}})));
            }
            out.extend(last_state.clone());
            out.push(text(json!({"type": "execution_success",
                "data": {"prompt_id": id, "timestamp": ts}})));
        }
        _ if job.cancelled => out.push(text(json!({"type": "execution_interrupted", "data": {
            "prompt_id": id, "node_id": "", "node_type": "", "executed": [], "timestamp": ts}}))),
        _ => out.push(text(json!({"type": "execution_error", "data": {
            "prompt_id": id, "node_id": "", "node_type": "", "executed": [],
            "exception_message": job.error, "exception_type": "", "traceback": [],
            "current_inputs": {}, "current_outputs": {}, "timestamp": ts}}))),
    }
    if job.status != JobStatus::Finished {
        // (An error's last node states go before the error, as ComfyUI's do.)
        out.splice(0..0, last_state);
    }
    out.push(status(remaining, None));
    out.push(text(
        json!({"type": "executing", "data": {"node": null, "prompt_id": id}}),
    ));
    out
}

/// A preview as ComfyUI sends it: event 1, then the format (1 JPEG, 2 PNG),
/// then the picture. WebP previews (which ComfyUI does not make) are left out.
fn preview_frame(content_type: &str, image: &[u8]) -> Option<Message> {
    let format: u32 = match content_type {
        "image/jpeg" => 1,
        "image/png" => 2,
        _ => return None,
    };
    let mut frame = Vec::with_capacity(8 + image.len());
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&format.to_be_bytes());
    frame.extend_from_slice(image);
    Some(Message::Binary(frame.into()))
}

/// Which jobs are this client's, as seen so far.
struct Mine {
    known: HashMap<String, bool>,
    /// The last `progress_state` of each prompt, held until the next message
    /// about it: ComfyUI sends the last one after `executed`, which is told
    /// here at the end.
    held: HashMap<String, Message>,
    /// Its prompts waiting or running.
    pending: HashSet<String>,
    /// Its prompts whose end was told.
    ended: HashSet<String>,
}

impl Mine {
    async fn is_mine(
        &mut self,
        state: &AppState,
        who: &Identity,
        client: &str,
        id: &str,
        owner: &str,
    ) -> bool {
        if !who.may_see(owner) {
            return false;
        }
        if let Some(m) = self.known.get(id) {
            return *m;
        }
        let Ok(jid) = JobId::parse(id) else {
            return false;
        };
        let job = state
            .with_timeout(state.store.get(&jid))
            .await
            .ok()
            .flatten();
        let mine = job.as_ref().and_then(client_of) == Some(client);
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        self.known.insert(id.to_owned(), mine);
        mine
    }
}

async fn run(mut socket: WebSocket, state: AppState, who: Identity, client: String) {
    // Subscribe before counting, so nothing falls in between.
    let mut jobs = state.hub.subscribe_all();
    let mut relayed = state.store.relayed();
    let mut shutdown = state.shutdown.clone();
    let mut mine = Mine {
        known: HashMap::new(),
        held: HashMap::new(),
        pending: HashSet::new(),
        ended: HashSet::new(),
    };
    let remaining = super::prompt::remaining(&state, &who).await.unwrap_or(0);
    if socket.send(status(remaining, Some(&client))).await.is_err() {
        return;
    }
    loop {
        let out: Vec<Message> = tokio::select! {
            m = relayed.recv() => match m {
                Ok(m) => {
                    if !mine.is_mine(&state, &who, &client, &m.job_id, &m.owner).await
                        || mine.ended.contains(&m.job_id)
                    {
                        continue;
                    }
                    let msg = Message::Text(m.text.to_string().into());
                    let before = mine.held.remove(&m.job_id);
                    let kind = serde_json::from_str::<Value>(&m.text).ok().map(|v| v["type"].clone());
                    if kind.as_ref().and_then(Value::as_str) == Some("progress_state") {
                        if mine.held.len() < MAX_KNOWN {
                            mine.held.insert(m.job_id.clone(), msg);
                        }
                        before.into_iter().collect()
                    } else {
                        before.into_iter().chain([msg]).collect()
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            ev = jobs.recv() => match ev {
                Ok(ev) => {
                    let job = &ev.job;
                    if !mine.is_mine(&state, &who, &client, &job.id, &job.owner).await {
                        continue;
                    }
                    if let Some(seq) = ev.preview {
                        let _ = seq;
                        let Ok(jid) = JobId::parse(&job.id) else { continue };
                        match state.with_timeout(state.store.get_preview(&jid)).await {
                            Ok(Some(p)) => preview_frame(&p.content_type, &p.image).into_iter().collect(),
                            _ => continue,
                        }
                    } else if job.status.is_final() {
                        if !mine.ended.insert(job.id.clone()) {
                            continue;
                        }
                        mine.pending.remove(&job.id);
                        // The record in an event may be partial: the stored one
                        // has the outputs.
                        let Ok(jid) = JobId::parse(&job.id) else { continue };
                        let full = state.with_timeout(state.store.get(&jid)).await.ok().flatten();
                        let full = full.unwrap_or_else(|| (**job).clone());
                        let remaining = super::prompt::remaining(&state, &who).await.unwrap_or(0);
                        ending(&full, remaining, mine.held.remove(&job.id))
                    } else if mine.pending.insert(job.id.clone()) {
                        let remaining = super::prompt::remaining(&state, &who).await.unwrap_or(0);
                        vec![status(remaining, None)]
                    } else {
                        continue;
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
            _ = signalled(&mut shutdown) => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        };
        for m in out {
            if socket.send(m).await.is_err() {
                return;
            }
        }
    }
}
