//! API keys over HTTP, for admins: list (`GET /api/keys`), create (`POST`), change
//! (`PATCH /api/keys/{id}`), revoke (`DELETE`). The first admin key is made with
//! `studio keys create --role admin`, which reaches the store directly.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, PathParams};
use super::guard::Deliberate;
use crate::auth::{ApiKey, Identity, KeyLimits, KeyUpdate, Role};
use crate::job::Priority;
use crate::keys::{self as manage, KeyError};

/// A key as the API shows it: everything but its hash.
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    /// The id (the part of the secret between `sk_` and the second `_`).
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    /// When it was revoked; empty while it is valid.
    pub revoked_at: String,
    pub limits: KeyLimits,
}

impl From<&ApiKey> for KeyView {
    fn from(k: &ApiKey) -> Self {
        KeyView {
            id: k.id.clone(),
            name: k.name.clone(),
            role: k.role,
            created_at: k.created_at.clone(),
            revoked_at: k.revoked_at.clone(),
            limits: k.limits.clone(),
        }
    }
}

/// A new key and its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: KeyView,
    /// `sk_<id>_<secret>`: send it as `Authorization: Bearer <secret>`. Only its
    /// hash is stored; it cannot be shown again.
    pub secret: String,
}

/// The settings of a key, for the two request schemas (creating: `name`
/// required; changing: every field optional).
macro_rules! key_request {
    ($(#[$doc:meta])* $ty:ident, $name:ty) => {
        $(#[$doc])*
        #[derive(ToSchema)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        pub struct $ty {
            /// 1–100 characters, no control or invisible formatting characters, not only spaces.
            #[schema(min_length = 1, max_length = 100,
                pattern = r"^[^\u0000-\u001f\u007f-\u009f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb][^\u0000-\u001f\u007f-\u009f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb]*$")]
            pub name: $name,
            pub role: Option<Role>,
            /// Requests per second (null: no limit).
            #[schema(minimum = 0.001, maximum = 1_000_000.0)]
            pub rate: Option<f64>,
            /// Requests at once beyond the rate (default: one second's worth).
            #[schema(value_type = Option<u64>, minimum = 1, maximum = 4_294_967_295_u64)]
            pub burst: Option<u32>,
            /// Jobs it may have waiting (null: no limit).
            #[schema(value_type = Option<u64>, minimum = 1, maximum = 4_294_967_295_u64)]
            pub max_queued: Option<u32>,
            /// Jobs it may have running (null: no limit).
            #[schema(value_type = Option<u64>, minimum = 1, maximum = 4_294_967_295_u64)]
            pub max_running: Option<u32>,
            /// Its share against other keys with work waiting, 1–1000 (default 1).
            #[schema(minimum = 1, maximum = 1000)]
            pub weight: Option<u32>,
            pub max_priority: Option<Priority>,
            /// It may publish workflows (admins always may).
            pub publish: Option<bool>,
            /// It may run raw graphs (admins always may).
            pub graphs: Option<bool>,
            /// GPU-seconds its jobs may use per UTC day (null: no budget).
            #[schema(minimum = 1, maximum = 1_000_000_000)]
            pub gpu_seconds_per_day: Option<u64>,
            /// GPU-seconds its jobs may use per UTC month (null: no budget).
            #[schema(minimum = 1, maximum = 1_000_000_000)]
            pub gpu_seconds_per_month: Option<u64>,
        }
    };
}

key_request!(
    /// A key to create: `name`, and `role`, `rate`, `burst`, `max_queued`,
    /// `max_running`, `weight`, `max_priority` as `studio keys create` takes them.
    NewKeyRequest,
    String
);

key_request!(
    /// A change to a key: the fields to change (`null` clears a limit).
    KeyRequest,
    Option<String>
);

fn admin_only(who: &Identity) -> Result<(), ApiError> {
    if who.is_admin_key() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "managing API keys needs an admin key",
        ))
    }
}

