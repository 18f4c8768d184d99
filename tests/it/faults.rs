//! Fault tests with real processes: a `studio worker` killed with SIGKILL while it
//! holds a job, `studio serve` on the embedded store killed and restarted, Redis
//! going away and coming back. Everything on loopback, bounded in time.

use std::path::Path;
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::json;
use studio_core::config::Role;

use crate::support::proc::{PrivateRedis, Proc, get, submit, wait_status};
use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, RedisPrefix, TempDir, TestApp};

fn worker_env(p: &RedisPrefix, comfy: &str, data: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", p.url.clone()),
        ("STUDIO_REDIS_PREFIX", p.prefix.clone()),
        ("COMFYUI_URL", comfy.to_owned()),
        ("STUDIO_DATA_DIR", data.display().to_string()),
        ("STUDIO_WORKER_TTL", "1s".into()),
        ("STUDIO_HEALTH_INTERVAL", "200ms".into()),
        ("STUDIO_POLL_INTERVAL", "300ms".into()),
        ("STUDIO_RETRY_BASE", "100ms".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_replaced_and_the_gpu_work_is_done_once() {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(2500),
        ..Knobs::default()
    });
    let data = std::sync::Arc::new(TempDir::new());
    let api = TestApp::spawn_with(
        Backing::Redis,
        Role::Api,
        Some(RedisPrefix::new()),
        data.clone(),
        |_| {},
    )
    .await;
    let p = api.redis.as_ref().unwrap();
    let env = worker_env(p, &standin.url(), data.path());
    let mut first = Proc::spawn(&["worker"], &env, data.path().join("worker1.log"));
    let id = api
        .submit(json!({"prompt": "survive a crash", "workflow": "smoke"}))
        .await;

    // Wait until the first worker holds the job and ComfyUI is running it.
    let held = api
        .wait_for(&id, Duration::from_secs(15), |v| {
            v["status"] == "processing"
        })
        .await;
    assert!(
        held["worker_id"].is_null(),
        "internal lease fields stay inside: {held}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while standin.running().as_deref() != Some(id.as_str()) {
        assert!(Instant::now() < deadline, "ComfyUI never started the job");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = p.conn();
    let lists: Vec<String> = c
        .keys(format!("{{{}job_queue}}:processing:*", p.prefix))
        .unwrap();
    assert_eq!(
        lists.len(),
        1,
        "the job sits in the first worker's processing list"
    );
    assert!(
        lists[0].contains(&format!(":{}:", first.pid())),
        "{lists:?}"
    );
    first.kill9();

    let _second = Proc::spawn(&["worker"], &env, data.path().join("worker2.log"));
    let v = api.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(v["attempt"], 2, "{v}");
    assert_eq!(
        standin.submitted(&id),
        1,
        "the second worker adopted the run instead of submitting again"
    );
    let lists: Vec<String> = c
        .keys(format!("{{{}job_queue}}:processing:*", p.prefix))
        .unwrap();
    for l in &lists {
        let n: i64 = c.llen(l).unwrap();
        assert_eq!(n, 0, "{l} is empty");
    }
    let res = api
        .http
        .get(api.url(v["image_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the image is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_survives_kill_9_of_the_whole_service() {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(1500),
        ..Knobs::default()
    });
    let data = TempDir::new();
    let env = vec![
        ("STUDIO_DATA_DIR", data.path().display().to_string()),
        ("COMFYUI_URL", standin.url()),
        ("PORT", "0".to_owned()),
        ("STUDIO_HEALTH_INTERVAL", "200ms".into()),
        ("STUDIO_POLL_INTERVAL", "300ms".into()),
    ];
    let mut first = Proc::spawn(&["serve"], &env, data.path().join("first.log"));
    let base = first.wait_listening();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            submit(
                &base,
                json!({"prompt": format!("job {i}"), "workflow": "smoke"}),
            )
            .await,
        );
    }
    wait_status(&base, &ids[0], Duration::from_secs(15), |v| {
        v["status"] == "processing"
    })
    .await;
    first.kill9();

    let second = Proc::spawn(&["serve"], &env, data.path().join("second.log"));
    let base = second.wait_listening();
    let v = get(&format!("{base}/api/status/{}", ids[2])).await;
    assert!(
        v["status"] == "queued" || v["status"] == "processing",
        "still there after kill -9: {v}"
    );
    for id in &ids {
        let v = wait_status(&base, id, Duration::from_secs(30), |v| {
            v["status"] == "finished" || v["status"] == "failed"
        })
        .await;
        assert_eq!(v["status"], "finished", "{v}");
    }
    let v = get(&format!("{base}/api/status/{}", ids[0])).await;
    assert_eq!(
        v["attempt"], 2,
        "the job held at the kill was claimed again: {v}"
    );
    for id in &ids {
        assert_eq!(standin.submitted(id), 1, "{id} ran once on the GPU");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_503_fast_and_recovers_without_a_restart() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    // The worker's ComfyUI is down at first, so the jobs stay queued over the outage.
    let mut standin = StandIn::start();
    standin.crash();
    let comfy = standin.url();
    let app = TestApp::spawn_with(
        Backing::Sqlite,
        Role::Serve,
        None,
        std::sync::Arc::new(TempDir::new()),
        move |a| {
            a.store.redis_url = Some(url);
            a.comfyui = vec![comfy];
        },
    )
    .await;
    assert_eq!(app.get("/health").await.1["redis"], "healthy");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            app.submit(json!({"prompt": format!("before {i}"), "workflow": "smoke"}))
                .await,
        );
    }
    // appendfsync everysec: what was acknowledged more than a second ago is on disk.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill9();

    for (method, path) in [
        ("POST", "/api/generate"),
        ("GET", "/api/status/x"),
        ("GET", "/health"),
        ("GET", "/api/jobs"),
    ] {
        let started = Instant::now();
        let req = match method {
            "POST" => app
                .http
                .post(app.url(path))
                .json(&json!({"prompt": "during"})),
            _ => app
                .http
                .get(app.url(path.replace("/x", &format!("/{}", ids[0])).as_str())),
        };
        let res = req.send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(res.status().as_u16(), 503, "{method} {path}");
        let v: serde_json::Value = res.json().await.expect("a JSON body");
        assert!(
            took < Duration::from_millis(1500),
            "{method} {path} answered in {took:?}"
        );
        if path == "/health" {
            assert!(
                v["redis"].as_str().unwrap().starts_with("unavailable"),
                "{v}"
            );
        } else {
            assert_eq!(v["code"], "store-unavailable", "{v}");
        }
    }

    redis.boot();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, v) = app.get("/health").await;
        if code == 200 {
            assert_eq!(v["redis"], "healthy");
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        assert_eq!(
            app.status(id).await["status"],
            "queued",
            "acknowledged before the outage, kept"
        );
    }
    let (_, page) = app.get("/api/jobs?limit=100").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 20);
    let after = app
        .submit(json!({"prompt": "after", "workflow": "smoke"}))
        .await;
    assert_eq!(app.status(&after).await["queue_position"], 20);
    // The worker recovered too, without a restart: once ComfyUI is back, every job runs.
    standin.restart();
    for id in ids.iter().chain([&after]) {
        let v = app.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(v["status"], "finished", "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_file_has_the_store_first_then_requests_and_job_changes() {
    let standin = StandIn::start();
    let data = TempDir::new();
    let env = vec![
        ("STUDIO_DATA_DIR", data.path().display().to_string()),
        ("COMFYUI_URL", standin.url()),
        ("PORT", "0".to_owned()),
        ("STUDIO_HEALTH_INTERVAL", "200ms".into()),
        ("STUDIO_TYPO", "1".into()),
    ];
    let mut server = Proc::spawn(&["serve"], &env, data.path().join("backend.log"));
    let base = server.wait_listening();
    let id = submit(&base, json!({"prompt": "logged", "workflow": "smoke"})).await;
    wait_status(&base, &id, Duration::from_secs(15), |v| {
        v["status"] == "finished"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    let log = std::fs::read_to_string(&server.log).unwrap();
    let first = log.lines().next().unwrap();
    assert!(
        first.contains("store: sqlite (embedded) at"),
        "first line names the store: {first}"
    );
    assert!(
        log.contains("STUDIO_TYPO is not a Studio Core setting"),
        "unknown settings are flagged"
    );
    assert!(
        log.lines().any(|l| l.contains("method=POST")
            && l.contains("route=/api/generate")
            && l.contains("status=202")
            && l.contains("ms=")),
        "a line per request:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("route=/api/status/{job_id}") && l.contains("status=200"))
    );
    for change in ["job queued", "job processing", "job finished"] {
        assert!(
            log.lines().any(|l| l.contains(change) && l.contains(&id)),
            "{change} for {id}:\n{log}"
        );
    }
}
