//! Upgrades keep everything: the release before this one (`target/debug/
//! studio-prev`, built by `scripts/test` from its commit) writes a store (the
//! embedded one, or a Redis) with jobs in every state (finished, failed, running
//! when it is killed, queued, cancelled), an API key, an upload, a
//! webhook waiting for a receiver that is down, and pictures; then this build
//! runs on the same store and data directory and finds all of it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::proc::Proc;
use crate::support::standin::StandIn;
use crate::support::{Backing, RedisPrefix, TEST_WEBHOOK_SECRET, TempDir, png, studio_bin};

/// The previous release's binary.
fn prev_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_studio")).with_file_name("studio-prev");
    assert!(
        bin.exists(),
        "{} is missing: scripts/test builds it (the upgrade test needs the previous release)",
        bin.display()
    );
    bin
}

/// Where the store is, as environment variables for either binary.
fn store_env(dir: &TempDir, redis: Option<&RedisPrefix>) -> Vec<(&'static str, String)> {
    let mut env = vec![("STUDIO_DATA_DIR", dir.path().display().to_string())];
    if let Some(r) = redis {
        env.push(("REDIS_URL", r.url.clone()));
        env.push(("STUDIO_REDIS_PREFIX", r.prefix.clone()));
    }
    env
}

/// A server of `bin` in `role`, driving `comfyui`.
fn server(
    bin: PathBuf,
    role: &str,
    store: &[(&'static str, String)],
    comfyui: &str,
    log: PathBuf,
) -> (Proc, String) {
    let mut env = store.to_vec();
    env.extend([
        ("PORT", "0".to_owned()),
        ("STUDIO_AUTH", "keys".to_owned()),
        ("COMFYUI_URL", comfyui.to_owned()),
        ("STUDIO_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET.to_owned()),
        ("STUDIO_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("STUDIO_WEBHOOK_RETRIES", "30s,30s,30s".to_owned()),
        ("STUDIO_HEALTH_INTERVAL", "200ms".to_owned()),
        ("STUDIO_WORKER_TTL", "2s".to_owned()),
    ]);
    let p = Proc::spawn_cmd(Command::new(bin), &[role], &env, log);
    let base = p.wait_listening();
    (p, base)
}

struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let res = req.bearer_auth(&self.key).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn submit(&self, body: Value) -> String {
        let (s, v) = self
            .send(
                self.http
                    .post(format!("{}/api/generate", self.base))
                    .json(&body),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        v["job_id"].as_str().unwrap().to_owned()
    }

    async fn wait(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let (_, v) = self.get(&format!("/api/status/{id}")).await;
                if done(&v) {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("job {id} did not get there"))
    }

    async fn picture(&self, job: &Value) -> Vec<u8> {
        let url = job["outputs"][0]["url"].as_str().unwrap();
        let res = self
            .http
            .get(format!("{}{url}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{url}");
        res.bytes().await.unwrap().to_vec()
    }
}

fn finished(v: &Value) -> bool {
    v["status"] == "finished"
}

async fn everything_the_previous_release_stored_is_read(kind: Backing) {
    let standin = StandIn::start();
    let dir = TempDir::new();
    let redis = (kind == Backing::Redis).then(RedisPrefix::new);
    let store = store_env(&dir, redis.as_ref());
    let logs = TempDir::new();

    // The previous release: a key, made straight in the store.
    let mut cmd = Command::new(prev_bin());
    cmd.args([
        "keys",
        "create",
        "--name",
        "from-the-old-days",
        "--role",
        "admin",
    ])
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in &store {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();

    // It runs a job, keeps an upload, and holds a webhook for a receiver that
    // is down.
    let (prev, base) = server(
        prev_bin(),
        "serve",
        &store,
        &standin.url(),
        logs.path().join("prev.log"),
    );
    let old = Client {
        base,
        key: key.clone(),
        http: reqwest::Client::new(),
    };
    let (s, up) = old
        .send(
            old.http
                .post(format!("{}/api/uploads", old.base))
                .header("content-type", "image/png")
                .body(png(16, 16, [200, 30, 40])),
        )
        .await;
    assert_eq!(s, 201, "{up}");
    let upload = up["upload_id"].as_str().unwrap().to_owned();
    let done = old
        .submit(
            json!({"prompt": "kept", "workflow": "smoke", "width": 32, "height": 32,
                       "webhook_url": "http://127.0.0.1:9/down",
                       "webhook_events": ["job.finished"]}),
        )
        .await;
    let done_before = old.wait(&done, finished).await;
    let bytes_before = old.picture(&done_before).await;
    let webhook_before = old
        .wait(&done, |v| v["webhook"]["attempts"].as_u64() >= Some(1))
        .await["webhook"]
        .clone();
    // A job that failed on the backend (a blur wider than its picture).
    let failed = old
        .submit(
            json!({"prompt": "fails", "workflow": "smoke", "width": 8, "height": 8,
                       "blur_radius": 31}),
        )
        .await;
    let failed_before = old.wait(&failed, |v| v["status"] == "failed").await;
    // And one running when the previous release is killed: this build adopts
    // its prompt, which the backend goes on running.
    standin.knobs(|k| k.duration = Duration::from_secs(6));
    let running = old
        .submit(json!({"prompt": "running at the upgrade", "workflow": "smoke"}))
        .await;
    old.wait(&running, |v| v["status"] == "processing").await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while standin.running().as_deref() != Some(running.as_str()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the backend runs it");
    standin.knobs(|k| k.duration = Duration::from_millis(60));
    drop(prev);

    // The API alone (no worker): one job stays queued, one is cancelled.
    let (prev_api, base) = server(
        prev_bin(),
        "api",
        &store,
        &standin.url(),
        logs.path().join("prev-api.log"),
    );
    let old = Client { base, ..old };
    let queued = old
        .submit(json!({"prompt": "waits for the upgrade", "workflow": "smoke"}))
        .await;
    let cancelled = old
        .submit(json!({"prompt": "cancelled before", "workflow": "smoke"}))
        .await;
    let (s, _) = old
        .send(
            old.http
                .post(format!("{}/api/jobs/{cancelled}/cancel", old.base))
                .json(&json!({})),
        )
        .await;
    assert_eq!(s, 200);
    drop(prev_api);

    // This build, on the same store and data directory.
    let (_now, base) = server(
        studio_bin(),
        "serve",
        &store,
        &standin.url(),
        logs.path().join("now.log"),
    );
    let new = Client { base, ..old };
    let (s, health) = new.get("/health").await;
    assert_eq!(s, 200, "{health}");
    // The old key is still a key.
    let (s, page) = new.get("/api/jobs?limit=10").await;
    assert_eq!(s, 200, "the old key authenticates: {page}");
    let listed: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    for id in [&done, &failed, &running, &queued, &cancelled] {
        assert!(listed.contains(&id.as_str()), "{id} is listed: {listed:?}");
    }
    // The finished job, its picture byte for byte, its webhook's story.
    let (_, v) = new.get(&format!("/api/status/{done}")).await;
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(new.picture(&v).await, bytes_before, "the same picture");
    assert_eq!(v["webhook"]["url"], webhook_before["url"], "{v}");
    assert!(
        v["webhook"]["attempts"].as_u64() >= webhook_before["attempts"].as_u64(),
        "{v}"
    );
    assert_eq!(
        v["webhook"]["state"], "retrying",
        "still waiting for its receiver: {v}"
    );
    // The failed one keeps its error; the running one ends, run once.
    let (_, v) = new.get(&format!("/api/status/{failed}")).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        failed_before["error"]
            .as_str()
            .is_some_and(|e| e.contains("ImageBlur")),
        "{failed_before}"
    );
    assert_eq!(v["error"], failed_before["error"], "the same error: {v}");
    // Its worker's lease has run out by now (2 s), so the job may be queued
    // again, waiting for this build's worker to claim it and adopt the prompt;
    // what it may not be is failed.
    let (_, v) = new.get(&format!("/api/status/{running}")).await;
    assert!(
        ["queued", "processing", "finished"].contains(&v["status"].as_str().unwrap_or("")),
        "not failed by the upgrade: {v}"
    );
    new.wait(&running, finished).await;
    assert_eq!(
        standin.submitted(&running),
        1,
        "the running job's prompt was adopted, not sent again"
    );
    // The cancelled one stays so; the queued one runs now.
    let (_, v) = new.get(&format!("/api/status/{cancelled}")).await;
    assert_eq!(
        (v["status"].as_str(), v["cancelled"].as_bool()),
        (Some("failed"), Some(true))
    );
    new.wait(&queued, finished).await;
    // The old upload is still an input picture.
    let with_upload = new
        .submit(
            json!({"prompt": "from the old upload", "workflow": "smoke-img2img", "image": upload}),
        )
        .await;
    let v = new
        .wait(&with_upload, |v| {
            v["status"] != "queued" && v["status"] != "processing"
        })
        .await;
    assert_eq!(v["status"], "finished", "{v}");
    eprintln!(
        "{kind:?}: a store of the previous release read: key, {} jobs, a {}-byte picture, a webhook at {} attempts, an upload",
        listed.len(),
        bytes_before.len(),
        webhook_before["attempts"]
    );
}

both_stores!(everything_the_previous_release_stored_is_read);
