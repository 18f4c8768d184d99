//! The studio page in headless Chromium (Debian's `chromium` via `chromedriver`),
//! against a running `studio serve` and the ComfyUI stand-in: type a prompt, click
//! Generate, watch the progress bar advance and the picture reach the gallery,
//! cancel a second job, reload, open the picture full size, then look at the page
//! at phone width. Screenshots go to `target/screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use studio_core::config::Role;

use crate::support::standin::{Knobs, StandIn};
use crate::support::webdriver::Browser;
use crate::support::{Backing, TestApp};

const WAIT: Duration = Duration::from_secs(20);

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Picks the `smoke` workflow in the form, once the page has listed it.
async fn choose_smoke(browser: &Browser) {
    browser
        .wait_for(
            "return [...document.querySelectorAll('#workflow option')].some(o => o.value === 'smoke')",
            WAIT,
        )
        .await;
    browser
        .exec("const s = document.getElementById('workflow'); s.value = 'smoke'; s.dispatchEvent(new Event('change')); return true;")
        .await;
}

/// A job card as the page shows it every 40 ms until the job ends: (status,
/// progress bar value, state in words) at each look.
async fn watch_card(browser: &Browser, job_id: &str) -> Vec<(String, f64, String)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = browser
            .exec(&format!("const c = document.querySelector('.job[data-job-id=\"{job_id}\"]'); return [c.dataset.status, c.querySelector('progress').value, c.querySelector('.state').textContent]"))
            .await;
        let status = v[0].as_str().unwrap().to_owned();
        seen.push((
            status.clone(),
            v[1].as_f64().unwrap(),
            v[2].as_str().unwrap().to_owned(),
        ));
        if status == "finished" || status == "failed" {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never finished: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_generates_shows_progress_fills_the_gallery_and_cancels() {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(2500),
        steps: 20,
        ..Knobs::default()
    });
    let url = standin.url();
    let app = TestApp::spawn(Backing::Sqlite, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let browser = Browser::start(1280, 1000).await;
    browser.goto(&app.base).await;

    // The workflow picker fills from /api/workflows; pick `smoke` with the keyboard-free API.
    browser
        .wait_for(
            "return document.querySelectorAll('#workflow option').length >= 3",
            WAIT,
        )
        .await;
    browser
        .exec("const s = document.getElementById('workflow'); s.value = 'smoke'; s.dispatchEvent(new Event('change')); return true;")
        .await;
    let width_max = browser
        .exec("return document.getElementById('param-width').max")
        .await;
    assert_eq!(
        width_max, "4096",
        "parameter inputs carry the declared bounds"
    );
    assert_eq!(
        browser
            .exec("return document.getElementById('negative-row').hidden")
            .await,
        true,
        "smoke has no negative prompt"
    );

    // Type a prompt and click Generate.
    let prompt = browser.find("#prompt").await;
    browser
        .type_into(&prompt, "a lighthouse at dusk, \"oil\" {painting}")
        .await;
    let dice = browser.find("#dice").await;
    browser.click(&dice).await;
    let seed = browser
        .exec("return document.getElementById('seed').value")
        .await;
    assert!(
        seed.as_str().unwrap().parse::<u64>().is_ok(),
        "the dice gives a number: {seed}"
    );
    let generate = browser.find("#generate").await;
    browser.click(&generate).await;

    // The job appears at once, and its progress bar advances.
    let job_id = browser
        .wait_for(
            "const c = document.querySelector('.job'); return c && c.dataset.jobId",
            WAIT,
        )
        .await;
    let job_id = job_id.as_str().unwrap().to_owned();
    let seen = watch_card(&browser, &job_id).await;
    let last = seen.last().unwrap();
    assert_eq!(
        (last.0.as_str(), last.2.as_str()),
        ("finished", "Done"),
        "{seen:?}"
    );
    let mid: Vec<f64> = seen
        .iter()
        .filter(|s| s.0 == "processing")
        .map(|s| s.1)
        .collect();
    assert!(
        mid.iter().any(|v| *v > 0.0 && *v < 100.0),
        "the bar advanced while running: {seen:?}"
    );
    assert!(
        mid.windows(2).all(|w| w[0] <= w[1]),
        "and never went back: {mid:?}"
    );
    assert!(
        seen.iter().any(|s| s.2.starts_with("Generating… ")),
        "its state in words: {seen:?}"
    );

    // The picture reaches the gallery as a thumbnail (the server's, 256 wide at
    // most) and loads.
    let loaded = format!(
        "const i = [...document.querySelectorAll('#gallery img')].find(i => i.src.includes('{job_id}')); \
         return !!(i && i.src.includes('w=256') && i.complete && i.naturalWidth > 0 && i.naturalWidth <= 256)"
    );
    browser.wait_for(&loaded, WAIT).await;
    std::fs::write(
        screenshots().join("studio-page-finished.png"),
        browser.screenshot().await,
    )
    .unwrap();

    // A second, slow job: cancel it while it runs.
    standin.knobs(|k| k.duration = Duration::from_secs(20));
    browser
        .exec("document.getElementById('prompt').value = ''; return true;")
        .await;
    browser.type_into(&prompt, "cancel me").await;
    browser.click(&generate).await;
    let second = browser
        .wait_for(&format!("const c = document.querySelector('.job'); return c && c.dataset.jobId !== '{job_id}' && c.dataset.status === 'processing' && c.dataset.jobId"), WAIT)
        .await;
    let second = second.as_str().unwrap().to_owned();
    // Found and clicked in one step: the card is redrawn as progress comes in, so a
    // button found a moment earlier may already have been replaced.
    let clicked = browser
        .wait_for(&format!("const b = document.querySelector('.job[data-job-id=\"{second}\"] button.cancel'); if (!b) return false; b.click(); return true;"), WAIT)
        .await;
    assert_eq!(clicked, true);
    browser
        .wait_for(&format!("const c = document.querySelector('.job[data-job-id=\"{second}\"]'); return c.dataset.status === 'failed' && c.querySelector('.state').textContent === 'Cancelled'"), WAIT)
        .await;
    std::fs::write(
        screenshots().join("studio-page-cancelled.png"),
        browser.screenshot().await,
    )
    .unwrap();
    let v = app.status(&second).await;
    assert_eq!(
        (v["status"].as_str(), v["error"].as_str()),
        (Some("failed"), Some("cancelled"))
    );

    // The gallery persists across reloads; a picture opens full size; Escape closes it.
    browser.goto(&app.base).await;
    browser.wait_for(&loaded, WAIT).await;
    let thumb = browser
        .find(&format!("#gallery li[data-job-id=\"{job_id}\"] button"))
        .await;
    browser.click(&thumb).await;
    browser
        .wait_for("return document.getElementById('viewer').open", WAIT)
        .await;
    let download = browser
        .exec("return document.getElementById('viewer-download').getAttribute('href')")
        .await;
    assert!(
        download
            .as_str()
            .unwrap()
            .starts_with(&format!("/images/{job_id}/")),
        "{download}"
    );
    let close = browser.find("#viewer-close").await;
    browser.type_into(&close, "\u{E00C}").await; // Escape
    browser
        .wait_for("return !document.getElementById('viewer').open", WAIT)
        .await;

    // Phone width: one column, nothing wider than the screen.
    browser.set_size(390, 844).await;
    browser
        .wait_for("return window.innerWidth <= 400", WAIT)
        .await;
    let overflow = browser
        .exec("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "no sideways scrolling on a phone: {overflow}"
    );
    let png = browser.screenshot().await;
    assert_eq!(&png[1..4], b"PNG");
    std::fs::write(screenshots().join("studio-page-phone.png"), png).unwrap();
}

