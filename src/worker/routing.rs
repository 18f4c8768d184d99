//! Which queued jobs a backend's dispatcher may claim: the requirement sets its
//! offer covers, judged once per set (not per job) and again only when the
//! registry grows or the offer changes; and which of them to prefer, those that
//! load the same model files as its last job.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::capabilities::{Capabilities, Requirements, refusal};
use crate::store::{self, Route, StoreError};

/// The route of one backend, kept up to date.
#[derive(Default)]
pub struct Routing {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The registry as last read (parsed), and its size then.
    sets: Arc<HashMap<String, Requirements>>,
    known: usize,
    /// The registry must be read again before the next claim.
    stale: bool,
    /// Read at least once.
    read: bool,
    /// The model files of the last job sent to the backend.
    last_files: BTreeSet<String>,
    /// Sets no live backend can run, since when (by this dispatcher's looks).
    unrunnable_since: HashMap<String, Instant>,
    /// Of those, the ones unrunnable for longer than the grace, with why: their
    /// jobs are claimed to be failed, not left waiting for ever.
    doomed: BTreeMap<String, String>,
    /// The route made from the above, until one of them changes.
    route: Option<(String, Route)>,
}

impl Routing {
    /// A claim found sets registered since the route was made.
    pub fn mark_stale(&self) {
        self.state.lock().expect("routing").stale = true;
    }

    /// The backend now holds the models of a job that needs `need`.
    pub fn loaded(&self, need: &Requirements) {
        let files: BTreeSet<String> = need.files().into_iter().map(str::to_owned).collect();
        let mut s = self.state.lock().expect("routing");
        if s.last_files != files {
            s.last_files = files;
            s.route = None;
        }
    }

    /// Why no live backend can run jobs of set `req`, if that has been so for
    /// longer than the grace: such a job is failed, not run.
    pub fn doomed(&self, req: &str) -> Option<String> {
        self.state.lock().expect("routing").doomed.get(req).cloned()
    }

    /// The route for a backend offering `offer` (its fingerprint and content;
    /// `None` before it is known: any job), reading the registry first when it
    /// has grown. Sets that none of the `live` offers has been able to run for
    /// `grace` are added to it, so their jobs are claimed and failed.
    pub async fn route(
        &self,
        offer: Option<(String, Arc<Capabilities>)>,
        live: &[Capabilities],
        grace: Duration,
        store: &dyn store::Routing,
    ) -> Result<Route, StoreError> {
        let Some((fp, offer)) = offer else {
            return Ok(Route::default());
        };
        let must_read = {
            let s = self.state.lock().expect("routing");
            s.stale || !s.read
        };
        if must_read {
            let raw = store.requirement_sets().await?;
            let known = raw.len();
            // A set that does not parse (another version's) is never runnable here.
            let sets: HashMap<String, Requirements> = raw
                .into_iter()
                .filter_map(|(fp, json)| Some((fp, serde_json::from_str(&json).ok()?)))
                .collect();
            let mut s = self.state.lock().expect("routing");
            s.sets = Arc::new(sets);
            s.known = known;
            s.stale = false;
            s.read = true;
            s.route = None;
        }
        let mut s = self.state.lock().expect("routing");
        let sets = s.sets.clone();
        let mut doomed = BTreeMap::new();
        let now = Instant::now();
        let mut since = std::mem::take(&mut s.unrunnable_since);
        since.retain(|fp, _| sets.contains_key(fp));
        for (fp, need) in sets.iter() {
            match refusal(need, live) {
                Some(why) => {
                    let first = *since.entry(fp.clone()).or_insert(now);
                    if now.duration_since(first) >= grace {
                        doomed.insert(fp.clone(), why);
                    }
                }
                None => {
                    since.remove(fp);
                }
            }
        }
        s.unrunnable_since = since;
        if doomed != s.doomed {
            s.doomed = doomed;
            s.route = None;
        }
        if let Some((made_for, route)) = &s.route
            && *made_for == fp
        {
            return Ok(route.clone());
        }
        let mut route = route_for(&offer, &s.sets, &s.last_files, s.known);
        if let Some(runnable) = &mut route.runnable {
            runnable.extend(s.doomed.keys().cloned());
            runnable.sort();
            runnable.dedup();
        }
        s.route = Some((fp, route.clone()));
        Ok(route)
    }
}

/// The sets of `sets` that `offer` can run, and of those the ones loading exactly
/// `last_files` (none when that is empty).
pub fn route_for(
    offer: &Capabilities,
    sets: &HashMap<String, Requirements>,
    last_files: &BTreeSet<String>,
    known: usize,
) -> Route {
    let mut runnable = Vec::new();
    let mut prefer = Vec::new();
    for (fp, need) in sets {
        if !offer.missing(need).is_empty() {
            continue;
        }
        runnable.push(fp.clone());
        let files = need.files();
        if !last_files.is_empty()
            && files.len() == last_files.len()
            && files.iter().zip(last_files).all(|(a, b)| *a == b)
        {
            prefer.push(fp.clone());
        }
    }
    runnable.sort();
    prefer.sort();
    Route {
        runnable: Some(runnable),
        prefer,
        known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(class: &str, ckpt: &str) -> Requirements {
        let mut r = Requirements::default();
        r.nodes.insert(class.to_owned());
        r.models
            .insert(format!("{class}.ckpt_name"), ckpt.to_owned());
        r
    }

    #[test]
    fn a_backend_runs_the_sets_its_offer_covers_and_prefers_its_loaded_files() {
        let mut offer = Capabilities::default();
        offer.nodes.insert("CheckpointLoaderSimple".into());
        offer.models.insert(
            "CheckpointLoaderSimple.ckpt_name".into(),
            ["a.safetensors".to_owned(), "b.safetensors".to_owned()].into(),
        );
        let sets: HashMap<String, Requirements> = [
            (
                "fa".to_owned(),
                need("CheckpointLoaderSimple", "a.safetensors"),
            ),
            (
                "fb".to_owned(),
                need("CheckpointLoaderSimple", "b.safetensors"),
            ),
            (
                "fc".to_owned(),
                need("CheckpointLoaderSimple", "c.safetensors"),
            ),
            ("fx".to_owned(), need("NoSuchNode", "a.safetensors")),
        ]
        .into();
        let none = BTreeSet::new();
        let r = route_for(&offer, &sets, &none, 4);
        assert_eq!(r.runnable, Some(vec!["fa".to_owned(), "fb".to_owned()]));
        assert!(r.prefer.is_empty());
        assert_eq!(r.known, 4);
        let b: BTreeSet<String> = ["b.safetensors".to_owned()].into();
        assert_eq!(route_for(&offer, &sets, &b, 4).prefer, ["fb"]);
    }
}
