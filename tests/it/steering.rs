//! Steering the queue, on both stores: while paused, submissions queue and none
//! starts; resume starts them in order; a drain answers only when nothing runs;
//! a paused backend leaves the others working; dead letters are requeued as new
//! jobs with `retry_of`; a failed job is retried by its owner; only admins steer.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role};

use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TestApp};

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    app.post_json(path, &body).await
}

async fn pause_queues_without_starting_and_resume_starts_in_order(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(50),
        ..Knobs::default()
    });
    let app = TestApp::serve(kind, &standin, |_| {}).await;
    let (s, v) = post(&app, "/api/admin/pause", json!({})).await;
    assert_eq!((s, &v["farm"]), (200, &json!(true)), "{v}");
    // Dispatchers read the pause within a quarter of a second.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            app.submit(json!({"prompt": format!("p{i}"), "workflow": "smoke"}))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in &ids {
        let j = app.status(id).await;
        assert_eq!(j["status"], "queued", "nothing starts while paused: {j}");
    }
    assert_eq!(standin.submitted_total(), 0);
    let (_, v) = app.get("/api/admin/pause").await;
    assert_eq!(v["farm"], true);
    let (s, v) = post(&app, "/api/admin/resume", json!({})).await;
    assert_eq!((s, &v["farm"]), (200, &json!(false)), "{v}");
    for id in &ids {
        let j = app.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(j["status"], "finished", "{j}");
    }
    let order: Vec<String> = standin.submissions().into_iter().map(|(p, _)| p).collect();
    assert_eq!(order, ids, "started in the order they were submitted");
}

async fn a_drain_answers_when_nothing_runs(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(1500),
        ..Knobs::default()
    });
    let app = TestApp::serve(kind, &standin, |_| {}).await;
    let running = app
        .submit(json!({"prompt": "long", "workflow": "smoke"}))
        .await;
    app.wait_for(&running, Duration::from_secs(10), |j| {
        j["status"] == "processing"
    })
    .await;
    // Claimed too, maybe: a worker keeps the next prompt queued on its ComfyUI.
    let next = app
        .submit(json!({"prompt": "next", "workflow": "smoke"}))
        .await;
    let started = Instant::now();
    let res = app
        .http
        .post(app.url("/api/admin/drain"))
        .json(&json!({"timeout": 20}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        (v["drained"].as_bool(), v["running"].as_u64()),
        (Some(true), Some(0)),
        "{v}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the running job"
    );
    assert_eq!(
        app.status(&running).await["status"],
        "finished",
        "the running job finished"
    );
    assert_ne!(app.status(&next).await["status"], "processing");
    // Paused: a new job waits.
    let waiting = app
        .submit(json!({"prompt": "after", "workflow": "smoke"}))
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.status(&waiting).await["status"], "queued");
    // A drain that cannot finish in time says so, and stays paused.
    post(&app, "/api/admin/resume", json!({})).await;
    app.wait_for(&waiting, Duration::from_secs(10), |j| {
        j["status"] == "processing"
    })
    .await;
    let (s, v) = post(&app, "/api/admin/drain", json!({"timeout": 0})).await;
    assert_eq!((s, v["drained"].as_bool()), (202, Some(false)), "{v}");
    assert_eq!(v["running"], 1);
    assert_eq!(v["paused"]["farm"], true);
    // Bad options name the field.
    let (s, v) = post(&app, "/api/admin/drain", json!({"timeout": 99999})).await;
    assert_eq!((s, v["field"].as_str()), (400, Some("timeout")), "{v}");
    let (s, v) = post(&app, "/api/admin/pause", json!({"backend": 7})).await;
    assert_eq!((s, v["field"].as_str()), (400, Some("backend")), "{v}");
    let (s, v) = post(&app, "/api/admin/pause", json!({"everything": true})).await;
    assert_eq!((s, v["field"].as_str()), (400, Some("everything")), "{v}");
}

