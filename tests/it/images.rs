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
