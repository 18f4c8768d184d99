//! The connection every store call uses: a reconnecting `ConnectionManager` to one
//! Redis, or, with Sentinel (`redis+sentinel://h1:26379,h2:26379/<master>[/db]`),
//! to whichever server the sentinels name as master, or a cluster connection
//! (`redis+cluster://h1:7001,h2:7002`) that routes each command by its key's slot.
//! With Sentinel a watcher asks the sentinels every half second (and at once after
//! a connection error or a `READONLY` answer); when the master changes, every
//! later call goes to the new one.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::Notify;

use crate::store::StoreError;

const DEFAULT_CONNECT: Duration = Duration::from_millis(500);
const DEFAULT_RESPONSE: Duration = Duration::from_secs(1);

/// How often the sentinels are asked who the master is.
const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// Where the master is, per the sentinels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelUrl {
    pub sentinels: Vec<String>,
    pub master: String,
    pub db: i64,
    pub password: Option<String>,
}

impl SentinelUrl {
    /// `redis+sentinel://[:password@]host:port[,host:port…]/<master name>[/db]`.
    pub fn parse(url: &str) -> Result<Option<SentinelUrl>, String> {
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Ok(None);
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let password = auth
            .map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_owned())
            .filter(|p| !p.is_empty());
        let (hosts, path) = rest
            .split_once('/')
            .ok_or("a Sentinel URL needs the master's name: redis+sentinel://host:26379/<name>")?;
        let sentinels: Vec<String> = hosts
            .split(',')
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains(':') {
                    h.to_owned()
                } else {
                    format!("{h}:26379")
                }
            })
            .collect();
        if sentinels.is_empty() {
            return Err("a Sentinel URL needs at least one sentinel host".into());
        }
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let master = parts
            .next()
            .ok_or("a Sentinel URL needs the master's name after the hosts")?
            .to_owned();
        let db = match parts.next() {
            Some(d) => d
                .parse()
                .map_err(|_| format!("{d:?} is not a database number"))?,
            None => 0,
        };
        Ok(Some(SentinelUrl {
            sentinels,
            master,
            db,
            password,
        }))
    }

    fn master_url(&self, host: &str, port: u16) -> String {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        match &self.password {
            Some(p) => format!("redis://:{p}@{host}:{port}/{}", self.db),
            None => format!("redis://{host}:{port}/{}", self.db),
        }
    }
}

/// A single server's reconnecting connection, or a cluster's.
#[derive(Clone)]
enum Handle {
    Single(ConnectionManager),
    Cluster(::redis::cluster_async::ClusterConnection),
}

impl Handle {
    async fn send(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Handle::Single(m) => m.req_packed_command(cmd).await,
            Handle::Cluster(c) => c.req_packed_command(cmd).await,
        }
    }

    async fn send_all(
        &mut self,
        cmd: &Pipeline,
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>, RedisError> {
        match self {
            Handle::Single(m) => m.req_packed_commands(cmd, offset, count).await,
            Handle::Cluster(c) => c.req_packed_commands(cmd, offset, count).await,
        }
    }
}

/// `redis+cluster://[:password@]host:port[,host:port…]`: the seed nodes.
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix("redis+cluster://")?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let hosts = rest.split('/').next().unwrap_or_default();
    Some(
        hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| match auth {
                Some(a) => format!("redis://{a}@{h}"),
                None => format!("redis://{h}"),
            })
            .collect(),
    )
}

struct Current {
    client: Client,
    manager: Handle,
    /// `host:port` of the master it talks to (Sentinel only).
    addr: String,
}

struct Shared {
    current: RwLock<Option<Current>>,
    sentinel: Option<SentinelUrl>,
    config: ConnectionManagerConfig,
    /// Ask the sentinels now.
    poke: Notify,
    /// Changes of master seen.
    pub switched: Notify,
    /// Cluster: the seed nodes (pub/sub goes to one of them).
    nodes: Vec<String>,
    next_node: std::sync::atomic::AtomicUsize,
}

