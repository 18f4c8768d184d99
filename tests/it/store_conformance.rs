//! One conformance suite, run against both job stores: the embedded SQLite store
//! and a real Redis (each test under its own key prefix).

use std::time::Duration;

use serde_json::Map;
use studio_core::job::{JobStatus, NewJob};
use studio_core::store::{
    CancelOutcome, Completion, LeaseState, ListQuery, RetryOutcome, StoreSettings, WorkerId,
};

use crate::support::{Backing, fast_settings, test_store};

fn job(prompt: &str) -> NewJob {
    NewJob::new(prompt.into(), 1, "smoke".into(), Map::new())
}

fn worker(name: &str) -> WorkerId {
    // Not host:pid shaped, so the embedded store's local-process check leaves it to
    // the heartbeat alone, like a worker on another machine.
    WorkerId::from_string(format!("{name}-{}", uuid::Uuid::new_v4().simple()))
}

const WAIT: Duration = Duration::from_millis(300);

async fn enqueued_jobs_are_queued_and_readable(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let j = job("a cat");
    let rec = t.store.enqueue(&j).await.unwrap();
    assert_eq!(rec.status, JobStatus::Queued);
    let got = t.store.get(&j.id).await.unwrap().expect("stored");
    assert_eq!(got.id, j.id.as_str());
    assert_eq!(got.status, JobStatus::Queued);
    assert_eq!(got.prompt, "a cat");
    assert_eq!(got.progress, 0);
    assert_eq!(got.attempt, 0);
    assert_eq!(t.store.queue_position(&j.id).await.unwrap(), Some(0));
    let unknown = studio_core::job::JobId::random();
    assert!(t.store.get(&unknown).await.unwrap().is_none());
}

async fn claims_are_fifo(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let jobs: Vec<NewJob> = (0..5).map(|i| job(&format!("job {i}"))).collect();
    for j in &jobs {
        t.store.enqueue(j).await.unwrap();
    }
    assert_eq!(t.store.queue_position(&jobs[3].id).await.unwrap(), Some(3));
    let w = worker("w");
    t.store.heartbeat(&w).await.unwrap();
    for j in &jobs {
        let c = t.store.claim(&w, WAIT).await.unwrap().expect("a job");
        assert_eq!(c.lease.job_id, j.id, "claimed in submission order");
        assert_eq!(c.job.status, JobStatus::Processing);
        assert_eq!(c.lease.attempt, 1);
    }
    assert!(
        t.store
            .claim(&w, Duration::from_millis(50))
            .await
            .unwrap()
            .is_none()
    );
}

async fn an_expired_lease_requeues_and_the_first_workers_late_writes_are_refused(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let j = job("x");
    t.store.enqueue(&j).await.unwrap();
    let (a, b) = (worker("a"), worker("b"));
    t.store.heartbeat(&a).await.unwrap();
    let first = t.store.claim(&a, WAIT).await.unwrap().unwrap();
    assert_eq!(
        t.store.update(&first.lease, Some(40), None).await.unwrap(),
        LeaseState::Held
    );
    // Worker a stops heartbeating; while its heartbeat is fresh nothing is reaped.
    assert!(t.store.reap().await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(600)).await;
    t.store.heartbeat(&b).await.unwrap();
    let reaped = t.store.reap().await.unwrap();
    assert_eq!(reaped, vec![j.id.clone()]);
    let back = t.store.get(&j.id).await.unwrap().unwrap();
    assert_eq!(back.status, JobStatus::Queued);
    let second = t
        .store
        .claim(&b, WAIT)
        .await
        .unwrap()
        .expect("requeued job");
    assert_eq!(second.lease.job_id, j.id);
    assert_eq!(second.lease.attempt, 2);
    // The zombie wakes up: every write it tries is refused.
    assert_eq!(
        t.store.update(&first.lease, Some(90), None).await.unwrap(),
        LeaseState::Lost
    );
    assert!(
        !t.store
            .complete(
                &first.lease,
                Completion::Failed {
                    error: "zombie".into()
                }
            )
            .await
            .unwrap()
    );
    assert_eq!(
        t.store
            .retry_later(&first.lease, "zombie", Duration::ZERO)
            .await
            .unwrap(),
        RetryOutcome::Lost
    );
    assert!(
        t.store
            .complete(
                &second.lease,
                Completion::Finished {
                    image_url: "/images/x/a.png".into(),
                    outputs: vec![]
                }
            )
            .await
            .unwrap()
    );
    let done = t.store.get(&j.id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Finished);
    assert_eq!(done.progress, 100);
    assert_eq!(done.attempt, 2);
    assert_eq!(done.image_url, "/images/x/a.png");
}

