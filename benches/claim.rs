//! What a claim costs when many keys have work waiting: 1,000 owners with 10 queued
//! jobs each (10,000 jobs), claimed one at a time (claim, then complete, as a
//! dispatcher does), against the same 10,000 jobs without owners (all in the
//! prototype's `job_queue`, one FIFO lane: the claim before fair share). On the
//! Redis at 127.0.0.1:6379 (or `TEST_REDIS_URL`) and on the embedded SQLite store.
//! Then routed claims (issue 10): 2,000 jobs spread round-robin over 2, 20 and 200
//! requirement sets, on 100 keys and in job_queue, claimed by a backend that can
//! run half of the sets (so it passes over the others), against the same queue
//! claimed unrouted. Prints the time per claim (p50, p99, max) and checks nothing.
//!
//! Run: `cargo bench --bench claim` (`BENCH_OWNERS`, default 1000; `BENCH_PER_OWNER`,
//! default 10; `BENCH_CLAIMS`, default 2000; `BENCH_STORES`, default `redis,sqlite`;
//! `BENCH_SETS`, default `2,20,200`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Map;
use studio_core::job::NewJob;
use studio_core::job::Priority;
use studio_core::store::redis::RedisStore;
use studio_core::store::sqlite::SqliteStore;
use studio_core::store::{Completion, JobStore, Route, Routed, StoreSettings, WorkerId};
use support::{cleanup_redis, env_or, pct, prefix, redis_url};

fn settings() -> StoreSettings {
    StoreSettings {
        max_queued: 10_000_000,
        ..StoreSettings::default()
    }
}

async fn fill(store: &dyn JobStore, owners: usize, per_owner: usize) {
    fill_sets(store, owners, per_owner, 0).await
}

/// The name of requirement set `i`.
fn set(i: usize) -> String {
    format!("set{i:04}")
}

/// Fills like [`fill`], job `k` in set `k % sets` (no sets when 0).
async fn fill_sets(store: &dyn JobStore, owners: usize, per_owner: usize, sets: usize) {
    for i in 0..sets {
        store.register_requirements(&set(i), "{}").await.unwrap();
    }
    let mut k: usize = 0;
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
            .owned(&owner, Priority::Normal)
            .needing(
                if sets > 0 {
                    set(k.wrapping_mul(2_654_435_761) % sets)
                } else {
                    String::new()
                },
                // Registered above.
                String::new(),
            );
            k += 1;
            store.enqueue(&job).await.unwrap();
        }
    }
}

async fn claims(store: &dyn JobStore, n: usize) -> Vec<Duration> {
    routed_claims(store, n, &Route::default()).await
}

async fn routed_claims(store: &dyn JobStore, n: usize, route: &Route) -> Vec<Duration> {
    let w = WorkerId::from_string(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    store.heartbeat(&w).await.unwrap();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let Routed::Job(c) = store
            .claim_routed(&w, Duration::from_millis(100), route)
            .await
            .unwrap()
        else {
            panic!("a job to claim");
        };
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

/// Runs `f` on a fresh store of kind `store` (a Redis prefix or an SQLite
/// directory of its own), then removes it.
fn with_store<F, Fut>(rt: &tokio::runtime::Runtime, store: &str, f: F)
where
    F: FnOnce(Arc<dyn JobStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let p = prefix("claim");
    let dir = std::env::temp_dir().join(format!("studio-claim-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let _guard = rt.enter();
    let s: Arc<dyn JobStore> = match store {
        "redis" => Arc::new(RedisStore::connect(&redis_url(), &p, settings()).unwrap()),
        "sqlite" => Arc::new(SqliteStore::open(&dir, settings()).unwrap()),
        other => panic!("BENCH_STORES: unknown store {other:?}"),
    };
    rt.block_on(f(s.clone()));
    drop(s);
    if store == "redis" {
        cleanup_redis(&p);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let owners: usize = env_or("BENCH_OWNERS", 1000);
    let per_owner: usize = env_or("BENCH_PER_OWNER", 10);
    let n: usize = env_or("BENCH_CLAIMS", 2000);
    let stores: String = env_or("BENCH_STORES", "redis,sqlite".to_owned());
    let set_counts: String = env_or("BENCH_SETS", "2,20,200".to_owned());
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
            with_store(&rt, store, |s| async move {
                fill(s.as_ref(), lanes, per_lane).await;
                let t = claims(s.as_ref(), n.min(total)).await;
                report(store, &what, t);
            });
        }
        for sets in set_counts
            .split(',')
            .filter_map(|v| v.trim().parse::<usize>().ok())
        {
            for (lanes, per_lane) in [(100, 20), (1, 2000)] {
                for routed in [false, true] {
                    let where_ = if lanes == 1 { "job_queue" } else { "100 keys" };
                    let how = if routed {
                        "routed, runs half"
                    } else {
                        "unrouted"
                    };
                    let what = format!("{sets:>3} sets, {where_}, {how}");
                    let route = if routed {
                        Route {
                            runnable: Some((0..sets).step_by(2).map(set).collect()),
                            prefer: Vec::new(),
                            known: sets,
                        }
                    } else {
                        Route::default()
                    };
                    with_store(&rt, store, |s| async move {
                        fill_sets(s.as_ref(), lanes, per_lane, sets).await;
                        let t = routed_claims(s.as_ref(), 1000, &route).await;
                        report(store, &what, t);
                    });
                }
            }
        }
    }
}
