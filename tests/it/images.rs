//! Serving outputs: `ETag` with `If-None-Match` (304), single byte ranges (206,
//! and 416 past the end), `If-Range`.

use std::time::Duration;

use serde_json::json;
use studio_core::config::Role;

use crate::support::standin::StandIn;
use crate::support::{Backing, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_answer_ranges_and_revalidation() {
    let standin = StandIn::start();
    let url = standin.url();
    let app = TestApp::spawn(Backing::Sqlite, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let id = app
        .submit(json!({"prompt": "ranged", "workflow": "smoke", "width": 32, "height": 32}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let file = app.url(v["outputs"][0]["url"].as_str().unwrap());
    let get = |range: Option<&str>, extra: Option<(&str, String)>| {
        let mut req = app.http.get(&file);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        req.send()
    };
    let whole = get(None, None).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    let etag = whole.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let bytes = whole.bytes().await.unwrap();
    let total = bytes.len();
    assert!(total > 20);

    let r = get(Some("bytes=0-9"), None).await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 0-9/{total}"));
    assert_eq!(r.bytes().await.unwrap(), bytes.slice(0..10));

    let r = get(Some("bytes=-5"), None).await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), bytes.slice(total - 5..));

    let r = get(Some("bytes=10-"), None).await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), bytes.slice(10..));

    let r = get(Some(&format!("bytes={total}-")), None).await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], format!("bytes */{total}"));
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "range-not-satisfiable");

    // Several ranges, or nonsense: the whole file.
    let r = get(Some("bytes=0-1,4-5"), None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bytes);

    let r = get(None, Some(("if-none-match", etag.clone())))
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = get(None, Some(("if-none-match", "\"other\"".into())))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // If-Range: the range only while the file is the one the client has.
    let r = get(Some("bytes=0-9"), Some(("if-range", etag.clone())))
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let r = get(Some("bytes=0-9"), Some(("if-range", "\"stale\"".into())))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bytes);
}

/// Thumbnails: only the listed widths, never wider than the picture, made once and
/// kept beside it (the storage holds one file per width asked for), only of
/// pictures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_are_bounded_and_made_once() {
    let standin = StandIn::start_with(crate::support::standin::Knobs {
        extra_outputs: true,
        ..Default::default()
    });
    let url = standin.url();
    let app = TestApp::spawn(Backing::Sqlite, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let id = app
        .submit(json!({"prompt": "small", "workflow": "smoke"}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let outputs = v["outputs"].as_array().unwrap();
    let picture = outputs.iter().find(|o| o["kind"] == "image").unwrap();
    let original = app
        .http
        .get(app.url(picture["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (pw, ph) = image::load_from_memory(&original)
        .unwrap()
        .to_rgb8()
        .dimensions();
    let thumb = |w: &str, o: &serde_json::Value| {
        let url = app.url(&format!("{}?w={w}", o["url"].as_str().unwrap()));
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    let r = thumb("128", picture).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let first = r.bytes().await.unwrap();
    let d = image::load_from_memory(&first).unwrap();
    let want_w = pw.min(128);
    assert_eq!((d.width(), d.height()), (want_w, (ph * want_w / pw).max(1)));
    let again = thumb("128", picture).await.bytes().await.unwrap();
    assert_eq!(first, again, "the kept thumbnail");
    let _ = thumb("512", picture).await;
    let dir = app.dir.path().join("images").join(&id);
    let thumbs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("thumb-"))
        .collect();
    assert_eq!(thumbs.len(), 2, "one per width asked for: {thumbs:?}");
    for w in ["100", "1024", "0", "-1", "abc", "256.5"] {
        let r = thumb(w, picture).await;
        assert_eq!(r.status(), 400, "w={w}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["code"], "invalid-query", "w={w}: {e}");
    }
    let audio = outputs.iter().find(|o| o["kind"] == "audio").unwrap();
    let r = thumb("128", audio).await;
    assert_eq!(r.status(), 400, "not a picture");
    let r = app
        .http
        .get(app.url(&format!("/images/{id}/nothing.png?w=128")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
