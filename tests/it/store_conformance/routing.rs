//! `Routing`: requirement sets, backend reports, capability offers.

use std::time::Duration;

use std::sync::Arc;

use studio_core::auth::rate::RateCheck;
use studio_core::store::{MAX_REQUIREMENT_SETS, Refusal, StoreError};

use super::{job, worker};
use crate::support::{Backing, fast_settings, test_store};

async fn requirement_sets_register_once_and_are_listed(kind: Backing) {
    let t = test_store(kind, fast_settings());
    assert!(t.store.requirement_sets().await.unwrap().is_empty());
    assert!(
        t.store
            .register_requirements("fp1", r#"{"a":1}"#)
            .await
            .unwrap()
    );
    assert!(
        t.store
            .register_requirements("fp1", r#"{"a":1}"#)
            .await
            .unwrap()
    );
    assert!(
        t.store
            .register_requirements("fp2", r#"{"b":2}"#)
            .await
            .unwrap()
    );
    let mut sets = t.store.requirement_sets().await.unwrap();
    sets.sort();
    assert_eq!(
        sets,
        [
            ("fp1".to_owned(), r#"{"a":1}"#.to_owned()),
            ("fp2".to_owned(), r#"{"b":2}"#.to_owned())
        ]
    );
}

async fn backend_reports_replace_each_other_per_worker(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let (a, b) = (worker("a"), worker("b"));
    t.store.report_backends(&a, "[1]").await.unwrap();
    t.store.report_backends(&a, "[2]").await.unwrap();
    t.store.report_backends(&b, "[3]").await.unwrap();
    let mut reports = t.store.backend_reports().await.unwrap();
    reports.sort();
    assert_eq!(
        reports,
        [
            (a.as_str().to_owned(), "[2]".to_owned()),
            (b.as_str().to_owned(), "[3]".to_owned())
        ]
    );
}

async fn capability_offers_are_kept_by_fingerprint_for_their_ttl(kind: Backing) {
    let t = test_store(kind, fast_settings());
    assert_eq!(t.store.get_capabilities("c1").await.unwrap(), None);
    t.store
        .put_capabilities("c1", "{}", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        t.store.get_capabilities("c1").await.unwrap().as_deref(),
        Some("{}")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        t.store.get_capabilities("c1").await.unwrap(),
        None,
        "an offer no worker renews goes away"
    );
}

/// A job names its requirement set and brings its JSON: the store registers it
/// with the job, once; a job of a set the registry has no room for is queued
/// unrouted, and the registry does not grow.
async fn a_job_registers_its_requirement_set_as_it_is_queued(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let a = job("a").needing("fpa".into(), r#"{"nodes":["A"]}"#.into());
    let rec = t.store.enqueue(&a).await.unwrap();
    assert_eq!(rec.req, "fpa");
    let b = job("b").needing("fpa".into(), r#"{"nodes":["A"]}"#.into());
    assert_eq!(t.store.enqueue(&b).await.unwrap().req, "fpa");
    assert_eq!(
        t.store.requirement_sets().await.unwrap(),
        [("fpa".to_owned(), r#"{"nodes":["A"]}"#.to_owned())]
    );
    for i in 1..MAX_REQUIREMENT_SETS {
        assert!(
            t.store
                .register_requirements(&format!("fill{i}"), "{}")
                .await
                .unwrap()
        );
    }
    let c = job("c").needing("fpc".into(), r#"{"nodes":["C"]}"#.into());
    let rec = t.store.enqueue(&c).await.unwrap();
    assert_eq!(rec.req, "", "no room: the job goes to any backend");
    assert_eq!(
        t.store.requirement_sets().await.unwrap().len(),
        MAX_REQUIREMENT_SETS
    );
    assert_eq!(t.store.stats().await.unwrap().queued, 3);
}

/// A submission and a status read counted against a rate limit in the same
/// store call: the decision is recorded; a refused one writes and reads nothing.
async fn a_rate_limit_is_counted_with_the_enqueue_and_the_status_read(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let bucket = format!("key:{}", uuid::Uuid::new_v4().simple());
    let mut first = job("first");
    let check = Arc::new(RateCheck::new(bucket.clone(), 0.01, 2));
    first.rate = Some(check.clone());
    t.store.enqueue(&first).await.unwrap();
    let d = check.decision().expect("counted");
    assert!(d.allowed);
    assert_eq!(d.remaining, 1);
    let check = RateCheck::new(bucket.clone(), 0.01, 2);
    let (read, _) = t
        .store
        .status_counted(&first.id, &check)
        .await
        .unwrap()
        .expect("the job");
    assert_eq!(read.id, first.id.as_str());
    assert_eq!(check.decision().unwrap().remaining, 0);
    let mut third = job("third");
    let check = Arc::new(RateCheck::new(bucket.clone(), 0.01, 2));
    third.rate = Some(check.clone());
    let refused = t.store.enqueue(&third).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::Refused(Refusal::RateLimited)),
        "{refused:?}"
    );
    let d = check.decision().unwrap();
    assert!(!d.allowed);
    assert!(d.retry_after_secs > 90.0, "{d:?}");
    assert!(
        t.store.get(&third.id).await.unwrap().is_none(),
        "nothing written"
    );
    assert_eq!(t.store.stats().await.unwrap().queued, 1);
    let check = RateCheck::new(bucket, 0.01, 2);
    assert!(matches!(
        t.store.status_counted(&first.id, &check).await,
        Err(StoreError::Refused(Refusal::RateLimited))
    ));
    assert!(!check.decision().unwrap().allowed);
}

both_stores!(
    a_job_registers_its_requirement_set_as_it_is_queued,
    a_rate_limit_is_counted_with_the_enqueue_and_the_status_read,
    requirement_sets_register_once_and_are_listed,
    backend_reports_replace_each_other_per_worker,
    capability_offers_are_kept_by_fingerprint_for_their_ttl,
);
