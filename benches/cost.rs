//! What a request costs: CPU seconds of the server processes plus Redis, divided by
//! requests, under wrk (1 thread, 32 connections), for `POST /api/generate` and
//! `GET /api/status/<id>`; Studio Core's `api` role on Redis and on the embedded
//! store, with auth off and with an API key that has a rate limit and a queue
//! quota, against the first prototype (benches/prototype, Flask under gunicorn
//! with 4 workers) on the same Redis in the same run. Prints requests/s, p99 and
//! the CPU per request from `/proc`. A benchmark: it prints figures and never
//! fails on them.
//!
//! Run: `cargo bench --bench cost`. Needs `wrk` and `redis-server` (Debian's
//! packages) and Python 3; the prototype's packages (benches/prototype/
//! requirements.txt) are installed once into target/tools/prototype-venv.
//! Each phase starts on its own Redis (a `redis-server` on a free port that this
//! bench starts and stops), so Redis's CPU is this phase's alone.
//!
//! Beside them, the floor (benches/cost/floor.rs): the prototype's own work done
//! on Studio Core's HTTP stack in one Redis round trip and nothing more, what no
//! service could undercut on this machine.
//!
//! `BENCH_SECONDS` per phase (8); `BENCH_CONNECTIONS` (32); `BENCH_ROUNDS` (1;
//! medians over rounds); `BENCH_STORES` (`redis,sqlite`); `BENCH_AUTH`
//! (`off,keys`); `BENCH_PROTOTYPE=0` skips the prototype, `BENCH_FLOOR=0` the
//! floor; `BENCH_BASELINE_BIN` runs the same phases against another `studio`
//! build (the previous commit's) in turn with this one.

#[path = "cost/floor.rs"]
mod floor;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Studio, cpu_time, env_or, free_port};

const SUBMISSION: &str =
    r#"{"prompt":"a lighthouse at dusk, oil on canvas","seed":42,"workflow":"sdxl"}"#;

