//! `Leases`: claims, fencing, retries, dead letters, hand-backs.

use std::time::Duration;

use studio_core::job::{JobStatus, NewJob};
use studio_core::store::{CancelOutcome, Completion, LeaseState, RetryOutcome, StoreSettings};

use super::{WAIT, job, worker};
use crate::support::{Backing, fast_settings, test_store};

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

both_stores!(
    claims_are_fifo,
    an_expired_lease_requeues_and_the_first_workers_late_writes_are_refused,
    a_job_retried_past_max_attempts_fails_and_is_dead_lettered,
    a_job_whose_workers_keep_dying_fails_and_is_dead_lettered,
    cancelling_a_running_job_asks_its_worker,
    a_final_state_never_changes,
    progress_never_goes_backwards,
    a_released_job_goes_back_first_in_line_without_using_an_attempt,
);
