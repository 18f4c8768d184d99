//! `KeyStore`: API keys, the URL-signing secret, shared rate limits.

use studio_core::auth::{ApiKey, KeyLimits, Role};

use crate::support::{Backing, fast_settings, test_store};

fn key(id: &str, name: &str) -> ApiKey {
    ApiKey {
        id: id.into(),
        name: name.into(),
        role: Role::User,
        hash: "00".repeat(32),
        created_at: "2026-01-01T00:00:00.000000Z".into(),
        revoked_at: String::new(),
        limits: KeyLimits::default(),
    }
}

async fn keys_are_stored_replaced_and_listed_oldest_first(kind: Backing) {
    let t = test_store(kind, fast_settings());
    assert!(t.store.get_key("aaaaaaaaaaaa").await.unwrap().is_none());
    t.store
        .put_key(&key("aaaaaaaaaaaa", "first"))
        .await
        .unwrap();
    t.store
        .put_key(&key("bbbbbbbbbbbb", "second"))
        .await
        .unwrap();
    let mut changed = key("aaaaaaaaaaaa", "renamed");
    changed.limits.max_queued = Some(3);
    t.store.put_key(&changed).await.unwrap();
    let got = t.store.get_key("aaaaaaaaaaaa").await.unwrap().unwrap();
    assert_eq!(got, changed, "a second put replaces the key");
    let names: Vec<String> = t
        .store
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["renamed", "second"]);
}

async fn the_url_secret_is_made_once_and_shared(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let first = t.store.server_secret().await.unwrap();
    assert!(first.len() >= 32, "at least 32 bytes of key");
    assert_eq!(t.store.server_secret().await.unwrap(), first);
}

async fn a_rate_limit_refuses_past_its_burst(kind: Backing) {
    let t = test_store(kind, fast_settings());
    for i in 0..3 {
        let d = t.store.rate_limit("key:x", 0.5, 3).await.unwrap();
        assert!(d.allowed, "request {i} is within the burst");
    }
    let d = t.store.rate_limit("key:x", 0.5, 3).await.unwrap();
    assert!(!d.allowed);
    assert!(d.retry_after_secs > 0.0);
    let other = t.store.rate_limit("key:y", 0.5, 3).await.unwrap();
    assert!(other.allowed, "buckets are separate");
}

both_stores!(
    keys_are_stored_replaced_and_listed_oldest_first,
    the_url_secret_is_made_once_and_shared,
    a_rate_limit_refuses_past_its_burst,
);
