//! Fair claims, on both stores: owners served by weight, a late owner not waiting
//! behind an early one's backlog, priorities within an owner, caps on running and
//! waiting jobs, ownerless jobs (job_queue) as one more lane, and owners' jobs
//! coming back to their own lane after a retry, a release or a reap.

use std::time::Duration;

use serde_json::Map;
use studio_core::job::Priority;
use studio_core::job::{JobId, LaneLimits, NewJob};
use studio_core::store::{Completion, Refusal, Route, Routed, StoreError, WorkerId};

use crate::support::{Backing, fast_settings, test_store};

const WAIT: Duration = Duration::from_millis(300);

fn job(owner: &str, prompt: &str) -> NewJob {
    NewJob::new(prompt.into(), 1, "smoke".into(), Map::new()).owned(owner, Priority::Normal)
}

fn weighted(owner: &str, prompt: &str, weight: u32) -> NewJob {
    job(owner, prompt).limited(LaneLimits {
        weight,
        ..LaneLimits::default()
    })
}

fn worker() -> WorkerId {
    WorkerId::from_string(format!("w-{}", uuid::Uuid::new_v4().simple()))
}

/// Claims `n` jobs (completing each at once); their owners, in order.
async fn claim_owners(store: &dyn studio_core::store::JobStore, n: usize) -> Vec<String> {
    let w = worker();
    store.heartbeat(&w).await.unwrap();
    let mut owners = Vec::new();
    for _ in 0..n {
        let Some(c) = store.claim(&w, WAIT).await.unwrap() else {
            break;
        };
        owners.push(c.job.owner.clone());
        store
            .complete(
                &c.lease,
                Completion::Failed {
                    error: "done".into(),
                },
            )
            .await
            .unwrap();
    }
    owners
}

async fn owners_with_work_are_served_by_weight(kind: Backing) {
    let t = test_store(kind, fast_settings());
    for i in 0..20 {
        t.store
            .enqueue(&weighted("aaaaaaaaaaaa", &format!("a{i}"), 1))
            .await
            .unwrap();
    }
    for i in 0..20 {
        t.store
            .enqueue(&weighted("bbbbbbbbbbbb", &format!("b{i}"), 3))
            .await
            .unwrap();
    }
    let owners = claim_owners(t.store.as_ref(), 16).await;
    let b = owners.iter().filter(|o| *o == "bbbbbbbbbbbb").count();
    assert_eq!(
        b, 12,
        "weight 3 against 1: three in four claims: {owners:?}"
    );
    // Within a lane, first come first served.
    let w = worker();
    t.store.heartbeat(&w).await.unwrap();
    let next_a = loop {
        let c = t.store.claim(&w, WAIT).await.unwrap().unwrap();
        if c.job.owner == "aaaaaaaaaaaa" {
            break c.job.prompt;
        }
    };
    assert_eq!(next_a, "a4");
}

async fn a_late_owner_does_not_wait_behind_an_early_ones_backlog(kind: Backing) {
    let t = test_store(kind, fast_settings());
    for i in 0..50 {
        t.store
            .enqueue(&job("aaaaaaaaaaaa", &format!("a{i}")))
            .await
            .unwrap();
    }
    assert_eq!(claim_owners(t.store.as_ref(), 3).await, ["aaaaaaaaaaaa"; 3]);
    t.store.enqueue(&job("bbbbbbbbbbbb", "b")).await.unwrap();
    assert_eq!(claim_owners(t.store.as_ref(), 1).await, ["bbbbbbbbbbbb"]);
    // Being idle for a while earns no credit: after B's one job, A again.
    assert_eq!(claim_owners(t.store.as_ref(), 2).await, ["aaaaaaaaaaaa"; 2]);
}

async fn priorities_come_first_within_an_owner(kind: Backing) {
    let t = test_store(kind, fast_settings());
    for (p, prio) in [
        ("low", Priority::Low),
        ("normal", Priority::Normal),
        ("high", Priority::High),
        ("high 2", Priority::High),
    ] {
        let j = NewJob::new(p.into(), 1, "smoke".into(), Map::new()).owned("aaaaaaaaaaaa", prio);
        t.store.enqueue(&j).await.unwrap();
    }
    let w = worker();
    t.store.heartbeat(&w).await.unwrap();
    let mut order = Vec::new();
    while let Some(c) = t.store.claim(&w, Duration::from_millis(50)).await.unwrap() {
        order.push(c.job.prompt.clone());
        assert_eq!(
            c.job.priority.as_str(),
            c.job.prompt.split(' ').next().unwrap()
        );
    }
    assert_eq!(order, ["high", "high 2", "normal", "low"]);
}

