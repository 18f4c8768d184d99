//! `Usage`, `Steering` and `Retention`: an attempt's account is kept once and
//! summed into its key's spend for the UTC day and month; pauses and dead
//! letters; stored outputs indexed once and counted per owner.

use studio_core::store::UsageRecord;

use crate::support::{Backing, fast_settings, test_store};

fn account(job: &str, attempt: u32, owner: &str, gpu_ms: u64, ended_ms: u64) -> UsageRecord {
    UsageRecord {
        job_id: job.into(),
        attempt,
        owner: owner.into(),
        workflow: "smoke".into(),
        version: None,
        backend: "http://gpu:8188".into(),
        gpu: "RTX".into(),
        gpu_ms,
        wait_ms: 10,
        output_bytes: 100,
        outcome: "finished".into(),
        ended_ms,
    }
}

async fn an_account_is_kept_once_and_summed_into_the_spend(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let now = studio_core::clock::now_ms();
    let day = now / 86_400_000 * 86_400_000;
    let a = account("j1", 1, "k1", 1500, now);
    assert!(t.store.record_usage(&a).await.unwrap());
    assert!(
        !t.store.record_usage(&a).await.unwrap(),
        "the same attempt twice"
    );
    assert!(
        t.store
            .record_usage(&account("j1", 2, "k1", 500, now))
            .await
            .unwrap()
    );
    assert!(
        t.store
            .record_usage(&account("j2", 1, "k2", 700, now))
            .await
            .unwrap()
    );
    // Yesterday's counts for the month (unless today is the 1st), not the day.
    let yesterday = account("j0", 1, "k1", 1000, day - 1000);
    assert!(t.store.record_usage(&yesterday).await.unwrap());
    let spend = t.store.spend("k1", now).await.unwrap();
    assert_eq!(spend.day_ms, 2000);
    let month_start = studio_core::store::usage::month_start_ms(now);
    let expect_month = if day - 1000 >= month_start {
        3000
    } else {
        2000
    };
    assert_eq!(spend.month_ms, expect_month);
    assert_eq!(t.store.spend("nobody", now).await.unwrap().day_ms, 0);
    let all = t
        .store
        .usage(day - 86_400_000, now + 1, None, 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    let mine = t.store.usage(day, now + 1, Some("k1"), 100).await.unwrap();
    assert_eq!(mine.len(), 2, "k1's today: {mine:?}");
    assert!(mine.contains(&a));
    assert_eq!(
        t.store.usage(day, now + 1, None, 2).await.unwrap().len(),
        2,
        "bounded"
    );
}

async fn pauses_and_dead_letters(kind: Backing) {
    let t = test_store(kind, fast_settings());
    assert!(!t.store.pauses().await.unwrap().farm);
    t.store.set_paused(None, true).await.unwrap();
    t.store
        .set_paused(Some("http://a:8188"), true)
        .await
        .unwrap();
    t.store
        .set_paused(Some("http://a:8188"), true)
        .await
        .unwrap();
    let p = t.store.pauses().await.unwrap();
    assert!(p.farm && p.backends.len() == 1 && p.blocks("http://b:8188"));
    t.store.set_paused(None, false).await.unwrap();
    let p = t.store.pauses().await.unwrap();
    assert!(!p.farm && p.blocks("http://a:8188") && !p.blocks("http://b:8188"));
    assert_eq!(t.store.remove_dead_letter("none").await.unwrap(), 0);
}

async fn stored_outputs_are_indexed_once_and_counted_per_owner(kind: Backing) {
    use studio_core::store::StoredOutputs;
    let t = test_store(kind, fast_settings());
    let o = |job: &str, owner: &str, bytes: u64| StoredOutputs {
        job_id: job.into(),
        owner: owner.into(),
        files: vec![format!("{job}.png")],
        bytes,
    };
    t.store
        .keep_outputs(&o("a", "k1", 100), 1_000)
        .await
        .unwrap();
    t.store
        .keep_outputs(&o("a", "k1", 100), 5_000)
        .await
        .unwrap();
    t.store
        .keep_outputs(&o("b", "k1", 50), 2_000)
        .await
        .unwrap();
    t.store.keep_outputs(&o("c", "k2", 7), 9_000).await.unwrap();
    assert_eq!(
        t.store.stored_bytes("k1").await.unwrap(),
        150,
        "a job counts once"
    );
    let due: Vec<String> = t
        .store
        .due_outputs(2_500, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.job_id)
        .collect();
    assert_eq!(due, vec!["a", "b"], "the first recording's time holds");
    t.store.postpone_outputs("a", 8_000).await.unwrap();
    let due: Vec<String> = t
        .store
        .due_outputs(2_500, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.job_id)
        .collect();
    assert_eq!(due, vec!["b"]);
    assert_eq!(
        t.store.forget_outputs("b").await.unwrap(),
        Some(o("b", "k1", 50))
    );
    assert_eq!(t.store.forget_outputs("b").await.unwrap(), None, "once");
    assert_eq!(t.store.stored_bytes("k1").await.unwrap(), 100);
    assert_eq!(t.store.stored_bytes("nobody").await.unwrap(), 0);
    // Deleting a record.
    let j = super::job("gone soon");
    t.store.enqueue(&j).await.unwrap();
    assert!(t.store.delete_job(j.id.as_str()).await.unwrap());
    assert!(t.store.get(&j.id).await.unwrap().is_none());
    assert!(!t.store.delete_job(j.id.as_str()).await.unwrap());
}

both_stores!(
    an_account_is_kept_once_and_summed_into_the_spend,
    pauses_and_dead_letters,
    stored_outputs_are_indexed_once_and_counted_per_owner,
);
