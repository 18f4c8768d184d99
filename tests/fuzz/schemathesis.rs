//! Schemathesis (from PyPI, a tool nobody here wrote) against `/openapi.json` of a
//! running `studio serve`, on both stores: every check it has (no 5xx, answers
//! matching the documented statuses, content types, headers and schemas, invalid
//! input refused, valid input accepted, links followed), bounded in examples and
//! time.
//!
//! Left out, and why: the two event streams (`…/events`), whose answers do not end
//! while a job runs; they have their own tests (events.rs, limits.rs). OpenAI's
//! routes (`/v1/`), whose contract is OpenAI's: tests/it/openai.rs drives them
//! with OpenAI's own SDK. Every other
//! documented status is reachable: jobs finish on a ComfyUI stand-in, so outputs
//! exist and the document's links lead to them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use studio_core::config::Role;

use crate::support::standin::StandIn;
use crate::support::{Backing, TestApp};

/// The schemathesis that `scripts/test` installs (a pinned version in a virtual
/// environment under `target/`), or `STUDIO_SCHEMATHESIS`.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("STUDIO_SCHEMATHESIS") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/schemathesis");
    assert!(
        p.exists(),
        "schemathesis is required for this test and is not at {}; scripts/test installs it \
         (python3 -m venv target/tools/venv && target/tools/venv/bin/pip install schemathesis==4.32.5)",
        p.display()
    );
    p
}

async fn schemathesis_finds_nothing_wrong(kind: Backing) {
    let tool = schemathesis();
    // Its `/object_info` as a real ComfyUI's, so that workflows can be published
    // and converted.
    let standin = StandIn::start_with(crate::support::standin::Knobs {
        real_info: true,
        ..Default::default()
    });
    let url = standin.url();
    // On Redis with auth on and an admin key (every operation, the key management
    // too, is reachable); on SQLite with auth off, the prototype's open contract.
    let auth = kind == Backing::Redis;
    let mut app = TestApp::spawn(kind, Role::Serve, move |a| {
        a.comfyui = vec![url];
        a.max_queued = 10_000;
        // Each batch the fuzzer sends runs on the stand-in: kept small.
        a.max_batch = 4;
        if auth {
            a.auth = studio_core::auth::AuthMode::Keys;
        }
    })
    .await;
    let mut auth_header = Vec::new();
    if auth {
        let secret = app
            .new_key("fuzzer", studio_core::auth::Role::Admin, Default::default())
            .await;
        let value = format!("Bearer {}", secret);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value.parse().unwrap());
        app.http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        auth_header = vec!["--header".to_owned(), format!("Authorization: {value}")];
    }
    // Finished jobs with outputs, for the operations that read them.
    for seed in 0..3 {
        let id = app
            .submit(json!({"prompt": "a fuzzed lighthouse", "workflow": "smoke", "seed": seed}))
            .await;
        let v = app.wait_final(&id, Duration::from_secs(20)).await;
        assert_eq!(v["status"], "finished", "{v}");
    }
    // A picture the image and mask parameters can name (the hook puts its id in).
    let picture = crate::support::png(16, 16, [40, 80, 120]);
    let up: serde_json::Value = app
        .http
        .post(app.url("/api/uploads"))
        .header("content-type", "image/png")
        .body(picture)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload_id = up["upload_id"].as_str().expect("uploaded").to_owned();
    // Which model files the backend has is known only at run time: wait until the
    // worker has said, and hand the hook each model parameter's choices.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let model_choices = loop {
        let v: serde_json::Value = app
            .http
            .get(app.url("/api/workflows"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut choices = serde_json::Map::new();
        for w in v["workflows"].as_array().unwrap() {
            let mut params = serde_json::Map::new();
            for p in w["params"].as_array().unwrap() {
                if p["from_backends"] == true {
                    params.insert(
                        p["name"].as_str().unwrap().to_owned(),
                        serde_json::json!({"choices": p["choices"], "max_length": p["max_length"]}),
                    );
                }
            }
            if !params.is_empty() {
                choices.insert(w["name"].as_str().unwrap().to_owned(), params.into());
            }
        }
        if !choices.is_empty() {
            break serde_json::Value::Object(choices);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backend offers: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let base = app.base.clone();
    // The one rule JSON Schema cannot state (the pixel budget), for the hook.
    let budgets: serde_json::Map<String, serde_json::Value> =
        studio_core::workflow::WorkflowRegistry::built_in()
            .iter()
            .map(|w| (w.name.clone(), json!(w.pixel_budget())))
            .collect();
    let hooks = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    // Whatever it writes (reports, caches) goes to a directory of its own.
    let workdir = crate::support::TempDir::new();
    let cwd = workdir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(tool)
            .current_dir(cwd)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", &hooks)
            .env(
                "STUDIO_PIXEL_BUDGETS",
                serde_json::Value::Object(budgets).to_string(),
            )
            .env("STUDIO_FUZZ_UPLOAD_ID", &upload_id)
            .env("STUDIO_FUZZ_MODEL_CHOICES", model_choices.to_string())
            .env("STUDIO_FUZZ_GRAPH", crate::support::smoke_api().to_string())
            .env(
                "STUDIO_FUZZ_UI_WORKFLOW",
                crate::support::smoke_ui().to_string(),
            )
            .env(
                "STUDIO_DEFAULT_WORKFLOW",
                studio_core::workflow::DEFAULT_WORKFLOW,
            )
            .arg("--config-file")
            .arg(hooks.join("schemathesis.toml"))
            .args([
                "run",
                &format!("{base}/openapi.json"),
                "--checks",
                "all",
                "--max-examples",
                "20",
                "--max-time",
                "100",
                // One worker: CPython 3.11 can fail inside its `ast` module when
                // schemathesis's threads parse concurrently ("AST constructor
                // recursion depth mismatch"), an interpreter bug, not a finding.
                "--workers",
                "1",
                "--request-timeout",
                "10",
                // The event streams never end; uploads take bytes that must be a
                // real picture (tests/it/uploads.rs fuzzes them itself); OpenAI's
                // routes are OpenAI's API, checked with OpenAI's own SDK
                // (tests/it/openai.rs).
                "--exclude-path-regex",
                "/events$|^/api/uploads$|^/v1/|^/mcp$",
                "--seed",
                "20261128",
                "--generation-database",
                "none",
                "--no-color",
                "--output-truncate",
                "true",
            ])
            .args(&auth_header)
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // It really tested every operation it selected (all but the event streams).
    let count = |label: &str| -> Option<usize> {
        let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
        line.trim_start()[label.len()..]
            .trim()
            .split('/')
            .next()?
            .parse()
            .ok()
    };
    let selected = count("Selected:").expect("a summary");
    assert!(selected >= 15, "{text}");
    assert_eq!(count("Tested:"), Some(selected), "{text}");
    assert!(!text.contains("Errored"), "{text}");
}

both_stores!(schemathesis_finds_nothing_wrong);
