//! Each API process checks a key against its own copy, refreshed from the store
//! at most a second later: a request costs no store round trip for its key, and a
//! revocation or a change of limits reaches every process within a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{ApiKey, constant_time_eq, hash_secret, split_secret};
use crate::store::{KeyStore, StoreError};

/// How long a copy is trusted.
pub const KEY_TTL: Duration = Duration::from_secs(1);
/// Copies kept at most (a flood of made-up key ids must not grow the map).
const MAX_ENTRIES: usize = 10_000;

/// Why a presented key was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Not the shape of one of our keys.
    Malformed,
    /// No such key, or the secret does not match (the same answer: no oracle).
    Unknown,
    Revoked,
}

/// A key as read at some moment (`None`: there was no such key).
type Entry = (Instant, Option<Arc<ApiKey>>);

/// Keys recently read from the store.
pub struct KeyCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl KeyCache {
    /// The key a presented secret belongs to, if it is valid now.
    pub async fn authenticate(
        &self,
        store: &dyn KeyStore,
        presented: &str,
    ) -> Result<Result<Arc<ApiKey>, KeyRefusal>, StoreError> {
        let Some((id, secret)) = split_secret(presented) else {
            return Ok(Err(KeyRefusal::Malformed));
        };
        let key = match self.cached(id) {
            Some(k) => k,
            None => {
                let k = store.get_key(id).await?.map(Arc::new);
                self.remember(id, k.clone());
                k
            }
        };
        let Some(key) = key else {
            return Ok(Err(KeyRefusal::Unknown));
        };
        if !constant_time_eq(&hash_secret(secret), &key.hash) {
            return Ok(Err(KeyRefusal::Unknown));
        }
        if key.is_revoked() {
            return Ok(Err(KeyRefusal::Revoked));
        }
        Ok(Ok(key))
    }

    /// Forgets the copy of key `id` (it changed in this process: a revocation
    /// takes effect here at once, elsewhere within [`KEY_TTL`]).
    pub fn forget(&self, id: &str) {
        self.entries.lock().expect("key cache").remove(id);
    }

    fn cached(&self, id: &str) -> Option<Option<Arc<ApiKey>>> {
        let map = self.entries.lock().expect("key cache");
        map.get(id)
            .filter(|(at, _)| at.elapsed() < KEY_TTL)
            .map(|(_, k)| k.clone())
    }

    fn remember(&self, id: &str, key: Option<Arc<ApiKey>>) {
        let mut map = self.entries.lock().expect("key cache");
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (at, _)| at.elapsed() < KEY_TTL);
            if map.len() >= MAX_ENTRIES {
                // Still full of fresh copies: forget the oldest one, not all.
                if let Some(k) = map
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&k);
                }
            }
        }
        map.insert(id.to_owned(), (Instant::now(), key));
    }
}
