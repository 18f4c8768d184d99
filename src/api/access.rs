//! Who is asking, on every request: [`Gate`] reads the key a request carries
//! (`Authorization: Bearer sk_…` or `X-API-Key`), checks it against the process's
//! key cache, applies the key's rate limit (or the per-address one for requests
//! without a key), and hands the [`Identity`] to the handlers ([`Caller`]). With
//! auth off and no rate limit on anonymous requests, a request without a key costs
//! nothing here.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::OnceCell;
use tower::Service;

use super::error::ApiError;
use super::key_cache::{KeyCache, KeyRefusal};
use crate::auth::rate::{RateCheck, RateDecision};
use crate::auth::signing::UrlSigner;
use crate::auth::{AuthMode, Identity};
use crate::clock;
use crate::limit::IpKey;
use crate::store::{JobStore, StoreError};

/// How the API decides who is asking. One per process, shared by every request.
pub struct Access {
    /// `Off` or `Keys` (`Auto` resolved at start).
    pub mode: AuthMode,
    pub keys: KeyCache,
    pub store: Arc<dyn JobStore>,
    /// Requests per second and burst per client address, for requests without a
    /// key (`--anon-rate`).
    pub anon_rate: Option<(f64, u32)>,
    /// How long a signed image URL stays valid.
    pub url_ttl: Duration,
    signer: OnceCell<UrlSigner>,
    /// Counts refusals (401, 429) for `/metrics`.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// With auth off, the `Host` values answered (lower case, without ports):
    /// a page on another name that resolves here (DNS rebinding) gets `421`.
    /// `None`: any (auth on, or `--allowed-hosts '*'`).
    pub hosts: Option<Vec<String>>,
    /// `--auth auto` that resolved to off: a request that came through a
    /// proxy (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`) needs a key anyway.
    pub proxied_needs_key: bool,
}

/// How [`Access`] guards the door, beyond its mode.
#[derive(Clone, Debug, Default)]
pub struct Door {
    /// See [`Access::hosts`].
    pub hosts: Option<Vec<String>>,
    /// See [`Access::proxied_needs_key`].
    pub proxied_needs_key: bool,
}

impl Access {
    pub fn new(
        mode: AuthMode,
        store: Arc<dyn JobStore>,
        anon_rate: Option<(f64, u32)>,
        url_ttl: Duration,
    ) -> Arc<Self> {
        Self::measured(mode, store, anon_rate, url_ttl, None, Door::default())
    }

    /// The same, counting its refusals in `metrics`, guarding the door so.
    pub fn measured(
        mode: AuthMode,
        store: Arc<dyn JobStore>,
        anon_rate: Option<(f64, u32)>,
        url_ttl: Duration,
        metrics: Option<Arc<crate::metrics::Metrics>>,
        door: Door,
    ) -> Arc<Self> {
        Arc::new(Access {
            hosts: door.hosts,
            proxied_needs_key: door.proxied_needs_key,
            metrics,
            mode,
            keys: KeyCache::default(),
            store,
            anon_rate,
            url_ttl,
            signer: OnceCell::new(),
        })
    }

    /// The image URL signer, with the store's secret (read once per process).
    pub async fn signer(&self) -> Result<&UrlSigner, StoreError> {
        self.signer
            .get_or_try_init(|| async { Ok(UrlSigner::new(&self.store.server_secret().await?)) })
            .await
    }

    /// Whether every `/api` request must carry an API key.
    pub fn keys_required(&self) -> bool {
        self.mode == AuthMode::Keys
    }

    /// Whether `presented` is a valid key (the login page's check).
    pub async fn check_key(&self, presented: &str) -> Result<bool, ApiError> {
        let checked = self
            .keys
            .authenticate(self.store.as_ref(), presented)
            .await
            .map_err(ApiError::from)?;
        Ok(checked.is_ok())
    }

    /// Whether image URLs must be signed.
    pub fn signs_urls(&self) -> bool {
        self.mode == AuthMode::Keys
    }

    /// The signer, if it has been read already (after one `signer().await`).
    pub fn signer_ready(&self) -> Option<&UrlSigner> {
        self.signer.get()
    }

    /// The expiry put in signed URLs: at least `url_ttl` from now, rounded up to
    /// five minutes, so a URL stays the same (and cached) for a while.
    pub fn url_expiry(&self) -> u64 {
        let at = clock::now_ms() / 1000 + self.url_ttl.as_secs();
        at.div_ceil(300) * 300
    }