async fn an_owner_at_its_running_cap_waits_and_others_go_on(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let capped = |p: &str| {
        job("aaaaaaaaaaaa", p).limited(LaneLimits {
            max_running: Some(1),
            ..LaneLimits::default()
        })
    };
    t.store.enqueue(&capped("a1")).await.unwrap();
    t.store.enqueue(&capped("a2")).await.unwrap();
    t.store.enqueue(&job("bbbbbbbbbbbb", "b1")).await.unwrap();
    let w = worker();
    t.store.heartbeat(&w).await.unwrap();
    let first = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(first.job.prompt, "a1");
    let second = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(
        second.job.prompt, "b1",
        "a2 waits: its owner has one running"
    );
    assert!(
        t.store
            .claim(&w, Duration::from_millis(100))
            .await
            .unwrap()
            .is_none()
    );
    t.store
        .complete(
            &first.lease,
            Completion::Failed {
                error: "done".into(),
            },
        )
        .await
        .unwrap();
    let third = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(third.job.prompt, "a2");
}

async fn an_owner_at_its_waiting_quota_is_refused_and_a_cancel_makes_room(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let quota = |p: &str| {
        job("aaaaaaaaaaaa", p).limited(LaneLimits {
            max_queued: Some(2),
            ..LaneLimits::default()
        })
    };
    let a1 = quota("a1");
    t.store.enqueue(&a1).await.unwrap();
    t.store.enqueue(&quota("a2")).await.unwrap();
    match t.store.enqueue(&quota("a3")).await {
        Err(StoreError::Refused(Refusal::QuotaFull { limit: 2 })) => {}
        other => panic!("expected the quota refusal, got {other:?}"),
    }
    // Others are not affected.
    t.store.enqueue(&job("bbbbbbbbbbbb", "b")).await.unwrap();
    t.store.cancel(&a1.id).await.unwrap();
    t.store.enqueue(&quota("a3")).await.unwrap();
    // And the cancelled one is not claimed.
    let owners_prompts: Vec<String> = {
        let w = worker();
        t.store.heartbeat(&w).await.unwrap();
        let mut v = Vec::new();
        while let Some(c) = t.store.claim(&w, Duration::from_millis(50)).await.unwrap() {
            v.push(c.job.prompt);
        }
        v
    };
    assert!(
        !owners_prompts.contains(&"a1".to_owned()),
        "{owners_prompts:?}"
    );
    assert_eq!(owners_prompts.len(), 3, "{owners_prompts:?}");
}

async fn ownerless_jobs_are_one_more_lane(kind: Backing) {
    let t = test_store(kind, fast_settings());
    for i in 0..10 {
        t.store
            .enqueue(&job("", &format!("anon {i}")))
            .await
            .unwrap();
    }
    for i in 0..10 {
        t.store
            .enqueue(&job("aaaaaaaaaaaa", &format!("a{i}")))
            .await
            .unwrap();
    }
    let owners = claim_owners(t.store.as_ref(), 10).await;
    let anon = owners.iter().filter(|o| o.is_empty()).count();
    assert_eq!(anon, 5, "equal weights alternate: {owners:?}");
}

