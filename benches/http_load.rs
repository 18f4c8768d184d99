//! HTTP load on `studio api`: `POST /api/generate` then `GET /api/status/<id>`, at
//! 32 concurrent keep-alive connections, against Redis and against the embedded
//! SQLite store. Prints requests/s, the server's CPU time per request (steadier
//! than requests/s on a shared machine: it does not move with what else runs),
//! p50/p99/max latency and the server's peak memory. A benchmark, not a test: it prints figures and never fails on them.
//!
//! Run: `cargo bench --bench http_load` (Redis at 127.0.0.1:6379, or
//! `TEST_REDIS_URL`; `BENCH_SECONDS` per phase, default 10; `BENCH_CONNECTIONS`,
//! default 32). Loopback only; bounded in time.
//!
//! `BENCH_STORES=sqlite` (or `redis`) runs one store only; `BENCH_REPEAT=N` runs
//! N rounds (alternating the builds) and prints the medians.
//! `BENCH_AUTH=off,keys` (the default) runs this build with auth off and with
//! `--auth keys` and an API key on every request (a user key without a rate
//! limit), so what keys cost is measured in the same run; `BENCH_AUTH=off` skips it.
//! `BENCH_BASELINE_BIN=/path/to/other/studio` runs the same phases against that
//! binary too, in turn with this build, so a change is measured against the code
//! before it in one run (e.g. a `cargo build --release` of an older commit in a
//! `git worktree`).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use support::{Studio, cleanup_redis, cpu_time, env_or, pct, prefix, redis_url};
use tokio::net::TcpStream;

/// Starts `studio api`; with `keys`, auth on and a key made with `studio keys
/// create` on the same store (its secret returned).
fn start(bin: &Path, store: &str, prefix: &str, keys: bool) -> (Studio, Option<String>) {
    // The queue cap is not what this measures: 10 s of submissions overshoot the
    // default 100,000. (A baseline without the setting ignores it.)
    let mut envs = vec![("STUDIO_MAX_QUEUED", "100000000".to_owned())];
    if store == "redis" {
        envs.push(("REDIS_URL", redis_url()));
        envs.push(("STUDIO_REDIS_PREFIX", prefix.to_owned()));
    }
    if keys {
        envs.push(("STUDIO_AUTH", "keys".to_owned()));
    }
    let server = Studio::start_bin(bin, "api", &envs);
    if !keys {
        return (server, None);
    }
    let key = server.create_key(bin, &envs, &[]);
    (server, Some(key))
}

#[derive(Clone, Copy)]
enum Phase {
    Submit,
    Status,
}

struct Result {
    /// Server CPU time (user + system) spent during the phase.
    cpu: Duration,
    count: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    ids: Vec<String>,
}

async fn run_phase(
    addr: SocketAddr,
    phase: Phase,
    conns: usize,
    secs: u64,
    ids: Arc<Vec<String>>,
    auth: Option<Arc<str>>,
) -> Result {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let stop = stop.clone();
        let ids = ids.clone();
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut send, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0;
            let mut mine = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let mut req = match phase {
                    Phase::Submit => Request::post("/api/generate")
                        .header("host", "bench")
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(format!(
                            r#"{{"prompt": "a lighthouse at dusk, oil painting, number {i}", "seed": {i}, "workflow": "sdxl"}}"#
                        ))))
                        .unwrap(),
                    Phase::Status => Request::get(format!("/api/status/{}", ids[i % ids.len()]))
                        .header("host", "bench")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                };
                if let Some(a) = &auth {
                    req.headers_mut().insert("authorization", a.parse().unwrap());
                }
                i += conns;
                let t = Instant::now();
                let res = match send.send_request(req).await {
                    Ok(r) => r,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                };
                let status = res.status().as_u16();
                let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                lat.push(t.elapsed());
                let ok = matches!((phase, status), (Phase::Submit, 202) | (Phase::Status, 200));
                if !ok {
                    errors += 1;
                } else if let Phase::Submit = phase
                    && mine.len() < 2000
                {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    mine.push(v["job_id"].as_str().unwrap().to_owned());
                }
            }
            (lat, errors, mine)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut out = Result {
        cpu: Duration::ZERO,
        count: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        ids: Vec::new(),
    };
    for t in tasks {
        let (lat, errors, mine) = t.await.unwrap();
        out.count += lat.len();
        out.errors += errors;
        out.latencies.extend(lat);
        out.ids.extend(mine);
    }
    out.elapsed = started.elapsed();
    out
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

