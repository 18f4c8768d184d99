//! Pictures that do not live forever, on both stores: outputs and thumbnails
//! leave the disk (and an S3 bucket, s3s-fs) within a sweep once their job's
//! record is gone and `--output-ttl` has passed, never while the record lives;
//! `DELETE /api/jobs/{id}` removes a job and its pictures at once; a key over
//! `--max-stored-bytes` is refused until it deletes; pictures an earlier version
//! left on disk are swept once.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role};
use studio_core::config::Role as ServerRole;

use crate::support::s3::{S3Server, SECRET_KEY};
use crate::support::standin::StandIn;
use crate::support::{Backing, RedisPrefix, TestApp};

/// Waits until `gone` holds, polling; panics after `limit`.
async fn until(limit: Duration, what: &str, mut gone: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !gone() {
        assert!(Instant::now() < end, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn outputs_leave_after_their_records_and_never_before(kind: Backing) {
    let standin = StandIn::start();
    // Short-lived records: outputs go once the record is gone and the TTL passed.
    let app = TestApp::serve(kind, &standin, |a| {
        a.job_ttl = Duration::from_secs(2);
        a.output_ttl = Some(Duration::from_secs(3));
        a.sweep_interval = Duration::from_millis(300);
    })
    .await;
    let id = app
        .submit(json!({"prompt": "short", "workflow": "smoke", "batch_size": 2}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished");
    // A thumbnail too.
    let url = v["outputs"][0]["url"].as_str().unwrap().to_owned();
    let res = app
        .http
        .get(app.url(&format!("{url}?w=128")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let dir = app.dir.path().join("images").join(&id);
    assert_eq!(
        files_in(&dir).len(),
        3,
        "two pictures and a thumbnail: {:?}",
        files_in(&dir)
    );
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(files_in(&dir).len(), 3, "kept while the TTL runs");
    until(
        Duration::from_secs(15),
        "the pictures never left the disk",
        || !dir.exists(),
    )
    .await;
    assert!(
        ended.elapsed() >= Duration::from_secs(3),
        "not before --output-ttl"
    );
    let (s, _) = app.get(&format!("/api/status/{id}")).await;
    assert_eq!(s, 404, "the record went first");

    // Long-lived records: a short output TTL does not take pictures a record names.
    let keep = TestApp::serve(kind, &standin, |a| {
        a.output_ttl = Some(Duration::from_millis(200));
        a.sweep_interval = Duration::from_millis(200);
    })
    .await;
    let id = keep
        .submit(json!({"prompt": "kept", "workflow": "smoke"}))
        .await;
    keep.wait_final(&id, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dir = keep.dir.path().join("images").join(&id);
    assert_eq!(files_in(&dir).len(), 1, "its record still names it");
}

async fn delete_removes_a_job_and_its_pictures_at_once(kind: Backing) {
    let standin = StandIn::start_with(crate::support::standin::Knobs {
        duration: Duration::from_secs(5),
        ..Default::default()
    });
    let app = TestApp::serve(kind, &standin, |_| {}).await;
    let del = |id: &str| {
        app.http
            .delete(app.url(&format!("/api/jobs/{id}")))
            .header("x-requested-with", "test")
            .send()
    };
    let slow = app
        .submit(json!({"prompt": "running", "workflow": "smoke"}))
        .await;
    app.wait_for(&slow, Duration::from_secs(10), |j| {
        j["status"] == "processing"
    })
    .await;
    let res = del(&slow).await.unwrap();
    assert_eq!(res.status(), 409, "not while it runs");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "job-not-final");
    standin.knobs(|k| k.duration = Duration::from_millis(50));
    let done = app.wait_final(&slow, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "finished");
    let dir = app.dir.path().join("images").join(&slow);
    assert!(dir.exists());
    let res = del(&slow).await.unwrap();
    assert_eq!(res.status(), 204);
    assert!(!dir.exists(), "its pictures went at once");
    let (s, _) = app.get(&format!("/api/status/{slow}")).await;
    assert_eq!(s, 404);
    let (_, list) = app.get("/api/jobs?limit=100").await;
    assert!(
        list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["job_id"] != slow.as_str()),
        "not listed"
    );
    assert_eq!(del(&slow).await.unwrap().status(), 404);
    // A web page on another site cannot make it.
    let other = app
        .submit(json!({"prompt": "other", "workflow": "smoke"}))
        .await;
    app.wait_final(&other, Duration::from_secs(20)).await;
    let res = app
        .http
        .delete(app.url(&format!("/api/jobs/{other}")))
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        app.status(&other).await["status"],
        "finished",
        "still there"
    );
}

async fn a_key_over_its_stored_bytes_is_refused_until_it_deletes(kind: Backing) {
    let standin = StandIn::start();
    let app = TestApp::serve(kind, &standin, |a| {
        a.auth = AuthMode::Keys;
        a.max_stored_bytes = Some(1);
    })
    .await;
    let key = app.new_key("small", Role::User, KeyLimits::default()).await;
    let other = app.new_key("other", Role::User, KeyLimits::default()).await;
    let submit = |k: &str| {
        app.http
            .post(app.url("/api/generate"))
            .bearer_auth(k)
            .json(&json!({"prompt": "fill", "workflow": "smoke"}))
            .send()
    };
    let first: Value = submit(&key).await.unwrap().json().await.unwrap();
    let id = first["job_id"].as_str().unwrap().to_owned();
    app.wait_for_as(Some(&key), &id, Duration::from_secs(20), |v| {
        v["status"] == "finished"
    })
    .await;
    // Its outputs are recorded just after the job ends.
    let end = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let res = submit(&key).await.unwrap();
        if res.status() == 413 {
            break res.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < end, "never refused: {}", res.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused["code"], "storage-quota", "{refused}");
    assert_eq!(
        submit(&other).await.unwrap().status(),
        202,
        "another key's storage is its own"
    );
    let res = app
        .http
        .delete(app.url(&format!("/api/jobs/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(submit(&key).await.unwrap().status(), 202, "room again");
}

async fn pictures_an_earlier_version_left_are_swept_once(kind: Backing) {
    let standin = StandIn::start();
    // An API first, so a job's record exists before any worker looks at the disk.
    let api = TestApp::spawn(kind, ServerRole::Api, |_| {}).await;
    let live = api
        .submit(json!({"prompt": "still wanted", "workflow": "smoke"}))
        .await;
    let images = api.dir.path().join("images");
    let orphan = uuid::Uuid::new_v4().to_string();
    for (job, file) in [
        (&orphan, "old.png"),
        (&orphan, "thumb-128-old.png.jpg"),
        (&live, "older.png"),
    ] {
        std::fs::create_dir_all(images.join(job)).unwrap();
        std::fs::write(images.join(job).join(file), b"an old picture").unwrap();
    }
    let url = standin.url();
    let configure = move |a: &mut studio_core::config::ServerArgs| {
        a.comfyui = vec![url];
        a.sweep_interval = Duration::from_millis(200);
    };
    // A worker on the same disk (and store).
    let redis = api.redis.as_ref().map(|r| RedisPrefix {
        url: r.url.clone(),
        prefix: r.prefix.clone(),
    });
    let worker =
        TestApp::spawn_with(kind, ServerRole::Worker, redis, api.dir.clone(), configure).await;
    until(
        Duration::from_secs(10),
        "the orphaned pictures stayed",
        || !images.join(&orphan).exists(),
    )
    .await;
    api.wait_final(&live, Duration::from_secs(20)).await;
    assert!(
        images.join(&live).join("older.png").exists(),
        "a record still names its directory"
    );
    assert!(images.join(".swept-v6").exists(), "once per disk");
    drop(worker);
}

both_stores!(
    outputs_leave_after_their_records_and_never_before,
    delete_removes_a_job_and_its_pictures_at_once,
    a_key_over_its_stored_bytes_is_refused_until_it_deletes,
    pictures_an_earlier_version_left_are_swept_once,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_leave_the_bucket_too() {
    let s3 = S3Server::start();
    let standin = StandIn::start();
    let url = standin.url();
    let app = TestApp::spawn(Backing::Redis, ServerRole::Serve, |a| {
        a.comfyui = vec![url];
        s3.configure(a, "farm/outputs", SECRET_KEY);
        a.job_ttl = Duration::from_secs(2);
        a.output_ttl = Some(Duration::from_secs(2));
        a.sweep_interval = Duration::from_millis(300);
    })
    .await;
    let id = app
        .submit(json!({"prompt": "to the bucket and out", "workflow": "smoke", "batch_size": 3}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    let names: Vec<String> = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["filename"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 3);
    let url = v["outputs"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(
        app.http
            .get(app.url(&format!("{url}?w=256")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let thumb = s3.object_path(&format!("farm/outputs/{id}/thumb-256-{}.jpg", names[0]));
    assert!(thumb.exists(), "{}", thumb.display());
    for n in &names {
        assert!(s3.object_path(&format!("farm/outputs/{id}/{n}")).exists());
    }
    until(
        Duration::from_secs(15),
        "the objects stayed in the bucket",
        || {
            names
                .iter()
                .all(|n| !s3.object_path(&format!("farm/outputs/{id}/{n}")).exists())
                && !thumb.exists()
        },
    )
    .await;
}
