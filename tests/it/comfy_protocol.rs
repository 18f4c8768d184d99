//! The ComfyUI client against the recordings of a real server
//! (`tests/fixtures/comfyui/`), and the stand-in against the same recordings.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use studio_core::comfy::client::describe_rejection;
use studio_core::comfy::{ComfyClient, HistoryEntry, RunStatus, WsMessage};
use studio_core::worker::progress::ProgressTracker;

use crate::support::standin::StandIn;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/comfyui")
}

fn transcript(name: &str) -> Vec<Value> {
    std::fs::read_to_string(fixtures().join(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn all_transcripts() -> Vec<(String, Vec<Value>)> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| (n.clone(), transcript(&n)))
        .collect()
}

#[test]
fn every_recorded_text_frame_parses_into_its_type() {
    let mut count = 0;
    for (name, lines) in all_transcripts() {
        for l in lines.iter().filter(|l| l["kind"] == "ws_text") {
            let text = l["json"].to_string();
            let m = WsMessage::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
            let kind = l["json"]["type"].as_str().unwrap();
            assert!(
                !matches!(m, WsMessage::Other { .. }),
                "{name}: known type {kind} parsed as Other"
            );
            count += 1;
        }
    }
    assert!(count > 500, "all frames read ({count})");
}

#[test]
fn every_recorded_binary_frame_is_read() {
    let dir = fixtures().join("files");
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "bin") {
            let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
            let event = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            match (event, WsMessage::binary(&bytes)) {
                // Previews, with or without metadata: their picture.
                (
                    1 | 4,
                    WsMessage::Preview {
                        content_type,
                        image,
                        ..
                    },
                ) => {
                    assert_eq!(content_type, "image/png", "{path:?}");
                    assert!(bytes.ends_with(&image), "{path:?}");
                }
                (3, WsMessage::Binary { event: 3, len }) => assert_eq!(len, bytes.len()),
                (e, m) => panic!("{path:?}: type {e} read as {m:?}"),
            }
            seen.push(event);
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [1, 3, 4],
        "preview, progress text and preview-with-metadata frames"
    );
}

fn history_body(name: &str, nth: usize) -> (String, Value) {
    let r = transcript(name)
        .into_iter()
        .filter(|l| {
            l["kind"] == "http_response"
                && l["path"].as_str().unwrap_or("").starts_with("/history/")
                && l["status"] == 200
        })
        .filter(|l| l["body_json"].as_object().is_some_and(|m| !m.is_empty()))
        .nth(nth)
        .unwrap_or_else(|| panic!("{name} has a history response #{nth}"));
    let (id, entry) = r["body_json"].as_object().unwrap().iter().next().unwrap();
    (id.clone(), entry.clone())
}

#[test]
fn recorded_history_entries_give_outcome_and_files() {
    let (_, ok) = history_body("a1_simple_success.jsonl", 0);
    let e = HistoryEntry::parse(&ok);
    assert_eq!(e.status, RunStatus::Success);
    assert_eq!(e.files.len(), 1);
    assert_eq!(
        (
            e.files[0].filename.as_str(),
            e.files[0].kind.as_str(),
            e.files[0].key.as_str()
        ),
        ("studio_00001_.png", "output", "images")
    );
    // The backend's run time, from its own execution_start and execution_success.
    let start = ok["status"]["messages"][0][1]["timestamp"]
        .as_u64()
        .unwrap();
    let end = ok["status"]["messages"].as_array().unwrap().last().unwrap()[1]["timestamp"]
        .as_u64()
        .unwrap();
    assert_eq!(e.run_ms, Some(end - start));
    assert!(e.run_ms.unwrap() > 0);

    let (_, err) = history_body("d_runtime_error.jsonl", 0);
    let RunStatus::Error(x) = HistoryEntry::parse(&err).status else {
        panic!("an error entry")
    };
    assert_eq!(
        (
            x.node_id.as_str(),
            x.node_type.as_str(),
            x.exception_type.as_str()
        ),
        ("3", "ImageBlur", "RuntimeError")
    );
    assert!(x.describe().starts_with("ComfyUI failed while running node 3 (ImageBlur): RuntimeError: Argument #4: Padding size"), "{}", x.describe());

    let (_, batch) = history_body("a3_batch_preview_and_progress_text.jsonl", 0);
    let e = HistoryEntry::parse(&batch);
    let outputs: Vec<(&str, &str)> = e
        .files
        .iter()
        .map(|f| (f.node.as_str(), f.kind.as_str()))
        .collect();
    assert_eq!(
        outputs.iter().filter(|(_, k)| *k == "output").count(),
        2,
        "a batch of two saved images: {outputs:?}"
    );
    assert!(
        outputs.iter().any(|(_, k)| *k == "temp"),
        "the preview is a temp file: {outputs:?}"
    );
}

#[test]
fn an_interrupted_run_reads_as_interrupted() {
    let found = transcript("e_interrupt.jsonl")
        .into_iter()
        .filter(|l| {
            l["kind"] == "http_response"
                && l["path"].as_str().unwrap_or("").starts_with("/history/")
        })
        .filter_map(|l| {
            l["body_json"]
                .as_object()
                .and_then(|m| m.values().next().cloned())
        })
        .map(|entry| HistoryEntry::parse(&entry).status)
        .any(|s| s == RunStatus::Interrupted);
    assert!(found);
}

