//! The HTTP API: the prototype's contract to the letter, our additions, and input
//! validation (every refusal a JSON 4xx naming the field; never a 500).

use serde_json::{Value, json};
use studio_core::config::Role;

use crate::support::{Backing, TestApp};

async fn api(kind: Backing) -> TestApp {
    TestApp::spawn(kind, Role::Api, |_| {}).await
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error message: {body}"
    );
}

async fn health_reports_the_store(kind: Backing) {
    let app = api(kind).await;
    let (code, v) = app.get("/health").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "ok");
    match kind {
        Backing::Redis => assert_eq!(v["redis"], "healthy"),
        Backing::Sqlite => assert_eq!(v["redis"], "not used (embedded store)"),
    }
    assert_eq!(
        v["store"],
        if kind == Backing::Redis {
            "redis"
        } else {
            "sqlite"
        }
    );
}

async fn a_submission_is_accepted_and_its_status_has_the_prototype_shape(kind: Backing) {
    let app = api(kind).await;
    let (code, v) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "a cyberpunk cat", "seed": 42, "workflow": "sdxl"}),
        )
        .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["status"], "queued");
    let id = v["job_id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    let s = app.status(id).await;
    assert_eq!(s["job_id"], id);
    assert_eq!(s["status"], "queued");
    assert!(
        s["progress"].is_u64() && s["progress"] == 0,
        "progress is an integer: {s}"
    );
    assert_eq!(s["image_url"], "");
    assert_eq!(s["error"], "");
    assert_eq!(s["workflow"], "sdxl");
    assert_eq!(s["seed"], 42);
    assert_eq!(s["attempt"], 0);
    assert_eq!(s["queue_position"], 0);
    assert!(
        s["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with("+00:00")),
        "{s}"
    );
    assert!(s["updated_at"].is_string());
    // A second job waits behind the first.
    let second = app.submit(json!({"prompt": "a dog"})).await;
    assert_eq!(app.status(&second).await["queue_position"], 1);
}

async fn a_missing_seed_is_random_and_recorded(kind: Backing) {
    let app = api(kind).await;
    let (_, v) = app
        .post_json("/api/generate", &json!({"prompt": "x"}))
        .await;
    let seed = v["seed"].as_u64().expect("the chosen seed is returned");
    assert_eq!(
        app.status(v["job_id"].as_str().unwrap()).await["seed"],
        seed
    );
}

async fn bad_submissions_get_a_json_4xx_naming_the_field(kind: Backing) {
    let app = api(kind).await;
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (json!({}), 400, "invalid-prompt", Some("prompt")),
        (json!({"prompt": ""}), 400, "invalid-prompt", Some("prompt")),
        (
            json!({"prompt": "   \t\n"}),
            400,
            "invalid-prompt",
            Some("prompt"),
        ),
        (json!({"prompt": 12}), 400, "invalid-prompt", Some("prompt")),
        (
            json!({"prompt": "x".repeat(10_001)}),
            400,
            "prompt-too-long",
            Some("prompt"),
        ),
        (
            json!({"prompt": "x", "seed": -1}),
            400,
            "invalid-seed",
            Some("seed"),
        ),
        (
            json!({"prompt": "x", "seed": 1.5}),
            400,
            "invalid-seed",
            Some("seed"),
        ),
        (
            json!({"prompt": "x", "seed": "7"}),
            400,
            "invalid-seed",
            Some("seed"),
        ),
        (
            json!({"prompt": "x", "seed": 18446744073709551616.0}),
            400,
            "invalid-seed",
            Some("seed"),
        ),
        (
            json!({"prompt": "x", "workflow": "flux"}),
            400,
            "unknown-workflow",
            Some("workflow"),
        ),
        (
            json!({"prompt": "x", "workflow": 3}),
            400,
            "invalid-workflow",
            Some("workflow"),
        ),
        (
            json!({"prompt": "x", "colour": "red"}),
            400,
            "unknown-field",
            Some("colour"),
        ),
        (
            json!({"prompt": "x", "steps": 0}),
            400,
            "invalid-param",
            Some("steps"),
        ),
        (
            json!({"prompt": "x", "cfg": "high"}),
            400,
            "invalid-param",
            Some("cfg"),
        ),
        (
            json!({"prompt": "x", "sampler": "bogus"}),
            400,
            "invalid-param",
            Some("sampler"),
        ),
        (json!(["prompt", "x"]), 400, "invalid-body", None),
    ];
    for (body, status, code, field) in cases {
        let (s, v) = app.post_json("/api/generate", &body).await;
        assert_error(s, &v, status, code);
        assert_eq!(v["field"].as_str(), field, "{body} -> {v}");
    }
    let (_, v) = app
        .post_json("/api/generate", &json!({"prompt": "x", "workflow": "flux"}))
        .await;
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("sd15, sd15-inpaint, sdxl, sdxl-img2img, smoke, smoke-img2img"),
        "lists the known workflows: {v}"
    );
}

