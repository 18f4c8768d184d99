//! Previews of the picture as it forms: the worker reads ComfyUI's preview frames
//! (type 4 with the prompt id; type 1 from an older ComfyUI), keeps the latest per
//! job at most four times a second, and hands it through the store to every API
//! process: `GET /api/jobs/<id>/preview` and `event: preview` on the job's stream.

use std::time::{Duration, Instant};

use serde_json::json;
use studio_core::config::Role;

use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, SseReader, TestApp};

/// The picture in the recorded preview frame the stand-in replays.
fn recorded_picture() -> Vec<u8> {
    let frame = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/comfyui/files/g_progress_savewebsocket_main_ws_binary_1.bin"),
    )
    .unwrap();
    frame[8..].to_vec()
}

/// A stand-in whose prompts take `duration` with `steps` previews.
fn sampler(duration: Duration, steps: u32, type1: bool) -> StandIn {
    StandIn::start_with(Knobs {
        duration,
        steps,
        type1_previews: type1,
        ..Knobs::default()
    })
}

/// Reads a job's stream to its end; the `preview` events' data, and when each came.
async fn previews_of(app: &TestApp, id: &str) -> Vec<(serde_json::Value, Instant)> {
    let (code, mut sse) =
        SseReader::open(&app.http, &app.url(&format!("/api/jobs/{id}/events")), None).await;
    assert_eq!(code, 200);
    let mut seen = Vec::new();
    while let Some(ev) = sse.next(Duration::from_secs(20)).await {
        if ev.event == "preview" {
            seen.push((ev.json(), Instant::now()));
        }
        if ev.event == "job" && ev.json()["status"] == "finished" {
            break;
        }
    }
    seen
}

async fn get_preview(app: &TestApp, id: &str) -> (u16, String, Vec<u8>, Option<String>) {
    let res = app
        .http
        .get(app.url(&format!("/api/jobs/{id}/preview")))
        .send()
        .await
        .unwrap();
    let code = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let seq = res
        .headers()
        .get("x-preview-seq")
        .map(|v| v.to_str().unwrap().to_owned());
    (code, ctype, res.bytes().await.unwrap().to_vec(), seq)
}

/// A worker's previews reach an API process that shares only Redis with it: the
/// stream there announces them, and the picture there is the one ComfyUI sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_reach_another_api_process_through_redis() {
    let standin = sampler(Duration::from_millis(2000), 8, false);
    let url = standin.url();
    let worker = TestApp::spawn(Backing::Redis, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let api = worker.spawn_beside(Role::Api, |_| {}).await;
    let id = api
        .submit(json!({"prompt": "a lighthouse forming", "workflow": "smoke"}))
        .await;
    let (code, mut sse) =
        SseReader::open(&api.http, &api.url(&format!("/api/jobs/{id}/events")), None).await;
    assert_eq!(code, 200);
    let preview = loop {
        let ev = sse
            .next(Duration::from_secs(20))
            .await
            .expect("the stream goes on");
        assert!(
            ev.json()["status"] != "finished",
            "finished without a preview"
        );
        if ev.event == "preview" {
            break ev.json();
        }
    };
    assert_eq!(preview["job_id"], id.as_str());
    assert!(preview["seq"].as_u64().unwrap() >= 1, "{preview}");
    assert!(
        preview["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/jobs/{id}/preview?seq={}", preview["seq"])),
        "{preview}"
    );
    let (code, ctype, bytes, seq) = get_preview(&api, &id).await;
    assert_eq!((code, ctype.as_str()), (200, "image/png"));
    assert_eq!(bytes, recorded_picture(), "the picture ComfyUI sent");
    assert!(seq.is_some());
    let v = api.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
}

/// Frames at 33 a second become at most four previews a second, the last one
/// included; the backend's frames are all counted in /health.
async fn previews_are_throttled(kind: Backing) {
    // The stand-in's sampler is the first of smoke's four nodes: 40 steps, each
    // with a preview frame, in the first 1.2 s of 4.8.
    let standin = sampler(Duration::from_millis(4800), 40, false);
    let url = standin.url();
    let app = TestApp::spawn(kind, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let id = app
        .submit(json!({"prompt": "fast frames", "workflow": "smoke"}))
        .await;
    let seen = previews_of(&app, &id).await;
    // 1.2 s of frames at 4 a second: 5, one more at the edges at most.
    assert!(
        (3..=6).contains(&seen.len()),
        "{} previews for 40 frames in 1.2 s",
        seen.len()
    );
    let seqs: Vec<u64> = seen
        .iter()
        .map(|(v, _)| v["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    // No two published closer than the throttle allows (a little slack for the
    // way through the store and the stream).
    for w in seen.windows(2) {
        let gap = w[1].1.duration_since(w[0].1);
        assert!(gap >= Duration::from_millis(150), "previews {gap:?} apart");
    }
    let (_, health) = app.get("/health").await;
    let b = &health["backends"][0];
    assert!(b["previews"].as_u64().unwrap() >= 39, "{b}");
    assert!(b.get("previews_note").is_none(), "{b}");
}

/// A ComfyUI that sends type-1 frames (no prompt id, as before 2025-07): the
/// preview of the running prompt is still ours.
async fn type_1_frames_are_the_running_prompts(kind: Backing) {
    let standin = sampler(Duration::from_millis(1200), 6, true);
    let url = standin.url();
    let app = TestApp::spawn(kind, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let id = app
        .submit(json!({"prompt": "old server", "workflow": "smoke"}))
        .await;
    let seen = previews_of(&app, &id).await;
    assert!(!seen.is_empty(), "previews from type-1 frames");
    let (code, ctype, bytes, _) = get_preview(&app, &id).await;
    assert_eq!((code, ctype.as_str()), (200, "image/png"));
    assert_eq!(bytes, recorded_picture());
}

/// No preview: 404 with the reason, and /health says how to get them.
async fn no_previews_is_404_and_health_says_why(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        previews: false,
        ..Knobs::default()
    });
    let url = standin.url();
    let app = TestApp::spawn(kind, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let id = app
        .submit(json!({"prompt": "no previews", "workflow": "smoke"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let (code, _, body, _) = get_preview(&app, &id).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (code, body["code"].as_str()),
        (404, Some("preview-not-found")),
        "{body}"
    );
    let (code, _) = app.get("/api/jobs/nope-not-there/preview").await;
    assert_eq!(code, 404);
    let (_, health) = app.get("/health").await;
    let b = &health["backends"][0];
    assert_eq!(b["previews"], 0, "{b}");
    assert!(
        b["previews_note"]
            .as_str()
            .unwrap()
            .contains("--preview-method auto"),
        "{b}"
    );
}

both_stores!(
    previews_are_throttled,
    type_1_frames_are_the_running_prompts,
    no_previews_is_404_and_health_says_why,
);
