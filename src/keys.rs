//! API-key management: creating, changing and revoking keys, straight against
//! the store. What `studio keys` and `/api/keys` both do; `auth/` keeps the key's
//! types and crypto.

use crate::auth::keys::check_name;
use crate::auth::{ApiKey, KeyLimits, KeyUpdate, NewSecret, Role, new_secret};
use crate::clock;
use crate::store::{KeyStore, StoreError};

/// Why a key operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A bad value: which field, and why.
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    #[error("no such key, or it is revoked")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Makes a key; the secret is in the answer and nowhere else. `by` says who
/// asked (the acting key's id, or `cli`), for the log.
pub async fn create(
    store: &dyn KeyStore,
    name: &str,
    role: Role,
    limits: KeyLimits,
    by: &str,
) -> Result<(ApiKey, NewSecret), KeyError> {
    check_name(name).map_err(|m| KeyError::Invalid("name", m))?;
    limits.check().map_err(|(f, m)| KeyError::Invalid(f, m))?;
    let secret = new_secret();
    let key = ApiKey {
        id: secret.id.clone(),
        name: name.to_owned(),
        role,
        hash: secret.hash.clone(),
        created_at: clock::iso8601(clock::now_micros()),
        revoked_at: String::new(),
        limits,
    };
    store.put_key(&key).await?;
    tracing::info!(key = %key.id, name = %key.name, role = key.role.as_str(), by, "API key created");
    Ok((key, secret))
}

/// Changes a key's name, role or limits.
pub async fn update(
    store: &dyn KeyStore,
    id: &str,
    change: &KeyUpdate,
    by: &str,
) -> Result<ApiKey, KeyError> {
    // A revoked key is gone for good: nothing to change.
    let key = store
        .get_key(id)
        .await?
        .filter(|k| !k.is_revoked())
        .ok_or(KeyError::NotFound)?;
    let new = change.apply(&key);
    check_name(&new.name).map_err(|m| KeyError::Invalid("name", m))?;
    new.limits
        .check()
        .map_err(|(f, m)| KeyError::Invalid(f, m))?;
    store.put_key(&new).await?;
    tracing::info!(key = %id, by, "API key changed");
    Ok(new)
}

/// Revokes a key (for good; it stays listed, marked revoked). A key already
/// revoked is `NotFound`, like one that never was.
pub async fn revoke(store: &dyn KeyStore, id: &str, by: &str) -> Result<ApiKey, KeyError> {
    let mut key = store
        .get_key(id)
        .await?
        .filter(|k| !k.is_revoked())
        .ok_or(KeyError::NotFound)?;
    key.revoked_at = clock::iso8601(clock::now_micros());
    store.put_key(&key).await?;
    tracing::info!(key = %id, by, "API key revoked");
    Ok(key)
}
