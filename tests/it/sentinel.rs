//! Redis Sentinel: one master, two replicas, three sentinels (Debian's
//! redis-server), a failover under load by `kill -9` of the master. Two stores
//! ("processes") find the new master by themselves; with `--redis-wait-replicas 1`
//! no acknowledged submission is lost and no job is handed out twice.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Map;
use studio_core::job::NewJob;
use studio_core::store::prelude::*;
use studio_core::store::{Completion, RedisStore, StoreSettings, WorkerId};

use crate::support::{KillOnDrop, TempDir, fast_settings, free_port};

fn redis(dir: &TempDir, port: u16, replica_of: Option<u16>) -> KillOnDrop {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(m) = replica_of {
        cmd.args(["--replicaof", "127.0.0.1", &m.to_string()]);
    }
    KillOnDrop(cmd.spawn().expect("redis-server runs"))
}

fn sentinel(dir: &TempDir, port: u16, master: u16) -> KillOnDrop {
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor studio 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds studio 500\n\
             sentinel failover-timeout studio 3000\n\
             sentinel parallel-syncs studio 1\n",
            dir.path().display()
        ),
    )
    .unwrap();
    KillOnDrop(
        Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel runs"),
    )
}

fn ask(port: u16, args: &[&str]) -> Option<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut c = client
        .get_connection_with_timeout(Duration::from_millis(300))
        .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c).ok()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(v: Option<redis::Value>) -> usize {
    match v {
        Some(redis::Value::Array(a)) => a.len(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_load_loses_no_acknowledged_job() {
    let dirs: Vec<TempDir> = (0..6).map(|_| TempDir::new()).collect();
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let (m, r1, r2) = (ports[0], ports[1], ports[2]);
    let mut master = Some(redis(&dirs[0], m, None));
    let _replicas = [redis(&dirs[1], r1, Some(m)), redis(&dirs[2], r2, Some(m))];
    let _sentinels: Vec<KillOnDrop> = (3..6).map(|i| sentinel(&dirs[i], ports[i], m)).collect();
    wait_until("two synced replicas", Duration::from_secs(15), || {
        matches!(ask(m, &["INFO", "replication"]), Some(redis::Value::BulkString(b))
            if String::from_utf8_lossy(&b).contains("connected_slaves:2"))
    });
    wait_until(
        "sentinels that know each other and the replicas",
        Duration::from_secs(20),
        || {
            (3..6).all(|i| {
                count(ask(ports[i], &["SENTINEL", "replicas", "studio"])) == 2
                    && count(ask(ports[i], &["SENTINEL", "sentinels", "studio"])) == 2
            })
        },
    );

    let url = format!(
        "redis+sentinel://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/studio",
        ports[3], ports[4], ports[5]
    );
    let settings = StoreSettings {
        wait_replicas: 1,
        ..fast_settings()
    };
    let prefix = format!("sent{}:", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let one = Arc::new(RedisStore::connect(&url, &prefix, settings.clone()).unwrap());
    let two = Arc::new(RedisStore::connect(&url, &prefix, settings).unwrap());
    let job = |i: usize| NewJob::new(format!("job {i}"), i as u64, "smoke".into(), Map::new());
    // Both find the master.
    let deadline = Instant::now() + Duration::from_secs(10);
    while one.enqueue(&job(0)).await.is_err() || two.stats().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the stores never found the master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What WAIT costs: one second of submissions each way, one at a time (a debug
    // build; the figure to compare is the ratio).
    let mut settings_zero = fast_settings();
    settings_zero.wait_replicas = 0;
    let zero = RedisStore::connect(&url, &prefix, settings_zero).unwrap();
    while zero.stats().await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rates = Vec::new();
    for store in [&zero, one.as_ref()] {
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_secs(1) {
            store.enqueue(&job(9_000_000 + n)).await.unwrap();
            n += 1;
        }
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "sentinel: sequential submissions {:.0}/s without WAIT, {:.0}/s with --redis-wait-replicas 1",
        rates[0], rates[1]
    );
    let acked_ids: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let back_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Load: both stores submit all along.
    let mut load = Vec::new();
    for (k, store) in [one.clone(), two.clone()].into_iter().enumerate() {
        let (acked_ids, errors, killed_at, back_at, stop) = (
            acked_ids.clone(),
            errors.clone(),
            killed_at.clone(),
            back_at.clone(),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut i = 1 + k * 1_000_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let j = job(i);
                i += 1;
                match store.enqueue(&j).await {
                    Ok(_) => {
                        acked_ids.lock().unwrap().push(j.id.as_str().to_owned());
                        if killed_at.lock().unwrap().is_some() {
                            back_at.lock().unwrap().get_or_insert_with(Instant::now);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = acked_ids.lock().unwrap().len();
    let old = one.connection().master_addr();
    drop(master.take()); // kill -9
    *killed_at.lock().unwrap() = Some(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(30);
    while back_at.lock().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "no submission succeeded after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let failover = back_at.lock().unwrap().unwrap() - killed_at.lock().unwrap().unwrap();
    let new_one = one.connection().master_addr();
    let new_two = two.connection().master_addr();
    assert_ne!(new_one, old, "moved to the new master");
    assert_eq!(new_one, new_two, "both processes found it");
    let acked: Vec<String> = acked_ids.lock().unwrap().clone();
    println!(
        "sentinel: {} submissions acknowledged ({before} before the kill), {} refused during the failover; first acknowledged submission {:.2} s after kill -9 of the master; master {old} -> {new_one}",
        acked.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        failover.as_secs_f64()
    );
    // Every acknowledged job is on the new master...
    for id in &acked {
        let id = studio_core::job::JobId::parse(id).unwrap();
        assert!(
            one.get(&id).await.unwrap().is_some(),
            "acknowledged job {id} lost"
        );
    }
    // ...and each is handed out once.
    let w = WorkerId::from_string("sentinel-worker".into());
    one.heartbeat(&w).await.unwrap();
    let mut seen = HashSet::new();
    while let Some(c) = one.claim(&w, Duration::from_millis(200)).await.unwrap() {
        assert!(
            seen.insert(c.lease.job_id.as_str().to_owned()),
            "handed out twice"
        );
        one.complete(
            &c.lease,
            Completion::Failed {
                error: "done".into(),
            },
        )
        .await
        .unwrap();
    }
    for id in &acked {
        assert!(seen.contains(id), "acknowledged job {id} never handed out");
    }
}
