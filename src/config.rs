//! Configuration: command-line flags, each also an environment variable (the
//! prototype's `REDIS_HOST`, `REDIS_PORT` and `PORT` included). Code defaults →
//! environment → flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};

use crate::auth::AuthMode;
use crate::store::{JobStore, RedisStore, SqliteStore, StoreSettings};
use crate::transport::{ConnLimits, default_max_connections};
use crate::units::{parse_duration, parse_rate, parse_size, split_args};
use crate::worker::WorkerConfig;

/// Where outputs go (`--storage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageChoice {
    Fs,
    S3 { bucket: String, prefix: String },
}

fn parse_max_batch(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=crate::store::MAX_BATCH).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be an integer from 1 to {}",
            crate::store::MAX_BATCH
        )),
    }
}

fn parse_storage(s: &str) -> Result<StorageChoice, String> {
    if s == "fs" {
        return Ok(StorageChoice::Fs);
    }
    let (bucket, prefix) = crate::storage::S3Settings::parse_url(s)?;
    Ok(StorageChoice::S3 { bucket, prefix })
}

/// What a server process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Serve,
    Api,
    Worker,
}

impl Role {
    pub fn runs_api(self) -> bool {
        matches!(self, Role::Serve | Role::Api)
    }

    pub fn runs_workers(self) -> bool {
        matches!(self, Role::Serve | Role::Worker)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Api => "api",
            Role::Worker => "worker",
        }
    }
}

