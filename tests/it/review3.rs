//! Security review 3 (the API side): each finding as the server answers now.

use std::time::Duration;

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role as KeyRole};
use studio_core::config::Role;

use crate::support::standin::StandIn;
use crate::support::{Backing, TestApp, png, studio_bin};

/// With auth off, a page on another name that resolves here (DNS rebinding) gets
/// nothing: 421 for any Host that is not loopback, --public-url's or allowed;
/// health probes still get the anonymous view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_off_only_this_machines_host_names_are_answered() {
    let app = TestApp::spawn(Backing::Sqlite, Role::Api, |a| {
        a.public_url = "https://studio.example.com".into();
        a.allowed_hosts = "studio.lan".into();
        // --public-url names a public host: auto would mean keys; off is asked.
        a.auth = AuthMode::Off;
    })
    .await;
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    let ask = |host: String, path: &'static str| {
        let app = &app;
        async move {
            let res = app
                .http
                .post(app.url(path))
                .header("host", host.clone())
                .header("origin", format!("http://{host}"))
                .json(&json!({"prompt": "rebound", "workflow": "smoke"}))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or_default())
        }
    };
    let (s, v) = ask(format!("evil.example:{port}"), "/api/generate").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (421, Some("host-not-allowed")),
        "{v}"
    );
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "studio.example.com".into(),
        format!("studio.lan:{port}"),
    ] {
        let (s, v) = ask(host.clone(), "/api/generate").await;
        assert_eq!(s, 202, "{host}: {v}");
    }
    let listing = app
        .http
        .get(app.url("/api/jobs"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), 421, "no listing for a rebound page");
    let health = app
        .http
        .get(app.url("/health"))
        .header("host", "10.1.2.3:5000")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "probes use any name");
}

/// `--auth auto` on loopback behind a public `--public-url` means keys; with a
/// loopback-only setup it is off, but a request that came through a proxy needs
/// a key anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_auth_asks_for_keys_behind_a_proxy() {
    let proxied = TestApp::spawn(Backing::Sqlite, Role::Api, |a| {
        a.auth = AuthMode::Auto;
        a.public_url = "https://studio.example.com".into();
    })
    .await;
    let (s, v) = proxied.get("/api/jobs").await;
    assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")), "{v}");

    let local = TestApp::spawn(Backing::Sqlite, Role::Api, |a| a.auth = AuthMode::Auto).await;
    let (s, _) = local.get("/api/jobs").await;
    assert_eq!(s, 200, "loopback only: off");
    let via_proxy = local
        .http
        .get(local.url("/api/jobs"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(via_proxy.status(), 401, "a proxied request needs a key");
}

/// Thumbnails are made only of a job's recorded outputs (not of a thumbnail,
/// which made one picture grow 3^depth files); a key's own picture requests
/// count against its rate; private pictures are not cacheable by shared caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_come_only_from_recorded_outputs_and_keyed_pictures_are_rate_limited() {
    let standin = StandIn::start();
    let app = TestApp::serve(Backing::Sqlite, &standin, |a| a.auth = AuthMode::Keys).await;
    let limits = KeyLimits {
        rate: Some(2.0),
        burst: Some(40),
        ..KeyLimits::default()
    };
    let key = app.new_key("pics", KeyRole::User, limits).await;
    let res = app
        .http
        .post(app.url("/api/generate"))
        .bearer_auth(&key)
        .json(&json!({"prompt": "thumbs", "workflow": "smoke", "width": 64, "height": 64}))
        .send()
        .await
        .unwrap();
    let id = res.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = app
        .wait_for_as(Some(&key), &id, Duration::from_secs(30), |v| {
            v["status"] == "finished"
        })
        .await;
    let file = job["outputs"][0]["filename"].as_str().unwrap().to_owned();
    let get = |path: String| {
        let app = &app;
        let key = key.clone();
        async move {
            app.http
                .get(app.url(&path))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
        }
    };
    let thumb = get(format!("/images/{id}/{file}?w=128")).await;
    assert_eq!(thumb.status(), 200);
    assert_eq!(
        thumb.headers()["cache-control"],
        "private, max-age=3600, immutable"
    );
    assert_eq!(thumb.headers()["vary"], "authorization");
    let of_thumb = get(format!("/images/{id}/thumb-128-{file}.jpg?w=128")).await;
    assert_eq!(of_thumb.status(), 404, "no thumbnail of a thumbnail");
    let made_up = get(format!("/images/{id}/nothing.png?w=128")).await;
    assert_eq!(made_up.status(), 404);
    let dir = app.dir.path().join("images").join(&id);
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 2, "the output and one thumbnail");
    // The burst of 40 is spent by a flood of picture requests.
    let mut limited = 0;
    for _ in 0..60 {
        if get(format!("/images/{id}/{file}")).await.status() == 429 {
            limited += 1;
        }
    }
    assert!(
        limited > 0,
        "a key's picture requests count against its rate"
    );
}

