//! What the live backends offer, as the API sees it: each live worker's report
//! names its backends' capability fingerprints; the offers themselves are read
//! from the store once per fingerprint (they never change under one). Looked up
//! at most every two seconds, so a burst of submissions costs one read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::BackendSample;
use crate::capabilities::Capabilities;
use crate::store::{Routing, StoreError};

/// How long a look at the live offers is reused.
const FRESH: Duration = Duration::from_secs(2);
/// Offers remembered by fingerprint (then forgotten wholesale).
const MAX_KNOWN: usize = 256;

#[derive(Default)]
pub struct Offers {
    last: Mutex<Option<(Instant, Arc<Vec<Capabilities>>)>>,
    known: Mutex<HashMap<String, Arc<Capabilities>>>,
}

impl Offers {
    /// The offers of every backend of a live worker (up or not: one that is
    /// restarting comes back with its models). Empty when none has reported.
    pub async fn live(&self, store: &dyn Routing) -> Result<Arc<Vec<Capabilities>>, StoreError> {
        if let Some((at, offers)) = &*self.last.lock().expect("offers")
            && at.elapsed() < FRESH
        {
            return Ok(offers.clone());
        }
        let mut fps: Vec<String> = store
            .backend_reports()
            .await?
            .iter()
            .flat_map(|(_, report)| {
                serde_json::from_str::<Vec<BackendSample>>(report).unwrap_or_default()
            })
            .map(|b| b.caps)
            .filter(|fp| !fp.is_empty())
            .collect();
        fps.sort();
        fps.dedup();
        let mut offers = Vec::with_capacity(fps.len());
        for fp in fps {
            let known = self.known.lock().expect("offers").get(&fp).cloned();
            let caps = match known {
                Some(c) => c,
                None => {
                    let Some(json) = store.get_capabilities(&fp).await? else {
                        continue;
                    };
                    let Ok(caps) = serde_json::from_str::<Capabilities>(&json) else {
                        continue;
                    };
                    let caps = Arc::new(caps);
                    let mut known = self.known.lock().expect("offers");
                    if known.len() >= MAX_KNOWN {
                        known.clear();
                    }
                    known.insert(fp, caps.clone());
                    caps
                }
            };
            offers.push((*caps).clone());
        }
        let offers = Arc::new(offers);
        *self.last.lock().expect("offers") = Some((Instant::now(), offers.clone()));
        Ok(offers)
    }
}
