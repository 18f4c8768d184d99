//! Workflows as data: published through the API in either of ComfyUI's formats,
//! versioned, retired, seen by every process within a second; raw graphs for
//! trusted keys; hostile workflows refused with a 400 naming what is wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role as KeyRole};
use studio_core::config::Role;

use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TempDir, TestApp, smoke_api, smoke_ui};

fn real_standin() -> StandIn {
    StandIn::start_with(Knobs {
        real_info: true,
        ..Knobs::default()
    })
}

/// Waits until a backend has reported its nodes (a UI-format workflow can be
/// converted from then on).
async fn wait_reported(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = app.get("/api/workflows").await;
        if s == 200 && v["workflows"][0].get("runnable").is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "no backend reported: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    key: Option<&str>,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = app.http.request(method, app.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn publish(app: &TestApp, body: &Value) -> (u16, Value) {
    app.post_json("/api/workflows", body).await
}

async fn published_as_data_in_both_formats_and_run(kind: Backing) {
    let standin = real_standin();
    let app = TestApp::serve(kind, &standin, |_| {}).await;
    wait_reported(&app).await;

    // The API format, with no params: they are read from the graph.
    let (s, v1) = publish(
        &app,
        &json!({"name": "canvas", "description": "a flat colour", "workflow": smoke_api()}),
    )
    .await;
    assert_eq!(s, 201, "{v1}");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["converted"], Value::Null, "taken as it is");
    assert_eq!(v1["params"]["width"]["default"], 64);
    assert_eq!(
        v1["params"]["width"]["max"], 16384,
        "bounded by object_info"
    );
    assert_eq!(v1["params"]["width"]["targets"][0]["node"], "1");
    let classes = v1["requirements"]["nodes"].as_array().unwrap();
    assert!(classes.iter().any(|c| c == "ImageBlur"), "{v1}");

    // It is listed with its version and runs with an inferred parameter.
    let (_, list) = app.get("/api/workflows").await;
    let listed = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "canvas")
        .cloned()
        .unwrap();
    assert_eq!(listed["version"], 1);
    assert_eq!(listed["runnable"], true);
    let id = app
        .submit(json!({"workflow": "canvas", "prompt": "flat", "width": 32}))
        .await;
    let done = app.wait_final(&id, Duration::from_secs(15)).await;
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(done["workflow"], "canvas");
    assert_eq!(done["workflow_version"], 1);
    let graph = standin.graph_of(&id).unwrap();
    assert_eq!(graph["1"]["inputs"]["width"], 32);
    assert_eq!(
        graph["4"]["inputs"]["filename_prefix"],
        format!("studio_{id}")
    );

    // The UI format: converted on the server, the next version.
    let (s, v2) = publish(&app, &json!({"name": "canvas", "workflow": smoke_ui()})).await;
    assert_eq!(s, 201, "{v2}");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["converted"], true);
    let g = &v2["graph"];
    assert_eq!(
        g.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["1", "2", "3", "4"],
        "the note, reroute and muted saver are gone: {g}"
    );
    assert_eq!(
        g["3"]["inputs"]["image"],
        json!(["2", 0]),
        "through the reroute"
    );
    assert_eq!(g["3"]["inputs"]["blur_radius"], 2);
    assert_eq!(g["3"]["inputs"]["sigma"], 1.5);
    assert_eq!(g["1"]["_meta"]["title"], "$canvas");
    assert_eq!(
        g["2"]["_meta"]["title"], "Invert Image",
        "the class's display name"
    );
    // `$canvas` exposes the canvas's widgets the usual names do not: its
    // colour; the size keeps the usual names.
    let mut names: Vec<&str> = v2["params"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["batch_size", "canvas_color", "height", "width"],
        "{}",
        v2["params"]
    );
    // The conversion endpoint gives the same graph and stores nothing.
    let (s, conv) = app.post_json("/api/workflows/convert", &smoke_ui()).await;
    assert_eq!(s, 200, "{conv}");
    assert_eq!(&conv["prompt"], g);
    // So does checking what publishing would give: no version, nothing stored.
    let (s, checked) = app
        .post_json(
            "/api/workflows/check",
            &json!({"name": "canvas", "workflow": smoke_ui()}),
        )
        .await;
    assert_eq!(s, 200, "{checked}");
    assert_eq!(&checked["graph"], g);
    assert_eq!(checked["params"], v2["params"]);
    assert!(checked["version"].is_null(), "{checked}");
    let (s, e) = app
        .post_json(
            "/api/workflows/check",
            &json!({"name": "_x", "workflow": smoke_ui()}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("name")), "{e}");
    let (_, latest) = app.get("/api/workflows/canvas").await;
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["latest"], 2);

    // A job naming the latest runs version 2; one naming @1 runs version 1.
    let new = app
        .submit(json!({"workflow": "canvas", "prompt": "v2", "canvas_color": 255}))
        .await;
    let old = app
        .submit(json!({"workflow": "canvas@1", "prompt": "v1", "height": 24}))
        .await;
    let (new_done, old_done) = (
        app.wait_final(&new, Duration::from_secs(15)).await,
        app.wait_final(&old, Duration::from_secs(15)).await,
    );
    assert_eq!(new_done["workflow_version"], 2, "{new_done}");
    assert_eq!(old_done["workflow_version"], 1, "{old_done}");
    assert_eq!(standin.graph_of(&new).unwrap()["1"]["inputs"]["color"], 255);
    assert_eq!(
        standin.graph_of(&new).unwrap()["3"]["inputs"]["blur_radius"],
        2
    );
    assert_eq!(standin.graph_of(&old).unwrap()["1"]["inputs"]["height"], 24);
    assert_eq!(
        standin.graph_of(&old).unwrap()["3"]["inputs"]["blur_radius"],
        1
    );
    // Version 1 says what it was, and it never changes.
    let (s, one) = app.get("/api/workflows/canvas/versions/1").await;
    assert_eq!(s, 200);
    assert_eq!(one["version"], 1);
    assert_eq!(one["latest"], 2);
    assert_eq!(one["description"], "a flat colour");
    let (s, _) = app.get("/api/workflows/canvas/versions/3").await;
    assert_eq!(s, 404);
    // A version that does not exist, or a parameter version 2 does not have.
    let (s, e) = app
        .post_json(
            "/api/generate",
            &json!({"workflow": "canvas@9", "prompt": "x"}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("workflow")), "{e}");
    let (s, e) = app
        .post_json(
            "/api/generate",
            &json!({"workflow": "canvas", "prompt": "x", "canvas_width": 64}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("canvas_width")), "{e}");
    let (s, e) = app
        .post_json(
            "/api/generate",
            &json!({"workflow": "canvas", "prompt": "x", "width": 100000}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("width")), "{e}");
    app.stop().await;
}