/// A revoked key stops at once in the process that revoked it; key names with
/// invisible formatting are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_at_once_where_it_was_revoked() {
    let app = TestApp::spawn(Backing::Sqlite, Role::Api, |a| a.auth = AuthMode::Keys).await;
    let admin = app
        .new_key("admin", KeyRole::Admin, KeyLimits::default())
        .await;
    let user = app
        .new_key("user", KeyRole::User, KeyLimits::default())
        .await;
    let as_user = || app.http.get(app.url("/api/jobs")).bearer_auth(&user).send();
    assert_eq!(as_user().await.unwrap().status(), 200, "cached now");
    let id = user.split('_').nth(1).unwrap();
    let res = app
        .http
        .delete(app.url(&format!("/api/keys/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(as_user().await.unwrap().status(), 401, "no second of grace");
    let res = app
        .http
        .post(app.url("/api/keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "admin\u{202E}nimda"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["field"], "name", "{v}");
}

/// Multipart uploads larger than axum's 2 MiB default are taken; a polyglot
/// JPEG (another file after its end-of-image marker) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_multipart_uploads_pass_and_polyglots_do_not() {
    let app = TestApp::spawn(Backing::Sqlite, Role::Api, |_| {}).await;
    // Noise: it does not compress, so the file is over 2 MiB.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let img = image::RgbImage::from_fn(1000, 1000, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let b = state.to_le_bytes();
        image::Rgb([b[0], b[1], b[2]])
    });
    let mut big = std::io::Cursor::new(Vec::new());
    img.write_to(&mut big, image::ImageFormat::Png).unwrap();
    let big = big.into_inner();
    assert!(big.len() > 2 << 20, "{} bytes", big.len());
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(big)
            .file_name("big.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let res = app
        .http
        .post(app.url("/api/uploads"))
        .header("x-requested-with", "test")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{:?}", res.text().await);

    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(16, 16, image::Rgb([1, 2, 3]))
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpeg = jpeg.into_inner();
    let mut polyglot = jpeg.clone();
    polyglot.extend_from_slice(&jpeg);
    let res = app
        .http
        .post(app.url("/api/uploads"))
        .header("content-type", "image/jpeg")
        .body(polyglot)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("follow the end"),
        "{v}"
    );
    // Multipart without a header only a script sets: the error says which.
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(png(2, 2, [0, 0, 0])).file_name("a.png"),
    );
    let res = app
        .http
        .post(app.url("/api/uploads"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let v: Value = res.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("X-Requested-With"),
        "{v}"
    );
}

/// Without a webhook secret the API document does not offer webhook fields (the
/// server refuses them); with one it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_offers_webhooks_only_when_the_server_can_sign_them() {
    let off = TestApp::spawn(Backing::Sqlite, Role::Api, |a| {
        a.webhook_secret = String::new()
    })
    .await;
    let (_, doc) = off.get("/openapi.json").await;
    let text = doc["components"]["schemas"]["GenerateRequest"].to_string();
    assert!(!text.contains("webhook_url"), "{text}");
    let (s, v) = off
        .post_json(
            "/api/generate",
            &json!({"prompt": "x", "workflow": "smoke", "webhook_url": "https://example.com/h"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("webhooks-not-configured"))
    );
    let on = TestApp::spawn(Backing::Sqlite, Role::Api, |_| {}).await;
    let (_, doc) = on.get("/openapi.json").await;
    assert!(
        doc["components"]["schemas"]["GenerateRequest"]
            .to_string()
            .contains("webhook_url")
    );
}

/// A key's pending webhooks are capped (one key cannot fill the outbox for all).
async fn a_keys_pending_webhooks_are_capped(kind: Backing) {
    let app = TestApp::spawn(kind, Role::Api, |a| {
        a.auth = AuthMode::Keys;
        a.webhook_max_pending_per_key = 3;
    })
    .await;
    let key = app
        .new_key("hooks", KeyRole::User, KeyLimits::default())
        .await;
    let other = app
        .new_key("other", KeyRole::User, KeyLimits::default())
        .await;
    let submit = |k: &str| {
        app.http
            .post(app.url("/api/generate"))
            .bearer_auth(k)
            .json(&json!({"prompt": "x", "workflow": "smoke", "webhook_url": "https://example.com/h"}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(submit(&key).await.unwrap().status(), 202);
    }
    let res = submit(&key).await.unwrap();
    assert_eq!(res.status(), 429);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "webhook-quota", "{v}");
    assert_eq!(
        submit(&other).await.unwrap().status(),
        202,
        "another key has room"
    );
}

/// A user sees neither the backend's address nor it in errors; an admin does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_address_is_for_admins() {
    let standin = StandIn::start();
    let app = TestApp::serve(Backing::Sqlite, &standin, |a| a.auth = AuthMode::Keys).await;
    let admin = app
        .new_key("admin", KeyRole::Admin, KeyLimits::default())
        .await;
    let user = app
        .new_key("user", KeyRole::User, KeyLimits::default())
        .await;
    let res = app
        .http
        .post(app.url("/api/generate"))
        .bearer_auth(&user)
        .json(&json!({"prompt": "where", "workflow": "smoke"}))
        .send()
        .await
        .unwrap();
    let id = res.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = |k: String| {
        let app = &app;
        let id = id.clone();
        async move {
            app.http
                .get(app.url(&format!("/api/status/{id}")))
                .bearer_auth(k)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let v = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let v = view(admin.clone()).await;
            if v["status"] == "finished" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(v["backend"], standin.url(), "an admin sees where it ran");
    let mine = view(user.clone()).await;
    assert!(mine.get("backend").is_none(), "{mine}");
}

/// The store flags work after `keys create`, as before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_commands_take_the_store_flags_anywhere() {
    let dir = crate::support::TempDir::new();
    let out = tokio::process::Command::new(studio_bin())
        .args(["keys", "create", "--name", "late", "--data-dir"])
        .arg(dir.path())
        .env_remove("REDIS_URL")
        .env_remove("REDIS_HOST")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dir.path().join("studio.db").exists(),
        "the key went to --data-dir"
    );
}

both_stores!(a_keys_pending_webhooks_are_capped);
