//! Building and running the service: bind first (so tests can use port 0 and read
//! the address), then run until the shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::api::access::Access;
use crate::api::events::{EventHub, StreamLimiter};
use crate::api::{self, ApiService, AppContext, AppState, CorsOrigins};
use crate::backends::Offers;
use crate::catalog::Catalog;
use crate::config::{Role, ServerArgs};
use crate::metrics::Metrics;
use crate::shutdown;
use crate::storage::{FsImageStore, ImageStore, S3ImageStore};
use crate::store::JobStore;
use crate::submit::{Submitter, Uploader};
use crate::transport::{self, ConnStats, Server, raise_fd_limit};
use crate::worker::Workers;
use crate::workflow::WorkflowRegistry;

/// How long open HTTP connections get to finish after shutdown starts.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// A built, bound, not yet running service.
pub struct App {
    /// The workflows, kept current by a watcher task.
    catalog: Arc<Catalog>,
    /// The `/ops` sampler (API roles).
    ops: Option<Arc<api::ops::OpsHistory>>,
    role: Role,
    server: Option<Server>,
    router: Option<ApiService>,
    /// The ComfyUI-compatible listener (`--comfyui-api-port`).
    comfy: Option<(Server, ApiService)>,
    workers: Option<Workers>,
    store: Arc<dyn JobStore>,
    stop: watch::Sender<bool>,
}

impl App {
    /// Opens the store, loads the workflows, binds the listener (API roles) and sets
    /// up the backends (worker roles).
    pub async fn build(role: Role, args: &ServerArgs) -> anyhow::Result<App> {
        let store = args.store.open(args.store_settings())?;
        let workflows = Arc::new(
            WorkflowRegistry::load(args.workflows.as_deref()).context("cannot load workflows")?,
        );
        let catalog = Catalog::new(workflows.clone(), store.clone());
        // The published workflows, if the store answers now (else the watcher
        // reads them as soon as it does).
        if let Err(e) = catalog.refresh().await {
            tracing::warn!(error = %e, "cannot read the published workflows yet");
        }
        let images: Arc<dyn ImageStore> = match args.s3_settings() {
            None => Arc::new(FsImageStore::new(args.store.data_dir.join("images"))),
            Some(s3) => {
                let store = S3ImageStore::new(&s3)
                    .map_err(|e| anyhow::anyhow!("--storage s3://{}: {e}", s3.bucket))?;
                // A wrong endpoint or secret fails here, not at the first job.
                store.check().await.map_err(|e| {
                    anyhow::anyhow!(
                        "cannot use the bucket {:?}{}: {e}",
                        s3.bucket,
                        s3.endpoint
                            .as_deref()
                            .map(|e| format!(" at {e}"))
                            .unwrap_or_default()
                    )
                })?;
                tracing::info!(bucket = %s3.bucket, prefix = %s3.prefix, "outputs go to S3");
                Arc::new(store)
            }
        };
        let metrics = Metrics::new(workflows.names().map(str::to_owned));
        // Read (and checked) in every role: the API needs the webhook settings too,
        // to refuse webhooks without a secret and to apply the default URL.
        let worker_config = args.worker_config()?;
        let webhooks = worker_config.webhooks.clone();
        let workers = if role.runs_workers() {
            Some(Workers::start(
                worker_config,
                store.clone(),
                catalog.clone(),
                images.clone(),
                metrics.clone(),
            )?)
        } else {
            None
        };
        let (stop, stop_rx) = shutdown::flag();
        let auth = args
            .auth
            .resolve(&args.host, &args.public_url, &args.cors_origins);
        let door = args.door(auth);
        let ops = api::ops::OpsHistory::new(args.ops_interval);
        let mut comfy = None;
        let (server, router) = if role.runs_api() {
            let addr = format!("{}:{}", args.host, args.port);
            let listener = transport::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            if auth == crate::auth::AuthMode::Off && !crate::auth::is_loopback_host(&args.host) {
                tracing::warn!(
                    host = %args.host,
                    "AUTH IS OFF ON A NON-LOOPBACK ADDRESS: anyone who can reach {} can list every prompt, download every picture and queue unlimited work. Use --auth keys (the default for such an address) unless this network is yours alone.",
                    args.host
                );
            }
            if args.auth == crate::auth::AuthMode::Auto && auth == crate::auth::AuthMode::Off {
                tracing::warn!(
                    "AUTH IS OFF (--auth auto on a loopback address): anyone on this machine can use the API. Requests that come through a proxy (Forwarded, X-Forwarded-For) need a key anyway; behind a reverse proxy, set --public-url (then auto means keys) or --auth keys."
                );
            }
            tracing::info!(auth = auth.as_str(), "who may call the API");
            let fd_limit = raise_fd_limit();
            let limits = args.conn_limits(fd_limit);
            let server = Server::new(listener, limits);
            tracing::info!(
                fd_limit,
                max_connections = limits.max_connections,
                max_streams = args.max_streams,
                max_streams_per_client = args.max_streams_per_client,
                "connection limits"
            );
            let offers = Arc::new(Offers::default());
            let submit = Arc::new(Submitter {
                store: store.clone(),
                catalog: catalog.clone(),
                offers: offers.clone(),
                webhooks: webhooks.clone(),
                uploads: Uploader::new(args.upload_limits(), images.clone()),
                metrics: metrics.clone(),
                store_timeout: api::STORE_TIMEOUT,
                max_batch: args.max_batch,
                max_stored_bytes: args.max_stored_bytes,
                needs: Default::default(),
            });
            let state = AppState::new(AppContext {
                store: store.clone(),
                catalog: catalog.clone(),
                images,
                public_url: args.public_url.trim_end_matches('/').to_owned(),
                backends: workers.as_ref().map(Workers::report),
                hub: EventHub::start(store.clone()),
                shutdown: stop_rx,
                streams: StreamLimiter::new(args.max_streams, args.max_streams_per_client),
                body_timeout: args.body_timeout,
                cors: Arc::new(CorsOrigins::parse(&args.cors_origins)),
                connections: Some(server.stats()),
                access: Access::measured(
                    auth,
                    store.clone(),
                    args.anon_rate,
                    args.image_url_ttl,
                    Some(metrics.clone()),
                    door.clone(),
                ),
                metrics,
                ops: ops.clone(),
                redirect_images: args.storage_serve == "redirect",
                submit,
                openapi: Default::default(),
                offers,
                webhooks,
                comfyui: api::comfyui::Frontend::new(args.comfyui_frontend_dir()),
                openai_timeout: args.openai_timeout,
                run_times: api::eta::RunTimes::start(store.clone()),
            });
            if let Some(port) = args.comfyui_api_port {
                let addr = format!("{}:{}", args.host, port);
                let listener = transport::bind(&addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} for the ComfyUI API"))?;
                comfy = Some((
                    Server::new(listener, limits),
                    api::comfyui::router(state.clone()),
                ));
            }
            (Some(server), Some(api::router(state)))
        } else if let Some(port) = args.metrics_port {
            // A worker-only process: /metrics on a port of its own.
            let addr = format!("{}:{}", args.host, port);
            let listener = transport::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            let limits = args.conn_limits(raise_fd_limit());
            let server = Server::new(listener, limits);
            let sources = api::metrics::Sources {
                store: store.clone(),
                backends: workers.as_ref().map(Workers::report),
                streams: None,
                connections: Some(server.stats()),
                metrics: metrics.clone(),
            };
            let access = Access::measured(
                auth,
                store.clone(),
                None,
                args.image_url_ttl,
                Some(metrics),
                door,
            );
            (
                Some(server),
                Some(api::metrics::worker_service(sources, access)),
            )
        } else {
            (None, None)
        };
        Ok(App {
            catalog,
            ops: role.runs_api().then_some(ops),
            role,
            server,
            router,
            comfy,
            workers,
            store,
            stop,
        })
    }

