//! The CLI: the real `studio` binary against a running server.

use std::time::Duration;

use studio_core::config::Role;

use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TempDir, TestApp, studio_bin};

pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) async fn studio(args: &[&str]) -> Run {
    studio_with(args, None).await
}

/// The CLI with `STUDIO_API_KEY` set (or removed).
async fn studio_with(args: &[&str], api_key: Option<&str>) -> Run {
    let mut cmd = tokio::process::Command::new(studio_bin());
    match api_key {
        Some(k) => cmd.env("STUDIO_API_KEY", k),
        None => cmd.env_remove("STUDIO_API_KEY"),
    };
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        cmd.args(args)
            .env_remove("STUDIO_SERVER")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the CLI finishes")
    .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// The files the CLI said it saved (`saved <path>` lines).
fn saved(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("saved "))
        .collect()
}

/// Each saved file holds the bytes the stand-in made under its name.
fn saved_as_made(paths: &[&str], standin: &StandIn) {
    for path in paths {
        let name = std::path::Path::new(path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(
            std::fs::read(path).unwrap(),
            standin.file(name).unwrap(),
            "the bytes the backend made"
        );
    }
}

async fn serve(standin: &StandIn) -> TestApp {
    let url = standin.url();
    TestApp::spawn(Backing::Sqlite, Role::Serve, move |a| a.comfyui = vec![url]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_follows_progress_downloads_the_outputs_and_exits_0() {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(600),
        steps: 6,
        ..Knobs::default()
    });
    let app = serve(&standin).await;
    let out = TempDir::new();
    let r = studio(&[
        "generate",
        "a cyberpunk cat",
        "--workflow",
        "smoke",
        "--seed",
        "7",
        "--param",
        "batch_size=2",
        "--param",
        "width=32",
        "--server",
        &app.base,
        "--out",
        out.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.lines().any(|l| l.starts_with("processing ")),
        "a line per change when not a terminal:\n{}",
        r.stdout
    );
    let files = saved(&r.stdout);
    assert_eq!(files.len(), 2, "{}", r.stdout);
    saved_as_made(&files, &standin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_exits_1_with_its_error_on_stderr() {
    let standin = StandIn::start();
    let app = serve(&standin).await;
    let r = studio(&[
        "generate",
        "doomed",
        "--workflow",
        "smoke",
        "--param",
        "width=8",
        "--param",
        "height=8",
        "--param",
        "blur_radius=31",
        "--server",
        &app.base,
        "--out",
        TempDir::new().path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("failed")
            && r.stderr.contains("ImageBlur")
            && r.stderr.contains("RuntimeError"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn an_unreachable_server_exits_2() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = studio(&[
        "generate",
        "x",
        "--server",
        &format!("http://127.0.0.1:{port}"),
    ])
    .await;
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("cannot reach Studio Core"),
        "{}",
        r.stderr
    );
    let r = studio(&[
        "status",
        "abc",
        "--server",
        &format!("http://127.0.0.1:{port}"),
    ])
    .await;
    assert_eq!(r.code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_exits_2_with_the_servers_reason() {
    let standin = StandIn::start();
    let app = serve(&standin).await;
    let r = studio(&["generate", "x", "--workflow", "nope", "--server", &app.base]).await;
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("unknown workflow \"nope\""),
        "{}",
        r.stderr
    );
    let r = studio(&["generate", "x", "--param", "steps", "--server", &app.base]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("NAME=VALUE"), "{}", r.stderr);
    let r = studio(&["generate"]).await;
    assert_eq!(r.code, 2, "usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_status_cancel_and_jobs() {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_secs(5),
        ..Knobs::default()
    });
    let app = serve(&standin).await;
    let first = studio(&[
        "generate",
        "first",
        "--workflow",
        "smoke",
        "--no-wait",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(first.code, 0);
    let first_id = first.stdout.trim().to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&first_id).unwrap().get_version_num(),
        4
    );
    let r = studio(&[
        "generate",
        "second",
        "--workflow",
        "smoke",
        "--no-wait",
        "--server",
        &app.base,
    ])
    .await;
    let second_id = r.stdout.trim().to_owned();
    let third = studio(&[
        "generate",
        "third",
        "--workflow",
        "smoke",
        "--no-wait",
        "--server",
        &app.base,
    ])
    .await;
    let third_id = third.stdout.trim().to_owned();

    let r = studio(&["status", &third_id, "--server", &app.base]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&third_id) && r.stdout.contains("status    queued"),
        "{}",
        r.stdout
    );

    let r = studio(&["cancel", &third_id, "--server", &app.base]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("cancelled"), "{}", r.stdout);
    let r = studio(&["status", &third_id, "--server", &app.base]).await;
    assert_eq!(r.code, 1, "a failed job's status exits 1");
    assert!(r.stdout.contains("error     cancelled"), "{}", r.stdout);
    let r = studio(&["cancel", &third_id, "--server", &app.base]).await;
    assert_eq!(r.code, 1, "nothing to cancel");
    assert!(r.stderr.contains("nothing to cancel"), "{}", r.stderr);

    let r = studio(&["jobs", "--server", &app.base]).await;
    assert_eq!(r.code, 0);
    for id in [&first_id, &second_id, &third_id] {
        assert!(r.stdout.contains(id.as_str()), "{}", r.stdout);
    }
    let r = studio(&[
        "jobs", "--status", "failed", "--json", "--server", &app.base,
    ])
    .await;
    let page: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let r = studio(&["status", "no-such-job", "--server", &app.base]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no job with id"), "{}", r.stderr);
}

/// With auth on, the CLI sends `STUDIO_API_KEY`: without it the server's 401 is
/// exit 2 with its reason; with it a job runs and its pictures download (through
/// the signed URLs), and `jobs` lists only the key's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_studio_api_key() {
    use studio_core::auth::{AuthMode, KeyLimits, Role as KeyRole};

    let standin = StandIn::start();
    let url = standin.url();
    let app = TestApp::spawn(Backing::Redis, Role::Serve, move |a| {
        a.comfyui = vec![url];
        a.auth = AuthMode::Keys;
    })
    .await;
    let mut secrets = Vec::new();
    for name in ["cli", "other"] {
        secrets.push(app.new_key(name, KeyRole::User, KeyLimits::default()).await);
    }
    let out = TempDir::new();
    let args = [
        "generate",
        "a keyed cat",
        "--workflow",
        "smoke",
        "--priority",
        "low",
        "--server",
        &app.base,
        "--out",
        out.path().to_str().unwrap(),
    ];
    let r = studio_with(&args, None).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    let r = studio_with(&args, Some(&secrets[0])).await;
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let files = saved(&r.stdout);
    assert_eq!(files.len(), 1, "{}", r.stdout);
    assert!(std::fs::metadata(files[0]).unwrap().len() > 0);
    // Another key's job is not in this key's list.
    let r = studio_with(
        &[
            "generate",
            "not mine",
            "--workflow",
            "smoke",
            "--no-wait",
            "--server",
            &app.base,
        ],
        Some(&secrets[1]),
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = studio_with(&["jobs", "--server", &app.base], Some(&secrets[0])).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("a keyed cat"), "{}", r.stdout);
    assert!(!r.stdout.contains("not mine"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_uploads_the_image_and_mask_it_is_given() {
    let standin = StandIn::start();
    let app = serve(&standin).await;
    let dir = TempDir::new();
    let picture = dir.path().join("photo.png");
    let mask = dir.path().join("mask.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([9, 99, 199]))
        .save(&picture)
        .unwrap();
    image::RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]))
        .save(&mask)
        .unwrap();
    let r = studio(&[
        "generate",
        "a red door",
        "--workflow",
        "sd15-inpaint",
        "--image",
        picture.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--param",
        "steps=2",
        "--server",
        &app.base,
        "--out",
        dir.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let sent: Vec<Vec<u8>> = standin
        .input_names()
        .iter()
        .map(|n| standin.input(n).unwrap())
        .collect();
    assert!(
        sent.contains(&std::fs::read(&picture).unwrap()),
        "the picture reached ComfyUI"
    );
    assert!(
        sent.contains(&std::fs::read(&mask).unwrap()),
        "the mask reached ComfyUI"
    );

    let r = studio(&[
        "generate",
        "x",
        "--workflow",
        "smoke-img2img",
        "--image",
        "/etc/hostname",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(r.code, 2, "not a picture: a usage error:\n{}", r.stderr);
    assert!(r.stderr.contains("not a PNG, JPEG or WebP"), "{}", r.stderr);
}

/// `--grid` makes one job per combination as one batch, followed to its end,
/// every picture saved; `--count --no-wait` prints the batch and its jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_makes_batches_with_count_and_grid() {
    let standin = StandIn::start();
    let app = serve(&standin).await;
    let out = TempDir::new();
    let r = studio(&[
        "generate",
        "a grid of cats",
        "--workflow",
        "smoke",
        "--grid",
        "width=32,48",
        "--grid",
        "blur_radius=1,2",
        "--server",
        &app.base,
        "--out",
        out.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("4 jobs"), "{}", r.stdout);
    let files = saved(&r.stdout);
    assert_eq!(files.len(), 4, "{}", r.stdout);
    saved_as_made(&files, &standin);
    let r = studio(&[
        "generate",
        "three",
        "--workflow",
        "smoke",
        "--count",
        "3",
        "--no-wait",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "the batch id, then its 3 jobs: {}",
        r.stdout
    );
    let (s, b) = app.get(&format!("/api/batches/{}", lines[0])).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["total"], 3);
    // Over the server's bound: refused, with its reason.
    let r = studio(&[
        "generate",
        "x",
        "--workflow",
        "smoke",
        "--count",
        "65",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("count"), "{}", r.stderr);
}
