//! Test harness: the real app on port 0, a real Redis (each test under its own key
//! prefix), the ComfyUI stand-in, typed HTTP helpers.

#![allow(dead_code)]

pub mod netns;
pub mod proc;
pub mod s3;
pub mod standin;
pub mod webdriver;

/// Runs each named `async fn(Backing)` as two tests, one on the embedded store and
/// one on Redis: `mod sqlite { fn name }` and `mod redis { fn name }`.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use crate::support::Backing;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(Backing::Sqlite).await }
            )*
        }
        mod redis {
            use crate::support::Backing;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(Backing::Redis).await }
            )*
        }
    };
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use serde_json::{Value, json};
use studio_core::app::App;
use studio_core::config::{Role, ServerArgs};
use studio_core::store::{JobStore, RedisStore, SqliteStore, StoreSettings};
use tokio::sync::oneshot;

/// A `w`×`h` PNG of one colour (an input picture for uploads).
pub fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) when this goes out of scope.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Redis the tests use: `TEST_REDIS_URL`, or the one every developer and CI
/// machine runs on 127.0.0.1:6379. Tests fail (never skip) when it is not there.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// Logs to stderr when `TEST_LOG` is set.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
                ))
                .with_test_writer()
                .try_init();
        }
    });
}

/// A unique Redis key prefix; every key under it is deleted when dropped.
pub struct RedisPrefix {
    pub url: String,
    pub prefix: String,
}

impl RedisPrefix {
    pub fn new() -> Self {
        RedisPrefix {
            url: redis_url(),
            prefix: format!("t{}:", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        }
    }

    /// A synchronous connection for arranging and inspecting keys directly.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap_or_else(|e| panic!("Redis at {} is required for this test: {e}", self.url))
    }

    /// All keys under this prefix.
    pub fn keys(&self) -> Vec<String> {
        let mut c = self.conn();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*{}*", self.prefix))
            .query(&mut c)
            .unwrap();
        keys.sort();
        keys
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        if let Ok(mut c) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection()) {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("*{}*", self.prefix))
                .query(&mut c)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut c);
            }
        }
    }
}

/// A temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("studio-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    Sqlite,
    Redis,
}

/// Store settings with short times, so lease expiry and retries take milliseconds.
pub fn fast_settings() -> StoreSettings {
    StoreSettings {
        job_ttl: Duration::from_secs(3600),
        max_attempts: 3,
        worker_ttl: Duration::from_millis(400),
        index_cap: 1000,
        max_queued: 100_000,
        wait_replicas: 0,
        usage_retention: Duration::from_secs(400 * 24 * 3600),
    }
}

/// A store for conformance tests, with what keeps it alive.
pub struct TestStore {
    pub store: Arc<dyn JobStore>,
    pub redis: Option<RedisPrefix>,
    pub dir: TempDir,
}

pub fn test_store(kind: Backing, settings: StoreSettings) -> TestStore {
    init_logs();
    let dir = TempDir::new();
    match kind {
        Backing::Sqlite => TestStore {
            store: Arc::new(SqliteStore::open(dir.path(), settings).unwrap()),
            redis: None,
            dir,
        },
        Backing::Redis => {
            let r = RedisPrefix::new();
            let store = Arc::new(RedisStore::connect(&r.url, &r.prefix, settings).unwrap());
            TestStore {
                store,
                redis: Some(r),
                dir,
            }
        }
    }
}

/// Server settings for tests: port 0, a temporary data directory, short times, no
/// ComfyUI backends unless the test adds some.
pub fn test_args(data_dir: &Path) -> ServerArgs {
    ServerArgs {
        host: "127.0.0.1".into(),
        port: 0,
        store: studio_core::config::StoreArgs {
            data_dir: data_dir.to_path_buf(),
            redis_url: None,
            redis_host: None,
            redis_port: 6379,
            redis_prefix: String::new(),
        },
        comfyui: Vec::new(),
        worker_ttl: Duration::from_millis(900),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        poll_interval: Duration::from_millis(500),
        health_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_millis(500),
        job_timeout: Duration::from_secs(30),
        unroutable_after: Duration::from_secs(1),
        workflows: None,
        public_url: String::new(),
        cors_origins: "loopback".into(),
        // Webhooks: signed with a known secret, to receivers on loopback, retried
        // quickly.
        webhook_secret: TEST_WEBHOOK_SECRET.into(),
        webhook_allow_private: true,
        webhook_retries: "300ms,300ms,300ms".into(),
        webhook_timeout: Duration::from_secs(3),
        ..ServerArgs::default()
    }
}

