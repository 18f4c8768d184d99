//! End to end: `studio serve` (in-process, port 0) with the ComfyUI stand-in, over
//! real HTTP: jobs run, progress rises, outputs are stored and served, errors are
//! actionable, cancel works in both places, backends fail over, sockets may fail.

use std::time::Duration;

use serde_json::{Value, json};
use studio_core::config::{Role, ServerArgs};

use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TempDir, TestApp};

async fn serve(
    kind: Backing,
    backends: &[&StandIn],
    configure: impl FnOnce(&mut ServerArgs),
) -> TestApp {
    let urls: Vec<String> = backends.iter().map(|b| b.url()).collect();
    TestApp::spawn(kind, Role::Serve, move |a| {
        a.comfyui = urls;
        configure(a);
    })
    .await
}

/// Reads the `tEXt` chunks of a PNG.
fn png_text(png: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut i = 8;
    while i + 8 <= png.len() {
        let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
        let kind = &png[i + 4..i + 8];
        if kind == b"tEXt" {
            let data = &png[i + 8..i + 8 + len];
            let nul = data.iter().position(|&b| b == 0).unwrap();
            out.push((
                String::from_utf8_lossy(&data[..nul]).into(),
                String::from_utf8_lossy(&data[nul + 1..]).into(),
            ));
        }
        i += 12 + len;
    }
    out
}

