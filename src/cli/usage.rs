//! `studio usage`: GPU-seconds, queue wait and outputs by key, workflow, day or
//! backend, over the server's API (`GET /api/usage`).

use std::process::ExitCode;

use clap::Args;

use super::client::{Client, Fail, ServerUrl, finish, server_error};

/// `studio usage`.
#[derive(Args, Clone, Debug)]
pub struct UsageArgs {
    /// From this day (`2026-12-01`) or time (RFC 3339); default 30 days ago.
    #[arg(long)]
    pub from: Option<String>,
    /// Through this day, or until this time; default now.
    #[arg(long)]
    pub to: Option<String>,
    /// `key`, `workflow`, `day` or `backend`.
    #[arg(long, default_value = "key", value_parser = ["key", "workflow", "day", "backend"])]
    pub group_by: String,
    /// Only this key (admins).
    #[arg(long)]
    pub key: Option<String>,
    /// Print CSV (as the server writes it).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerUrl,
}

/// `studio usage`.
pub async fn usage(a: UsageArgs) -> ExitCode {
    finish(run(a).await)
}

async fn run(a: UsageArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    let mut query: Vec<(&str, String)> = vec![("group_by", a.group_by.clone())];
    for (k, v) in [("from", &a.from), ("to", &a.to), ("key", &a.key)] {
        if let Some(v) = v {
            query.push((k, v.clone()));
        }
    }
    let req = client.get("/api/usage").query(&query);
    if a.csv {
        let res = req
            .header("accept", "text/csv")
            .send()
            .await
            .map_err(|e| client.unreachable(e))?;
        let status = res.status().as_u16();
        let text = res.text().await.map_err(|e| client.unreachable(e))?;
        if status != 200 {
            let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            return Err(Fail::usage(server_error(status, &v)));
        }
        print!("{text}");
        return Ok(());
    }
    let (status, v) = client.call(req).await?;
    if status != 200 {
        return Err(Fail::usage(server_error(status, &v)));
    }
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!(
        "{} to {}, by {}",
        v["from"].as_str().unwrap_or(""),
        v["to"].as_str().unwrap_or(""),
        v["group_by"].as_str().unwrap_or("")
    );
    println!(
        "{:<36} {:>6} {:>6} {:>12} {:>12} {:>12}",
        "group", "jobs", "failed", "GPU-s", "wait-s", "output MB"
    );
    for g in v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&v["total"]))
    {
        println!(
            "{:<36} {:>6} {:>6} {:>12.1} {:>12.1} {:>12.2}",
            g["group"].as_str().unwrap_or(""),
            g["jobs"],
            g["failed"],
            g["gpu_seconds"].as_f64().unwrap_or(0.0),
            g["wait_seconds"].as_f64().unwrap_or(0.0),
            g["output_bytes"].as_f64().unwrap_or(0.0) / 1e6
        );
    }
    Ok(())
}