#[test]
fn recorded_validation_errors_name_node_class_and_input() {
    let bodies: Vec<Value> = transcript("c_validation_errors.jsonl")
        .into_iter()
        .filter(|l| l["kind"] == "http_response" && l["status"] == 400)
        .map(|l| l["body_json"].clone())
        .collect();
    let texts: Vec<String> = bodies.iter().map(describe_rejection).collect();
    assert!(texts.iter().any(|t| t == "ComfyUI rejected the workflow: node 1 (EmptyImage) input 'width': Required input is missing"), "{texts:#?}");
    assert!(texts.iter().any(|t| {
        t.contains("node 1 (EmptyImage) input 'width': Value 99999 bigger than max of 16384")
    }));
    assert!(texts.iter().any(|t| t.contains("node 2 (ImageScale) input 'upscale_method': Value not in list (upscale_method: 'bogus' not in")));
    assert!(texts.iter().any(|t| {
        t.contains("Cannot execute because node NoSuchNode does not exist. (Node ID '#1')")
    }));
    let two = texts
        .iter()
        .find(|t| t.contains("Value -5 smaller than min of 1"))
        .unwrap();
    assert!(
        two.contains("node 3 (ImageBlur) input 'blur_radius'"),
        "both invalid nodes named: {two}"
    );
}

/// The frames of one socket for one prompt, from a transcript.
fn frames_for(lines: &[Value], ws: &str) -> Vec<WsMessage> {
    lines
        .iter()
        .filter(|l| l["kind"] == "ws_text" && l["ws"] == ws)
        .map(|l| WsMessage::parse(&l["json"].to_string()).unwrap())
        .collect()
}

#[test]
fn progress_over_the_recorded_chain_rises_to_99_and_never_falls() {
    let lines = transcript("a2_chain_success.jsonl");
    let frames = frames_for(&lines, "main");
    let id = frames
        .iter()
        .find_map(|m| m.prompt_id().map(str::to_owned))
        .unwrap();
    let mut t = ProgressTracker::new(&id, 4);
    let seen: Vec<u8> = frames.iter().filter_map(|m| t.apply(m)).collect();
    assert_eq!(seen, [25, 50, 75, 99]);
    assert!(frames.last().unwrap().is_done_for(&id));
}

#[test]
fn progress_counts_recorded_cached_nodes_as_done() {
    let lines = transcript("b_cache_resubmit.jsonl");
    let frames = frames_for(&lines, "main");
    let cached = frames
        .iter()
        .find_map(|m| match m {
            WsMessage::ExecutionCached { prompt_id, nodes } if !nodes.is_empty() => {
                Some((prompt_id.clone(), nodes.len()))
            }
            _ => None,
        })
        .expect("a fully cached run");
    let mut t = ProgressTracker::new(&cached.0, cached.1);
    for m in &frames {
        t.apply(m);
    }
    assert_eq!(t.percent(), 99);
}

/// Message types a client follows for its prompt, in order (statuses, progress and
/// binary frames left out: their count depends on timing and steps).
fn milestones(frames: &[WsMessage], id: &str) -> Vec<String> {
    frames
        .iter()
        .filter(|m| m.prompt_id() == Some(id))
        .filter_map(|m| match m {
            WsMessage::ExecutionStart { .. } => Some("execution_start".to_owned()),
            WsMessage::ExecutionCached { .. } => Some("execution_cached".to_owned()),
            WsMessage::Executing { node: Some(n), .. } => Some(format!("executing {n}")),
            WsMessage::Executing { node: None, .. } => Some("executing null".to_owned()),
            WsMessage::Executed { node, .. } => Some(format!("executed {node}")),
            WsMessage::ExecutionSuccess { .. } => Some("execution_success".to_owned()),
            WsMessage::ExecutionError { .. } => Some("execution_error".to_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_stand_in_follows_the_recorded_sequence() {
    let lines = transcript("a2_chain_success.jsonl");
    let recorded = frames_for(&lines, "main");
    let request = lines
        .iter()
        .find(|l| l["kind"] == "http_request" && l["path"] == "/prompt")
        .unwrap();
    let rec_id = recorded
        .iter()
        .find_map(|m| m.prompt_id().map(str::to_owned))
        .unwrap();
    let want = milestones(&recorded, &rec_id);

    let standin = StandIn::start();
    let client = ComfyClient::new(&standin.url(), "probe");
    let (mut ws, _) = tokio_tungstenite::connect_async(client.ws_url())
        .await
        .unwrap();
    client
        .submit("p-1", &request["json"]["prompt"], json!({}))
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = frame {
            let m = WsMessage::parse(t.as_str()).unwrap();
            let done = m.is_done_for("p-1");
            got.push(m);
            if done {
                break;
            }
        }
    }
    assert_eq!(milestones(&got, "p-1"), want);
    let h = client
        .history("p-1")
        .await
        .unwrap()
        .expect("history written before executing null");
    assert_eq!(h.status, RunStatus::Success);
    assert_eq!(h.files[0].filename, "studio_chain_00001_.png");
    let (len, mut body) = client.view(&h.files[0]).await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(&bytes[1..4], b"PNG");
    assert_eq!(len, Some(bytes.len() as u64));
    let q = client.queue().await.unwrap();
    assert!(q.running.is_empty() && q.pending.is_empty());
    assert_eq!(
        client.object_info().await.unwrap()["SaveImage"]["output_node"],
        true
    );
    assert_eq!(
        client.system_stats().await.unwrap()["system"]["comfyui_version"],
        "0.3.64"
    );
    // A rejected graph, as the real server answers it.
    let bad = json!({"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}});
    let err = client.submit("p-2", &bad, json!({})).await.unwrap_err();
    assert!(err.is_job_fault());
    assert_eq!(
        err.to_string(),
        "ComfyUI rejected the workflow: node 1 (EmptyImage) input 'width': Value 0 smaller than min of 1"
    );
}
