//! Webhooks, checked by a receiver that verifies every signature with the Standard
//! Webhooks project's own Python library (`tests/webhooks/receiver.py`): signed
//! messages for the start and the end of a job, retries on the schedule with the
//! same `webhook-id`, `410` that stops them, redirects not followed, addresses that
//! are not public refused (also after DNS), and a worker killed mid-delivery.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use studio_core::config::Role;

use crate::support::proc::Proc;
use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TEST_WEBHOOK_SECRET, TempDir, TestApp};

/// The receiver: a Python process, killed when dropped.
pub(crate) struct Receiver {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("target/tools/venv/bin/python");
        assert!(
            python.exists(),
            "target/tools/venv must hold standardwebhooks (scripts/test installs it)"
        );
        let mut child = Command::new(python)
            .arg(root.join("tests/webhooks/receiver.py"))
            .arg(TEST_WEBHOOK_SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the receiver starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the receiver prints its port");
        Receiver {
            child,
            port,
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every delivery seen so far.
    async fn log(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(self.url("/log"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().unwrap().clone()
    }

    /// The deliveries of one job's messages.
    pub(crate) async fn of(&self, job_id: &str) -> Vec<Value> {
        let prefix = format!("msg_{job_id}_");
        self.log()
            .await
            .into_iter()
            .filter(|e| e["id"].as_str().is_some_and(|i| i.starts_with(&prefix)))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls the job's webhook until `done` says so; panics after `limit`.
async fn wait_webhook(
    app: &TestApp,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    app.wait_for(id, limit, |v| done(&v["webhook"])).await["webhook"].clone()
}

fn settled(w: &Value) -> bool {
    !w.is_null() && w["state"] != "waiting" && w["state"] != "retrying"
}

/// The start and the end of a job reach the receiver, signed so that the
/// reference verifier accepts them, with a new secret in front of the old one (a
/// rotation: the receiver still knows only the old one).
async fn signed_messages(kind: Backing) {
    let standin = StandIn::start();
    let rx = Receiver::start();
    let app = TestApp::serve(kind, &standin, |a| {
        a.webhook_secret = format!(
            "{},{TEST_WEBHOOK_SECRET}",
            studio_core::webhooks::Secret::generate()
        )
    })
    .await;
    let id = app
        .submit(json!({
            "prompt": "tell me when it is done",
            "workflow": "smoke",
            "webhook_url": rx.url("/ok"),
            "webhook_events": ["job.started", "job.finished", "job.failed"],
        }))
        .await;
    let job = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["params"]["webhook_url"], rx.url("/ok"));
    let w = wait_webhook(&app, &id, Duration::from_secs(20), settled).await;
    assert_eq!(w["state"], "delivered", "{w}");
    assert_eq!(w["delivered"], 2, "{w}");
    assert_eq!(w["last_status"], 204, "{w}");
    assert_eq!(w["last_error"], "", "{w}");
    assert_eq!(w["last_message_id"], format!("msg_{id}_finished"));

    let seen = rx.of(&id).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    for e in &seen {
        assert_eq!(e["verified"], true, "the reference verifier refused: {e}");
        assert_eq!(e["content_type"], "application/json");
        let sigs: Vec<&str> = e["signature"].as_str().unwrap().split(' ').collect();
        assert_eq!(sigs.len(), 2, "one signature per secret: {e}");
        let ts: u64 = e["timestamp"].as_str().unwrap().parse().unwrap();
        let now = studio_core::clock::now_ms() / 1000;
        assert!(ts <= now && now - ts < 60, "timestamp {ts} vs now {now}");
    }
    assert_eq!(seen[0]["id"], format!("msg_{id}_started"));
    assert_eq!(seen[0]["body"]["type"], "job.started");
    assert_eq!(seen[0]["body"]["data"]["job_id"], id.as_str());
    assert_eq!(seen[1]["id"], format!("msg_{id}_finished"));
    let body = &seen[1]["body"];
    assert_eq!(body["type"], "job.finished");
    assert!(
        studio_core::clock::parse_iso8601_ms(body["timestamp"].as_str().unwrap()).is_some(),
        "{body}"
    );
    // The job as /api/status shows it.
    assert_eq!(body["data"]["job_id"], id.as_str());
    assert_eq!(body["data"]["status"], "finished");
    assert_eq!(body["data"]["image_url"], job["image_url"]);
    assert_eq!(body["data"]["outputs"], job["outputs"]);
    assert!(body["data"].get("webhook").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_messages_on_redis() {
    signed_messages(Backing::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_messages_on_sqlite() {
    signed_messages(Backing::Sqlite).await;
}

/// A receiver that answers 500 twice gets the message the third time: the same
/// `webhook-id` each time, spaced by the retry schedule (300 ms in tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_twice_gets_it_the_third_time() {
    let standin = StandIn::start();
    let rx = Receiver::start();
    let app = TestApp::serve(Backing::Redis, &standin, |_| {}).await;
    let id = app
        .submit(json!({"prompt": "flaky", "workflow": "smoke", "webhook_url": rx.url("/flaky/2")}))
        .await;
    let w = wait_webhook(&app, &id, Duration::from_secs(20), settled).await;
    assert_eq!(w["state"], "delivered", "{w}");
    assert_eq!(w["delivered"], 1, "{w}");
    let seen = rx.of(&id).await;
    let statuses: Vec<&Value> = seen.iter().map(|e| &e["status"]).collect();
    assert_eq!(
        statuses,
        [&json!(500), &json!(500), &json!(204)],
        "{seen:?}"
    );
    for e in &seen {
        assert_eq!(
            e["id"],
            format!("msg_{id}_finished"),
            "one id for every attempt"
        );
        assert_eq!(e["verified"], true, "{e}");
    }
    for pair in seen.windows(2) {
        let gap = pair[1]["at"].as_f64().unwrap() - pair[0]["at"].as_f64().unwrap();
        assert!(
            gap >= 0.25,
            "retried after {gap} s, before the schedule's 300 ms"
        );
    }
}

/// A failed job is told too; `410 Gone` stops at once; a receiver that is not
/// there, or that redirects, runs out of retries (1 + 3 in tests) and the job
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_gone_and_dead_ends() {
    let standin = StandIn::start_with(Knobs {
        fail_submits: 1000,
        ..Knobs::default()
    });
    let rx = Receiver::start();
    let app = TestApp::serve(Backing::Sqlite, &standin, |a| a.max_attempts = 1).await;
    let failed = app
        .submit(json!({"prompt": "doomed", "workflow": "smoke", "webhook_url": rx.url("/ok")}))
        .await;
    let gone = app
        .submit(
            json!({"prompt": "nobody cares", "workflow": "smoke", "webhook_url": rx.url("/gone")}),
        )
        .await;
    let nowhere = app
        .submit(json!({"prompt": "nobody there", "workflow": "smoke", "webhook_url": "http://127.0.0.1:9/hook"}))
        .await;
    let moved = app
        .submit(json!({"prompt": "moved", "workflow": "smoke", "webhook_url": rx.url("/redirect")}))
        .await;

    let w = wait_webhook(&app, &failed, Duration::from_secs(20), settled).await;
    assert_eq!(w["state"], "delivered", "{w}");
    let seen = rx.of(&failed).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["body"]["type"], "job.failed");
    assert_eq!(seen[0]["body"]["data"]["status"], "failed");
    assert!(
        !seen[0]["body"]["data"]["error"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert_eq!(seen[0]["verified"], true);

    let w = wait_webhook(&app, &gone, Duration::from_secs(20), settled).await;
    assert_eq!(w["state"], "gone", "{w}");
    assert_eq!(w["last_status"], 410, "{w}");
    assert_eq!(rx.of(&gone).await.len(), 1, "nothing after 410");

    let w = wait_webhook(&app, &nowhere, Duration::from_secs(30), settled).await;
    assert_eq!(w["state"], "failed", "{w}");
    assert_eq!(w["attempts"], 4, "{w}");
    assert!(w.get("last_status").is_none(), "{w}");
    assert!(!w["last_error"].as_str().unwrap().is_empty(), "{w}");

    let w = wait_webhook(&app, &moved, Duration::from_secs(30), settled).await;
    assert_eq!(w["state"], "failed", "{w}");
    assert_eq!(w["last_status"], 302, "{w}");
    assert!(
        w["last_error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{w}"
    );
    let seen = rx.of(&moved).await;
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        seen.iter().all(|e| e["path"] == "/redirect"),
        "never followed: {seen:?}"
    );
}

/// Without `--webhook-allow-private`, loopback, private, link-local and metadata
/// addresses are refused at submission, and a name that resolves to loopback is
/// refused at delivery (nothing is sent); bad URLs and a server without a secret
/// are clear 400s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_go_only_to_public_addresses() {
    let standin = StandIn::start();
    let rx = Receiver::start();
    let app = TestApp::serve(Backing::Sqlite, &standin, |a| {
        a.webhook_allow_private = false
    })
    .await;
    for (url, code, word) in [
        (
            "http://127.0.0.1:8080/hook",
            "invalid-webhook-url",
            "loopback",
        ),
        ("http://10.1.2.3/hook", "invalid-webhook-url", "private"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "invalid-webhook-url",
            "link-local",
        ),
        ("http://[::1]/hook", "invalid-webhook-url", "loopback"),
        ("http://[fd00:ec2::254]/", "invalid-webhook-url", "private"),
        (
            "https://user:secret@hooks.example.com/",
            "invalid-webhook-url",
            "credentials",
        ),
        (
            "ftp://hooks.example.com/",
            "invalid-webhook-url",
            "http or https",
        ),
    ] {
        let (status, v) = app
            .post_json(
                "/api/generate",
                &json!({"prompt": "x", "workflow": "smoke", "webhook_url": url}),
            )
            .await;
        assert_eq!(status, 400, "{url}: {v}");
        assert_eq!(v["code"], code, "{url}: {v}");
        assert_eq!(v["field"], "webhook_url", "{url}: {v}");
        assert!(v["error"].as_str().unwrap().contains(word), "{url}: {v}");
    }
    let (status, v) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "x", "workflow": "smoke", "webhook_events": ["job.finished"]}),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid-webhook-events")),
        "{v}"
    );

    // A name: resolved at delivery, refused, and nothing goes out.
    let id = app
        .submit(json!({"prompt": "x", "workflow": "smoke", "webhook_url": format!("http://localhost:{}/ok", rx.port)}))
        .await;
    let w = wait_webhook(&app, &id, Duration::from_secs(20), settled).await;
    assert_eq!(w["state"], "refused", "{w}");
    assert!(
        w["last_error"]
            .as_str()
            .unwrap()
            .contains("localhost resolves to"),
        "{w}"
    );
    assert!(rx.log().await.is_empty(), "nothing was sent");

    let unsigned = TestApp::serve(Backing::Sqlite, &standin, |a| {
        a.webhook_secret = String::new()
    })
    .await;
    let (status, v) = unsigned
        .post_json(
            "/api/generate",
            &json!({"prompt": "x", "workflow": "smoke", "webhook_url": rx.url("/ok")}),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("webhooks-not-configured")),
        "{v}"
    );
}

/// A worker killed with SIGKILL while its receiver is still answering: the
/// webhook's lease runs out, another worker sends it again with the same
/// `webhook-id`, and the job says delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_delivery_is_replaced() {
    let standin = StandIn::start();
    let rx = Receiver::start();
    let data = std::sync::Arc::new(TempDir::new());
    let api = TestApp::spawn(Backing::Redis, Role::Api, |_| {}).await;
    let p = api.redis.as_ref().unwrap();
    let env = vec![
        ("REDIS_URL", p.url.clone()),
        ("STUDIO_REDIS_PREFIX", p.prefix.clone()),
        ("COMFYUI_URL", standin.url()),
        ("STUDIO_DATA_DIR", data.path().display().to_string()),
        ("STUDIO_WORKER_TTL", "1s".into()),
        ("STUDIO_HEALTH_INTERVAL", "200ms".into()),
        ("STUDIO_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET.into()),
        ("STUDIO_WEBHOOK_ALLOW_PRIVATE", "true".into()),
        // A lease of 3 + 5 s: the second worker may take it 8 s after the first did.
        ("STUDIO_WEBHOOK_TIMEOUT", "3s".into()),
    ];
    let mut first = Proc::spawn(&["worker"], &env, data.path().join("worker1.log"));
    let id = api
        .submit(json!({"prompt": "tell me, then die", "workflow": "smoke", "webhook_url": rx.url("/slow-first/30")}))
        .await;
    // The first attempt has reached the receiver, which holds its answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.of(&id).await.is_empty() {
        assert!(Instant::now() < deadline, "no delivery began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill9();
    let killed = Instant::now();
    let _second = Proc::spawn(&["worker"], &env, data.path().join("worker2.log"));
    let w = wait_webhook(&api, &id, Duration::from_secs(30), settled).await;
    assert_eq!(w["state"], "delivered", "{w}");
    let seen = rx.of(&id).await;
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        seen.iter().all(|e| e["id"] == format!("msg_{id}_finished")),
        "{seen:?}"
    );
    assert!(seen.iter().all(|e| e["verified"] == true), "{seen:?}");
    assert_eq!(seen.last().unwrap()["status"], 204);
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "redelivered in {:?}",
        killed.elapsed()
    );
}

/// A submission the store refuses (here: the queue is full) takes its webhook back
/// out of the outbox, so refused submissions cannot fill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_submission_leaves_no_webhook_behind() {
    let app = TestApp::spawn(Backing::Sqlite, Role::Api, |a| {
        a.max_queued = 1;
        a.webhook_max_pending = 2;
    })
    .await;
    let body = |prompt: &str| json!({"prompt": prompt, "workflow": "smoke", "webhook_url": "http://127.0.0.1:9/hook"});
    let first = app.submit(body("first")).await;
    let (status, v) = app.post_json("/api/generate", &body("refused")).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("queue-full")),
        "{v}"
    );
    let (status, v) = app
        .post_json(&format!("/api/jobs/{first}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    // The first job's webhook (not delivered: no worker here) and this one: two,
    // the cap. A webhook left behind by the refused one would make this a 503.
    let (status, v) = app.post_json("/api/generate", &body("third")).await;
    assert_eq!(
        status, 202,
        "the refused submission's webhook was taken back: {v}"
    );
    // Now the outbox is at its cap: refused before the queue is even asked.
    let (status, v) = app.post_json("/api/generate", &body("fourth")).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("webhook-outbox-full")),
        "{v}"
    );
}
