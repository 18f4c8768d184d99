//! Many machines under fire: six hosts made of network namespaces that share no
//! disk — Redis and an S3 server (s3s-fs) on one, two `studio api` on two others,
//! three `studio worker` on three more, each with a ComfyUI stand-in beside it on
//! its own loopback. 500 jobs go in through both APIs while the test kills workers
//! with SIGKILL, kills Redis and restarts it from its append-only file, and cuts one
//! worker's link for longer than its lease.
//!
//! Then: every job ended once (finished, or failed with a reason) and both APIs say
//! the same; every picture comes through either API with the same bytes; a prompt
//! that ran twice ran first on a worker that lost its lease (killed or cut off);
//! nothing is left in the processing lists, the queue or the lanes. Figures printed.
//! Without network namespaces the test fails; it never passes silently.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::Commands;
use serde_json::{Value, json};

use crate::support::netns::{Host, Net};
use crate::support::proc::Proc;
use crate::support::standin::{Knobs, StandIn};
use crate::support::{KillOnDrop, TempDir, s3, studio_bin};

const JOBS: usize = 500;
const LEASE: Duration = Duration::from_secs(2);
const BUCKET: &str = "chaos";

struct Redis {
    child: Option<KillOnDrop>,
    host: Host,
    dir: TempDir,
}

impl Redis {
    fn boot(&mut self) {
        let child = self
            .host
            .command("redis-server")
            .args(["--bind", &self.host.ip.to_string(), "--port", "6379"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        self.child = Some(KillOnDrop(child));
        wait_port(&format!("{}:6379", self.host.ip));
    }

    fn kill9(&mut self) {
        // `ip netns exec` becomes redis-server itself: this is its pid.
        self.child.take();
    }
}

fn wait_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200))
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing answers on {addr}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn studio_on(host: &Host, role: &str, env: &[(&str, String)], log: std::path::PathBuf) -> Proc {
    Proc::spawn_cmd(host.command(studio_bin()), &[role], env, log)
}

/// A worker's disruption: from `start` (killed or cut off) to `end` (back).
#[derive(Clone, Copy, Debug)]
struct Outage {
    worker: usize,
    start: Instant,
    end: Instant,
}

struct Submitted {
    id: String,
    accepted: Instant,
    retries: u32,
}

