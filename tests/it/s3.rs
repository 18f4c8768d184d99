//! Outputs in S3, against a real S3 server that checks signatures (s3s-fs): the
//! worker streams each output to the bucket (one PUT when small, multipart when
//! large), the API serves it from there (proxied with ranges, or a 302 to a
//! presigned URL), and a wrong secret fails at startup.

use std::time::Duration;

use serde_json::json;
use studio_core::app::App;
use studio_core::config::Role;

use crate::support::s3::{S3Server, SECRET_KEY};
use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TempDir, TestApp, test_args};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_go_to_the_bucket_and_come_back_through_the_api() {
    let s3 = S3Server::start();
    let standin = StandIn::start();
    let url = standin.url();
    let app = TestApp::spawn(Backing::Redis, Role::Serve, |a| {
        a.comfyui = vec![url];
        s3.configure(a, "farm/outputs", SECRET_KEY);
    })
    .await;
    let id = app
        .submit(json!({"prompt": "to the bucket", "workflow": "smoke", "batch_size": 2}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let outputs = v["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    for o in outputs {
        let name = o["filename"].as_str().unwrap();
        let made = standin.file(name).unwrap();
        // In the bucket, under the prefix, and nowhere on the local disk.
        let stored = std::fs::read(s3.object_path(&format!("farm/outputs/{id}/{name}"))).unwrap();
        assert_eq!(stored, made);
        assert!(!app.dir.path().join("images").join(&id).exists());
        // Through the API, whole and in part.
        let res = app
            .http
            .get(app.url(o["url"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "image/png");
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(res.bytes().await.unwrap().as_ref(), made.as_slice());
        let res = app
            .http
            .get(app.url(o["url"].as_str().unwrap()))
            .header("range", "bytes=1-4")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 206);
        assert_eq!(res.bytes().await.unwrap().as_ref(), &made[1..5]);
        let res = app
            .http
            .get(app.url(o["url"].as_str().unwrap()))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 304);
    }
    let (s, _) = app.get(&format!("/images/{id}/missing.png")).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_output_goes_up_in_parts() {
    let s3 = S3Server::start();
    let size: u64 = 21 * 1024 * 1024;
    let standin = StandIn::start_with(Knobs {
        output_bytes: Some(size),
        ..Knobs::default()
    });
    let url = standin.url();
    let app = TestApp::spawn(Backing::Sqlite, Role::Serve, |a| {
        a.comfyui = vec![url];
        s3.configure(a, "", SECRET_KEY);
    })
    .await;
    let id = app
        .submit(json!({"prompt": "big", "workflow": "smoke"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let o = &v["outputs"][0];
    assert_eq!(o["size"], size);
    let name = o["filename"].as_str().unwrap();
    let meta = std::fs::metadata(s3.object_path(&format!("{id}/{name}"))).unwrap();
    assert_eq!(meta.len(), size);
    let res = app
        .http
        .get(app.url(o["url"].as_str().unwrap()))
        .header("range", format!("bytes={}-", size - 10))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_mode_answers_with_a_presigned_url() {
    let s3 = S3Server::start();
    let standin = StandIn::start();
    let url = standin.url();
    let app = TestApp::spawn(Backing::Sqlite, Role::Serve, |a| {
        a.comfyui = vec![url];
        s3.configure(a, "p", SECRET_KEY);
        a.storage_serve = "redirect".into();
    })
    .await;
    let id = app
        .submit(json!({"prompt": "redirected", "workflow": "smoke"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let o = &v["outputs"][0];
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = no_follow
        .get(app.url(o["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&s3.endpoint), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    // The presigned URL works on its own, against the server that checks it...
    let got = no_follow.get(&location).send().await.unwrap();
    assert_eq!(got.status(), 200);
    let made = standin.file(o["filename"].as_str().unwrap()).unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), made.as_slice());
    // ...and a tampered one does not.
    let at = location.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut tampered = location.clone();
    let c = if &location[at..at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    tampered.replace_range(at..at + 1, c);
    assert_eq!(no_follow.get(&tampered).send().await.unwrap().status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_fails_at_startup() {
    let s3 = S3Server::start();
    let dir = TempDir::new();
    let mut args = test_args(dir.path());
    s3.configure(&mut args, "", "not-the-secret");
    let err = match App::build(Role::Worker, &args).await {
        Ok(_) => panic!("a worker with a wrong S3 secret must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("studio-test"), "{err}");
    assert!(
        err.contains("SignatureDoesNotMatch")
            || err.to_lowercase().contains("signature")
            || err.contains("403"),
        "{err}"
    );
}
