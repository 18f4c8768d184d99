//! The workflows a process knows: the read-only base (built-ins and
//! `--workflows` files) and the published ones in the store, each name at its
//! latest version. A job names `portrait` (the latest) or `portrait@3`; the job
//! records the version it was given and a worker runs that version, even after a
//! newer one or a retirement.
//!
//! Every process polls the store's workflow generation ([`Catalog::watch`],
//! every [`POLL`]) and reloads what changed, so a version published through one
//! API process is what every other process runs within a second. Versions are
//! immutable, so those a process has read are kept (a bounded number).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

mod publish;

pub use publish::{Publish, PublishError, Published, api_graph, check_name};

use crate::job::JobRecord;
use crate::shutdown::signalled;
use crate::store::{StoreError, WorkflowEntry, WorkflowStore};
use crate::workflow::{GRAPH_FIELD, GRAPH_WORKFLOW, Workflow, WorkflowRegistry};

/// How often a process looks for a new workflow generation.
pub const POLL: Duration = Duration::from_millis(400);

/// Published versions a process keeps in memory (each read once from the store).
const MAX_VERSIONS: usize = 512;

/// What the process knows right now.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The store's workflow generation this was read at.
    pub generation: u64,
    /// The base workflows and the latest version of every published name not
    /// retired.
    pub registry: Arc<WorkflowRegistry>,
    /// Published names: their latest version, whether retired.
    pub published: BTreeMap<String, WorkflowEntry>,
}

/// A workflow a submission named, found.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub workflow: Arc<Workflow>,
    /// Its published version (`None`: a base workflow).
    pub version: Option<u32>,
}

/// Why a workflow a submission named cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Unresolved {
    #[error("unknown workflow {name:?}; known workflows: {known}")]
    Unknown { name: String, known: String },
    #[error("workflow {0:?} is retired: it takes no new jobs")]
    Retired(String),
    #[error("workflow {name:?} has no version {version} (the latest is {latest})")]
    NoVersion {
        name: String,
        version: u32,
        latest: u32,
    },
    #[error("{0:?} is not a workflow name or name@version")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The catalog of one process.
pub struct Catalog {
    base: Arc<WorkflowRegistry>,
    store: Arc<dyn WorkflowStore>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Published versions read so far, by (name, version).
    versions: Mutex<HashMap<(String, u32), Arc<Workflow>>>,
}

/// `name` or `name@version`.
pub fn split_spec(spec: &str) -> Result<(&str, Option<u32>), Unresolved> {
    match spec.split_once('@') {
        None => Ok((spec, None)),
        Some((name, v)) => match v.parse::<u32>() {
            Ok(v) if v > 0 && !name.is_empty() => Ok((name, Some(v))),
            _ => Err(Unresolved::Malformed(spec.to_owned())),
        },
    }
}

impl Catalog {
    /// A catalog of `base` and what `store` has published (read at the first
    /// [`Catalog::refresh`]).
    pub fn new(base: Arc<WorkflowRegistry>, store: Arc<dyn WorkflowStore>) -> Arc<Catalog> {
        Arc::new(Catalog {
            snapshot: RwLock::new(Arc::new(Snapshot {
                generation: 0,
                registry: base.clone(),
                published: BTreeMap::new(),
            })),
            base,
            store,
            versions: Mutex::new(HashMap::new()),
        })
    }

    /// The read-only workflows (built-ins and files): names nobody may publish.
    pub fn base(&self) -> &WorkflowRegistry {
        &self.base
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every workflow a new job may name, at its latest version.
    pub fn current(&self) -> Arc<WorkflowRegistry> {
        self.snapshot().registry.clone()
    }

    /// Reads the store again if its generation moved since the last look.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let generation = self.store.workflows_generation().await?;
        let old = self.snapshot();
        if generation == old.generation && generation != 0 {
            return Ok(());
        }
        let entries = self.store.list_workflows().await?;
        let mut latest = Vec::new();
        let mut published = BTreeMap::new();
        for entry in entries {
            if !entry.retired
                && let Some(wf) = self.version(&entry.name, entry.latest).await?
            {
                latest.push(wf);
            }
            published.insert(entry.name.clone(), entry);
        }
        let next = Arc::new(Snapshot {
            generation,
            registry: Arc::new(self.base.with(latest)),
            published,
        });
        let mut slot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        // Another refresh may have stored a newer one meanwhile.
        if slot.generation <= generation {
            *slot = next;
        }
        Ok(())
    }

