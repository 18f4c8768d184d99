//! Backends say what they can run: each worker reads its ComfyUI's `/object_info`
//! and publishes the node classes and model files; a submission that no live
//! backend can run is refused at once (`400 model-unavailable`, naming what is
//! missing and what there is), and `/api/workflows` offers the files the backends
//! have as the choices of model parameters.

use std::time::Duration;

use serde_json::{Value, json};
use studio_core::config::Role;

use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TestApp};

/// Waits until `/api/workflows` shows the backends' files for sdxl's checkpoint.
async fn wait_for_offers(app: &TestApp) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, v) = app.get("/api/workflows").await;
        let sdxl = v["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "sdxl")
            .cloned()
            .unwrap();
        let ckpt = sdxl["params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "checkpoint")
            .cloned()
            .unwrap();
        if ckpt["from_backends"] == true {
            return ckpt;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend's models never showed: {ckpt}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_job_no_backend_can_run_is_refused_at_submit(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        checkpoints: vec!["v1-5-pruned-emaonly.safetensors".into()],
        ..Knobs::default()
    });
    let url = standin.url();
    let app = TestApp::spawn(kind, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let ckpt = wait_for_offers(&app).await;
    assert_eq!(
        ckpt["choices"],
        json!(["v1-5-pruned-emaonly.safetensors"]),
        "{ckpt}"
    );

    // sdxl's default checkpoint is not there: refused before it is queued.
    let (code, v) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "a lighthouse", "workflow": "sdxl"}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["code"], "model-unavailable");
    assert_eq!(
        v["field"], "checkpoint",
        "the parameter that chose the file: {v}"
    );
    let why = v["error"].as_str().unwrap();
    assert!(
        why.contains("\"sd_xl_base_1.0.safetensors\" for CheckpointLoaderSimple.ckpt_name")
            && why.contains("available: v1-5-pruned-emaonly.safetensors"),
        "{why}"
    );
    assert_eq!(standin.submitted_total(), 0, "nothing reached ComfyUI");
    let (_, list) = app.get("/api/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing was queued: {list}");

    // The same workflow with a checkpoint the backend has, and sd15, run.
    for body in [
        json!({"prompt": "a lighthouse", "workflow": "sdxl", "checkpoint": "v1-5-pruned-emaonly.safetensors", "steps": 2}),
        json!({"prompt": "a lighthouse", "workflow": "sd15", "steps": 2}),
    ] {
        let id = app.submit(body.clone()).await;
        let v = app.wait_final(&id, Duration::from_secs(20)).await;
        assert_eq!(v["status"], "finished", "{body} -> {v}");
    }

    // A node no backend has is refused too, naming it.
    let dir = crate::support::TempDir::new();
    std::fs::write(
        dir.path().join("exotic.json"),
        json!({"name": "exotic", "params": {"prompt": {"type": "string", "targets": []}},
               "graph": {"1": {"class_type": "NoSuchUpscaler", "inputs": {}},
                         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}})
        .to_string(),
    )
    .unwrap();
    let workflows = dir.path().to_path_buf();
    let api = match kind {
        Backing::Redis => {
            app.spawn_beside(Role::Api, move |a| a.workflows = Some(workflows))
                .await
        }
        Backing::Sqlite => return,
    };
    let (code, v) = api
        .post_json(
            "/api/generate",
            &json!({"prompt": "x", "workflow": "exotic"}),
        )
        .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("model-unavailable")),
        "{v}"
    );
    assert!(
        v["error"].as_str().unwrap().contains("node NoSuchUpscaler"),
        "{v}"
    );
    assert_eq!(v["field"], "workflow");
}

async fn with_no_backend_reported_yet_jobs_are_accepted(kind: Backing) {
    // An API with no worker anywhere: nobody has said what it has.
    let app = TestApp::spawn(kind, Role::Api, |_| {}).await;
    let (code, v) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "a lighthouse", "workflow": "sdxl"}),
        )
        .await;
    assert_eq!(code, 202, "{v}");
    let (_, list) = app.get("/api/workflows").await;
    let sdxl = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "sdxl")
        .unwrap();
    let ckpt = sdxl["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "checkpoint")
        .unwrap();
    assert!(ckpt.get("from_backends").is_none(), "{ckpt}");
}

async fn one_backend_with_the_model_is_enough(kind: Backing) {
    let a = StandIn::start_with(Knobs {
        checkpoints: vec!["v1-5-pruned-emaonly.safetensors".into()],
        ..Knobs::default()
    });
    let b = StandIn::start_with(Knobs {
        checkpoints: vec!["sd_xl_base_1.0.safetensors".into()],
        ..Knobs::default()
    });
    let urls = vec![a.url(), b.url()];
    let app = TestApp::spawn(kind, Role::Serve, move |s| s.comfyui = urls).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ckpt = wait_for_offers(&app).await;
        if ckpt["choices"].as_array().unwrap().len() == 2 {
            assert_eq!(
                ckpt["choices"],
                json!([
                    "sd_xl_base_1.0.safetensors",
                    "v1-5-pruned-emaonly.safetensors"
                ])
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ckpt}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, v) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "a lighthouse", "workflow": "sdxl", "steps": 2}),
        )
        .await;
    assert_eq!(code, 202, "one backend has sdxl: {v}");
    let (code, v) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "a lighthouse", "workflow": "sdxl", "checkpoint": "flux1-dev.safetensors"}),
        )
        .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("model-unavailable")),
        "{v}"
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("available: sd_xl_base_1.0.safetensors, v1-5-pruned-emaonly.safetensors"),
        "what every backend has together: {v}"
    );
}

both_stores!(
    a_job_no_backend_can_run_is_refused_at_submit,
    with_no_backend_reported_yet_jobs_are_accepted,
    one_backend_with_the_model_is_enough,
);
