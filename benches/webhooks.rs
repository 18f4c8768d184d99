//! Webhook delivery: how long from a job's end (the worker recording its outcome)
//! to the signed POST reaching a receiver on loopback, one job at a time; and how
//! many webhooks a worker process's deliverer sends per second when it finds
//! thousands due (jobs that ended while no worker was delivering). The store, the
//! outbox, the wake-up through the store's change events, signing and HTTP are all
//! the real ones; the receiver answers 204 at once.
//!
//! Run: `cargo bench --bench webhooks` (`BENCH_WEBHOOKS` (2000) for the backlog,
//! `BENCH_SEQUENTIAL` (200) one at a time, `BENCH_STORES` (redis,sqlite),
//! `BENCH_CONCURRENCY` (16, the deliverer's; 1 shows what the 16 buy)).

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use studio_core::job::NewJob;
use studio_core::store::{Completion, JobStore, RedisStore, SqliteStore, StoreSettings, WorkerId};
use studio_core::webhooks::{Secret, WebhookRecord, WebhookSettings};
use studio_core::worker::webhooks::Deliverer;
use support::{cleanup_redis, env_or, pct, prefix, redis_url};

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// A receiver that notes when each `webhook-id` first arrives and answers 204.
async fn receiver(arrivals: Arrivals) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let now = Instant::now();
                    if let Some(id) = req
                        .headers()
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                    {
                        arrivals.lock().unwrap().entry(id.to_owned()).or_insert(now);
                    }
                    async {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(204)
                                .body(Empty::<Bytes>::new())
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/hook")
}

/// Queues `n` jobs with a webhook, as the API does (the record first, due at
/// `due_in` from now).
async fn submit(s: &dyn JobStore, url: &str, n: usize, due_in: u64) -> Vec<NewJob> {
    let mut jobs = Vec::with_capacity(n);
    for i in 0..n {
        let mut params = Map::new();
        params.insert("webhook_url".into(), Value::String(url.to_owned()));
        let j = NewJob::new(format!("job {i}"), 1, "smoke".into(), params);
        let now = studio_core::clock::now_ms();
        let rec = WebhookRecord::new(
            url.into(),
            vec!["job.finished".into(), "job.failed".into()],
            now,
        );
        assert!(
            s.put_webhook(
                &j.id,
                &rec,
                now + due_in,
                studio_core::store::OutboxCap {
                    total: 1_000_000,
                    per_owner: 1_000_000,
                },
            )
            .await
            .unwrap()
        );
        s.enqueue(&j).await.unwrap();
        jobs.push(j);
    }
    jobs
}

/// Claims and finishes one job; when its `complete` returned.
async fn finish_one(s: &dyn JobStore, w: &WorkerId) -> (String, Instant) {
    let c = s
        .claim(w, Duration::from_secs(1))
        .await
        .unwrap()
        .expect("a job");
    let done = Completion::Finished {
        image_url: String::new(),
        outputs: Vec::new(),
    };
    let at = Instant::now();
    assert!(s.complete(&c.lease, done).await.unwrap());
    (format!("msg_{}_finished", c.lease.job_id), at)
}

async fn wait_all(arrivals: &Arrivals, ids: &[(String, Instant)]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = {
            let a = arrivals.lock().unwrap();
            ids.iter().filter(|(id, _)| a.contains_key(id)).count()
        };
        if got == ids.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} of {} webhooks arrived",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

async fn run(store: &str, s: Arc<dyn JobStore>, burst: usize, sequential: usize) {
    let arrivals: Arrivals = Arc::default();
    let url = receiver(arrivals.clone()).await;
    let settings = Arc::new(WebhookSettings {
        secrets: vec![Secret::parse(&Secret::generate()).unwrap()],
        allow_private: true,
        concurrency: env_or("BENCH_CONCURRENCY", 16),
        ..WebhookSettings::default()
    });
    let metrics = studio_core::metrics::Metrics::new(
        studio_core::workflow::WorkflowRegistry::built_in()
            .names()
            .map(str::to_owned),
    );
    let deliverer =
        || Arc::new(Deliverer::new(s.clone(), settings.clone(), metrics.clone()).unwrap());
    let w = WorkerId::from_string(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    s.heartbeat(&w).await.unwrap();

    // One at a time, a deliverer running: the job ends, its change wakes its
    // webhook, which is sent; then the next job ends.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(deliverer().run(stop_rx));
    submit(s.as_ref(), &url, sequential, 10_000).await;
    let mut lat = Vec::with_capacity(sequential);
    for _ in 0..sequential {
        let one = finish_one(s.as_ref(), &w).await;
        wait_all(&arrivals, std::slice::from_ref(&one)).await;
        let got = arrivals.lock().unwrap()[&one.0];
        lat.push(got - one.1);
    }
    let _ = stop.send(true);
    let _ = task.await;
    lat.sort();
    println!(
        "{store:<7} one at a time ({sequential} jobs): job end → webhook received  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99)),
        ms(lat.last().copied())
    );

    // A backlog: `burst` jobs ended while no worker delivered; one deliverer
    // starts and sends them all.
    submit(s.as_ref(), &url, burst, 0).await;
    let mut ended = Vec::with_capacity(burst);
    for _ in 0..burst {
        ended.push(finish_one(s.as_ref(), &w).await);
    }
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let t0 = Instant::now();
    let task = tokio::spawn(deliverer().run(stop_rx));
    wait_all(&arrivals, &ended).await;
    let all = t0.elapsed();
    let _ = stop.send(true);
    let _ = task.await;
    println!(
        "{store:<7} a backlog of {burst}: all delivered in {:.2} s, {:.0} webhooks/s",
        all.as_secs_f64(),
        burst as f64 / all.as_secs_f64(),
    );
}

fn main() {
    let burst: usize = env_or("BENCH_WEBHOOKS", 2000);
    let sequential: usize = env_or("BENCH_SEQUENTIAL", 200);
    let stores: String = env_or("BENCH_STORES", "redis,sqlite".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "Studio Core webhooks: delivery to a receiver on loopback (16 in flight), release build"
    );
    for store in stores.split(',').map(str::trim) {
        let p = prefix("hooks");
        let dir =
            std::env::temp_dir().join(format!("studio-hooks-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let _guard = rt.enter();
        let s: Arc<dyn JobStore> = match store {
            "redis" => {
                Arc::new(RedisStore::connect(&redis_url(), &p, StoreSettings::default()).unwrap())
            }
            "sqlite" => Arc::new(SqliteStore::open(&dir, StoreSettings::default()).unwrap()),
            other => panic!("BENCH_STORES: unknown store {other:?}"),
        };
        rt.block_on(run(store, s.clone(), burst, sequential));
        drop(s);
        if store == "redis" {
            cleanup_redis(&p);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
