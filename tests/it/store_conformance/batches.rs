//! `Batches`: a batch's record, kept with its jobs' time to live; a job queued
//! with jobs of its batch following must leave room for them.

use std::time::Duration;

use studio_core::job::{BatchRecord, JobId, LaneLimits};
use studio_core::store::{Refusal, StoreError};

use super::job;
use crate::support::{Backing, fast_settings, test_store};

fn record(owner: &str, jobs: usize) -> BatchRecord {
    BatchRecord {
        id: JobId::random().to_string(),
        owner: owner.into(),
        workflow: "smoke".into(),
        created_ms: 1_700_000_000_000,
        job_ids: (0..jobs).map(|_| JobId::random().to_string()).collect(),
        webhook: true,
    }
}

async fn a_batch_is_kept_read_and_forgotten(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let b = record("k1", 3);
    assert!(t.store.get_batch(&b.id).await.unwrap().is_none());
    t.store.put_batch(&b).await.unwrap();
    assert_eq!(t.store.get_batch(&b.id).await.unwrap(), Some(b.clone()));
    let other = record("", 64);
    t.store.put_batch(&other).await.unwrap();
    assert_eq!(
        t.store
            .get_batch(&other.id)
            .await
            .unwrap()
            .unwrap()
            .job_ids
            .len(),
        64
    );
    t.store.delete_batch(&b.id).await.unwrap();
    assert!(t.store.get_batch(&b.id).await.unwrap().is_none());
    assert!(t.store.get_batch(&other.id).await.unwrap().is_some());
}

async fn a_batch_expires_with_the_job_ttl(kind: Backing) {
    let mut settings = fast_settings();
    settings.job_ttl = Duration::from_secs(1);
    let t = test_store(kind, settings);
    let b = record("k1", 2);
    t.store.put_batch(&b).await.unwrap();
    assert!(t.store.get_batch(&b.id).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(t.store.get_batch(&b.id).await.unwrap().is_none());
}

async fn get_many_reads_jobs_in_order(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let a = job("a");
    let b = job("b");
    t.store.enqueue(&a).await.unwrap();
    t.store.enqueue(&b).await.unwrap();
    let ids = vec![
        b.id.to_string(),
        "gone".to_owned(),
        a.id.to_string(),
        "bad id".to_owned(),
    ];
    let got = t.store.get_many(&ids).await.unwrap();
    let prompts: Vec<Option<String>> = got.into_iter().map(|j| j.map(|j| j.prompt)).collect();
    assert_eq!(
        prompts,
        vec![Some("b".into()), None, Some("a".into()), None]
    );
}

async fn a_job_leaves_room_for_the_jobs_of_its_batch_that_follow(kind: Backing) {
    let mut settings = fast_settings();
    settings.max_queued = 5;
    let t = test_store(kind, settings);
    let limited = |p: &str, following: u32| {
        let mut j = job(p)
            .owned("k1", studio_core::job::Priority::Normal)
            .limited(LaneLimits {
                max_queued: Some(3),
                ..LaneLimits::default()
            });
        j.following = following;
        j
    };
    // Four would not fit the owner's three.
    match t.store.enqueue(&limited("a", 3)).await {
        Err(StoreError::Refused(Refusal::QuotaFull { limit: 3 })) => {}
        other => panic!("expected the quota refusal, got {other:?}"),
    }
    t.store.enqueue(&limited("a", 2)).await.unwrap();
    t.store.enqueue(&limited("b", 1)).await.unwrap();
    t.store.enqueue(&limited("c", 0)).await.unwrap();
    // The queue's own cap counts the following jobs too: two waiting of five.
    let free = |p: &str, following: u32| {
        let mut j = job(p);
        j.following = following;
        j
    };
    t.store.enqueue(&free("x", 0)).await.unwrap();
    match t.store.enqueue(&free("y", 1)).await {
        Err(StoreError::Refused(Refusal::QueueFull { limit: 5 })) => {}
        other => panic!("expected the queue-full refusal, got {other:?}"),
    }
    t.store.enqueue(&free("y", 0)).await.unwrap();
}

both_stores!(
    a_batch_is_kept_read_and_forgotten,
    a_batch_expires_with_the_job_ttl,
    get_many_reads_jobs_in_order,
    a_job_leaves_room_for_the_jobs_of_its_batch_that_follow,
);
