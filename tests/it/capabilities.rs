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

/// A job accepted before any backend reported (its backend was down), that the
/// backend lacks the checkpoint for once it comes: not sent to it, and failed,
/// saying why, once no live backend has been able to run it for
/// --unroutable-after (1 s in tests), instead of waiting for ever. A job the
/// backend can run, queued behind it, runs.
async fn a_job_no_backend_can_run_fails_after_the_grace(kind: Backing) {
    let port = crate::support::free_port();
    let app = TestApp::spawn(kind, Role::Serve, move |a| {
        a.comfyui = vec![format!("http://127.0.0.1:{port}")]
    })
    .await;
    let id = app.submit(sdxl_job(SDXL, 0)).await;
    let standin = StandIn::start_on(
        ([127, 0, 0, 1], port).into(),
        Knobs {
            checkpoints: vec![SD15.into()],
            ..Knobs::default()
        },
    );
    let runnable = app
        .submit(json!({"prompt": "a lighthouse", "workflow": "smoke"}))
        .await;
    let v = app.wait_final(&runnable, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "failed", "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.starts_with("model-unavailable: ")
            && error
                .contains("\"sd_xl_base_1.0.safetensors\" for CheckpointLoaderSimple.ckpt_name"),
        "{error}"
    );
    assert_eq!(
        standin.submitted(&id),
        0,
        "never sent to a backend without its model"
    );
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

const SD15: &str = "v1-5-pruned-emaonly.safetensors";
const SDXL: &str = "sd_xl_base_1.0.safetensors";

/// Two backends with one checkpoint each, their offers read by the API.
async fn two_backends(kind: Backing, duration: Duration) -> (StandIn, StandIn, TestApp) {
    let knobs = |ckpt: &str| Knobs {
        checkpoints: vec![ckpt.to_owned()],
        duration,
        ..Knobs::default()
    };
    let (a, b) = (
        StandIn::start_with(knobs(SD15)),
        StandIn::start_with(knobs(SDXL)),
    );
    let urls = vec![a.url(), b.url()];
    let app = TestApp::spawn(kind, Role::Serve, move |s| s.comfyui = urls).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while wait_for_offers(&app).await["choices"]
        .as_array()
        .unwrap()
        .len()
        < 2
    {
        assert!(tokio::time::Instant::now() < deadline, "both offers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (a, b, app)
}

fn sdxl_job(ckpt: &str, n: usize) -> Value {
    json!({"prompt": format!("lighthouse {n}"), "workflow": "sdxl", "checkpoint": ckpt, "steps": 2})
}

/// Jobs queued for a model only one backend has all run there, none fails on the
/// other; and the four jobs the second backend cannot run, queued first, do not
/// keep it waiting (no head-of-line blocking): it starts its first job while the
/// first backend is still on its first one.
async fn jobs_go_only_where_their_model_is_and_never_block_others(kind: Backing) {
    let (a, b, app) = two_backends(kind, Duration::from_millis(600)).await;
    let mut jobs = Vec::new();
    for n in 0..4 {
        jobs.push((app.submit(sdxl_job(SD15, n)).await, a.url()));
    }
    for n in 0..4 {
        jobs.push((app.submit(sdxl_job(SDXL, n)).await, b.url()));
    }
    for (id, url) in &jobs {
        let v = app.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(v["status"], "finished", "{v}");
        assert_eq!(
            v["backend"].as_str(),
            Some(url.as_str()),
            "ran where its model is: {v}"
        );
    }
    for (standin, ckpt) in [(&a, SD15), (&b, SDXL)] {
        let runs = standin.runs();
        assert_eq!(runs.len(), 4, "four each");
        for r in &runs {
            let graph = standin.graph_of(&r.prompt_id).unwrap();
            assert_eq!(graph["4"]["inputs"]["ckpt_name"], ckpt, "{graph}");
        }
    }
    let (ra, rb) = (a.runs(), b.runs());
    assert!(
        rb[0].started < ra[0].ended,
        "the second backend started at once, not after the jobs ahead it cannot run \
         (its first start {:?} after the first backend's first end)",
        rb[0].started.duration_since(ra[0].ended)
    );
}

/// A backend that just ran a checkpoint takes the next job needing the same one
/// before an older job needing another (within the affinity window): the model
/// stays loaded.
async fn a_backend_prefers_jobs_for_the_model_it_has_loaded(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(500),
        ..Knobs::default()
    });
    let url = standin.url();
    let app = TestApp::spawn(kind, Role::Serve, move |s| {
        s.comfyui = vec![url];
        s.prefetch = 0;
    })
    .await;
    wait_for_offers(&app).await;
    let first = app.submit(sdxl_job(SD15, 0)).await;
    app.wait_for(&first, Duration::from_secs(10), |v| {
        v["status"] == "processing"
    })
    .await;
    let other = app.submit(sdxl_job(SDXL, 1)).await;
    let same = app.submit(sdxl_job(SD15, 2)).await;
    for id in [&first, &other, &same] {
        let v = app.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(v["status"], "finished", "{v}");
    }
    let order: Vec<String> = standin.runs().into_iter().map(|r| r.prompt_id).collect();
    let pos = |id: &str| order.iter().position(|p| p == id).unwrap();
    assert!(
        pos(&same) < pos(&other),
        "the job for the loaded checkpoint ran first: {order:?}"
    );
}

both_stores!(
    a_job_no_backend_can_run_is_refused_at_submit,
    with_no_backend_reported_yet_jobs_are_accepted,
    one_backend_with_the_model_is_enough,
    jobs_go_only_where_their_model_is_and_never_block_others,
    a_backend_prefers_jobs_for_the_model_it_has_loaded,
    a_job_no_backend_can_run_fails_after_the_grace,
);
