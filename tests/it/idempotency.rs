//! `Idempotency-Key` on `POST /api/generate`: a retry gets the first answer, a
//! different body with the same key is refused, racing requests make one job, the
//! key is scoped to the API key, and a refused submission gives its key back.

use std::sync::Arc;

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role};
use studio_core::config::Role as ServerRole;

use crate::support::{Backing, TestApp};

/// POST /api/generate with an Idempotency-Key (and an API key, if given): status,
/// whether it says it is a replay, body.
async fn submit(
    app: &TestApp,
    idem: &str,
    api_key: Option<&str>,
    body: &Value,
) -> (u16, bool, Value) {
    let mut req = app
        .http
        .post(app.url("/api/generate"))
        .header("idempotency-key", idem)
        .json(body);
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    (status, replayed, res.json().await.unwrap_or(Value::Null))
}

async fn count_jobs(app: &TestApp) -> usize {
    let (s, v) = app.get("/api/jobs?limit=100").await;
    assert_eq!(s, 200, "{v}");
    v["jobs"].as_array().unwrap().len()
}

async fn a_retry_with_the_same_key_and_body_gets_the_first_answer(kind: Backing) {
    let app = TestApp::spawn(kind, ServerRole::Api, |_| {}).await;
    let body = json!({"prompt": "a lighthouse", "workflow": "smoke", "width": 64, "height": 64});
    let (s1, r1, first) = submit(&app, "order-17", None, &body).await;
    assert_eq!((s1, r1), (202, false), "{first}");
    // The same fields in another order are the same request.
    let reordered =
        json!({"height": 64, "width": 64, "workflow": "smoke", "prompt": "a lighthouse"});
    let (s2, r2, again) = submit(&app, "order-17", None, &reordered).await;
    assert_eq!((s2, r2), (202, true), "{again}");
    assert_eq!(again, first, "the same answer, seed included");
    assert_eq!(count_jobs(&app).await, 1);
    // Another key is another job.
    let (s3, r3, other) = submit(&app, "order-18", None, &body).await;
    assert_eq!((s3, r3), (202, false));
    assert_ne!(other["job_id"], first["job_id"]);
    // Without the header, nothing changes.
    let (s, _) = app.post_json("/api/generate", &body).await;
    assert_eq!(s, 202);
    assert_eq!(count_jobs(&app).await, 3);
}

async fn the_same_key_with_another_body_is_422(kind: Backing) {
    let app = TestApp::spawn(kind, ServerRole::Api, |_| {}).await;
    let (s, _, _) = submit(
        &app,
        "k1",
        None,
        &json!({"prompt": "a", "workflow": "smoke"}),
    )
    .await;
    assert_eq!(s, 202);
    let (s, _, v) = submit(
        &app,
        "k1",
        None,
        &json!({"prompt": "b", "workflow": "smoke"}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str(), v["field"].as_str()),
        (422, Some("idempotency-key-reuse"), Some("Idempotency-Key")),
        "{v}"
    );
    assert_eq!(count_jobs(&app).await, 1);
    for bad in ["", &"x".repeat(256), "two words"] {
        let (s, _, v) = submit(
            &app,
            bad,
            None,
            &json!({"prompt": "a", "workflow": "smoke"}),
        )
        .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("invalid-idempotency-key")),
            "{bad:?}: {v}"
        );
    }
}

