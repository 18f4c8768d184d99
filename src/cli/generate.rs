//! `studio generate`: submit, follow the progress, download the outputs.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value};

use super::client::{Client, FAILED, Fail, ServerUrl, finish, server_error, upload};
use super::sse;

/// `studio generate`.
#[derive(Args, Clone, Debug)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: String,
    /// Workflow to run (default: the server's default, sdxl).
    #[arg(long, short)]
    pub workflow: Option<String>,
    /// Run this ComfyUI graph file once instead of a workflow (API format, or a
    /// UI-format file the server converts; admin keys and keys made with
    /// `--graphs` only).
    #[arg(long, value_name = "PATH", conflicts_with = "workflow")]
    pub graph: Option<PathBuf>,
    /// Seed (default: random).
    #[arg(long, short)]
    pub seed: Option<u64>,
    /// A workflow parameter, `name=value` (repeatable), e.g. `--param steps=30`.
    /// Numbers and true/false are sent as such; anything else as text.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// An input picture (PNG, JPEG or WebP) for the workflow's `image` parameter
    /// (e.g. `--workflow smoke-img2img`); uploaded first.
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// A mask picture for the workflow's `mask` parameter (inpainting: white is
    /// repainted); uploaded first.
    #[arg(long, value_name = "PATH")]
    pub mask: Option<PathBuf>,
    /// Where to save the outputs.
    #[arg(long, short, default_value = ".")]
    pub out: PathBuf,
    /// Submit and print the job id without waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Order among this key's own jobs (at most the key's highest).
    #[arg(long, value_enum)]
    pub priority: Option<crate::job::Priority>,
    /// What the pictures are stored as: png (ComfyUI's own), jpeg, or webp
    /// (lossless); the prompt metadata is kept.
    #[arg(long, value_parser = ["png", "jpeg", "webp"])]
    pub format: Option<String>,
    /// JPEG quality, 1–100 (default 90).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: Option<u8>,
    /// Have the server POST the job's end here (a signed Standard Webhook).
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Which webhook messages to send (default: job.finished,job.failed).
    #[arg(long, value_delimiter = ',', value_parser = crate::webhooks::EVENTS)]
    pub webhook_events: Vec<String>,
    /// Make N variations as one batch (seeds counting up from `--seed`, or a
    /// random one), 1 to the server's `--max-batch`.
    #[arg(long, value_name = "N", conflicts_with_all = ["graph", "grid"], value_parser = clap::value_parser!(u32).range(1..))]
    pub count: Option<u32>,
    /// A batch over a parameter's values, `name=v1,v2,...` (repeatable: one job
    /// per combination), e.g. `--grid steps=20,30 --grid cfg=5,7`.
    #[arg(long, value_name = "NAME=V1,V2", conflicts_with = "graph")]
    pub grid: Vec<String>,
    #[command(flatten)]
    pub server: ServerUrl,
}

/// `name=v1,v2` → (name, [values]), each value as `--param` reads it.
pub fn parse_grid(g: &str) -> Result<(String, Value), String> {
    let (k, values) = g
        .split_once('=')
        .ok_or_else(|| format!("--grid {g:?} is not NAME=V1,V2,..."))?;
    let mut list = Vec::new();
    for v in values.split(',') {
        list.push(
            parse_param(&format!("{k}={v}"))
                .map_err(|_| format!("--grid {g:?} has no name"))?
                .1,
        );
    }
    if list.iter().any(|v| v.as_str() == Some("")) {
        return Err(format!("--grid {g:?} has an empty value"));
    }
    Ok((k.trim().to_owned(), Value::Array(list)))
}

