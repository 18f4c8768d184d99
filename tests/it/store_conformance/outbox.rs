//! `WebhookOutbox`: the webhook outbox.

use std::time::Duration;

use super::job;
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
        s.put_webhook(&a.id, &rec("http://a"), now, 2)
            .await
            .unwrap()
    );
    assert!(
        s.put_webhook(&b.id, &rec("http://b"), now + 60_000, 2)
            .await
            .unwrap()
    );
    assert!(
        !s.put_webhook(&c.id, &rec("http://c"), now, 2)
            .await
            .unwrap(),
        "the outbox is full"
    );
    assert!(s.get_webhook(&c.id).await.unwrap().is_none());
    assert!(
        s.put_webhook(&a.id, &rec("http://a2"), now, 2)
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
        s.put_webhook(&c.id, &rec("http://c"), now, 2)
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

both_stores!(the_webhook_outbox_leases_fences_and_wakes,);
