//! Every bound, hit on purpose: connection cap and timeouts, event-stream caps, the
//! queue cap, cross-site requests, headers, odd paths, symlinks, pixel budgets,
//! cursors, oversized and oddly named outputs, a recorded backend nobody
//! configured, log rotation and log injection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use studio_core::config::Role;
use studio_core::store::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::proc::{Proc, submit, wait_final};
use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TempDir, TestApp};

async fn api(
    kind: Backing,
    configure: impl FnOnce(&mut studio_core::config::ServerArgs),
) -> TestApp {
    TestApp::spawn(kind, Role::Api, configure).await
}

fn addr(app: &TestApp) -> SocketAddr {
    app.addr.unwrap()
}

/// Waits until the server closes `conn` (a read returns 0 or fails); how long it took.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

/// Reads one whole HTTP answer with a `content-length` from `conn`.
async fn read_answer(conn: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let status = text[9..12].parse().unwrap();
                return (status, text[end + 4..end + 4 + len].to_owned());
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let app = api(Backing::Sqlite, |a| {
        a.header_timeout = Duration::from_millis(500)
    })
    .await;
    let mut c = TcpStream::connect(addr(&app)).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
        .await
        .unwrap();
    // Trickling keeps it busy, not alive: the header clock started at the first byte.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if c.write_all(b"a").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let took = closed_within(&mut c, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(2));
    assert_eq!(app.conns.as_ref().unwrap().open(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
    let app = api(Backing::Sqlite, |a| {
        a.idle_timeout = Duration::from_millis(800)
    })
    .await;
    let mut c = TcpStream::connect(addr(&app)).await.unwrap();
    for _ in 0..3 {
        // Requests closer together than the idle timeout keep it open.
        c.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut c).await.0, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let start = Instant::now();
    closed_within(&mut c, Duration::from_secs(3)).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_body_that_trickles_past_the_deadline_gets_408() {
    let app = api(Backing::Sqlite, |a| {
        a.body_timeout = Duration::from_millis(500)
    })
    .await;
    let mut c = TcpStream::connect(addr(&app)).await.unwrap();
    c.write_all(b"POST /api/generate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"prompt\"")
        .await
        .unwrap();
    let start = Instant::now();
    let (status, body) = read_answer(&mut c).await;
    assert_eq!(status, 408, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "body-timeout");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn over_the_connection_cap_idle_connections_make_room_for_health() {
    let app = api(Backing::Sqlite, |a| a.max_connections = Some(8)).await;
    let conns = app.conns.clone().unwrap();
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr(&app)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(conns.open() <= 8, "{} open", conns.open());
    let start = Instant::now();
    let (s, v) = app.get("/health").await;
    assert_eq!(s, 200, "{v}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(conns.open() <= 8);
}

#[tokio::test]
async fn over_the_connection_cap_with_every_connection_busy_new_ones_get_503() {
    let app = api(Backing::Sqlite, |a| a.max_connections = Some(3)).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr(&app)).await.unwrap();
        c.write_all(b"GET /api/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 512];
        let n = c.read(&mut head).await.unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        streams.push(c);
    }
    let mut c = TcpStream::connect(addr(&app)).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_answer(&mut c).await;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "too-many-connections");
    // A stream ends: room again.
    drop(streams.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, _) = app.get("/health").await;
    assert_eq!(s, 200);
}

async fn event_streams_are_capped_per_client_and_in_total(kind: Backing) {
    let app = api(kind, |a| {
        a.max_streams = 3;
        a.max_streams_per_client = 2;
    })
    .await;
    let open = || async {
        let res = app.http.get(app.url("/api/events")).send().await.unwrap();
        let status = res.status().as_u16();
        let retry = res.headers().get("retry-after").is_some();
        (status, retry, res)
    };
    let (a, _, ra) = open().await;
    let (b, _, _rb) = open().await;
    assert_eq!((a, b), (200, 200));
    let (c, retry, res) = open().await;
    assert_eq!(c, 429);
    assert!(retry);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "too-many-streams");
    // Another client address (127.0.0.2) has its own share, up to the total.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r1 = other.get(app.url("/api/events")).send().await.unwrap();
    assert_eq!(r1.status(), 200);
    let (_, health) = app.get("/health").await;
    assert_eq!(health["limits"]["streams"], 3, "{health}");
    assert_eq!(health["limits"]["max_streams"], 3);
    assert_eq!(health["limits"]["max_streams_per_client"], 2);
    assert!(health["limits"]["connections"].as_u64().unwrap() >= 3);
    let r2 = other.get(app.url("/api/events")).send().await.unwrap();
    assert_eq!(r2.status(), 503);
    let v: Value = r2.json().await.unwrap();
    assert_eq!(v["code"], "streams-exhausted");
    // A closed stream gives its slot back (per-job streams count too).
    drop(ra);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = app
        .submit(json!({"prompt": "x", "workflow": "smoke"}))
        .await;
    let res = app
        .http
        .get(app.url(&format!("/api/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn the_queue_cap_refuses_with_503_and_keeps_what_is_queued(kind: Backing) {
    let app = api(kind, |a| a.max_queued = 3).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.submit(json!({"prompt": format!("job {i}"), "workflow": "smoke"}))
                .await,
        );
    }
    for _ in 0..5 {
        let res = app
            .http
            .post(app.url("/api/generate"))
            .json(&json!({"prompt": "one too many", "workflow": "smoke"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
        assert!(res.headers().get("retry-after").is_some());
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["code"], "queue-full");
        assert!(v["error"].as_str().unwrap().contains("--max-queued"), "{v}");
    }
    let (_, page) = app.get("/api/jobs?status=queued").await;
    let listed: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{page}");
    for id in &ids {
        assert!(listed.contains(&id.as_str()));
    }
    if let Some(r) = &app.redis {
        // Refused submissions leave no record behind.
        let hashes = r
            .keys()
            .into_iter()
            .filter(|k| k.contains("job:status:"))
            .count();
        assert_eq!(hashes, 3);
    }
    // Room again once one leaves the queue.
    let (s, _) = app
        .post_json(&format!("/api/jobs/{}/cancel", ids[0]), &json!({}))
        .await;
    assert_eq!(s, 200);
    app.submit(json!({"prompt": "fits now", "workflow": "smoke"}))
        .await;
}

async fn a_flood_of_large_prompts_stops_growing_the_store_at_the_cap(kind: Backing) {
    let app = api(kind, |a| a.max_queued = 20).await;
    let prompt = "ü".repeat(10_000);
    let size = |app: &TestApp| -> u64 {
        match &app.redis {
            Some(r) => r.keys().len() as u64,
            None => std::fs::read_dir(app.dir.path())
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("studio.db"))
                .map(|e| e.metadata().unwrap().len())
                .sum(),
        }
    };
    let send = |n: usize| {
        let app = &app;
        let prompt = &prompt;
        async move {
            let mut codes = Vec::new();
            for _ in 0..n {
                let res = app
                    .http
                    .post(app.url("/api/generate"))
                    .json(&json!({"prompt": prompt, "negative_prompt": prompt}))
                    .send()
                    .await
                    .unwrap();
                codes.push(res.status().as_u16());
            }
            codes
        }
    };
    let first = send(20).await;
    assert!(first.iter().all(|c| *c == 202), "{first:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_cap = size(&app);
    let more = send(300).await;
    assert!(more.iter().all(|c| *c == 503), "{more:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = size(&app);
    // SQLite: the WAL may take a page or two for the counter reads; Redis: not a key.
    assert!(
        after <= at_cap + 64 * 1024,
        "the store grew from {at_cap} to {after} while refusing"
    );
}

async fn cross_site_requests_cannot_change_anything(kind: Backing) {
    let app = api(kind, |_| {}).await;
    let id = app
        .submit(json!({"prompt": "x", "workflow": "smoke"}))
        .await;
    let cancel = app.url(&format!("/api/jobs/{id}/cancel"));
    // What a form on another site can send: no JSON, no custom header.
    for (ctype, body) in [
        ("text/plain", "{}"),
        ("application/x-www-form-urlencoded", "a=b"),
        ("multipart/form-data; boundary=x", "--x--"),
    ] {
        let res = app
            .http
            .post(&cancel)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 415, "{ctype}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["code"], "unsupported-media-type");
    }
    let res = app.http.post(&cancel).send().await.unwrap();
    assert_eq!(res.status(), 415, "no content type, no header");
    let form = app
        .http
        .post(app.url("/api/generate"))
        .header("content-type", "text/plain")
        .body(r#"{"prompt": "forged"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    // JSON from a page on a site --cors-origins does not name.
    let res = app
        .http
        .post(&cancel)
        .header("origin", "https://evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "forbidden-origin");
    assert_eq!(app.status(&id).await["status"], "queued", "nothing changed");
    // Our own page (same origin) and scripts with an intent header may.
    let res = app
        .http
        .post(&cancel)
        .header("origin", app.base.clone())
        .header("x-requested-with", "studio-page")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.status(&id).await["error"], "cancelled");
}

#[tokio::test]
async fn every_route_that_changes_something_refuses_what_a_form_can_send() {
    let app = api(Backing::Sqlite, |_| {}).await;
    let id = app
        .submit(json!({"prompt": "x", "workflow": "smoke"}))
        .await;
    let mut checked = 0;
    for (method, path) in studio_core::api::ROUTES {
        if *method == "get" {
            continue;
        }
        let url = app.url(
            &path
                .replace("{job_id}", &id)
                .replace("{file}", "x")
                .replace("{key_id}", "0123456789ab"),
        );
        let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        // Only a POST can be a form (other methods make the browser ask CORS).
        if *method == "post" {
            let res = app
                .http
                .request(m.clone(), &url)
                .header("content-type", "text/plain")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 415, "{method} {path}");
        }
        let res = app
            .http
            .request(m, &url)
            .header("origin", "https://evil.example")
            .header("x-requested-with", "x")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{method} {path}");
        checked += 1;
    }
    assert!(checked >= 2);
    assert_eq!(app.status(&id).await["status"], "queued");
}

async fn answers_carry_security_headers_and_pages_a_strict_csp(kind: Backing) {
    let app = api(kind, |_| {}).await;
    for path in ["/", "/docs", "/api/jobs", "/health", "/api/nope"] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        if path == "/" || path == "/docs" {
            assert!(csp.contains("script-src 'self'"), "{csp}");
            assert!(!csp.contains("unsafe-inline"), "{csp}");
        } else {
            assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
        }
    }
}

async fn paths_that_do_not_decode_get_json_errors(kind: Backing) {
    let app = api(kind, |_| {}).await;
    for path in ["/assets/%FF", "/images/%FF/x.png", "/images/abc/%C3%28.png"] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        let status = res.status().as_u16();
        let ctype = res.headers()["content-type"].to_str().unwrap().to_owned();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 400, "{path}: {v}");
        assert!(ctype.starts_with("application/json"), "{path}: {ctype}");
        assert!(
            v["error"].is_string() && v["code"].is_string(),
            "{path}: {v}"
        );
    }
}

async fn a_symlink_in_the_images_folder_is_not_followed(kind: Backing) {
    let app = api(kind, |_| {}).await;
    let id = uuid::Uuid::new_v4().to_string();
    let dir = app.dir.path().join("images").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd.png")).unwrap();
    std::fs::write(dir.join("real.png"), b"png").unwrap();
    let (s, v) = app.get(&format!("/images/{id}/passwd.png")).await;
    assert_eq!(s, 404, "{v}");
    let res = app
        .http
        .get(app.url(&format!("/images/{id}/real.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A linked job directory is not followed either.
    let linked = uuid::Uuid::new_v4().to_string();
    std::os::unix::fs::symlink("/etc", app.dir.path().join("images").join(&linked)).unwrap();
    let (s, _) = app.get(&format!("/images/{linked}/passwd")).await;
    assert_eq!(s, 404);
}

async fn a_job_over_the_pixel_budget_is_refused_naming_the_fields(kind: Backing) {
    let app = api(kind, |_| {}).await;
    let (s, v) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "x", "workflow": "smoke", "width": 4096, "height": 4096, "batch_size": 16}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "invalid-param");
    assert_eq!(v["field"], "width,height,batch_size");
    let (s, _) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "x", "workflow": "smoke", "width": 2048, "height": 2048, "batch_size": 4}),
        )
        .await;
    assert_eq!(s, 202);
}

async fn cursors_are_bounded_alike_on_both_stores(kind: Backing) {
    let app = api(kind, |_| {}).await;
    for i in 0..3 {
        app.submit(json!({"prompt": format!("{i}"), "workflow": "smoke"}))
            .await;
    }
    for bad in ["18446744073709551615", "9007199254740992", "-1", "1.5", "x"] {
        let (s, v) = app.get(&format!("/api/jobs?cursor={bad}")).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["code"], "invalid-cursor");
    }
    let (s, v) = app.get("/api/jobs?cursor=9007199254740991").await;
    assert_eq!(s, 200);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 3, "{v}");
    let (_, v) = app.get("/api/jobs?cursor=0").await;
    assert_eq!(v["jobs"].as_array().unwrap().len(), 0, "{v}");
}

