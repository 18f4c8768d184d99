//! The HTTP API (axum): the router, its state, and the middleware every request
//! passes (request log, CORS, panic guard). One file per resource.

pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod images;
pub mod jobs;
pub mod openapi;
pub mod pages;
pub mod workflows;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use self::error::ApiError;
use crate::storage::ImageStore;
use crate::store::{JobStore, StoreError};
use crate::workflow::WorkflowRegistry;

/// Longest a request waits for the store before answering 503. The Redis store
/// times out each command sooner; this also bounds the embedded store.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Something that can describe the ComfyUI backends this process drives, for
/// `/health`.
pub trait BackendReport: Send + Sync {
    fn snapshot(&self) -> Vec<health::BackendState>;
}

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn JobStore>,
    pub workflows: Arc<WorkflowRegistry>,
    pub images: Arc<dyn ImageStore>,
    /// Prefix of the URLs we hand out (empty: relative URLs such as `/images/…`).
    pub public_url: String,
    /// The backends of the workers in this process, if any.
    pub backends: Option<Arc<dyn BackendReport>>,
    /// Fans store changes out to event streams.
    pub hub: Arc<events::EventHub>,
    /// Set when the service stops: event streams end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
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

/// Which browser origins may call the API: `*` (the prototype's open CORS) or a
/// comma-separated list.
#[derive(Clone, Debug)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
    pub fn parse(s: &str) -> Self {
        let list: Vec<String> = s
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if list.is_empty() || list.iter().any(|o| o == "*") {
            CorsOrigins::Any
        } else {
            CorsOrigins::List(list)
        }
    }

    fn layer(&self) -> CorsLayer {
        let base = CorsLayer::new()
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(Any)
            .max_age(Duration::from_secs(3600));
        match self {
            CorsOrigins::Any => base.allow_origin(Any),
            CorsOrigins::List(list) => {
                let values: Vec<HeaderValue> = list.iter().filter_map(|o| o.parse().ok()).collect();
                base.allow_origin(AllowOrigin::list(values))
            }
        }
    }
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
    post "/api/generate" => jobs::generate,
    get "/api/status/{job_id}" => jobs::status,
    get "/api/jobs" => jobs::list,
    get "/api/jobs/{job_id}" => jobs::get,
    post "/api/jobs/{job_id}/cancel" => jobs::cancel,
    get "/api/jobs/{job_id}/events" => events::job_events,
    get "/api/events" => events::all_events,
    get "/api/workflows" => workflows::list,
    get "/images/{job_id}/{file}" => images::image,
    get "/" => pages::index,
    get "/docs" => pages::docs,
    get "/openapi.json" => pages::openapi_json,
    get "/assets/{file}" => pages::asset,
}

/// The whole router.
pub fn router(state: AppState, cors: &CorsOrigins) -> Router {
    add_routes(Router::new())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(log_request))
        .layer(cors.layer())
        .layer(CatchPanicLayer::custom(panic_response))
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

/// One log line per request: method, matched route, status, duration.
async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(unmatched)".to_owned());
    let res = next.run(req).await;
    let status = res.status().as_u16();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(target: "studio::http", %method, %route, status, ms = format_args!("{ms:.2}"), "request");
    res
}
