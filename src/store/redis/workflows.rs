//! Published workflows on Redis, in the queue's slot (`lua/workflow_*.lua`).

use async_trait::async_trait;

use super::RedisStore;
use crate::store::{
    MAX_WORKFLOWS, Refusal, StoreError, StoredWorkflow, WorkflowEntry, WorkflowStore,
};

/// `"<latest> <retired>"` → (latest, retired).
fn meta(s: &str) -> (u32, bool) {
    let mut parts = s.split(' ');
    let latest = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (latest, parts.next() == Some("1"))
}

#[async_trait]
impl WorkflowStore for RedisStore {
    async fn publish_workflow(&self, name: &str, definition: &str) -> Result<u32, StoreError> {
        let k = &self.keys;
        let mut inv = self.scripts.workflow_publish.prepare_invoke();
        inv.key(k.workflows())
            .key(k.workflow_versions(name))
            .key(k.workflows_generation())
            .arg(name)
            .arg(definition)
            .arg(MAX_WORKFLOWS);
        let mut conn = self.conn.clone();
        let v: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        if v < 0 {
            return Err(StoreError::Refused(Refusal::TooManyWorkflows {
                limit: MAX_WORKFLOWS,
            }));
        }
        self.replicated().await?;
        Ok(v as u32)
    }

    async fn get_workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let m: Option<String> = self
            .run(
                ::redis::cmd("HGET")
                    .arg(k.workflows())
                    .arg(name)
                    .query_async(&mut conn),
            )
            .await?;
        let Some(m) = m else { return Ok(None) };
        let (latest, retired) = meta(&m);
        let version = version.unwrap_or(latest);
        let definition: Option<String> = self
            .run(
                ::redis::cmd("HGET")
                    .arg(k.workflow_versions(name))
                    .arg(version)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(definition.map(|definition| StoredWorkflow {
            version,
            definition,
            retired,
        }))
    }

    async fn retire_workflow(&self, name: &str) -> Result<bool, StoreError> {
        let k = &self.keys;
        let mut inv = self.scripts.workflow_retire.prepare_invoke();
        inv.key(k.workflows())
            .key(k.workflows_generation())
            .arg(name);
        let mut conn = self.conn.clone();
        let done: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }

    async fn list_workflows(&self) -> Result<Vec<WorkflowEntry>, StoreError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = self
            .run(
                ::redis::cmd("HGETALL")
                    .arg(self.keys.workflows())
                    .query_async(&mut conn),
            )
            .await?;
        let mut list: Vec<WorkflowEntry> = all
            .into_iter()
            .map(|(name, m)| {
                let (latest, retired) = meta(&m);
                WorkflowEntry {
                    name,
                    latest,
                    retired,
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    async fn workflows_generation(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let g: Option<u64> = self
            .run(
                ::redis::cmd("GET")
                    .arg(self.keys.workflows_generation())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(g.unwrap_or(0))
    }
}
