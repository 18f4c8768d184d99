//! The command line's root: `studio serve|api|worker` and the client commands,
//! and the check for `STUDIO_*` variables that no setting reads.

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::ServerArgs;

/// Studio Core: a job API, a reliable queue and workers for ComfyUI.
#[derive(Parser, Debug)]
#[command(name = "studio", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the API and the workers in one process (what `studio` alone does).
    Serve(ServerArgs),
    /// Run the API only (workers run elsewhere, against the same Redis).
    Api(ServerArgs),
    /// Run workers only.
    Worker(ServerArgs),
    /// Submit a job, follow its progress and download its outputs.
    Generate(super::GenerateArgs),
    /// Show a job's status.
    Status(super::JobArgs),
    /// Cancel a job.
    Cancel(super::JobArgs),
    /// List recent jobs.
    Jobs(super::JobsArgs),
    /// Publish, list, show and retire workflows (ComfyUI files, either format).
    Workflows(super::WorkflowsArgs),
    /// An MCP server on stdin/stdout for an agent on this machine, relaying to
    /// a Studio Core server's `/mcp` (`--server`, `--api-key`).
    Mcp(super::McpArgs),
    /// Manage API keys (straight in the job store: no server needed).
    Keys(super::keys::KeysArgs),
    /// Usage: GPU-seconds, queue wait and outputs by key, workflow, day or backend.
    Usage(super::usage::UsageArgs),
    /// Steer the queue: pause, resume, drain; dead letters, requeue, retry.
    Admin(super::admin::AdminArgs),
    /// Print a new webhook signing secret (`whsec_…`) for --webhook-secret.
    WebhookSecret,
}

/// Environment variables named `STUDIO_*` that no setting reads (typos, mostly).
pub fn unknown_studio_env() -> Vec<String> {
    let cmd = Cli::command();
    let mut known: Vec<String> = Vec::new();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            if let Some(env) = arg.get_env() {
                known.push(env.to_string_lossy().into_owned());
            }
        }
    }
    let mut unknown: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("STUDIO_") && !known.contains(k))
        .collect();
    unknown.sort();
    unknown
}