async fn malformed_bodies_and_content_types_are_refused_as_json(kind: Backing) {
    let app = api(kind).await;
    let post = |ctype: Option<&'static str>, body: Vec<u8>| {
        let mut req = app.http.post(app.url("/api/generate")).body(body);
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.expect("a JSON body"))
        }
    };
    let (s, v) = post(Some("application/json"), b"{\"prompt\": \"x\"".to_vec()).await;
    assert_error(s, &v, 400, "invalid-json");
    let (s, v) = post(Some("text/plain"), b"{\"prompt\": \"x\"}".to_vec()).await;
    assert_error(s, &v, 415, "unsupported-media-type");
    let (s, v) = post(None, b"{\"prompt\": \"x\"}".to_vec()).await;
    assert_error(s, &v, 415, "unsupported-media-type");
    let (s, v) = post(
        Some("application/json; charset=utf-8"),
        b"{\"prompt\": \"ok\"}".to_vec(),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let huge = format!("{{\"prompt\": \"{}\"}}", "x".repeat(300 * 1024));
    let (s, v) = post(Some("application/json"), huge.into_bytes()).await;
    assert_error(s, &v, 413, "payload-too-large");
    let (s, v) = post(Some("application/json"), vec![0xff, 0xfe, 0x00]).await;
    assert_error(s, &v, 400, "invalid-json");
}

async fn unknown_and_malformed_job_ids_get_json_errors(kind: Backing) {
    let app = api(kind).await;
    let (s, v) = app
        .get(&format!("/api/status/{}", uuid::Uuid::new_v4()))
        .await;
    assert_error(s, &v, 404, "job-not-found");
    for bad in [
        "a%20b",
        "..%2F..%2Fetc",
        "%00",
        &"a".repeat(129),
        "caf%C3%A9",
    ] {
        let (s, v) = app.get(&format!("/api/status/{bad}")).await;
        assert_error(s, &v, 400, "invalid-job-id");
    }
    let (s, v) = app
        .post_json(&format!("/api/jobs/{}/cancel", "x%20y"), &json!({}))
        .await;
    assert_error(s, &v, 400, "invalid-job-id");
}

async fn unknown_routes_and_methods_are_json(kind: Backing) {
    let app = api(kind).await;
    let (s, v) = app.get("/api/nope").await;
    assert_error(s, &v, 404, "not-found");
    let res = app
        .http
        .delete(app.url("/api/generate"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "method-not-allowed");
}

async fn cancel_fails_a_queued_job_at_once_and_refuses_a_final_one(kind: Backing) {
    let app = api(kind).await;
    let id = app.submit(json!({"prompt": "x"})).await;
    let (s, v) = app
        .post_json(&format!("/api/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["status"].as_str(),
            v["error"].as_str(),
            v["cancelled"].as_bool()
        ),
        (Some("failed"), Some("cancelled"), Some(true))
    );
    let st = app.status(&id).await;
    assert_eq!(st["status"], "failed");
    assert_eq!(st["error"], "cancelled");
    let (s, v) = app
        .post_json(&format!("/api/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_error(s, &v, 409, "job-final");
    assert!(
        v["error"].as_str().unwrap().contains("already failed"),
        "{v}"
    );
    let (s, v) = app
        .post_json(
            &format!("/api/jobs/{}/cancel", uuid::Uuid::new_v4()),
            &json!({}),
        )
        .await;
    assert_error(s, &v, 404, "job-not-found");
}

async fn jobs_are_listed_newest_first_with_pagination(kind: Backing) {
    let app = api(kind).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.submit(json!({"prompt": format!("job {i}")})).await);
    }
    let (s, page) = app.get("/api/jobs?limit=2").await;
    assert_eq!(s, 200);
    let got: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[4].as_str(), ids[3].as_str()]);
    let cursor = page["next_cursor"].as_str().expect("more pages");
    let (_, page2) = app.get(&format!("/api/jobs?limit=2&cursor={cursor}")).await;
    let got: Vec<&str> = page2["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let (_, queued) = app.get("/api/jobs?status=queued&limit=100").await;
    assert_eq!(queued["jobs"].as_array().unwrap().len(), 5);
    for (q, code) in [
        ("status=running", "invalid-status"),
        ("limit=0", "invalid-limit"),
        ("limit=abc", "invalid-limit"),
        ("limit=101", "invalid-limit"),
        ("cursor=xyz", "invalid-cursor"),
        ("color=red", "invalid-query"),
    ] {
        let (s, v) = app.get(&format!("/api/jobs?{q}")).await;
        assert_error(s, &v, 400, code);
    }
}

