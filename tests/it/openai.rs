//! The OpenAI Images API (`/v1/`) with OpenAI's own Python SDK (PyPI, installed
//! by `scripts/test`) as the client, unchanged but for its base URL: pictures
//! as base64 and as URLs, the workflows as models, OpenAI's error shapes and
//! exceptions; and a client that goes away cancels its jobs.

use std::time::Duration;

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role as KeyRole};

use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openais_sdk_makes_pictures_on_the_farm() {
    let standin = StandIn::start();
    let app = TestApp::serve(Backing::Redis, &standin, |a| a.auth = AuthMode::Keys).await;
    let key = app
        .new_key("chat", KeyRole::User, KeyLimits::default())
        .await;
    let v = crate::support::python_json(
        "openai/client.py",
        &[&app.base, &key],
        Duration::from_secs(120),
    )
    .await;
    // Two decodable pictures (the stand-in's are always 64×64), two seeds.
    assert_eq!(v["b64_sizes"], json!([[64, 64], [64, 64]]), "{v}");
    assert_eq!(v["distinct"], true, "two pictures, two seeds: {v}");
    assert_eq!(v["url_size"], json!([64, 64]), "{v}");
    // The size asked for reached the graph of each job.
    // The edit ran on the backend with the uploaded picture loaded.
    let page = app
        .store
        .list(&studio_core::store::ListQuery {
            status: None,
            limit: 10,
            cursor: None,
            owner: None,
        })
        .await
        .unwrap();
    let edit = page
        .jobs
        .iter()
        .find(|j| j.workflow == "smoke-img2img")
        .expect("the edit's job");
    let g = standin.graph_of(&edit.id).unwrap();
    let loaded = g
        .as_object()
        .unwrap()
        .values()
        .find(|n| n["class_type"] == "LoadImage")
        .map(|n| n["inputs"]["image"].clone());
    assert!(
        loaded
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty()),
        "{g}"
    );
    let mut sizes: Vec<(Value, Value)> = page
        .jobs
        .iter()
        .map(|j| {
            let g = standin.graph_of(&j.id).unwrap();
            (
                g["1"]["inputs"]["width"].clone(),
                g["1"]["inputs"]["height"].clone(),
            )
        })
        .collect();
    // (The edit's job has no canvas: its picture is its size.)
    sizes.retain(|s| !s.0.is_null());
    sizes.sort_by_key(|s| s.0.as_u64());
    assert_eq!(
        sizes,
        [
            (json!(32), json!(32)),
            (json!(64), json!(48)),
            (json!(64), json!(48))
        ]
    );
    assert!(
        v["models"].as_array().unwrap().iter().any(|m| m == "smoke"),
        "{v}"
    );
    assert_eq!(
        v["bad_size"],
        json!({"status": 400, "type": "invalid_request_error", "param": "size"})
    );
    assert_eq!(
        v["bad_model"],
        json!({"status": 404, "code": "model_not_found"})
    );
    assert_eq!(v["edit"], json!([64, 64]), "an edited picture: {v}");
    assert_eq!(
        v["edit_mask"],
        json!({"status": 400, "param": "mask"}),
        "{v}"
    );
    assert_eq!(
        v["wrong_key"],
        json!({"status": 401, "type": "authentication_error"})
    );
    app.stop().await;
}

/// A client that gives up waiting cancels the jobs its request made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_jobs() {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_secs(30),
        ..Knobs::default()
    });
    let app = TestApp::serve(Backing::Sqlite, &standin, |_| {}).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let r = impatient
        .post(app.url("/v1/images/generations"))
        .json(&json!({"model": "smoke", "prompt": "never mind", "n": 2}))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, page) = app.get("/api/jobs?limit=10").await;
        let jobs = page["jobs"].as_array().unwrap().clone();
        assert_eq!(jobs.len(), 2, "{page}");
        if jobs
            .iter()
            .all(|j| j["status"] == "failed" && j["error"] == "cancelled")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}
