//! The farm as one ComfyUI (`--comfyui-api-port`): ComfyUI's own routes over
//! Studio Core's queue, keys and storage, on both stores, against a stand-in
//! backend: `/prompt` (and its error shapes), `/ws` (message by message against
//! a real ComfyUI's recording, and only the client's own prompts), `/history`,
//! `/view`, `/queue`, `/interrupt`, `/object_info`, `/models`, keys given every
//! way ComfyUI's clients give them.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role as KeyRole};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::standin::StandIn;
use crate::support::{Backing, TestApp};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The smoke graph as a ComfyUI client sends it.
fn smoke() -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 3368652}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ComfyUI"}}
    })
}

async fn connect(base: &str, client: &str, key: &str) -> Ws {
    let url = format!("{}/ws?clientId={client}", base.replacen("http", "ws", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws
}

/// The next text message, within `wait`; a binary frame comes as
/// `{"binary": [event type, format, bytes]}`.
async fn next_json(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Binary(b)))) if b.len() >= 8 => {
                let word = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
                return Some(json!({"binary": [word(0), word(4), b.len() - 8]}));
            }
            Ok(Some(Ok(Message::Ping(_)))) => continue,
            _ => return None,
        }
    }
}

/// Messages up to (and with) `executing` with no node for `prompt`.
async fn until_done(ws: &mut Ws, prompt: &str) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(m) = next_json(ws, Duration::from_secs(15)).await {
        let done = m["type"] == "executing"
            && m["data"]["node"].is_null()
            && m["data"]["prompt_id"] == prompt;
        out.push(m);
        if done {
            return out;
        }
    }
    panic!("no end of {prompt}: {out:?}");
}

/// What a real ComfyUI said on the submitting client's socket for a prompt that
/// ran (tests/fixtures/comfyui/a1_simple_success.jsonl; with steps,
/// g_progress_savewebsocket.jsonl): each message type, with the keys of its
/// data.
fn recorded(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == "ws_text" && e["ws"] == "main")
        .map(|e| {
            let mut keys: Vec<String> = e["json"]["data"]
                .as_object()
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default();
            keys.sort();
            (e["json"]["type"].as_str().unwrap().to_owned(), keys)
        })
        .collect()
}