/// The webhook signing secret of test servers.
pub const TEST_WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The app, running in this process.
pub struct TestApp {
    pub addr: Option<SocketAddr>,
    /// The listener's counts (API roles).
    pub conns: Option<studio_core::transport::ConnStats>,
    pub base: String,
    /// The ComfyUI-compatible port's base URL (`--comfyui-api-port`), if on.
    pub comfy: Option<String>,
    pub http: reqwest::Client,
    pub store: Arc<dyn JobStore>,
    pub redis: Option<RedisPrefix>,
    pub dir: Arc<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// `studio serve` driving one stand-in; `configure` adjusts the rest.
    pub async fn serve(
        kind: Backing,
        standin: &standin::StandIn,
        configure: impl FnOnce(&mut ServerArgs),
    ) -> TestApp {
        let url = standin.url();
        Self::spawn(kind, Role::Serve, move |a| {
            a.comfyui = vec![url];
            configure(a);
        })
        .await
    }

    /// Builds and starts the app; `configure` adjusts the settings.
    pub async fn spawn(
        kind: Backing,
        role: Role,
        configure: impl FnOnce(&mut ServerArgs),
    ) -> TestApp {
        let redis = (kind == Backing::Redis).then(RedisPrefix::new);
        Self::spawn_with(kind, role, redis, Arc::new(TempDir::new()), configure).await
    }

    /// Like `spawn`, sharing a Redis prefix or data directory with another app.
    pub async fn spawn_with(
        kind: Backing,
        role: Role,
        redis: Option<RedisPrefix>,
        dir: Arc<TempDir>,
        configure: impl FnOnce(&mut ServerArgs),
    ) -> TestApp {
        init_logs();
        let mut args = test_args(dir.path());
        if kind == Backing::Redis {
            let r = redis.as_ref().expect("a Redis prefix");
            args.store.redis_url = Some(r.url.clone());
            args.store.redis_prefix = r.prefix.clone();
        }
        configure(&mut args);
        let app = App::build(role, &args).await.expect("app builds");
        let addr = app.local_addr();
        let comfy = app.comfyui_addr().map(|a| format!("http://{a}"));
        let conns = app.connections();
        let store = app.store();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            conns,
            base: addr.map(|a| format!("http://{a}")).unwrap_or_default(),
            comfy,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            store,
            redis,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Another app ("process") on this one's Redis prefix, with a data directory
    /// of its own: what two machines sharing only Redis look like.
    pub async fn spawn_beside(
        &self,
        role: Role,
        configure: impl FnOnce(&mut ServerArgs),
    ) -> TestApp {
        let r = self.redis.as_ref().expect("an app on Redis");
        let shared = RedisPrefix {
            url: r.url.clone(),
            prefix: r.prefix.clone(),
        };
        Self::spawn_with(
            Backing::Redis,
            role,
            Some(shared),
            Arc::new(TempDir::new()),
            configure,
        )
        .await
    }

    /// An API key made straight in the app's store; its secret.
    pub async fn new_key(
        &self,
        name: &str,
        role: studio_core::auth::Role,
        limits: studio_core::auth::KeyLimits,
    ) -> String {
        studio_core::keys::create(self.store.as_ref(), name, role, limits, "test")
            .await
            .unwrap()
            .1
            .secret
    }

    /// A user key (its secret) limited to `rate` requests per second, in
    /// bursts of `burst`.
    pub async fn rate_limited_key(&self, name: &str, rate: f64, burst: u32) -> String {
        let limits = studio_core::auth::KeyLimits {
            rate: Some(rate),
            burst: Some(burst),
            ..Default::default()
        };
        self.new_key(name, studio_core::auth::Role::User, limits)
            .await
    }

    /// Stops the app the way SIGTERM does, and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).send().await.expect("GET");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Submits a job; panics unless accepted. Returns its id.
    pub async fn submit(&self, body: Value) -> String {
        let (status, v) = self.post_json("/api/generate", &body).await;
        assert_eq!(status, 202, "submission refused: {v}");
        v["job_id"].as_str().unwrap().to_owned()
    }

    pub async fn status(&self, id: &str) -> Value {
        self.status_as(None, id).await
    }

    /// A job's status as an API key (`None`: without one) sees it.
    pub async fn status_as(&self, key: Option<&str>, id: &str) -> Value {
        let mut req = self.http.get(self.url(&format!("/api/status/{id}")));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let res = req.send().await.unwrap();
        let code = res.status().as_u16();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(code, 200, "status of {id}: {v}");
        v
    }

    /// Polls the status until `done` says so; panics after `limit`.
    pub async fn wait_for(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for_as(None, id, limit, done).await
    }

    /// [`TestApp::wait_for`] as an API key.
    pub async fn wait_for_as(
        &self,
        key: Option<&str>,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.status_as(key, id).await;
            if done(&v) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("job {id} did not reach the expected state in {limit:?}; last status: {v}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for a final status.
    pub async fn wait_final(&self, id: &str, limit: Duration) -> Value {
        self.wait_for(id, limit, |v| {
            v["status"] == "finished" || v["status"] == "failed"
        })
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The `studio` binary cargo built for these tests.
pub fn studio_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_studio"))
}

/// One Server-Sent Event.
#[derive(Clone, Debug, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// Reads an SSE response event by event.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> (u16, SseReader) {
        let mut req = http.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.expect("stream opens");
        let status = res.status().as_u16();
        (
            status,
            SseReader {
                body: Box::pin(res.bytes_stream()),
                buf: String::new(),
            },
        )
    }

    /// The next `event: job` (previews of running jobs' pictures skipped); `None`
    /// when the stream ends.
    pub async fn next_job(&mut self, limit: Duration) -> Option<SseEvent> {
        loop {
            let ev = self.next(limit).await?;
            if ev.event != "preview" {
                return Some(ev);
            }
        }
    }

    /// The next event (comments skipped); `None` when the stream ends.
    pub async fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if !data.is_empty() || !ev.event.is_empty() {
                    ev.data = data.join("\n");
                    return Some(ev);
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(_) => return None,
                Err(_) => panic!("no event within {limit:?}; buffered: {:?}", self.buf),
            }
        }
    }
}