/// An admin cannot lock itself out over HTTP (another admin key, or
/// `studio keys` on the store, can).
fn not_the_callers_own(who: &Identity, id: &str, what: &str) -> Result<(), ApiError> {
    if who.key.as_ref().is_some_and(|k| k.id == id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "own-key",
            format!("a key cannot {what} itself; use another admin key or `studio keys`"),
        )
        .with_field("key_id"));
    }
    Ok(())
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Invalid(field, message) => {
                ApiError::bad_request("invalid-key-setting", format!("{field} {message}"))
                    .with_field(field)
            }
            KeyError::NotFound => {
                ApiError::not_found("key-not-found", "no API key with this id, or it is revoked")
            }
            KeyError::Store(e) => e.into(),
        }
    }
}

/// The fields of a key request: `Some(None)` is an explicit `null` (clears a limit).
fn parse_change(body: &Value, creating: bool) -> Result<KeyUpdate, ApiError> {
    let obj = body.as_object().ok_or_else(|| {
        ApiError::bad_request("invalid-body", "request body must be a JSON object")
    })?;
    let invalid = |field: &str, why: &str| {
        ApiError::bad_request("invalid-key-setting", format!("{field} {why}")).with_field(field)
    };
    let mut u = KeyUpdate::default();
    for (k, v) in obj {
        // A null name, role, weight or highest priority counts as absent (limits
        // take null as "no limit").
        if v.is_null() && matches!(k.as_str(), "name" | "role" | "weight" | "max_priority") {
            continue;
        }
        let uint = |v: &Value| -> Result<Option<u32>, ApiError> {
            if v.is_null() {
                return Ok(None);
            }
            crate::workflow::param::as_whole(v)
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| invalid(k, "must be a whole number (or null for no limit)"))
        };
        match k.as_str() {
            "name" => {
                u.name = Some(
                    v.as_str()
                        .ok_or_else(|| invalid(k, "must be a string"))?
                        .to_owned(),
                )
            }
            "role" => {
                u.role = Some(match v.as_str() {
                    Some("user") => Role::User,
                    Some("admin") => Role::Admin,
                    _ => return Err(invalid(k, "must be user or admin")),
                })
            }
            "rate" => {
                u.rate = Some(if v.is_null() {
                    None
                } else {
                    Some(v.as_f64().ok_or_else(|| invalid(k, "must be a number"))?)
                })
            }
            "burst" => u.burst = Some(uint(v)?),
            "max_queued" => u.max_queued = Some(uint(v)?),
            "max_running" => u.max_running = Some(uint(v)?),
            "gpu_seconds_per_day" | "gpu_seconds_per_month" => {
                let n = if v.is_null() {
                    None
                } else {
                    Some(crate::workflow::param::as_whole(v).ok_or_else(|| {
                        invalid(
                            k,
                            "must be a whole number of seconds (or null for no budget)",
                        )
                    })?)
                };
                if k == "gpu_seconds_per_day" {
                    u.gpu_seconds_per_day = Some(n);
                } else {
                    u.gpu_seconds_per_month = Some(n);
                }
            }
            "weight" => {
                u.weight = Some(uint(v)?.ok_or_else(|| invalid(k, "must be a whole number"))?)
            }
            "publish" | "graphs" => {
                let b = if v.is_null() {
                    false
                } else {
                    v.as_bool()
                        .ok_or_else(|| invalid(k, "must be true or false"))?
                };
                if k == "publish" {
                    u.publish = Some(b);
                } else {
                    u.graphs = Some(b);
                }
            }
            "max_priority" => {
                u.max_priority = Some(
                    v.as_str()
                        .and_then(Priority::parse)
                        .ok_or_else(|| invalid(k, "must be low, normal or high"))?,
                )
            }
            other => {
                return Err(ApiError::bad_request(
                    "unknown-field",
                    format!("unknown field {other:?}; a key has name, role, rate, burst, max_queued, max_running, weight, max_priority, publish, graphs, gpu_seconds_per_day, gpu_seconds_per_month"),
                )
                .with_field(other));
            }
        }
    }
    if creating && u.name.is_none() {
        return Err(invalid("name", "is required"));
    }
    Ok(u)
}