async fn a_paused_backend_leaves_the_others_working(kind: Backing) {
    let a = StandIn::start();
    let b = StandIn::start();
    let (ua, ub) = (a.url(), b.url());
    let app = TestApp::serve(kind, &a, move |args| args.comfyui = vec![ua, ub]).await;
    let (_, health) = app.get("/health").await;
    let names: Vec<String> = health["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["url"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2, "{health}");
    let (s, v) = post(&app, "/api/admin/pause", json!({"backend": names[0]})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["backends"], json!([names[0]]));
    tokio::time::sleep(Duration::from_millis(600)).await;
    for i in 0..6 {
        let id = app
            .submit(json!({"prompt": format!("b{i}"), "workflow": "smoke"}))
            .await;
        let j = app.wait_final(&id, Duration::from_secs(20)).await;
        assert_eq!(j["status"], "finished");
    }
    let paused = if names[0] == a.url() { &a } else { &b };
    let working = if names[0] == a.url() { &b } else { &a };
    assert_eq!(
        paused.submitted_total(),
        0,
        "the paused backend got nothing"
    );
    assert_eq!(working.submitted_total(), 6);
}

async fn dead_letters_are_requeued_with_retry_of(kind: Backing) {
    // Every submission to the backend fails; one attempt each: dead letters.
    let standin = StandIn::start_with(Knobs {
        fail_submits: 5,
        ..Knobs::default()
    });
    let app = TestApp::serve(kind, &standin, |a| a.max_attempts = 1).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.submit(json!({"prompt": format!("d{i}"), "workflow": "smoke", "seed": i}))
                .await,
        );
    }
    for id in &ids {
        let j = app.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(j["status"], "failed", "{j}");
    }
    let (s, dead) = app.get("/api/admin/dead").await;
    assert_eq!(s, 200, "{dead}");
    assert_eq!(dead["dead"].as_array().unwrap().len(), 5, "{dead}");
    let (s, v) = post(&app, "/api/admin/dead/requeue", json!({})).await;
    assert_eq!(s, 200, "{v}");
    let requeued = v["requeued"].as_array().unwrap();
    assert_eq!(requeued.len(), 5, "{v}");
    for r in requeued {
        let new = r["new_job_id"].as_str().unwrap();
        let j = app.wait_final(new, Duration::from_secs(20)).await;
        assert_eq!(j["status"], "finished", "runs again: {j}");
        assert_eq!(j["retry_of"], r["job_id"]);
        let old = app.status(r["job_id"].as_str().unwrap()).await;
        assert_eq!(j["seed"], old["seed"], "the same job again");
        assert_eq!(j["prompt"], old["prompt"]);
    }
    let (_, dead) = app.get("/api/admin/dead").await;
    assert_eq!(
        dead["dead"].as_array().unwrap().len(),
        0,
        "off the list: {dead}"
    );
    let (s, v) = post(
        &app,
        "/api/admin/dead/requeue",
        json!({"job_ids": ["nope"]}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["skipped"][0]["job_id"], "nope");
}

async fn a_failed_job_is_retried_by_its_owner_and_only_admins_steer(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        fail_submits: 1,
        ..Knobs::default()
    });
    let app = TestApp::serve(kind, &standin, |a| {
        a.auth = AuthMode::Keys;
        a.max_attempts = 1;
    })
    .await;
    let user = app.new_key("user", Role::User, KeyLimits::default()).await;
    let other = app.new_key("other", Role::User, KeyLimits::default()).await;
    let admin = app
        .new_key("admin", Role::Admin, KeyLimits::default())
        .await;
    let send = |key: &str, path: &str, body: Value| {
        app.http
            .post(app.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let res = send(
        &user,
        "/api/generate",
        json!({"prompt": "once more", "workflow": "smoke", "seed": 3}),
    )
    .await
    .unwrap();
    let id = res.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_for_as(Some(&user), &id, Duration::from_secs(20), |v| {
        v["status"] == "failed"
    })
    .await;
    // Another key cannot see it; its owner retries it.
    let res = send(&other, &format!("/api/jobs/{id}/retry"), json!({}))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = send(&user, &format!("/api/jobs/{id}/retry"), json!({}))
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let new: Value = res.json().await.unwrap();
    let new_id = new["job_id"].as_str().unwrap().to_owned();
    assert_eq!(new["seed"], 3);
    let done = app
        .wait_for_as(Some(&user), &new_id, Duration::from_secs(20), |v| {
            v["status"] == "finished"
        })
        .await;
    assert_eq!(done["retry_of"], id.as_str());
    let first = app.status_as(Some(&user), &id).await;
    assert_eq!(done["owner"], first["owner"]);
    // A job that did not fail is not retried.
    let res = send(&user, &format!("/api/jobs/{new_id}/retry"), json!({}))
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    // Only admins steer.
    for path in [
        "/api/admin/pause",
        "/api/admin/resume",
        "/api/admin/drain",
        "/api/admin/dead/requeue",
    ] {
        let res = send(&user, path, json!({})).await.unwrap();
        assert_eq!(res.status(), 403, "{path}");
    }
    let res = app
        .http
        .get(app.url("/api/admin/dead"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = send(&admin, "/api/admin/pause", json!({})).await.unwrap();
    assert_eq!(res.status(), 200);
    let res = send(&admin, "/api/admin/resume", json!({})).await.unwrap();
    assert_eq!(res.status(), 200);
}

both_stores!(
    pause_queues_without_starting_and_resume_starts_in_order,
    a_drain_answers_when_nothing_runs,
    a_paused_backend_leaves_the_others_working,
    dead_letters_are_requeued_with_retry_of,
    a_failed_job_is_retried_by_its_owner_and_only_admins_steer,
);