    /// Version `version` of published workflow `name`, from memory or the store.
    pub async fn version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<Arc<Workflow>>, StoreError> {
        let key = (name.to_owned(), version);
        if let Some(wf) = self.lock_versions().get(&key) {
            return Ok(Some(wf.clone()));
        }
        let Some(stored) = self.store.get_workflow(name, Some(version)).await? else {
            return Ok(None);
        };
        let mut wf: Workflow = match serde_json::from_str(&stored.definition) {
            Ok(wf) => wf,
            Err(e) => {
                return Err(StoreError::Internal(format!(
                    "published workflow {name}@{version} does not read: {e}"
                )));
            }
        };
        wf.version = Some(stored.version);
        let wf = Arc::new(wf);
        let mut versions = self.lock_versions();
        if versions.len() >= MAX_VERSIONS {
            // Any will do: each can be read again.
            if let Some(k) = versions.keys().next().cloned() {
                versions.remove(&k);
            }
        }
        versions.insert(key, wf.clone());
        Ok(Some(wf))
    }

    fn lock_versions(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Arc<Workflow>>> {
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a new job naming `spec` (`name` or `name@version`) runs.
    pub async fn resolve(&self, spec: &str) -> Result<Resolved, Unresolved> {
        let (name, version) = split_spec(spec)?;
        if let Some(wf) = self.base.get_arc(name) {
            return match version {
                None => Ok(Resolved {
                    workflow: wf,
                    version: None,
                }),
                Some(v) => Err(Unresolved::NoVersion {
                    name: name.to_owned(),
                    version: v,
                    latest: 0,
                }),
            };
        }
        let snap = self.snapshot();
        let unknown = || Unresolved::Unknown {
            name: name.to_owned(),
            known: snap.registry.names().collect::<Vec<_>>().join(", "),
        };
        let Some(entry) = snap.published.get(name) else {
            return Err(unknown());
        };
        if entry.retired {
            return Err(Unresolved::Retired(name.to_owned()));
        }
        let want = version.unwrap_or(entry.latest);
        if let (None, Some(wf)) = (version, snap.registry.get_arc(name)) {
            return Ok(Resolved {
                workflow: wf,
                version: Some(want),
            });
        }
        match self.version(name, want).await? {
            Some(wf) => Ok(Resolved {
                workflow: wf,
                version: Some(want),
            }),
            None => Err(Unresolved::NoVersion {
                name: name.to_owned(),
                version: want,
                latest: entry.latest,
            }),
        }
    }

    /// What a queued job runs: the graph it carries (a raw graph), its recorded
    /// version of a published workflow, or the base (or latest published)
    /// workflow of its name.
    pub async fn for_job(&self, job: &JobRecord) -> Result<Option<Arc<Workflow>>, StoreError> {
        if job.workflow == GRAPH_WORKFLOW {
            return Ok(job.params.get(GRAPH_FIELD).and_then(|g| match g {
                Value::Object(graph) => {
                    // The uploads its `LoadImage` nodes name (taken as picture
                    // parameters when it was submitted) go to its backend.
                    let mut wf = Workflow::raw(graph.clone());
                    for (name, spec) in crate::workflow::infer::infer(graph, None) {
                        if spec.kind.is_picture() && job.params.contains_key(&name) {
                            wf.params.insert(name, spec);
                        }
                    }
                    Some(Arc::new(wf))
                }
                _ => None,
            }));
        }
        match job.workflow_version() {
            Some(v) => self.version(&job.workflow, v).await,
            None => Ok(self.current().get_arc(&job.workflow)),
        }
    }

    /// Refreshes every [`POLL`] until `stop`.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.refresh().await {
                tracing::debug!(error = %e, "cannot read the published workflows; next look soon");
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = signalled(&mut stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_split_into_name_and_version() {
        assert_eq!(split_spec("portrait").unwrap(), ("portrait", None));
        assert_eq!(split_spec("portrait@3").unwrap(), ("portrait", Some(3)));
        for bad in ["portrait@", "portrait@0", "portrait@x", "@2", "a@1@2"] {
            assert!(split_spec(bad).is_err(), "{bad}");
        }
    }
}
