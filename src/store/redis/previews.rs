//! Each running job's latest preview. (Redis)

use async_trait::async_trait;

use super::RedisStore;
use crate::job::JobId;
use crate::store::{Preview, Previews, StoreError};

#[async_trait]
impl Previews for RedisStore {
    async fn put_preview(
        &self,
        id: &JobId,
        owner: &str,
        preview: &Preview,
    ) -> Result<(), StoreError> {
        let key = self.keys.preview(id.as_str());
        let announce = serde_json::json!({
            "job_id": id.as_str(),
            "owner_key": owner,
            super::events::PREVIEW_FIELD: preview.seq.to_string(),
        })
        .to_string();
        let mut conn = self.conn.clone();
        self.run(
            ::redis::pipe()
                .cmd("HSET")
                .arg(&key)
                .arg("seq")
                .arg(preview.seq)
                .arg("type")
                .arg(&preview.content_type)
                .arg("image")
                .arg(preview.image.as_ref())
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(crate::store::PREVIEW_TTL.as_millis() as u64)
                .ignore()
                .cmd("PUBLISH")
                .arg(self.keys.events())
                .arg(announce)
                .ignore()
                .query_async::<()>(&mut conn),
        )
        .await
    }

    async fn relay(&self, id: &JobId, owner: &str, message: &str) -> Result<(), StoreError> {
        let announce = serde_json::json!({
            "job_id": id.as_str(),
            "owner_key": owner,
            super::events::MESSAGE_FIELD: message,
        })
        .to_string();
        let mut conn = self.conn.clone();
        self.run(
            ::redis::cmd("PUBLISH")
                .arg(self.keys.events())
                .arg(announce)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    fn relayed(&self) -> tokio::sync::broadcast::Receiver<crate::store::Relayed> {
        self.start_subscriber();
        self.relayed.subscribe()
    }

    async fn get_preview(&self, id: &JobId) -> Result<Option<Preview>, StoreError> {
        let mut conn = self.conn.clone();
        let (seq, content_type, image): (Option<u64>, Option<String>, Option<Vec<u8>>) = self
            .run(
                ::redis::cmd("HMGET")
                    .arg(self.keys.preview(id.as_str()))
                    .arg("seq")
                    .arg("type")
                    .arg("image")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(match (seq, content_type, image) {
            (Some(seq), Some(content_type), Some(image)) => Some(crate::store::Preview {
                seq,
                content_type,
                image: image.into(),
            }),
            _ => None,
        })
    }
}