fn report(store: &str, what: &str, r: &mut Result) {
    r.latencies.sort();
    println!(
        "{store:<16} {what:<22} {:>9.0} req/s  {:>5.0} µs server CPU/req  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  ({} requests, {} errors, {:.1} s)",
        r.count as f64 / r.elapsed.as_secs_f64(),
        r.cpu.as_secs_f64() * 1e6 / r.count.max(1) as f64,
        ms(pct(&r.latencies, 0.50)),
        ms(pct(&r.latencies, 0.99)),
        ms(r.latencies.last().copied()),
        r.count,
        r.errors,
        r.elapsed.as_secs_f64(),
    );
}

fn main() {
    let secs: u64 = env_or("BENCH_SECONDS", 10);
    let conns: usize = env_or("BENCH_CONNECTIONS", 32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "Studio Core HTTP load: {conns} connections, {secs} s per phase, release build, one machine ({} CPUs)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let this = PathBuf::from(env!("CARGO_BIN_EXE_studio"));
    let auth: String = env_or("BENCH_AUTH", "off,keys".to_owned());
    let mut builds = Vec::new();
    if let Ok(base) = std::env::var("BENCH_BASELINE_BIN") {
        builds.push((" (baseline)", PathBuf::from(base), false));
    }
    for mode in auth.split(',').map(str::trim) {
        match mode {
            "off" => builds.push(("", this.clone(), false)),
            "keys" => builds.push((" +keys", this.clone(), true)),
            other => panic!("BENCH_AUTH: unknown mode {other:?} (off, keys)"),
        }
    }
    // Rounds alternate the builds, so drift on a shared machine hits both alike;
    // the medians at the end are the figures to compare.
    let rounds: usize = env_or("BENCH_REPEAT", 1);
    let stores: String = env_or("BENCH_STORES", "redis,sqlite".to_owned());
    let mut medians: Vec<(String, &str, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut record = |name: &str, what: &'static str, r: &Result| {
        let rate = r.count as f64 / r.elapsed.as_secs_f64();
        let cpu = r.cpu.as_secs_f64() * 1e6 / r.count.max(1) as f64;
        match medians.iter_mut().find(|m| m.0 == name && m.1 == what) {
            Some(m) => {
                m.2.push(rate);
                m.3.push(cpu);
            }
            None => medians.push((name.to_owned(), what, vec![rate], vec![cpu])),
        }
    };
    for store in stores.split(',').map(str::trim) {
        for _ in 0..rounds {
            for (label, bin, keys) in &builds {
                let name = format!("{store}{label}");
                let prefix = prefix("bench");
                let (server, auth) = start(bin, store, &prefix, *keys);
                let auth: Option<Arc<str>> = auth.map(Arc::from);
                let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
                rt.block_on(async {
                    // Warm up connections and caches.
                    run_phase(
                        addr,
                        Phase::Submit,
                        conns,
                        1,
                        Arc::new(Vec::new()),
                        auth.clone(),
                    )
                    .await;
                    let pid = server.child.id();
                    let cpu0 = cpu_time(pid);
                    let mut submit = run_phase(
                        addr,
                        Phase::Submit,
                        conns,
                        secs,
                        Arc::new(Vec::new()),
                        auth.clone(),
                    )
                    .await;
                    let cpu1 = cpu_time(pid);
                    submit.cpu = cpu1 - cpu0;
                    report(&name, "POST /api/generate", &mut submit);
                    record(&name, "POST /api/generate", &submit);
                    let ids = Arc::new(std::mem::take(&mut submit.ids));
                    let mut status =
                        run_phase(addr, Phase::Status, conns, secs, ids, auth.clone()).await;
                    status.cpu = cpu_time(pid) - cpu1;
                    report(&name, "GET /api/status/<id>", &mut status);
                    record(&name, "GET /api/status/<id>", &status);
                });
                println!(
                    "{name:<16} peak server memory (VmHWM): {:.1} MiB",
                    server.memory_mib("VmHWM:")
                );
                drop(server);
                if store == "redis" {
                    cleanup_redis(&prefix);
                }
            }
        }
    }
    if rounds > 1 {
        println!("medians of {rounds} rounds:");
        for (name, what, mut rates, mut cpus) in medians {
            rates.sort_by(f64::total_cmp);
            cpus.sort_by(f64::total_cmp);
            println!(
                "{name:<16} {what:<22} {:>9.0} req/s  {:>5.0} µs server CPU/req",
                rates[rates.len() / 2],
                cpus[cpus.len() / 2]
            );
        }
    }
}
