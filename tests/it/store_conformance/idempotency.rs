//! `Idempotency`: scopes taken once, given back, handed over.

use studio_core::job::JobId;
use studio_core::store::IdempotencyClaim;

use crate::support::{Backing, fast_settings, test_store};

fn claim(fingerprint: &str) -> IdempotencyClaim {
    IdempotencyClaim {
        fingerprint: fingerprint.into(),
        job_id: JobId::random(),
        seed: 7,
        workflow: "smoke".into(),
        taken_ms: studio_core::clock::now_ms(),
    }
}

async fn a_scope_is_taken_once_released_and_replaced_only_as_read(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let first = claim("f1");
    assert_eq!(t.store.take_idempotency("s", &first).await.unwrap(), None);
    let second = claim("f2");
    assert_eq!(
        t.store.take_idempotency("s", &second).await.unwrap(),
        Some(first.clone()),
        "the scope answers what holds it"
    );
    assert!(
        !t.store
            .replace_idempotency("s", &second, &claim("f3"))
            .await
            .unwrap(),
        "only what holds it can be replaced"
    );
    let third = claim("f3");
    assert!(
        t.store
            .replace_idempotency("s", &first, &third)
            .await
            .unwrap()
    );
    assert_eq!(
        t.store.take_idempotency("s", &first).await.unwrap(),
        Some(third)
    );
    t.store.release_idempotency("s").await.unwrap();
    assert_eq!(t.store.take_idempotency("s", &second).await.unwrap(), None);
}

both_stores!(a_scope_is_taken_once_released_and_replaced_only_as_read);
