//! Redis only: the prototype's keys unchanged, and other programs on the same Redis
//! (pushing jobs in the prototype's format, writing status hashes) keep working.

use std::collections::HashMap;
use std::time::Duration;

use redis::Commands;
use serde_json::{Map, Value, json};
use studio_core::config::Role;
use studio_core::job::{JobId, JobStatus, NewJob};
use studio_core::store::prelude::*;
use studio_core::store::{Completion, RedisStore, StoreSettings, WorkerId};

use crate::support::{Backing, RedisPrefix, TestApp, fast_settings, redis_url};

const WAIT: Duration = Duration::from_millis(300);

fn worker() -> WorkerId {
    WorkerId::from_string(format!("w-{}", uuid::Uuid::new_v4().simple()))
}

/// Database 15 of the test Redis with no key prefix: exactly the prototype's names.
/// Only this test uses that database.
#[tokio::test]
async fn the_prototype_keys_and_formats_are_kept_to_the_letter() {
    let base = redis_url();
    let base = base
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches('/');
    let url = format!("{base}/15");
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
    let store = RedisStore::connect(&url, "", StoreSettings::default()).unwrap();
    let job = NewJob::new("a cat".into(), 42, "sdxl".into(), Map::new());
    store.enqueue(&job).await.unwrap();

    let queued: Vec<String> = c.lrange("job_queue", 0, -1).unwrap();
    assert_eq!(queued.len(), 1);
    let payload: Value = serde_json::from_str(&queued[0]).unwrap();
    let keys: Vec<&str> = payload
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["created_at", "job_id", "prompt", "seed", "workflow"]);
    assert_eq!(payload["job_id"], job.id.as_str());
    assert_eq!(payload["seed"], 42);

    let status_key = format!("job:status:{}", job.id);
    let hash: HashMap<String, String> = c.hgetall(&status_key).unwrap();
    for f in [
        "job_id",
        "status",
        "progress",
        "image_url",
        "error",
        "updated_at",
    ] {
        assert!(hash.contains_key(f), "field {f} in {hash:?}");
    }
    assert_eq!(hash["status"], "queued");
    assert_eq!(hash["progress"], "0");
    let ttl: i64 = c.ttl(&status_key).unwrap();
    assert!((86_000..=86_400).contains(&ttl), "24 h TTL, got {ttl}");

    let w = worker();
    store.heartbeat(&w).await.unwrap();
    let claim = store.claim(&w, WAIT).await.unwrap().unwrap();
    let processing: Vec<String> = c
        .lrange(format!("{{job_queue}}:processing:{w}"), 0, -1)
        .unwrap();
    assert_eq!(
        processing, queued,
        "claimed by BLMOVE into the worker's list"
    );
    assert!(
        c.exists::<_, bool>(format!("{{job_queue}}:hb:{w}"))
            .unwrap()
    );
    assert!(
        c.sismember::<_, _, bool>("{job_queue}:workers", w.as_str())
            .unwrap()
    );
    store
        .complete(
            &claim.lease,
            Completion::Finished {
                image_url: "/images/a.png".into(),
                outputs: vec![],
            },
        )
        .await
        .unwrap();
    let processing: Vec<String> = c
        .lrange(format!("{{job_queue}}:processing:{w}"), 0, -1)
        .unwrap();
    assert!(processing.is_empty());
    let hash: HashMap<String, String> = c.hgetall(&status_key).unwrap();
    assert_eq!(
        (
            hash["status"].as_str(),
            hash["progress"].as_str(),
            hash["image_url"].as_str()
        ),
        ("finished", "100", "/images/a.png")
    );
    assert!(!hash.contains_key("lease_token"));
    let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
}

fn store(p: &RedisPrefix) -> RedisStore {
    RedisStore::connect(&p.url, &p.prefix, fast_settings()).unwrap()
}

