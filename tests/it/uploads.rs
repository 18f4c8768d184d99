//! Input pictures: `POST /api/uploads` (raw and multipart) checks what it stores;
//! image and mask parameters take upload ids (or small data: URLs); the worker
//! puts the very bytes on the backend through `/upload/image`, once per backend,
//! and the graph's `LoadImage` names the file ComfyUI took.

use std::time::Duration;

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role as KeyRole};
use studio_core::config::Role;

use crate::support::standin::StandIn;
use crate::support::{Backing, TestApp, png};

/// A picture that does not compress (random pixels): about 3 bytes per pixel.
fn noise_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        image::Rgb([fastrand::u8(..), fastrand::u8(..), fastrand::u8(..)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

async fn upload_raw(
    app: &TestApp,
    bytes: &[u8],
    content_type: &str,
    key: Option<&str>,
) -> (u16, Value) {
    let mut req = app
        .http
        .post(app.url("/api/uploads"))
        .header("content-type", content_type)
        .header("x-requested-with", "test")
        .body(bytes.to_vec());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn upload_form(app: &TestApp, bytes: &[u8], field: &str) -> (u16, Value) {
    let part = reqwest::multipart::Part::bytes(bytes.to_vec())
        .file_name("photo.jpg")
        .mime_str("image/jpeg")
        .unwrap();
    let form = reqwest::multipart::Form::new().part(field.to_owned(), part);
    let res = app
        .http
        .post(app.url("/api/uploads"))
        .header("x-requested-with", "test")
        .multipart(form)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn uploads_are_checked_before_anything_is_stored(kind: Backing) {
    let app = TestApp::spawn(kind, Role::Api, |a| {
        a.max_upload_bytes = 64 * 1024;
        a.max_upload_pixels = 200 * 200;
    })
    .await;
    let good = png(40, 30, [1, 2, 3]);
    let (code, first) = upload_raw(&app, &good, "image/png", None).await;
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["width"], 40);
    assert_eq!(first["height"], 30);
    assert_eq!(first["content_type"], "image/png");
    assert_eq!(first["size"], good.len());
    let id = first["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64);
    let (code, again) = upload_raw(&app, &good, "image/png", None).await;
    assert_eq!(
        (code, &again["upload_id"]),
        (201, &first["upload_id"]),
        "content-addressed"
    );

    let (code, form) = upload_form(&app, &jpeg(16, 8), "image").await;
    assert_eq!(code, 201, "multipart: {form}");
    assert_eq!(form["content_type"], "image/jpeg");
    let (code, any) = upload_form(&app, &jpeg(8, 8), "file").await;
    assert_eq!(
        code, 201,
        "the first file field when none is named image: {any}"
    );

    let refused: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "truncated",
            good[..good.len() - 30].to_vec(),
            "image/png",
            400,
            "invalid-image",
        ),
        (
            "a GIF",
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
            "image/gif",
            415,
            "unsupported-image-type",
        ),
        (
            "a PNG called a JPEG",
            good.clone(),
            "image/jpeg",
            415,
            "unsupported-image-type",
        ),
        (
            "too many bytes",
            noise_png(200, 200),
            "image/png",
            413,
            "payload-too-large",
        ),
        (
            "too many pixels",
            png(300, 300, [9, 9, 9]),
            "image/png",
            413,
            "image-too-large",
        ),
        (
            "a polyglot (PNG + HTML)",
            [
                good.clone(),
                b"<html><script>alert(1)</script></html>".to_vec(),
            ]
            .concat(),
            "image/png",
            400,
            "invalid-image",
        ),
        ("empty", Vec::new(), "image/png", 400, "invalid-image"),
    ];
    for (what, bytes, ct, want, code_want) in refused {
        let (code, v) = upload_raw(&app, &bytes, ct, None).await;
        assert_eq!(code, want, "{what}: {v}");
        assert_eq!(v["code"], code_want, "{what}: {v}");
        assert_eq!(v["field"], "image", "{what}: {v}");
    }
    // A form field that is not a picture's own type needs the page's header.
    let res = app
        .http
        .post(app.url("/api/uploads"))
        .header("content-type", "text/plain")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        415,
        "text/plain is what a cross-site form sends"
    );
    // Input pictures are not served back as outputs.
    let res = app
        .http
        .get(app.url(&format!("/images/_uploads/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

async fn img2img_puts_the_uploaded_bytes_on_the_backend_once(kind: Backing) {
    let standin = StandIn::start();
    let url = standin.url();
    let app = TestApp::spawn(kind, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let picture = png(24, 16, [200, 10, 10]);
    let (code, up) = upload_raw(&app, &picture, "image/png", None).await;
    assert_eq!(code, 201, "{up}");
    let id = up["upload_id"].as_str().unwrap();

    let first = app
        .submit(json!({"prompt": "invert it", "workflow": "smoke-img2img", "image": id}))
        .await;
    let v = app.wait_final(&first, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(v["params"]["image"], id, "the job keeps the upload id");
    let names = standin.input_names();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(
        standin.input(&names[0]).unwrap(),
        picture,
        "the bytes ComfyUI got are the uploaded ones"
    );
    let graph = standin.graph_of(&first).unwrap();
    assert_eq!(graph["1"]["class_type"], "LoadImage");
    assert_eq!(
        graph["1"]["inputs"]["image"],
        names[0].as_str(),
        "LoadImage names the file ComfyUI took"
    );

    let second = app
        .submit(json!({"prompt": "again", "workflow": "smoke-img2img", "image": id}))
        .await;
    let v = app.wait_final(&second, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(
        standin.requests("/upload/image"),
        1,
        "the same picture is not uploaded twice to one backend"
    );

    // A small picture inline, as a data: URL: stored as an upload first.
    use base64::Engine;
    let inline = png(4, 4, [0, 255, 0]);
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&inline)
    );
    let third = app
        .submit(json!({"prompt": "inline", "workflow": "smoke-img2img", "image": data_url}))
        .await;
    let v = app.wait_final(&third, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let stored = v["params"]["image"].as_str().unwrap();
    assert_eq!(stored.len(), 64, "the data: URL became an upload id: {v}");
    assert!(
        standin
            .input_names()
            .iter()
            .any(|n| standin.input(n).unwrap() == inline),
        "the inline picture reached ComfyUI"
    );
}

/// A submission with an inline picture is counted against its rate limit before
/// the picture is stored: a refused one stores nothing (counted in the store's
/// registry of stored files).
async fn a_rate_limited_submission_stores_no_inline_picture(kind: Backing) {
    use base64::Engine;
    let app = TestApp::spawn(kind, Role::Api, |a| a.auth = AuthMode::Keys).await;
    let slow = app.rate_limited_key("slow", 0.01, 1).await;
    let stored = || async {
        app.store
            .expired_upload_files(u64::MAX, 1000)
            .await
            .unwrap()
            .len()
    };
    let inline = |rgb| {
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png(4, 4, rgb))
        )
    };
    let send = |image: String| {
        let app = &app;
        let slow = &slow;
        async move {
            app.http
                .post(app.url("/api/generate"))
                .bearer_auth(slow)
                .json(&json!({"prompt": "inline", "workflow": "smoke-img2img", "image": image}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(stored().await, 0);
    assert_eq!(send(inline([0, 255, 0])).await, 202);
    assert_eq!(stored().await, 1);
    assert_eq!(send(inline([255, 0, 0])).await, 429);
    assert_eq!(
        stored().await,
        1,
        "the refused submission's picture is not stored"
    );
}

async fn inpainting_takes_a_picture_and_a_mask(kind: Backing) {
    let standin = StandIn::start();
    let url = standin.url();
    let app = TestApp::spawn(kind, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let picture = png(64, 64, [50, 60, 70]);
    let mask = png(64, 64, [255, 255, 255]);
    let (_, p) = upload_raw(&app, &picture, "image/png", None).await;
    let (_, m) = upload_raw(&app, &mask, "image/png", None).await;
    let id = app
        .submit(json!({"prompt": "a red door", "workflow": "sd15-inpaint",
            "image": p["upload_id"], "mask": m["upload_id"], "steps": 2}))
        .await;
    let v = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let graph = standin.graph_of(&id).unwrap();
    let mask_name = graph["11"]["inputs"]["image"].as_str().unwrap();
    let image_name = graph["10"]["inputs"]["image"].as_str().unwrap();
    assert_eq!(graph["11"]["class_type"], "LoadImageMask");
    assert_eq!(standin.input(mask_name).unwrap(), mask);
    assert_eq!(standin.input(image_name).unwrap(), picture);
    assert_eq!(graph["12"]["inputs"]["mask"], json!(["11", 0]));
}

async fn a_job_naming_a_missing_or_foreign_upload_is_refused(kind: Backing) {
    let app = TestApp::spawn(kind, Role::Api, |a| a.auth = AuthMode::Keys).await;
    let alice = app
        .new_key("alice", KeyRole::User, KeyLimits::default())
        .await;
    let bob = app
        .new_key("bob", KeyRole::User, KeyLimits::default())
        .await;
    let (code, up) = upload_raw(&app, &png(8, 8, [1, 1, 1]), "image/png", Some(&alice)).await;
    assert_eq!(code, 201, "{up}");
    let submit = |key: String, body: Value| {
        let app = &app;
        async move {
            let res = app
                .http
                .post(app.url("/api/generate"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let body = json!({"prompt": "x", "workflow": "smoke-img2img", "image": up["upload_id"]});
    let (code, v) = submit(bob.clone(), body.clone()).await;
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("upload-not-found")),
        "another key's upload: {v}"
    );
    assert_eq!(v["field"], "image");
    let (code, v) = submit(alice.clone(), body).await;
    assert_eq!(code, 202, "its own: {v}");
    let (code, v) = submit(
        alice.clone(),
        json!({"prompt": "x", "workflow": "smoke-img2img", "image": "0".repeat(64)}),
    )
    .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("upload-not-found")),
        "{v}"
    );
    let (code, v) = submit(
        alice.clone(),
        json!({"prompt": "x", "workflow": "smoke-img2img"}),
    )
    .await;
    assert_eq!(
        (code, v["field"].as_str()),
        (400, Some("image")),
        "required: {v}"
    );
    let (code, v) = submit(
        alice.clone(),
        json!({"prompt": "x", "workflow": "smoke-img2img", "image": "../../etc/passwd"}),
    )
    .await;
    assert_eq!((code, v["field"].as_str()), (400, Some("image")), "{v}");
    let (code, v) = submit(
        alice,
        json!({"prompt": "x", "workflow": "smoke-img2img", "image": "data:text/html;base64,PGh0bWw+"}),
    )
    .await;
    assert_eq!((code, v["field"].as_str()), (415, Some("image")), "{v}");
}

/// Random and mangled bytes, under every declared type: always a JSON 4xx naming
/// the field (or a 201 for a mutation that is still a whole picture), never a 5xx.
async fn random_and_mangled_bytes_never_break_the_upload(kind: Backing) {
    let app = TestApp::spawn(kind, Role::Api, |a| a.max_upload_pixels = 512 * 512).await;
    let good = [png(33, 17, [7, 7, 7]), jpeg(20, 20), noise_png(24, 24)];
    let magics: [&[u8]; 4] = [
        b"\x89PNG\r\n\x1a\n",
        &[0xFF, 0xD8, 0xFF],
        b"RIFF\x10\x00\x00\x00WEBPVP8 ",
        b"",
    ];
    let types = [
        "image/png",
        "image/jpeg",
        "image/webp",
        "application/octet-stream",
    ];
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..300 {
        let bytes: Vec<u8> = match i % 3 {
            0 => {
                let mut b = magics[fastrand::usize(..magics.len())].to_vec();
                b.extend((0..fastrand::usize(..2048)).map(|_| fastrand::u8(..)));
                b
            }
            1 => {
                let mut b = good[fastrand::usize(..good.len())].clone();
                for _ in 0..fastrand::usize(1..8) {
                    let at = fastrand::usize(..b.len());
                    b[at] = fastrand::u8(..);
                }
                b
            }
            _ => {
                let b = &good[fastrand::usize(..good.len())];
                b[..fastrand::usize(..b.len())].to_vec()
            }
        };
        let ct = types[fastrand::usize(..types.len())];
        let (code, v) = upload_raw(&app, &bytes, ct, None).await;
        assert!(
            matches!(code, 201 | 400 | 413 | 415),
            "case {i} ({ct}, {} bytes): {code} {v}",
            bytes.len()
        );
        if code != 201 {
            assert_eq!(v["field"], "image", "case {i}: {v}");
            assert!(v["code"].is_string(), "case {i}: {v}");
        }
        *seen.entry(code).or_insert(0) += 1;
    }
    assert!(seen.len() >= 3, "the cases reach several answers: {seen:?}");
}

both_stores!(
    random_and_mangled_bytes_never_break_the_upload,
    uploads_are_checked_before_anything_is_stored,
    img2img_puts_the_uploaded_bytes_on_the_backend_once,
    inpainting_takes_a_picture_and_a_mask,
    a_job_naming_a_missing_or_foreign_upload_is_refused,
    a_rate_limited_submission_stores_no_inline_picture,
);