async fn submit_until_accepted(
    http: reqwest::Client,
    apis: Arc<Vec<String>>,
    i: usize,
) -> Submitted {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut retries = 0;
    let mut last = String::new();
    loop {
        // Alternate APIs; a retry goes to the other one, as a load balancer would.
        let base = &apis[(i + retries as usize) % apis.len()];
        let res = http
            .post(format!("{base}/api/generate"))
            .header("Idempotency-Key", format!("chaos-{i}"))
            .json(&json!({"prompt": format!("chaos {i}"), "workflow": "smoke"}))
            .send()
            .await;
        if let Err(e) = &res {
            last = format!("{base}: {e:?}");
        }
        if let Ok(res) = res {
            let code = res.status().as_u16();
            let v = res.json::<Value>().await.unwrap_or(Value::Null);
            last = format!("{base}: {code} {v}");
            if (200..300).contains(&code)
                && let Some(id) = v["job_id"].as_str()
            {
                return Submitted {
                    id: id.to_owned(),
                    accepted: Instant::now(),
                    retries,
                };
            }
            assert!(
                code == 0 || code >= 500 || code == 409 || code == 429,
                "submission {i} refused with {code}: {v}"
            );
        }
        retries += 1;
        assert!(
            Instant::now() < deadline,
            "submission {i} never accepted; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last lines of every log, for a failure message.
fn log_tails(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    for p in names {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("== {}\n", p.display()));
        for l in &lines[lines.len().saturating_sub(15)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    crate::percentile(sorted, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_jobs_on_six_hosts_survive_killed_workers_a_redis_restart_and_a_cut_link() {
    let _one = crate::exclusive().await;
    let net = Net::new(&["store", "api1", "api2", "w1", "w2", "w3"]).unwrap_or_else(|e| {
        panic!("the chaos test needs network namespaces (root, iproute2, veth and bridge): {e}")
    });
    let store = net.host("store").clone();
    let started = Instant::now();

    // The store host: Redis with an fsync per write, and S3.
    let mut redis = Redis {
        child: None,
        host: store.clone(),
        dir: TempDir::new(),
    };
    redis.boot();
    let s3_root = TempDir::new();
    std::fs::create_dir_all(s3_root.path().join(BUCKET)).unwrap();
    let _s3 = KillOnDrop(
        store
            .command(s3::binary())
            .args(["--host", &store.ip.to_string(), "--port", "9000"])
            .args([
                "--access-key",
                s3::ACCESS_KEY,
                "--secret-key",
                s3::SECRET_KEY,
            ])
            .arg(s3_root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts"),
    );
    wait_port(&format!("{}:9000", store.ip));

    let common = |data: &TempDir| -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_URL", format!("redis://{}:6379/", store.ip)),
            ("STUDIO_STORAGE", format!("s3://{BUCKET}/farm")),
            ("AWS_ENDPOINT_URL", format!("http://{}:9000", store.ip)),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY.into()),
            ("STUDIO_AUTH", "off".into()),
            ("STUDIO_DATA_DIR", data.path().display().to_string()),
            ("STUDIO_WORKER_TTL", format!("{}s", LEASE.as_secs())),
            ("STUDIO_HEALTH_INTERVAL", "200ms".into()),
            ("STUDIO_POLL_INTERVAL", "300ms".into()),
            ("STUDIO_RETRY_BASE", "100ms".into()),
            ("STUDIO_RETRY_MAX", "1s".into()),
            ("STUDIO_MAX_ATTEMPTS", "8".into()),
        ]
    };
    // Logs stay after the run (the next run clears them), for a failure's story.
    let logs = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();

    // Two APIs, each on its own host and disk.
    let mut apis = Vec::new();
    let mut _api_procs = Vec::new();
    for name in ["api1", "api2"] {
        let host = net.host(name);
        let data = TempDir::new();
        let mut env = common(&data);
        env.push(("STUDIO_HOST", host.ip.to_string()));
        env.push(("PORT", "5000".into()));
        let p = studio_on(host, "api", &env, logs.join(format!("{name}.log")));
        let url = p.wait_listening();
        assert_eq!(url, format!("http://{}:5000", host.ip));
        apis.push(url);
        _api_procs.push((p, data));
    }

    // Three workers, each with its ComfyUI beside it (its own loopback).
    let knobs = Knobs {
        duration: Duration::from_millis(120),
        steps: 2,
        ..Knobs::default()
    };
    let hosts: Vec<Host> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| net.host(n).clone())
        .collect();
    let standins: Vec<StandIn> = hosts
        .iter()
        .map(|h| StandIn::start_in_netns(&h.name, knobs.clone()))
        .collect();
    let worker_data: Vec<TempDir> = hosts.iter().map(|_| TempDir::new()).collect();
    let worker_env = |w: usize| {
        let mut env = common(&worker_data[w]);
        env.push(("COMFYUI_URL", standins[w].url()));
        env
    };
    let mut boots = [0usize; 3];
    let mut spawn_worker = |w: usize| {
        boots[w] += 1;
        studio_on(
            &hosts[w],
            "worker",
            &worker_env(w),
            logs.join(format!("w{}-{}.log", w + 1, boots[w])),
        )
    };
    let mut workers: Vec<Proc> = (0..3).map(&mut spawn_worker).collect();

    // 500 submissions over about 20 s, alternating APIs.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let api_list = Arc::new(apis.clone());
    let t0 = Instant::now();
    let submitter = {
        let http = http.clone();
        let api_list = api_list.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(JOBS);
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            for i in 0..JOBS {
                tick.tick().await;
                tasks.push(tokio::spawn(submit_until_accepted(
                    http.clone(),
                    api_list.clone(),
                    i,
                )));
            }
            let mut out = Vec::with_capacity(JOBS);
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
    };

    // The chaos, while the submissions go on.
    let mut outages: Vec<Outage> = Vec::new();
    let sleep = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
    sleep(3000).await;
    let start = Instant::now();
    workers[0].kill9();
    sleep(1500).await;
    workers[0] = spawn_worker(0);
    outages.push(Outage {
        worker: 0,
        start,
        end: Instant::now(),
    });

    sleep(2000).await;
    let redis_down = Instant::now();
    redis.kill9();
    sleep(1000).await;
    redis.boot();
    let redis_outage = redis_down.elapsed();

    sleep(2000).await;
    let start = Instant::now();
    net.cut(&hosts[1]);
    sleep((LEASE * 3).as_millis() as u64).await;
    net.restore(&hosts[1]);
    outages.push(Outage {
        worker: 1,
        start,
        end: Instant::now(),
    });

    sleep(2000).await;
    let start = Instant::now();
    workers[2].kill9();
    sleep(800).await;
    workers[2] = spawn_worker(2);
    outages.push(Outage {
        worker: 2,
        start,
        end: Instant::now(),
    });

    let submitted = submitter.await.unwrap();
    let submit_time = t0.elapsed();
    let retries: u32 = submitted.iter().map(|s| s.retries).sum();
    let mut ids: Vec<&str> = submitted.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), JOBS, "one job per submission, retries included");

    // Wait for every job to end.
    let mut finals: HashMap<String, (Value, Instant)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while finals.len() < JOBS {
        let pending: Vec<&Submitted> = submitted
            .iter()
            .filter(|s| !finals.contains_key(&s.id))
            .collect();
        let seen: Vec<(String, Value)> = futures_util::stream::iter(pending)
            .enumerate()
            .map(|(n, s)| {
                let http = http.clone();
                let base = apis[n % 2].clone();
                async move {
                    let v = http
                        .get(format!("{base}/api/status/{}", s.id))
                        .send()
                        .await
                        .ok()?
                        .json::<Value>()
                        .await
                        .ok()?;
                    Some((s.id.clone(), v))
                }
            })
            .buffer_unordered(16)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        let mut waiting = Vec::new();
        for (id, v) in seen {
            if v["status"] == "finished" || v["status"] == "failed" {
                finals.insert(id, (v, Instant::now()));
            } else {
                waiting.push(v);
            }
        }
        if finals.len() < JOBS {
            assert!(
                Instant::now() < deadline,
                "{} of {JOBS} jobs never ended ({:?}); logs:\n{}",
                JOBS - finals.len(),
                waiting.iter().take(5).collect::<Vec<_>>(),
                log_tails(&logs)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let drain_time = t0.elapsed();

    // Both APIs tell the same story, and every picture comes through both.
    let mut finished = 0;
    let mut failed = Vec::new();
    let mut picture_bytes = 0u64;
    for s in &submitted {
        let (v, _) = &finals[&s.id];
        let mut views = Vec::new();
        for base in &apis {
            let w: Value = http
                .get(format!("{base}/api/status/{}", s.id))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            views.push(w);
        }
        for w in &views {
            assert_eq!(w["status"], v["status"], "{}: {w} vs {v}", s.id);
            assert_eq!(w["outputs"], v["outputs"], "{}", s.id);
        }
        if v["status"] == "failed" {
            let reason = v["error"].as_str().unwrap_or("");
            assert!(!reason.is_empty(), "a failed job says why: {v}");
            failed.push(reason.to_owned());
            continue;
        }
        finished += 1;
        let outputs = v["outputs"].as_array().expect("outputs");
        assert_eq!(outputs.len(), 1, "one picture, recorded once: {v}");
        let url = v["image_url"].as_str().expect("image_url");
        let mut got = Vec::new();
        for base in &apis {
            let res = http.get(format!("{base}{url}")).send().await.unwrap();
            assert_eq!(res.status(), 200, "{url} through {base}");
            got.push(res.bytes().await.unwrap());
        }
        assert!(got[0].starts_with(b"\x89PNG"), "{url} is a PNG");
        assert_eq!(got[0], got[1], "{url}: the same bytes through both APIs");
        picture_bytes += got[0].len() as u64;
    }

    // A prompt that ran twice first ran on a worker that lost its lease.
    let mut by_job: HashMap<String, Vec<(usize, Instant)>> = HashMap::new();
    for (w, s) in standins.iter().enumerate() {
        for (id, at) in s.submissions() {
            by_job.entry(id).or_default().push((w, at));
        }
    }
    let mut prompts = 0;
    let mut repeated = 0;
    for s in &submitted {
        let mut runs = by_job.remove(&s.id).unwrap_or_default();
        prompts += runs.len();
        let (v, _) = &finals[&s.id];
        if v["status"] == "finished" {
            assert!(!runs.is_empty(), "{} finished without running: {v}", s.id);
        }
        if runs.len() < 2 {
            continue;
        }
        repeated += 1;
        runs.sort_by_key(|r| r.1);
        runs.pop();
        for (w, at) in runs {
            let explained = outages.iter().any(|o| {
                o.worker == w
                    && at <= o.end
                    && o.start.saturating_duration_since(at) < Duration::from_secs(15)
            });
            assert!(
                explained,
                "{} ran twice, first on worker {} which did not lose its lease then ({:?} into the run); outages {outages:?}",
                s.id,
                w + 1,
                at - t0
            );
        }
    }
    assert!(by_job.is_empty(), "prompts no job asked for: {by_job:?}");

    // What a client sees: no job is listed as waiting or running. A listing also
    // moves an index entry left stale by a crash between a job's two scripts (its
    // hash written, its listing not yet: a worker killed, or Redis restarted from
    // an AOF that ends between them) to where the job is now: the documented
    // repair (docs/decisions.md), so the raw indexes below are checked after it.
    for status in ["queued", "processing"] {
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut url = format!("{}/api/jobs?status={status}&limit=100", apis[0]);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let v: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            assert_eq!(
                v["jobs"].as_array().map(Vec::len),
                Some(0),
                "no job is listed as {status}: {v}"
            );
            cursor = v["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
    }

    // Nothing left behind in the queue's structures.
    let mut c = redis::Client::open(format!("redis://{}:6379/", store.ip))
        .unwrap()
        .get_connection()
        .unwrap();
    let lists: Vec<String> = c.keys("{job_queue}:processing:*").unwrap();
    for l in &lists {
        let n: i64 = c.llen(l).unwrap();
        assert_eq!(n, 0, "{l} is empty");
    }
    let queue: i64 = c.llen("job_queue").unwrap();
    let pending: i64 = c.zcard("{job_queue}:pending").unwrap();
    let lane_entries: i64 = c.hlen("{job_queue}:lane-entries").unwrap();
    let delayed: i64 = c.zcard("{job_queue}:delayed").unwrap();
    let still_queued: i64 = c.zcard("{job_queue}:status:queued").unwrap();
    let still_running: i64 = c.zcard("{job_queue}:status:processing").unwrap();
    let stuck: Vec<String> = c.zrange("{job_queue}:status:processing", 0, -1).unwrap();
    let stuck: Vec<(String, HashMap<String, String>)> = stuck
        .into_iter()
        .map(|id| {
            let h = c.hgetall(format!("job:status:{id}")).unwrap();
            (id, h)
        })
        .collect();
    assert_eq!(
        (
            queue,
            pending,
            lane_entries,
            delayed,
            still_queued,
            still_running
        ),
        (0, 0, 0, 0, 0, 0),
        "queue, pending, lane entries, delayed, queued and processing indexes are empty; listed as processing: {stuck:?}"
    );
    let running: HashMap<String, i64> = c.hgetall("{job_queue}:running").unwrap();
    assert!(
        running.values().all(|n| *n == 0),
        "no owner has jobs counted as running: {running:?}"
    );
    for s in &submitted {
        let (v, _) = &finals[&s.id];
        let mut found = Vec::new();
        for st in ["queued", "processing", "finished", "failed"] {
            let score: Option<f64> = c
                .zscore(format!("{{job_queue}}:status:{st}"), &s.id)
                .unwrap();
            if score.is_some() {
                found.push(st);
            }
        }
        assert_eq!(
            found,
            vec![v["status"].as_str().unwrap()],
            "{} is listed under its final status only",
            s.id
        );
    }

    let mut latency: Vec<f64> = submitted
        .iter()
        .map(|s| (finals[&s.id].1 - s.accepted).as_secs_f64() * 1000.0)
        .collect();
    latency.sort_by(f64::total_cmp);
    let per_worker: Vec<usize> = standins.iter().map(|s| s.submissions().len()).collect();
    println!(
        "chaos: {JOBS} jobs on 6 hosts (2 api, 3 workers, redis+s3); submitted in {:.1} s with {retries} retried requests; all ended {:.1} s after the first submission",
        submit_time.as_secs_f64(),
        drain_time.as_secs_f64()
    );
    println!(
        "chaos: finished {finished}, failed {} {:?}; prompts run {prompts} (per worker {per_worker:?}), jobs run twice {repeated}, all on a worker that lost its lease",
        failed.len(),
        failed.iter().take(3).collect::<Vec<_>>()
    );
    println!(
        "chaos: outages: worker 1 SIGKILL {:.1} s, redis SIGKILL+AOF restart {:.1} s, worker 2 cut off {:.1} s (lease {} s), worker 3 SIGKILL {:.1} s",
        (outages[0].end - outages[0].start).as_secs_f64(),
        redis_outage.as_secs_f64(),
        (outages[1].end - outages[1].start).as_secs_f64(),
        LEASE.as_secs(),
        (outages[2].end - outages[2].start).as_secs_f64()
    );
    println!(
        "chaos: accepted→seen final (polled every 200 ms) p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {finished} pictures ({} KiB) identical through both APIs; test took {:.1} s",
        percentile(&latency, 50.0),
        percentile(&latency, 99.0),
        latency.last().copied().unwrap_or(0.0),
        picture_bytes / 1024,
        started.elapsed().as_secs_f64()
    );
    drop(workers);
}
