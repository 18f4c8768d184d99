//! `studio workflows push|list|show|retire|convert`: published workflows, over
//! the server's API (publishing converts a UI-format file with what the live
//! backends have, so it needs a running server).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{Client, FAILED, Fail, ServerUrl, finish, server_error};

/// Largest workflow file read (the server takes 4 MiB).
const MAX_FILE: u64 = 4 << 20;

/// `studio workflows`.
#[derive(Args, Clone, Debug)]
pub struct WorkflowsArgs {
    #[command(subcommand)]
    pub action: WorkflowsAction,
    #[command(flatten)]
    pub server: ServerUrl,
}

#[derive(Subcommand, Clone, Debug)]
pub enum WorkflowsAction {
    /// Publishes a ComfyUI workflow file (either format: Save or Export (API))
    /// as the next version of a name; prints its parameters.
    Push {
        /// The workflow file.
        file: PathBuf,
        /// The name jobs will give (`"workflow": "<name>"`).
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// A JSON file of parameters, as a template declares them (default:
        /// read from the graph).
        #[arg(long)]
        params: Option<PathBuf>,
        /// Print the published version as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists the workflows jobs may name, with versions and whether a live
    /// backend can run them.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Shows a workflow (`NAME` is its latest version, `NAME@V` that version).
    Show {
        spec: String,
        #[arg(long)]
        json: bool,
    },
    /// Retires a published workflow: new jobs naming it are refused (410); jobs
    /// already queued still run.
    Retire { name: String },
    /// Prints the API format of a UI-format workflow file, as ComfyUI's
    /// frontend would send it (nothing is stored).
    Convert { file: PathBuf },
}

/// `studio workflows …`.
pub async fn workflows(a: WorkflowsArgs) -> ExitCode {
    finish(run(a).await)
}

async fn run(a: WorkflowsArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    match a.action {
        WorkflowsAction::Push {
            file,
            name,
            description,
            params,
            json: as_json,
        } => {
            let workflow = read_json(&file, MAX_FILE).await?;
            let params = match params {
                Some(p) => Some(read_json(&p, MAX_FILE).await?),
                None => None,
            };
            let body = json!({"name": name, "description": description, "workflow": workflow, "params": params});
            let (status, v) = client
                .call(client.post("/api/workflows").json(&body))
                .await?;
            if status != 201 {
                return Err(Fail(FAILED, server_error(status, &v)));
            }
            if as_json {
                println!("{v}");
            } else {
                println!(
                    "published {}@{}{}",
                    v["name"].as_str().unwrap_or(""),
                    v["version"],
                    if v["converted"] == true {
                        " (converted from the UI format)"
                    } else {
                        ""
                    }
                );
                print_params(&v["params"]);
            }
            Ok(())
        }
        WorkflowsAction::List { json: as_json } => {
            let (status, v) = client.call(client.get("/api/workflows")).await?;
            if status != 200 {
                return Err(Fail::usage(server_error(status, &v)));
            }
            if as_json {
                println!("{v}");
                return Ok(());
            }
            for w in v["workflows"].as_array().into_iter().flatten() {
                let version = w["version"]
                    .as_u64()
                    .map_or("built-in".to_owned(), |v| format!("v{v}"));
                let runnable = match w["runnable"].as_bool() {
                    Some(false) => "  (no live backend can run it)",
                    _ => "",
                };
                println!(
                    "{:<24} {:<9} {}{runnable}",
                    w["name"].as_str().unwrap_or(""),
                    version,
                    w["description"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        WorkflowsAction::Show {
            spec,
            json: as_json,
        } => {
            let path = match spec.split_once('@') {
                Some((n, v)) => format!("/api/workflows/{}/versions/{}", enc(n), enc(v)),
                None => format!("/api/workflows/{}", enc(&spec)),
            };
            let (status, mut v) = client.call(client.get(&path)).await?;
            // A retired workflow is 410, with the workflow as it was.
            if status == 410 && v["workflow"].is_object() {
                v = v["workflow"].take();
            } else if status != 200 {
                return Err(Fail(FAILED, server_error(status, &v)));
            }
            if as_json {
                println!("{v}");
                return Ok(());
            }
            println!("workflow  {}", v["name"].as_str().unwrap_or(""));
            if let Some(version) = v["version"].as_u64() {
                println!("version   {version} (latest {})", v["latest"]);
            }
            if v["retired"] == true {
                println!("retired   yes: no new jobs");
            }
            if let Some(d) = v["description"].as_str().filter(|d| !d.is_empty()) {
                println!("about     {d}");
            }
            println!(
                "nodes     {}",
                v["graph"].as_object().map_or(0, |g| g.len())
            );
            let models: Vec<String> = v["requirements"]["models"]
                .as_object()
                .into_iter()
                .flatten()
                .flat_map(|(_, files)| files.as_array().cloned().unwrap_or_default())
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect();
            if !models.is_empty() {
                println!("models    {}", models.join(", "));
            }
            print_params(&v["params"]);
            Ok(())
        }
        WorkflowsAction::Retire { name } => {
            let (status, v) = client
                .call(
                    client
                        .request(
                            reqwest::Method::DELETE,
                            &format!("/api/workflows/{}", enc(&name)),
                        )
                        .header("x-requested-with", "studio-cli"),
                )
                .await?;
            if status != 200 {
                return Err(Fail(FAILED, server_error(status, &v)));
            }
            println!("retired {name}: new jobs naming it are refused; queued ones still run");
            Ok(())
        }
        WorkflowsAction::Convert { file } => {
            let workflow = read_json(&file, MAX_FILE).await?;
            let (status, v) = client
                .call(client.post("/api/workflows/convert").json(&workflow))
                .await?;
            if status != 200 {
                return Err(Fail(FAILED, server_error(status, &v)));
            }
            let pretty = serde_json::to_string_pretty(&v["prompt"]).unwrap_or_default();
            println!("{pretty}");
            Ok(())
        }
    }
}

/// A path segment, percent-encoded.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A JSON file of at most `limit` bytes.
pub(super) async fn read_json(path: &Path, limit: u64) -> Result<Value, Fail> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| Fail::usage(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > limit {
        return Err(Fail::usage(format!(
            "{} is {} bytes; the server takes at most {limit} here",
            path.display(),
            meta.len()
        )));
    }
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| Fail::usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| Fail::usage(format!("{} is not JSON: {e}", path.display())))
}

/// A workflow's parameters, one per line: name, type, default, bounds.
fn print_params(params: &Value) {
    let Some(map) = params.as_object() else {
        return;
    };
    for (name, p) in map {
        let mut line = format!("  {name:<20} {:<6}", p["type"].as_str().unwrap_or("string"));
        if let Some(d) = p.get("default").filter(|d| !d.is_null()) {
            line.push_str(&format!(" default {d}"));
        }
        if let (Some(lo), Some(hi)) = (p.get("min"), p.get("max")) {
            line.push_str(&format!(" {lo}..{hi}"));
        }
        if let Some(c) = p["choices"].as_array().filter(|c| !c.is_empty()) {
            line.push_str(&format!(" ({} choices)", c.len()));
        }
        println!("{line}");
    }
}
