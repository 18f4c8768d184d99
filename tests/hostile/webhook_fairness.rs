//! One key's slow webhook receiver must not hold back another key's webhooks
//! (security review 3, finding 5): 160 webhooks of key A go to a receiver that
//! never answers within the timeout; key B's one webhook goes to a quick one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use serde_json::json;
use studio_core::auth::{AuthMode, KeyLimits, Role as KeyRole};
use studio_core::config::Role;

use crate::exclusive;
use crate::support::{Backing, TEST_WEBHOOK_SECRET, TestApp};

/// A receiver: `/slow` answers after 10 s, `/ok` at once (noting when).
async fn receiver() -> (String, Arc<Mutex<Vec<Instant>>>) {
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = seen.clone();
    let app = Router::new()
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                axum::http::StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/ok",
            post(move || {
                let log = log.clone();
                async move {
                    log.lock().unwrap().push(Instant::now());
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_keys_webhook_is_not_held_back_by_a_slow_receiver() {
    let _one = exclusive().await;
    let (slow_base, _) = receiver().await;
    let (quick_base, quick) = receiver().await;
    // No backend answers: jobs stay queued until cancelled, which ends them.
    let app = TestApp::spawn(Backing::Sqlite, Role::Serve, |a| {
        a.comfyui = vec!["http://127.0.0.1:9".into()];
        a.auth = AuthMode::Keys;
        a.webhook_secret = TEST_WEBHOOK_SECRET.into();
        a.webhook_allow_private = true;
        a.webhook_timeout = Duration::from_secs(3);
    })
    .await;
    let a = app.new_key("a", KeyRole::User, KeyLimits::default()).await;
    let b = app.new_key("b", KeyRole::User, KeyLimits::default()).await;
    let submit_and_cancel = |key: String, url: String| {
        let app = &app;
        async move {
            let res = app
                .http
                .post(app.url("/api/generate"))
                .bearer_auth(&key)
                .json(&json!({"prompt": "x", "workflow": "smoke",
                              "webhook_url": url, "webhook_events": ["job.failed"]}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
            let id = res.json::<serde_json::Value>().await.unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_owned();
            let res = app
                .http
                .post(app.url(&format!("/api/jobs/{id}/cancel")))
                .bearer_auth(&key)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
        }
    };
    for _ in 0..160 {
        submit_and_cancel(a.clone(), format!("{slow_base}/slow")).await;
    }
    // Let A's webhooks take the deliverer's slots.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cancelled = Instant::now();
    submit_and_cancel(b.clone(), format!("{quick_base}/ok")).await;
    let arrived = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(t) = quick.lock().unwrap().first() {
                return *t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("B's webhook arrives");
    let latency = arrived.duration_since(cancelled).as_secs_f64();
    eprintln!(
        "behind 160 webhooks of another key to a receiver that times out (3 s), a key's webhook arrived {latency:.2} s after its job ended"
    );
    assert!(
        latency < 2.0,
        "another key's slow receiver held this one back {latency:.1} s (before the fix: about 35 s)"
    );
}
