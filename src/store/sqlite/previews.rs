//! Each running job's latest preview. (SQLite)

use async_trait::async_trait;
use std::time::Instant;

use super::MAX_PREVIEWS;
use super::SqliteStore;
use crate::job::JobId;
use crate::store::{JobEvent, PREVIEW_TTL, Preview, Previews, StoreError};

#[async_trait]
impl Previews for SqliteStore {
    async fn put_preview(
        &self,
        id: &JobId,
        owner: &str,
        preview: &Preview,
    ) -> Result<(), StoreError> {
        {
            let mut m = self.previews.lock().expect("previews");
            m.retain(|_, (at, _)| at.elapsed() < PREVIEW_TTL);
            if m.len() >= MAX_PREVIEWS && !m.contains_key(id.as_str()) {
                let oldest = m
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    m.remove(&k);
                }
            }
            m.insert(id.to_string(), (Instant::now(), preview.clone()));
        }
        let _ = self
            .events
            .send(JobEvent::preview(id.as_str(), owner, preview.seq));
        Ok(())
    }

    async fn relay(&self, id: &JobId, owner: &str, message: &str) -> Result<(), StoreError> {
        let _ = self.relayed.send(crate::store::Relayed {
            job_id: id.to_string(),
            owner: owner.to_owned(),
            text: message.into(),
        });
        Ok(())
    }

    fn relayed(&self) -> tokio::sync::broadcast::Receiver<crate::store::Relayed> {
        self.relayed.subscribe()
    }

    async fn get_preview(&self, id: &JobId) -> Result<Option<Preview>, StoreError> {
        Ok(self
            .previews
            .lock()
            .expect("previews")
            .get(id.as_str())
            .filter(|(at, _)| at.elapsed() < PREVIEW_TTL)
            .map(|(_, p)| p.clone()))
    }
}