#[tokio::test]
async fn a_job_another_program_pushes_without_a_hash_is_claimed_and_its_hash_created() {
    let p = RedisPrefix::new();
    let s = store(&p);
    let mut c = p.conn();
    // Python's naive isoformat(), as the prototype wrote it.
    let created = studio_core::clock::iso8601(studio_core::clock::now_micros())
        .trim_end_matches("+00:00")
        .to_owned();
    let _: () = c
        .lpush(format!("{}job_queue", p.prefix), format!(r#"{{"job_id": "legacy-1", "prompt": "from a script", "seed": 5, "workflow": "smoke", "created_at": "{created}"}}"#))
        .unwrap();
    let w = worker();
    s.heartbeat(&w).await.unwrap();
    let claim = s.claim(&w, WAIT).await.unwrap().expect("claimed");
    assert_eq!(claim.lease.job_id.as_str(), "legacy-1");
    assert_eq!(claim.job.prompt, "from a script");
    assert_eq!(claim.job.seed, Some(5));
    assert_eq!(claim.job.workflow, "smoke");
    assert_eq!(claim.job.created_at, created);
    let hash: HashMap<String, String> = c
        .hgetall(format!("{}job:status:legacy-1", p.prefix))
        .unwrap();
    assert_eq!(hash["status"], "processing");
    assert_eq!(hash["job_id"], "legacy-1");
    assert_eq!(hash["image_url"], "");
    s.complete(
        &claim.lease,
        Completion::Finished {
            image_url: "/images/legacy-1/a.png".into(),
            outputs: vec![],
        },
    )
    .await
    .unwrap();
    let hash: HashMap<String, String> = c
        .hgetall(format!("{}job:status:legacy-1", p.prefix))
        .unwrap();
    assert_eq!(hash["status"], "finished");
    // It is listed like our own jobs.
    let page = s
        .list(&studio_core::store::ListQuery {
            owner: None,
            status: None,
            limit: 10,
            cursor: None,
        })
        .await
        .unwrap();
    assert_eq!(page.jobs[0].id, "legacy-1");
    // And under its status.
    let finished = s
        .list(&studio_core::store::ListQuery {
            owner: None,
            status: Some(studio_core::job::JobStatus::Finished),
            limit: 10,
            cursor: None,
        })
        .await
        .unwrap();
    assert_eq!(finished.jobs.len(), 1);
    assert_eq!(finished.jobs[0].id, "legacy-1");
}

#[tokio::test]
async fn a_pushed_job_whose_record_expired_while_it_waited_fails_instead_of_running() {
    let p = RedisPrefix::new();
    let s = store(&p);
    let mut c = p.conn();
    // Older than the 1 h time to live of the test settings, and without a hash.
    let _: () = c
        .lpush(format!("{}job_queue", p.prefix), r#"{"job_id": "legacy-old", "prompt": "from a script", "workflow": "smoke", "created_at": "2024-05-01T10:00:00"}"#)
        .unwrap();
    let w = worker();
    s.heartbeat(&w).await.unwrap();
    assert!(s.claim(&w, WAIT).await.unwrap().is_none(), "not run");
    let hash: HashMap<String, String> = c
        .hgetall(format!("{}job:status:legacy-old", p.prefix))
        .unwrap();
    assert_eq!(hash["status"], "failed");
    assert_eq!(hash["error"], studio_core::store::EXPIRED_MESSAGE);
    let queue: Vec<String> = c.lrange(format!("{}job_queue", p.prefix), 0, -1).unwrap();
    assert!(queue.is_empty());
}

#[tokio::test]
async fn a_job_pushed_with_its_own_hash_updates_that_hash() {
    let p = RedisPrefix::new();
    let s = store(&p);
    let mut c = p.conn();
    let key = format!("{}job:status:legacy-2", p.prefix);
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg(&[
            "job_id",
            "legacy-2",
            "status",
            "queued",
            "progress",
            "0",
            "image_url",
            "",
            "error",
            "",
            "updated_at",
            "2024-05-01T10:00:00",
            "owner",
            "batch-script",
        ])
        .query(&mut c)
        .unwrap();
    let _: () = c.lpush(format!("{}job_queue", p.prefix), r#"{"job_id": "legacy-2", "prompt": "p", "seed": 1, "workflow": "sdxl", "created_at": "2024-05-01T10:00:00"}"#).unwrap();
    let w = worker();
    s.heartbeat(&w).await.unwrap();
    let claim = s.claim(&w, WAIT).await.unwrap().expect("claimed");
    s.update(&claim.lease, Some(30), None).await.unwrap();
    let hash: HashMap<String, String> = c.hgetall(&key).unwrap();
    assert_eq!(
        (hash["status"].as_str(), hash["progress"].as_str()),
        ("processing", "30")
    );
    assert_eq!(
        hash["owner"], "batch-script",
        "fields of the other program are kept"
    );
    assert_eq!(
        claim.job.extra.get("owner").map(String::as_str),
        Some("batch-script")
    );
}

#[tokio::test]
async fn a_status_hash_written_by_another_program_is_reported_as_written() {
    let app = TestApp::spawn(Backing::Redis, Role::Api, |_| {}).await;
    let p = app.redis.as_ref().unwrap();
    let mut c = p.conn();
    let _: () = redis::cmd("HSET")
        .arg(format!("{}job:status:ext-7", p.prefix))
        .arg(&[
            "job_id",
            "ext-7",
            "status",
            "processing",
            "progress",
            "37",
            "image_url",
            "http://cdn.example/x.png",
            "error",
            "",
            "updated_at",
            "2024-05-01T10:00:00",
            "gpu",
            "A100",
        ])
        .query(&mut c)
        .unwrap();
    let v = app.status("ext-7").await;
    assert_eq!(v["job_id"], "ext-7");
    assert_eq!(v["status"], "processing");
    assert_eq!(v["progress"], 37);
    assert_eq!(v["image_url"], "http://cdn.example/x.png");
    assert_eq!(v["error"], "");
    assert_eq!(v["updated_at"], "2024-05-01T10:00:00");
    assert_eq!(v["gpu"], "A100");
}

#[tokio::test]
async fn a_job_submitted_through_the_api_is_what_a_prototype_worker_would_pop() {
    let app = TestApp::spawn(Backing::Redis, Role::Api, |_| {}).await;
    let id = app
        .submit(json!({"prompt": "for an old worker", "seed": 9, "workflow": "sd15"}))
        .await;
    let p = app.redis.as_ref().unwrap();
    let mut c = p.conn();
    // The prototype's consumer: BRPOP from the right end.
    let (_, raw): (String, String) = c.brpop(format!("{}job_queue", p.prefix), 1.0).unwrap();
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["job_id"], id.as_str());
    assert_eq!(v["prompt"], "for an old worker");
    assert_eq!(v["seed"], 9);
    assert_eq!(v["workflow"], "sd15");
    assert!(v["created_at"].is_string());
}

#[tokio::test]
async fn a_duplicated_payload_runs_once() {
    let p = RedisPrefix::new();
    let s = store(&p);
    let mut c = p.conn();
    let job = NewJob::new("dup".into(), 1, "smoke".into(), Map::new());
    s.enqueue(&job).await.unwrap();
    let _: () = c
        .lpush(format!("{}job_queue", p.prefix), job.payload())
        .unwrap();
    let (a, b) = (worker(), worker());
    s.heartbeat(&a).await.unwrap();
    s.heartbeat(&b).await.unwrap();
    let first = s.claim(&a, WAIT).await.unwrap().expect("one run");
    assert!(
        s.claim(&b, WAIT).await.unwrap().is_none(),
        "the copy is dropped while the job runs"
    );
    s.complete(
        &first.lease,
        Completion::Finished {
            image_url: "u".into(),
            outputs: vec![],
        },
    )
    .await
    .unwrap();
    let _: () = c
        .lpush(format!("{}job_queue", p.prefix), job.payload())
        .unwrap();
    assert!(
        s.claim(&b, WAIT).await.unwrap().is_none(),
        "a copy of a finished job is dropped"
    );
    for w in [&a, &b] {
        let left: Vec<String> = c
            .lrange(format!("{{{}job_queue}}:processing:{w}", p.prefix), 0, -1)
            .unwrap();
        assert!(left.is_empty(), "nothing left in {w}'s processing list");
    }
    assert_eq!(s.get(&job.id).await.unwrap().unwrap().attempt, 1);
}

#[tokio::test]
async fn a_reaped_job_goes_back_to_the_consuming_end() {
    let p = RedisPrefix::new();
    let s = store(&p);
    let mut c = p.conn();
    let (a, b) = (
        NewJob::new("a".into(), 1, "smoke".into(), Map::new()),
        NewJob::new("b".into(), 1, "smoke".into(), Map::new()),
    );
    s.enqueue(&a).await.unwrap();
    s.enqueue(&b).await.unwrap();
    let w = worker();
    s.heartbeat(&w).await.unwrap();
    let claim = s.claim(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(claim.lease.job_id, a.id);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.reap().await.unwrap(), vec![a.id.clone()]);
    let right: String = c.lindex(format!("{}job_queue", p.prefix), -1).unwrap();
    assert_eq!(right, a.payload(), "next to be consumed");
    assert_eq!(s.queue_position(&a.id).await.unwrap(), Some(0));
    assert_eq!(s.queue_position(&b.id).await.unwrap(), Some(1));
    let workers: Vec<String> = c
        .smembers(format!("{{{}job_queue}}:workers", p.prefix))
        .unwrap();
    assert!(
        !workers.contains(&w.to_string()),
        "the dead worker is forgotten"
    );
}

#[tokio::test]
async fn an_unreadable_queue_entry_is_dead_lettered_not_lost() {
    let p = RedisPrefix::new();
    let s = store(&p);
    let mut c = p.conn();
    let _: () = c
        .lpush(format!("{}job_queue", p.prefix), "this is not JSON")
        .unwrap();
    let w = worker();
    s.heartbeat(&w).await.unwrap();
    assert!(s.claim(&w, WAIT).await.unwrap().is_none());
    let dead = s.dead_letters(5).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, "this is not JSON");
    let left: i64 = c
        .llen(format!("{{{}job_queue}}:processing:{w}", p.prefix))
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_cancel_requested_before_claim_is_honoured_by_the_claim() {
    let p = RedisPrefix::new();
    let s = store(&p);
    let mut c = p.conn();
    // Another program flags a queued job (the prototype has no cancel endpoint).
    let _: () = c
        .lpush(
            format!("{}job_queue", p.prefix),
            r#"{"job_id": "legacy-3", "prompt": "p"}"#,
        )
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{}job:status:legacy-3", p.prefix))
        .arg(&["status", "queued", "cancel_requested", "1"])
        .query(&mut c)
        .unwrap();
    let w = worker();
    s.heartbeat(&w).await.unwrap();
    assert!(s.claim(&w, WAIT).await.unwrap().is_none());
    let rec = s
        .get(&JobId::parse("legacy-3").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.status, rec.error.as_str()),
        (JobStatus::Failed, "cancelled")
    );
}

/// The claim's last script (`settle.lua`, action `claimed`, which lists the job as
/// processing) can reach Redis late: a worker cut off from Redis has it in flight,
/// the reaper takes the job back, another worker runs it to its end, and then the
/// link comes back. Played here by running that script once more, by hand, with the
/// first worker's keys after the job finished: the job must stay listed as finished
/// (the chaos test once found a finished job left in the processing index).
#[tokio::test]
async fn a_late_claim_settle_does_not_list_a_finished_job_as_processing() {
    let p = RedisPrefix::new();
    let s = store(&p);
    let mut c = p.conn();
    let j = NewJob::new("late".into(), 1, "smoke".into(), Map::new());
    s.enqueue(&j).await.unwrap();
    let (a, b) = (worker(), worker());
    s.heartbeat(&a).await.unwrap();
    let first = s.claim(&a, WAIT).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.reap().await.unwrap(), vec![j.id.clone()]);
    s.heartbeat(&b).await.unwrap();
    let second = s.claim(&b, WAIT).await.unwrap().unwrap();
    let done = Completion::Finished {
        image_url: String::new(),
        outputs: Vec::new(),
    };
    assert!(s.complete(&second.lease, done).await.unwrap());

    let k = studio_core::store::redis::KeyNames::new(&p.prefix);
    let script = redis::Script::new(&format!(
        "{}\n{}",
        include_str!("../../src/store/lua/queue_prelude.lua"),
        include_str!("../../src/store/lua/settle.lua")
    ));
    let mut inv = script.prepare_invoke();
    for key in k.settle_keys(a.as_str()) {
        inv.key(key);
    }
    inv.arg("claimed")
        .arg(&first.lease.payload)
        .arg(j.id.as_str())
        .arg(1000)
        .arg(0)
        .arg("")
        .arg("")
        .arg(k.tag());
    let _: i64 = inv.invoke(&mut c).unwrap();

    let listed = |status: &str| -> Option<f64> {
        redis::Commands::zscore(&mut p.conn(), k.by_status(status), j.id.as_str()).unwrap()
    };
    assert!(listed("finished").is_some(), "listed as finished");
    assert!(
        listed("processing").is_none(),
        "not listed as processing again"
    );
}

/// A process remembers the requirement sets it registered and leaves their JSON
/// out of later submissions; a registry emptied behind its back (a Redis that
/// lost its data) is refilled by the next submission of the set, not left
/// without it (its jobs would never be routed).
#[tokio::test]
async fn a_registry_emptied_behind_a_process_is_refilled_by_its_next_submission() {
    let r = RedisPrefix::new();
    let store = RedisStore::connect(&r.url, &r.prefix, fast_settings()).unwrap();
    let json = r#"{"nodes":["KSampler"]}"#;
    let first =
        NewJob::new("a".into(), 1, "sdxl".into(), Map::new()).needing("fpx".into(), json.into());
    store.enqueue(&first).await.unwrap();
    let registry = format!("{{{}job_queue}}:req-sets", r.prefix);
    let mut c = r.conn();
    let kept: Option<String> = c.hget(&registry, "fpx").unwrap();
    assert_eq!(kept.as_deref(), Some(json));
    let _: () = c.del(&registry).unwrap();
    let second =
        NewJob::new("b".into(), 2, "sdxl".into(), Map::new()).needing("fpx".into(), json.into());
    let rec = store.enqueue(&second).await.unwrap();
    assert_eq!(rec.req, "fpx");
    let kept: Option<String> = c.hget(&registry, "fpx").unwrap();
    assert_eq!(kept.as_deref(), Some(json), "registered again");
    assert_eq!(store.stats().await.unwrap().queued, 2);
}

/// A status read counted against a rate limit pipelines the limit's script; a
/// Redis that forgot its scripts (a restart, `SCRIPT FLUSH`) is given it again.
#[tokio::test]
async fn a_counted_status_read_survives_a_redis_that_forgot_its_scripts() {
    let r = RedisPrefix::new();
    let store = RedisStore::connect(&r.url, &r.prefix, fast_settings()).unwrap();
    let job = NewJob::new("a".into(), 1, "sdxl".into(), Map::new());
    store.enqueue(&job).await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut r.conn())
        .unwrap();
    let check = studio_core::auth::rate::RateCheck::new("key:flush".into(), 100.0, 10);
    let (rec, position) = store
        .status_counted(&job.id, &check)
        .await
        .unwrap()
        .expect("the job");
    assert_eq!(rec.id, job.id.as_str());
    assert_eq!(position, Some(0));
    assert!(check.decision().unwrap().allowed);
}
