//! The Redis bus: publishing through one Lua script per channel, one RESP3 pub/sub
//! connection per gateway node, and the node registry under short leases.
//!
//! - [`connect`]: connection settings (keepalive, timeouts), the pool, and how Redis failures
//!   read as [`BusError`]s;
//! - [`cluster`]: the same bus on a Redis Cluster (`redis+cluster://` seeds): commands routed
//!   by slot, publications on sharded pub/sub;
//! - [`publish`]: the publish script and `publish`/`broadcast`/`position`/`check`;
//! - [`subscriber`]: the per-node task that keeps Redis subscriptions equal to the wanted set
//!   and hands envelopes to the node's sink;
//! - [`registry`]: the per-node task that keeps the node and its connections registered, and
//!   the `nodes` query.
//!
//! A [`RedisLink`] owns its two background tasks through one cancellation token: `detach`
//! cancels them and waits for their clean-up (UNSUBSCRIBE, registry removal); dropping the link
//! cancels them too, and they clean up on their own.

pub mod cluster;
mod connect;
mod control;
mod occupancy;
mod presence;
mod publish;
mod registry;
mod subscriber;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Script;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use cluster::Conn;
use connect::Pool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::presence::Member;
use crate::wanted::Wanted;
use crate::{BusConfig, BusError, BusSink, ChannelReady, ConnectionInfo, NodeInfo};

/// Control answers a node keeps waiting to be pushed; past it, an answer is dropped (the
/// caller counts that gateway as not answering).
const CONTROL_ANSWERS: usize = 256;

/// How the bus reaches Redis for commands.
enum Redis {
    Single(Pool),
    Cluster(Box<OnCluster>),
}

struct OnCluster {
    client: ClusterClient,
    /// The connection every non-blocking command shares, made on first use.
    conn: tokio::sync::OnceCell<ClusterConnection>,
    /// Connections for blocking commands, one caller each.
    blocking: cluster::BlockingPool,
    /// Direct connections to the masters, for pipelines over many slots.
    masters: cluster::Masters,
}

pub struct RedisBus {
    config: BusConfig,
    /// Connections for publishing, queries and the registry.
    redis: Redis,
    /// Where subscriber connections (RESP3, one per attached node) go.
    subscriber_target: subscriber::Target,
    publish_script: Script,
    history_script: Script,
    lease_script: Script,
    live_nodes_script: Script,
    presence_scripts: presence::Scripts,
    occupancy_script: Script,
    /// The Pusher apps, set once the bus is configured: which channels queue webhooks.
    apps: std::sync::OnceLock<Arc<crate::pusher::Apps>>,
    /// Whether this process created the webhook stream's consumer group on this Redis.
    webhook_group_ready: AtomicBool,
}

impl RedisBus {
    pub(crate) fn new(config: &BusConfig) -> Result<Self, BusError> {
        if config.redis_timeout.is_zero() {
            return Err(BusError::Config("redis timeout must be above zero".into()));
        }
        if config.node_lease < Duration::from_millis(30) {
            return Err(BusError::Config("node lease must be at least 30ms".into()));
        }
        let (redis, subscriber_target) = match cluster::seeds(&config.redis_url) {
            Some(seeds) => {
                let seeds = seeds?;
                let client = cluster::build(cluster::builder(config, &seeds)?)?;
                (
                    Redis::Cluster(Box::new(OnCluster {
                        blocking: cluster::blocking_pool(config, client.clone())?,
                        masters: cluster::Masters::new(config, &seeds),
                        client,
                        conn: tokio::sync::OnceCell::new(),
                    })),
                    subscriber::Target::Cluster(seeds),
                )
            }
            None => {
                let info = connect::connection_info(config)?;
                let client = redis::Client::open(connect::resp3(&info))
                    .map_err(|e| BusError::Config(format!("redis connection settings: {e}")))?;
                (
                    Redis::Single(connect::pool(config, info)?),
                    subscriber::Target::Single(client),
                )
            }
        };
        let on_cluster = matches!(redis, Redis::Cluster(_));
        Ok(Self {
            redis,
            subscriber_target,
            config: config.clone(),
            publish_script: publish::publish_script(on_cluster),
            history_script: publish::history_script(),
            lease_script: registry::lease_script(),
            live_nodes_script: registry::live_nodes_script(),
            presence_scripts: presence::Scripts::new(on_cluster),
            occupancy_script: occupancy::occupancy_script(),
            apps: std::sync::OnceLock::new(),
            webhook_group_ready: AtomicBool::new(false),
        })
    }

