//! `GET /metrics`, parsed by the Prometheus project's Python client
//! (`tests/metrics/parse.py`): job counters and histograms, queue depth from the
//! store (the same in every process), backends, HTTP requests by route, refusals,
//! auth, and a worker-only process's own metrics port.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role as KeyRole};
use studio_core::config::Role;

use crate::support::standin::StandIn;
use crate::support::{Backing, TestApp};

/// The metrics as the Python client parsed them.
struct Parsed {
    samples: Vec<(String, serde_json::Map<String, Value>, f64)>,
    families: serde_json::Map<String, Value>,
}

impl Parsed {
    /// The value of the one sample named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
        found.first().copied()
    }
}

fn parse(text: &str) -> Parsed {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/tools/venv/bin/python");
    assert!(
        python.exists(),
        "prometheus_client must be installed in target/tools/venv (scripts/test does it)"
    );
    let mut child = Command::new(python)
        .arg(root.join("tests/metrics/parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Parsed {
        samples: v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s[0].as_str().unwrap().to_owned(),
                    s[1].as_object().unwrap().clone(),
                    s[2].as_f64().unwrap(),
                )
            })
            .collect(),
        families: v["families"].as_object().unwrap().clone(),
    }
}

async fn scrape(app: &TestApp, key: Option<&str>) -> (u16, String, String) {
    let mut req = app.http.get(app.url("/metrics"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, res.text().await.unwrap())
}

async fn jobs_requests_and_backends_are_counted(kind: Backing) {
    let standin = StandIn::start();
    let url = standin.url();
    let backend = url.trim_end_matches('/').to_owned();
    let app = TestApp::spawn(kind, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let started = std::time::Instant::now();
    for seed in 0..3 {
        let id = app
            .submit(json!({"prompt": "counted", "workflow": "smoke", "seed": seed}))
            .await;
        let v = app.wait_final(&id, Duration::from_secs(20)).await;
        assert_eq!(v["status"], "finished", "{v}");
    }
    // One that ComfyUI refuses: a checkpoint it does not have.
    let id = app
        .submit(json!({"prompt": "x", "workflow": "sdxl", "checkpoint": "missing.safetensors"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "failed", "{v}");
    let (s, _) = app.get("/api/status/nope-not-there").await;
    assert_eq!(s, 404);

    let (status, ctype, text) = scrape(&app, None).await;
    assert_eq!(status, 200, "{text}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let m = parse(&text);
    let smoke = [("workflow", "smoke")];
    assert_eq!(m.value("studio_jobs_submitted_total", &smoke), Some(3.0));
    assert_eq!(
        m.value("studio_jobs_submitted_total", &[("workflow", "sdxl")]),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "studio_jobs_completed_total",
            &[("workflow", "smoke"), ("outcome", "finished")]
        ),
        Some(3.0)
    );
    assert_eq!(
        m.value(
            "studio_jobs_completed_total",
            &[("workflow", "sdxl"), ("outcome", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(m.value("studio_job_wait_seconds_count", &smoke), Some(3.0));
    assert_eq!(m.value("studio_job_run_seconds_count", &smoke), Some(3.0));
    assert_eq!(
        m.value(
            "studio_job_run_seconds_bucket",
            &[("workflow", "smoke"), ("le", "+Inf")]
        ),
        Some(3.0)
    );
    assert_eq!(m.families["studio_job_run_seconds"], "histogram");
    assert_eq!(m.families["studio_job_run_seconds:unit"], "seconds");
    for state in ["queued", "processing", "delayed"] {
        assert_eq!(
            m.value("studio_queue_jobs", &[("state", state)]),
            Some(0.0),
            "{state}"
        );
    }
    assert_eq!(m.value("studio_workers", &[]), Some(1.0));
    assert_eq!(m.value("studio_store_up", &[]), Some(1.0));
    let b = [("backend", backend.as_str())];
    assert_eq!(m.value("studio_backend_up", &b), Some(1.0));
    assert_eq!(m.value("studio_backend_jobs_done_total", &b), Some(4.0));
    let busy = m.value("studio_backend_busy_seconds_total", &b).unwrap();
    assert!(
        busy > 0.1 && busy < started.elapsed().as_secs_f64(),
        "busy {busy} s"
    );
    assert_eq!(
        m.value(
            "studio_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/api/generate"),
                ("status", "202")
            ]
        ),
        Some(4.0)
    );
    assert_eq!(
        m.value(
            "studio_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/api/status/{job_id}"),
                ("status", "404")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "studio_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/api/generate")]
        ),
        Some(4.0)
    );
    assert!(m.value("studio_http_connections", &[]).unwrap() >= 1.0);
    assert_eq!(m.value("studio_event_streams", &[]), Some(0.0));
}

both_stores!(jobs_requests_and_backends_are_counted);

/// With auth on, metrics are for admins; refusals are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_metrics_need_an_admin_key() {
    let app = TestApp::spawn(Backing::Redis, Role::Api, |a| a.auth = AuthMode::Keys).await;
    let user = app.new_key("u", KeyRole::User, KeyLimits::default()).await;
    let admin = app.new_key("a", KeyRole::Admin, KeyLimits::default()).await;
    assert_eq!(scrape(&app, None).await.0, 401);
    assert_eq!(scrape(&app, Some(&user)).await.0, 403);
    let (s, _) = app.get("/api/jobs").await;
    assert_eq!(s, 401);
    let (status, _, text) = scrape(&app, Some(&admin)).await;
    assert_eq!(status, 200);
    let m = parse(&text);
    assert_eq!(
        m.value("studio_http_refusals_total", &[("code", "unauthorized")]),
        Some(2.0),
        "the scrape without a key and the listing"
    );
}

/// A worker-only process serves /metrics on `--metrics-port`, and nothing else;
/// queue depth comes from the store, so it agrees with the API process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_only_process_has_its_own_metrics_port() {
    let api = TestApp::spawn(Backing::Redis, Role::Api, |_| {}).await;
    // A backend that does not answer: the worker claims nothing.
    let worker = api
        .spawn_beside(Role::Worker, |a| {
            a.comfyui = vec!["http://127.0.0.1:9".into()];
            a.metrics_port = Some(0);
        })
        .await;
    assert!(worker.addr.is_some(), "the worker listens for metrics");
    for _ in 0..5 {
        api.submit(json!({"prompt": "waiting", "workflow": "smoke"}))
            .await;
    }
    let from_api = parse(&scrape(&api, None).await.2);
    let (status, _, text) = scrape(&worker, None).await;
    assert_eq!(status, 200, "{text}");
    let from_worker = parse(&text);
    let queued = [("state", "queued")];
    assert_eq!(from_api.value("studio_queue_jobs", &queued), Some(5.0));
    assert_eq!(from_worker.value("studio_queue_jobs", &queued), Some(5.0));
    assert_eq!(
        from_worker.value("studio_backend_up", &[("backend", "http://127.0.0.1:9")]),
        Some(0.0)
    );
    assert!(
        from_api
            .value("studio_backend_up", &[("backend", "http://127.0.0.1:9")])
            .is_none(),
        "the API process runs no backend"
    );
    let (s, _) = worker.get("/api/jobs").await;
    assert_eq!(s, 404, "the metrics port serves nothing else");
}

/// The alerts shipped in `deploy/` name metrics that exist (a renamed metric must
/// not silently disarm an alert), and the file is valid YAML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_alerts_use_real_metrics() {
    let standin = StandIn::start();
    let url = standin.url();
    let app = TestApp::spawn(Backing::Sqlite, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let id = app
        .submit(json!({"prompt": "x", "workflow": "smoke"}))
        .await;
    app.wait_final(&id, Duration::from_secs(20)).await;
    let m = parse(&scrape(&app, None).await.2);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("target/tools/venv/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; d = yaml.safe_load(open(sys.argv[1])); \
             print(json.dumps([r['expr'] for g in d['groups'] for r in g['rules']]))",
        ])
        .arg(root.join("deploy/studio-alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exprs: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(exprs.len() >= 5);
    let mut checked = 0;
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("studio_"))
        {
            assert!(
                m.samples.iter().any(|(n, _, _)| n == name),
                "alert expression {e:?} names {name}, which /metrics does not have"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked}");
}
