//! Published workflows in the embedded store.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::store::{
    MAX_WORKFLOWS, Refusal, StoreError, StoredWorkflow, WorkflowEntry, WorkflowStore,
};

/// Raises the generation every process polls.
fn bump(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO settings (name, value) VALUES ('workflows_gen', '1') \
         ON CONFLICT(name) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        [],
    )?;
    Ok(())
}

#[async_trait]
impl WorkflowStore for SqliteStore {
    async fn publish_workflow(&self, name: &str, definition: &str) -> Result<u32, StoreError> {
        let (name, definition) = (name.to_owned(), definition.to_owned());
        let v = self
            .write(move |conn| {
                let latest: Option<i64> = conn
                    .query_row(
                        "SELECT latest FROM workflow_names WHERE name = ?1",
                        params![name],
                        |r| r.get(0),
                    )
                    .optional()?;
                if latest.is_none() {
                    let n: i64 =
                        conn.query_row("SELECT COUNT(*) FROM workflow_names", [], |r| r.get(0))?;
                    if n as u64 >= MAX_WORKFLOWS {
                        return Ok((None, Vec::new()));
                    }
                }
                let v = latest.unwrap_or(0) + 1;
                conn.execute(
                    "INSERT INTO workflow_versions (name, version, definition) VALUES (?1, ?2, ?3)",
                    params![name, v, definition],
                )?;
                conn.execute(
                    "INSERT INTO workflow_names (name, latest, retired) VALUES (?1, ?2, 0) \
                     ON CONFLICT(name) DO UPDATE SET latest = excluded.latest, retired = 0",
                    params![name, v],
                )?;
                bump(conn)?;
                Ok((Some(v as u32), Vec::new()))
            })
            .await?;
        v.ok_or(StoreError::Refused(Refusal::TooManyWorkflows {
            limit: MAX_WORKFLOWS,
        }))
    }

    async fn get_workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        let name = name.to_owned();
        self.read(move |c| {
            let meta: Option<(i64, i64)> = c
                .prepare_cached("SELECT latest, retired FROM workflow_names WHERE name = ?1")?
                .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((latest, retired)) = meta else {
                return Ok(None);
            };
            let version = version.map_or(latest, i64::from);
            let definition: Option<String> = c
                .prepare_cached(
                    "SELECT definition FROM workflow_versions WHERE name = ?1 AND version = ?2",
                )?
                .query_row(params![name, version], |r| r.get(0))
                .optional()?;
            Ok(definition.map(|definition| StoredWorkflow {
                version: version as u32,
                definition,
                retired: retired != 0,
            }))
        })
        .await
    }

    async fn retire_workflow(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE workflow_names SET retired = 1 WHERE name = ?1",
                params![name],
            )?;
            if n == 1 {
                bump(conn)?;
            }
            Ok((n == 1, Vec::new()))
        })
        .await
    }

    async fn list_workflows(&self) -> Result<Vec<WorkflowEntry>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT name, latest, retired FROM workflow_names ORDER BY name")?
                .query_map([], |r| {
                    Ok(WorkflowEntry {
                        name: r.get(0)?,
                        latest: r.get::<_, i64>(1)? as u32,
                        retired: r.get::<_, i64>(2)? != 0,
                    })
                })?
                .collect()
        })
        .await
    }

    async fn workflows_generation(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let v: Option<String> = c
                .prepare_cached("SELECT value FROM settings WHERE name = 'workflows_gen'")?
                .query_row([], |r| r.get(0))
                .optional()?;
            Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
        })
        .await
    }
}