async fn a_job_retried_past_max_attempts_fails_and_is_dead_lettered(kind: Backing) {
    let t = test_store(
        kind,
        StoreSettings {
            max_attempts: 2,
            ..fast_settings()
        },
    );
    let j = job("flaky");
    t.store.enqueue(&j).await.unwrap();
    let w = worker("w");
    t.store.heartbeat(&w).await.unwrap();
    let c1 = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    let out = t
        .store
        .retry_later(&c1.lease, "backend unreachable", Duration::from_millis(50))
        .await
        .unwrap();
    assert!(matches!(out, RetryOutcome::Scheduled { .. }), "{out:?}");
    let waiting = t.store.get(&j.id).await.unwrap().unwrap();
    assert_eq!(waiting.status, JobStatus::Queued);
    assert_eq!(waiting.last_error, "backend unreachable");
    // Not due yet.
    assert!(
        t.store
            .claim(&w, Duration::from_millis(10))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    t.store.promote_due().await.unwrap();
    let c2 = t.store.claim(&w, WAIT).await.unwrap().expect("retried");
    assert_eq!(c2.lease.attempt, 2);
    assert_eq!(
        t.store
            .retry_later(&c2.lease, "backend unreachable again", Duration::ZERO)
            .await
            .unwrap(),
        RetryOutcome::GaveUp
    );
    let failed = t.store.get(&j.id).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(
        failed.error.contains("gave up after 2 attempts"),
        "{}",
        failed.error
    );
    assert!(
        failed.error.contains("backend unreachable again"),
        "{}",
        failed.error
    );
    let dead = t.store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job_id, j.id.as_str());
    assert_eq!(dead[0].attempts, 2);
    assert!(
        t.store
            .claim(&w, Duration::from_millis(50))
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_job_whose_workers_keep_dying_fails_and_is_dead_lettered(kind: Backing) {
    let t = test_store(
        kind,
        StoreSettings {
            max_attempts: 1,
            ..fast_settings()
        },
    );
    let j = job("poison");
    t.store.enqueue(&j).await.unwrap();
    let w = worker("w");
    t.store.heartbeat(&w).await.unwrap();
    t.store.claim(&w, WAIT).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(t.store.reap().await.unwrap().len(), 1);
    let w2 = worker("w2");
    t.store.heartbeat(&w2).await.unwrap();
    assert!(
        t.store
            .claim(&w2, Duration::from_millis(100))
            .await
            .unwrap()
            .is_none(),
        "out of attempts"
    );
    let failed = t.store.get(&j.id).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(
        failed.error.starts_with("gave up after 1 attempt"),
        "{}",
        failed.error
    );
    assert_eq!(t.store.dead_letters(10).await.unwrap().len(), 1);
}

async fn cancelling_a_queued_job_fails_it_at_once(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let (a, b) = (job("a"), job("b"));
    t.store.enqueue(&a).await.unwrap();
    t.store.enqueue(&b).await.unwrap();
    let CancelOutcome::Cancelled(rec) = t.store.cancel(&a.id).await.unwrap() else {
        panic!("not cancelled")
    };
    assert_eq!(rec.status, JobStatus::Failed);
    assert_eq!(rec.error, "cancelled");
    assert!(rec.cancelled);
    assert_eq!(
        t.store.queue_position(&b.id).await.unwrap(),
        Some(0),
        "the cancelled job no longer counts"
    );
    let w = worker("w");
    t.store.heartbeat(&w).await.unwrap();
    let c = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(c.lease.job_id, b.id, "the cancelled job is never claimed");
    assert!(matches!(
        t.store.cancel(&a.id).await.unwrap(),
        CancelOutcome::AlreadyFinal(_)
    ));
    let unknown = studio_core::job::JobId::random();
    assert!(matches!(
        t.store.cancel(&unknown).await.unwrap(),
        CancelOutcome::NotFound
    ));
}

async fn cancelling_a_running_job_asks_its_worker(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let j = job("a");
    t.store.enqueue(&j).await.unwrap();
    let w = worker("w");
    t.store.heartbeat(&w).await.unwrap();
    let c = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    let CancelOutcome::Requested(rec) = t.store.cancel(&j.id).await.unwrap() else {
        panic!("not requested")
    };
    assert_eq!(rec.status, JobStatus::Processing);
    assert!(rec.cancel_requested);
    assert_eq!(
        t.store.update(&c.lease, Some(10), None).await.unwrap(),
        LeaseState::CancelRequested
    );
    assert!(
        t.store
            .complete(&c.lease, Completion::Cancelled)
            .await
            .unwrap()
    );
    let done = t.store.get(&j.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.error.as_str(), done.cancelled),
        (JobStatus::Failed, "cancelled", true)
    );
}

async fn enqueueing_the_same_job_twice_runs_it_once(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let j = job("once");
    t.store.enqueue(&j).await.unwrap();
    t.store.enqueue(&j).await.unwrap();
    let w = worker("w");
    t.store.heartbeat(&w).await.unwrap();
    let c = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    assert!(
        t.store
            .complete(&c.lease, Completion::Failed { error: "x".into() })
            .await
            .unwrap()
    );
    assert!(
        t.store
            .claim(&w, Duration::from_millis(100))
            .await
            .unwrap()
            .is_none(),
        "no second run"
    );
}

async fn a_final_state_never_changes(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let j = job("final");
    t.store.enqueue(&j).await.unwrap();
    let w = worker("w");
    t.store.heartbeat(&w).await.unwrap();
    let c = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    assert!(
        t.store
            .complete(
                &c.lease,
                Completion::Finished {
                    image_url: "u".into(),
                    outputs: vec![]
                }
            )
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .complete(
                &c.lease,
                Completion::Failed {
                    error: "late".into()
                }
            )
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .complete(&c.lease, Completion::Cancelled)
            .await
            .unwrap()
    );
    assert_eq!(
        t.store
            .update(&c.lease, Some(5), Some("http://elsewhere"))
            .await
            .unwrap(),
        LeaseState::Lost
    );
    assert_eq!(
        t.store
            .retry_later(&c.lease, "late", Duration::ZERO)
            .await
            .unwrap(),
        RetryOutcome::Lost
    );
    assert!(matches!(
        t.store.cancel(&j.id).await.unwrap(),
        CancelOutcome::AlreadyFinal(_)
    ));
    t.store.release(&c.lease).await.unwrap();
    let rec = t.store.get(&j.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.progress, rec.image_url.as_str()),
        (JobStatus::Finished, 100, "u")
    );
    assert!(rec.backend.is_empty());
}