    /// Sets the Pusher apps whose webhooks this bus queues (once; later calls are ignored).
    pub(crate) fn set_apps(&self, apps: Arc<crate::pusher::Apps>) {
        let _ = self.apps.set(apps);
    }

    /// The webhook record `(app id, event JSON)` for an event of `kind` on `channel`, when
    /// its app wants it; `None` otherwise.
    pub(crate) fn webhook_for(
        &self,
        channel: &str,
        kind: &str,
        event: impl FnOnce(String) -> crate::pusher::WebhookEvent,
    ) -> Option<(String, String)> {
        let (app, name) = self.apps.get()?.webhook_target(channel, kind)?;
        let json = serde_json::to_string(&event(name)).ok()?;
        Some((app.id.clone(), json))
    }

    /// Whether this bus runs on a Redis Cluster.
    pub(crate) fn on_cluster(&self) -> bool {
        matches!(self.redis, Redis::Cluster(_))
    }

    /// Runs `op` on a pooled connection (the cluster's connection on a cluster). The whole of
    /// it, checkout included, is bounded by `--redis-timeout`; running out of time is
    /// reported as unavailable, naming `what`.
    pub(crate) async fn with_conn<T>(
        &self,
        what: &str,
        op: impl AsyncFnOnce(&mut Conn<'_>) -> Result<T, BusError>,
    ) -> Result<T, BusError> {
        let timeout = self.config.redis_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let pool = match &self.redis {
            Redis::Single(pool) => pool,
            Redis::Cluster(on) => {
                // The cluster connection reconnects and follows the slot map on its own; only
                // its first connection is made here, and retried by the next caller if it
                // fails.
                let conn = tokio::time::timeout_at(
                    deadline,
                    on.conn.get_or_try_init(|| on.client.get_async_connection()),
                )
                .await
                .map_err(|_| connect::timed_out(what, timeout))?
                .map_err(|e| connect::redis_error(&e))?;
                return tokio::time::timeout_at(
                    deadline,
                    op(&mut Conn::Cluster(conn.clone(), &on.masters)),
                )
                .await
                .unwrap_or_else(|_| Err(connect::timed_out(what, timeout)));
            }
        };
        let mut pooled = tokio::time::timeout_at(deadline, pool.get())
            .await
            .map_err(|_| connect::timed_out(what, timeout))?
            .map_err(|e| connect::pool_error(e, timeout))?;
        match tokio::time::timeout_at(deadline, op(&mut Conn::Single(&mut pooled.conn))).await {
            Ok(result) => {
                if matches!(result, Err(BusError::Unavailable(_))) {
                    // Connection trouble: the pool drops this connection instead of reusing it.
                    pooled.broken = true;
                }
                result
            }
            Err(_) => {
                pooled.broken = true;
                Err(connect::timed_out(what, timeout))
            }
        }
    }

    /// Like [`RedisBus::with_conn`], for an operation that blocks on Redis (BLPOP, XREADGROUP
    /// BLOCK): on a cluster it runs on a connection of its own (see
    /// [`cluster::BlockingManager`]); a pooled connection is one caller's already.
    pub(crate) async fn with_blocking_conn<T>(
        &self,
        what: &str,
        op: impl AsyncFnOnce(&mut Conn<'_>) -> Result<T, BusError>,
    ) -> Result<T, BusError> {
        let Redis::Cluster(on) = &self.redis else {
            return self.with_conn(what, op).await;
        };
        let timeout = self.config.redis_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = tokio::time::timeout_at(deadline, on.blocking.get())
            .await
            .map_err(|_| connect::timed_out(what, timeout))?
            .map_err(|e| match e {
                deadpool::managed::PoolError::Backend(e) => connect::redis_error(&e),
                other => BusError::Unavailable(format!("redis cluster pool: {other}")),
            })?;
        tokio::time::timeout_at(deadline, op(&mut Conn::Cluster(conn.clone(), &on.masters)))
            .await
            .unwrap_or_else(|_| Err(connect::timed_out(what, timeout)))
    }

    /// Starts the node's subscriber and registry tasks. Must be called within a Tokio runtime.
    pub(crate) fn attach(self: &Arc<Self>, node: NodeInfo, sink: Arc<dyn BusSink>) -> RedisLink {
        let wanted = Arc::new(Wanted::default());
        let state = Arc::new(LinkState::default());
        crate::metrics::watch_link(&state);
        let cancel = CancellationToken::new();
        let (answers, answers_rx) = tokio::sync::mpsc::channel(CONTROL_ANSWERS);
        let (registry_handle, registry_task) = registry::Registry::new(
            self.clone(),
            node.clone(),
            state.clone(),
            cancel.clone(),
            answers_rx,
        );
        let subscriber_task = subscriber::Subscriber {
            target: self.subscriber_target.clone(),
            config: self.config.clone(),
            timeout: self.config.redis_timeout,
            canary_interval: self.config.canary_interval,
            node: node.id.clone(),
            wanted: wanted.clone(),
            answers,
            sink,
            state: state.clone(),
            cancel: cancel.clone(),
        };
        tracing::info!(node = %node.id, address = %node.address, "attaching node to the redis bus");
        let tasks = vec![
            tokio::spawn(subscriber_task.run()),
            tokio::spawn(registry_task.run()),
            tokio::spawn(presence::reap_loop(
                self.clone(),
                node.id.clone(),
                cancel.clone(),
            )),
        ];
        let mut tasks = tasks;
        if self.apps.get().is_some_and(|a| a.want_occupancy()) {
            tasks.push(tokio::spawn(
                occupancy::Occupancy::new(self.clone(), node.id.clone(), wanted.clone())
                    .run(cancel.clone()),
            ));
        }
        RedisLink {
            bus: self.clone(),
            wanted,
            state,
            registry: registry_handle,
            cancel,
            tasks: Mutex::new(tasks),
            // One operation in flight plus the clean-up, each bounded by the timeout.
            detach_deadline: self.config.redis_timeout * 2 + Duration::from_millis(200),
            node: node.id,
        }
    }
}

/// What the link's tasks report back for readiness.
#[derive(Default)]
pub(crate) struct LinkState {
    /// The subscriber connection is up and the whole wanted set is subscribed.
    pub(crate) subscriber_ready: AtomicBool,
    /// The last registry refresh succeeded.
    pub(crate) registry_ready: AtomicBool,
    /// Why the subscriber's last connection was lost (which shard, on a cluster), until it is
    /// back.
    pub(crate) subscriber_lost: Mutex<Option<String>>,
}

pub struct RedisLink {
    bus: Arc<RedisBus>,
    wanted: Arc<Wanted>,
    state: Arc<LinkState>,
    registry: registry::RegistryHandle,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    detach_deadline: Duration,
    node: String,
}

impl RedisLink {
    pub(crate) fn want(&self, channel: &str) -> ChannelReady {
        self.wanted.want(channel, false)
    }

    pub(crate) fn unwant(&self, channel: &str) {
        self.wanted.unwant(channel)
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.state.subscriber_ready.load(Ordering::Acquire)
            && self.state.registry_ready.load(Ordering::Acquire)
    }

    /// Why the link is not up (naming the Redis shard at fault when the subscriber knows it);
    /// `None` when it is.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if !self.state.subscriber_ready.load(Ordering::Acquire) {
            return Some(match self.state.subscriber_lost.lock().as_deref() {
                Some(reason) => format!("bus link down: {reason}"),
                None => "bus link down".to_owned(),
            });
        }
        if !self.state.registry_ready.load(Ordering::Acquire) {
            return Some("bus link down: node registry not refreshed".to_owned());
        }
        None
    }

