//! What a claim costs when many keys have work waiting: 1,000 owners with 10 queued
//! jobs each (10,000 jobs), claimed one at a time (claim, then complete, as a
//! dispatcher does), against the same 10,000 jobs without owners (all in the
//! prototype's `job_queue`, one FIFO lane: the claim before fair share). On the
//! Redis at 127.0.0.1:6379 (or `TEST_REDIS_URL`) and on the embedded SQLite store.
//! Prints the time per claim (p50, p99, max) and checks nothing.
//!
//! Run: `cargo bench --bench claim` (`BENCH_OWNERS`, default 1000; `BENCH_PER_OWNER`,
//! default 10; `BENCH_CLAIMS`, default 2000; `BENCH_STORES`, default `redis,sqlite`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Map;
use studio_core::auth::Priority;
use studio_core::job::NewJob;
use studio_core::store::redis::RedisStore;
use studio_core::store::sqlite::SqliteStore;
use studio_core::store::{Completion, JobStore, StoreSettings, WorkerId};
use support::{cleanup_redis, env_or, pct, prefix, redis_url};

fn settings() -> StoreSettings {
    StoreSettings {
        max_queued: 10_000_000,
        ..StoreSettings::default()
    }
}

async fn fill(store: &dyn JobStore, owners: usize, per_owner: usize) {
    // Round by round, as many keys submitting at once would.
    for round in 0..per_owner {
        for o in 0..owners {
            let owner = if owners == 1 {
                String::new()
            } else {
                format!("{o:012x}")
            };
            let job = NewJob::new(
                format!("a lighthouse, job {round} of owner {o}"),
                (o * per_owner + round) as u64,
                "sdxl".into(),
                Map::new(),
            )
            .owned(&owner, Priority::Normal);
            store.enqueue(&job).await.unwrap();
        }
    }
}

async fn claims(store: &dyn JobStore, n: usize) -> Vec<Duration> {
    let w = WorkerId::from_string(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    store.heartbeat(&w).await.unwrap();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let c = store
            .claim(&w, Duration::from_millis(100))
            .await
            .unwrap()
            .expect("a job to claim");
        times.push(t.elapsed());
        store
            .complete(
                &c.lease,
                Completion::Failed {
                    error: "bench".into(),
                },
            )
            .await
            .unwrap();
    }
    times
}

fn report(store: &str, what: &str, mut t: Vec<Duration>) {
    t.sort();
    let us = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
    println!(
        "{store:<7} {what:<44} claim p50 {:>7.0} µs  p99 {:>7.0} µs  max {:>7.0} µs  ({} claims)",
        us(pct(&t, 0.50)),
        us(pct(&t, 0.99)),
        us(t.last().copied()),
        t.len()
    );
}

fn main() {
    let owners: usize = env_or("BENCH_OWNERS", 1000);
    let per_owner: usize = env_or("BENCH_PER_OWNER", 10);
    let n: usize = env_or("BENCH_CLAIMS", 2000);
    let stores: String = env_or("BENCH_STORES", "redis,sqlite".to_owned());
    let total = owners * per_owner;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("Studio Core claims: {total} queued jobs, {n} claims each way, release build");
    for store in stores.split(',').map(str::trim) {
        // Fair share (owners × per_owner), then one ownerless FIFO lane (1 × total).
        for (lanes, per_lane) in [(owners, per_owner), (1, total)] {
            let what = if lanes == 1 {
                format!("{total} jobs in job_queue (one FIFO lane)")
            } else {
                format!("{lanes} keys with {per_lane} queued each")
            };
            let p = prefix("claim");
            let dir = std::env::temp_dir()
                .join(format!("studio-claim-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            let _guard = rt.enter();
            let s: Arc<dyn JobStore> = match store {
                "redis" => Arc::new(RedisStore::connect(&redis_url(), &p, settings()).unwrap()),
                "sqlite" => Arc::new(SqliteStore::open(&dir, settings()).unwrap()),
                other => panic!("BENCH_STORES: unknown store {other:?}"),
            };
            rt.block_on(async {
                fill(s.as_ref(), lanes, per_lane).await;
                let t = claims(s.as_ref(), n.min(total)).await;
                report(store, &what, t);
            });
            drop(s);
            if store == "redis" {
                cleanup_redis(&p);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
