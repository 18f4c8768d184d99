//! `studio admin pause|resume|drain|dead|requeue|retry`: steering the queue over
//! the server's API (an admin key, or a server with auth off).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::client::{Client, FAILED, Fail, ServerUrl, finish, server_error};

/// `studio admin`.
#[derive(Args, Clone, Debug)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub action: AdminAction,
    #[command(flatten)]
    pub server: ServerUrl,
}

#[derive(Subcommand, Clone, Debug)]
pub enum AdminAction {
    /// Pauses the farm (or one backend): nothing new starts; running jobs
    /// finish; submissions still queue.
    Pause {
        /// A backend's URL, as `/health` names it (default: the whole farm).
        #[arg(long)]
        backend: Option<String>,
    },
    /// Resumes the farm (or one backend).
    Resume {
        #[arg(long)]
        backend: Option<String>,
    },
    /// Pauses, then waits until nothing runs (exit 0), or `--timeout` passes
    /// with jobs still running (exit 1); it stays paused.
    Drain {
        #[arg(long)]
        backend: Option<String>,
        /// How long to wait, e.g. `10m` (at most 1 h).
        #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
        timeout: Duration,
    },
    /// Shows what is paused.
    Paused,
    /// Lists the dead letters (jobs that ran out of attempts), newest first.
    Dead {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Requeues dead letters as new jobs (`retry_of` recorded): these job ids,
    /// or the newest `--limit`.
    Requeue {
        job_ids: Vec<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Runs a failed job again as a new job; prints its id.
    Retry { job_id: String },
}

/// `studio admin …`.
pub async fn admin(a: AdminArgs) -> ExitCode {
    finish(run(a).await)
}

fn with_backend(backend: &Option<String>) -> Value {
    let mut m = Map::new();
    if let Some(b) = backend {
        m.insert("backend".into(), Value::String(b.clone()));
    }
    Value::Object(m)
}

fn print_pauses(v: &Value) {
    let backends: Vec<&str> = v["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match (v["farm"].as_bool(), backends.is_empty()) {
        (Some(true), _) => println!("the farm is paused"),
        (_, true) => println!("nothing is paused"),
        _ => {}
    }
    for b in backends {
        println!("paused: {b}");
    }
}

async fn run(a: AdminArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    let post = |path: &str, body: Value| client.call(client.post(path).json(&body));
    match a.action {
        AdminAction::Pause { backend } => {
            let (s, v) = post("/api/admin/pause", with_backend(&backend)).await?;
            if s != 200 {
                return Err(Fail::usage(server_error(s, &v)));
            }
            print_pauses(&v);
        }
        AdminAction::Resume { backend } => {
            let (s, v) = post("/api/admin/resume", with_backend(&backend)).await?;
            if s != 200 {
                return Err(Fail::usage(server_error(s, &v)));
            }
            print_pauses(&v);
        }
        AdminAction::Paused => {
            let (s, v) = client.call(client.get("/api/admin/pause")).await?;
            if s != 200 {
                return Err(Fail::usage(server_error(s, &v)));
            }
            print_pauses(&v);
        }
        AdminAction::Drain { backend, timeout } => {
            let mut body = with_backend(&backend);
            body["timeout"] = json!(timeout.as_secs().min(3600));
            // The server answers when drained or at the timeout: wait for it.
            let req = client.post("/api/admin/drain").json(&body);
            let (s, v) = client
                .call_within(req, timeout + Duration::from_secs(30))
                .await?;
            match s {
                200 => println!("drained: nothing runs; paused until `studio admin resume`"),
                202 => {
                    return Err(Fail(
                        FAILED,
                        format!("not drained: {} jobs still run (paused)", v["running"]),
                    ));
                }
                _ => return Err(Fail::usage(server_error(s, &v))),
            }
        }
        AdminAction::Dead { limit, json } => {
            let (s, v) = client
                .call(client.get(&format!("/api/admin/dead?limit={limit}")))
                .await?;
            if s != 200 {
                return Err(Fail::usage(server_error(s, &v)));
            }
            if json {
                println!("{v}");
            } else {
                for d in v["dead"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {}  {} attempts  {}",
                        d["job_id"].as_str().unwrap_or(""),
                        d["failed_at"].as_str().unwrap_or(""),
                        d["attempts"],
                        d["error"].as_str().unwrap_or("")
                    );
                }
            }
        }
        AdminAction::Requeue { job_ids, limit } => {
            let mut body = Map::new();
            if !job_ids.is_empty() {
                body.insert("job_ids".into(), json!(job_ids));
            }
            if let Some(l) = limit {
                body.insert("limit".into(), json!(l));
            }
            let (s, v) = post("/api/admin/dead/requeue", Value::Object(body)).await?;
            if s != 200 {
                return Err(Fail::usage(server_error(s, &v)));
            }
            for r in v["requeued"].as_array().into_iter().flatten() {
                println!(
                    "requeued {} as {}",
                    r["job_id"].as_str().unwrap_or(""),
                    r["new_job_id"].as_str().unwrap_or("")
                );
            }
            let skipped = v["skipped"].as_array().map_or(0, Vec::len);
            for r in v["skipped"].as_array().into_iter().flatten() {
                eprintln!(
                    "not requeued {}: {}",
                    r["job_id"].as_str().unwrap_or(""),
                    r["error"].as_str().unwrap_or("")
                );
            }
            if skipped > 0 {
                return Err(Fail(FAILED, format!("{skipped} not requeued")));
            }
        }
        AdminAction::Retry { job_id } => {
            let (s, v) = post(&format!("/api/jobs/{job_id}/retry"), json!({})).await?;
            if s != 202 {
                return Err(Fail::usage(server_error(s, &v)));
            }
            println!("{}", v["job_id"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}
