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

/// `output_format`: the worker stores the picture as WebP (lossless: the same
/// pixels as ComfyUI's PNG) or JPEG (at the quality asked), with the prompt kept
/// in its EXIF; a format it does not know is refused at submit, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictures_are_stored_in_the_format_asked_for() {
    let standin = StandIn::start();
    let url = standin.url();
    let app = TestApp::spawn(Backing::Sqlite, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let fetch = |v: &serde_json::Value| {
        let url = app.url(v["outputs"][0]["url"].as_str().unwrap());
        let http = app.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
            (ctype, r.bytes().await.unwrap().to_vec())
        }
    };
    let png_job = app
        .submit(json!({"prompt": "as png", "workflow": "smoke", "seed": 5}))
        .await;
    let png = app.wait_final(&png_job, Duration::from_secs(20)).await;
    let (ctype, png_bytes) = fetch(&png).await;
    assert_eq!(ctype, "image/png");

    let webp_job = app
        .submit(
            json!({"prompt": "as webp", "workflow": "smoke", "seed": 5, "output_format": "webp"}),
        )
        .await;
    let webp = app.wait_final(&webp_job, Duration::from_secs(20)).await;
    assert_eq!(webp["status"], "finished", "{webp}");
    assert_eq!(webp["params"]["output_format"], "webp", "{webp}");
    let out = &webp["outputs"][0];
    assert!(
        out["filename"].as_str().unwrap().ends_with(".webp"),
        "{out}"
    );
    assert_eq!(
        (out["kind"].as_str(), out["content_type"].as_str()),
        (Some("image"), Some("image/webp"))
    );
    let (ctype, webp_bytes) = fetch(&webp).await;
    assert_eq!(ctype, "image/webp");
    assert_eq!(
        image::load_from_memory(&webp_bytes).unwrap().to_rgba8(),
        image::load_from_memory(&png_bytes).unwrap().to_rgba8(),
        "lossless"
    );
    let has = |b: &[u8], needle: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(&webp_bytes, b"prompt:{"),
        "the prompt, as ComfyUI keeps it in a WebP"
    );

    let jpeg_job = app
        .submit(json!({"prompt": "as jpeg", "workflow": "smoke", "output_format": "jpeg", "quality": 70}))
        .await;
    let jpeg = app.wait_final(&jpeg_job, Duration::from_secs(20)).await;
    let (ctype, jpeg_bytes) = fetch(&jpeg).await;
    assert_eq!(ctype, "image/jpeg", "{jpeg}");
    assert!(
        jpeg["outputs"][0]["filename"]
            .as_str()
            .unwrap()
            .ends_with(".jpg")
    );
    assert!(has(&jpeg_bytes, b"prompt:{"));
    let d = image::load_from_memory(&jpeg_bytes).unwrap();
    let p = image::load_from_memory(&png_bytes).unwrap();
    assert_eq!((d.width(), d.height()), (p.width(), p.height()));

    for (body, field) in [
        (
            json!({"prompt": "x", "workflow": "smoke", "output_format": "gif"}),
            "output_format",
        ),
        (
            json!({"prompt": "x", "workflow": "smoke", "output_format": 3}),
            "output_format",
        ),
        (
            json!({"prompt": "x", "workflow": "smoke", "quality": 0}),
            "quality",
        ),
        (
            json!({"prompt": "x", "workflow": "smoke", "quality": 101}),
            "quality",
        ),
        (
            json!({"prompt": "x", "workflow": "smoke", "quality": "high"}),
            "quality",
        ),
    ] {
        let (code, v) = app.post_json("/api/generate", &body).await;
        assert_eq!(
            (code, v["field"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
}
