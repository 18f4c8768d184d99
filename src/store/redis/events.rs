//! The process's one subscription to the events channel: every change published by
//! any script, on any process, reaches this process's subscribers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::RedisError;
use futures_util::StreamExt;
use tokio::sync::{Notify, broadcast, watch};

use crate::job::JobRecord;
use crate::store::{JobEvent, Relayed};

/// One pub/sub connection per process: every change published by any script on any
/// process reaches this process's subscribers. Reconnects with backoff.
pub(super) async fn subscribe_loop(
    conn: super::conn::Conn,
    channel: String,
    (tx, relayed): (broadcast::Sender<JobEvent>, broadcast::Sender<Relayed>),
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    connect_timeout: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        // With Sentinel, the master of the moment.
        let client = conn.client();
        let connected = tokio::time::timeout(connect_timeout, async {
            let Some(client) = client else {
                return Err(RedisError::from((
                    ::redis::ErrorKind::Io,
                    "no Redis master known yet",
                )));
            };
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, RedisError>(ps)
        })
        .await;
        match connected {
            Ok(Ok(ps)) => {
                tracing::debug!(%channel, "subscribed to job events");
                backoff = Duration::from_millis(100);
                let mut stream = ps.into_on_message();
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                if let Some(job) = decode_event(msg.get_payload_bytes()) {
                                    if let Some(text) = job.extra.get(MESSAGE_FIELD) {
                                        let _ = relayed.send(Relayed {
                                            job_id: job.id.clone(),
                                            owner: job.owner.clone(),
                                            text: text.as_str().into(),
                                        });
                                        continue;
                                    }
                                    if let Some(seq) = job.extra.get(PREVIEW_FIELD).and_then(|v| v.parse().ok()) {
                                        let _ = tx.send(JobEvent::preview(&job.id, &job.owner, seq));
                                        continue;
                                    }
                                    if job.status == crate::job::JobStatus::Queued {
                                        // Idle claims in this process look again.
                                        wake.notify_waiters();
                                    }
                                    let _ = tx.send(JobEvent::changed(job));
                                }
                            }
                            None => break,
                        },
                        _ = stop.changed() => return,
                    }
                }
                tracing::warn!("job events subscription lost; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to job events yet"),
            Err(_) => tracing::debug!("subscribing to job events timed out"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The field that makes a published event a preview announcement:
/// `{"job_id", "owner_key", "preview_seq"}`.
pub(super) const PREVIEW_FIELD: &str = "preview_seq";

/// The field that makes a published event one of ComfyUI's messages relayed:
/// `{"job_id", "owner_key", "comfy_message"}`.
pub(super) const MESSAGE_FIELD: &str = "comfy_message";

/// An event published by a script: a JSON object of the hash's string fields.
fn decode_event(bytes: &[u8]) -> Option<JobRecord> {
    let map: HashMap<String, serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    let fields: Vec<(String, String)> = map
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    let job = JobRecord::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    (!job.id.is_empty()).then_some(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobStatus;

    #[test]
    fn events_decode_to_records() {
        let job =
            decode_event(br#"{"job_id":"j1","status":"processing","progress":"40"}"#).unwrap();
        assert_eq!(job.id, "j1");
        assert_eq!(job.status, JobStatus::Processing);
        assert_eq!(job.progress, 40);
        assert!(decode_event(b"not json").is_none());
        assert!(decode_event(b"{}").is_none());
    }
}
