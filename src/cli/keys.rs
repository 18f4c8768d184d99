//! `studio keys create|list|revoke|update`: API keys, straight in the job store
//! (the same `--data-dir` / `REDIS_URL` settings as `serve`), so the first admin key
//! can be made before any server runs. A running server sees a change within a
//! second.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{FAILED, Fail, USAGE, finish};
use crate::auth::{ApiKey, KeyLimits, KeyUpdate, Role};
use crate::config::StoreArgs;
use crate::job::Priority;
use crate::keys::{self as manage, KeyError};
use crate::store::StoreSettings;
use crate::units::parse_rate;

/// `studio keys`.
#[derive(Args, Clone, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Subcommand, Clone, Debug)]
pub enum KeysAction {
    /// Makes a key and prints its secret, once, alone on the last line.
    Create(CreateArgs),
    /// Lists every key (revoked ones too).
    List {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revokes a key: every server refuses it within a second.
    Revoke {
        /// The key's id (`sk_<id>_…`).
        id: String,
    },
    /// Changes a key's name, role or limits (`none` clears a limit).
    Update(UpdateArgs),
}

/// `studio keys create`.
#[derive(Args, Clone, Debug)]
pub struct CreateArgs {
    /// Who or what the key is for.
    #[arg(long)]
    pub name: String,
    #[arg(long, value_enum, default_value = "user")]
    pub role: Role,
    /// Requests per second it may make (`5/s`, `300/m`; burst one second's worth).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<(f64, u32)>,
    /// Requests it may make at once beyond the rate.
    #[arg(long)]
    pub burst: Option<u32>,
    /// Jobs it may have waiting at once.
    #[arg(long)]
    pub max_queued: Option<u32>,
    /// Jobs it may have running at once.
    #[arg(long)]
    pub max_running: Option<u32>,
    /// Its share of the GPUs against other keys with work waiting (1–1000).
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// The highest priority its jobs may ask for (default: normal for users,
    /// high for admins).
    #[arg(long, value_enum)]
    pub max_priority: Option<Priority>,
    /// It may publish and retire workflows (admins always may).
    #[arg(long)]
    pub publish: bool,
    /// It may run raw graphs (`graph` in a submission, ComfyUI's `/prompt`;
    /// admins always may).
    #[arg(long)]
    pub graphs: bool,
    /// GPU-seconds its jobs may use per UTC day (then `429 budget-exhausted`).
    #[arg(long)]
    pub gpu_seconds_per_day: Option<u64>,
    /// GPU-seconds its jobs may use per UTC month.
    #[arg(long)]
    pub gpu_seconds_per_month: Option<u64>,
}

/// `studio keys update`.
#[derive(Args, Clone, Debug)]
pub struct UpdateArgs {
    /// The key's id.
    pub id: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// `5/s`, `300/m`, or `none`.
    #[arg(long, value_parser = rate_or_none)]
    pub rate: Option<Option<(f64, u32)>>,
    /// A number, or `none`.
    #[arg(long, value_parser = number_or_none)]
    pub burst: Option<Option<u32>>,
    /// A number, or `none`.
    #[arg(long, value_parser = number_or_none)]
    pub max_queued: Option<Option<u32>>,
    /// A number, or `none`.
    #[arg(long, value_parser = number_or_none)]
    pub max_running: Option<Option<u32>>,
    #[arg(long)]
    pub weight: Option<u32>,
    #[arg(long, value_enum)]
    pub max_priority: Option<Priority>,
    /// `true` or `false`: it may publish workflows.
    #[arg(long)]
    pub publish: Option<bool>,
    /// `true` or `false`: it may run raw graphs.
    #[arg(long)]
    pub graphs: Option<bool>,
    /// GPU-seconds per UTC day, or `none`.
    #[arg(long, value_parser = seconds_or_none)]
    pub gpu_seconds_per_day: Option<Option<u64>>,
    /// GPU-seconds per UTC month, or `none`.
    #[arg(long, value_parser = seconds_or_none)]
    pub gpu_seconds_per_month: Option<Option<u64>>,
}

fn seconds_or_none(s: &str) -> Result<Option<u64>, String> {
    if s == "none" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{s:?} is not a whole number of seconds (or none)"))
}

fn number_or_none(s: &str) -> Result<Option<u32>, String> {
    if s == "none" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{s:?} is not a whole number (or none)"))
}

fn rate_or_none(s: &str) -> Result<Option<(f64, u32)>, String> {
    if s == "none" {
        return Ok(None);
    }
    parse_rate(s).map(Some)
}

/// `studio keys …`.
pub async fn keys(a: KeysArgs) -> ExitCode {
    finish(run(a).await)
}

async fn run(a: KeysArgs) -> Result<(), Fail> {
    let store = a
        .store
        .open(StoreSettings::default())
        .map_err(|e| Fail::usage(format!("{e:#}")))?;
    let failed = |e: KeyError| match e {
        KeyError::Invalid(field, m) => Fail(USAGE, format!("--{} {m}", field.replace('_', "-"))),
        KeyError::NotFound => Fail(FAILED, "no API key with this id, or it is revoked".into()),
        KeyError::Store(e) => Fail(USAGE, format!("the job store: {e}")),
    };
    match a.action {
        KeysAction::Create(c) => {
            let limits = KeyLimits {
                rate: c.rate.map(|r| r.0),
                burst: c.burst.or(c.rate.map(|r| r.1)),
                max_queued: c.max_queued,
                max_running: c.max_running,
                weight: c.weight,
                max_priority: c.max_priority.unwrap_or(match c.role {
                    Role::Admin => Priority::High,
                    Role::User => Priority::Normal,
                }),
                publish: c.publish,
                graphs: c.graphs,
                gpu_seconds_per_day: c.gpu_seconds_per_day,
                gpu_seconds_per_month: c.gpu_seconds_per_month,
            };
            let (key, secret) = manage::create(store.as_ref(), &c.name, c.role, limits, "cli")
                .await
                .map_err(failed)?;
            println!(
                "created API key {} ({}, {})",
                key.id,
                key.name,
                key.role.as_str()
            );
            println!("limits: {}", describe(&key.limits));
            println!("the secret is shown once; keep it (only its hash is stored):");
            println!("{}", secret.secret);
        }
        KeysAction::List { json } => {
            let keys = store
                .list_keys()
                .await
                .map_err(|e| Fail::usage(format!("the job store: {e}")))?;
            if json {
                let views: Vec<serde_json::Value> = keys.iter().map(key_json).collect();
                println!("{}", serde_json::Value::Array(views));
            } else {
                println!(
                    "{:<12}  {:<6}  {:<20}  {:<9}  limits",
                    "id", "role", "name", "state"
                );
                for k in &keys {
                    println!(
                        "{:<12}  {:<6}  {:<20}  {:<9}  {}",
                        k.id,
                        k.role.as_str(),
                        k.name.chars().take(20).collect::<String>(),
                        if k.is_revoked() { "revoked" } else { "active" },
                        describe(&k.limits)
                    );
                }
            }
        }
        KeysAction::Revoke { id } => {
            let key = manage::revoke(store.as_ref(), &id, "cli")
                .await
                .map_err(failed)?;
            println!(
                "revoked API key {} ({}) at {}",
                key.id, key.name, key.revoked_at
            );
        }
        KeysAction::Update(u) => {
            let change = KeyUpdate {
                name: u.name,
                role: u.role,
                rate: u.rate.map(|r| r.map(|r| r.0)),
                burst: u.burst.or(u.rate.flatten().map(|r| Some(r.1))),
                max_queued: u.max_queued,
                max_running: u.max_running,
                weight: u.weight,
                max_priority: u.max_priority,
                publish: u.publish,
                graphs: u.graphs,
                gpu_seconds_per_day: u.gpu_seconds_per_day,
                gpu_seconds_per_month: u.gpu_seconds_per_month,
            };
            if change.is_empty() {
                return Err(Fail::usage("nothing to change: give at least one setting"));
            }
            let key = manage::update(store.as_ref(), &u.id, &change, "cli")
                .await
                .map_err(failed)?;
            println!(
                "updated API key {} ({}, {})",
                key.id,
                key.name,
                key.role.as_str()
            );
            println!("limits: {}", describe(&key.limits));
        }
    }
    Ok(())
}

fn key_json(k: &ApiKey) -> serde_json::Value {
    serde_json::json!({
        "id": k.id, "name": k.name, "role": k.role, "created_at": k.created_at,
        "revoked_at": k.revoked_at, "limits": k.limits,
    })
}

/// A key's limits in a line: `rate 5/s (burst 10), max queued 20, weight 3, …`.
fn describe(l: &KeyLimits) -> String {
    let mut parts = Vec::new();
    if let Some(r) = l.rate {
        parts.push(format!("rate {r}/s (burst {})", l.burst_or_default()));
    }
    if let Some(n) = l.max_queued {
        parts.push(format!("max queued {n}"));
    }
    if let Some(n) = l.max_running {
        parts.push(format!("max running {n}"));
    }
    if let Some(n) = l.gpu_seconds_per_day {
        parts.push(format!("{n} GPU-s/day"));
    }
    if let Some(n) = l.gpu_seconds_per_month {
        parts.push(format!("{n} GPU-s/month"));
    }
    parts.push(format!("weight {}", l.weight));
    parts.push(format!("max priority {}", l.max_priority.as_str()));
    parts.join(", ")
}