/// With auth on, the page asks for a key, refuses a wrong one, keeps a right one in
/// the browser, and then works as without auth: live progress over the
/// key-carrying event stream, the picture through its signed URL, only the key's
/// own jobs. Forgetting the key brings the question back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_a_key_and_works_with_auth_on() {
    use studio_core::auth::{AuthMode, KeyLimits, Role as KeyRole};

    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(1500),
        steps: 10,
        ..Knobs::default()
    });
    let url = standin.url();
    let app = TestApp::spawn(Backing::Redis, Role::Serve, move |a| {
        a.comfyui = vec![url];
        a.auth = AuthMode::Keys;
    })
    .await;
    let mine = app
        .new_key("page", KeyRole::User, KeyLimits::default())
        .await;
    let other = app
        .new_key("else", KeyRole::User, KeyLimits::default())
        .await;
    // Someone else's job, which the page must never show.
    let res = app
        .http
        .post(app.url("/api/generate"))
        .bearer_auth(&other)
        .json(&serde_json::json!({"prompt": "not yours", "workflow": "smoke"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);

    let browser = Browser::start(1280, 1000).await;
    browser.goto(&app.base).await;
    browser
        .wait_for("return !document.getElementById('key-panel').hidden", WAIT)
        .await;
    let input = browser.find("#key-input").await;
    browser
        .type_into(&input, "sk_000000000000_nope\u{E007}")
        .await; // Enter
    browser
        .wait_for("return !document.getElementById('key-error').hidden", WAIT)
        .await;
    browser
        .exec("document.getElementById('key-input').value = ''; return true")
        .await;
    browser.type_into(&input, &format!("{mine}\u{E007}")).await;
    // The page reloads with the key: the workflows load, the panel is gone.
    browser
        .wait_for(
            "return document.querySelectorAll('#workflow option').length >= 3 && document.getElementById('key-panel').hidden",
            WAIT,
        )
        .await;
    let label = browser
        .exec("return document.getElementById('key-label').textContent")
        .await;
    let id = mine.split('_').nth(1).unwrap();
    assert_eq!(label, format!("key {id}"));
    assert_eq!(
        browser
            .exec("return localStorage.getItem('studio.apiKey')")
            .await,
        mine.as_str()
    );

    browser
        .exec("const s = document.getElementById('workflow'); s.value = 'smoke'; s.dispatchEvent(new Event('change')); return true;")
        .await;
    let prompt = browser.find("#prompt").await;
    browser.type_into(&prompt, "a keyed lighthouse").await;
    let generate = browser.find("#generate").await;
    browser.click(&generate).await;
    let job_id = browser
        .wait_for(
            "const c = document.querySelector('.job'); return c && c.dataset.jobId",
            WAIT,
        )
        .await;
    let job_id = job_id.as_str().unwrap().to_owned();
    // Progress arrives over the event stream (the page does not poll while it runs).
    let seen = watch_card(&browser, &job_id).await;
    assert_eq!(seen.last().unwrap().0, "finished", "{seen:?}");
    assert!(
        seen.iter()
            .any(|(s, v, _)| s == "processing" && *v > 0.0 && *v < 100.0),
        "live progress: {seen:?}"
    );
    // The picture loads through its signed URL.
    let loaded = format!(
        "const i = [...document.querySelectorAll('#gallery img')].find(i => i.src.includes('{job_id}')); return i && i.complete && i.naturalWidth > 0 ? i.src : null"
    );
    let src = browser.wait_for(&loaded, WAIT).await;
    assert!(src.as_str().unwrap().contains("sig="), "{src}");
    // Only this key's jobs are on the page.
    let prompts = browser
        .exec("return [...document.querySelectorAll('.job .prompt')].map(p => p.textContent)")
        .await;
    assert_eq!(prompts, serde_json::json!(["a keyed lighthouse"]));
    std::fs::write(
        screenshots().join("studio-page-with-key.png"),
        browser.screenshot().await,
    )
    .unwrap();

    // Forget the key: the question comes back.
    let forget = browser.find("#key-forget").await;
    browser.click(&forget).await;
    browser
        .wait_for("return !document.getElementById('key-panel').hidden && localStorage.getItem('studio.apiKey') === null", WAIT)
        .await;
}

/// The operator's page: queue and throughput charts, the backends with their
/// utilization as their worker reports it, failures grouped by cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_page_charts_the_queue_backends_and_failures() {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(300),
        ..Knobs::default()
    });
    let url = standin.url();
    let app = TestApp::spawn(Backing::Redis, Role::Serve, move |a| {
        a.comfyui = vec![url];
        a.ops_interval = Duration::from_millis(300);
    })
    .await;
    let mut ids = Vec::new();
    for seed in 0..4 {
        ids.push(
            app.submit(serde_json::json!({"prompt": "ops", "workflow": "smoke", "seed": seed}))
                .await,
        );
    }
    for bad in ["missing-a.safetensors", "missing-b.safetensors"] {
        ids.push(
            app.submit(serde_json::json!({"prompt": "x", "workflow": "sdxl", "checkpoint": bad}))
                .await,
        );
    }
    for id in &ids {
        app.wait_final(id, WAIT).await;
    }
    // The JSON behind the page.
    let (s, v) = app.get("/api/ops").await;
    assert_eq!(s, 200, "{v}");
    assert!(!v["series"].as_array().unwrap().is_empty(), "{v}");
    let groups = v["failures"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "two alike failures are one cause: {v}");
    assert_eq!(groups[0]["count"], 2);

    let browser = Browser::start(1280, 1000).await;
    browser.goto(&app.url("/ops")).await;
    browser
        .wait_for(
            "return document.querySelectorAll('#queue-chart path.line').length === 3 \
             && document.querySelectorAll('#tput-chart rect.bar.finished').length > 0",
            WAIT,
        )
        .await;
    let backend = browser
        .wait_for(
            "const b = document.querySelector('#backends li.backend.up'); return b && b.dataset.url",
            WAIT,
        )
        .await;
    assert_eq!(backend, standin.url().trim_end_matches('/'));
    // Utilization shows once two reports are in.
    browser
        .wait_for(
            "const u = document.querySelector('#backends .utilization'); return u && /utilization \\d+ %/.test(u.textContent)",
            WAIT,
        )
        .await;
    let failure = browser
        .exec("const r = document.querySelector('#failures tbody tr'); return r ? [r.cells[0].textContent, r.cells[1].textContent] : null")
        .await;
    assert_eq!(failure[0], "2", "{failure}");
    assert!(
        failure[1].as_str().unwrap().contains("ckpt_name"),
        "{failure}"
    );
    // Usage: the jobs of the last 30 days (no key here: one row).
    let usage = browser
        .wait_for(
            "const r = document.querySelector('#usage tbody tr'); return r && [r.cells[1].textContent, r.cells[2].textContent]",
            WAIT,
        )
        .await;
    assert_eq!(usage[0], "6", "every job that ended: {usage}");
    assert!(
        usage[1].as_str().unwrap().parse::<f64>().unwrap() > 0.0,
        "{usage}"
    );
    let requeue = browser
        .exec("return getComputedStyle(document.getElementById('requeue')).display")
        .await;
    assert_eq!(requeue, "none", "nothing to requeue");
    // Pause and resume with the buttons.
    let pause = browser.find("#pause").await;
    browser.click(&pause).await;
    browser
        .wait_for(
            "return document.getElementById('paused').textContent.includes('the farm is paused')",
            WAIT,
        )
        .await;
    let (_, p) = app.get("/api/admin/pause").await;
    assert_eq!(p["farm"], true);
    let resume = browser.find("#resume").await;
    browser.click(&resume).await;
    browser
        .wait_for(
            "return document.getElementById('paused').textContent.startsWith('running')",
            WAIT,
        )
        .await;
    let (_, p) = app.get("/api/admin/pause").await;
    assert_eq!(p["farm"], false);
    let png = browser.screenshot().await;
    assert_eq!(&png[1..4], b"PNG");
    std::fs::write(screenshots().join("studio-ops.png"), png).unwrap();
}

