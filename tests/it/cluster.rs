//! Redis Cluster: three masters from Debian's redis-server (`redis-cli --cluster
//! create`), the prototype's key names (no prefix), and every kind of store call:
//! submissions with and without owners, fair claims, completion, retries, cancel,
//! listing, events, keys, rate limits, idempotency, reaping, backend reports.
//! Every script's keys hash to the slot of `job_queue`; each job's status hash
//! lives in its own slot and is touched by single-key scripts only.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Map;
use studio_core::auth::{KeyLimits, Role};
use studio_core::job::Priority;
use studio_core::job::{JobStatus, LaneLimits, NewJob};
use studio_core::keys as manage;
use studio_core::store::prelude::*;
use studio_core::store::{
    CancelOutcome, Completion, IdempotencyClaim, ListQuery, RedisStore, WorkerId,
};

use crate::support::{KillOnDrop, TempDir, fast_settings, free_port};

fn port() -> u16 {
    // Cluster nodes also use port + 10000 for their bus.
    loop {
        let p = free_port();
        if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

fn cluster_ok(p: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{p}")) else {
        return false;
    };
    let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(300)) else {
        return false;
    };
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query::<String>(&mut c)
        .is_ok_and(|s| s.contains("cluster_state:ok"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_on_a_three_master_cluster() {
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new()).collect();
    let ports: Vec<u16> = (0..3).map(|_| port()).collect();
    let _nodes: Vec<KillOnDrop> = ports
        .iter()
        .zip(&dirs)
        .map(|(p, d)| {
            KillOnDrop(
                Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .arg("--cluster-config-file")
                    .arg(d.path().join("nodes.conf"))
                    .arg("--dir")
                    .arg(d.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server runs"),
            )
        })
        .collect();
    for p in &ports {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
            assert!(Instant::now() < deadline, "node {p} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&hosts)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs");
    assert!(created.status.success(), "{created:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ports.iter().all(|p| cluster_ok(*p)) {
        assert!(Instant::now() < deadline, "the cluster never became ok");
        std::thread::sleep(Duration::from_millis(100));
    }

    let url = format!("redis+cluster://{}", hosts.join(","));
    let store = RedisStore::connect(&url, "", fast_settings()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.stats().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the store never reached the cluster"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut events = store.subscribe();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Submissions: two owners and the ownerless lane.
    let job = |owner: &str, i: u64| {
        NewJob::new(
            format!("cluster {owner} {i}"),
            i,
            "smoke".into(),
            Map::new(),
        )
        .owned(owner, Priority::Normal)
        .limited(LaneLimits::default())
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        for owner in ["ann", "bob", ""] {
            let j = job(owner, i);
            store.enqueue(&j).await.unwrap();
            ids.push(j.id.clone());
        }
    }
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event through the cluster's pub/sub")
        .unwrap();
    assert_eq!(ev.job.status, JobStatus::Queued);
    assert_eq!(store.stats().await.unwrap().queued, 9);
    let (s, _) = (store.queue_position(&ids[8]).await.unwrap(), ());
    assert!(s.is_some());

    // Cancel one while queued.
    assert!(matches!(
        store.cancel(&ids[8]).await.unwrap(),
        CancelOutcome::Cancelled(_)
    ));

    // Fair claims: the three lanes take turns.
    let w = WorkerId::from_string("cluster-worker".into());
    store.heartbeat(&w).await.unwrap();
    let mut owners = Vec::new();
    let mut first = None;
    while let Some(c) = store.claim(&w, Duration::from_millis(300)).await.unwrap() {
        owners.push(c.job.owner.clone());
        if first.is_none() {
            // The first one fails once and comes back later.
            first = Some(c.lease.job_id.clone());
            store
                .retry_later(&c.lease, "try again", Duration::from_millis(50))
                .await
                .unwrap();
            continue;
        }
        store
            .complete(
                &c.lease,
                Completion::Finished {
                    image_url: String::new(),
                    outputs: Vec::new(),
                },
            )
            .await
            .unwrap();
        if owners.len() > 20 {
            break;
        }
        if owners.len() == 8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.promote_due().await.unwrap();
        }
    }
    assert_eq!(owners.len(), 9, "{owners:?}");
    let mut firsts: Vec<&str> = owners[..3].iter().map(String::as_str).collect();
    firsts.sort();
    assert_eq!(
        firsts,
        ["", "ann", "bob"],
        "one of each lane first: {owners:?}"
    );
    let retried = store.get(&first.unwrap()).await.unwrap().unwrap();
    assert_eq!(retried.status, JobStatus::Finished);
    assert_eq!(retried.attempt, 2);

    // Listing (reads across slots), keys, limits, idempotency, reports, reaping.
    let page = store
        .list(&ListQuery {
            status: Some(JobStatus::Finished),
            limit: 20,
            cursor: None,
            owner: None,
        })
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), 8);
    let (key, secret) = manage::create(&store, "c", Role::User, KeyLimits::default(), "test")
        .await
        .unwrap();
    assert_eq!(store.get_key(&key.id).await.unwrap().unwrap().name, "c");
    assert!(secret.secret.starts_with("sk_"));
    assert!(store.rate_limit("key:c", 1.0, 1).await.unwrap().allowed);
    assert!(!store.rate_limit("key:c", 1.0, 1).await.unwrap().allowed);
    let claim = IdempotencyClaim {
        fingerprint: "f".into(),
        job_id: ids[0].clone(),
        seed: 1,
        workflow: "smoke".into(),
        taken_ms: 1,
    };
    assert_eq!(store.take_idempotency("scope", &claim).await.unwrap(), None);
    assert_eq!(
        store.take_idempotency("scope", &claim).await.unwrap(),
        Some(claim.clone())
    );
    store.report_backends(&w, "[]").await.unwrap();
    assert_eq!(store.backend_reports().await.unwrap().len(), 1);
    assert!(store.reap().await.is_ok());
    assert_eq!(store.stats().await.unwrap().queued, 0);
}