async fn progress_never_goes_backwards(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let j = job("p");
    t.store.enqueue(&j).await.unwrap();
    let w = worker("w");
    t.store.heartbeat(&w).await.unwrap();
    let c = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    t.store
        .update(&c.lease, Some(50), Some("http://b1"))
        .await
        .unwrap();
    t.store.update(&c.lease, Some(30), None).await.unwrap();
    let rec = t.store.get(&j.id).await.unwrap().unwrap();
    assert_eq!(rec.progress, 50);
    assert_eq!(rec.backend, "http://b1");
}

async fn a_released_job_goes_back_first_in_line_without_using_an_attempt(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let (a, b) = (job("a"), job("b"));
    t.store.enqueue(&a).await.unwrap();
    t.store.enqueue(&b).await.unwrap();
    let w = worker("w");
    t.store.heartbeat(&w).await.unwrap();
    let c = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(c.lease.job_id, a.id);
    t.store.release(&c.lease).await.unwrap();
    let rec = t.store.get(&a.id).await.unwrap().unwrap();
    assert_eq!((rec.status, rec.attempt), (JobStatus::Queued, 0));
    let again = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(again.lease.job_id, a.id, "before b");
    assert_eq!(again.lease.attempt, 1);
}

async fn listing_is_newest_first_paginated_and_filtered(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let jobs: Vec<NewJob> = (0..7).map(|i| job(&format!("{i}"))).collect();
    for j in &jobs {
        t.store.enqueue(j).await.unwrap();
    }
    t.store.cancel(&jobs[2].id).await.unwrap();
    let page = |cursor| {
        let store = t.store.clone();
        async move {
            let p = store
                .list(&ListQuery {
                    owner: None,
                    status: None,
                    limit: 3,
                    cursor,
                })
                .await
                .unwrap();
            (
                p.jobs.into_iter().map(|j| j.id).collect::<Vec<_>>(),
                p.next_cursor,
            )
        }
    };
    let ids_of = |idx: &[usize]| {
        idx.iter()
            .map(|i| jobs[*i].id.to_string())
            .collect::<Vec<_>>()
    };
    let (first, cursor) = page(None).await;
    assert_eq!(first, ids_of(&[6, 5, 4]));
    let (second, cursor) = page(cursor).await;
    assert_eq!(second, ids_of(&[3, 2, 1]));
    let (third, cursor) = page(cursor).await;
    assert_eq!(third, ids_of(&[0]));
    assert_eq!(cursor, None);
    let failed = t
        .store
        .list(&ListQuery {
            owner: None,
            status: Some(JobStatus::Failed),
            limit: 10,
            cursor: None,
        })
        .await
        .unwrap();
    assert_eq!(failed.jobs.len(), 1);
    assert_eq!(failed.jobs[0].id, jobs[2].id.as_str());
}