/// A workflow with an input picture: the page shows a file input with a preview,
/// uploads the picture when Generate is clicked, and the job runs with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_takes_a_picture_for_img2img() {
    let standin = StandIn::start();
    let url = standin.url();
    let app = TestApp::spawn(Backing::Sqlite, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let dir = crate::support::TempDir::new();
    let picture = dir.path().join("photo.png");
    image::RgbImage::from_pixel(20, 10, image::Rgb([250, 128, 0]))
        .save(&picture)
        .unwrap();
    // Once the worker has said which checkpoints its ComfyUI has, the page offers
    // them as a drop-down.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, v) = app.get("/api/workflows").await;
        if v.to_string().contains("\"from_backends\":true") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no offers: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let browser = Browser::start(1280, 1000).await;
    browser.goto(&app.base).await;
    browser
        .wait_for(
            "return [...document.querySelectorAll('#workflow option')].some(o => o.value === 'smoke-img2img')",
            WAIT,
        )
        .await;
    browser
        .exec("const s = document.getElementById('workflow'); s.value = 'sdxl'; s.dispatchEvent(new Event('change')); return true;")
        .await;
    assert_eq!(
        browser
            .exec("const c = document.getElementById('param-checkpoint'); return [c.tagName, [...c.options].map(o => o.value).join(',')]")
            .await,
        serde_json::json!(["SELECT", "sd_xl_base_1.0.safetensors,v1-5-pruned-emaonly.safetensors"]),
        "the checkpoints the backend has, as a drop-down"
    );
    browser
        .exec("const s = document.getElementById('workflow'); s.value = 'smoke-img2img'; s.dispatchEvent(new Event('change')); return true;")
        .await;
    assert_eq!(
        browser
            .exec("const i = document.getElementById('param-image'); return i && i.type")
            .await,
        "file",
        "an image parameter is a file input"
    );
    let prompt = browser.find("#prompt").await;
    browser.type_into(&prompt, "invert me").await;
    // Generate without a picture: the page says what is missing.
    let generate = browser.find("#generate").await;
    browser.click(&generate).await;
    let error = browser
        .wait_for(
            "const e = document.getElementById('form-error'); return !e.hidden && e.textContent",
            WAIT,
        )
        .await;
    assert!(error.as_str().unwrap().contains("picture"), "{error}");

    let input = browser.find("#param-image").await;
    browser.type_into(&input, picture.to_str().unwrap()).await;
    browser
        .wait_for(
            "const p = document.querySelector('#params-fields img.preview'); return !!(p && !p.hidden && p.complete && p.naturalWidth === 20)",
            WAIT,
        )
        .await;
    browser.click(&generate).await;
    let job_id = browser
        .wait_for(
            "const c = document.querySelector('.job'); return c && c.dataset.jobId",
            WAIT,
        )
        .await;
    let job_id = job_id.as_str().unwrap().to_owned();
    let seen = watch_card(&browser, &job_id).await;
    assert_eq!(seen.last().unwrap().0, "finished", "{seen:?}");
    let names = standin.input_names();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(
        standin.input(&names[0]).unwrap(),
        std::fs::read(&picture).unwrap(),
        "the chosen file reached ComfyUI"
    );
    std::fs::write(
        screenshots().join("img2img.png"),
        browser.screenshot().await,
    )
    .unwrap();
}