/// Settings of `serve`, `api` and `worker`.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "STUDIO_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, env = "PORT", default_value_t = 5000)]
    pub port: u16,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Who may call the API: `off` (no key needed), `keys` (every API request needs
    /// one), `auto` (off when listening on loopback only, keys otherwise).
    #[arg(long, env = "STUDIO_AUTH", value_enum, default_value = "auto")]
    pub auth: AuthMode,
    /// Rate limit for requests without a key, per client address (e.g. `5/s`,
    /// `300/m`; burst: one second's worth, or `5/s:20`). Off by default.
    #[arg(long, env = "STUDIO_ANON_RATE", value_parser = parse_rate)]
    pub anon_rate: Option<(f64, u32)>,
    /// How long a signed picture URL stays valid (auth on).
    #[arg(long, env = "STUDIO_IMAGE_URL_TTL", default_value = "1h", value_parser = parse_duration)]
    pub image_url_ttl: Duration,
    /// Threads running the async work (requests, dispatchers, deliveries).
    /// Default: half the cores, at least one; the rest is left to the pictures'
    /// and the embedded store's own threads, Redis and the network stack.
    #[arg(long, env = "STUDIO_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// `studio worker` only: serve `/metrics` on this port (on `--host`); the API
    /// roles serve it on their own port.
    #[arg(long, env = "STUDIO_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// `serve` and `api`: also speak ComfyUI's own HTTP and WebSocket API on
    /// this port (on `--host`), so ComfyUI's clients use the whole farm as one
    /// ComfyUI. Off by default.
    #[arg(long, env = "STUDIO_COMFYUI_API_PORT")]
    pub comfyui_api_port: Option<u16>,
    /// ComfyUI's frontend, served at `/` of `--comfyui-api-port`: the `static`
    /// directory of the `comfyui-frontend-package` (PyPI). Default: that of
    /// the launched ComfyUI's Python (`--comfyui-launch`), if it has one.
    #[arg(long, env = "STUDIO_COMFYUI_FRONTEND")]
    pub comfyui_frontend: Option<PathBuf>,
    /// How long an OpenAI Images API request (`/v1/images/...`) waits for its
    /// pictures before its jobs are cancelled and it answers 504.
    #[arg(long, env = "STUDIO_OPENAI_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub openai_timeout: Duration,
    /// How long usage accounts (`GET /api/usage`) are kept, past the jobs' own
    /// records.
    #[arg(long, env = "STUDIO_USAGE_RETENTION", default_value = "400d", value_parser = parse_duration)]
    pub usage_retention: Duration,
    /// Most jobs one batch (`POST /api/batches`) may make, 1–1000.
    #[arg(long, env = "STUDIO_MAX_BATCH", default_value_t = crate::submit::DEFAULT_MAX_BATCH, value_parser = parse_max_batch)]
    pub max_batch: usize,
    /// Redis: replicas that must have a write before a client or a worker is told
    /// it happened (`WAIT` after each such write, up to a second; fewer is a 503
    /// and the write is retried). 0: acknowledge at once (asynchronous replication).
    #[arg(long, env = "STUDIO_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// Where outputs are stored: `fs` (under the data directory) or
    /// `s3://bucket[/prefix]` (any S3-compatible service; see the AWS_* settings).
    #[arg(long, env = "STUDIO_STORAGE", default_value = "fs", value_parser = parse_storage)]
    pub storage: StorageChoice,
    /// How the API serves outputs from S3: `proxy` (streams them through, with
    /// ranges and ETags) or `redirect` (a 302 to a presigned URL that lives
    /// `--image-url-ttl`, at most 7 days).
    #[arg(long, env = "STUDIO_STORAGE_SERVE", default_value = "proxy", value_parser = ["proxy", "redirect"])]
    pub storage_serve: String,
    /// A custom S3 endpoint (R2, MinIO, Garage, Ceph…): path-style requests, http allowed.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// How often an API process samples the store for `/ops` (it keeps an hour).
    #[arg(long, env = "STUDIO_OPS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub ops_interval: Duration,
    /// Log file (default: backend.log in the data directory).
    #[arg(long, env = "STUDIO_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Browser origins allowed to call the API: a comma-separated list of origins
    /// (https://studio.example.com), `loopback` for any http(s)://localhost,
    /// 127.0.0.1 or [::1] port, or `*` for every origin.
    #[arg(long, env = "STUDIO_CORS_ORIGINS", default_value = "loopback")]
    pub cors_origins: String,
    /// With auth off, host names (or addresses) the API answers for besides
    /// localhost and --public-url's (comma-separated; `*` for any). A request
    /// for another host gets 421: a web page whose name was made to resolve
    /// here (DNS rebinding) cannot use the API.
    #[arg(long, env = "STUDIO_ALLOWED_HOSTS", default_value = "")]
    pub allowed_hosts: String,
    /// Prefix of the image URLs handed out (e.g. https://studio.example.com);
    /// empty gives relative URLs (/images/...).
    #[arg(long, env = "STUDIO_PUBLIC_URL", default_value = "")]
    pub public_url: String,
    /// Directory of extra workflow templates (*.json).
    #[arg(long, env = "STUDIO_WORKFLOWS")]
    pub workflows: Option<PathBuf>,
    /// ComfyUI server URL; repeat the flag (or comma-separate COMFYUI_URL) for
    /// several backends. Default: http://127.0.0.1:8188, unless
    /// `--comfyui-launch` starts them.
    #[arg(long = "comfyui", env = "COMFYUI_URL", value_delimiter = ',')]
    pub comfyui: Vec<String>,
    /// A ComfyUI checkout (the directory of its `main.py`) to start and supervise:
    /// one process per GPU, each on a free loopback port, restarted when it dies.
    #[arg(long, env = "STUDIO_COMFYUI_LAUNCH")]
    pub comfyui_launch: Option<PathBuf>,
    /// The Python that runs the launched ComfyUI (default: its `venv/` or
    /// `.venv/`, else `python3`).
    #[arg(long, env = "STUDIO_COMFYUI_PYTHON")]
    pub comfyui_python: Option<PathBuf>,
    /// Extra flags for every launched ComfyUI (split like a shell would, without
    /// expansions), e.g. "--lowvram --disable-auto-launch".
    #[arg(
        long,
        env = "STUDIO_COMFYUI_ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub comfyui_args: String,
    /// GPUs to launch ComfyUI on, one process each (`0,1`), or `cpu` for one CPU
    /// process. Default: every GPU `nvidia-smi -L` lists; one CPU process if none.
    #[arg(long, env = "STUDIO_GPUS")]
    pub gpus: Option<String>,
    /// A launched ComfyUI that stops answering `/system_stats` for this long is
    /// killed and restarted.
    #[arg(long, env = "STUDIO_COMFYUI_HANG_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub comfyui_hang_timeout: Duration,
    /// How long a launched ComfyUI may take to start answering.
    #[arg(long, env = "STUDIO_COMFYUI_START_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub comfyui_start_timeout: Duration,
    /// Exits in a row, each within a minute of starting, before a launched ComfyUI
    /// is marked failed and no longer restarted.
    #[arg(long, env = "STUDIO_COMFYUI_MAX_RESTARTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub comfyui_max_restarts: u32,
    /// After SIGTERM, how long a launched ComfyUI has to exit before SIGKILL.
    #[arg(long, env = "STUDIO_COMFYUI_STOP_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub comfyui_stop_grace: Duration,
    /// Largest input picture accepted by `POST /api/uploads` (and inline in a
    /// submission, where the JSON body's own cap also applies).
    #[arg(long, env = "STUDIO_MAX_UPLOAD_BYTES", default_value = "20MiB", value_parser = parse_size)]
    pub max_upload_bytes: u64,
    /// Bytes of live uploads one key may hold at once (anonymous callers share
    /// one quota); uploads expire with --job-ttl.
    #[arg(long, env = "STUDIO_UPLOAD_QUOTA", default_value = "1GiB", value_parser = parse_size)]
    pub upload_quota: u64,
    /// Live uploads one key may hold at once.
    #[arg(long, env = "STUDIO_UPLOAD_QUOTA_COUNT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_quota_count: u64,
    /// Bytes of upload bodies this process reads at once (over it, uploads wait
    /// a second, then get 503 upload-busy).
    #[arg(long, env = "STUDIO_UPLOAD_BUFFER", default_value = "128MiB", value_parser = parse_size)]
    pub upload_buffer: u64,
    /// Uploads one client (a key, or an address without one) may send at once
    /// (429 beyond).
    #[arg(long, env = "STUDIO_MAX_UPLOADS_PER_CLIENT", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_uploads_per_client: u64,
    /// Most pixels (width × height) of an input picture.
    #[arg(long, env = "STUDIO_MAX_UPLOAD_PIXELS", default_value_t = crate::uploads::DEFAULT_MAX_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_upload_pixels: u64,
    /// A workflow run once (with its defaults) on each launched ComfyUI whenever it
    /// starts, before it takes real work, so no user pays for the model load.
    #[arg(long, env = "STUDIO_COMFYUI_WARMUP")]
    pub comfyui_warmup: Option<String>,
    /// How long a queued job that no live backend can run (its model or node is
    /// on none of them) waits for one that can before it is failed.
    #[arg(long, env = "STUDIO_UNROUTABLE_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub unroutable_after: Duration,
    /// Prompts submitted ahead of the running one on each backend.
    #[arg(long, env = "STUDIO_PREFETCH", default_value_t = 1)]
    pub prefetch: usize,
    /// Longest a job may run on a backend before it is stopped and retried.
    #[arg(long, env = "STUDIO_JOB_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub job_timeout: Duration,
    /// Attempts before a job fails for good (and is dead-lettered).
    #[arg(long, env = "STUDIO_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// A worker silent for this long is dead and its jobs are requeued.
    #[arg(long, env = "STUDIO_WORKER_TTL", default_value = "30s", value_parser = parse_duration)]
    pub worker_ttl: Duration,
    /// First retry delay (doubling per attempt, with jitter).
    #[arg(long, env = "STUDIO_RETRY_BASE", default_value = "2s", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "STUDIO_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// How often workers delete stored files that no record names any more
    /// (uploads, after the last record naming them expired).
    #[arg(long, env = "STUDIO_SWEEP_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// How long job records live after their last change.
    #[arg(long, env = "STUDIO_JOB_TTL", default_value = "24h", value_parser = parse_duration)]
    pub job_ttl: Duration,
    /// How long a job's outputs (and their thumbnails) are kept after it ends;
    /// never less than its record lives. Default: the job TTL.
    #[arg(long, env = "STUDIO_OUTPUT_TTL", value_parser = parse_duration)]
    pub output_ttl: Option<Duration>,
    /// Bytes of outputs one API key may have stored (e.g. `10GiB`); submissions
    /// beyond are refused (`413 storage-quota`). Default: no limit.
    #[arg(long, env = "STUDIO_MAX_STORED_BYTES", value_parser = crate::units::parse_size)]
    pub max_stored_bytes: Option<u64>,
    /// How often /history is polled while the socket is healthy.
    #[arg(long, env = "STUDIO_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How often each backend is health-checked.
    #[arg(long, env = "STUDIO_HEALTH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// After SIGTERM/ctrl-c, how long running jobs may take before they are handed
    /// back to the queue.
    #[arg(long, env = "STUDIO_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Open HTTP connections at most (default: the file-descriptor limit, raised to
    /// its hard maximum at start, minus a reserve of 256 plus a tenth). Over the cap,
    /// the connection idle the longest makes room; if none is idle, 503.
    #[arg(long, env = "STUDIO_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Longest a client may take to send a request's headers once it has started.
    #[arg(long, env = "STUDIO_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// A connection with no request in flight, or a request with no byte moving, is
    /// closed after this long.
    #[arg(long, env = "STUDIO_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Longest a client may take to send a request body.
    #[arg(long, env = "STUDIO_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Open event streams (SSE) at most, in total.
    #[arg(long, env = "STUDIO_MAX_STREAMS", default_value_t = 4096)]
    pub max_streams: usize,
    /// Open event streams at most per client address (an IPv6 client: per /64).
    #[arg(long, env = "STUDIO_MAX_STREAMS_PER_CLIENT", default_value_t = 32)]
    pub max_streams_per_client: usize,
    /// Jobs waiting to run at most (queued or waiting for a retry); submissions
    /// beyond get 503 queue-full.
    #[arg(long, env = "STUDIO_MAX_QUEUED", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued: u64,
    /// Largest output file a worker downloads from ComfyUI (bytes; KiB, MiB, GiB
    /// suffixes); a job with a larger one fails.
    #[arg(long, env = "STUDIO_MAX_OUTPUT_BYTES", default_value = "2GiB", value_parser = parse_size)]
    pub max_output_bytes: u64,
    /// The log file is rotated daily and when it reaches this size.
    #[arg(long, env = "STUDIO_LOG_MAX_SIZE", default_value = "100MiB", value_parser = parse_size)]
    pub log_max_size: u64,
    /// Rotated log files kept (backend.log.1 … backend.log.N).
    #[arg(long, env = "STUDIO_LOG_FILES", default_value_t = 5)]
    pub log_files: usize,
    /// Webhook URL for submissions that name none (`webhook_url`).
    #[arg(long, env = "STUDIO_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Secrets that sign webhooks (`whsec_…`, comma-separated: each signs every
    /// message, for rotation). Without one, submissions with a webhook are refused.
    #[arg(
        long,
        env = "STUDIO_WEBHOOK_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub webhook_secret: String,
    /// Lets webhooks go to loopback, private and link-local addresses.
    #[arg(long, env = "STUDIO_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// Longest one webhook attempt may take.
    #[arg(long, env = "STUDIO_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
    /// Delays before each retry of a failed webhook (the Standard Webhooks schedule).
    #[arg(long, env = "STUDIO_WEBHOOK_RETRIES", default_value = crate::webhooks::DEFAULT_SCHEDULE)]
    pub webhook_retries: String,
    /// Webhooks waiting in the outbox at most; submissions with one beyond are refused.
    #[arg(long, env = "STUDIO_WEBHOOK_MAX_PENDING", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_max_pending: u64,
    /// Webhooks one key may have waiting in the outbox; its submissions with one
    /// beyond get 429 webhook-quota (so one key cannot fill the outbox for all).
    #[arg(long, env = "STUDIO_WEBHOOK_MAX_PENDING_PER_KEY", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_max_pending_per_key: u64,
}