both_stores!(
    event_streams_are_capped_per_client_and_in_total,
    the_queue_cap_refuses_with_503_and_keeps_what_is_queued,
    a_flood_of_large_prompts_stops_growing_the_store_at_the_cap,
    cross_site_requests_cannot_change_anything,
    answers_carry_security_headers_and_pages_a_strict_csp,
    paths_that_do_not_decode_get_json_errors,
    a_symlink_in_the_images_folder_is_not_followed,
    a_job_over_the_pixel_budget_is_refused_naming_the_fields,
    cursors_are_bounded_alike_on_both_stores,
    an_output_over_the_size_cap_fails_the_job_with_a_clear_error,
    output_names_urls_must_encode_are_served,
);

async fn an_output_over_the_size_cap_fails_the_job_with_a_clear_error(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        output_bytes: Some(3 << 20),
        ..Knobs::default()
    });
    let app = TestApp::serve(kind, &standin, |a| a.max_output_bytes = 1 << 20).await;
    let id = app
        .submit(json!({"prompt": "x", "workflow": "smoke"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "failed", "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("larger than the 1048576 bytes") && error.contains("--max-output-bytes"),
        "{error}"
    );
    assert_eq!(
        v["attempt"], 1,
        "not retried: the same output would be as large"
    );
    let left = std::fs::read_dir(app.dir.path().join("images").join(&id))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "nothing half-written is kept");
}