/// The job card shows the picture forming: each `event: preview` is fetched (with
/// the key's header when there is one) and shown, then the result replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_picture_forming() {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(4000),
        steps: 16,
        ..Knobs::default()
    });
    let url = standin.url();
    let app = TestApp::spawn(Backing::Sqlite, Role::Serve, move |a| a.comfyui = vec![url]).await;
    let browser = Browser::start(1280, 1000).await;
    browser.goto(&app.base).await;
    choose_smoke(&browser).await;
    // Saved as WebP (the form's "Save as").
    browser
        .exec("document.getElementById('output-format').value = 'webp'; return true;")
        .await;
    let prompt = browser.find("#prompt").await;
    browser.type_into(&prompt, "a picture forming").await;
    let generate = browser.find("#generate").await;
    browser.click(&generate).await;
    let seq = browser
        .wait_for(
            "const c = document.querySelector('.job'); const p = c && c.querySelector('img.preview'); \
             return !!(p && p.complete && p.naturalWidth > 0) && c.dataset.previewSeq",
            WAIT,
        )
        .await;
    assert!(seq.as_str().unwrap().parse::<u64>().unwrap() >= 1, "{seq}");
    std::fs::write(
        screenshots().join("preview.png"),
        browser.screenshot().await,
    )
    .unwrap();
    // The result takes the preview's place.
    browser
        .wait_for(
            "const c = document.querySelector('.job'); return c.dataset.status === 'finished' \
             && !c.querySelector('img.preview') && !!c.querySelector('.thumb img')",
            WAIT,
        )
        .await;
    let id = browser
        .exec("return document.querySelector('.job').dataset.jobId")
        .await;
    let v = app.status(id.as_str().unwrap()).await;
    assert!(
        v["outputs"][0]["filename"]
            .as_str()
            .unwrap()
            .ends_with(".webp"),
        "saved as the form said: {v}"
    );
}

