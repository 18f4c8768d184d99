//! `Previews`: each running job's latest preview, announced as an event.

use std::time::Duration;

use studio_core::job::JobId;
use studio_core::store::Preview;

use crate::support::{Backing, fast_settings, test_store};

async fn the_latest_preview_is_kept_and_announced(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let id = JobId::random();
    assert!(t.store.get_preview(&id).await.unwrap().is_none());
    let mut events = t.store.subscribe();
    // Redis: the subscriber connects in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for seq in 1..=2u64 {
        let p = Preview {
            seq,
            content_type: "image/jpeg".into(),
            image: bytes::Bytes::from(vec![seq as u8; 16]),
        };
        t.store.put_preview(&id, "k1", &p).await.unwrap();
    }
    let got = t.store.get_preview(&id).await.unwrap().expect("kept");
    assert_eq!(got.seq, 2);
    assert_eq!(got.image.as_ref(), &[2u8; 16]);
    let announced = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let e = events.recv().await.unwrap();
            if e.preview.is_some() && e.job.id == id.as_str() {
                return e;
            }
        }
    })
    .await
    .expect("a preview event");
    assert_eq!(announced.job.owner, "k1");
}

both_stores!(the_latest_preview_is_kept_and_announced);
