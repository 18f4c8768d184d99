//! Batches (`POST /api/batches`) on both stores: a grid is one job per
//! combination with the right parameters, listed by `batch_id` and followed as
//! one; a cancel cancels what has not finished; a batch over the key's quota is
//! refused whole; one Idempotency-Key answers the whole batch again; a batch with
//! a webhook gets one message per job and one `batch.finished`, signed (checked by
//! the Standard Webhooks library).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role};
use studio_core::config::Role as ServerRole;

use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TestApp};
use crate::webhooks::Receiver;

/// Polls the batch until `done` says so; panics after `limit`.
async fn wait_batch(
    app: &TestApp,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + limit;
    loop {
        let (s, v) = app.get(&format!("/api/batches/{id}")).await;
        assert_eq!(s, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < end, "batch {id} did not get there: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_grid_is_one_job_per_combination(kind: Backing) {
    let standin = StandIn::start();
    let app = TestApp::serve(kind, &standin, |_| {}).await;
    let (s, v) = app
        .post_json(
            "/api/batches",
            &json!({"prompt": "a grid", "workflow": "smoke", "seed": 5,
                    "grid": {"width": [64, 96], "blur_radius": [1, 2, 3]}}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let batch = v["batch_id"].as_str().unwrap().to_owned();
    assert!(
        v["status_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/batches/{batch}"))
    );
    let ids: Vec<String> = v["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 6, "{v}");
    // Each job carries its combination, the shared fields and its batch.
    let mut combos = Vec::new();
    for id in &ids {
        let job = app.status(id).await;
        assert_eq!(job["batch_id"], batch.as_str(), "{job}");
        assert_eq!(job["prompt"], "a grid");
        assert_eq!(job["seed"], 5);
        combos.push((
            job["params"]["blur_radius"].as_u64().unwrap(),
            job["params"]["width"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        combos,
        vec![(1, 64), (1, 96), (2, 64), (2, 96), (3, 64), (3, 96)],
        "fields in name order, the first varying slowest"
    );
    // The listing filtered by batch, a page at a time.
    let (s, page) = app
        .get(&format!("/api/jobs?batch_id={batch}&limit=4"))
        .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 4);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (_, rest) = app
        .get(&format!(
            "/api/jobs?batch_id={batch}&limit=4&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["jobs"].as_array().unwrap().len(), 2);
    assert!(rest["next_cursor"].is_null());
    let listed: BTreeSet<String> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["jobs"].as_array().unwrap())
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids.iter().cloned().collect());
    // A job outside the batch is not listed with it.
    app.submit(json!({"prompt": "alone", "workflow": "smoke"}))
        .await;
    let (_, all) = app
        .get(&format!("/api/jobs?batch_id={batch}&limit=100"))
        .await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 6);
    // The batch as a whole, to its end.
    let done = wait_batch(&app, &batch, Duration::from_secs(60), |b| {
        b["status"] == "finished"
    })
    .await;
    assert_eq!(done["total"], 6);
    assert_eq!(done["counts"]["finished"], 6, "{done}");
    assert_eq!(done["progress"], 100);
    assert_eq!(done["jobs"].as_array().unwrap().len(), 6);
    assert!(
        done["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| !j["outputs"].as_array().unwrap().is_empty())
    );
    // Unknown and malformed ids.
    let (s, v) = app
        .get("/api/batches/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("batch-not-found")),
        "{v}"
    );
    let (s, v) = app.get("/api/batches/a%20b").await;
    assert_eq!((s, v["field"].as_str()), (400, Some("batch_id")), "{v}");
    let (s, v) = app
        .get("/api/jobs?batch_id=00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(s, 404, "{v}");
}

async fn count_seeds_and_prompts_and_bad_batches(kind: Backing) {
    let app = TestApp::spawn(kind, ServerRole::Api, |a| a.max_batch = 8).await;
    let (s, v) = app
        .post_json(
            "/api/batches",
            &json!({"prompt": "four", "workflow": "smoke", "seed": 10, "count": 4}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let mut seeds = Vec::new();
    for id in v["job_ids"].as_array().unwrap() {
        seeds.push(
            app.status(id.as_str().unwrap()).await["seed"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(seeds, vec![10, 11, 12, 13]);
    let (s, v) = app
        .post_json(
            "/api/batches",
            &json!({"workflow": "smoke", "prompts": ["a cat", "a dog"]}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let second = app.status(v["job_ids"][1].as_str().unwrap()).await;
    assert_eq!(second["prompt"], "a dog");
    let (s, v) = app
        .post_json(
            "/api/batches",
            &json!({"prompt": "x", "workflow": "smoke", "seeds": [3, 1]}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        app.status(v["job_ids"][1].as_str().unwrap()).await["seed"],
        1
    );
    let before = app.get("/api/jobs?limit=100").await.1["jobs"]
        .as_array()
        .unwrap()
        .len();
    // Refusals name the field, and queue nothing.
    for (body, field) in [
        (
            json!({"prompt": "x", "workflow": "smoke", "count": 9}),
            "count",
        ),
        (json!({"prompt": "x", "workflow": "smoke"}), "count"),
        (
            json!({"prompt": "x", "workflow": "smoke", "count": 2, "grid": {"width": [64]}}),
            "grid",
        ),
        (
            json!({"prompt": "x", "workflow": "smoke", "grid": {"width": [64, 96, 128], "height": [64, 96, 128]}}),
            "grid",
        ),
        (
            json!({"prompt": "x", "workflow": "smoke", "grid": {"width": [64, 99999]}}),
            "width",
        ),
        (
            json!({"prompt": "x", "workflow": "smoke", "grid": {"nope": [1]}}),
            "nope",
        ),
        (
            json!({"prompt": "x", "workflow": "smoke", "seeds": [1, -1]}),
            "seed",
        ),
        (
            json!({"workflow": "smoke", "prompts": ["ok", ""]}),
            "prompt",
        ),
        (
            json!({"prompt": "x", "workflow": "nope", "count": 2}),
            "workflow",
        ),
    ] {
        let (s, v) = app.post_json("/api/batches", &body).await;
        assert_eq!(s, 400, "{body} → {v}");
        assert_eq!(v["field"], field, "{body} → {v}");
    }
    let after = app.get("/api/jobs?limit=100").await.1["jobs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before, "a refused batch queues nothing");
}

async fn a_cancel_cancels_what_has_not_finished(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_secs(30),
        ..Knobs::default()
    });
    let app = TestApp::serve(kind, &standin, |_| {}).await;
    let (s, v) = app
        .post_json(
            "/api/batches",
            &json!({"prompt": "slow", "workflow": "smoke", "count": 3}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let batch = v["batch_id"].as_str().unwrap().to_owned();
    // Some run (a worker keeps the next prompt queued on its ComfyUI), the rest wait.
    let before = wait_batch(&app, &batch, Duration::from_secs(20), |b| {
        b["counts"]["processing"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(before["status"], "processing");
    let res = app
        .http
        .post(app.url(&format!("/api/batches/{batch}/cancel")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let after: Value = res.json().await.unwrap();
    assert_eq!(after["counts"]["queued"], 0, "{after}");
    assert_eq!(
        after["counts"]["cancelled"].as_u64().unwrap()
            + after["counts"]["processing"].as_u64().unwrap(),
        3,
        "the queued ones at once, the running ones asked to stop: {after}"
    );
    assert!(
        after["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] != "processing" || j["cancel_requested"] == true),
        "{after}"
    );
    let done = wait_batch(&app, &batch, Duration::from_secs(20), |b| {
        b["status"] != "processing"
    })
    .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["counts"]["cancelled"], 3, "{done}");
    for j in done["jobs"].as_array().unwrap() {
        assert_eq!(j["error"], "cancelled", "{j}");
    }
    // Without a JSON body or a header saying a program sent it: refused.
    let res = app
        .http
        .post(app.url(&format!("/api/batches/{batch}/cancel")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
}

async fn a_batch_over_the_quota_is_refused_whole(kind: Backing) {
    let app = TestApp::spawn(kind, ServerRole::Api, |a| a.auth = AuthMode::Keys).await;
    let key = app
        .new_key(
            "three",
            Role::User,
            KeyLimits {
                max_queued: Some(3),
                ..KeyLimits::default()
            },
        )
        .await;
    let other = app.new_key("other", Role::User, KeyLimits::default()).await;
    let post = |k: &str, body: Value| {
        app.http
            .post(app.url("/api/batches"))
            .bearer_auth(k)
            .json(&body)
            .send()
    };
    let listed = |k: String| {
        let app = &app;
        async move {
            let v: Value = app
                .http
                .get(app.url("/api/jobs?limit=100"))
                .bearer_auth(k)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["jobs"].as_array().unwrap().len()
        }
    };
    let res = post(
        &key,
        json!({"prompt": "x", "workflow": "smoke", "count": 4}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "queue-quota", "{v}");
    assert_eq!(listed(key.clone()).await, 0, "nothing of it is queued");
    let res = post(
        &key,
        json!({"prompt": "x", "workflow": "smoke", "count": 2}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    // Two waiting: a batch of two is one too many, a single job still fits.
    let res = post(
        &key,
        json!({"prompt": "x", "workflow": "smoke", "seeds": [1, 2]}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(listed(key.clone()).await, 2);
    let res = post(
        &key,
        json!({"prompt": "x", "workflow": "smoke", "count": 1}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    // Another key's batch is its own business, and its batches are not ours.
    let res = post(
        &other,
        json!({"prompt": "y", "workflow": "smoke", "count": 5}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let theirs: Value = res.json().await.unwrap();
    let res = app
        .http
        .get(app.url(&format!(
            "/api/batches/{}",
            theirs["batch_id"].as_str().unwrap()
        )))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

async fn one_idempotency_key_for_the_whole_batch(kind: Backing) {
    let app = TestApp::spawn(kind, ServerRole::Api, |_| {}).await;
    let send = |key: &str, body: Value| {
        app.http
            .post(app.url("/api/batches"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let body = json!({"prompt": "once", "workflow": "smoke", "count": 3});
    let first = send("batch-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = send("batch-1", body.clone()).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["batch_id"], first["batch_id"]);
    assert_eq!(again["job_ids"], first["job_ids"]);
    let (_, all) = app.get("/api/jobs?limit=100").await;
    assert_eq!(
        all["jobs"].as_array().unwrap().len(),
        3,
        "one batch, not two"
    );
    let other = send(
        "batch-1",
        json!({"prompt": "else", "workflow": "smoke", "count": 3}),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), 422);
    // A single job's key of the same name is another scope.
    let res = app
        .http
        .post(app.url("/api/generate"))
        .header("idempotency-key", "batch-1")
        .json(&json!({"prompt": "single", "workflow": "smoke"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

async fn one_webhook_per_job_and_one_when_the_batch_ends(kind: Backing) {
    let standin = StandIn::start();
    let rx = Receiver::start();
    let app = TestApp::serve(kind, &standin, |_| {}).await;
    let (s, v) = app
        .post_json(
            "/api/batches",
            &json!({"prompt": "tell me", "workflow": "smoke", "count": 2, "webhook_url": rx.url("/ok")}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let batch = v["batch_id"].as_str().unwrap().to_owned();
    let end = Instant::now() + Duration::from_secs(30);
    let message = loop {
        let got = rx.of(&batch).await;
        if let Some(m) = got.first() {
            assert_eq!(got.len(), 1, "one batch.finished: {got:?}");
            break m.clone();
        }
        assert!(Instant::now() < end, "no batch.finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(message["verified"], true, "{message}");
    assert_eq!(message["body"]["type"], "batch.finished", "{message}");
    assert_eq!(message["body"]["data"]["batch_id"], batch.as_str());
    assert_eq!(
        message["body"]["data"]["counts"]["finished"], 2,
        "{message}"
    );
    for id in v["job_ids"].as_array().unwrap() {
        let mine = rx.of(id.as_str().unwrap()).await;
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0]["body"]["type"], "job.finished");
    }
    // Nothing more comes for the batch.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.of(&batch).await.len(), 1);
}

both_stores!(
    a_grid_is_one_job_per_combination,
    count_seeds_and_prompts_and_bad_batches,
    a_cancel_cancels_what_has_not_finished,
    a_batch_over_the_quota_is_refused_whole,
    one_idempotency_key_for_the_whole_batch,
    one_webhook_per_job_and_one_when_the_batch_ends,
);