/// Every key (admins only).
#[utoipa::path(get, path = "/api/keys", tag = "keys",
    responses(
        (status = 200, description = "Every key, oldest first", body = Vec<KeyView>),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Not an admin key (`forbidden`)", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    admin_only(&who)?;
    let keys = state.with_timeout(state.store.list_keys()).await?;
    Ok(Json(keys.iter().map(KeyView::from).collect()))
}

/// Creates a key; its secret is in this answer only (admins only).
#[utoipa::path(post, path = "/api/keys", tag = "keys",
    request_body(content = NewKeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the secret is shown this once", body = CreatedKey),
        (status = 400, description = "A bad setting (`invalid-key-setting`, `unknown-field`, `invalid-json`, `invalid-body`)", body = ErrorBody),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Not an admin key (`forbidden`), or from a web page on an origin not allowed (`forbidden-origin`)", body = ErrorBody),
        (status = 415, description = "Not JSON (`unsupported-media-type`)", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    admin_only(&who)?;
    let change = parse_change(&body, true)?;
    let base = ApiKey {
        id: String::new(),
        name: change.name.clone().unwrap_or_default(),
        role: Role::User,
        hash: String::new(),
        created_at: String::new(),
        revoked_at: String::new(),
        limits: KeyLimits::default(),
    };
    let mut wanted = change.apply(&base);
    // As `studio keys create`: an admin key may ask for high priority unless told otherwise.
    if wanted.role == Role::Admin && change.max_priority.is_none() {
        wanted.limits.max_priority = crate::job::Priority::High;
    }
    let (key, secret) = state
        .with_timeout(async {
            Ok(manage::create(
                state.store.as_ref(),
                &wanted.name,
                wanted.role,
                wanted.limits,
                who.owner_or("(auth off)"),
            )
            .await)
        })
        .await??;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: KeyView::from(&key),
            secret: secret.secret,
        }),
    )
        .into_response())
}

/// Changes a key's name, role or limits (`null` clears a limit; admins only).
#[utoipa::path(patch, path = "/api/keys/{key_id}", tag = "keys",
    params(("key_id" = String, Path, description = "The key's id")),
    request_body(content = KeyRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The key as changed", body = KeyView),
        (status = 400, description = "A bad setting (`invalid-key-setting`, `unknown-field`, `invalid-json`, `invalid-body`)", body = ErrorBody),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Not an admin key (`forbidden`), or from a web page on an origin not allowed (`forbidden-origin`)", body = ErrorBody),
        (status = 404, description = "No such key, or it is revoked (`key-not-found`)", body = ErrorBody),
        (status = 409, description = "The calling key would change itself (`own-key`)", body = ErrorBody),
        (status = 415, description = "Not JSON (`unsupported-media-type`)", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<KeyView>, ApiError> {
    admin_only(&who)?;
    not_the_callers_own(&who, &id, "change")?;
    let change = parse_change(&body, false)?;
    let key = state
        .with_timeout(async {
            Ok(manage::update(
                state.store.as_ref(),
                &id,
                &change,
                who.owner_or("(auth off)"),
            )
            .await)
        })
        .await??;
    state.access.keys.forget(&id);
    Ok(Json(KeyView::from(&key)))
}

/// Revokes a key: every process refuses it within a second (admins only).
#[utoipa::path(delete, path = "/api/keys/{key_id}", tag = "keys",
    params(("key_id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "Revoked (it stays listed, with `revoked_at`)", body = KeyView),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Not an admin key (`forbidden`), or from a web page on an origin not allowed (`forbidden-origin`)", body = ErrorBody),
        (status = 404, description = "No such key, or it is revoked (`key-not-found`)", body = ErrorBody),
        (status = 409, description = "The calling key would revoke itself (`own-key`)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor an X-Requested-With header (`unsupported-media-type`)", body = ErrorBody),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    Caller(who): Caller,
    _: Deliberate,
    PathParams(id): PathParams<String>,
) -> Result<Json<KeyView>, ApiError> {
    admin_only(&who)?;
    not_the_callers_own(&who, &id, "revoke")?;
    let key = state
        .with_timeout(async {
            Ok(manage::revoke(state.store.as_ref(), &id, who.owner_or("(auth off)")).await)
        })
        .await??;
    state.access.keys.forget(&id);
    Ok(Json(KeyView::from(&key)))
}
