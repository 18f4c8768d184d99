//! The HTTP API (axum): the router, its state, and the middleware every request
//! passes (request log, CORS, panic guard). One file per resource.

pub mod access;
pub mod admin;
pub mod batches;
pub mod comfyui;
pub mod error;
pub mod eta;
pub mod events;
pub mod extract;
pub mod guard;
pub mod health;
pub mod idempotency;
pub mod images;
pub mod jobs;
pub mod key_cache;
pub mod keys;
pub mod mcp;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod previews;
pub mod thumbs;
pub mod uploads;
pub mod usage;
pub mod workflows;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use self::error::ApiError;
use crate::auth::signing::Signing;
use crate::backends::{BackendReport, Offers};
use crate::storage::ImageStore;
use crate::store::{JobStore, StoreError};

/// Longest a request waits for the store before answering 503. The Redis store
/// times out each command sooner; this also bounds the embedded store.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handler can reach: one pointer, so the clone axum makes for each
/// extractor of each request costs one atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<AppContext>);

impl AppState {
    pub fn new(context: AppContext) -> Self {
        AppState(Arc::new(context))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppContext;

    fn deref(&self) -> &AppContext {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppContext {
    pub store: Arc<dyn JobStore>,
    /// The workflows: the base and the published ones, kept current.
    pub catalog: Arc<crate::catalog::Catalog>,
    pub images: Arc<dyn ImageStore>,
    /// Prefix of the URLs we hand out (empty: relative URLs such as `/images/…`).
    pub public_url: String,
    /// The backends of the workers in this process, if any.
    pub backends: Option<Arc<dyn BackendReport>>,
    /// Fans store changes out to event streams.
    pub hub: Arc<events::EventHub>,
    /// Set when the service stops: event streams end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Open event streams, capped in total and per client.
    pub streams: Arc<events::StreamLimiter>,
    /// Longest a client may take to send a request body.
    pub body_timeout: Duration,
    /// Which browser origins may call the API.
    pub cors: Arc<CorsOrigins>,
    /// The HTTP listener's counts and limits, for `/health`.
    pub connections: Option<crate::transport::ConnStats>,
    /// Who is asking: keys, rate limits, URL signing.
    pub access: Arc<access::Access>,
    /// What `/metrics` reports.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The last hour, for `/api/ops`.
    pub ops: Arc<ops::OpsHistory>,
    /// Answer `/images` with a 302 to a presigned URL (`--storage-serve redirect`).
    pub redirect_images: bool,
    /// `/openapi.json` as last made, with the workflow generation it was made
    /// for (it depends only on the settings and the workflows).
    pub openapi: std::sync::Mutex<Option<(u64, bytes::Bytes)>>,
    /// The one submission path (and input pictures).
    pub submit: Arc<crate::submit::Submitter>,
    /// What the live backends offer (for submissions and `/api/workflows`).
    pub offers: Arc<Offers>,
    /// Webhooks: the default URL, whether they can be signed, where they may go.
    pub webhooks: Arc<crate::webhooks::WebhookSettings>,
    /// ComfyUI's frontend on the ComfyUI-compatible port.
    pub comfyui: comfyui::Frontend,
    /// How long an OpenAI Images request waits for its pictures.
    pub openai_timeout: Duration,
    /// Recent run times, for a queued job's `eta_seconds`.
    pub run_times: Arc<eta::RunTimes>,
}

impl AppContext {
    /// How picture URLs are signed in this answer (`None` with auth off).
    pub async fn signing(&self) -> Result<Option<Signing<'_>>, ApiError> {
        if !self.access.signs_urls() {
            return Ok(None);
        }
        let signer = self.with_timeout(self.access.signer()).await?;
        Ok(Some(Signing {
            signer,
            exp: self.access.url_expiry(),
        }))
    }

    /// Runs a store call, answering 503 if it takes longer than [`STORE_TIMEOUT`].
    pub async fn with_timeout<T>(
        &self,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(STORE_TIMEOUT, f).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(ApiError::unavailable(format!(
                "the job store did not answer within {} s; try again shortly",
                STORE_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Which browser origins may call the API. The default is `loopback`: pages served
/// from this machine (a front end in development) but no other site, because an
/// open CORS policy lets any web page a user visits drive the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Every origin (`*`, only when named explicitly).
    Any,
    /// Exact origins, and loopback origins when `loopback` is set.
    List {
        loopback: bool,
        origins: Vec<String>,
    },
}

impl CorsOrigins {
    /// Parses `--cors-origins`: comma-separated origins, `loopback`, or `*`.
    pub fn parse(s: &str) -> Self {
        let mut loopback = false;
        let mut origins = Vec::new();
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token {
                "*" => return CorsOrigins::Any,
                "loopback" => loopback = true,
                o => origins.push(o.trim_end_matches('/').to_ascii_lowercase()),
            }
        }
        CorsOrigins::List { loopback, origins }
    }

    /// Whether a browser page from `origin` may call the API.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            CorsOrigins::Any => true,
            CorsOrigins::List { loopback, origins } => {
                let o = origin.to_ascii_lowercase();
                origins.contains(&o) || (*loopback && is_loopback_origin(&o))
            }
        }
    }

    pub fn layer(&self) -> CorsLayer {
        let base = CorsLayer::new()
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(Duration::from_secs(3600));
        match self {
            CorsOrigins::Any => base.allow_origin(Any),
            list => {
                let list = Arc::new(list.clone());
                base.allow_origin(AllowOrigin::predicate(move |origin, _| {
                    origin.to_str().is_ok_and(|o| list.allows(o))
                }))
            }
        }
    }
}

/// Request headers a page on an allowed origin may send.
const ALLOWED_HEADERS: [&str; 6] = [
    "content-type",
    "authorization",
    "x-api-key",
    "x-requested-with",
    "idempotency-key",
    "last-event-id",
];

/// Response headers a page on an allowed origin may read.
const EXPOSED_HEADERS: [&str; 2] = ["retry-after", "content-disposition"];

/// Headers no web form can send, so their presence shows a deliberate client (a
/// script on an allowed origin, the CLI, curl).
const INTENT_HEADERS: &[&str] = &["x-requested-with", "authorization", "x-api-key"];

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, with any port.
fn is_loopback_origin(origin: &str) -> bool {
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    ["localhost", "127.0.0.1", "[::1]"].iter().any(|host| {
        authority.strip_prefix(host).is_some_and(|rest| {
            rest.is_empty()
                || rest.strip_prefix(':').is_some_and(|p| {
                    (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
                })
        })
    })
}

/// Declares the routes once: the router is built from this list, and `ROUTES`
/// lets the OpenAPI test check that the document lists every one of them.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route: (method, path).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn add_routes(router: Router<AppState>) -> Router<AppState> {
            router$(.route($path, axum::routing::$method($handler)))*
        }
    };
}

routes! {
    get "/health" => health::health,
    get "/metrics" => metrics::metrics,
    post "/api/generate" => jobs::generate,
    post "/api/batches" => batches::submit,
    get "/api/batches/{batch_id}" => batches::get,
    post "/api/batches/{batch_id}/cancel" => batches::cancel,
    post "/api/uploads" => uploads::upload,
    get "/api/status/{job_id}" => jobs::status,
    get "/api/jobs" => jobs::list::list,
    get "/api/jobs/{job_id}" => jobs::get,
    delete "/api/jobs/{job_id}" => jobs::delete::delete,
    post "/api/jobs/{job_id}/cancel" => jobs::cancel::cancel,
    post "/api/jobs/{job_id}/retry" => admin::retry,
    get "/api/admin/pause" => admin::get_pauses,
    post "/api/admin/pause" => admin::pause,
    post "/api/admin/resume" => admin::resume,
    post "/api/admin/drain" => admin::drain,
    get "/api/admin/dead" => admin::dead,
    post "/api/admin/dead/requeue" => admin::requeue,
    get "/api/jobs/{job_id}/events" => events::job_events,
    get "/api/jobs/{job_id}/preview" => previews::preview,
    get "/api/events" => events::all_events,
    get "/api/workflows" => workflows::list,
    post "/api/workflows" => workflows::publish,
    post "/api/workflows/convert" => workflows::convert,
    post "/api/workflows/check" => workflows::check,
    get "/api/workflows/{name}" => workflows::get,
    delete "/api/workflows/{name}" => workflows::retire,
    get "/api/workflows/{name}/versions/{version}" => workflows::version,
    get "/api/ops" => ops::ops,
    get "/api/usage" => usage::usage,
    get "/api/keys" => keys::list,
    post "/api/keys" => keys::create,
    patch "/api/keys/{key_id}" => keys::update,
    delete "/api/keys/{key_id}" => keys::revoke,
    get "/images/{job_id}/{file}" => images::image,
    get "/" => pages::index,
    get "/docs" => pages::docs,
    get "/ops" => pages::ops_page,
    get "/openapi.json" => openapi::openapi_json,
    get "/assets/{file}" => pages::asset,
    post "/v1/images/generations" => openai::generations,
    post "/v1/images/edits" => openai::edits,
    get "/v1/models" => openai::models,
    post "/mcp" => mcp::post,
    get "/mcp" => mcp::no_stream,
    delete "/mcp" => mcp::no_session,
}

/// The HTTP service the listener runs.
pub type ApiService = guard::Answers<tower_http::cors::Cors<access::Gate<Router>>>;

/// The whole service. Every request passes, outermost first: the answers' security
/// headers and JSON error shape (for whatever axum rejects, [`guard::Answers`]),
/// CORS, who is asking and their rate limit ([`access::Gate`]), the panic guard,
/// the request log, the route.
pub fn router(state: AppState) -> ApiService {
    layered(
        add_routes(Router::new()).fallback(not_found),
        state,
        access::Surface::Studio,
    )
}

/// `routes` with every layer [`router`] describes, for the front door `surface`.
fn layered(routes: Router<AppState>, state: AppState, surface: access::Surface) -> ApiService {
    let cors = state.cors.layer();
    let access = state.access.clone();
    let routes = routes
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            log_request,
        ))
        .layer(CatchPanicLayer::custom(panic_response));
    // CORS outside the gate: preflights carry no key, and a 401 must be readable
    // by the page that caused it.
    guard::Answers::new(tower::Layer::layer(
        &cors,
        access::Gate::on(routes, access, surface),
    ))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(
        "not-found",
        format!("no such route: {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server hit a bug handling this request; it is in the server log",
    )
    .into_response()
}

/// One log line per request (method, matched route, status, duration), and the
/// same in the HTTP metrics.
async fn log_request(
    axum::extract::State(metrics): axum::extract::State<Arc<crate::metrics::Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(unmatched)".to_owned());
    let res = next.run(req).await;
    let status = res.status().as_u16();
    let elapsed = start.elapsed();
    let ms = elapsed.as_secs_f64() * 1000.0;
    tracing::info!(target: "studio::http", %method, %route, status, ms = format_args!("{ms:.2}"), "request");
    // Only known methods: anything else would be a label a client chooses.
    let method: &'static str = match method {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    metrics
        .http_requests
        .get_or_create(&crate::metrics::HttpLabels {
            method,
            route: route.clone(),
            status,
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&crate::metrics::RouteLabels { method, route })
        .observe(elapsed.as_secs_f64());
    res
}