async fn a_new_version_reaches_another_api_process_within_a_second(kind: Backing) {
    let standin = real_standin();
    let a = TestApp::serve(kind, &standin, |_| {}).await;
    let b = match kind {
        Backing::Redis => a.spawn_beside(Role::Api, |_| {}).await,
        Backing::Sqlite => {
            TestApp::spawn_with(Backing::Sqlite, Role::Api, None, a.dir.clone(), |_| {}).await
        }
    };
    let (s, _) = publish(&a, &json!({"name": "spread", "workflow": smoke_api()})).await;
    assert_eq!(s, 201);
    let mut api = smoke_api();
    api["3"]["inputs"]["blur_radius"] = json!(3);
    let (s, v2) = publish(&a, &json!({"name": "spread", "workflow": api})).await;
    assert_eq!(s, 201);
    assert_eq!(v2["version"], 2);
    let published = Instant::now();
    let seen = loop {
        let (s, v) = b.get("/api/workflows/spread").await;
        if s == 200 && v["version"] == 2 {
            break published.elapsed();
        }
        assert!(
            published.elapsed() < Duration::from_secs(5),
            "process B never saw version 2: {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("{kind:?}: version 2 seen by the other API process after {seen:?}");
    assert!(seen < Duration::from_secs(1), "{seen:?}");
    // A job submitted there runs version 2 (on a's worker).
    let id = b
        .submit(json!({"workflow": "spread", "prompt": "from b"}))
        .await;
    let done = a.wait_final(&id, Duration::from_secs(15)).await;
    assert_eq!(done["workflow_version"], 2, "{done}");
    assert_eq!(
        standin.graph_of(&id).unwrap()["3"]["inputs"]["blur_radius"],
        3
    );
    b.stop().await;
    a.stop().await;
}

async fn a_retired_workflow_takes_no_new_jobs_but_runs_those_queued(kind: Backing) {
    let standin = real_standin();
    let dir = Arc::new(TempDir::new());
    let redis = (kind == Backing::Redis).then(crate::support::RedisPrefix::new);
    let shared = redis.as_ref().map(|r| crate::support::RedisPrefix {
        url: r.url.clone(),
        prefix: r.prefix.clone(),
    });
    let api = TestApp::spawn_with(kind, Role::Api, redis, dir.clone(), |_| {}).await;
    let (s, _) = publish(&api, &json!({"name": "brief", "workflow": smoke_api()})).await;
    assert_eq!(s, 201);
    let queued = api
        .submit(json!({"workflow": "brief", "prompt": "queued before"}))
        .await;
    let (s, r) = send(
        &api,
        reqwest::Method::DELETE,
        None,
        "/api/workflows/brief",
        None,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["retired"], true);
    let (s, e) = api
        .post_json(
            "/api/generate",
            &json!({"workflow": "brief", "prompt": "too late"}),
        )
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (410, Some("workflow-retired")),
        "{e}"
    );
    let (s, e) = api
        .post_json(
            "/api/generate",
            &json!({"workflow": "brief@1", "prompt": "too late"}),
        )
        .await;
    assert_eq!(s, 410, "a version of a retired name too: {e}");
    let (_, list) = api.get("/api/workflows").await;
    assert!(
        !list["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == "brief"),
        "a retired workflow is not offered: {list}"
    );
    // Reading it says it is gone, and still shows what it was.
    for path in ["/api/workflows/brief", "/api/workflows/brief/versions/1"] {
        let (s, r) = api.get(path).await;
        assert_eq!(
            (s, r["code"].as_str()),
            (410, Some("workflow-retired")),
            "{path}: {r}"
        );
        assert_eq!(r["workflow"]["version"], 1, "{path}: {r}");
        assert_eq!(r["workflow"]["retired"], true, "{path}: {r}");
    }
    // A worker that starts now runs the queued job at its version.
    let url = standin.url();
    let worker = TestApp::spawn_with(kind, Role::Worker, shared, dir, move |a| {
        a.comfyui = vec![url];
    })
    .await;
    let done = api.wait_final(&queued, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(done["workflow_version"], 1);
    // Publishing the name again brings it back, as its next version.
    let (s, v) = publish(&api, &json!({"name": "brief", "workflow": smoke_api()})).await;
    assert_eq!((s, v["version"].as_u64()), (201, Some(2)), "{v}");
    let (s, _) = api
        .post_json(
            "/api/generate",
            &json!({"workflow": "brief", "prompt": "again"}),
        )
        .await;
    assert_eq!(s, 202);
    worker.stop().await;
    api.stop().await;
}

both_stores!(
    published_as_data_in_both_formats_and_run,
    a_new_version_reaches_another_api_process_within_a_second,
    a_retired_workflow_takes_no_new_jobs_but_runs_those_queued,
);

/// `n` nodes in a chain (API format).
fn chain(n: usize) -> Value {
    let mut g = serde_json::Map::new();
    g.insert(
        "0".into(),
        json!({"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}),
    );
    for i in 1..n {
        g.insert(
            i.to_string(),
            json!({"class_type": "ImageInvert", "inputs": {"image": [(i - 1).to_string(), 0]}}),
        );
    }
    Value::Object(g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_workflows_get_a_400_naming_what_is_wrong() {
    let standin = real_standin();
    let app = TestApp::serve(Backing::Sqlite, &standin, |_| {}).await;
    wait_reported(&app).await;
    let bad = |wf: Value| json!({"name": "bad", "workflow": wf});
    let mut cycle = smoke_api();
    cycle["2"]["inputs"]["image"] = json!(["3", 0]);
    let mut missing = smoke_api();
    missing["3"]["inputs"]["image"] = json!(["99", 0]);
    let mut unknown = smoke_api();
    unknown["2"]["class_type"] = json!("NoSuchNode");
    let mut not_list = smoke_api();
    not_list["3"]["inputs"]["image"] = json!({"node": "2"});
    let mut ui_dangling = smoke_ui();
    ui_dangling["links"][0] = json!([1, 1, 0, 77, 0, "IMAGE"]);
    ui_dangling["nodes"][1]["inputs"][0]["link"] = json!(55);
    let mut ui_unknown = smoke_ui();
    ui_unknown["nodes"][1]["type"] = json!("NoSuchNode");
    let many_ui = json!({
        "last_node_id": 10000, "links": [],
        "nodes": (0..10_000).map(|i| json!({"id": i, "type": "ImageInvert", "inputs": []})).collect::<Vec<_>>()
    });
    let cases: Vec<(&str, Value, &str)> = vec![
        ("cycle", bad(cycle), "cycle"),
        ("missing node", bad(missing), "99"),
        ("unknown class", bad(unknown), "NoSuchNode"),
        ("non-list link", bad(not_list), "node 3"),
        ("10,000 nodes", bad(chain(10_000)), "2000"),
        ("10,000 UI nodes", bad(many_ui), "5000"),
        ("UI unknown class", bad(ui_unknown), "NoSuchNode"),
        ("empty graph", bad(json!({})), "no nodes"),
        ("a list", bad(json!([1, 2])), "workflow"),
        (
            "no class_type",
            bad(json!({"1": {"inputs": {}}})),
            "class_type",
        ),
    ];
    for (what, body, says) in cases {
        let (s, e) = publish(&app, &body).await;
        assert_eq!(s, 400, "{what}: {e}");
        assert_eq!(e["field"], "workflow", "{what}: {e}");
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains(says), "{what}: {msg:?} should say {says:?}");
    }
    // A dangling UI link: what it fed is simply unfed, as the frontend sends it;
    // ComfyUI's own validation then names the input (not ours to second-guess).
    let (s, e) = app.post_json("/api/workflows/convert", &ui_dangling).await;
    assert_eq!(s, 200, "{e}");
    assert!(e["prompt"]["2"]["inputs"].get("image").is_none(), "{e}");
    // Names, params and fields.
    for (body, field) in [
        (json!({"name": "_mine", "workflow": smoke_api()}), "name"),
        (json!({"name": "a b", "workflow": smoke_api()}), "name"),
        (
            json!({"name": "x".repeat(65), "workflow": smoke_api()}),
            "name",
        ),
        (json!({"workflow": smoke_api()}), "name"),
        (
            json!({"name": "p", "workflow": smoke_api(), "params": {"w": {"type": "int", "targets": [{"node": "9", "input": "width"}]}}}),
            "params",
        ),
        (
            json!({"name": "p", "workflow": smoke_api(), "params": {"seed": "no"}}),
            "params",
        ),
        (
            json!({"name": "p", "workflow": smoke_api(), "params": {"graph": {"type": "int", "targets": []}}}),
            "params",
        ),
        (
            json!({"name": "p", "workflow": smoke_api(), "colour": 1}),
            "colour",
        ),
    ] {
        let (s, e) = publish(&app, &body).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["field"], field, "{e}");
    }
    let (s, e) = publish(&app, &json!({"name": "smoke", "workflow": smoke_api()})).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (409, Some("workflow-read-only")),
        "{e}"
    );
    // 5 MB: refused before it is read whole.
    let big = json!({"name": "big", "workflow": {"1": {"class_type": "Note", "inputs": {"text": "x".repeat(5 << 20)}}}});
    let (s, e) = publish(&app, &big).await;
    assert_eq!(s, 413, "{e}");
    // Not JSON.
    let res = app
        .http
        .post(app.url("/api/workflows"))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Nothing of all that was stored; the server is fine.
    let (_, list) = app.get("/api/workflows").await;
    assert!(
        list["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["version"].is_null())
    );
    let (s, _) = app.get("/health").await;
    assert_eq!(s, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_and_raw_graphs_need_keys_that_may() {
    let standin = real_standin();
    let app = TestApp::serve(Backing::Redis, &standin, |a| a.auth = AuthMode::Keys).await;
    let admin = app
        .new_key("ops", KeyRole::Admin, KeyLimits::default())
        .await;
    let user = app
        .new_key("user", KeyRole::User, KeyLimits::default())
        .await;
    let designer = app
        .new_key(
            "designer",
            KeyRole::User,
            KeyLimits {
                publish: true,
                ..KeyLimits::default()
            },
        )
        .await;
    let tool = app
        .new_key(
            "tool",
            KeyRole::User,
            KeyLimits {
                graphs: true,
                ..KeyLimits::default()
            },
        )
        .await;
    let post = reqwest::Method::POST;
    let body = json!({"name": "keyed", "workflow": smoke_api()});
    let (s, e) = send(
        &app,
        post.clone(),
        Some(&user),
        "/api/workflows",
        Some(&body),
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (403, Some("publish-not-allowed")),
        "{e}"
    );
    let (s, _) = send(&app, post.clone(), None, "/api/workflows", Some(&body)).await;
    assert_eq!(s, 401);
    let (s, v) = send(
        &app,
        post.clone(),
        Some(&designer),
        "/api/workflows",
        Some(&body),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = send(
        &app,
        reqwest::Method::DELETE,
        Some(&user),
        "/api/workflows/keyed",
        None,
    )
    .await;
    assert_eq!(s, 403);
    // Everyone may run it.
    let (s, v) = send(
        &app,
        post.clone(),
        Some(&user),
        "/api/generate",
        Some(&json!({"workflow": "keyed", "prompt": "mine"})),
    )
    .await;
    assert_eq!(s, 202, "{v}");

    // A raw graph: admins and --graphs keys only.
    let raw = json!({"graph": smoke_api()});
    let (s, e) = send(&app, post.clone(), Some(&user), "/api/generate", Some(&raw)).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (403, Some("graphs-not-allowed")),
        "{e}"
    );
    assert_eq!(e["field"], "graph");
    let (s, e) = send(
        &app,
        post.clone(),
        Some(&designer),
        "/api/generate",
        Some(&raw),
    )
    .await;
    assert_eq!(s, 403, "{e}");
    let mut ids = Vec::new();
    for key in [&admin, &tool] {
        let (s, v) = send(&app, post.clone(), Some(key), "/api/generate", Some(&raw)).await;
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["workflow"], "_graph");
        ids.push((key.clone(), v["job_id"].as_str().unwrap().to_owned()));
    }
    for (key, id) in &ids {
        let deadline = Instant::now() + Duration::from_secs(15);
        let done = loop {
            let (_, v) = send(
                &app,
                reqwest::Method::GET,
                Some(key),
                &format!("/api/status/{id}"),
                None,
            )
            .await;
            if v["status"] == "finished" || v["status"] == "failed" {
                break v;
            }
            assert!(Instant::now() < deadline, "{v}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert_eq!(done["status"], "finished", "{done}");
        assert_eq!(done["workflow"], "_graph");
        assert_eq!(done["prompt"], "(graph)", "a graph with no prompt text");
        assert!(
            done["params"].get("graph").is_none(),
            "the graph is not echoed: {done}"
        );
        let ran = standin.graph_of(id).unwrap();
        assert_eq!(ran["1"]["inputs"]["width"], 64, "as given");
        assert_eq!(
            ran["4"]["inputs"]["filename_prefix"],
            format!("studio_{id}")
        );
    }
    // The same checks as a published workflow.
    let mut unknown = smoke_api();
    unknown["2"]["class_type"] = json!("NoSuchNode");
    let mut huge = smoke_api();
    huge["1"]["inputs"]["width"] = json!(16384);
    huge["1"]["inputs"]["height"] = json!(16384);
    let mut cycle = smoke_api();
    cycle["2"]["inputs"]["image"] = json!(["3", 0]);
    for (graph, says) in [
        (unknown, "NoSuchNode"),
        (huge, "pixels"),
        (cycle, "cycle"),
        (json!("a string"), "JSON object"),
        (chain(3000), "2000"),
    ] {
        let (s, e) = send(
            &app,
            post.clone(),
            Some(&admin),
            "/api/generate",
            Some(&json!({"graph": graph})),
        )
        .await;
        assert_eq!(s, 400, "{says}: {e}");
        assert_eq!(e["field"], "graph", "{e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{says}: {e}");
    }
    let (s, e) = send(
        &app,
        post.clone(),
        Some(&admin),
        "/api/generate",
        Some(&json!({"graph": smoke_api(), "workflow": "smoke", "prompt": "x"})),
    )
    .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("graph")), "{e}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pushes_lists_shows_retires_and_converts() {
    use crate::cli::studio;
    let standin = real_standin();
    let app = TestApp::serve(Backing::Sqlite, &standin, |_| {}).await;
    wait_reported(&app).await;
    let dir = TempDir::new();
    let ui = dir.path().join("smoke.json");
    std::fs::write(&ui, smoke_ui().to_string()).unwrap();
    let api = dir.path().join("smoke-api.json");
    std::fs::write(&api, smoke_api().to_string()).unwrap();
    let server = ["--server", app.base.as_str()];
    let ui_path = ui.to_str().unwrap();

    let r = studio(
        &[
            &["workflows", "push", ui_path, "--name", "flat"][..],
            &server[..],
        ]
        .concat(),
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("published flat@1 (converted from the UI format)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("canvas_color"),
        "the inferred form: {}",
        r.stdout
    );
    let r = studio(
        &[
            &[
                "workflows",
                "push",
                api.to_str().unwrap(),
                "--name",
                "flat",
                "--description",
                "second",
            ][..],
            &server[..],
        ]
        .concat(),
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("published flat@2\n"), "{}", r.stdout);

    let r = studio(&[&["workflows", "list"][..], &server[..]].concat()).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("flat "))
        .unwrap_or_default();
    assert!(
        line.contains("v2") && line.contains("second"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("smoke ") && l.contains("built-in")),
        "{}",
        r.stdout
    );

    let r = studio(&[&["workflows", "show", "flat@1", "--json"][..], &server[..]].concat()).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["latest"].as_u64()),
        (Some(1), Some(2))
    );
    let r = studio(&[&["workflows", "show", "flat"][..], &server[..]].concat()).await;
    assert!(r.stdout.contains("version   2 (latest 2)"), "{}", r.stdout);
    let r = studio(&[&["workflows", "show", "nope@1"][..], &server[..]].concat()).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("no version 1") || r.stderr.contains("404"),
        "{}",
        r.stderr
    );

    let r = studio(&[&["workflows", "convert", ui_path][..], &server[..]].concat()).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let converted: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(converted["3"]["inputs"]["image"], json!(["2", 0]));

    // A raw graph from the command line (auth off: anyone here may).
    let out = TempDir::new();
    let r = studio(
        &[
            &[
                "generate",
                "--graph",
                api.to_str().unwrap(),
                "-o",
                out.path().to_str().unwrap(),
                "a graph",
            ][..],
            &server[..],
        ]
        .concat(),
    )
    .await;
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        1,
        "the picture was saved"
    );

    let r = studio(&[&["workflows", "retire", "flat"][..], &server[..]].concat()).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = studio(
        &[
            &["generate", "--workflow", "flat", "--no-wait", "x"][..],
            &server[..],
        ]
        .concat(),
    )
    .await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("retired"), "{}", r.stderr);
    app.stop().await;
}

/// The studio page: a workflow file dropped on it shows the form it gets (a dry
/// run), is published, is offered in the picker with its version, and runs; a
/// workflow no live backend can run is marked so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_publishes_a_dropped_workflow_and_runs_it() {
    use crate::support::webdriver::Browser;
    const WAIT: Duration = Duration::from_secs(20);
    let standin = real_standin();
    let app = TestApp::serve(Backing::Sqlite, &standin, |_| {}).await;
    wait_reported(&app).await;
    // One that needs a checkpoint no backend has.
    let mut needs = smoke_api();
    needs["5"] = json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "absent.safetensors"}});
    let (s, v) = publish(&app, &json!({"name": "elsewhere", "workflow": needs})).await;
    assert_eq!(s, 201, "{v}");

    let browser = Browser::start(1280, 1100).await;
    browser.goto(&app.base).await;
    browser
        .wait_for("return [...document.querySelectorAll('#workflow option')].some(o => o.value === 'elsewhere')", WAIT)
        .await;
    let marked = browser
        .exec("return [...document.querySelectorAll('#workflow option')].find(o => o.value === 'elsewhere').textContent")
        .await;
    assert!(
        marked.as_str().unwrap().contains("v1")
            && marked.as_str().unwrap().contains("no backend can run it"),
        "{marked}"
    );
    assert_ne!(
        browser
            .exec("return document.getElementById('workflow').value")
            .await,
        "elsewhere",
        "not chosen for you"
    );

    // Drop the UI-format file on the page.
    let text = serde_json::to_string(&smoke_ui().to_string()).unwrap();
    browser
        .exec(&format!(
            "document.getElementById('publish-box').open = true; \
             const dt = new DataTransfer(); \
             dt.items.add(new File([{text}], 'Flat Colour.json', {{type: 'application/json'}})); \
             document.getElementById('wf-drop').dispatchEvent(new DragEvent('drop', {{dataTransfer: dt, bubbles: true, cancelable: true}})); \
             return true;"
        ))
        .await;
    browser
        .wait_for("return !document.getElementById('wf-form').hidden && !!document.getElementById('wf-param-canvas_color')", WAIT)
        .await;
    assert_eq!(
        browser
            .exec("return document.getElementById('wf-name').value")
            .await,
        "flat-colour"
    );
    let summary = browser
        .exec("return document.getElementById('wf-summary').textContent")
        .await;
    assert!(summary.as_str().unwrap().contains("converted"), "{summary}");
    assert_eq!(
        browser.exec("const i = document.getElementById('wf-param-width'); return [i.type, i.value, i.max, i.disabled]").await,
        json!(["number", "48", "16384", true]),
        "the inferred form, typed and bounded"
    );
    // Nothing was stored by looking.
    let (s, _) = app.get("/api/workflows/flat-colour").await;
    assert_eq!(s, 404);
    // A bad name is said at once.
    let name = browser.find("#wf-name").await;
    browser.type_into(&name, " x").await;
    let error = browser
        .wait_for(
            "const e = document.getElementById('wf-error'); return !e.hidden && e.textContent",
            WAIT,
        )
        .await;
    assert!(error.as_str().unwrap().contains("name"), "{error}");
    browser
        .exec("const n = document.getElementById('wf-name'); n.value = 'flat-colour'; n.dispatchEvent(new Event('input')); return true;")
        .await;
    browser
        .wait_for("return !document.getElementById('wf-publish').disabled && document.getElementById('wf-error').hidden", WAIT)
        .await;
    let button = browser.find("#wf-publish").await;
    browser.click(&button).await;
    browser
        .wait_for("return document.getElementById('workflow').value === 'flat-colour' && !!document.getElementById('param-canvas_color')", WAIT)
        .await;
    let (s, v) = app.get("/api/workflows/flat-colour").await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(1)), "{v}");

    // Run it from the form.
    browser
        .exec("const w = document.getElementById('param-width'); w.value = '24'; return true;")
        .await;
    let prompt = browser.find("#prompt").await;
    browser.type_into(&prompt, "a flat colour").await;
    let generate = browser.find("#generate").await;
    browser.click(&generate).await;
    let job_id = browser
        .wait_for(
            "const c = document.querySelector('.job'); return c && c.dataset.jobId",
            WAIT,
        )
        .await;
    let job_id = job_id.as_str().unwrap().to_owned();
    let done = app.wait_final(&job_id, WAIT).await;
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(done["workflow"], "flat-colour");
    assert_eq!(
        standin.graph_of(&job_id).unwrap()["1"]["inputs"]["width"],
        24
    );
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("publish.png"), browser.screenshot().await).unwrap();
    app.stop().await;
}
