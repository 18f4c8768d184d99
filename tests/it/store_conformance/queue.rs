//! `JobQueue`: submitting, reading, listing, cancelling queued jobs, events.

use std::time::Duration;

use studio_core::job::{JobStatus, NewJob};
use studio_core::store::{CancelOutcome, Completion, ListQuery};

use super::{WAIT, job, worker};
use crate::support::{Backing, fast_settings, test_store};

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

both_stores!(
    enqueued_jobs_are_queued_and_readable,
    cancelling_a_queued_job_fails_it_at_once,
    enqueueing_the_same_job_twice_runs_it_once,
    listing_is_newest_first_paginated_and_filtered,
    changes_are_published_as_events,
);