impl Default for ServerArgs {
    fn default() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: ServerArgs,
        }
        Only::parse_from(["studio"]).args
    }
}

/// Where the job store is: what `serve`, `api`, `worker` and `keys` share.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// Directory for the embedded database, stored images and the log file.
    #[arg(long, global = true, env = "STUDIO_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Redis URL (redis://[:password@]host:port[/db]). Without it (and without
    /// REDIS_HOST) the embedded SQLite store is used.
    #[arg(long, global = true, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis host, as in the prototype (used when REDIS_URL is not set).
    #[arg(long, global = true, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Redis port, as in the prototype.
    #[arg(long, global = true, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Prefix for every Redis key and channel (empty: the prototype's names).
    #[arg(long, global = true, env = "STUDIO_REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,
}

impl StoreArgs {
    /// Redis if `REDIS_URL` or `REDIS_HOST` is set, else the embedded store.
    pub fn choice(&self) -> StoreChoice {
        let url = match (&self.redis_url, &self.redis_host) {
            (Some(u), _) if !u.trim().is_empty() => Some(u.trim().to_owned()),
            (_, Some(h)) if !h.trim().is_empty() => {
                let h = h.trim();
                let host = if h.contains(':') && !h.starts_with('[') {
                    format!("[{h}]")
                } else {
                    h.to_owned()
                };
                Some(format!("redis://{host}:{}/", self.redis_port))
            }
            _ => None,
        };
        match url {
            Some(url) => StoreChoice::Redis {
                url,
                prefix: self.redis_prefix.clone(),
            },
            None => StoreChoice::Sqlite {
                dir: self.data_dir.clone(),
            },
        }
    }