/// A connection handle: cheap to clone, always to the current master.
#[derive(Clone)]
pub struct Conn {
    shared: Arc<Shared>,
    db: i64,
}

fn manager(
    client: &Client,
    config: &ConnectionManagerConfig,
) -> Result<ConnectionManager, StoreError> {
    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
        .map_err(|e| StoreError::Internal(format!("cannot set up Redis connection: {e}")))
}

impl Conn {
    pub fn open(url: &str, config: ConnectionManagerConfig) -> Result<Conn, StoreError> {
        if let Some(nodes) = cluster_nodes(url) {
            return Self::open_cluster(nodes, config);
        }
        let sentinel = SentinelUrl::parse(url).map_err(StoreError::Internal)?;
        let Some(s) = sentinel else {
            let client = Client::open(url)
                .map_err(|e| StoreError::Internal(format!("invalid Redis URL: {e}")))?;
            let db = client.get_connection_info().redis_settings().db();
            let current = Current {
                manager: Handle::Single(manager(&client, &config)?),
                client,
                addr: String::new(),
            };
            return Ok(Conn {
                shared: Arc::new(Shared {
                    current: RwLock::new(Some(current)),
                    sentinel: None,
                    config,
                    poke: Notify::new(),
                    switched: Notify::new(),
                    nodes: Vec::new(),
                    next_node: Default::default(),
                }),
                db,
            });
        };
        let db = s.db;
        let shared = Arc::new(Shared {
            current: RwLock::new(None),
            sentinel: Some(s),
            config,
            poke: Notify::new(),
            switched: Notify::new(),
            nodes: Vec::new(),
            next_node: Default::default(),
        });
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Internal("Redis Sentinel needs the async runtime".into()))?;
        handle.spawn(watch_sentinels(Arc::downgrade(&shared)));
        Ok(Conn { shared, db })
    }

    /// A cluster: the connection is made in the background (it is async), with
    /// retries; calls before it are "unavailable", as with Redis down.
    fn open_cluster(
        nodes: Vec<String>,
        config: ConnectionManagerConfig,
    ) -> Result<Conn, StoreError> {
        if nodes.is_empty() {
            return Err(StoreError::Internal(
                "a cluster URL needs at least one node: redis+cluster://host:port[,host:port…]"
                    .into(),
            ));
        }
        let client = ::redis::cluster::ClusterClientBuilder::new(nodes.clone())
            .connection_timeout(DEFAULT_CONNECT)
            .response_timeout(DEFAULT_RESPONSE)
            .retries(2)
            .build()
            .map_err(|e| StoreError::Internal(format!("invalid Redis Cluster URL: {e}")))?;
        let first = Client::open(nodes[0].as_str())
            .map_err(|e| StoreError::Internal(format!("invalid Redis Cluster URL: {e}")))?;
        let shared = Arc::new(Shared {
            current: RwLock::new(None),
            sentinel: None,
            config,
            poke: Notify::new(),
            switched: Notify::new(),
            nodes,
            next_node: Default::default(),
        });
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Internal("Redis Cluster needs the async runtime".into()))?;
        let weak = Arc::downgrade(&shared);
        handle.spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                match client.get_async_connection().await {
                    Ok(c) => {
                        *shared.current.write().unwrap_or_else(|e| e.into_inner()) =
                            Some(Current {
                                client: first,
                                manager: Handle::Cluster(c),
                                addr: String::new(),
                            });
                        shared.switched.notify_waiters();
                        tracing::info!("connected to the Redis Cluster");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot reach the Redis Cluster yet"),
                }
                drop(shared);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
        Ok(Conn { shared, db: 0 })
    }

    /// A client for connections of their own (pub/sub): the current master, or
    /// in a cluster one node after another (a cluster broadcasts `PUBLISH` to
    /// every node, so any one of them hears every event).
    pub fn client(&self) -> Option<Client> {
        let nodes = &self.shared.nodes;
        if !nodes.is_empty() {
            let i = self
                .shared
                .next_node
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Client::open(nodes[i % nodes.len()].as_str()).ok();
        }
        self.read().as_ref().map(|c| c.client.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Current>> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn manager(&self) -> Result<Handle, RedisError> {
        self.read()
            .as_ref()
            .map(|c| c.manager.clone())
            .ok_or_else(|| {
                RedisError::from((
                    ErrorKind::Io,
                    "no Redis master known yet (asking the sentinels)",
                ))
            })
    }

    /// After a failed call: with Sentinel, ask who the master is now.
    fn after(&self, r: &Result<impl Sized, RedisError>) {
        if let (Err(e), Some(_)) = (r, &self.shared.sentinel)
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.code() == Some("READONLY"))
        {
            self.shared.poke.notify_one();
        }
    }

    /// Whether this is a cluster (commands on keys of several slots cannot share
    /// a pipeline).
    pub fn is_cluster(&self) -> bool {
        !self.shared.nodes.is_empty()
    }

    /// Waits for the next change of master (tests, logs).
    pub async fn switched(&self) {
        self.shared.switched.notified().await
    }

    /// `host:port` of the master in use (Sentinel), else empty.
    pub fn master_addr(&self) -> String {
        self.read()
            .as_ref()
            .map(|c| c.addr.clone())
            .unwrap_or_default()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut m = self.manager()?;
            let r = m.send(cmd).await;
            self.after(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut m = self.manager()?;
            let r = m.send_all(cmd, offset, count).await;
            self.after(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

/// Asks each sentinel in turn for the master's address; the first answer wins.
async fn ask_sentinels(s: &SentinelUrl) -> Option<(String, u16)> {
    for addr in &s.sentinels {
        let Ok(client) = Client::open(format!("redis://{addr}")) else {
            continue;
        };
        let asked = tokio::time::timeout(Duration::from_millis(500), async {
            let mut c = client.get_multiplexed_async_connection().await?;
            ::redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&s.master)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
        })
        .await;
        if let Ok(Ok(Some(found))) = asked {
            return Some(found);
        }
    }
    None
}

async fn watch_sentinels(weak: Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let s = shared.sentinel.as_ref().expect("only with Sentinel");
        if let Some((host, port)) = ask_sentinels(s).await {
            let addr = format!("{host}:{port}");
            let known = shared
                .current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|c| c.addr.clone());
            if known.as_deref() != Some(addr.as_str()) {
                match Client::open(s.master_url(&host, port)) {
                    Ok(client) => match manager(&client, &shared.config) {
                        Ok(m) => {
                            tracing::warn!(master = %addr, previous = known.as_deref().unwrap_or("none"), "Redis master (per Sentinel)");
                            *shared.current.write().unwrap_or_else(|e| e.into_inner()) =
                                Some(Current {
                                    client,
                                    manager: Handle::Single(m),
                                    addr,
                                });
                            shared.switched.notify_waiters();
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot connect to the new master"),
                    },
                    Err(e) => tracing::warn!(error = %e, "the sentinels name an unusable master"),
                }
            }
        } else {
            tracing::debug!("no sentinel answered");
        }
        let poke = async { shared.poke.notified().await };
        tokio::select! {
            _ = tokio::time::sleep(SENTINEL_POLL) => {}
            _ = poke => {}
        }
        drop(shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse() {
        assert_eq!(SentinelUrl::parse("redis://h:6379").unwrap(), None);
        let s = SentinelUrl::parse("redis+sentinel://:pw@a:26379,b,c:26380/main/2")
            .unwrap()
            .unwrap();
        assert_eq!(s.sentinels, ["a:26379", "b:26379", "c:26380"]);
        assert_eq!((s.master.as_str(), s.db), ("main", 2));
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(
            s.master_url("10.0.0.5", 6380),
            "redis://:pw@10.0.0.5:6380/2"
        );
        assert!(SentinelUrl::parse("redis+sentinel://a:26379").is_err());
        assert!(SentinelUrl::parse("redis+sentinel://a:26379/m/x").is_err());
    }
}