async fn workflows_are_listed_with_their_parameters(kind: Backing) {
    let app = api(kind).await;
    let (s, v) = app.get("/api/workflows").await;
    assert_eq!(s, 200);
    assert_eq!(v["default"], "sdxl");
    let names: Vec<&str> = v["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "sd15",
            "sd15-inpaint",
            "sdxl",
            "sdxl-img2img",
            "smoke",
            "smoke-img2img"
        ]
    );
    let sdxl = v["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "sdxl")
        .unwrap();
    let steps = sdxl["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "steps")
        .unwrap();
    assert_eq!(
        (
            steps["type"].as_str(),
            steps["min"].as_u64(),
            steps["max"].as_u64()
        ),
        (Some("int"), Some(1), Some(150))
    );
    assert_eq!(sdxl["params"][0]["name"], "prompt");
    assert_eq!(sdxl["params"][0]["required"], true);
    assert!(
        steps.get("targets").is_none(),
        "graph internals stay inside"
    );
}

async fn cors_allows_only_loopback_origins_by_default(kind: Backing) {
    let app = api(kind).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/api/generate"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    // The prototype's front end in development (another port on this machine).
    for origin in [
        "http://localhost:3000",
        "http://127.0.0.1:5173",
        "http://[::1]:8080",
    ] {
        let res = preflight(origin).await.unwrap();
        assert!(res.status().is_success());
        assert_eq!(res.headers()["access-control-allow-origin"], origin);
    }
    let res = preflight("http://front.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

async fn stored_files_that_do_not_exist_are_404_never_500(kind: Backing) {
    let app = api(kind).await;
    for path in [
        "/images/abc/x.png",
        "/images/abc/..%2F..%2Fstudio.db",
        "/images/..%2F/studio.db",
        "/images/abc/.hidden",
    ] {
        let (s, v) = app.get(path).await;
        assert_eq!(s, 404, "{path}: {v}");
        assert_eq!(v["code"], "file-not-found");
    }
}

both_stores!(
    health_reports_the_store,
    a_submission_is_accepted_and_its_status_has_the_prototype_shape,
    a_missing_seed_is_random_and_recorded,
    bad_submissions_get_a_json_4xx_naming_the_field,
    malformed_bodies_and_content_types_are_refused_as_json,
    unknown_and_malformed_job_ids_get_json_errors,
    unknown_routes_and_methods_are_json,
    cancel_fails_a_queued_job_at_once_and_refuses_a_final_one,
    jobs_are_listed_newest_first_with_pagination,
    workflows_are_listed_with_their_parameters,
    cors_allows_only_loopback_origins_by_default,
    stored_files_that_do_not_exist_are_404_never_500,
);

#[tokio::test]
async fn cors_can_be_restricted_to_listed_origins() {
    let app = TestApp::spawn(Backing::Sqlite, Role::Api, |a| {
        a.cors_origins = "https://studio.example".into()
    })
    .await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/api/generate"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let ok = preflight("https://studio.example").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://studio.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // Naming origins replaces the loopback default.
    let local = preflight("http://localhost:3000").await.unwrap();
    assert!(local.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn every_origin_only_when_star_is_named() {
    let app = TestApp::spawn(Backing::Sqlite, Role::Api, |a| a.cors_origins = "*".into()).await;
    let res = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/api/generate"))
        .header("origin", "http://front.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
}