/// `name=value` → (name, JSON value): numbers and booleans as such, the rest text.
pub fn parse_param(p: &str) -> Result<(String, Value), String> {
    let (k, v) = p
        .split_once('=')
        .ok_or_else(|| format!("--param {p:?} is not NAME=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("--param {p:?} has no name"));
    }
    let value = match serde_json::from_str::<Value>(v.trim()) {
        Ok(n @ Value::Number(_)) => n,
        Ok(b @ Value::Bool(_)) => b,
        _ => Value::from(v),
    };
    Ok((k.to_owned(), value))
}

/// Largest graph file sent: the server takes submissions of 256 KiB.
const MAX_GRAPH_FILE: u64 = 256 * 1024;

/// Tries at a submission that meets a network error or a 502/503/504.
const SUBMIT_TRIES: u64 = 3;

/// `studio generate PROMPT ...`.
pub async fn generate(a: GenerateArgs) -> ExitCode {
    finish(generate_inner(a).await)
}

async fn generate_inner(a: GenerateArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    let mut body = Map::new();
    body.insert("prompt".into(), a.prompt.clone().into());
    if let Some(w) = &a.workflow {
        body.insert("workflow".into(), w.clone().into());
    }
    if let Some(g) = &a.graph {
        let graph = super::workflows::read_json(g, MAX_GRAPH_FILE).await?;
        body.insert("graph".into(), graph);
    }
    if let Some(s) = a.seed {
        body.insert("seed".into(), s.into());
    }
    for p in &a.params {
        let (k, v) = parse_param(p).map_err(Fail::usage)?;
        body.insert(k, v);
    }
    if let Some(f) = &a.format {
        body.insert("output_format".into(), f.clone().into());
    }
    if let Some(q) = a.quality {
        body.insert("quality".into(), q.into());
    }
    if let Some(p) = a.priority {
        body.insert("priority".into(), p.as_str().into());
    }
    if let Some(u) = &a.webhook_url {
        body.insert("webhook_url".into(), u.clone().into());
    }
    if !a.webhook_events.is_empty() {
        body.insert("webhook_events".into(), a.webhook_events.clone().into());
    }
    for (param, path) in [("image", &a.image), ("mask", &a.mask)] {
        if let Some(path) = path {
            let id = upload(&client, path).await?;
            body.insert(param.into(), id.into());
        }
    }
    if a.count.is_some() || !a.grid.is_empty() {
        if let Some(n) = a.count {
            body.insert("count".into(), n.into());
        }
        let mut grid = Map::new();
        for g in &a.grid {
            let (k, v) = parse_grid(g).map_err(Fail::usage)?;
            grid.insert(k, v);
        }
        if !grid.is_empty() {
            body.insert("grid".into(), Value::Object(grid));
        }
        return batch(&client, body, &a).await;
    }
    let (status, v) = submit(&client, "/api/generate", &body).await?;
    if status != 202 {
        return Err(Fail::usage(server_error(status, &v)));
    }
    let id = v["job_id"].as_str().unwrap_or_default().to_owned();
    if a.no_wait {
        println!("{id}");
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    if !tty {
        println!("job {id} queued (seed {})", v["seed"]);
    }
    let job = follow(&client, &id, tty).await?;
    match job["status"].as_str() {
        Some("finished") => {
            let saved = download(&client, &job, &a.out).await?;
            for p in saved {
                println!("saved {}", p.display());
            }
            Ok(())
        }
        _ => Err(Fail(
            FAILED,
            format!(
                "job {id} failed: {}",
                job["error"].as_str().unwrap_or("unknown error")
            ),
        )),
    }
}

/// Posts a submission, retried on a network error or a 502/503/504 with one
/// Idempotency-Key for every try: a submission retried after a lost answer or a
/// passing outage is answered with what the first try queued.
async fn submit(
    client: &Client,
    path: &str,
    body: &Map<String, Value>,
) -> Result<(u16, Value), Fail> {
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    let mut tries = 0;
    loop {
        tries += 1;
        let req = client
            .post(path)
            .header("idempotency-key", &idempotency_key)
            .json(body);
        let answer = client.call(req).await;
        let retry = match &answer {
            Err(_) => true,
            Ok((status, _)) => *status == 502 || *status == 503 || *status == 504,
        };
        if !retry || tries >= SUBMIT_TRIES {
            return answer;
        }
        tokio::time::sleep(Duration::from_secs(tries)).await;
    }
}

/// Submits a batch, follows it to its end, and saves every finished job's
/// outputs; fails if any job failed.
async fn batch(client: &Client, body: Map<String, Value>, a: &GenerateArgs) -> Result<(), Fail> {
    let (status, v) = submit(client, "/api/batches", &body).await?;
    if status != 202 {
        return Err(Fail::usage(server_error(status, &v)));
    }
    let id = v["batch_id"].as_str().unwrap_or_default().to_owned();
    let total = v["job_ids"].as_array().map_or(0, Vec::len);
    if a.no_wait {
        println!("{id}");
        for j in v["job_ids"].as_array().into_iter().flatten() {
            println!("{}", j.as_str().unwrap_or_default());
        }
        return Ok(());
    }
    println!("batch {id} queued: {total} jobs");
    let mut shown = String::new();
    let batch = loop {
        let (status, b) = client
            .call(client.get(&format!("/api/batches/{id}")))
            .await?;
        if status != 200 {
            return Err(Fail::usage(server_error(status, &b)));
        }
        let c = &b["counts"];
        let line = format!(
            "{} {}% ({} finished, {} failed, {} running, {} queued)",
            b["status"].as_str().unwrap_or("?"),
            b["progress"],
            c["finished"],
            c["failed"],
            c["processing"],
            c["queued"]
        );
        if line != shown {
            println!("{line}");
            shown = line;
        }
        if !matches!(b["status"].as_str(), Some("queued" | "processing")) {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut failed = 0;
    for job in batch["jobs"].as_array().into_iter().flatten() {
        if job["status"] == "finished" {
            for p in download(client, job, &a.out).await? {
                println!("saved {}", p.display());
            }
        } else {
            failed += 1;
            eprintln!(
                "job {} failed: {}",
                job["job_id"].as_str().unwrap_or_default(),
                job["error"].as_str().unwrap_or("unknown error")
            );
        }
    }
    if failed > 0 {
        return Err(Fail(
            FAILED,
            format!("{failed} of {total} jobs of batch {id} failed"),
        ));
    }
    Ok(())
}

/// Follows a job's events to its final state, showing progress. Reconnects a few
/// times; falls back to polling if the stream cannot be had.
async fn follow(client: &Client, id: &str, tty: bool) -> Result<Value, Fail> {
    let mut shown = String::new();
    let mut show = |job: &Value| {
        let status = job["status"].as_str().unwrap_or("?");
        let progress = job["progress"].as_u64().unwrap_or(0);
        let line = match (status, job["queue_position"].as_u64()) {
            ("queued", Some(p)) => format!("queued ({p} ahead)"),
            _ => format!("{status} {progress}%"),
        };
        if line == shown {
            return;
        }
        if tty {
            let filled = (progress as usize) / 5;
            print!(
                "\r[{}{}] {line:<24}",
                "#".repeat(filled),
                "-".repeat(20 - filled)
            );
            let _ = std::io::stdout().flush();
        } else {
            println!("{line}");
        }
        shown = line;
    };
    let mut failures = 0;
    loop {
        match sse::follow_job(client.get(&format!("/api/jobs/{id}/events")), &mut show).await {
            Ok(Some(job)) => {
                if tty {
                    println!();
                }
                return Ok(job);
            }
            Ok(None) | Err(_) if failures < 5 => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(300 * failures)).await;
            }
            _ => break,
        }
    }
    // The stream is not available: poll.
    loop {
        let (status, job) = client
            .call(client.get(&format!("/api/status/{id}")))
            .await?;
        if status != 200 {
            return Err(Fail::usage(server_error(status, &job)));
        }
        show(&job);
        if matches!(job["status"].as_str(), Some("finished" | "failed")) {
            if tty {
                println!();
            }
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Saves every output of a finished job into `dir`.
async fn download(client: &Client, job: &Value, dir: &Path) -> Result<Vec<PathBuf>, Fail> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Fail::usage(format!("cannot create {}: {e}", dir.display())))?;
    let mut saved = Vec::new();
    for o in job["outputs"].as_array().into_iter().flatten() {
        let (Some(url), Some(name)) = (o["url"].as_str(), o["filename"].as_str()) else {
            continue;
        };
        // The server checks names; still, only a plain file name lands on disk.
        let name = Path::new(name)
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let res = client
            .get(url)
            .send()
            .await
            .map_err(|e| client.unreachable(e))?;
        if !res.status().is_success() {
            return Err(Fail::usage(format!(
                "cannot download {url}: HTTP {}",
                res.status().as_u16()
            )));
        }
        let bytes = res.bytes().await.map_err(|e| client.unreachable(e))?;
        let path = dir.join(name);
        std::fs::write(&path, &bytes)
            .map_err(|e| Fail::usage(format!("cannot write {}: {e}", path.display())))?;
        saved.push(path);
    }
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_become_numbers_booleans_or_text() {
        assert_eq!(
            parse_param("steps=30").unwrap(),
            ("steps".into(), json!(30))
        );
        assert_eq!(parse_param("cfg=6.5").unwrap(), ("cfg".into(), json!(6.5)));
        assert_eq!(
            parse_param("hires=true").unwrap(),
            ("hires".into(), json!(true))
        );
        assert_eq!(
            parse_param("sampler=euler").unwrap(),
            ("sampler".into(), json!("euler"))
        );
        assert_eq!(
            parse_param("negative_prompt=a=b, c").unwrap(),
            ("negative_prompt".into(), json!("a=b, c"))
        );
        assert!(parse_param("nothing").is_err());
        assert_eq!(
            parse_grid("steps=20,30").unwrap(),
            ("steps".into(), json!([20, 30]))
        );
        assert_eq!(
            parse_grid("sampler=euler,dpmpp_2m").unwrap(),
            ("sampler".into(), json!(["euler", "dpmpp_2m"]))
        );
        assert!(parse_grid("steps").is_err());
        assert!(parse_grid("=1,2").is_err());
        assert!(parse_grid("steps=20,").is_err());
        assert!(parse_param("=3").is_err());
    }
}
