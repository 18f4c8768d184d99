//! Live events over SSE: a job's stream (snapshot, then every change, ending after
//! the final state), reconnects, the all-jobs stream, and events crossing processes
//! through Redis.

use std::time::Duration;

use serde_json::json;
use studio_core::config::Role;

use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, SseReader, TestApp};

const EV: Duration = Duration::from_secs(15);

async fn serve(kind: Backing, standin: &StandIn) -> TestApp {
    let url = standin.url();
    TestApp::spawn(kind, Role::Serve, move |a| a.comfyui = vec![url]).await
}

async fn a_job_stream_gives_a_snapshot_then_every_change_then_ends(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(1500),
        steps: 10,
        ..Knobs::default()
    });
    let app = serve(kind, &standin).await;
    let id = app
        .submit(json!({"prompt": "watched", "workflow": "smoke"}))
        .await;
    let (code, mut sse) =
        SseReader::open(&app.http, &app.url(&format!("/api/jobs/{id}/events")), None).await;
    assert_eq!(code, 200);
    let mut seen = Vec::new();
    while let Some(ev) = sse.next_job(EV).await {
        assert_eq!(ev.event, "job");
        let v = ev.json();
        assert_eq!(v["job_id"], id.as_str());
        seen.push((
            ev.id.parse::<u64>().unwrap(),
            v["status"].as_str().unwrap().to_owned(),
            v["progress"].as_u64().unwrap(),
            v,
        ));
    }
    let (_, first_status, _, _) = &seen[0];
    assert!(
        first_status == "queued" || first_status == "processing",
        "a snapshot first: {first_status}"
    );
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "revisions rise");
    let progress: Vec<u64> = seen
        .iter()
        .filter(|s| s.1 == "processing")
        .map(|s| s.2)
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {progress:?}"
    );
    assert!(
        progress.iter().filter(|p| **p > 0 && **p < 100).count() >= 2,
        "progress rises step by step: {progress:?}"
    );
    let last = &seen.last().unwrap().3;
    assert_eq!(last["status"], "finished");
    assert_eq!(last["progress"], 100);
    assert_eq!(last["outputs"].as_array().unwrap().len(), 1);
    assert!(last["image_url"].as_str().unwrap().starts_with("/images/"));
}

async fn a_stream_reopened_mid_job_still_sees_the_end(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(1500),
        steps: 10,
        ..Knobs::default()
    });
    let app = serve(kind, &standin).await;
    let id = app
        .submit(json!({"prompt": "reconnect", "workflow": "smoke"}))
        .await;
    let url = app.url(&format!("/api/jobs/{id}/events"));
    let (_, mut sse) = SseReader::open(&app.http, &url, None).await;
    let mut last_id = String::new();
    while let Some(ev) = sse.next_job(EV).await {
        last_id = ev.id.clone();
        if ev.json()["progress"].as_u64().unwrap() > 0 {
            break;
        }
    }
    drop(sse);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, mut again) = SseReader::open(&app.http, &url, Some(&last_id)).await;
    let first = again.next_job(EV).await.expect("a fresh snapshot");
    assert!(first.id.parse::<u64>().unwrap() >= last_id.parse::<u64>().unwrap());
    let mut last = first.json();
    while let Some(ev) = again.next_job(EV).await {
        last = ev.json();
    }
    assert_eq!(last["status"], "finished", "{last}");
}

async fn a_finished_jobs_stream_sends_its_snapshot_and_ends(kind: Backing) {
    let standin = StandIn::start();
    let app = serve(kind, &standin).await;
    let id = app
        .submit(json!({"prompt": "done already", "workflow": "smoke"}))
        .await;
    app.wait_final(&id, Duration::from_secs(10)).await;
    let (_, mut sse) =
        SseReader::open(&app.http, &app.url(&format!("/api/jobs/{id}/events")), None).await;
    let ev = sse.next_job(EV).await.unwrap();
    assert_eq!(ev.json()["status"], "finished");
    assert!(
        sse.next_job(EV).await.is_none(),
        "the stream ends after the final state"
    );
    let (code, _) = SseReader::open(
        &app.http,
        &app.url(&format!("/api/jobs/{}/events", uuid::Uuid::new_v4())),
        None,
    )
    .await;
    assert_eq!(code, 404);
}

async fn the_all_jobs_stream_shows_every_jobs_changes(kind: Backing) {
    let standin = StandIn::start();
    let app = serve(kind, &standin).await;
    let (_, mut sse) = SseReader::open(&app.http, &app.url("/api/events"), None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = app
        .submit(json!({"prompt": "a", "workflow": "smoke"}))
        .await;
    let b = app
        .submit(json!({"prompt": "b", "workflow": "smoke"}))
        .await;
    let mut finished = std::collections::BTreeSet::new();
    while finished.len() < 2 {
        let ev = sse.next_job(EV).await.expect("events");
        let v = ev.json();
        if v["status"] == "finished" {
            finished.insert(v["job_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(finished, [a, b].into_iter().collect());
}

both_stores!(
    a_job_stream_gives_a_snapshot_then_every_change_then_ends,
    a_stream_reopened_mid_job_still_sees_the_end,
    a_finished_jobs_stream_sends_its_snapshot_and_ends,
    the_all_jobs_stream_shows_every_jobs_changes,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_job_run_by_one_process_streams_on_another() {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(800),
        ..Knobs::default()
    });
    let api = TestApp::spawn(Backing::Redis, Role::Api, |_| {}).await;
    let url = standin.url();
    let worker = api
        .spawn_beside(Role::Worker, move |a| {
            a.comfyui = vec![url];
        })
        .await;
    let id = api
        .submit(json!({"prompt": "across processes", "workflow": "smoke"}))
        .await;
    let (_, mut sse) =
        SseReader::open(&api.http, &api.url(&format!("/api/jobs/{id}/events")), None).await;
    let mut statuses = Vec::new();
    while let Some(ev) = sse.next_job(EV).await {
        statuses.push(ev.json()["status"].as_str().unwrap().to_owned());
    }
    assert!(statuses.contains(&"processing".to_owned()), "{statuses:?}");
    assert_eq!(statuses.last().unwrap(), "finished");
    worker.stop().await;
}