    /// Opens the store these settings name (`studio keys` passes the defaults).
    pub fn open(&self, settings: StoreSettings) -> anyhow::Result<Arc<dyn JobStore>> {
        Ok(match self.choice() {
            StoreChoice::Redis { url, prefix } => {
                Arc::new(RedisStore::connect(&url, &prefix, settings)?)
            }
            StoreChoice::Sqlite { dir } => {
                Arc::new(SqliteStore::open(&dir, settings).with_context(|| {
                    format!("cannot open the embedded store in {}", dir.display())
                })?)
            }
        })
    }
}

/// Which job store to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    Sqlite { dir: PathBuf },
    Redis { url: String, prefix: String },
}

impl std::fmt::Display for StoreChoice {
    /// Where the store is, for the first log line (no password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Sqlite { dir } => {
                write!(
                    f,
                    "sqlite (embedded) at {}",
                    dir.join("studio.db").display()
                )
            }
            StoreChoice::Redis { url, prefix } => {
                write!(f, "redis at {}", crate::store::redis::redact(url))?;
                if !prefix.is_empty() {
                    write!(f, " (key prefix {prefix:?})")?;
                }
                Ok(())
            }
        }
    }
}

impl ServerArgs {
    /// The async runtime's worker threads: `--threads`, else half the cores
    /// (at least one). On two cores one thread costs a third less CPU per
    /// request than two: no wake-ups across threads for each request.
    pub fn runtime_threads(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            usize::from,
        )
    }

    /// Redis if `REDIS_URL` or `REDIS_HOST` is set, else the embedded store.
    pub fn store_choice(&self) -> StoreChoice {
        self.store.choice()
    }

    /// The S3 settings, when outputs go to a bucket.
    pub fn s3_settings(&self) -> Option<crate::storage::S3Settings> {
        match &self.storage {
            StorageChoice::Fs => None,
            StorageChoice::S3 { bucket, prefix } => Some(crate::storage::S3Settings {
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                endpoint: self.s3_endpoint.clone().filter(|e| !e.is_empty()),
                region: self.s3_region.clone().filter(|e| !e.is_empty()),
                access_key_id: self.s3_access_key_id.clone(),
                secret_access_key: self.s3_secret_access_key.clone(),
            }),
        }
    }

    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            job_ttl: self.job_ttl,
            max_attempts: self.max_attempts,
            worker_ttl: self.worker_ttl,
            max_queued: self.max_queued,
            wait_replicas: self.redis_wait_replicas,
            usage_retention: self.usage_retention,
            ..StoreSettings::default()
        }
    }

    /// How the door is guarded with auth `mode` in force: with auth off, only
    /// localhost, --public-url's host, --allowed-hosts and an address given to
    /// --host are answered; `--auth auto` that chose off lets no proxied request
    /// in without a key.
    pub fn door(&self, mode: AuthMode) -> crate::api::access::Door {
        let hosts = (mode == AuthMode::Off && self.allowed_hosts.trim() != "*").then(|| {
            let mut hosts: Vec<String> = self
                .allowed_hosts
                .split(',')
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect();
            let public = self.public_url.trim();
            if let Some(rest) = public
                .strip_prefix("https://")
                .or_else(|| public.strip_prefix("http://"))
            {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
                hosts.push(crate::auth::host_of(authority).to_ascii_lowercase());
            }
            let bound = self
                .host
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']');
            if bound
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| !ip.is_unspecified())
            {
                hosts.push(bound.to_ascii_lowercase());
            }
            hosts
        });
        crate::api::access::Door {
            hosts,
            proxied_needs_key: self.auth == AuthMode::Auto && mode == AuthMode::Off,
        }
    }

    /// Caps on input pictures.
    pub fn upload_limits(&self) -> crate::submit::UploadLimits {
        crate::submit::UploadLimits {
            max_bytes: self.max_upload_bytes,
            max_pixels: self.max_upload_pixels,
            ttl: self.job_ttl,
            quota: crate::store::UploadQuota {
                max_bytes: self.upload_quota,
                max_count: self.upload_quota_count,
            },
            buffer: self.upload_buffer.max(self.max_upload_bytes),
            per_client: self.max_uploads_per_client as usize,
        }
    }

    /// The HTTP listener's limits; `fd_limit` is the file-descriptor limit in force.
    pub fn conn_limits(&self, fd_limit: u64) -> ConnLimits {
        ConnLimits {
            max_connections: self
                .max_connections
                .unwrap_or_else(|| default_max_connections(fd_limit))
                .max(1),
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            stall_timeout: self.idle_timeout,
        }
    }

    /// Where ComfyUI's frontend is (`--comfyui-frontend`, or the package of the
    /// launched ComfyUI's Python), when the ComfyUI port is on.
    pub fn comfyui_frontend_dir(&self) -> Option<PathBuf> {
        self.comfyui_api_port?;
        if let Some(d) = &self.comfyui_frontend {
            return Some(d.clone());
        }
        let python = self.launch_config()?.python;
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import comfyui_frontend_package as p, os; print(os.path.join(os.path.dirname(p.__file__), 'static'))",
            ])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        (out.status.success() && dir.join("index.html").is_file()).then_some(dir)
    }

    /// The ComfyUI processes to launch, if any.
    pub fn launch_config(&self) -> Option<crate::worker::launch::LaunchConfig> {
        use crate::worker::launch::LaunchConfig;
        let dir = self.comfyui_launch.clone()?;
        let devices = match self.gpus.as_deref().map(str::trim) {
            Some("cpu") => vec![None],
            Some(list) if !list.is_empty() => list
                .split(',')
                .map(|g| g.trim())
                .filter(|g| !g.is_empty())
                .map(|g| Some(g.to_owned()))
                .collect(),
            _ => {
                let found = LaunchConfig::detect_gpus();
                if found.is_empty() {
                    vec![None]
                } else {
                    found.into_iter().map(Some).collect()
                }
            }
        };
        Some(LaunchConfig {
            python: self
                .comfyui_python
                .clone()
                .unwrap_or_else(|| LaunchConfig::default_python(&dir)),
            dir,
            extra_args: split_args(&self.comfyui_args),
            devices,
            data_dir: self.store.data_dir.clone(),
            hang_timeout: self.comfyui_hang_timeout,
            start_timeout: self.comfyui_start_timeout,
            max_fast_exits: self.comfyui_max_restarts,
            stop_grace: self.comfyui_stop_grace,
            log_max_bytes: self.log_max_size,
            log_files: self.log_files,
            warmup: self.comfyui_warmup.clone(),
            warmup_timeout: self.job_timeout,
        })
    }

    /// How workers behave; a bad webhook secret, schedule or default URL fails here.
    pub fn worker_config(&self) -> anyhow::Result<WorkerConfig> {
        let launch = self.launch_config();
        let mut backends: Vec<String> = self
            .comfyui
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if backends.is_empty() && launch.is_none() {
            backends.push("http://127.0.0.1:8188".into());
        }
        Ok(WorkerConfig {
            job_ttl: self.job_ttl,
            output_ttl: self.output_ttl.unwrap_or(self.job_ttl),
            sweep_interval: self.sweep_interval,
            sweep_grace: crate::worker::sweep::GRACE.min(self.job_ttl),
            launch,
            capabilities_interval: Duration::from_secs(300),
            unroutable_after: self.unroutable_after,
            backends,
            prefetch: self.prefetch,
            job_timeout: self.job_timeout,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            poll_interval: self.poll_interval,
            health_interval: self.health_interval,
            heartbeat_interval: (self.worker_ttl / 3).max(Duration::from_millis(50)),
            maintenance_interval: (self.worker_ttl / 10)
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
            claim_wait: Duration::from_secs(1),
            shutdown_grace: self.shutdown_grace,
            public_url: self.public_url.trim_end_matches('/').to_owned(),
            max_output_bytes: self.max_output_bytes,
            webhooks: Arc::new(self.webhook_settings()?),
        })
    }

    /// How webhooks are sent; a bad secret, schedule or default URL fails here,
    /// at startup.
    pub fn webhook_settings(&self) -> anyhow::Result<crate::webhooks::WebhookSettings> {
        use crate::webhooks as w;
        let secrets = w::parse_secrets(&self.webhook_secret)
            .map_err(|e| anyhow::anyhow!("--webhook-secret: {e}"))?;
        let schedule = w::parse_schedule(&self.webhook_retries)
            .map_err(|e| anyhow::anyhow!("--webhook-retries: {e}"))?;
        let default_url = match self.webhook_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => {
                w::check_url(u, self.webhook_allow_private)
                    .map_err(|e| anyhow::anyhow!("--webhook-url {e}"))?;
                Some(u.to_owned())
            }
        };
        Ok(w::WebhookSettings {
            secrets,
            default_url,
            allow_private: self.webhook_allow_private,
            timeout: self.webhook_timeout,
            schedule,
            max_pending: self.webhook_max_pending,
            max_pending_per_key: self.webhook_max_pending_per_key,
            concurrency: 16,
            image_url_ttl: self.image_url_ttl,
        })
    }

    pub fn log_file(&self) -> PathBuf {
        self.log_file
            .clone()
            .unwrap_or_else(|| self.store.data_dir.join("backend.log"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> ServerArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: ServerArgs,
        }
        Only::try_parse_from(std::iter::once("studio").chain(list.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn redis_host_and_port_build_a_url_and_nothing_means_sqlite() {
        let a = args(&["--redis-host", "redis", "--redis-port", "6380"]);
        assert_eq!(
            a.store_choice(),
            StoreChoice::Redis {
                url: "redis://redis:6380/".into(),
                prefix: String::new()
            }
        );
        let a = args(&["--redis-url", "redis://h/2", "--redis-host", "ignored"]);
        assert_eq!(
            a.store_choice(),
            StoreChoice::Redis {
                url: "redis://h/2".into(),
                prefix: String::new()
            }
        );
        let a = args(&["--redis-host", "::1"]);
        assert_eq!(
            a.store_choice(),
            StoreChoice::Redis {
                url: "redis://[::1]:6379/".into(),
                prefix: String::new()
            }
        );
        let a = args(&["--data-dir", "/tmp/x"]);
        assert_eq!(
            a.store_choice(),
            StoreChoice::Sqlite {
                dir: "/tmp/x".into()
            }
        );
    }

    #[test]
    fn launching_comfyui_replaces_the_default_url() {
        assert_eq!(
            args(&[]).worker_config().unwrap().backends,
            ["http://127.0.0.1:8188"]
        );
        let a = args(&["--comfyui-launch", "/opt/ComfyUI", "--gpus", "0,1"]);
        let w = a.worker_config().unwrap();
        assert!(w.backends.is_empty());
        let l = w.launch.unwrap();
        assert_eq!(l.devices, [Some("0".to_owned()), Some("1".to_owned())]);
        assert_eq!(l.python, std::path::PathBuf::from("python3"));
        let cpu = args(&["--comfyui-launch", "/opt/ComfyUI", "--gpus", "cpu"]);
        assert_eq!(cpu.worker_config().unwrap().launch.unwrap().devices, [None]);
    }

    #[test]
    fn several_backends_by_flag_or_comma() {
        let a = args(&[
            "--comfyui",
            "http://a:1",
            "--comfyui",
            "http://b:2,http://c:3",
        ]);
        assert_eq!(
            a.worker_config().unwrap().backends,
            ["http://a:1", "http://b:2", "http://c:3"]
        );
    }
}