/// A webhook URL typed into the form goes with the submission; the receiver (which
/// verifies the signature with the Standard Webhooks library) answers 500 once, and
/// the card tells how the webhook went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_sends_a_webhook_and_shows_how_it_went() {
    let standin = StandIn::start();
    let rx = crate::webhooks::Receiver::start();
    let app = TestApp::serve(Backing::Sqlite, &standin, |_| {}).await;
    let browser = Browser::start(1280, 1000).await;
    browser.goto(&app.base).await;
    choose_smoke(&browser).await;
    let hook = browser.find("#webhook-url").await;
    browser.type_into(&hook, &rx.url("/flaky/1")).await;
    let prompt = browser.find("#prompt").await;
    browser.type_into(&prompt, "tell my server").await;
    let generate = browser.find("#generate").await;
    browser.click(&generate).await;
    let line = browser
        .wait_for(
            "const l = document.querySelector('.job .webhook'); \
             return l && !l.hidden && l.textContent.includes('delivered') && l.textContent",
            WAIT,
        )
        .await;
    assert!(
        line.as_str().unwrap().contains("127.0.0.1"),
        "names the receiver: {line}"
    );
    std::fs::write(
        screenshots().join("webhook.png"),
        browser.screenshot().await,
    )
    .unwrap();
    let id = browser
        .exec("return document.querySelector('.job').dataset.jobId")
        .await;
    let seen = rx.of(id.as_str().unwrap()).await;
    assert_eq!(seen.len(), 2, "a 500, then the delivery: {seen:?}");
    assert!(seen.iter().all(|e| e["verified"] == true), "{seen:?}");
}

