//! API keys: the CLI that makes the first one, the 401/403/404 matrix, ownership,
//! signed picture URLs, revocation across processes, rate limits and their
//! headers, auth modes.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role};
use studio_core::config::Role as ServerRole;
use studio_core::job::Priority;

use crate::support::standin::StandIn;
use crate::support::{Backing, TempDir, TestApp, studio_bin};

async fn keyed(kind: Backing, role: ServerRole, standin: Option<&StandIn>) -> TestApp {
    let urls: Vec<String> = standin.iter().map(|s| s.url()).collect();
    TestApp::spawn(kind, role, move |a| {
        a.auth = AuthMode::Keys;
        a.comfyui = urls;
    })
    .await
}

/// GET with a key (or none): status and JSON body.
async fn get_as(app: &TestApp, key: Option<&str>, path: &str) -> (u16, Value) {
    let mut req = app.http.get(app.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn post_as(app: &TestApp, key: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
    let mut req = app.http.post(app.url(path)).json(body);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_key_is_made_by_the_cli_and_works_at_once() {
    let dir = TempDir::new();
    let out = Command::new(studio_bin())
        .args([
            "keys", "create", "--name", "ops", "--role", "admin", "--rate", "20/s",
        ])
        .env_clear()
        .env("STUDIO_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let secret = stdout.lines().last().unwrap().to_owned();
    assert!(
        secret.starts_with("sk_") && !secret.contains(' '),
        "{stdout}"
    );
    let list = Command::new(studio_bin())
        .args(["keys", "list", "--json"])
        .env_clear()
        .env("STUDIO_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let keys: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(keys[0]["name"], "ops");
    assert_eq!(keys[0]["role"], "admin");
    assert_eq!(keys[0]["limits"]["rate"], 20.0);
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&secret[16..]),
        "no secret listed"
    );
    // A server on the same data directory takes it.
    let app = TestApp::spawn_with(
        Backing::Sqlite,
        ServerRole::Api,
        None,
        Arc::new(TempDir(dir.path().to_path_buf())),
        |a| a.auth = AuthMode::Keys,
    )
    .await;
    let (s, _) = get_as(&app, Some(&secret), "/api/keys").await;
    assert_eq!(s, 200);
    let id = keys[0]["id"].as_str().unwrap().to_owned();
    let revoke = Command::new(studio_bin())
        .args(["keys", "revoke", &id])
        .env_clear()
        .env("STUDIO_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(revoke.status.success());
    let unknown = Command::new(studio_bin())
        .args(["keys", "revoke", "ffffffffffff"])
        .env_clear()
        .env("STUDIO_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, v) = get_as(&app, Some(&secret), "/api/keys").await;
    assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")), "{v}");
    std::mem::forget(dir);
}

async fn without_a_key_the_api_is_401_and_the_pages_and_health_are_open(kind: Backing) {
    let app = keyed(kind, ServerRole::Api, None).await;
    // Every /api route the router has, whatever its method: 401 before anything else.
    let mut checked = 0;
    for (method, path) in studio_core::api::ROUTES {
        if !path.starts_with("/api/") {
            continue;
        }
        let url = app.url(
            &path
                .replace("{job_id}", "00000000-0000-4000-8000-000000000000")
                .replace("{key_id}", "0123456789ab"),
        );
        let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let mut req = app.http.request(m, &url);
        if *method != "get" {
            req = req.json(&json!({"prompt": "x"}));
        }
        let res = req.send().await.unwrap();
        let s = res.status().as_u16();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (s, v["code"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path}: {v}"
        );
        checked += 1;
    }
    assert!(checked >= 12, "{checked}");
    let (s, _) = post_as(&app, None, "/api/generate", &json!({"prompt": "x"})).await;
    assert_eq!(s, 401);
    for path in ["/health", "/", "/docs", "/openapi.json", "/assets/app.js"] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    for bad in [
        "sk_nothing",
        "sk_0123456789ab_0000000000000000000000000000000000000000000000000000000000000000",
        "Bearer",
    ] {
        let (s, _) = get_as(&app, Some(bad), "/api/jobs").await;
        assert_eq!(s, 401, "{bad}");
    }
}

async fn a_user_sees_only_its_own_jobs_and_an_admin_sees_all(kind: Backing) {
    let app = keyed(kind, ServerRole::Api, None).await;
    let alice = app.new_key("alice", Role::User, KeyLimits::default()).await;
    let bob = app.new_key("bob", Role::User, KeyLimits::default()).await;
    let admin = app.new_key("ops", Role::Admin, KeyLimits::default()).await;
    let (s, a) = post_as(
        &app,
        Some(&alice),
        "/api/generate",
        &json!({"prompt": "alice's", "workflow": "smoke"}),
    )
    .await;
    assert_eq!(s, 202, "{a}");
    let a_id = a["job_id"].as_str().unwrap().to_owned();
    let (_, b) = post_as(
        &app,
        Some(&bob),
        "/api/generate",
        &json!({"prompt": "bob's", "workflow": "smoke"}),
    )
    .await;
    let b_id = b["job_id"].as_str().unwrap().to_owned();
    // Another's job does not exist, as far as bob can tell.
    for path in [
        format!("/api/status/{a_id}"),
        format!("/api/jobs/{a_id}"),
        format!("/api/jobs/{a_id}/events"),
    ] {
        let (s, v) = get_as(&app, Some(&bob), &path).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (404, Some("job-not-found")),
            "{path}"
        );
    }
    let (s, _) = post_as(
        &app,
        Some(&bob),
        &format!("/api/jobs/{a_id}/cancel"),
        &json!({}),
    )
    .await;
    assert_eq!(s, 404);
    let (s, v) = get_as(&app, Some(&alice), &format!("/api/status/{a_id}")).await;
    assert_eq!(
        (s, v["status"].as_str()),
        (200, Some("queued")),
        "cancel did nothing"
    );
    assert!(!v["owner"].as_str().unwrap().is_empty());
    // Listings, filtered and not.
    for q in ["", "?status=queued"] {
        let (_, page) = get_as(&app, Some(&bob), &format!("/api/jobs{q}")).await;
        let ids: Vec<&str> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [b_id.as_str()], "{q}");
        let (_, page) = get_as(&app, Some(&admin), &format!("/api/jobs{q}")).await;
        assert_eq!(page["jobs"].as_array().unwrap().len(), 2, "{q}: {page}");
    }
    // Keys are for admins.
    let (s, v) = get_as(&app, Some(&alice), "/api/keys").await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")));
    let (s, v) = get_as(&app, Some(&admin), "/api/keys").await;
    assert_eq!(s, 200);
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert!(v.to_string().find("hash").is_none(), "hashes stay inside");
    // The owner may cancel its own.
    let (s, _) = post_as(
        &app,
        Some(&alice),
        &format!("/api/jobs/{a_id}/cancel"),
        &json!({}),
    )
    .await;
    assert_eq!(s, 200);
}

async fn keys_are_managed_over_http_by_admins(kind: Backing) {
    let app = keyed(kind, ServerRole::Api, None).await;
    let admin = app.new_key("ops", Role::Admin, KeyLimits::default()).await;
    let (s, made) = post_as(
        &app,
        Some(&admin),
        "/api/keys",
        &json!({"name": "carol", "max_queued": 5, "weight": 3}),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    let secret = made["secret"].as_str().unwrap().to_owned();
    let id = made["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(made["key"]["limits"]["weight"], 3);
    let (s, _) = get_as(&app, Some(&secret), "/api/jobs").await;
    assert_eq!(s, 200);
    let res = app
        .http
        .patch(app.url(&format!("/api/keys/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"max_queued": null, "name": "carol b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["name"], "carol b");
    assert!(v["limits"].get("max_queued").is_none(), "{v}");
    for (body, field) in [
        (json!({"weight": 0}), "weight"),
        (json!({"colour": 1}), "colour"),
        (json!({"role": "god"}), "role"),
    ] {
        let res = app
            .http
            .patch(app.url(&format!("/api/keys/{id}")))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["field"], field, "{v}");
    }
    let res = app
        .http
        .delete(app.url(&format!("/api/keys/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert!(!v["revoked_at"].as_str().unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, _) = get_as(&app, Some(&secret), "/api/jobs").await;
    assert_eq!(s, 401, "revoked within a second");
    // The open routes take a stale key as no key.
    let (s, _) = get_as(&app, Some(&secret), "/health").await;
    assert_eq!(s, 200);
    // Revoked is gone: a second revoke or a change is 404, like an unknown id.
    let admin_id = admin.split('_').nth(1).unwrap().to_owned();
    for (method, path, want) in [
        ("DELETE", format!("/api/keys/{id}"), 404),
        ("PATCH", format!("/api/keys/{id}"), 404),
        ("DELETE", "/api/keys/ffffffffffff".to_owned(), 404),
        // An admin cannot lock itself out over HTTP.
        ("DELETE", format!("/api/keys/{admin_id}"), 409),
        ("PATCH", format!("/api/keys/{admin_id}"), 409),
    ] {
        let res = app
            .http
            .request(method.parse().unwrap(), app.url(&path))
            .bearer_auth(&admin)
            .json(&json!({"role": "user"}))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, want, "{method} {path}: {v}");
        if want == 409 {
            assert_eq!(v["code"], "own-key");
        }
    }
    let (s, _) = get_as(&app, Some(&admin), "/api/keys").await;
    assert_eq!(s, 200, "the admin key still works");
}

async fn a_priority_above_the_keys_maximum_is_refused(kind: Backing) {
    let app = keyed(kind, ServerRole::Api, None).await;
    let alice = app.new_key("alice", Role::User, KeyLimits::default()).await;
    let (s, v) = post_as(
        &app,
        Some(&alice),
        "/api/generate",
        &json!({"prompt": "x", "priority": "high"}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str(), v["field"].as_str()),
        (403, Some("priority-not-allowed"), Some("priority")),
        "{v}"
    );
    let (s, v) = post_as(
        &app,
        Some(&alice),
        "/api/generate",
        &json!({"prompt": "x", "priority": "low"}),
    )
    .await;
    assert_eq!(s, 202);
    let (_, st) = get_as(
        &app,
        Some(&alice),
        &format!("/api/status/{}", v["job_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(st["priority"], "low");
    let vip = app
        .new_key(
            "vip",
            Role::User,
            KeyLimits {
                max_priority: Priority::High,
                ..KeyLimits::default()
            },
        )
        .await;
    let (s, _) = post_as(
        &app,
        Some(&vip),
        "/api/generate",
        &json!({"prompt": "x", "priority": "high"}),
    )
    .await;
    assert_eq!(s, 202);
}

async fn rate_limits_answer_429_with_their_headers(kind: Backing) {
    let app = keyed(kind, ServerRole::Api, None).await;
    let slow = app.rate_limited_key("slow", 1.0, 3).await;
    let mut codes = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let res = app
            .http
            .get(app.url("/api/jobs"))
            .bearer_auth(&slow)
            .send()
            .await
            .unwrap();
        codes.push(res.status().as_u16());
        last = Some(res);
    }
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    let res = last.unwrap();
    let h = res.headers();
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(h["ratelimit-policy"], "\"key\";q=3;w=3");
    assert!(
        h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"key\";r=0;t="),
        "{h:?}"
    );
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "rate-limited");
    // Pages and health are not counted.
    let health = app
        .http
        .get(app.url("/health"))
        .bearer_auth(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Another key has its own bucket.
    let other = app.rate_limited_key("other", 1.0, 3).await;
    let res = app
        .http
        .get(app.url("/api/jobs"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .split(';')
            .nth(1),
        Some("r=2")
    );
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let res = app
        .http
        .get(app.url("/api/jobs"))
        .bearer_auth(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "one more after a second");
}

/// Submissions and status reads are counted by the store call that does their
/// work (one round trip for both); a request refused before that call is
/// counted all the same, and a refused submission queues nothing.
async fn submissions_and_status_reads_count_against_the_rate_limit_too(kind: Backing) {
    let app = keyed(kind, ServerRole::Api, None).await;
    let slow = app.rate_limited_key("slow", 0.1, 3).await;
    let submit = |body: Value| {
        let app = &app;
        let slow = &slow;
        async move {
            app.http
                .post(app.url("/api/generate"))
                .bearer_auth(slow)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let remaining = |res: &reqwest::Response| {
        res.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .split(';')
            .nth(1)
            .map(str::to_owned)
    };
    let res = submit(json!({"prompt": "one", "workflow": "smoke"})).await;
    assert_eq!(res.status(), 202);
    assert_eq!(remaining(&res).as_deref(), Some("r=2"));
    let id = res.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = app
        .http
        .get(app.url(&format!("/api/status/{id}")))
        .bearer_auth(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    assert_eq!(remaining(&status).as_deref(), Some("r=1"));
    let bad = submit(json!({"prompt": "  "})).await;
    assert_eq!(bad.status(), 400, "answered as before");
    assert_eq!(remaining(&bad).as_deref(), Some("r=0"), "and counted");
    let refused = submit(json!({"prompt": "two", "workflow": "smoke"})).await;
    assert_eq!(refused.status(), 429);
    assert!(
        refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        refused.json::<Value>().await.unwrap()["code"],
        "rate-limited"
    );
    let status = app
        .http
        .get(app.url(&format!("/api/jobs/{id}")))
        .bearer_auth(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 429);
    assert_eq!(
        app.store.stats().await.unwrap().queued,
        1,
        "nothing more queued"
    );
}

async fn requests_without_a_key_can_be_limited_per_address(kind: Backing) {
    let app = TestApp::spawn(kind, ServerRole::Api, |a| a.anon_rate = Some((1.0, 2))).await;
    let codes: Vec<u16> = futures_util::future::join_all((0..4).map(|_| async {
        app.http
            .get(app.url("/api/jobs"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }))
    .await;
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 2, "{codes:?}");
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    let res = other.get(app.url("/api/jobs")).send().await.unwrap();
    assert_eq!(res.status(), 200, "another address has its own allowance");
}

both_stores!(
    without_a_key_the_api_is_401_and_the_pages_and_health_are_open,
    a_user_sees_only_its_own_jobs_and_an_admin_sees_all,
    keys_are_managed_over_http_by_admins,
    a_priority_above_the_keys_maximum_is_refused,
    rate_limits_answer_429_with_their_headers,
    submissions_and_status_reads_count_against_the_rate_limit_too,
    requests_without_a_key_can_be_limited_per_address,
    pictures_need_a_valid_signature_with_auth_on,
    health_shows_backends_in_detail_to_admins_only,
);

async fn pictures_need_a_valid_signature_with_auth_on(kind: Backing) {
    let standin = StandIn::start();
    let app = keyed(kind, ServerRole::Serve, Some(&standin)).await;
    let alice = app.new_key("alice", Role::User, KeyLimits::default()).await;
    let (_, a) = post_as(
        &app,
        Some(&alice),
        "/api/generate",
        &json!({"prompt": "x", "workflow": "smoke"}),
    )
    .await;
    let id = a["job_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = loop {
        let (_, v) = get_as(&app, Some(&alice), &format!("/api/status/{id}")).await;
        if v["status"] == "finished" {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let url = job["image_url"].as_str().unwrap().to_owned();
    assert!(url.contains("?exp=") && url.contains("&sig="), "{url}");
    assert_eq!(job["outputs"][0]["url"], url);
    // As an <img> would: no header.
    let res = reqwest::get(app.url(&url)).await.unwrap();
    assert_eq!(res.status(), 200);
    let plain = url.split('?').next().unwrap().to_owned();
    let tampered = url.replace("&sig=", "&sig=0");
    for bad in [
        plain.clone(),
        tampered,
        format!("{plain}?exp=99999999999&sig={}", "a".repeat(64)),
    ] {
        let res = reqwest::get(app.url(&bad)).await.unwrap();
        assert_eq!(res.status(), 403, "{bad}");
    }
    // An expired signature, made with the store's own secret.
    let signer =
        studio_core::auth::signing::UrlSigner::new(&app.store.server_secret().await.unwrap());
    let file = job["outputs"][0]["filename"].as_str().unwrap();
    let old = format!("{plain}?{}", signer.query(&id, file, 1_000));
    let res = reqwest::get(app.url(&old)).await.unwrap();
    assert_eq!(res.status(), 403);
    let fresh = format!("{plain}?{}", signer.query(&id, file, 4_000_000_000));
    assert_eq!(reqwest::get(app.url(&fresh)).await.unwrap().status(), 200);
    // The owner's key also opens it; another user's does not.
    let bob = app.new_key("bob", Role::User, KeyLimits::default()).await;
    let res = app
        .http
        .get(app.url(&plain))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .http
        .get(app.url(&plain))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

async fn health_shows_backends_in_detail_to_admins_only(kind: Backing) {
    let standin = StandIn::start();
    let app = keyed(kind, ServerRole::Serve, Some(&standin)).await;
    let admin = app.new_key("ops", Role::Admin, KeyLimits::default()).await;
    let (_, anon) = get_as(&app, None, "/health").await;
    assert_eq!(anon["status"], "ok");
    assert_eq!(anon["backends"][0]["url"], "backend 1");
    assert!(!anon.to_string().contains(&standin.url()), "{anon}");
    let (_, full) = get_as(&app, Some(&admin), "/health").await;
    assert_eq!(full["backends"][0]["url"], standin.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_share_keys_revocations_and_rate_limits() {
    let one = TestApp::spawn(Backing::Redis, ServerRole::Api, |a| a.auth = AuthMode::Keys).await;
    let two = one
        .spawn_beside(ServerRole::Api, |a| a.auth = AuthMode::Keys)
        .await;
    let admin = one.new_key("ops", Role::Admin, KeyLimits::default()).await;
    let (s, made) = post_as(
        &one,
        Some(&admin),
        "/api/keys",
        &json!({"name": "shared", "rate": 1, "burst": 4}),
    )
    .await;
    assert_eq!(s, 201);
    let secret = made["secret"].as_str().unwrap().to_owned();
    // One bucket for both processes: four in all, then 429 on either.
    let mut codes = Vec::new();
    for i in 0..6 {
        let app = if i % 2 == 0 { &one } else { &two };
        codes.push(get_as(app, Some(&secret), "/api/jobs").await.0);
    }
    assert_eq!(codes, [200, 200, 200, 200, 429, 429]);
    // Revoked through one, refused by the other within a second.
    let id = made["key"]["id"].as_str().unwrap();
    let res = one
        .http
        .delete(one.url(&format!("/api/keys/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let start = Instant::now();
    loop {
        let (s, _) = get_as(&two, Some(&secret), "/api/workflows").await;
        if s == 401 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "still accepted after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn auto_auth_means_keys_on_a_network_address() {
    assert_eq!(
        AuthMode::Auto.resolve("0.0.0.0", "", "loopback"),
        AuthMode::Keys
    );
    assert_eq!(
        AuthMode::Auto.resolve("127.0.0.1", "", "loopback"),
        AuthMode::Off
    );
}