    /// The address the API listens on (with port 0, the port picked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address the ComfyUI-compatible API listens on, if it does.
    pub fn comfyui_addr(&self) -> Option<SocketAddr> {
        self.comfy.as_ref().and_then(|(s, _)| s.local_addr().ok())
    }

    /// The HTTP listener's counts and limits (API roles).
    pub fn connections(&self) -> Option<ConnStats> {
        self.server.as_ref().map(Server::stats)
    }

    pub fn store(&self) -> Arc<dyn JobStore> {
        self.store.clone()
    }

    /// Serves until `shutdown` completes, then stops: no new claims, running jobs
    /// finish or are handed back, open requests get a few seconds.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop_tx = self.stop;
        let stop_rx = stop_tx.subscribe();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let mut tasks = tokio::task::JoinSet::new();
        if let (Some(server), Some(router)) = (self.server, self.router) {
            let addr = server.local_addr()?;
            tracing::info!(role = self.role.as_str(), "listening on http://{addr}");
            let (graceful, mut deadline) = (stop_rx.clone(), stop_rx.clone());
            tasks.spawn(async move {
                tokio::select! {
                    r = server.run(router, graceful) => r.context("HTTP server failed"),
                    _ = async {
                        shutdown::signalled(&mut deadline).await;
                        tokio::time::sleep(HTTP_DRAIN).await;
                    } => Ok(()),
                }
            });
        }
        if let Some((server, router)) = self.comfy {
            let addr = server.local_addr()?;
            tracing::info!("ComfyUI's API on http://{addr}");
            let (graceful, mut deadline) = (stop_rx.clone(), stop_rx.clone());
            tasks.spawn(async move {
                tokio::select! {
                    r = server.run(router, graceful) => r.context("the ComfyUI API server failed"),
                    _ = async {
                        shutdown::signalled(&mut deadline).await;
                        tokio::time::sleep(HTTP_DRAIN).await;
                    } => Ok(()),
                }
            });
        }
        {
            let (catalog, stop) = (self.catalog.clone(), stop_rx.clone());
            tasks.spawn(async move {
                catalog.watch(stop).await;
                Ok(())
            });
        }
        if let Some(ops) = self.ops {
            let (store, stop) = (self.store.clone(), stop_rx.clone());
            tasks.spawn(async move {
                ops.run(store, stop).await;
                Ok(())
            });
        }
        if let Some(workers) = self.workers {
            let stop = stop_rx.clone();
            tasks.spawn(async move {
                workers.run(stop).await;
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tasks.abort_all();
                    return Err(e);
                }
                Err(e) => {
                    tasks.abort_all();
                    return Err(anyhow::anyhow!("a service task failed: {e}"));
                }
            }
        }
        Ok(())
    }
}
