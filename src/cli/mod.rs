//! The client commands: `studio generate`, `status`, `cancel`, `jobs`,
//! `workflows`. They talk to
//! a running server over its public API. Exit codes: 0 finished (or done), 1 the job
//! failed, 2 a usage or connection error (message on stderr).

pub mod admin;
mod client;
mod generate;
mod jobs;
pub mod keys;
mod mcp;
mod root;
mod sse;
pub mod usage;
mod workflows;

pub use client::ServerUrl;
pub(crate) use client::{FAILED, Fail, USAGE, finish};
pub use generate::{GenerateArgs, generate, parse_param};
pub use jobs::{JobArgs, JobsArgs, cancel, jobs, status};
pub use mcp::{McpArgs, mcp};
pub use root::{Cli, Command, unknown_studio_env};
pub use workflows::{WorkflowsArgs, workflows};