fn keys_of(m: &Value) -> Vec<String> {
    let mut k: Vec<String> = m["data"]
        .as_object()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    auth: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (u16, Value) {
    let res = auth(http.post(url).json(body)).send().await.unwrap();
    let s = res.status().as_u16();
    (s, res.json().await.unwrap_or(Value::Null))
}

async fn get(http: &reqwest::Client, url: &str, key: &str) -> (u16, Value) {
    let res = http.get(url).header("x-api-key", key).send().await.unwrap();
    let s = res.status().as_u16();
    (s, res.json().await.unwrap_or(Value::Null))
}

/// `studio serve` with keys and the ComfyUI port on, driving `standin`
/// (`configure` adjusts the rest); the app and the port's base URL.
async fn farm(
    kind: Backing,
    standin: &StandIn,
    configure: impl FnOnce(&mut studio_core::config::ServerArgs),
) -> (TestApp, String) {
    let app = TestApp::serve(kind, standin, |a| {
        a.auth = AuthMode::Keys;
        a.comfyui_api_port = Some(0);
        configure(a);
    })
    .await;
    let comfy = app.comfy.clone().expect("the ComfyUI port is on");
    (app, comfy)
}

/// A user key that may run graphs (what ComfyUI's clients send), with `limits`
/// otherwise.
async fn graph_key(app: &TestApp, name: &str, limits: KeyLimits) -> String {
    let limits = KeyLimits {
        graphs: true,
        ..limits
    };
    app.new_key(name, KeyRole::User, limits).await
}

async fn a_comfyui_client_runs_prompts_on_the_farm(kind: Backing) {
    let standin = StandIn::start();
    let (app, comfy) = farm(kind, &standin, |_| {}).await;
    let alice = graph_key(&app, "alice", KeyLimits::default()).await;
    let bob = graph_key(&app, "bob", KeyLimits::default()).await;
    let carol = app
        .new_key("carol", KeyRole::User, KeyLimits::default())
        .await;
    let http = reqwest::Client::new();

    // Without a key: 401; with one, every way ComfyUI's clients send one.
    let res = http
        .get(format!("{comfy}/object_info"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // (Once the backend's worker has reported what it has.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let info = loop {
        let res = http
            .get(format!("{comfy}/api/object_info"))
            .basic_auth("comfy", Some(&alice))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let info: Value = res.json().await.unwrap();
        if info.as_object().is_some_and(|o| !o.is_empty()) || tokio::time::Instant::now() > deadline
        {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        info.get("EmptyImage").is_some() && info.get("SaveImage").is_some(),
        "{info}"
    );
    let (s, one) = get(&http, &format!("{comfy}/object_info/SaveImage"), &alice).await;
    assert_eq!((s, one.as_object().map(|o| o.len())), (200, Some(1)));
    // The backend's models, once its worker has said what it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ckpts = loop {
        let (s, c) = get(&http, &format!("{comfy}/models/checkpoints"), &alice).await;
        assert_eq!(s, 200);
        if c.as_array().is_some_and(|a| !a.is_empty()) || tokio::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        ckpts
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "sd_xl_base_1.0.safetensors"),
        "{ckpts}"
    );

    // Three sockets: alice's two clients, and bob.
    let mut a1 = connect(&comfy, "client-a1", &alice).await;
    let mut a2 = connect(&comfy, "client-a2", &alice).await;
    let mut b1 = connect(&comfy, "client-b1", &bob).await;
    for (ws, sid) in [
        (&mut a1, "client-a1"),
        (&mut a2, "client-a2"),
        (&mut b1, "client-b1"),
    ] {
        let first = next_json(ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(first["type"], "status");
        assert_eq!(first["data"]["sid"], sid);
        assert!(first["data"]["status"]["exec_info"]["queue_remaining"].is_u64());
    }

    // A prompt from alice's first client, the key as a basic-auth password.
    let (s, r) = post(
        &http,
        &format!("{comfy}/prompt"),
        &json!({"prompt": smoke(), "client_id": "client-a1"}),
        |b| b.basic_auth("", Some(&alice)),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["node_errors"], json!({}));
    assert!(r["number"].is_u64());
    let id = r["prompt_id"].as_str().unwrap().to_owned();
    let got = until_done(&mut a1, &id).await;
    // Message by message against the recording: the same types in the same
    // order (ours relays fewer progress_state updates), each with the same keys.
    let theirs = recorded(include_str!("../fixtures/comfyui/a1_simple_success.jsonl"));
    let with_steps = recorded(include_str!(
        "../fixtures/comfyui/g_progress_savewebsocket.jsonl"
    ));
    // The previews, as ComfyUI's binary frames: event 1, JPEG (1) or PNG (2).
    let previews: Vec<&Value> = got.iter().filter(|m| m.get("binary").is_some()).collect();
    assert!(!previews.is_empty(), "previews: {got:?}");
    for p in &previews {
        assert_eq!(p["binary"][0], 1, "{p}");
        assert!(p["binary"][1] == 1 || p["binary"][1] == 2, "{p}");
        assert!(p["binary"][2].as_u64().unwrap() > 0);
    }
    let got: Vec<Value> = got
        .into_iter()
        .filter(|m| m.get("binary").is_none())
        .collect();
    let ours: Vec<(String, Vec<String>)> = got
        .iter()
        .filter(|m| m["type"] != "status")
        .map(|m| (m["type"].as_str().unwrap().to_owned(), keys_of(m)))
        .collect();
    for (t, k) in &ours {
        // Some message ComfyUI sent of that type had exactly these keys
        // (`executing` has a `display_node` but not at the end; progress_state's
        // nodes are checked by type only).
        let all = theirs.iter().chain(&with_steps);
        let same = all
            .clone()
            .any(|(tt, kk)| tt == t && (kk == k || t == "progress_state"));
        assert!(same, "{t} {k:?} is not a message ComfyUI sent: {ours:?}");
    }
    let order = |types: &[(String, Vec<String>)]| -> Vec<String> {
        let wanted = [
            "execution_start",
            "executing",
            "executed",
            "execution_success",
        ];
        let mut seen: Vec<String> = Vec::new();
        for (t, _) in types {
            if wanted.contains(&t.as_str()) && seen.last() != Some(t) {
                seen.push(t.clone());
            }
        }
        seen
    };
    let their_order: Vec<(String, Vec<String>)> = theirs
        .iter()
        .filter(|(t, _)| t != "status")
        .cloned()
        .collect();
    assert_eq!(order(&ours), order(&their_order), "{ours:?}");
    let executed = got.iter().find(|m| m["type"] == "executed").unwrap();
    assert_eq!(executed["data"]["prompt_id"], id.as_str());
    let image = &executed["data"]["output"]["images"][0];
    assert_eq!(image["subfolder"], id.as_str());
    assert_eq!(image["type"], "output");
    assert!(
        got.iter()
            .all(|m| m["data"].get("prompt_id").is_none_or(|p| p == id.as_str())),
        "{got:?}"
    );

    // The others saw nothing of it (alice's other client at most a queue size).
    for ws in [&mut a2, &mut b1] {
        while let Some(m) = next_json(ws, Duration::from_millis(300)).await {
            assert_eq!(m["type"], "status", "another client sees {m}");
            assert!(m.get("binary").is_none(), "another client sees a preview");
            assert!(m["data"].get("prompt_id").is_none());
        }
    }

    // The picture, through /view, as /history names it.
    let (s, h) = get(&http, &format!("{comfy}/history/{id}"), &alice).await;
    assert_eq!(s, 200);
    let entry = &h[id.as_str()];
    assert_eq!(entry["status"]["status_str"], "success", "{h}");
    assert_eq!(entry["status"]["completed"], true);
    assert_eq!(entry["prompt"][1], id.as_str());
    assert_eq!(entry["prompt"][2], smoke());
    let out = &entry["outputs"]["2"]["images"][0];
    assert_eq!(out, image);
    let view = format!(
        "{comfy}/view?filename={}&subfolder={}&type=output",
        out["filename"].as_str().unwrap(),
        id
    );
    let res = http
        .get(&view)
        .header("x-api-key", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let png = res.bytes().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a picture");
    // Another key sees none of it.
    let res = http
        .get(&view)
        .header("x-api-key", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let (_, hb) = get(&http, &format!("{comfy}/history/{id}"), &bob).await;
    assert_eq!(hb, json!({}));
    let (_, all_b) = get(&http, &format!("{comfy}/history"), &bob).await;
    assert!(all_b.get(&id).is_none());
    let (_, all_a) = get(&http, &format!("{comfy}/history"), &alice).await;
    assert!(all_a.get(&id).is_some());
    // ComfyUI's newer jobs API says the same.
    let (s, jobs) = get(&http, &format!("{comfy}/api/jobs?status=completed"), &alice).await;
    assert_eq!(s, 200);
    let listed = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .cloned();
    let listed = listed.unwrap_or_else(|| panic!("{jobs}"));
    assert_eq!(listed["status"], "completed");
    assert_eq!(listed["preview_output"]["filename"], out["filename"]);
    assert_eq!(jobs["pagination"]["total"], 1);
    let (s, one) = get(&http, &format!("{comfy}/api/jobs/{id}"), &alice).await;
    assert_eq!(s, 200);
    assert_eq!(one["outputs"]["2"]["images"][0], *out);
    assert_eq!(one["workflow"]["prompt"], smoke());
    let (s, _) = get(&http, &format!("{comfy}/api/jobs/{id}"), &bob).await;
    assert_eq!(s, 404);
    let (_, none) = get(&http, &format!("{comfy}/api/jobs"), &bob).await;
    assert_eq!(none["jobs"], json!([]));
    // The same job on Studio Core's own API.
    let res = http
        .get(app.url(&format!("/api/jobs/{id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let job: Value = res.json().await.unwrap();
    assert_eq!(
        (job["status"].as_str(), job["workflow"].as_str()),
        (Some("finished"), Some("_graph"))
    );

    // ComfyUI's error shapes.
    let mut unknown = smoke();
    unknown["1"]["class_type"] = json!("NoSuchNode");
    let (s, e) = post(
        &http,
        &format!("{comfy}/prompt"),
        &json!({"prompt": unknown}),
        |b| b.header("x-api-key", &alice),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["type"], "prompt_outputs_failed_validation");
    assert_eq!(e["node_errors"]["1"]["class_type"], "NoSuchNode", "{e}");
    let mut dangling = smoke();
    dangling["2"]["inputs"]["images"] = json!(["9", 0]);
    let (s, e) = post(
        &http,
        &format!("{comfy}/prompt"),
        &json!({"prompt": dangling}),
        |b| b.header("x-api-key", &alice),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["node_errors"]["2"]["class_type"], "SaveImage", "{e}");
    let (s, e) = post(
        &http,
        &format!("{comfy}/prompt"),
        &json!({"client_id": "x"}),
        |b| b.header("x-api-key", &alice),
    )
    .await;
    assert_eq!((s, e["error"]["type"].as_str()), (400, Some("no_prompt")));
    let res = http
        .post(format!("{comfy}/prompt"))
        .header("x-api-key", &alice)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let many: serde_json::Map<String, Value> = (0..10_000)
        .map(|i| {
            (
                i.to_string(),
                json!({"class_type": "EmptyImage", "inputs": {}}),
            )
        })
        .collect();
    let (s, e) = post(
        &http,
        &format!("{comfy}/prompt"),
        &json!({"prompt": many}),
        |b| b.header("x-api-key", &alice),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = post(
        &http,
        &format!("{comfy}/prompt"),
        &json!({"prompt": smoke()}),
        |b| b.bearer_auth(&carol),
    )
    .await;
    assert_eq!(
        (s, e["error"]["type"].as_str()),
        (403, Some("graphs-not-allowed")),
        "{e}"
    );
    let res = http
        .get(format!(
            "{comfy}/view?filename=../../etc/passwd&subfolder={id}&type=output"
        ))
        .header("x-api-key", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // A page on another site cannot queue with a visitor's browser.
    let (s, _) = post(
        &http,
        &format!("{comfy}/prompt"),
        &json!({"prompt": smoke()}),
        |b| {
            b.header("x-api-key", &alice)
                .header("origin", "https://evil.example")
        },
    )
    .await;
    assert_eq!(s, 403);

    // The queue: a slow prompt waits behind nothing and shows as running, then
    // an interrupt stops it.
    standin.knobs(|k| k.duration = Duration::from_secs(20));
    let (_, r) = post(
        &http,
        &format!("{comfy}/api/prompt"),
        &json!({"prompt": smoke(), "client_id": "client-a1"}),
        |b| b.header("x-api-key", &alice),
    )
    .await;
    let slow = r["prompt_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, q) = get(&http, &format!("{comfy}/queue"), &alice).await;
        if q["queue_running"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[1] == slow.as_str())
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, qb) = get(&http, &format!("{comfy}/queue"), &bob).await;
    assert_eq!(qb, json!({"queue_running": [], "queue_pending": []}));
    let res = http
        .post(format!("{comfy}/interrupt"))
        .header("x-api-key", &alice)
        .json(&json!({"prompt_id": slow}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got = until_done(&mut a1, &slow).await;
    assert!(
        got.iter().any(|m| m["type"] == "execution_interrupted"),
        "{got:?}"
    );
    let (_, j) = get(&http, &format!("{comfy}/api/jobs/{slow}"), &alice).await;
    assert_eq!(j["status"], "cancelled", "{j}");
    let _ = a1.close(None).await;
    app.stop().await;
}

/// Queues a smoke prompt as `key`; its id.
async fn queue_prompt(http: &reqwest::Client, comfy: &str, key: &str) -> String {
    let (s, r) = post(
        http,
        &format!("{comfy}/prompt"),
        &json!({"prompt": smoke(), "client_id": "history-test"}),
        |b| b.header("x-api-key", key),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    r["prompt_id"].as_str().unwrap().to_owned()
}

/// Waits until `id` is in `key`'s history.
async fn in_history(http: &reqwest::Client, comfy: &str, key: &str, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, h) = get(http, &format!("{comfy}/history/{id}"), key).await;
        if h.get(id).is_some() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// ComfyUI's `POST /history` (its frontend's "Clear history" and an entry's
/// delete): the caller's ended prompts go, jobs and pictures with them; another
/// key's, and prompts not yet ended, stay.
async fn history_is_forgotten_as_comfyui_forgets_it(kind: Backing) {
    let standin = StandIn::start();
    let (app, comfy) = farm(kind, &standin, |_| {}).await;
    let alice = graph_key(&app, "alice", KeyLimits::default()).await;
    let bob = graph_key(&app, "bob", KeyLimits::default()).await;
    let http = reqwest::Client::new();
    let (a1, a2, b1) = (
        queue_prompt(&http, &comfy, &alice).await,
        queue_prompt(&http, &comfy, &alice).await,
        queue_prompt(&http, &comfy, &bob).await,
    );
    for (key, id) in [(&alice, &a1), (&alice, &a2), (&bob, &b1)] {
        in_history(&http, &comfy, key, id).await;
    }
    let pictures = |id: &str| app.dir.path().join("images").join(id);
    assert!(pictures(&a1).exists(), "a1's pictures are stored");

    // Alice deletes one of hers, and names bob's too: only hers goes.
    let (s, _) = post(
        &http,
        &format!("{comfy}/history"),
        &json!({"delete": [a1, b1]}),
        |b| b.header("x-api-key", &alice),
    )
    .await;
    assert_eq!(s, 200);
    let (_, ha) = get(&http, &format!("{comfy}/history"), &alice).await;
    assert!(ha.get(&a1).is_none() && ha.get(&a2).is_some(), "{ha}");
    let (s, _) = get(&http, &format!("{}/api/jobs/{a1}", app.base), &alice).await;
    assert_eq!(s, 404, "the job went with its history entry");
    assert!(!pictures(&a1).exists(), "and its pictures");
    let (_, hb) = get(&http, &format!("{comfy}/history"), &bob).await;
    assert!(hb.get(&b1).is_some(), "bob's stays: {hb}");

    // A prompt still running is not history: "clear" leaves it.
    standin.knobs(|k| k.duration = Duration::from_secs(2));
    let a3 = queue_prompt(&http, &comfy, &alice).await;
    let (s, _) = post(
        &http,
        &format!("{comfy}/api/history"),
        &json!({"clear": true}),
        |b| b.header("x-api-key", &alice),
    )
    .await;
    assert_eq!(s, 200);
    let (_, ha) = get(&http, &format!("{comfy}/history"), &alice).await;
    assert!(ha.get(&a2).is_none(), "cleared: {ha}");
    assert!(!pictures(&a2).exists());
    let (s, _) = get(&http, &format!("{}/api/jobs/{a3}", app.base), &alice).await;
    assert_eq!(s, 200, "the running prompt stays");
    in_history(&http, &comfy, &alice, &a3).await;
    let (_, hb) = get(&http, &format!("{comfy}/history"), &bob).await;
    assert!(hb.get(&b1).is_some(), "bob's history is his: {hb}");
    // Not an object: ComfyUI's 400, nothing deleted.
    let res = http
        .post(format!("{comfy}/history"))
        .header("x-api-key", &alice)
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let (_, ha) = get(&http, &format!("{comfy}/history"), &alice).await;
    assert!(ha.get(&a3).is_some(), "{ha}");
}

/// ComfyUI's `front: true` puts a prompt ahead of the caller's others still
/// waiting (as the highest priority the key may use), never ahead of the
/// prompt already running.
async fn a_front_prompt_runs_before_the_callers_waiting_ones(kind: Backing) {
    let standin = StandIn::start();
    standin.knobs(|k| k.duration = Duration::from_millis(600));
    let (app, comfy) = farm(kind, &standin, |a| a.prefetch = 0).await;
    let alice = graph_key(
        &app,
        "alice",
        KeyLimits {
            max_priority: studio_core::job::Priority::High,
            ..Default::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(queue_prompt(&http, &comfy, &alice).await);
    }
    let (s, r) = post(
        &http,
        &format!("{comfy}/prompt"),
        &json!({"prompt": smoke(), "front": true}),
        |b| b.header("x-api-key", &alice),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert!(
        r["number"].as_i64().is_some_and(|n| n < 0),
        "numbered as ComfyUI numbers a front prompt: {r}"
    );
    let front = r["prompt_id"].as_str().unwrap().to_owned();
    for id in ids.iter().chain([&front]) {
        in_history(&http, &comfy, &alice, id).await;
    }
    let order: Vec<String> = standin.runs().into_iter().map(|r| r.prompt_id).collect();
    let at = |id: &str| order.iter().position(|p| p == id).unwrap();
    assert!(
        at(&front) < at(&ids[1]) && at(&front) < at(&ids[2]),
        "the front prompt ran before the waiting ones: {order:?} (front {front}, others {ids:?})"
    );
    let (_, job) = get(&http, &format!("{}/api/jobs/{front}", app.base), &alice).await;
    assert_eq!(job["priority"], "high", "{job}");
    // A key held to low priority still queues (its clients cannot say "low").
    let low = graph_key(
        &app,
        "low",
        KeyLimits {
            max_priority: studio_core::job::Priority::Low,
            ..Default::default()
        },
    )
    .await;
    let id = queue_prompt(&http, &comfy, &low).await;
    let (_, job) = get(&http, &format!("{}/api/jobs/{id}", app.base), &low).await;
    assert_eq!(job["priority"], "low", "{job}");
}

both_stores!(
    a_comfyui_client_runs_prompts_on_the_farm,
    history_is_forgotten_as_comfyui_forgets_it,
    a_front_prompt_runs_before_the_callers_waiting_ones
);

/// A ComfyUI client library nobody here wrote (`comfy-api-simplified`, PyPI,
/// installed by `scripts/test`) uploads a picture, runs a workflow loading it
/// through the port unchanged, with the key as its basic-auth password, and gets
/// the pictures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comfyui_client_library_runs_a_workflow_unchanged() {
    let standin = StandIn::start_with(crate::support::standin::Knobs {
        // Previews would be the pictures this library returns.
        previews: false,
        ..Default::default()
    });
    let app = TestApp::serve(Backing::Redis, &standin, |a| {
        a.auth = AuthMode::Keys;
        a.comfyui_api_port = Some(0);
    })
    .await;
    let comfy = app.comfy.clone().unwrap();
    let key = app
        .new_key(
            "simplified",
            KeyRole::User,
            KeyLimits {
                graphs: true,
                ..Default::default()
            },
        )
        .await;
    let picture = app.dir.path().join("in.png");
    std::fs::write(&picture, crate::support::png(24, 16, [10, 20, 30])).unwrap();
    let v = crate::support::python_json(
        "comfyui/simplified_client.py",
        &[&comfy, &key, picture.to_str().unwrap()],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(v["upload"]["type"], "input", "{v}");
    assert!(
        v["upload"]["name"].as_str().unwrap().ends_with(".png"),
        "{v}"
    );
    let images = v["images"].as_object().unwrap();
    assert_eq!(images.len(), 1, "{v}");
    assert!(images.values().all(|n| n.as_u64().unwrap() > 8), "{v}");
    assert_eq!(v["png"], true);
    assert_eq!(v["wrong_key_refused"], true);
    // The stand-in got our upload, under the name it gave, in the graph.
    let jobs = app.store.list(&studio_core::store::ListQuery {
        status: None,
        limit: 10,
        cursor: None,
        owner: None,
    });
    let page = jobs.await.unwrap();
    let job = &page.jobs[0];
    let graph = standin.graph_of(&job.id).unwrap();
    let given = graph["1"]["inputs"]["image"].as_str().unwrap().to_owned();
    assert!(
        !given.contains(v["upload"]["name"].as_str().unwrap()),
        "the backend's own name: {given}"
    );
    app.stop().await;
}

/// ComfyUI's own frontend (`comfyui-frontend-package`, PyPI, installed by
/// `scripts/test`), served by the port, in headless Chromium: a browser without
/// a key is sent to the login page; after it, a model-free workflow queued from
/// the frontend (as *Run* does) runs on a backend, and its picture appears in
/// the frontend's queue. Screenshot: `target/screenshots/comfyui-frontend.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyuis_frontend_runs_a_workflow_on_the_farm() {
    use crate::support::webdriver::Browser;
    const WAIT: Duration = Duration::from_secs(30);
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/lib");
    let frontend = std::fs::read_dir(&lib)
        .ok()
        .and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    e.path()
                        .join("site-packages/comfyui_frontend_package/static")
                })
                .find(|p| p.join("index.html").is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "comfyui-frontend-package is not under {} (scripts/test installs it)",
                lib.display()
            )
        });
    let standin = StandIn::start_with(crate::support::standin::Knobs {
        real_info: true,
        ..Default::default()
    });
    let app = TestApp::serve(Backing::Sqlite, &standin, move |a| {
        a.auth = AuthMode::Keys;
        a.comfyui_api_port = Some(0);
        a.comfyui_frontend = Some(frontend);
    })
    .await;
    let comfy = app.comfy.clone().unwrap();
    let key = app
        .new_key(
            "designer",
            KeyRole::User,
            KeyLimits {
                graphs: true,
                ..Default::default()
            },
        )
        .await;
    // The frontend reads the node classes once, at start: after the backend's
    // worker has reported them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, info) = get(
            &reqwest::Client::new(),
            &format!("{comfy}/object_info"),
            &key,
        )
        .await;
        if info.get("EmptyImage").is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backend reported: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let browser = Browser::start(1400, 900).await;
    browser.goto(&format!("{comfy}/")).await;
    browser
        .wait_for(
            "return location.pathname === '/login' && !!document.getElementById('key')",
            WAIT,
        )
        .await;
    // A wrong key is refused on the page.
    let input = browser.find("#key").await;
    browser.type_into(&input, "sk_nothing_wrong").await;
    browser.click(&browser.find("#sign-in").await).await;
    browser
        .wait_for("return document.body.innerText.includes('not valid')", WAIT)
        .await;
    let input = browser.find("#key").await;
    browser.type_into(&input, &key).await;
    browser.click(&browser.find("#sign-in").await).await;
    browser
        .wait_for("return location.pathname === '/' && !!(window.app && window.app.graph && window.app.graphToPrompt)", WAIT)
        .await;
    // The smoke workflow, as the frontend saves one, queued as Run does.
    let mut ui = crate::support::smoke_ui();
    for (i, n) in ui["nodes"].as_array_mut().unwrap().iter_mut().enumerate() {
        n["flags"] = json!({});
        n["order"] = json!(i);
        n["properties"] = json!({});
        n["pos"] = json!([i * 250, 100]);
        n["size"] = json!([200, 100]);
    }
    let text = serde_json::to_string(&ui.to_string()).unwrap();
    browser
        .exec(&format!(
            "window.__queued = null; \
             (async () => {{ \
               await window.app.loadGraphData(JSON.parse({text}), true, true, null, {{showMissingModelsDialog: false, showMissingNodesDialog: false}}); \
               await window.app.queuePrompt(0, 1); \
               window.__queued = true; \
             }})().catch(e => window.__queued = String(e)); \
             return true;"
        ))
        .await;
    let queued = browser.wait_for("return window.__queued", WAIT).await;
    assert_eq!(queued, json!(true), "{queued}");
    // The picture comes back into the frontend: the output of the saver node,
    // and an image of ours in its queue.
    let outputs = browser
        .wait_for(
            "const o = window.app.nodeOutputs || {}; \
             const k = Object.keys(o).find(k => (o[k].images || []).length); \
             return k ? o[k].images[0] : null;",
            WAIT,
        )
        .await;
    assert_eq!(outputs["type"], "output", "{outputs}");
    let job = outputs["subfolder"].as_str().unwrap().to_owned();
    browser
        .exec("window.app.extensionManager.command.execute('Workspace.ToggleSidebarTab.queue'); return true;")
        .await;
    let src = browser
        .wait_for(
            "return [...document.querySelectorAll('img')].map(i => i.src).find(s => s.includes('/api/view?')) || null",
            WAIT,
        )
        .await;
    assert!(src.as_str().unwrap().contains(&job), "{src}");
    // (A new user is offered templates first; closed for the picture.)
    browser
        .exec("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click()); return true;")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shot = browser.screenshot().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("comfyui-frontend.png"), shot).unwrap();
    // It ran on the backend, as a job of the key's.
    let graph = standin.graph_of(&job).expect("the backend ran it");
    assert_eq!(graph["3"]["inputs"]["blur_radius"], 2);
    let res = reqwest::Client::new()
        .get(app.url(&format!("/api/jobs/{job}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.stop().await;
}

/// Two backends behind the port, each with its own worker (one a real process),
/// two clients with different keys sending 20 prompts: both backends run some,
/// each client's history and stream hold exactly its own prompts, and nothing
/// is lost when the worker process is killed with SIGKILL mid-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_two_clients_and_a_worker_killed_lose_nothing() {
    use crate::support::proc::Proc;
    use crate::support::{RedisPrefix, TempDir};
    use std::collections::BTreeSet;
    use std::sync::Arc;
    let knobs = || crate::support::standin::Knobs {
        duration: Duration::from_millis(400),
        previews: false,
        ..Default::default()
    };
    let (sa, sb) = (StandIn::start_with(knobs()), StandIn::start_with(knobs()));
    let data = Arc::new(TempDir::new());
    let api = TestApp::spawn_with(
        Backing::Redis,
        studio_core::config::Role::Api,
        Some(RedisPrefix::new()),
        data.clone(),
        |a| {
            a.auth = AuthMode::Keys;
            a.comfyui_api_port = Some(0);
        },
    )
    .await;
    let comfy = api.comfy.clone().unwrap();
    let p = api.redis.as_ref().unwrap();
    let url_a = sa.url();
    let _worker_a = TestApp::spawn_with(
        Backing::Redis,
        studio_core::config::Role::Worker,
        Some(RedisPrefix {
            url: p.url.clone(),
            prefix: p.prefix.clone(),
        }),
        data.clone(),
        move |a| a.comfyui = vec![url_a],
    )
    .await;
    let env: Vec<(&str, String)> = vec![
        ("REDIS_URL", p.url.clone()),
        ("STUDIO_REDIS_PREFIX", p.prefix.clone()),
        ("COMFYUI_URL", sb.url()),
        ("STUDIO_DATA_DIR", data.path().display().to_string()),
        ("STUDIO_WORKER_TTL", "1s".into()),
        ("STUDIO_HEALTH_INTERVAL", "200ms".into()),
        ("STUDIO_POLL_INTERVAL", "300ms".into()),
        ("STUDIO_RETRY_BASE", "100ms".into()),
    ];
    let mut worker_b = Proc::spawn(&["worker"], &env, data.path().join("worker-b1.log"));
    let graphs = KeyLimits {
        graphs: true,
        ..Default::default()
    };
    let keys = [
        api.new_key("alice", KeyRole::User, graphs.clone()).await,
        api.new_key("bob", KeyRole::User, graphs).await,
    ];
    let mut sockets = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut ws = connect(&comfy, &format!("client-{i}"), key).await;
        assert_eq!(
            next_json(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
            "status"
        );
        sockets.push(ws);
    }
    let http = reqwest::Client::new();
    let mut ids: [BTreeSet<String>; 2] = Default::default();
    for n in 0..20u32 {
        let who = (n % 2) as usize;
        let mut g = smoke();
        g["1"]["inputs"]["color"] = json!(n);
        let (s, r) = post(
            &http,
            &format!("{comfy}/prompt"),
            &json!({"prompt": g, "client_id": format!("client-{who}")}),
            |b| b.basic_auth("", Some(&keys[who])),
        )
        .await;
        assert_eq!(s, 200, "{r}");
        ids[who].insert(r["prompt_id"].as_str().unwrap().to_owned());
        if n == 5 {
            // Backend B's worker dies while B runs one of them.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while sb.running().is_none() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "B never ran a prompt"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            worker_b.kill9();
            worker_b = Proc::spawn(&["worker"], &env, data.path().join("worker-b2.log"));
        }
    }
    // Every prompt ends well, and each key's history is exactly its own.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    for who in 0..2 {
        loop {
            let (_, h) = get(&http, &format!("{comfy}/history"), &keys[who]).await;
            let done: BTreeSet<String> = h.as_object().unwrap().keys().cloned().collect();
            if done.len() >= ids[who].len() {
                assert_eq!(done, ids[who], "client {who}'s history is its own");
                for (id, e) in h.as_object().unwrap() {
                    assert_eq!(e["status"]["status_str"], "success", "{id}: {e}");
                }
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} ended: {h}",
                done.len(),
                ids[who].len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        sa.submitted_total() > 0 && sb.submitted_total() > 0,
        "both backends ran prompts"
    );
    // Each stream told its own client the end of each of its prompts, and
    // nothing of the other's.
    for (who, ws) in sockets.iter_mut().enumerate() {
        let mut ended = BTreeSet::new();
        while ended.len() < ids[who].len() {
            let Some(m) = next_json(ws, Duration::from_secs(10)).await else {
                panic!(
                    "client {who} heard the end of {} of {}",
                    ended.len(),
                    ids[who].len()
                );
            };
            if let Some(pid) = m["data"]["prompt_id"].as_str() {
                assert!(ids[who].contains(pid), "client {who} heard of {pid}: {m}");
                if m["type"] == "executing" && m["data"]["node"].is_null() {
                    ended.insert(pid.to_owned());
                }
            }
        }
    }
    drop(worker_b);
    api.stop().await;
}
