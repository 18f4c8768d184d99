//! What the live backends offer, as the API sees it: each live worker's report
//! names its backends' capability fingerprints; the offers themselves are read
//! from the store once per fingerprint (they never change under one). Looked up
//! at most every two seconds, so a burst of submissions costs one read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::BackendSample;
use serde_json::{Map, Value};

use crate::capabilities::{Capabilities, LAST_INFO, info_key};
use crate::store::{Routing, StoreError};

/// How long a look at the live offers is reused.
const FRESH: Duration = Duration::from_secs(2);
/// Offers remembered by fingerprint (then forgotten wholesale).
const MAX_KNOWN: usize = 256;

#[derive(Default)]
pub struct Offers {
    last: Mutex<Option<(Instant, Arc<Vec<Capabilities>>)>>,
    known: Mutex<HashMap<String, Arc<Capabilities>>>,
    /// The merged `/object_info` last made, with the fingerprints it was made of.
    info: Mutex<Option<(Vec<String>, Arc<Value>)>>,
}

/// `/object_info` of several backends as one: every class any has; for a class
/// several have, the first one's definition, with the choices of its list inputs
/// (model files) made the union of all.
pub fn merge_object_info(infos: &[Value]) -> Value {
    let mut merged = Map::new();
    for info in infos {
        let Some(classes) = info.as_object() else {
            continue;
        };
        for (class, def) in classes {
            let Some(have) = merged.get_mut(class) else {
                merged.insert(class.clone(), def.clone());
                continue;
            };
            for section in ["required", "optional"] {
                let Some(theirs) = def
                    .pointer(&format!("/input/{section}"))
                    .and_then(Value::as_object)
                else {
                    continue;
                };
                for (name, spec) in theirs {
                    let Some(Value::Array(list)) = spec.get(0) else {
                        continue;
                    };
                    if let Some(Value::Array(mine)) =
                        have.pointer_mut(&format!("/input/{section}/{name}/0"))
                    {
                        for v in list {
                            if !mine.contains(v) {
                                mine.push(v.clone());
                            }
                        }
                    }
                }
            }
        }
    }
    Value::Object(merged)
}

impl Offers {
    /// The `/object_info` of the live backends, merged; when none is live, the
    /// one reported last; `None` when no backend ever reported one.
    pub async fn object_info(&self, store: &dyn Routing) -> Result<Option<Arc<Value>>, StoreError> {
        let mut fps: Vec<String> = self
            .live(store)
            .await?
            .iter()
            .map(|c| c.info.clone())
            .filter(|f| !f.is_empty())
            .collect();
        fps.sort();
        fps.dedup();
        if fps.is_empty() {
            match store.get_capabilities(LAST_INFO).await? {
                Some(fp) => fps.push(fp),
                None => return Ok(None),
            }
        }
        if let Some((made_of, info)) = &*self.info.lock().expect("offers")
            && *made_of == fps
        {
            return Ok(Some(info.clone()));
        }
        let mut infos = Vec::with_capacity(fps.len());
        for fp in &fps {
            if let Some(text) = store.get_capabilities(&info_key(fp)).await?
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                infos.push(v);
            }
        }
        if infos.is_empty() {
            return Ok(None);
        }
        let merged = Arc::new(if infos.len() == 1 {
            infos.pop().expect("one")
        } else {
            merge_object_info(&infos)
        });
        *self.info.lock().expect("offers") = Some((fps, merged.clone()));
        Ok(Some(merged))
    }

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