    pub(crate) fn connection_opened(&self, conn: ConnectionInfo) {
        self.registry.opened(conn);
    }

    pub(crate) fn connection_closed(&self, client: &str) {
        self.registry.closed(client);
    }

    /// Writes a presence entry. The write runs as a task of its own, so that a caller dropped
    /// half-way (its connection's task ended) cannot leave Redis holding an entry the node
    /// forgot: the task finishes the write, then removes it again if the entry was let go
    /// meanwhile.
    pub(crate) async fn join(
        &self,
        channel: &str,
        member: Member,
        announce: bool,
        max: u32,
    ) -> Result<(), BusError> {
        let entry = registry::NodeEntry {
            channel: channel.to_owned(),
            member,
            announce,
        };
        self.registry.presence_added(entry.clone());
        let (bus, registry, node) = (self.bus.clone(), self.registry.clone(), self.node.clone());
        let write = tokio::spawn(async move {
            let (channel, client) = (&entry.channel, &entry.member.client);
            let joined = bus
                .with_conn("a presence join", async |conn| {
                    bus.join_in(conn, &node, channel, &entry.member, announce, max)
                        .await
                })
                .await;
            match joined {
                Ok(presence::Joined::Full) => {
                    registry.presence_removed(channel, client);
                    Err(BusError::LimitExceeded(format!(
                        "{channel} has its most presence entries ({max})"
                    )))
                }
                Ok(_) => {
                    if !registry.holds(channel, client) {
                        registry.remove_in_background(entry.clone());
                    }
                    Ok(())
                }
                Err(e) => {
                    // It may have been written all the same (a timeout): reconcile later.
                    registry.presence_removed(channel, client);
                    registry.presence_resync();
                    Err(e)
                }
            }
        });
        write
            .await
            .unwrap_or_else(|e| Err(BusError::Protocol(format!("presence join task: {e}"))))
    }