async fn racing_requests_with_one_key_make_one_job(kind: Backing) {
    let app = Arc::new(TestApp::spawn(kind, ServerRole::Api, |_| {}).await);
    let body = json!({"prompt": "a race", "workflow": "smoke"});
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (app, body) = (app.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            submit(&app, "race-1", None, &body).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut fresh = 0;
    for t in tasks {
        let (s, replayed, v) = t.await.unwrap();
        assert_eq!(s, 202, "{v}");
        fresh += usize::from(!replayed);
        ids.insert(v["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(fresh, 1, "exactly one answer is not a replay");
    assert_eq!(count_jobs(&app).await, 1);
}

async fn a_refused_submission_gives_its_key_back(kind: Backing) {
    let app = TestApp::spawn(kind, ServerRole::Api, |a| a.max_queued = 1).await;
    let first = app
        .submit(json!({"prompt": "first", "workflow": "smoke"}))
        .await;
    let body = json!({"prompt": "second", "workflow": "smoke"});
    let (s, _, v) = submit(&app, "after-the-wait", None, &body).await;
    assert_eq!((s, v["code"].as_str()), (503, Some("queue-full")), "{v}");
    let (s, _) = app
        .post_json(&format!("/api/jobs/{first}/cancel"), &json!({}))
        .await;
    assert_eq!(s, 200);
    let (s, replayed, v) = submit(&app, "after-the-wait", None, &body).await;
    assert_eq!((s, replayed), (202, false), "queued now, not a replay: {v}");
}

async fn keys_are_scoped_to_the_api_key(kind: Backing) {
    let app = TestApp::spawn(kind, ServerRole::Api, |a| a.auth = AuthMode::Keys).await;
    let mut secrets = Vec::new();
    for name in ["ann", "bob"] {
        secrets.push(app.new_key(name, Role::User, KeyLimits::default()).await);
    }
    let body = json!({"prompt": "mine", "workflow": "smoke"});
    let (_, _, a) = submit(&app, "same", Some(&secrets[0]), &body).await;
    let (s, replayed, b) = submit(&app, "same", Some(&secrets[1]), &body).await;
    assert_eq!((s, replayed), (202, false), "{b}");
    assert_ne!(a["job_id"], b["job_id"]);
    let (s, replayed, a2) = submit(&app, "same", Some(&secrets[0]), &body).await;
    assert_eq!((s, replayed), (202, true));
    assert_eq!(a2["job_id"], a["job_id"]);
}

/// A key taken by a request that died before queueing its job (a crash between
/// the two steps): while young it is "in progress" (409, retry shortly); once old,
/// the next request with it takes it over and queues its job.
async fn a_key_whose_job_never_arrived_is_taken_over(kind: Backing) {
    use studio_core::store::IdempotencyClaim;
    use studio_core::submit as idempotency;

    let app = TestApp::spawn(kind, ServerRole::Api, |_| {}).await;
    let body = json!({"prompt": "after a crash", "workflow": "smoke"});
    let orphan = |key: &str, age_ms: u64| {
        let scope = idempotency::scope("", key);
        let claim = IdempotencyClaim {
            fingerprint: idempotency::fingerprint(&body),
            job_id: studio_core::job::JobId::random(),
            seed: 7,
            workflow: "smoke".into(),
            taken_ms: studio_core::clock::now_ms() - age_ms,
        };
        (scope, claim)
    };
    let (scope, claim) = orphan("young", 0);
    assert_eq!(
        app.store.take_idempotency(&scope, &claim).await.unwrap(),
        None
    );
    let res = app
        .http
        .post(app.url("/api/generate"))
        .header("idempotency-key", "young")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.headers()["retry-after"], "1");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "idempotency-key-in-progress");

    let (scope, claim) = orphan("old", 60_000);
    assert_eq!(
        app.store.take_idempotency(&scope, &claim).await.unwrap(),
        None
    );
    let (s, replayed, v) = submit(&app, "old", None, &body).await;
    assert_eq!((s, replayed), (202, false), "{v}");
    assert_ne!(v["job_id"], claim.job_id.as_str());
    assert_eq!(count_jobs(&app).await, 1);
    // From then on it is an ordinary key: a retry is a replay of the new job.
    let (s, replayed, again) = submit(&app, "old", None, &body).await;
    assert_eq!((s, replayed), (202, true));
    assert_eq!(again["job_id"], v["job_id"]);
}

both_stores!(
    a_key_whose_job_never_arrived_is_taken_over,
    a_retry_with_the_same_key_and_body_gets_the_first_answer,
    the_same_key_with_another_body_is_422,
    racing_requests_with_one_key_make_one_job,
    a_refused_submission_gives_its_key_back,
    keys_are_scoped_to_the_api_key,
);

/// Two API processes on one Redis: a key taken through one is a replay through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_share_idempotency_keys() {
    let one = TestApp::spawn(Backing::Redis, ServerRole::Api, |_| {}).await;
    let two = one.spawn_beside(ServerRole::Api, |_| {}).await;
    let body = json!({"prompt": "twice", "workflow": "smoke"});
    let (_, _, a) = submit(&one, "cross", None, &body).await;
    let (s, replayed, b) = submit(&two, "cross", None, &body).await;
    assert_eq!((s, replayed), (202, true), "{b}");
    assert_eq!(a, b);
}