async fn changes_are_published_as_events(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let mut events = t.store.subscribe();
    // Give a Redis subscriber time to attach.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let j = job("e");
    t.store.enqueue(&j).await.unwrap();
    let w = worker("w");
    t.store.heartbeat(&w).await.unwrap();
    let c = t.store.claim(&w, WAIT).await.unwrap().unwrap();
    t.store.update(&c.lease, Some(42), None).await.unwrap();
    t.store
        .complete(
            &c.lease,
            Completion::Failed {
                error: "boom".into(),
            },
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while seen.last().map(|(s, _): &(String, u8)| s.as_str()) != Some("failed") {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("events arrive")
            .unwrap();
        if ev.job.id == j.id.as_str() {
            seen.push((ev.job.status.as_str().to_owned(), ev.job.progress));
        }
    }
    assert_eq!(
        seen,
        [
            ("queued".into(), 0),
            ("processing".into(), 0),
            ("processing".into(), 42),
            ("failed".into(), 42)
        ]
    );
}

/// The webhook outbox: a cap on entries, due entries claimed once under a lease
/// (then due again for another worker), settling fenced by that lease, wake-ups
/// that skip held entries, and settling out of the outbox.
async fn the_webhook_outbox_leases_fences_and_wakes(kind: Backing) {
    use studio_core::webhooks::WebhookRecord;
    let t = test_store(kind, fast_settings());
    let now = studio_core::clock::now_ms();
    let rec = |url: &str| WebhookRecord::new(url.into(), vec!["job.finished".into()], now);
    let (a, b, c) = (job("a"), job("b"), job("c"));
    let s = &t.store;
    assert!(
        s.put_webhook(&a.id, &rec("http://a"), now, 2)
            .await
            .unwrap()
    );
    assert!(
        s.put_webhook(&b.id, &rec("http://b"), now + 60_000, 2)
            .await
            .unwrap()
    );
    assert!(
        !s.put_webhook(&c.id, &rec("http://c"), now, 2)
            .await
            .unwrap(),
        "the outbox is full"
    );
    assert!(s.get_webhook(&c.id).await.unwrap().is_none());
    assert!(
        s.put_webhook(&a.id, &rec("http://a2"), now, 2)
            .await
            .unwrap(),
        "an entry already in counts once"
    );
    assert_eq!(
        s.get_webhook(&a.id).await.unwrap().unwrap().url,
        "http://a2"
    );

    let lease = Duration::from_millis(400);
    let first = s.claim_webhooks(lease, 10).await.unwrap();
    assert_eq!(first.len(), 1, "only the due one");
    assert_eq!(first[0].job_id, a.id);
    assert!(
        s.claim_webhooks(lease, 10).await.unwrap().is_empty(),
        "held"
    );
    // A wake-up does not take a held entry away from its worker.
    s.wake_webhook(&a.id).await.unwrap();
    assert!(s.claim_webhooks(lease, 10).await.unwrap().is_empty());
    // The lease runs out: another worker takes it; the first may no longer settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = s.claim_webhooks(lease, 10).await.unwrap();
    assert_eq!(second.len(), 1);
    let mut done = second[0].record.clone();
    done.state = "delivered".into();
    assert!(
        !s.settle_webhook(&first[0], &done, None).await.unwrap(),
        "fenced"
    );
    assert!(s.settle_webhook(&second[0], &done, None).await.unwrap());
    assert_eq!(
        s.get_webhook(&a.id).await.unwrap().unwrap().state,
        "delivered"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.claim_webhooks(lease, 10).await.unwrap().is_empty(),
        "settled out of the outbox"
    );
    // Room again; a wake-up makes a waiting entry due at once.
    assert!(
        s.put_webhook(&c.id, &rec("http://c"), now, 2)
            .await
            .unwrap()
    );
    let got = s.claim_webhooks(lease, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        s.settle_webhook(&got[0], &got[0].record, Some(now + 3_600_000))
            .await
            .unwrap()
    );
    s.wake_webhook(&b.id).await.unwrap();
    let woken: Vec<_> = s
        .claim_webhooks(lease, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.job_id)
        .collect();
    assert_eq!(woken, std::slice::from_ref(&b.id));
}

both_stores!(
    the_webhook_outbox_leases_fences_and_wakes,
    enqueued_jobs_are_queued_and_readable,
    claims_are_fifo,
    an_expired_lease_requeues_and_the_first_workers_late_writes_are_refused,
    a_job_retried_past_max_attempts_fails_and_is_dead_lettered,
    a_job_whose_workers_keep_dying_fails_and_is_dead_lettered,
    cancelling_a_queued_job_fails_it_at_once,
    cancelling_a_running_job_asks_its_worker,
    enqueueing_the_same_job_twice_runs_it_once,
    a_final_state_never_changes,
    progress_never_goes_backwards,
    a_released_job_goes_back_first_in_line_without_using_an_attempt,
    listing_is_newest_first_paginated_and_filtered,
    changes_are_published_as_events,
);