/// The model-free smoke graph in the API format.
pub fn smoke_api() -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 1, "sigma": 1.0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "studio"}}
    })
}

/// The same graph as ComfyUI saves it (the UI format): a reroute between the
/// invert and the blur, a note, a muted second saver, and the canvas titled
/// `$canvas` (its widgets become parameters).
pub fn smoke_ui() -> Value {
    json!({
        "last_node_id": 7, "last_link_id": 6,
        "nodes": [
            {"id": 1, "type": "EmptyImage", "mode": 0, "title": "$canvas", "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
             "widgets_values": [48, 40, 1, 0]},
            {"id": 2, "type": "ImageInvert", "mode": 0,
             "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], "widgets_values": []},
            {"id": 5, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 2}],
             "outputs": [{"name": "", "type": "IMAGE", "links": [3]}]},
            {"id": 3, "type": "ImageBlur", "mode": 0,
             "inputs": [{"name": "image", "type": "IMAGE", "link": 3}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4, 6]}], "widgets_values": [2, 1.5]},
            {"id": 4, "type": "SaveImage", "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 4}], "widgets_values": ["ComfyUI"]},
            {"id": 6, "type": "Note", "mode": 0, "inputs": [], "widgets_values": ["made in ComfyUI"]},
            {"id": 7, "type": "SaveImage", "mode": 2,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 6}], "widgets_values": ["muted"]}
        ],
        "links": [
            [1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 5, 0, "*"], [3, 5, 0, 3, 0, "IMAGE"],
            [4, 3, 0, 4, 0, "IMAGE"], [6, 3, 0, 7, 0, "IMAGE"]
        ],
        "version": 0.4
    })
}

/// Runs a Python client script of this repository (`tests/<script>`) with the
/// tools venv's Python (`scripts/test` makes it), at most `limit`; it must
/// succeed and print one JSON line last, which is returned.
pub async fn python_json(script: &str, args: &[&str], limit: Duration) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/tools/venv/bin/python");
    assert!(python.exists(), "scripts/test makes {}", python.display());
    let out = tokio::process::Command::new(&python)
        .arg(root.join("tests").join(script))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output();
    let out = tokio::time::timeout(limit, out)
        .await
        .unwrap_or_else(|_| panic!("{script} did not end within {limit:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{script}: {e}: {stdout}"))
}
