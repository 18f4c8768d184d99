//! The Redis job store: the prototype's keys plus leases, heartbeats, a reaper,
//! fencing, delayed retries, dead letters and change events (DESIGN.md §4).
//!
//! Every multi-key step is one Lua script (`lua/*.lua`), and every script touches
//! either only `{job_queue}`-slot keys or only one status hash, so the layout works
//! on Redis Cluster. Steps that must touch both (claim, retry, reap) are two
//! scripts, ordered so that a crash between them leaves nothing lost: at worst a job
//! is run again, and the lease token fences off the stale runner.

mod api_keys;
mod batches;
pub mod conn;
mod events;
mod idempotency;
mod key_names;
mod known_sets;
mod lease;
mod outbox;
mod previews;
mod queue;
mod retention;
mod routing;
mod scripts;
mod settle;
mod steering;
mod uploads;
mod usage;
mod workflows;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::RedisError;
use ::redis::aio::ConnectionManagerConfig;
use tokio::sync::{Notify, broadcast, watch};

use self::conn::Conn;
use self::events::subscribe_loop;
pub use self::key_names::KeyNames;
use self::known_sets::KnownSets;
use self::scripts::Scripts;
use super::{EVENT_BUFFER, JobEvent, StoreError, StoreSettings, WorkerId};
use crate::job::JobRecord;

/// How long any single Redis command may take before the caller gets
/// [`StoreError::Unavailable`]: an outage answers 503 within a second.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(1000);

/// A job store on Redis ≥ 6.2.
pub struct RedisStore {
    conn: Conn,
    /// Woken when a job is queued (seen on the events channel), for idle claims.
    wake: Arc<Notify>,
    keys: KeyNames,
    settings: StoreSettings,
    scripts: Scripts,
    events: broadcast::Sender<JobEvent>,
    /// ComfyUI's messages relayed (see `Previews::relay`).
    relayed: broadcast::Sender<crate::store::Relayed>,
    subscriber: Mutex<Option<watch::Sender<bool>>>,
    op_timeout: Duration,
    url_for_logs: String,
    /// Queue entries moved into a worker's processing list whose lease could not
    /// be written (the store went away between the two steps): leased first by
    /// the next claim, so none is left behind in a live worker's list.
    stranded: Mutex<Vec<(WorkerId, String)>>,
    /// Ids of claims that got no answer: the next claim of that worker asks again
    /// under the same id (see claim.lua).
    unanswered: Mutex<Vec<(WorkerId, String)>>,
    /// Requirement sets this process saw registered.
    sets_known: KnownSets,
    /// The keys a submission's script takes, and the events channel.
    push_keys: Vec<String>,
}

/// Longest a write waits for `--redis-wait-replicas` replicas.
const WAIT_MS: u64 = 1000;

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[user:pass@]host:port[/db]`, or
    /// `redis+sentinel://host:26379[,…]/<master>[/db]`). Connects
    /// lazily: the service starts, and reports 503, while Redis is down.
    pub fn connect(url: &str, prefix: &str, settings: StoreSettings) -> Result<Self, StoreError> {
        let op_timeout = DEFAULT_OP_TIMEOUT;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout / 2))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = Conn::open(url, config)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (relayed, _) = broadcast::channel(crate::store::RELAY_BUFFER);
        let keys = KeyNames::new(prefix);
        Ok(RedisStore {
            push_keys: queue::push_keys(&keys),
            sets_known: KnownSets::new(crate::store::MAX_REQUIREMENT_SETS),
            stranded: Mutex::new(Vec::new()),
            unanswered: Mutex::new(Vec::new()),
            conn,
            wake: Arc::new(Notify::new()),
            keys,
            settings,
            scripts: Scripts::new(),
            events,
            relayed,
            subscriber: Mutex::new(None),
            op_timeout,
            url_for_logs: redact(url),
        })
    }

    /// With `--redis-wait-replicas N`: waits until N replicas have this
    /// connection's writes (up to [`WAIT_MS`]); fewer is `Unavailable`, so the
    /// caller is not told a write happened that a failover could lose.
    async fn replicated(&self) -> Result<(), StoreError> {
        let n = self.settings.wait_replicas;
        if n == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let acked: i64 = self
            .run_for(
                Duration::from_millis(WAIT_MS) + self.op_timeout,
                ::redis::cmd("WAIT")
                    .arg(n)
                    .arg(WAIT_MS)
                    .query_async(&mut conn),
            )
            .await?;
        if acked < i64::from(n) {
            return Err(StoreError::Unavailable(format!(
                "only {acked} of {n} Redis replicas acknowledged the write within {WAIT_MS} ms"
            )));
        }
        Ok(())
    }

    /// The connection handle (Sentinel: always to the current master).
    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }

    fn ttl_secs(&self) -> u64 {
        self.settings.job_ttl.as_secs().max(1)
    }

    /// Runs one Redis call under the operation timeout.
    async fn run<T>(
        &self,
        f: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        self.run_for(self.op_timeout, f).await
    }

    async fn run_for<T>(
        &self,
        limit: Duration,
        f: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "Redis did not answer within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// Lists a job of `owner` under `status` (or `gone`: not at all); `unqueue`
    /// also takes it out of the queue-position index.
    async fn relist(
        &self,
        id: &str,
        owner: &str,
        status: &str,
        unqueue: bool,
    ) -> Result<(), StoreError> {
        let k = &self.keys;
        let mut inv = self.scripts.relist.prepare_invoke();
        inv.key(k.index()).key(k.pending());
        for key in k.status_indexes() {
            inv.key(key);
        }
        for key in k.lane_keys() {
            inv.key(key);
        }
        inv.arg(id)
            .arg(status)
            .arg(if unqueue { "1" } else { "0" })
            .arg(k.tag())
            .arg(owner);
        let mut conn = self.conn.clone();
        self.run(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    fn start_subscriber(&self) {
        let mut guard = self.subscriber.lock().expect("subscriber lock");
        if guard.is_some() {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        *guard = Some(stop_tx);
        let channel = self.keys.events();
        let tx = self.events.clone();
        let connect_timeout = self.op_timeout;
        tokio::spawn(subscribe_loop(
            self.conn.clone(),
            channel,
            (tx, self.relayed.clone()),
            self.wake.clone(),
            stop_rx,
            connect_timeout,
        ));
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(stop) = self.subscriber.lock().ok().and_then(|mut g| g.take()) {
            let _ = stop.send(true);
        }
    }
}

fn map_err(e: RedisError) -> StoreError {
    // Answers that mean "not now" are an outage too: a Redis still loading its
    // AOF after a restart, a replica during a failover, a busy script, a cluster
    // resharding or without a master.
    let transient = matches!(
        e.code(),
        Some("LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "BUSY")
    );
    if transient
        || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
    {
        StoreError::Unavailable(format!("Redis: {e}"))
    } else {
        StoreError::Internal(format!("Redis: {e}"))
    }
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn record_from_map(id: &str, map: HashMap<String, String>) -> Option<JobRecord> {
    if map.is_empty() {
        return None;
    }
    let mut job = JobRecord::from_fields(map.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if job.id.is_empty() {
        job.id = id.to_owned();
    }
    Some(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(redact("redis://me:hunter2@db"), "redis://me:***@db");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
