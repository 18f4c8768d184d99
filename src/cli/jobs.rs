//! `studio status`, `studio cancel`, `studio jobs`.

use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

use super::client::{Client, FAILED, Fail, ServerUrl, finish, server_error};

/// `studio status ID` / `studio cancel ID`.
#[derive(Args, Clone, Debug)]
pub struct JobArgs {
    /// The job id.
    pub job_id: String,
    /// Print the job as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerUrl,
}

/// `studio jobs`.
#[derive(Args, Clone, Debug)]
pub struct JobsArgs {
    /// Only jobs in this state (queued, processing, finished, failed).
    #[arg(long)]
    pub status: Option<String>,
    /// How many.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print the page as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerUrl,
}

/// `studio status ID`.
pub async fn status(a: JobArgs) -> ExitCode {
    finish(status_inner(a).await)
}

async fn status_inner(a: JobArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    let (status, job) = client
        .call(client.get(&format!("/api/status/{}", a.job_id)))
        .await?;
    if status != 200 {
        return Err(Fail::usage(server_error(status, &job)));
    }
    if a.json {
        println!("{job}");
    } else {
        print_job(&job);
    }
    if job["status"] == "failed" {
        return Err(Fail(
            FAILED,
            format!(
                "job {} failed: {}",
                a.job_id,
                job["error"].as_str().unwrap_or("")
            ),
        ));
    }
    Ok(())
}

fn print_job(job: &Value) {
    println!("job       {}", job["job_id"].as_str().unwrap_or(""));
    println!(
        "status    {} {}%",
        job["status"].as_str().unwrap_or(""),
        job["progress"]
    );
    if let Some(p) = job["queue_position"].as_u64() {
        println!("queue     {p} ahead");
    }
    println!(
        "workflow  {} (seed {})",
        job["workflow"].as_str().unwrap_or(""),
        job["seed"]
    );
    println!("prompt    {}", job["prompt"].as_str().unwrap_or(""));
    println!("attempt   {}", job["attempt"]);
    println!("created   {}", job["created_at"].as_str().unwrap_or(""));
    for o in job["outputs"].as_array().into_iter().flatten() {
        println!("output    {}", o["url"].as_str().unwrap_or(""));
    }
    if let Some(e) = job["error"].as_str().filter(|e| !e.is_empty()) {
        println!("error     {e}");
    }
    let w = &job["webhook"];
    if let Some(url) = w["url"].as_str() {
        println!(
            "webhook   {} {} ({} delivered)",
            w["state"].as_str().unwrap_or(""),
            url,
            w["delivered"]
        );
        if let Some(e) = w["last_error"].as_str().filter(|e| !e.is_empty()) {
            println!("          last error: {e}");
        }
    }
}

/// `studio cancel ID`.
pub async fn cancel(a: JobArgs) -> ExitCode {
    finish(cancel_inner(a).await)
}

async fn cancel_inner(a: JobArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    let (status, job) = client
        .call(
            client
                .post(&format!("/api/jobs/{}/cancel", a.job_id))
                .json(&json!({})),
        )
        .await?;
    match status {
        200 => println!("job {} cancelled", a.job_id),
        202 => println!(
            "job {} is running; its worker has been asked to stop it",
            a.job_id
        ),
        409 => return Err(Fail(FAILED, server_error(status, &job))),
        _ => return Err(Fail::usage(server_error(status, &job))),
    }
    if a.json {
        println!("{job}");
    }
    Ok(())
}

/// `studio jobs`.
pub async fn jobs(a: JobsArgs) -> ExitCode {
    finish(jobs_inner(a).await)
}

async fn jobs_inner(a: JobsArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    let mut query = vec![("limit", a.limit.to_string())];
    if let Some(s) = &a.status {
        query.push(("status", s.clone()));
    }
    let (status, page) = client.call(client.get("/api/jobs").query(&query)).await?;
    if status != 200 {
        return Err(Fail::usage(server_error(status, &page)));
    }
    if a.json {
        println!("{page}");
        return Ok(());
    }
    println!(
        "{:<36}  {:<10}  {:>4}  {:<8}  {:<32}  prompt",
        "job", "status", "%", "workflow", "created"
    );
    for j in page["jobs"].as_array().into_iter().flatten() {
        let prompt: String = j["prompt"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(40)
            .collect();
        println!(
            "{:<36}  {:<10}  {:>4}  {:<8}  {:<32}  {}",
            j["job_id"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or(""),
            j["progress"],
            j["workflow"].as_str().unwrap_or(""),
            j["created_at"].as_str().unwrap_or(""),
            prompt.replace('\n', " ")
        );
    }
    Ok(())
}