    /// Removes a presence entry, as a task of its own for the same reason as `join`.
    pub(crate) async fn leave(&self, channel: &str, client: &str) -> Result<(), BusError> {
        let Some(entry) = self.registry.presence_removed(channel, client) else {
            return Ok(());
        };
        let (bus, registry, node) = (self.bus.clone(), self.registry.clone(), self.node.clone());
        let write = tokio::spawn(async move {
            let result = bus
                .with_conn("a presence leave", async |conn| {
                    bus.leave_node_entry(conn, &node, &entry.channel, &entry.member, entry.announce)
                        .await
                })
                .await;
            if result.is_err() {
                registry.presence_resync();
            }
            result
        });
        write
            .await
            .unwrap_or_else(|e| Err(BusError::Protocol(format!("presence leave task: {e}"))))
    }

    pub(crate) fn left(&self, channel: &str, client: &str) {
        self.registry.presence_left(channel, client);
    }

    pub(crate) async fn detach(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        if tasks.is_empty() {
            return;
        }
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let joined = tokio::time::timeout(self.detach_deadline, futures::future::join_all(tasks));
        if joined.await.is_err() {
            tracing::warn!(node = %self.node, deadline = ?self.detach_deadline,
                "detach did not finish its clean-up in time; the registry entry expires with its lease");
            for abort in aborts {
                abort.abort();
            }
        } else {
            tracing::info!(node = %self.node, "node detached from the redis bus");
        }
    }
}

impl Drop for RedisLink {
    /// The tasks stop (and clean up on their own) when the link goes away without `detach`.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