    /// A `421` when auth is off and the request names a host this server does
    /// not answer for (DNS rebinding: a page on evil.example whose name now
    /// resolves to 127.0.0.1 would otherwise drive the API with the browser's
    /// help).
    fn misdirected(&self, headers: &HeaderMap) -> Option<ApiError> {
        let allowed = self.hosts.as_ref()?;
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| {
                crate::auth::host_of(h.trim())
                    .trim_end_matches('.')
                    .to_ascii_lowercase()
            });
        let ok = match &host {
            // HTTP/1.0 without Host: a local tool, not a browser.
            None => true,
            Some(h) => crate::auth::is_loopback_name(h) || allowed.iter().any(|a| a == h),
        };
        (!ok).then(|| {
            ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host-not-allowed",
                format!(
                    "this server (auth off) answers only for localhost and the names --public-url and --allowed-hosts give, not {:?}",
                    host.unwrap_or_default()
                ),
            )
        })
    }

    /// Whether this request needs a key although auth is off: it came through a
    /// proxy, and `--auth auto` chose off only because the server listens on
    /// loopback.
    fn needs_key(&self, headers: &HeaderMap) -> bool {
        self.proxied_needs_key
            && ["forwarded", "x-forwarded-for", "x-real-ip"]
                .iter()
                .any(|h| headers.contains_key(*h))
    }

    /// Decides who `headers` are from. `Ok(None)`: no key was presented.
    async fn identify(
        &self,
        headers: &HeaderMap,
        surface: Surface,
    ) -> Result<Option<Identity>, ApiError> {
        let Some(presented) = presented_key(headers, surface) else {
            return Ok(None);
        };
        let checked = self
            .keys
            .authenticate(self.store.as_ref(), &presented)
            .await
            .map_err(ApiError::from)?;
        match checked {
            Ok(key) => Ok(Some(Identity {
                sees_all: key.role == crate::auth::Role::Admin
                    || (self.mode == AuthMode::Off && !self.needs_key(headers)),
                key: Some(key),
            })),
            Err(KeyRefusal::Revoked) => Err(unauthorized("this API key has been revoked")),
            Err(_) => Err(unauthorized("this API key is not valid")),
        }
    }
}

/// The key a request presents: `Authorization: Bearer <key>`, `X-API-Key`, or
/// the password of HTTP basic auth (as many ComfyUI clients send one; the user
/// name when the password is empty).
fn presented_key(headers: &HeaderMap, surface: Surface) -> Option<Cow<'_, str>> {
    // On the ComfyUI port, the login page's cookie: what ComfyUI's frontend (a
    // browser, its WebSocket too) sends.
    if surface == Surface::ComfyUi
        && headers.get(header::AUTHORIZATION).is_none()
        && headers.get("x-api-key").is_none()
    {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == super::comfyui::paths::KEY_COOKIE && !v.is_empty()).then_some(v)
            });
        if let Some(c) = cookie {
            return Some(Cow::Borrowed(c));
        }
    }
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = v.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            let (user, pass) = text.split_once(':')?;
            let key = if pass.is_empty() { user } else { pass };
            return (!key.is_empty()).then(|| Cow::Owned(key.to_owned()));
        }
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| Cow::Borrowed(rest.trim()));
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(Cow::Borrowed)
}

pub fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Paths anyone may reach without a key: health, the pages and their assets, the
/// API documentation. (Pictures carry a signature instead: `images.rs`.)
fn is_public(path: &str) -> bool {
    matches!(path, "/health" | "/" | "/docs" | "/ops" | "/openapi.json")
        || path.starts_with("/assets/")
        || path.starts_with("/images/")
}

/// A name for who sends a request, for per-client caps: its key, or its
/// address (an IPv6 client: its /64) without one.
pub fn client_of<B>(who: &Identity, req: &Request<B>) -> String {
    match &who.key {
        Some(k) => format!("key:{}", k.id),
        None => {
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            format!("addr:{:x}", IpKey::of(ip).0)
        }
    }
}

/// Who a request comes from; for the handlers.
#[derive(Clone, Debug)]
pub struct Caller(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Identity>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| unauthorized("an API key is required"))
    }
}

/// The identity of a request without a key when auth is off: everything visible,
/// as in the prototype.
fn open_identity() -> Identity {
    Identity {
        key: None,
        sees_all: true,
    }
}

/// Identifies requests and applies rate limits before the router.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    access: Arc<Access>,
    surface: Surface,
}