async fn output_names_urls_must_encode_are_served(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        odd_names: true,
        ..Knobs::default()
    });
    let app = TestApp::serve(kind, &standin, |_| {}).await;
    let id = app
        .submit(json!({"prompt": "x", "workflow": "smoke"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let out = &v["outputs"][0];
    assert!(
        out["filename"].as_str().unwrap().starts_with("a#b?c d_"),
        "{out}"
    );
    let url = out["url"].as_str().unwrap();
    assert!(url.contains("a%23b%3Fc%20d_"), "{url}");
    assert_eq!(v["image_url"], url);
    // What a browser does with it: fetch it as written.
    let res = app.http.get(app.url(url)).send().await.unwrap();
    assert_eq!(res.status(), 200, "{url}");
    assert_eq!(&res.bytes().await.unwrap()[1..4], b"PNG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_backend_this_worker_does_not_drive_is_never_contacted() {
    let ours = StandIn::start();
    let foreign = StandIn::start();
    let dir = std::sync::Arc::new(TempDir::new());
    // A first attempt, by a worker elsewhere, recorded a server nobody configured
    // here; then that worker died holding the job.
    let id = {
        let store =
            studio_core::store::SqliteStore::open(dir.path(), crate::support::fast_settings())
                .unwrap();
        let job = studio_core::job::NewJob::new("x".into(), 1, "smoke".into(), Default::default());
        store.enqueue(&job).await.unwrap();
        let elsewhere = studio_core::store::WorkerId::from_string("elsewhere:1:dead".into());
        store.heartbeat(&elsewhere).await.unwrap();
        let claim = store
            .claim(&elsewhere, Duration::from_secs(1))
            .await
            .unwrap()
            .expect("claimed");
        store
            .update(&claim.lease, None, Some(&foreign.url()))
            .await
            .unwrap();
        job.id.to_string()
    };
    let url = ours.url();
    let app = TestApp::spawn_with(Backing::Sqlite, Role::Serve, None, dir, move |a| {
        a.comfyui = vec![url];
    })
    .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(v["attempt"], 2);
    assert_eq!(v["backend"], ours.url());
    assert_eq!(
        foreign.requests("/"),
        0,
        "the foreign server got no request"
    );
    assert_eq!(ours.submitted(&id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_comfyui_errors_cannot_forge_log_lines() {
    // A backend whose checkpoint list Studio Core cannot read: the job goes to it,
    // and ComfyUI's own validation echoes the name back in its error.
    let standin = StandIn::start_with(Knobs {
        unlisted_checkpoints: true,
        ..Knobs::default()
    });
    let dir = TempDir::new();
    let log = dir.path().join("backend.log");
    let p = Proc::spawn(
        &["serve"],
        &[
            ("STUDIO_DATA_DIR", dir.path().display().to_string()),
            ("PORT", "0".into()),
            ("COMFYUI_URL", standin.url()),
            ("STUDIO_HEALTH_INTERVAL", "200ms".into()),
        ],
        log.clone(),
    );
    let base = p.wait_listening();
    let evil = "evil.safetensors\n2026-11-28T00:00:00.000000Z  INFO studio: FORGED admin logged in\u{1b}[31m";
    let id = submit(
        &base,
        json!({"prompt": "x", "workflow": "sdxl", "checkpoint": evil}),
    )
    .await;
    let status = wait_final(&base, &id, Duration::from_secs(20)).await;
    // The API reports the error as ComfyUI gave it (it is JSON, so it is safe).
    assert!(
        status["error"].as_str().unwrap().contains("FORGED"),
        "{status}"
    );
    // Give the buffered log a moment to be written out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("FORGED"), "the error was logged: {text}");
    assert!(!text.contains('\u{1b}'), "no raw escape in the log");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("2026-11-28T00:00:00.000000Z")),
        "no forged line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_rotated_by_size_and_old_files_are_dropped() {
    let dir = TempDir::new();
    let log = dir.path().join("backend.log");
    let p = Proc::spawn(
        &["api"],
        &[
            ("STUDIO_DATA_DIR", dir.path().display().to_string()),
            ("PORT", "0".into()),
            ("STUDIO_LOG_MAX_SIZE", "16KiB".into()),
            ("STUDIO_LOG_FILES", "2".into()),
        ],
        log.clone(),
    );
    let base = p.wait_listening();
    let client = reqwest::Client::new();
    // About 150 bytes of log per request: 3,000 requests write ~450 KB.
    for _ in 0..3_000 {
        client.get(format!("{base}/health")).send().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .filter(|(n, _)| n.starts_with("backend.log"))
        .collect();
    files.sort();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["backend.log", "backend.log.1", "backend.log.2"],
        "{files:?}"
    );
    for (name, len) in &files {
        // A file is rotated before a write that finds it full; one write is at most
        // the 64 KiB the log buffer holds.
        assert!(*len <= 16 * 1024 + 64 * 1024, "{name}: {len} bytes");
    }
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    assert!(
        total < 300 * 1024,
        "old files were dropped: {total} bytes kept"
    );
}