/// A `redis-server` of this bench's own on a free port, stopped when dropped.
struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("studio-cost-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        wait_listening(port);
        Redis { child, port, dir }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The floor server (this bench's binary started again as it), stopped when
/// dropped.
struct Floor {
    child: Child,
    port: u16,
}

impl Floor {
    /// On `redis`, or with the jobs in memory (`None`).
    fn start(redis: Option<&Redis>) -> Floor {
        let port = free_port();
        let child = Command::new(std::env::current_exe().expect("the bench's own path"))
            .env(
                "COST_FLOOR_REDIS",
                redis.map_or("memory".to_owned(), Redis::url),
            )
            .env("COST_FLOOR_PORT", port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("the floor server starts");
        wait_listening(port);
        Floor { child, port }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The prototype under gunicorn (4 sync workers), stopped when dropped.
struct Prototype {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prototype {
    fn start(redis: &Redis) -> Prototype {
        let venv = prototype_venv();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("studio-cost-prototype-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/prototype");
        let child = Command::new(venv.join("bin/gunicorn"))
            .args(["--workers", "4", "--bind", &format!("127.0.0.1:{port}")])
            .arg("--pythonpath")
            .arg(&app)
            .arg("app:app")
            .current_dir(&dir)
            .env("REDIS_HOST", "127.0.0.1")
            .env("REDIS_PORT", redis.port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gunicorn runs");
        wait_listening(port);
        // Every worker up before measuring.
        std::thread::sleep(Duration::from_secs(2));
        Prototype { child, port, dir }
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(children_of(self.child.id()));
        pids
    }
}

impl Drop for Prototype {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in children_of(self.child.id()) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// target/tools/prototype-venv with the prototype's packages, made once.
fn prototype_venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/tools/prototype-venv");
    let ready = Command::new(venv.join("bin/python"))
        .args(["-c", "import flask, flask_cors, gunicorn, redis"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ready {
        return venv;
    }
    if !venv.join("bin/pip").exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv failed (apt-get install python3-venv)");
    }
    let ok = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", "-r"])
        .arg(root.join("benches/prototype/requirements.txt"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "installing the prototype's packages failed");
    venv
}

/// One HTTP/1.1 request on a fresh connection; the status code and the body.
fn http(port: u16, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (code, body)
}

/// Submits `n` jobs; their ids, for the status phase.
fn submit_some(port: u16, auth: Option<&str>, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (code, body) = http(port, "POST", "/api/generate", auth, SUBMISSION);
            assert_eq!(code, 202, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["job_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Submit,
    Status,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Submit => "POST /api/generate",
            Phase::Status => "GET /api/status",
        }
    }
}

/// What one phase measured.
#[derive(Clone, Copy, Default)]
struct Figures {
    errors: u64,
    rps: f64,
    p99_ms: f64,
    /// CPU per request, µs.
    server_us: f64,
    redis_us: f64,
}

/// The wrk scripts, written once under target/.
fn scripts(dir: &Path, ids: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let submit = dir.join("submit.lua");
    std::fs::write(
        &submit,
        format!(
            "wrk.method = \"POST\"\nwrk.path = \"/api/generate\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.body = '{SUBMISSION}'\n"
        ),
    )
    .unwrap();
    let status = dir.join("status.lua");
    std::fs::write(
        &status,
        format!(
            "local ids = {{}}\nfor line in io.lines(\"{}\") do ids[#ids + 1] = line end\n\
             local i = 0\nrequest = function()\n  i = i % #ids + 1\n  \
             return wrk.format(\"GET\", \"/api/status/\" .. ids[i])\nend\n",
            ids.display()
        ),
    )
    .unwrap();
    (submit, status)
}

/// Runs wrk against `port` while taking the CPU time of `server` and `redis`.
fn wrk(port: u16, script: &Path, auth: Option<&str>, server: &[u32], redis: u32) -> Figures {
    let seconds: u64 = env_or("BENCH_SECONDS", 8);
    let connections: u32 = env_or("BENCH_CONNECTIONS", 32);
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_time(*p)).sum::<Duration>();
    let (s0, r0) = (cpu(server), cpu_time(redis));
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg("--latency")
        .arg("-s")
        .arg(script);
    if let Some(a) = auth {
        cmd.args(["-H", &format!("Authorization: {a}")]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let (s1, r1) = (cpu(server), cpu_time(redis));
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .map(str::trim)
                .map(str::to_owned)
        })
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let errors = field("Non-2xx or 3xx responses:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
        + field("Socket errors:").map_or(0, |_| 1);
    let rps = field("Requests/sec:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let p99_ms = field("99%").map_or(f64::NAN, |v| millis(&v));
    let per = |d: Duration| d.as_secs_f64() * 1e6 / requests.max(1) as f64;
    Figures {
        errors,
        rps,
        p99_ms,
        server_us: per(s1 - s0),
        redis_us: per(r1 - r0),
    }
}

/// wrk's latency (`812.00us`, `3.21ms`, `1.02s`) in milliseconds.
fn millis(v: &str) -> f64 {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

/// Starts `studio api` on `store`; with `keys`, auth on and a key with a rate
/// limit and a queue quota (its `Authorization` value returned).
fn studio(bin: &Path, store: &str, redis: &Redis, keys: bool) -> (Studio, Option<String>) {
    let mut envs = vec![("STUDIO_MAX_QUEUED", "100000000".to_owned())];
    if store == "redis" {
        envs.push(("REDIS_URL", redis.url()));
    }
    if keys {
        envs.push(("STUDIO_AUTH", "keys".to_owned()));
    }
    let server = Studio::start_bin(bin, "api", &envs);
    if !keys {
        return (server, None);
    }
    let key = server.create_key(
        bin,
        &envs,
        &["--rate", "1000000/s", "--max-queued", "100000000"],
    );
    (server, Some(key))
}

/// One target's two phases on a fresh Redis: submissions, then status reads of
/// jobs it queued.
fn measure(target: &Target, dir: &Path) -> [Figures; 2] {
    let redis = Redis::start();
    let redis_pid = redis.child.id();
    let ids_file = dir.join(format!("ids-{}", redis.port));
    let (submit, status) = scripts(dir, &ids_file);
    let run = |port: u16, auth: Option<&str>, pids: &[u32]| {
        std::fs::write(&ids_file, submit_some(port, auth, 1000).join("\n")).unwrap();
        let a = wrk(port, &submit, auth, pids, redis_pid);
        let b = wrk(port, &status, auth, pids, redis_pid);
        [a, b]
    };
    let figures = match target {
        Target::Prototype => {
            let p = Prototype::start(&redis);
            run(p.port, None, &p.pids())
        }
        Target::Floor { store } => {
            let f = Floor::start((*store == "redis").then_some(&redis));
            run(f.port, None, &[f.child.id()])
        }
        Target::Studio {
            bin, store, keys, ..
        } => {
            let (s, auth) = studio(bin, store, &redis, *keys);
            run(s.port, auth.as_deref(), &[s.child.id()])
        }
    };
    let _ = std::fs::remove_file(&ids_file);
    figures
}

enum Target {
    Prototype,
    /// The floor on Redis, or in memory (`store` = `sqlite`: the floor of an
    /// embedded store).
    Floor {
        store: &'static str,
    },
    Studio {
        label: String,
        bin: PathBuf,
        store: &'static str,
        keys: bool,
    },
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Prototype => "prototype (Redis)".into(),
            Target::Floor { store: "redis" } => "floor (Redis)".into(),
            Target::Floor { .. } => "floor (in memory)".into(),
            Target::Studio { label, .. } => label.clone(),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    floor::serve_if_asked();
    let rounds: usize = env_or("BENCH_ROUNDS", 1);
    let stores = std::env::var("BENCH_STORES").unwrap_or_else(|_| "redis,sqlite".into());
    let auths = std::env::var("BENCH_AUTH").unwrap_or_else(|_| "off,keys".into());
    let this = PathBuf::from(env!("CARGO_BIN_EXE_studio"));
    let mut builds = vec![("this".to_owned(), this)];
    if let Ok(b) = std::env::var("BENCH_BASELINE_BIN") {
        builds.push(("before".to_owned(), PathBuf::from(b)));
    }
    let mut targets = Vec::new();
    if std::env::var("BENCH_PROTOTYPE").as_deref() != Ok("0") {
        targets.push(Target::Prototype);
    }
    for store in ["redis", "sqlite"] {
        if !stores.split(',').any(|s| s == store) {
            continue;
        }
        if std::env::var("BENCH_FLOOR").as_deref() != Ok("0") {
            targets.push(Target::Floor { store });
        }
        for auth in ["off", "keys"] {
            if !auths.split(',').any(|a| a == auth) {
                continue;
            }
            for (name, bin) in &builds {
                targets.push(Target::Studio {
                    label: format!("{name} {store} auth {auth}"),
                    bin: bin.clone(),
                    store,
                    keys: auth == "keys",
                });
            }
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-cost");
    let mut all: Vec<Vec<[Figures; 2]>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (t, target) in targets.iter().enumerate() {
            let f = measure(target, &dir);
            for (phase, x) in [Phase::Submit, Phase::Status].into_iter().zip(&f) {
                eprintln!(
                    "round {round}: {:<28} {:<19} {:>8.0} req/s, server {:>6.1} µs + Redis {:>5.1} µs{}",
                    target.label(),
                    phase.name(),
                    x.rps,
                    x.server_us,
                    x.redis_us,
                    if x.errors > 0 {
                        format!(", {} errors", x.errors)
                    } else {
                        String::new()
                    }
                );
            }
            all[t].push(f);
        }
    }
    let med = |t: usize, p: usize, f: fn(&Figures) -> f64| {
        median(all[t].iter().map(|r| f(&r[p])).collect())
    };
    let proto = targets.iter().position(|t| matches!(t, Target::Prototype));
    println!(
        "\nmedians of {rounds} round(s), {} s each, wrk -t1 -c{}:",
        env_or::<u64>("BENCH_SECONDS", 8),
        env_or::<u32>("BENCH_CONNECTIONS", 32)
    );
    println!(
        "| {:<28} | {:<19} | {:>8} | {:>8} | {:>9} | {:>8} | {:>8} | {:>11} | {:>7} |",
        "target",
        "request",
        "req/s",
        "p99 ms",
        "server µs",
        "Redis µs",
        "total µs",
        "/ prototype",
        "× floor"
    );
    for (t, target) in targets.iter().enumerate() {
        for (p, phase) in [Phase::Submit, Phase::Status].into_iter().enumerate() {
            let total = med(t, p, |f| f.server_us + f.redis_us);
            let ratio = proto.map_or(String::from("—"), |q| {
                format!("1/{:.1}", med(q, p, |f| f.server_us + f.redis_us) / total)
            });
            let floor = match target {
                Target::Studio { store, .. } => targets
                    .iter()
                    .position(|f| matches!(f, Target::Floor { store: s } if s == store)),
                _ => None,
            };
            let above = floor.map_or(String::from("—"), |f| {
                format!("{:.1}", total / med(f, p, |f| f.server_us + f.redis_us))
            });
            println!(
                "| {:<28} | {:<19} | {:>8.0} | {:>8.2} | {:>9.1} | {:>8.1} | {:>8.1} | {:>11} | {:>7} |",
                target.label(),
                phase.name(),
                med(t, p, |f| f.rps),
                med(t, p, |f| f.p99_ms),
                med(t, p, |f| f.server_us),
                med(t, p, |f| f.redis_us),
                total,
                ratio,
                above
            );
        }
    }
}
