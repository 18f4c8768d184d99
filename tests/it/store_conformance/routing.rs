//! `Routing`: requirement sets, backend reports, capability offers.

use std::time::Duration;

use super::worker;
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

both_stores!(
    requirement_sets_register_once_and_are_listed,
    backend_reports_replace_each_other_per_worker,
    capability_offers_are_kept_by_fingerprint_for_their_ttl,
);
