//! `Uploads`: records of input pictures, per owner.

use std::time::Duration;

use studio_core::store::{Refusal, StoreError, UploadQuota};
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
        .put_upload(&rec, Duration::from_secs(60), &UploadQuota::default())
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
        .put_upload(&rec, Duration::from_millis(1000), &UploadQuota::default())
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
        .put_upload(&other, Duration::from_millis(1000), &UploadQuota::default())
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

fn numbered(owner: &str, n: u8, size: u64) -> UploadRecord {
    UploadRecord {
        upload_id: format!("{n:02x}").repeat(32),
        size,
        ..record(owner)
    }
}

async fn an_owners_uploads_stay_within_its_quota(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let quota = UploadQuota {
        max_bytes: 1000,
        max_count: 3,
    };
    let ttl = Duration::from_secs(60);
    for n in 0..3 {
        t.store
            .put_upload(&numbered("k1", n, 100), ttl, &quota)
            .await
            .unwrap();
    }
    let over = t
        .store
        .put_upload(&numbered("k1", 3, 100), ttl, &quota)
        .await;
    assert!(
        matches!(over, Err(StoreError::Refused(Refusal::UploadQuota { .. }))),
        "a fourth upload is over the count: {over:?}"
    );
    t.store
        .put_upload(&numbered("k1", 1, 100), ttl, &quota)
        .await
        .expect("one it holds already is renewed, not counted again");
    t.store
        .put_upload(&numbered("k2", 3, 100), ttl, &quota)
        .await
        .expect("another owner has its own quota");
    let big = t
        .store
        .put_upload(&numbered("k2", 4, 950), ttl, &quota)
        .await;
    assert!(
        matches!(big, Err(StoreError::Refused(Refusal::UploadQuota { .. }))),
        "over the bytes: {big:?}"
    );
}

async fn an_expired_upload_frees_its_quota_and_its_file(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let quota = UploadQuota {
        max_bytes: 1000,
        max_count: 1,
    };
    let short = numbered("k1", 1, 10);
    t.store
        .put_upload(&short, Duration::from_millis(300), &quota)
        .await
        .unwrap();
    // The same file, named by another owner for longer.
    t.store
        .put_upload(&numbered("k2", 1, 10), Duration::from_secs(60), &quota)
        .await
        .unwrap();
    let now = studio_core::clock::now_ms();
    assert!(
        t.store
            .expired_upload_files(now + 1000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.store
        .put_upload(&numbered("k1", 2, 10), Duration::from_millis(300), &quota)
        .await
        .expect("the expired one no longer counts");
    let later = studio_core::clock::now_ms() + 120_000;
    let mut files = t.store.expired_upload_files(later, 10).await.unwrap();
    files.sort();
    assert_eq!(files, [short.upload_id.clone(), "02".repeat(32)]);
    assert!(
        !t.store
            .forget_upload_file(&short.upload_id, studio_core::clock::now_ms())
            .await
            .unwrap(),
        "k2 still names it"
    );
    assert!(
        t.store
            .forget_upload_file(&short.upload_id, later)
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .forget_upload_file(&short.upload_id, later)
            .await
            .unwrap(),
        "forgotten once"
    );
}

both_stores!(
    an_upload_is_seen_by_its_owner_only,
    an_upload_expires_unless_a_job_extends_it,
    an_owners_uploads_stay_within_its_quota,
    an_expired_upload_frees_its_quota_and_its_file,
);