async fn a_job_runs_end_to_end_and_its_image_is_served(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(800),
        steps: 8,
        ..Knobs::default()
    });
    let app = serve(kind, &[&standin], |_| {}).await;
    let prompt = "a \"quoted\" {cat} with ünïcödé, emoji 🐱 and a\nnewline \\ backslash";
    let id = app.submit(json!({"prompt": prompt, "workflow": "smoke", "seed": 0x123456, "width": 32, "height": 16})).await;

    // Watch progress rise while it runs.
    let mut seen = Vec::new();
    let last = loop {
        let v = app.status(&id).await;
        if v["status"] == "processing" {
            seen.push(v["progress"].as_u64().unwrap());
        }
        if v["status"] == "finished" || v["status"] == "failed" {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(last["status"], "finished", "{last}");
    assert_eq!(last["progress"], 100);
    assert_eq!(last["error"], "");
    assert_eq!(last["attempt"], 1);
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes backwards: {seen:?}"
    );
    assert!(
        seen.iter().any(|p| *p > 0 && *p < 100),
        "intermediate progress seen: {seen:?}"
    );
    assert!(
        seen.iter().all(|p| *p < 100),
        "100 only when finished: {seen:?}"
    );

    // The graph the backend got: our parameters, as JSON values.
    let graph = standin.graph_of(&id).unwrap();
    assert_eq!(graph["1"]["inputs"]["width"], 32);
    assert_eq!(graph["1"]["inputs"]["height"], 16);
    assert_eq!(graph["1"]["inputs"]["color"], 0x123456);
    assert_eq!(
        graph["4"]["inputs"]["filename_prefix"],
        format!("studio_{id}")
    );

    // The image: served at image_url, the very bytes the backend made.
    let url = last["image_url"].as_str().unwrap();
    assert!(url.starts_with(&format!("/images/{id}/")), "{url}");
    let res = app.http.get(app.url(url)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert!(
        res.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let bytes = res.bytes().await.unwrap();
    let filename = url.rsplit('/').next().unwrap();
    assert_eq!(bytes.as_ref(), standin.file(filename).unwrap().as_slice());
    let outputs = last["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0]["kind"], "image");
    assert_eq!(outputs[0]["url"], url);

    // The prompt, exactly as sent, in the PNG's metadata (via extra_pnginfo).
    let texts = png_text(&bytes);
    let studio = texts
        .iter()
        .find(|(k, _)| k == "studio")
        .expect("a studio text chunk");
    let meta: Value = serde_json::from_str(&studio.1).unwrap();
    assert_eq!(meta["prompt"], prompt);
    assert_eq!(meta["job_id"], id.as_str());
    assert_eq!(standin.submitted(&id), 1);
}

async fn a_batch_gives_every_image(kind: Backing) {
    let standin = StandIn::start();
    let app = serve(kind, &[&standin], |_| {}).await;
    let id = app
        .submit(json!({"prompt": "three", "workflow": "smoke", "batch_size": 3}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let outputs = v["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 3);
    assert_eq!(v["image_url"], outputs[0]["url"]);
    for o in outputs {
        let res = app
            .http
            .get(app.url(o["url"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.bytes().await.unwrap().len() as u64,
            o["size"].as_u64().unwrap()
        );
    }
}

async fn a_prompt_with_quotes_and_braces_reaches_the_graph_intact(kind: Backing) {
    let standin = StandIn::start();
    let app = serve(kind, &[&standin], |_| {}).await;
    let prompt = r#"{"prompt": "injected"}", "text": 1} ' ; DROP TABLE jobs; -- 漢字 ✓"#;
    let id = app
        .submit(json!({"prompt": prompt, "negative_prompt": "blurry \"bad\"", "steps": 3, "cfg": 4.5, "sampler": "dpmpp_2m", "width": 512, "height": 768}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let graph = standin.graph_of(&id).unwrap();
    assert_eq!(graph["6"]["inputs"]["text"], prompt);
    assert_eq!(graph["7"]["inputs"]["text"], "blurry \"bad\"");
    assert_eq!(graph["3"]["inputs"]["steps"], 3);
    assert_eq!(graph["3"]["inputs"]["cfg"], 4.5);
    assert_eq!(graph["3"]["inputs"]["sampler_name"], "dpmpp_2m");
    assert_eq!(graph["5"]["inputs"]["height"], 768);
    assert_eq!(graph["3"]["inputs"]["seed"], v["seed"]);
}

async fn an_execution_error_fails_the_job_without_a_retry(kind: Backing) {
    let standin = StandIn::start();
    let app = serve(kind, &[&standin], |_| {}).await;
    let id = app
        .submit(
            json!({"prompt": "x", "workflow": "smoke", "width": 8, "height": 8, "blur_radius": 31}),
        )
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "failed");
    let error = v["error"].as_str().unwrap();
    assert!(error.starts_with("ComfyUI failed while running node 3 (ImageBlur): RuntimeError: Argument #4: Padding size"), "{error}");
    assert_eq!(v["attempt"], 1, "the job's own fault is not retried");
    assert_eq!(standin.submitted(&id), 1);
}

async fn a_validation_error_names_node_class_and_input(kind: Backing) {
    let standin = StandIn::start();
    let templates = TempDir::new();
    std::fs::write(
        templates.path().join("broken.json"),
        json!({"name": "broken", "params": {"prompt": {"type": "string", "targets": []}},
            "graph": {"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
                      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}})
        .to_string(),
    )
    .unwrap();
    let dir = templates.path().to_path_buf();
    let app = serve(kind, &[&standin], move |a| a.workflows = Some(dir)).await;
    let id = app
        .submit(json!({"prompt": "x", "workflow": "broken"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(
        v["error"],
        "ComfyUI rejected the workflow: node 1 (EmptyImage) input 'width': Value 0 smaller than min of 1"
    );
    assert_eq!(v["attempt"], 1);
}

async fn cancel_while_waiting_in_comfyui_removes_it_from_its_queue(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(1500),
        ..Knobs::default()
    });
    let app = serve(kind, &[&standin], |_| {}).await;
    let first = app
        .submit(json!({"prompt": "first", "workflow": "smoke"}))
        .await;
    let second = app
        .submit(json!({"prompt": "second", "workflow": "smoke"}))
        .await;
    // With prefetch 1 the second is submitted while the first runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while standin.submitted(&second) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "second job never reached ComfyUI"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(standin.is_queued_or_running(&second));
    assert_eq!(standin.running().as_deref(), Some(first.as_str()));
    let (code, _) = app
        .post_json(&format!("/api/jobs/{second}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 202, "a running job's cancel is a request");
    let v = app.wait_final(&second, Duration::from_secs(5)).await;
    assert_eq!(
        (v["status"].as_str(), v["error"].as_str()),
        (Some("failed"), Some("cancelled"))
    );
    assert!(
        !standin.is_queued_or_running(&second),
        "removed from ComfyUI's queue"
    );
    let v = app.wait_final(&first, Duration::from_secs(10)).await;
    assert_eq!(v["status"], "finished");
    assert!(
        standin.runs().iter().all(|r| r.prompt_id != second),
        "the cancelled prompt never ran"
    );
}

async fn cancel_while_running_interrupts_that_prompt_and_the_backend_goes_on(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(4000),
        ..Knobs::default()
    });
    let app = serve(kind, &[&standin], |_| {}).await;
    let victim = app
        .submit(json!({"prompt": "stop me", "workflow": "smoke"}))
        .await;
    app.wait_for(&victim, Duration::from_secs(10), |v| {
        v["status"] == "processing"
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while standin.running().as_deref() != Some(victim.as_str()) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next = app
        .submit(json!({"prompt": "next", "workflow": "smoke"}))
        .await;
    standin.knobs(|k| k.duration = Duration::from_millis(100));
    let asked = tokio::time::Instant::now();
    let (code, _) = app
        .post_json(&format!("/api/jobs/{victim}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 202);
    let v = app.wait_final(&victim, Duration::from_secs(5)).await;
    assert_eq!(
        (
            v["status"].as_str(),
            v["error"].as_str(),
            v["cancelled"].as_bool()
        ),
        (Some("failed"), Some("cancelled"), Some(true))
    );
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "cancelled within a few seconds: {:?}",
        asked.elapsed()
    );
    // ComfyUI stops a prompt at its next node: give it that long.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let run = loop {
        if let Some(r) = standin.runs().into_iter().find(|r| r.prompt_id == victim) {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the interrupted run never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        run.ended - run.started < Duration::from_millis(3500),
        "interrupted, not run to the end"
    );
    let v = app.wait_final(&next, Duration::from_secs(10)).await;
    assert_eq!(
        v["status"], "finished",
        "the backend went on to the next job: {v}"
    );
}

async fn a_silent_socket_still_finishes_by_polling(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        silent: true,
        ..Knobs::default()
    });
    let app = serve(kind, &[&standin], |a| {
        a.poll_interval = Duration::from_millis(300)
    })
    .await;
    let id = app
        .submit(json!({"prompt": "quiet", "workflow": "smoke"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(15)).await;
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(standin.submitted(&id), 1);
}

async fn dropped_sockets_reconnect_and_jobs_still_finish(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(1200),
        ..Knobs::default()
    });
    let app = serve(kind, &[&standin], |_| {}).await;
    let id = app
        .submit(json!({"prompt": "bumpy", "workflow": "smoke"}))
        .await;
    app.wait_for(&id, Duration::from_secs(10), |v| {
        v["status"] == "processing"
    })
    .await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        standin.drop_sockets();
    }
    let v = app.wait_final(&id, Duration::from_secs(15)).await;
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(v["attempt"], 1);
    assert_eq!(standin.submitted(&id), 1, "no second submission");
}

async fn a_backend_killed_mid_job_is_replaced_by_another(kind: Backing) {
    let slow = Knobs {
        duration: Duration::from_millis(3000),
        ..Knobs::default()
    };
    let mut a = StandIn::start_with(slow.clone());
    let mut b = StandIn::start_with(slow);
    let app = serve(kind, &[&a, &b], |_| {}).await;
    let id = app
        .submit(json!({"prompt": "survivor", "workflow": "smoke"}))
        .await;
    let v = app
        .wait_for(&id, Duration::from_secs(10), |v| {
            v["status"] == "processing" && v["backend"].is_string()
        })
        .await;
    let first_backend = v["backend"].as_str().unwrap().to_owned();
    let (victim, other) = if first_backend == a.url() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while victim.running().as_deref() != Some(id.as_str()) {
        assert!(tokio::time::Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    other.knobs(|k| k.duration = Duration::from_millis(200));
    victim.crash();
    let v = app.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(v["attempt"], 2);
    assert_eq!(v["backend"], other.url());
    assert!(
        v["last_error"].as_str().unwrap().contains(&first_backend),
        "the failed backend is named: {v}"
    );
    let (_, health) = app.get("/health").await;
    let states: Vec<(String, String)> = health["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["url"].as_str().unwrap().to_owned(),
                b["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(first_backend.clone(), "down".into())),
        "{states:?}"
    );
    assert!(
        health["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["url"] == first_backend.as_str()
                && !b["last_error"].as_str().unwrap().is_empty())
    );
}

async fn a_backend_that_comes_back_rejoins(kind: Backing) {
    let mut standin = StandIn::start();
    let app = serve(kind, &[&standin], |_| {}).await;
    let first = app
        .submit(json!({"prompt": "before", "workflow": "smoke"}))
        .await;
    assert_eq!(
        app.wait_final(&first, Duration::from_secs(10)).await["status"],
        "finished"
    );
    standin.crash();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, health) = app.get("/health").await;
    assert_eq!(health["backends"][0]["state"], "down", "{health}");
    let during = app
        .submit(json!({"prompt": "during", "workflow": "smoke"}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.status(&during).await["status"],
        "queued",
        "a down backend claims nothing"
    );
    standin.restart();
    let v = app.wait_final(&during, Duration::from_secs(15)).await;
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(v["attempt"], 1);
    let (_, health) = app.get("/health").await;
    assert_eq!(health["backends"][0]["state"], "up");
}

async fn failing_submissions_are_retried_then_fail_with_the_backend_named(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        fail_submits: 100,
        ..Knobs::default()
    });
    let app = serve(kind, &[&standin], |a| a.max_attempts = 2).await;
    let id = app
        .submit(json!({"prompt": "doomed", "workflow": "smoke"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "failed");
    let error = v["error"].as_str().unwrap();
    assert!(error.starts_with("gave up after 2 attempts"), "{error}");
    assert!(
        error.contains(&standin.url()) && error.contains("HTTP 500"),
        "names the backend and how it failed: {error}"
    );
    assert_eq!(v["attempt"], 2);
}

async fn many_jobs_on_two_backends_all_finish_once(kind: Backing) {
    let a = StandIn::start_with(Knobs {
        duration: Duration::from_millis(30),
        ..Knobs::default()
    });
    let b = StandIn::start_with(Knobs {
        duration: Duration::from_millis(30),
        ..Knobs::default()
    });
    let app = serve(kind, &[&a, &b], |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(
            app.submit(json!({"prompt": format!("job {i}"), "workflow": "smoke"}))
                .await,
        );
    }
    for id in &ids {
        let v = app.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(v["status"], "finished", "{v}");
        assert_eq!(a.submitted(id) + b.submitted(id), 1, "run exactly once");
    }
    assert!(
        a.submitted_total() > 0 && b.submitted_total() > 0,
        "both backends used"
    );
}

both_stores!(
    a_job_runs_end_to_end_and_its_image_is_served,
    a_batch_gives_every_image,
    a_prompt_with_quotes_and_braces_reaches_the_graph_intact,
    an_execution_error_fails_the_job_without_a_retry,
    a_validation_error_names_node_class_and_input,
    cancel_while_waiting_in_comfyui_removes_it_from_its_queue,
    cancel_while_running_interrupts_that_prompt_and_the_backend_goes_on,
    a_silent_socket_still_finishes_by_polling,
    dropped_sockets_reconnect_and_jobs_still_finish,
    a_backend_killed_mid_job_is_replaced_by_another,
    a_backend_that_comes_back_rejoins,
    failing_submissions_are_retried_then_fail_with_the_backend_named,
    many_jobs_on_two_backends_all_finish_once,
    every_output_kind_is_collected_and_odd_names_are_refused,
);

async fn every_output_kind_is_collected_and_odd_names_are_refused(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        extra_outputs: true,
        ..Knobs::default()
    });
    let app = serve(kind, &[&standin], |_| {}).await;
    let id = app
        .submit(json!({"prompt": "a clip with sound", "workflow": "smoke"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let outputs = v["outputs"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = outputs
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap(),
                o["content_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("image", "image/png"),
            ("audio", "audio/flac"),
            ("video", "video/mp4")
        ],
        "{v}"
    );
    let names: Vec<&str> = outputs
        .iter()
        .map(|o| o["filename"].as_str().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("..") && !n.contains('/')),
        "{names:?}"
    );
    assert!(
        names[1].starts_with("clips_"),
        "the subfolder becomes part of the name: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("_temp_")),
        "temp previews are not outputs"
    );
    assert!(v["image_url"].as_str().unwrap().ends_with(".png"));
    for o in outputs {
        let res = app
            .http
            .get(app.url(o["url"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["content-type"],
            o["content_type"].as_str().unwrap()
        );
        let original = o["filename"].as_str().unwrap().trim_start_matches("clips_");
        assert_eq!(
            res.bytes().await.unwrap().as_ref(),
            standin.file(original).unwrap().as_slice()
        );
    }
    let escaped = app.dir.path().join("images").join("escape.png");
    assert!(
        !escaped.exists() && !app.dir.path().join("escape.png").exists(),
        "nothing written outside the job's folder"
    );
}

mod cached {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;
    use studio_core::comfy::ComfyClient;
    use studio_core::job::JobStatus;
    use studio_core::storage::FsImageStore;
    use studio_core::store::WorkerId;
    use studio_core::worker::attempt::RunContext;
    use studio_core::worker::backend::Backend;
    use studio_core::worker::{WorkerConfig, run_one};
    use studio_core::workflow::WorkflowRegistry;
    use studio_core::workflow::request::parse_submission;

    use crate::support::standin::StandIn;
    use crate::support::{Backing, fast_settings, test_store};

    /// A job's first run finished on ComfyUI, but its history is gone (ComfyUI keeps
    /// 10,000 entries; an operator may clear them). The rerun is the identical graph,
    /// which ComfyUI serves entirely from its cache: no node runs, no file is written,
    /// and the job must still finish with its outputs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fully_cached_run_still_finishes_with_its_outputs() {
        let standin = StandIn::start();
        let t = test_store(Backing::Sqlite, fast_settings());
        let workflows = Arc::new(WorkflowRegistry::built_in());
        let job = parse_submission(
            &json!({"prompt": "cached", "workflow": "smoke", "seed": 5}),
            &workflows,
        )
        .unwrap();
        t.store.enqueue(&job).await.unwrap();
        let graph = workflows.get("smoke").unwrap().render(
            job.id.as_str(),
            &job.prompt,
            job.seed,
            &job.params,
        );
        let client = ComfyClient::new(&standin.url(), "earlier-run");
        client
            .submit(job.id.as_str(), &graph, json!({}))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while standin.runs().is_empty() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let files_before = standin.files();
        standin.clear_history();

        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let ctx = RunContext {
            store: t.store.clone(),
            catalog: studio_core::catalog::Catalog::new(workflows, t.store.clone()),
            images: Arc::new(FsImageStore::new(t.dir.path().join("images"))),
            config: Arc::new(WorkerConfig {
                poll_interval: Duration::from_millis(200),
                ..WorkerConfig::default()
            }),
            backend: Arc::new(Backend::start(
                &standin.url(),
                "studio-test",
                stop_rx.clone(),
            )),
            abort: stop_rx,
            offers: Default::default(),
            pauses: tokio::sync::watch::channel(Default::default()).1,
            ran: Default::default(),
            metrics: studio_core::metrics::Metrics::new(
                studio_core::workflow::WorkflowRegistry::built_in()
                    .names()
                    .map(str::to_owned),
            ),
        };
        let worker = WorkerId::from_string("w-cached".into());
        t.store.heartbeat(&worker).await.unwrap();
        assert!(
            run_one(ctx, &worker, Duration::from_secs(1)).await.unwrap(),
            "a job was run"
        );

        let rec = t.store.get(&job.id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Finished, "{rec:?}");
        assert_eq!(rec.outputs.len(), 1);
        assert_eq!(
            standin.submitted(job.id.as_str()),
            2,
            "submitted again (no history to adopt)"
        );
        assert_eq!(
            standin.files(),
            files_before,
            "served from the cache: no new file"
        );
        let stored = std::fs::read(
            t.dir
                .path()
                .join("images")
                .join(job.id.as_str())
                .join(&rec.outputs[0].filename),
        )
        .unwrap();
        assert_eq!(stored, standin.file(&rec.outputs[0].filename).unwrap());
    }
}
