//! Usage metering and budgets, on both stores: 50 jobs from three keys on two
//! backends of known duration, the serving process SIGKILLed mid-job and
//! replaced: each key's GPU-seconds equal the stand-ins' own log of run time
//! within 2 %, no job counted twice; CSV and JSON agree; a key with a 2-second
//! daily budget on 1-second jobs is refused after its second job, across two
//! API processes; each job shows its timings and, while queued, an estimate.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use studio_core::auth::{AuthMode, KeyLimits, Role};
use studio_core::config::Role as ServerRole;

use crate::support::proc::Proc;
use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, RedisPrefix, TempDir, TestApp, studio_bin};

/// The environment of `studio` processes on this store.
fn store_env(
    kind: Backing,
    data: &TempDir,
    redis: &Option<RedisPrefix>,
) -> Vec<(&'static str, String)> {
    let mut env = vec![("STUDIO_DATA_DIR", data.path().display().to_string())];
    if kind == Backing::Redis {
        let r = redis.as_ref().unwrap();
        env.push(("REDIS_URL", r.url.clone()));
        env.push(("STUDIO_REDIS_PREFIX", r.prefix.clone()));
    }
    env
}

/// `studio keys create` on the store; the secret.
fn make_key(env: &[(&'static str, String)], name: &str, role: &str) -> String {
    let out = Command::new(studio_bin())
        .args(["keys", "create", "--name", name, "--role", role])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// A key's id, from its secret (`sk_<id>_<secret>`).
fn key_id(secret: &str) -> String {
    secret
        .trim_start_matches("sk_")
        .split('_')
        .next()
        .unwrap()
        .to_owned()
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn accounts_match_the_backends_own_run_time_through_a_kill(kind: Backing) {
    let a = StandIn::start_with(Knobs {
        duration: Duration::from_millis(300),
        ..Knobs::default()
    });
    let b = StandIn::start_with(Knobs {
        duration: Duration::from_millis(500),
        ..Knobs::default()
    });
    let data = TempDir::new();
    let redis = (kind == Backing::Redis).then(RedisPrefix::new);
    let store = store_env(kind, &data, &redis);
    let admin = make_key(&store, "ops", "admin");
    let users: Vec<String> = (0..3)
        .map(|i| make_key(&store, &format!("user{i}"), "user"))
        .collect();
    let mut env = store.clone();
    env.extend([
        ("COMFYUI_URL", format!("{},{}", a.url(), b.url())),
        ("PORT", "0".to_owned()),
        ("STUDIO_AUTH", "keys".into()),
        ("STUDIO_WORKER_TTL", "1s".into()),
        ("STUDIO_HEALTH_INTERVAL", "200ms".into()),
        ("STUDIO_POLL_INTERVAL", "300ms".into()),
    ]);
    let mut first = Proc::spawn(&["serve"], &env, data.path().join("first.log"));
    let base = first.wait_listening();
    let http = reqwest::Client::new();
    let mut owner_of: HashMap<String, String> = HashMap::new();
    for i in 0..50 {
        let key = &users[i % 3];
        let (s, v) = call(
            &http,
            reqwest::Method::POST,
            format!("{base}/api/generate"),
            key,
            Some(json!({"prompt": format!("job {i}"), "workflow": "smoke", "seed": i})),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        owner_of.insert(v["job_id"].as_str().unwrap().to_owned(), key_id(key));
    }
    // Kill the serving process while both backends run a prompt of ours.
    let end = Instant::now() + Duration::from_secs(20);
    while a.running().is_none() || b.running().is_none() || a.runs().len() + b.runs().len() < 4 {
        assert!(Instant::now() < end, "the backends never got busy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill9();
    let second = Proc::spawn(&["serve"], &env, data.path().join("second.log"));
    let base = second.wait_listening();
    let end = Instant::now() + Duration::from_secs(90);
    for id in owner_of.keys() {
        loop {
            let (_, v) = call(
                &http,
                reqwest::Method::GET,
                format!("{base}/api/status/{id}"),
                &admin,
                None,
            )
            .await;
            if v["status"] == "finished" {
                break;
            }
            assert!(v["status"] != "failed", "{v}");
            assert!(Instant::now() < end, "{v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The stand-ins' own log: each prompt's run, by the job's key.
    let mut truth: HashMap<String, f64> = HashMap::new();
    let mut runs = 0;
    for r in a.runs().into_iter().chain(b.runs()) {
        if let Some(owner) = owner_of.get(&r.prompt_id) {
            *truth.entry(owner.clone()).or_default() += (r.ended - r.started).as_secs_f64();
            runs += 1;
        }
    }
    assert_eq!(runs, 50, "each job ran once on a GPU");
    let (s, report) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/usage?group_by=key"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(
        report["total"]["jobs"], 50,
        "nothing counted twice: {report}"
    );
    assert_eq!(report["total"]["attempts"], 50, "{report}");
    assert_eq!(report["total"]["finished"], 50);
    for g in report["groups"].as_array().unwrap() {
        let key = g["group"].as_str().unwrap();
        let want = truth[key];
        let got = g["gpu_seconds"].as_f64().unwrap();
        eprintln!(
            "usage {key}: metered {got:.3} GPU-s, the stand-ins ran {want:.3} s ({:+.2} %)",
            (got - want) / want * 100.0
        );
        assert!(
            (got - want).abs() <= want * 0.02,
            "{key}: {got} GPU-s metered, {want} s run: {report}"
        );
        assert!(g["gpus"].is_array());
    }
    // By backend: both, their shares.
    let (_, by_backend) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/usage?group_by=backend"),
        &admin,
        None,
    )
    .await;
    let names: Vec<&str> = by_backend["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{by_backend}");
    // A key sees its own usage only.
    let (s, mine) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/usage"),
        &users[0],
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(mine["groups"].as_array().unwrap().len(), 1);
    assert_eq!(mine["groups"][0]["group"], key_id(&users[0]));
    let (s, _) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/usage?key={}", key_id(&users[1])),
        &users[0],
        None,
    )
    .await;
    assert_eq!(s, 403);
    // CSV says the same.
    let csv = http
        .get(format!("{base}/api/usage?group_by=key"))
        .bearer_auth(&admin)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    let total = csv.lines().last().unwrap();
    assert!(total.starts_with("total,50,50,0,0,50,"), "{csv}");
    // And the CLI.
    let out = Command::new(studio_bin())
        .args(["usage", "--group-by", "day", "--server", &base, "--json"])
        .env("STUDIO_API_KEY", &admin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"]["jobs"], 50);
}

async fn a_budget_refuses_once_spent_across_two_api_processes(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(1000),
        ..Knobs::default()
    });
    let one = TestApp::serve(kind, &standin, |a| a.auth = AuthMode::Keys).await;
    let two = match kind {
        Backing::Redis => {
            one.spawn_beside(ServerRole::Api, |a| a.auth = AuthMode::Keys)
                .await
        }
        Backing::Sqlite => {
            TestApp::spawn_with(kind, ServerRole::Api, None, one.dir.clone(), |a| {
                a.auth = AuthMode::Keys
            })
            .await
        }
    };
    let key = one
        .new_key(
            "metered",
            Role::User,
            KeyLimits {
                gpu_seconds_per_day: Some(2),
                ..KeyLimits::default()
            },
        )
        .await;
    let admin = one.new_key("ops", Role::Admin, KeyLimits::default()).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (i, app) in [&one, &two].into_iter().enumerate() {
        let (s, v) = call(
            &http,
            reqwest::Method::POST,
            app.url("/api/generate"),
            &key,
            Some(json!({"prompt": format!("second {i}"), "workflow": "smoke"})),
        )
        .await;
        assert_eq!(s, 202, "job {i} is within the budget: {v}");
        let id = v["job_id"].as_str().unwrap().to_owned();
        one.wait_for_as(Some(&key), &id, Duration::from_secs(20), |v| {
            v["status"] == "finished"
        })
        .await;
        ids.push(id);
    }
    for app in [&one, &two] {
        let res = http
            .post(app.url("/api/generate"))
            .bearer_auth(&key)
            .json(&json!({"prompt": "third", "workflow": "smoke"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 429);
        let retry: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (1..=86_400).contains(&retry),
            "until the UTC day turns: {retry}"
        );
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["code"], "budget-exhausted", "{v}");
    }
    // A batch too, and other keys are not affected.
    let (s, v) = call(
        &http,
        reqwest::Method::POST,
        two.url("/api/batches"),
        &key,
        Some(json!({"prompt": "more", "workflow": "smoke", "count": 2})),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (429, Some("budget-exhausted")),
        "{v}"
    );
    let (s, _) = call(
        &http,
        reqwest::Method::POST,
        two.url("/api/generate"),
        &admin,
        Some(json!({"prompt": "ops", "workflow": "smoke"})),
    )
    .await;
    assert_eq!(s, 202);
    // Spend against budget on /metrics.
    let metrics = http
        .get(one.url("/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let id = key_id(&key);
    let used = metrics
        .lines()
        .find(|l| {
            l.starts_with("studio_key_gpu_seconds{")
                && l.contains(&id)
                && l.contains("window=\"day\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let used: f64 = used.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(used >= 2.0, "{used}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("studio_key_gpu_budget_seconds{")
                && l.contains(&id)
                && l.ends_with(" 2.0")),
        "{metrics}"
    );
    // Raising the budget lets it submit again at once.
    let (s, _) = call(
        &http,
        reqwest::Method::PATCH,
        one.url(&format!("/api/keys/{id}")),
        &admin,
        Some(json!({"gpu_seconds_per_day": 100})),
    )
    .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s, v) = call(
        &http,
        reqwest::Method::POST,
        one.url("/api/generate"),
        &key,
        Some(json!({"prompt": "again", "workflow": "smoke"})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
}

async fn jobs_show_their_timings_and_an_estimate(kind: Backing) {
    let standin = StandIn::start_with(Knobs {
        duration: Duration::from_millis(400),
        ..Knobs::default()
    });
    let app = TestApp::serve(kind, &standin, |_| {}).await;
    let id = app
        .submit(json!({"prompt": "timed", "workflow": "smoke"}))
        .await;
    let done = app.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(done["queued_at"], done["created_at"]);
    let started = done["started_at"].as_str().expect("started_at");
    assert!(started >= done["created_at"].as_str().unwrap(), "{done}");
    assert_eq!(done["ended_at"], done["updated_at"]);
    let ran = done["run_seconds"].as_f64().unwrap();
    assert!((0.4..5.0).contains(&ran), "{done}");
    // Queued behind others: an estimate from the recent run time.
    app.post_json("/api/admin/pause", &json!({})).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            app.submit(json!({"prompt": format!("wait {i}"), "workflow": "smoke"}))
                .await,
        );
    }
    let first = app.status(&ids[0]).await;
    let last = app.status(&ids[3]).await;
    assert!(
        first.get("started_at").is_none() && first.get("ended_at").is_none(),
        "{first}"
    );
    let (e0, e3) = (
        first["eta_seconds"].as_u64().expect("an estimate"),
        last["eta_seconds"].as_u64().expect("an estimate"),
    );
    assert!(e3 > e0, "{e0} < {e3}");
    assert!((1..=10).contains(&e3), "three jobs of ~0.4 s ahead: {e3}");
    app.post_json("/api/admin/resume", &json!({})).await;
    for id in &ids {
        app.wait_final(id, Duration::from_secs(20)).await;
    }
}

both_stores!(
    accounts_match_the_backends_own_run_time_through_a_kill,
    a_budget_refuses_once_spent_across_two_api_processes,
    jobs_show_their_timings_and_an_estimate,
);
