//! Live-event latency: 1,000 open SSE streams (one per running job), then rounds of
//! progress writes through the store as a worker makes them; for each write, the
//! time until the stream of that job receives it. Prints p50/p99/max and the
//! server's memory. Redis: `studio api` in its own process, the writes from this
//! one (so every event crosses Redis pub/sub); SQLite: the app in this process.
//!
//! Run: `cargo bench --bench sse_latency` (`BENCH_STREAMS` (1000), `BENCH_ROUNDS`
//! (10)). Loopback only.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Map;
use studio_core::job::NewJob;
use studio_core::store::{JobStore, Lease, Preview, RedisStore, StoreSettings, WorkerId};
use support::{Studio, cleanup_redis, env_or, memory_mib, pct, prefix, redis_url};
use tokio::net::TcpStream;

type Arrivals = Arc<Mutex<HashMap<(String, u64), Instant>>>;

/// Where preview arrivals are recorded (above any progress value).
const PREVIEW_KEY: u64 = 1_000;
/// Preview rounds (one preview per job each), after the progress rounds.
const PREVIEW_ROUNDS: u64 = 3;

/// Opens one stream and records when each progress value arrives.
async fn stream(
    addr: SocketAddr,
    id: String,
    arrivals: Arrivals,
    ready: Arc<tokio::sync::Semaphore>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/api/jobs/{id}/events"))
        .header("host", "bench")
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    let mut buf = String::new();
    let mut first = true;
    while let Some(Ok(frame)) = body.frame().await {
        let now = Instant::now();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if first {
                first = false;
                ready.add_permits(1);
            }
            if let Some(line) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
                // A preview announcement: recorded under PREVIEW_KEY + its number.
                if let (Some(seq), true) = (v["seq"].as_u64(), v["url"].is_string()) {
                    arrivals
                        .lock()
                        .unwrap()
                        .entry((id.clone(), PREVIEW_KEY + seq))
                        .or_insert(now);
                } else if let Some(p) = v["progress"].as_u64() {
                    arrivals
                        .lock()
                        .unwrap()
                        .entry((id.clone(), p))
                        .or_insert(now);
                }
            }
        }
    }
}

