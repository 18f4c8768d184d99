//! `Uploads`: records of input pictures, per owner.

use std::time::Duration;

use studio_core::uploads::UploadRecord;

use crate::support::{Backing, fast_settings, test_store};

fn record(owner: &str) -> UploadRecord {
    UploadRecord {
        upload_id: "ab".repeat(32),
        width: 8,
        height: 4,
        content_type: "image/png".into(),
        size: 123,
        owner: owner.into(),
        created_at: "2026-01-01T00:00:00.000000Z".into(),
    }
}

async fn an_upload_is_seen_by_its_owner_only(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let rec = record("k1");
    t.store
        .put_upload(&rec, Duration::from_secs(60))
        .await
        .unwrap();
    let got = t
        .store
        .get_upload("k1", &rec.upload_id, None)
        .await
        .unwrap()
        .expect("its owner finds it");
    assert_eq!((got.width, got.height, got.size), (8, 4, 123));
    assert_eq!(got.content_type, "image/png");
    assert!(
        t.store
            .get_upload("k2", &rec.upload_id, None)
            .await
            .unwrap()
            .is_none(),
        "another key's upload is not there"
    );
}

async fn an_upload_expires_unless_a_job_extends_it(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let rec = record("k1");
    t.store
        .put_upload(&rec, Duration::from_millis(1000))
        .await
        .unwrap();
    t.store
        .get_upload("k1", &rec.upload_id, Some(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("still there");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        t.store
            .get_upload("k1", &rec.upload_id, None)
            .await
            .unwrap()
            .is_some(),
        "extended by the job that uses it"
    );
    let other = UploadRecord {
        upload_id: "cd".repeat(32),
        ..record("k1")
    };
    t.store
        .put_upload(&other, Duration::from_millis(1000))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        t.store
            .get_upload("k1", &other.upload_id, None)
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
}

both_stores!(
    an_upload_is_seen_by_its_owner_only,
    an_upload_expires_unless_a_job_extends_it,
);