async fn an_owners_job_comes_back_to_its_own_lane(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let a = job("aaaaaaaaaaaa", "a");
    t.store.enqueue(&a).await.unwrap();
    let w = worker();
    t.store.heartbeat(&w).await.unwrap();
    // A retry...
    let c = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    t.store
        .retry_later(&c.lease, "backend down", Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    t.store.promote_due().await.unwrap();
    let c = t
        .store
        .claim(&w, WAIT)
        .await
        .unwrap()
        .expect("back after its retry");
    assert_eq!((c.job.owner.as_str(), c.lease.attempt), ("aaaaaaaaaaaa", 2));
    // ...a release at shutdown...
    t.store.release(&c.lease).await.unwrap();
    let c = t
        .store
        .claim(&w, WAIT)
        .await
        .unwrap()
        .expect("back after a release");
    assert_eq!(c.lease.job_id, a.id);
    // ...and a reap of a dead worker: each time to its owner's lane, and its running
    // count given back (a cap of one would otherwise hold it for ever).
    let dead = worker();
    t.store.heartbeat(&dead).await.unwrap();
    t.store.release(&c.lease).await.unwrap();
    let held = t.store.claim(&dead, WAIT).await.unwrap().unwrap();
    assert_eq!(held.lease.job_id, a.id);
    tokio::time::sleep(fast_settings().worker_ttl + Duration::from_millis(200)).await;
    t.store.heartbeat(&w).await.unwrap();
    let reaped = t.store.reap().await.unwrap();
    assert_eq!(reaped, [JobId::parse(a.id.as_str()).unwrap()]);
    let c = t
        .store
        .claim(&w, WAIT)
        .await
        .unwrap()
        .expect("back after a reap");
    assert_eq!(c.job.owner, "aaaaaaaaaaaa");
}

/// A job in requirement set `req` (registered first).
async fn needing(store: &dyn studio_core::store::JobStore, owner: &str, req: &str) -> JobId {
    assert!(store.register_requirements(req, "{}").await.unwrap());
    let job = job(owner, req).needing(req.to_owned(), String::new());
    let id = job.id.clone();
    store.enqueue(&job).await.unwrap();
    id
}

fn route(runnable: &[&str], prefer: &[&str], known: usize) -> Route {
    Route {
        runnable: Some(runnable.iter().map(|s| s.to_string()).collect()),
        prefer: prefer.iter().map(|s| s.to_string()).collect(),
        known,
    }
}

/// Claims with `route` until nothing comes; the sets of the jobs claimed.
async fn claim_sets(store: &dyn studio_core::store::JobStore, route: &Route) -> Vec<String> {
    let w = worker();
    store.heartbeat(&w).await.unwrap();
    let mut got = Vec::new();
    loop {
        match store.claim_routed(&w, WAIT, route).await.unwrap() {
            Routed::Job(c) => {
                got.push(c.job.prompt.clone());
                let done = Completion::Failed {
                    error: "done".into(),
                };
                store.complete(&c.lease, done).await.unwrap();
            }
            Routed::Nothing => return got,
            Routed::Stale => panic!("stale route"),
        }
    }
}

/// A routed claim takes only jobs of the sets its backend runs, from every owner
/// and from job_queue, passing over the jobs ahead of them it cannot run (which
/// are still there for a backend that can); a set registered since the route was
/// made makes the claim say so; a preferred set is taken first when it is close
/// behind the next job, and not when it is far behind.
async fn routed_claims_pass_over_what_a_backend_cannot_run(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let store = t.store.as_ref();
    for _ in 0..3 {
        needing(store, "aaaaaaaaaaaa", "rb").await;
    }
    needing(store, "aaaaaaaaaaaa", "ra").await;
    needing(store, "bbbbbbbbbbbb", "ra").await;
    for _ in 0..3 {
        needing(store, "", "rb").await;
    }
    needing(store, "", "ra").await;
    let mut got = claim_sets(store, &route(&["ra"], &[], 2)).await;
    assert_eq!(
        got,
        ["ra", "ra", "ra"],
        "only what it can run, from behind the rest"
    );
    got = claim_sets(store, &route(&["rb"], &[], 2)).await;
    assert_eq!(
        got.len(),
        6,
        "the rest waited for a backend that runs them: {got:?}"
    );
    assert!(got.iter().all(|r| r == "rb"), "{got:?}");

    needing(store, "cccccccccccc", "rc").await;
    needing(store, "cccccccccccc", "rd").await;
    let w = worker();
    store.heartbeat(&w).await.unwrap();
    assert!(
        matches!(
            store
                .claim_routed(&w, WAIT, &route(&["rc", "rd"], &[], 2))
                .await
                .unwrap(),
            Routed::Stale
        ),
        "two sets were registered since"
    );
    got = claim_sets(store, &route(&["rc", "rd"], &["rd"], 4)).await;
    assert_eq!(
        got,
        ["rd", "rc"],
        "the preferred set first, being close behind"
    );

    needing(store, "dddddddddddd", "re").await;
    for _ in 0..studio_core::store::AFFINITY_WINDOW {
        needing(store, "eeeeeeeeeeee", "rx").await;
    }
    needing(store, "dddddddddddd", "rf").await;
    got = claim_sets(store, &route(&["re", "rf"], &["rf"], 7)).await;
    assert_eq!(got, ["re", "rf"], "too far behind to be preferred");
}

/// More ownerless jobs that a backend cannot run than a claim looks at once are
/// still not in its way (Redis parks them by set as it meets them), and a
/// backend that can run them later gets them in their order of arrival.
async fn many_ownerless_jobs_a_backend_cannot_run_do_not_hold_it_up(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let store = t.store.as_ref();
    assert!(store.register_requirements("rb", "{}").await.unwrap());
    for i in 0..250 {
        let job = job("", &format!("rb-{i}")).needing("rb".into(), String::new());
        store.enqueue(&job).await.unwrap();
    }
    needing(store, "", "ra").await;
    let got = claim_sets(store, &route(&["ra"], &[], 2)).await;
    assert_eq!(got, ["ra"], "found behind 250 it cannot run");
    let got = claim_sets(store, &route(&["rb"], &[], 2)).await;
    let want: Vec<String> = (0..250).map(|i| format!("rb-{i}")).collect();
    assert_eq!(got, want, "the rest, in their order");
}

both_stores!(
    many_ownerless_jobs_a_backend_cannot_run_do_not_hold_it_up,
    routed_claims_pass_over_what_a_backend_cannot_run,
    owners_with_work_are_served_by_weight,
    a_late_owner_does_not_wait_behind_an_early_ones_backlog,
    priorities_come_first_within_an_owner,
    an_owner_at_its_running_cap_waits_and_others_go_on,
    an_owner_at_its_waiting_quota_is_refused_and_a_cancel_makes_room,
    ownerless_jobs_are_one_more_lane,
    an_owners_job_comes_back_to_its_own_lane,
);