/// Which front door a gate guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// Studio Core's own API: the pages, health and pictures are open; `/api/`
    /// is rate limited.
    Studio,
    /// The ComfyUI-compatible port: every route is API (ComfyUI's have no
    /// `/api/` prefix of their own), none open.
    ComfyUi,
}

impl<S> Gate<S> {
    pub fn new(inner: S, access: Arc<Access>) -> Self {
        Gate::on(inner, access, Surface::Studio)
    }

    pub fn on(inner: S, access: Arc<Access>, surface: Surface) -> Self {
        Gate {
            inner,
            access,
            surface,
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S, B> Service<Request<B>> for Gate<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures_util::future::Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let a = &self.access;
        if let Some(refused) = a.misdirected(req.headers()) {
            // Health probes address a server by whatever name or address they
            // have: they get the anonymous view; everything else is refused.
            if req.uri().path() == "/health" {
                req.extensions_mut().insert(Identity {
                    key: None,
                    sees_all: false,
                });
                return futures_util::future::Either::Left(self.inner.call(req));
            }
            return futures_util::future::Either::Right(Box::pin(async move {
                Ok(refused.into_response())
            }));
        }
        let no_key = presented_key(req.headers(), self.surface).is_none();
        // The common case with auth off: nothing to look up, nothing to count.
        if no_key && a.mode == AuthMode::Off && a.anon_rate.is_none() && !a.needs_key(req.headers())
            || req.method() == axum::http::Method::OPTIONS
        {
            req.extensions_mut().insert(open_identity());
            return futures_util::future::Either::Left(self.inner.call(req));
        }
        let access = self.access.clone();
        let surface = self.surface;
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        futures_util::future::Either::Right(Box::pin(async move {
            Ok(gate(access, surface, inner, req).await)
        }))
    }
}

async fn gate<S, B>(
    access: Arc<Access>,
    surface: Surface,
    mut inner: S,
    mut req: Request<B>,
) -> Response
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    let path = req.uri().path();
    let (public, api) = match surface {
        Surface::Studio => (
            is_public(path),
            path.starts_with("/api/") || path.starts_with("/v1/") || path == "/mcp",
        ),
        // The frontend's files and the login page are open (the page itself
        // sends a browser without a key to log in); ComfyUI's routes are API.
        Surface::ComfyUi => {
            let api = super::comfyui::paths::is_api(path);
            (!api, api)
        }
    };
    let refused = |code: &'static str| {
        if let Some(m) = &access.metrics {
            m.http_refusals
                .get_or_create(&crate::metrics::RefusalLabel { code })
                .inc();
        }
    };
    let open = access.mode == AuthMode::Off && !access.needs_key(req.headers());
    let identity = match access.identify(req.headers(), surface).await {
        Ok(Some(id)) => id,
        Ok(None) if open => open_identity(),
        // The open routes answer anyone: a stale or revoked key (a page's old
        // localStorage, say) makes the request anonymous there, not refused.
        Ok(None) if public => Identity {
            key: None,
            sees_all: false,
        },
        Err(e) if public && e.status == StatusCode::UNAUTHORIZED => {
            if open {
                open_identity()
            } else {
                Identity {
                    key: None,
                    sees_all: false,
                }
            }
        }
        Ok(None) => {
            refused("unauthorized");
            return unauthorized(
                "an API key is required: send Authorization: Bearer <key> (or X-API-Key)",
            )
            .into_response();
        }
        Err(e) => {
            if e.status == StatusCode::UNAUTHORIZED {
                refused("unauthorized");
            }
            return e.into_response();
        }
    };
    // Rate limits count API requests, and the pictures a key fetches with its
    // own header: a key's own limit, or its address's without one.
    let keyed_picture = path.starts_with("/images/") && identity.key.is_some();
    let limit = if !(api || keyed_picture) {
        None
    } else if let Some(key) = &identity.key {
        key.limits.rate.map(|r| {
            (
                format!("key:{}", key.id),
                r,
                key.limits.burst_or_default(),
                "key",
            )
        })
    } else {
        access.anon_rate.map(|(r, b)| {
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            (format!("addr:{:x}", IpKey::of(ip).0), r, b, "address")
        })
    };
    // A submission or a status read is counted by its handler's own store call,
    // in the same round trip; the gate counts it after the handler if the
    // handler did not get that far.
    let check = limit
        .as_ref()
        .filter(|_| surface == Surface::Studio && counted_by_handler(req.method(), path))
        .map(|(bucket, rate, burst, _)| Arc::new(RateCheck::new(bucket.clone(), *rate, *burst)));
    let mut decision = match (&limit, &check) {
        (_, Some(_)) | (None, _) => None,
        // A store outage is answered by the handler (503) anyway.
        (Some((bucket, rate, burst, _)), None) => {
            access.store.rate_limit(bucket, *rate, *burst).await.ok()
        }
    };
    if let (Some(d), Some((_, rate, burst, name))) = (decision, &limit)
        && !d.allowed
    {
        refused("rate-limited");
        return rate_limited(name, *rate, *burst, &d);
    }
    req.extensions_mut().insert(identity);
    if let Some(c) = &check {
        req.extensions_mut().insert(c.clone());
    }
    let res = match inner.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if let (Some(c), Some((bucket, rate, burst, name))) = (&check, &limit) {
        decision = match c.decision() {
            Some(d) => Some(d),
            None => access.store.rate_limit(bucket, *rate, *burst).await.ok(),
        };
        if let Some(d) = decision
            && !d.allowed
        {
            // Nothing was written: the handler either stopped before its store
            // call, or that call was refused for the limit.
            refused("rate-limited");
            return rate_limited(name, *rate, *burst, &d);
        }
    }
    let mut res = res;
    if let (Some(d), Some((_, rate, burst, name))) = (decision, &limit) {
        rate_headers(res.headers_mut(), name, *rate, *burst, &d);
    }
    res
}

