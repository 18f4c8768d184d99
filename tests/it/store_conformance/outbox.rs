//! `WebhookOutbox`: the webhook outbox.

use std::time::Duration;

use super::job;
use studio_core::store::{OutboxCap, Refusal, StoreError};

use crate::support::{Backing, fast_settings, test_store};

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
        s.put_webhook(&a.id, &rec("http://a"), now, cap(2))
            .await
            .unwrap()
    );
    assert!(
        s.put_webhook(&b.id, &rec("http://b"), now + 60_000, cap(2))
            .await
            .unwrap()
    );
    assert!(
        !s.put_webhook(&c.id, &rec("http://c"), now, cap(2))
            .await
            .unwrap(),
        "the outbox is full"
    );
    assert!(s.get_webhook(&c.id).await.unwrap().is_none());
    assert!(
        s.put_webhook(&a.id, &rec("http://a2"), now, cap(2))
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
        s.put_webhook(&c.id, &rec("http://c"), now, cap(2))
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

fn cap(total: u64) -> OutboxCap {
    OutboxCap {
        total,
        per_owner: 1_000,
    }
}

/// One owner's waiting webhooks are capped, others' are not; an entry leaving
/// the outbox (settled out, or deleted) frees its owner's room.
async fn an_owners_pending_webhooks_are_capped(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let s = t.store.as_ref();
    let now = studio_core::clock::now_ms();
    let cap = OutboxCap {
        total: 100,
        per_owner: 2,
    };
    let owned = |o: &str| {
        let mut r = studio_core::webhooks::WebhookRecord::new("http://x".into(), vec![], now);
        r.owner = o.into();
        r
    };
    let (a, b, c, d) = (job("a"), job("b"), job("c"), job("d"));
    assert!(s.put_webhook(&a.id, &owned("k1"), now, cap).await.unwrap());
    assert!(s.put_webhook(&b.id, &owned("k1"), now, cap).await.unwrap());
    let third = s.put_webhook(&c.id, &owned("k1"), now, cap).await;
    assert!(
        matches!(
            third,
            Err(StoreError::Refused(Refusal::WebhookQuota { limit: 2 }))
        ),
        "{third:?}"
    );
    assert!(
        s.put_webhook(&d.id, &owned("k2"), now, cap).await.unwrap(),
        "another key has room"
    );
    s.delete_webhook(&a.id).await.unwrap();
    assert!(s.put_webhook(&c.id, &owned("k1"), now, cap).await.unwrap());
    let claimed = s
        .claim_webhooks(std::time::Duration::from_secs(30), 10)
        .await
        .unwrap();
    let b_claim = claimed.iter().find(|w| w.job_id == b.id).expect("b is due");
    assert!(s.settle_webhook(b_claim, &owned("k1"), None).await.unwrap());
    assert!(
        s.put_webhook(&a.id, &owned("k1"), now, cap).await.unwrap(),
        "settled out of the outbox frees its room"
    );
}

both_stores!(
    the_webhook_outbox_leases_fences_and_wakes,
    an_owners_pending_webhooks_are_capped,
);