async fn measure(
    label: &str,
    addr: SocketAddr,
    store: Arc<dyn JobStore>,
    streams: usize,
    rounds: u64,
    server_pid: u32,
    whose: &str,
) {
    let worker = WorkerId::from_string(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    store.heartbeat(&worker).await.unwrap();
    let mut leases: Vec<Lease> = Vec::new();
    for i in 0..streams {
        store
            .enqueue(&NewJob::new(
                format!("sse {i}"),
                i as u64,
                "smoke".into(),
                Map::new(),
            ))
            .await
            .unwrap();
    }
    while leases.len() < streams {
        let c = store
            .claim(&worker, Duration::from_secs(1))
            .await
            .unwrap()
            .expect("claim");
        leases.push(c.lease);
    }
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    for l in &leases {
        tokio::spawn(stream(
            addr,
            l.job_id.to_string(),
            arrivals.clone(),
            ready.clone(),
        ));
    }
    let _all = ready.acquire_many(streams as u32).await.unwrap();
    let mem_open = memory_mib(server_pid, "VmRSS:");
    let mut writes: Vec<(String, u64, Instant)> = Vec::new();
    let started = Instant::now();
    for p in 1..=rounds {
        for l in &leases {
            let t = Instant::now();
            store.update(l, Some(p as u8), None).await.unwrap();
            writes.push((l.job_id.to_string(), p, t));
        }
        store.heartbeat(&worker).await.unwrap();
    }
    let write_time = started.elapsed();
    // Previews, as a worker publishes them (a recorded 87-byte PNG each).
    let picture = Bytes::from_static(include_bytes!(
        "../tests/fixtures/comfyui/files/g_progress_savewebsocket_main_ws_binary_1.bin"
    ))
    .slice(8..);
    let mut previews: Vec<(String, u64, Instant)> = Vec::new();
    for seq in 1..=PREVIEW_ROUNDS {
        for l in &leases {
            let p = Preview {
                seq,
                content_type: "image/png".into(),
                image: picture.clone(),
            };
            let t = Instant::now();
            store.put_preview(&l.job_id, "", &p).await.unwrap();
            previews.push((l.job_id.to_string(), PREVIEW_KEY + seq, t));
            // The embedded store publishes without waiting on anything: let the
            // streams run, as a worker (at most four previews a second a job) does.
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = arrivals.lock().unwrap();
    let mut plat: Vec<f64> = previews
        .iter()
        .filter_map(|(id, k, t)| {
            got.get(&(id.clone(), *k))
                .map(|a| a.saturating_duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    plat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{label:<7} {} previews published: publish→event p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} not received",
        previews.len(),
        pct(&plat, 0.5).unwrap_or(f64::NAN),
        pct(&plat, 0.99).unwrap_or(f64::NAN),
        plat.last().copied().unwrap_or(f64::NAN),
        previews.len() - plat.len(),
    );
    let mut lat: Vec<f64> = Vec::new();
    let mut missing = 0;
    for (id, p, t) in &writes {
        match got.get(&(id.clone(), *p)) {
            Some(a) => lat.push(a.saturating_duration_since(*t).as_secs_f64() * 1000.0),
            None => missing += 1,
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{label:<7} {streams} open streams, {} progress writes in {:.2} s ({:.0}/s): write→event p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {missing} not received; {whose} RSS with streams open {:.1} MiB, peak {:.1} MiB",
        writes.len(),
        write_time.as_secs_f64(),
        writes.len() as f64 / write_time.as_secs_f64(),
        pct(&lat, 0.5).unwrap_or(f64::NAN),
        pct(&lat, 0.99).unwrap_or(f64::NAN),
        lat.last().copied().unwrap_or(f64::NAN),
        mem_open,
        memory_mib(server_pid, "VmHWM:"),
    );
}

fn main() {
    let streams: usize = env_or("BENCH_STREAMS", 1000);
    let rounds: u64 = env_or("BENCH_ROUNDS", 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "Studio Core live events: {streams} SSE streams, {rounds} progress writes per job, release build"
    );

    // Redis: the API in its own process; every event crosses Redis pub/sub.
    let prefix = prefix("sse");
    let server = Studio::start(
        "api",
        &[
            ("REDIS_URL", redis_url()),
            ("STUDIO_REDIS_PREFIX", prefix.clone()),
            // Every stream comes from this one client address.
            ("STUDIO_MAX_STREAMS_PER_CLIENT", streams.to_string()),
            ("STUDIO_MAX_STREAMS", streams.to_string()),
        ],
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    rt.block_on(async {
        let store: Arc<dyn JobStore> =
            Arc::new(RedisStore::connect(&redis_url(), &prefix, StoreSettings::default()).unwrap());
        measure(
            "redis",
            addr,
            store,
            streams,
            rounds,
            server.child.id(),
            "server",
        )
        .await;
    });
    drop(server);
    cleanup_redis(&prefix);

    // SQLite: the app in this process (its events are in-process).
    rt.block_on(async {
        let dir =
            std::env::temp_dir().join(format!("studio-sse-{}", uuid::Uuid::new_v4().simple()));
        let args = studio_core::config::ServerArgs {
            port: 0,
            store: studio_core::config::StoreArgs {
                data_dir: dir.clone(),
                redis_url: None,
                redis_host: None,
                redis_port: 6379,
                redis_prefix: String::new(),
            },
            max_streams: streams,
            max_streams_per_client: streams,
            ..Default::default()
        };
        let app = studio_core::app::App::build(studio_core::config::Role::Api, &args)
            .await
            .unwrap();
        let addr = app.local_addr().unwrap();
        let store = app.store();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        measure(
            "sqlite",
            addr,
            store,
            streams,
            rounds,
            std::process::id(),
            "process (server and clients)",
        )
        .await;
        let _ = tx.send(());
        let _ = task.await;
        let _ = std::fs::remove_dir_all(dir);
    });
}