/// The routes whose handler counts the request against its rate limit in its
/// own store call (`POST /api/generate`, a job's status), so the count costs no
/// round trip of its own.
fn counted_by_handler(method: &axum::http::Method, path: &str) -> bool {
    let one_segment = |rest: &str| !rest.is_empty() && !rest.contains('/');
    match *method {
        axum::http::Method::POST => path == "/api/generate",
        axum::http::Method::GET => path
            .strip_prefix("/api/status/")
            .or_else(|| path.strip_prefix("/api/jobs/"))
            .is_some_and(one_segment),
        _ => false,
    }
}

/// `429 rate-limited`, with the limit's figures.
fn rate_limited(name: &str, rate: f64, burst: u32, d: &RateDecision) -> Response {
    let mut res = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!(
            "too many requests: this {name} may make {rate} per second (bursts of {burst}); try again in {:.1} s",
            d.retry_after_secs
        ),
    )
    .retry_after(d.retry_after_secs.ceil().max(1.0) as u64)
    .into_response();
    rate_headers(res.headers_mut(), name, rate, burst, d);
    res
}

/// The IETF `RateLimit-Policy` and `RateLimit` headers
/// (draft-ietf-httpapi-ratelimit-headers): the quota `q` per window `w` seconds,
/// and what `r`emains until `t` seconds from now.
fn rate_headers(h: &mut HeaderMap, name: &str, rate: f64, burst: u32, d: &RateDecision) {
    let window = (f64::from(burst) / rate).ceil().max(1.0) as u64;
    if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";q={burst};w={window}")) {
        h.insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "\"{name}\";r={};t={}",
        d.remaining,
        d.reset_secs.ceil() as u64
    )) {
        h.insert("ratelimit", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h, Surface::Studio), None);
        h.insert("x-api-key", HeaderValue::from_static("sk_a"));
        assert_eq!(presented_key(&h, Surface::Studio).as_deref(), Some("sk_a"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  sk_b "),
        );
        assert_eq!(
            presented_key(&h, Surface::Studio).as_deref(),
            Some("sk_b"),
            "Authorization wins"
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(
            presented_key(&h, Surface::Studio),
            None,
            "not user:password"
        );
        // "comfy:sk_c" and "sk_d:" in base64: the password, else the user name.
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Y29tZnk6c2tfYw=="),
        );
        assert_eq!(presented_key(&h, Surface::Studio).as_deref(), Some("sk_c"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("basic c2tfZDo="),
        );
        assert_eq!(presented_key(&h, Surface::Studio).as_deref(), Some("sk_d"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        assert_eq!(
            presented_key(&h, Surface::Studio),
            None,
            "another scheme is no key"
        );
    }

    #[test]
    fn the_pages_health_and_pictures_are_public_the_api_is_not() {
        for p in [
            "/health",
            "/",
            "/docs",
            "/openapi.json",
            "/assets/app.js",
            "/images/j/a.png",
        ] {
            assert!(is_public(p), "{p}");
        }
        for p in ["/api/generate", "/api/jobs", "/api/events", "/api/keys"] {
            assert!(!is_public(p), "{p}");
        }
    }
}