/// "4 variations" is one click: one batch of four jobs with four seeds, shown
/// as one card whose grid fills with the four pictures; a second batch is
/// cancelled with one button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_makes_four_variations_and_shows_them_as_a_grid() {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(300),
        ..Knobs::default()
    });
    let app = TestApp::serve(Backing::Sqlite, &standin, |_| {}).await;
    let browser = Browser::start(1280, 1000).await;
    browser.goto(&app.base).await;
    choose_smoke(&browser).await;
    let prompt = browser.find("#prompt").await;
    browser.type_into(&prompt, "four foxes").await;
    let variations = browser.find("#variations").await;
    browser.click(&variations).await;
    let imgs = browser
        .wait_for(
            "const c = document.querySelector('.job.batch'); \
             const imgs = c ? [...c.querySelectorAll('.cell img')] : []; \
             return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0) && imgs.map(i => i.alt)",
            WAIT,
        )
        .await;
    let alts: Vec<&str> = imgs
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<&&str> = alts.iter().collect();
    assert_eq!(distinct.len(), 4, "four seeds: {alts:?}");
    let state = browser
        .exec("return document.querySelector('.job.batch .state').textContent")
        .await;
    assert!(state.as_str().unwrap().contains("4 of 4"), "{state}");
    let cancel_shown = browser
        .exec("return getComputedStyle(document.querySelector('.job.batch .cancel')).display")
        .await;
    assert_eq!(cancel_shown, "none", "nothing left to cancel");
    let batch = browser
        .exec("return document.querySelector('.job.batch').dataset.batchId")
        .await;
    let (s, b) = app
        .get(&format!("/api/batches/{}", batch.as_str().unwrap()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["counts"]["finished"], 4, "{b}");
    std::fs::write(screenshots().join("batch.png"), browser.screenshot().await).unwrap();
}
