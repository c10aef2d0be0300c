//! The node registry: which gateways are alive, where they are, and who is connected to them.
//!
//! Why leases: a gateway killed with SIGKILL cannot deregister itself. So a node is a member of
//! the `keys::nodes()` sorted set scored by the moment its lease runs out, and its two hashes
//! carry a TTL of one lease; a task renews both every lease/3. A dead node's score falls into
//! the past (readers drop expired members) and its hashes expire on their own.
//!
//! Why Redis's clock: the lease scores are computed from `TIME` inside small scripts, both when
//! a lease is renewed and when `nodes()` filters, so gateways with skewed clocks still agree on
//! who is alive. Each script touches only the sorted set, so it stays valid on Redis Cluster.
//!
//! Why a queue of client ids and an in-memory map: `connection_opened`/`connection_closed` are
//! called on the hot path of every WebSocket and must never wait. They update the link's map
//! (the truth about this node) and `try_send` the client id into a bounded queue; the task
//! writes each dirty id's *current* state (HSET or HDEL) in pipelined batches, so order in the
//! queue does not matter. If the queue is full, or a write fails, or Redis lost the node's
//! entry (a restart), the next refresh rewrites the whole connections hash from the map in one
//! MULTI, so readers never see it half-written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::{Script, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cluster::Conn;
use super::connect::redis_error;
use super::presence::Joined;
use super::{LinkState, RedisBus};
use crate::presence::{Member, StoredEntry, index_field, split_index_field};
use crate::{BusError, ConnectionInfo, NodeInfo, keys};

/// Capacity of the queue of dirty client ids.
const QUEUE: usize = 16 * 1024;
/// Most client ids written in one pipeline.
const WRITE_BATCH: usize = 1024;
/// Most fields per HSET when the whole connections hash is rewritten.
const RESYNC_CHUNK: usize = 1000;

/// KEYS[1] = the nodes sorted set; ARGV[1] = node id, ARGV[2] = lease in ms.
/// Scores the node with Redis's now + lease; returns 1 if the node was not registered.
const LEASE_LUA: &str = include_str!("lua/lease.lua");

/// KEYS[1] = the nodes sorted set. Drops expired nodes, returns the live ones.
const LIVE_NODES_LUA: &str = include_str!("lua/live_nodes.lua");

pub(crate) fn lease_script() -> Script {
    Script::new(LEASE_LUA)
}

pub(crate) fn live_nodes_script() -> Script {
    Script::new(LIVE_NODES_LUA)
}

/// One presence entry this node holds.
#[derive(Debug, Clone)]
pub(crate) struct NodeEntry {
    pub(crate) channel: String,
    pub(crate) member: Member,
    /// Whether its namespace announces joins and leaves.
    pub(crate) announce: bool,
}

/// The registry state shared by the link (writers) and the task (reader).
#[derive(Default)]
struct Shared {
    /// This node's connections: the truth the Redis hash is kept equal to.
    connections: Mutex<HashMap<String, ConnectionInfo>>,
    /// The Redis hash may differ from `connections`: rewrite it on the next refresh.
    resync: AtomicBool,
    /// This node's presence entries by index field: the truth its presence index and the
    /// channels' presence hashes are kept equal to.
    presence: Mutex<HashMap<String, NodeEntry>>,
    /// Redis's presence may differ from `presence`: reconcile on the next refresh.
    presence_resync: AtomicBool,
}

/// The link's side: records connections without waiting.
#[derive(Clone)]
pub(crate) struct RegistryHandle {
    shared: Arc<Shared>,
    dirty: mpsc::Sender<String>,
    /// Presence entries of closed connections, for the task to remove.
    left: mpsc::Sender<NodeEntry>,
}

impl RegistryHandle {
    /// Records a presence entry before it is written to Redis.
    pub(crate) fn presence_added(&self, entry: NodeEntry) {
        let field = index_field(&entry.channel, &entry.member.client);
        self.shared.presence.lock().insert(field, entry);
    }

    /// Forgets a presence entry; returns it if the node held it.
    pub(crate) fn presence_removed(&self, channel: &str, client: &str) -> Option<NodeEntry> {
        self.shared
            .presence
            .lock()
            .remove(&index_field(channel, client))
    }

    /// Forgets a presence entry and has the task remove it from Redis. Never waits.
    pub(crate) fn presence_left(&self, channel: &str, client: &str) {
        if let Some(entry) = self.presence_removed(channel, client) {
            self.remove_in_background(entry);
        }
    }

    /// Has the task remove an entry the node no longer holds from Redis. Never waits.
    pub(crate) fn remove_in_background(&self, entry: NodeEntry) {
        if self.left.try_send(entry).is_err() {
            self.presence_resync();
        }
    }

    /// Whether the node holds this presence entry.
    pub(crate) fn holds(&self, channel: &str, client: &str) -> bool {
        self.shared
            .presence
            .lock()
            .contains_key(&index_field(channel, client))
    }

    /// Redis's presence may now differ from the node's: reconcile on the next refresh.
    pub(crate) fn presence_resync(&self) {
        self.shared.presence_resync.store(true, Ordering::Release);
    }

    pub(crate) fn opened(&self, conn: ConnectionInfo) {
        let client = conn.client.clone();
        self.shared.connections.lock().insert(client.clone(), conn);
        self.mark_dirty(client);
    }

    pub(crate) fn closed(&self, client: &str) {
        if self.shared.connections.lock().remove(client).is_some() {
            self.mark_dirty(client.to_owned());
        }
    }

    fn mark_dirty(&self, client: String) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.dirty.try_send(client) {
            self.shared.resync.store(true, Ordering::Release);
        }
    }
}

/// The task's side.
pub(crate) struct Registry {
    bus: Arc<RedisBus>,
    node: NodeInfo,
    state: Arc<LinkState>,
    shared: Arc<Shared>,
    dirty: mpsc::Receiver<String>,
    left: mpsc::Receiver<NodeEntry>,
    /// Answers to control requests: (reply list, answer).
    answers: mpsc::Receiver<(String, String)>,
    cancel: CancellationToken,
}

impl Registry {
    pub(crate) fn new(
        bus: Arc<RedisBus>,
        node: NodeInfo,
        state: Arc<LinkState>,
        cancel: CancellationToken,
        answers: mpsc::Receiver<(String, String)>,
    ) -> (RegistryHandle, Registry) {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(QUEUE);
        let (left_tx, left_rx) = mpsc::channel(QUEUE);
        let handle = RegistryHandle {
            shared: shared.clone(),
            dirty: tx,
            left: left_tx,
        };
        let task = Registry {
            bus,
            node,
            state,
            shared,
            dirty: rx,
            left: left_rx,
            answers,
            cancel,
        };
        (handle, task)
    }

    fn lease(&self) -> Duration {
        self.bus.config.node_lease
    }

    /// Refreshes the lease every lease/3 and writes connection changes as they come, until
    /// cancelled; then removes the node. Each operation runs to its own deadline before
    /// cancellation is looked at, so a renewal can never land after the removal.
    pub(crate) async fn run(mut self) {
        let mut refresh = tokio::time::interval(self.lease() / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let mut left = Vec::with_capacity(WRITE_BATCH);
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                _ = refresh.tick() => self.refresh().await,
                n = self.dirty.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        break; // the link is gone
                    }
                    self.write_dirty(&batch).await;
                    batch.clear();
                }
                n = self.left.recv_many(&mut left, WRITE_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.write_left(&left).await;
                    left.clear();
                }
                Some((reply_to, answer)) = self.answers.recv() => {
                    self.bus.control_answer(&reply_to, &answer).await;
                }
            }
        }
        self.state.registry_ready.store(false, Ordering::Release);
        self.remove().await;
    }

    async fn refresh(&self) {
        let result = self
            .bus
            .with_conn("a registry refresh", async |conn| {
                self.try_refresh(conn).await
            })
            .await;
        let was_ready = self
            .state
            .registry_ready
            .swap(result.is_ok(), Ordering::AcqRel);
        match result {
            Ok(()) if !was_ready => {
                tracing::info!(node = %self.node.id, lease = ?self.lease(), "node registered");
            }
            Ok(()) => {}
            Err(e) => {
                // Whatever happened, the hash may now be stale: rewrite it once Redis is back.
                self.shared.resync.store(true, Ordering::Release);
                tracing::warn!(node = %self.node.id, error = %e, "node registry refresh failed");
            }
        }
    }

    async fn try_refresh(&self, conn: &mut Conn<'_>) -> Result<(), BusError> {
        let lease_ms = self.lease().as_millis() as u64;
        // The description first, so a reader never sees a live node without it.
        let node_key = keys::node(&self.node.id);
        redis::pipe()
            .cmd("HSET")
            .arg(&node_key)
            .arg("address")
            .arg(&self.node.address)
            .arg("started_at_ms")
            .arg(self.node.started_at_ms)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&node_key)
            .arg(lease_ms)
            .ignore()
            .cmd("PEXPIRE")
            .arg(keys::node_connections(&self.node.id))
            .arg(lease_ms)
            .ignore()
            .cmd("PEXPIRE")
            .arg(keys::node_presence(&self.node.id))
            .arg(self.bus.reap_window().as_millis() as u64)
            .ignore()
            .cmd("PEXPIRE")
            .arg(keys::node_occupancy(&self.node.id))
            .arg(self.bus.reap_window().as_millis() as u64)
            .ignore()
            .exec_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        let added: i64 = self
            .bus
            .lease_script
            .key(keys::nodes())
            .arg(&self.node.id)
            .arg(lease_ms)
            .invoke_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        // A node Redis did not know (first refresh, expired lease, restarted Redis) has no
        // trustworthy connections hash either.
        let resync = self.shared.resync.swap(false, Ordering::AcqRel) || added == 1;
        if resync {
            let result = self.rewrite_connections(conn, lease_ms).await;
            if result.is_err() {
                self.shared.resync.store(true, Ordering::Release);
            }
            result?;
        }
        if self.shared.presence_resync.swap(false, Ordering::AcqRel) || added == 1 {
            let result = self.reconcile_presence(conn).await;
            if result.is_err() {
                self.shared.presence_resync.store(true, Ordering::Release);
            }
            result?;
        }
        Ok(())
    }

    /// Makes Redis's presence for this node what the node holds: entries Redis has and the
    /// node does not are removed (their leaves announced), and every entry the node holds is
    /// written again (announced only if Redis had lost it: a reaper removed it while this node
    /// could not renew its lease, or Redis restarted).
    async fn reconcile_presence(&self, conn: &mut Conn<'_>) -> Result<(), BusError> {
        let node = &self.node.id;
        let in_redis = self.bus.node_index(conn, node).await?;
        let held: Vec<(String, NodeEntry)> = self
            .shared
            .presence
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut removed = 0;
        for (field, text) in &in_redis {
            if held.iter().any(|(k, _)| k == field) {
                continue;
            }
            let (Some((channel, client)), Ok(entry)) =
                (split_index_field(field), StoredEntry::decode(text))
            else {
                continue;
            };
            let member = entry.member(client);
            self.bus
                .leave_node_entry(conn, node, channel, &member, entry.announce)
                .await?;
            removed += 1;
        }
        let mut restored = 0;
        for (_, e) in &held {
            let joined = self
                .bus
                .join_in(conn, node, &e.channel, &e.member, e.announce, u32::MAX)
                .await?;
            restored += usize::from(joined == Joined::Added);
        }
        tracing::info!(node = %node, removed, restored, held = held.len(),
            "node presence reconciled with redis");
        Ok(())
    }

    /// Removes the presence entries of closed connections (announcing their leaves).
    async fn write_left(&self, entries: &[NodeEntry]) {
        let node = &self.node.id;
        let result = self
            .bus
            .with_conn("presence leaves", async |conn| {
                for e in entries {
                    self.bus
                        .leave_node_entry(conn, node, &e.channel, &e.member, e.announce)
                        .await?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            self.shared.presence_resync.store(true, Ordering::Release);
            tracing::warn!(node = %node, entries = entries.len(), error = %e,
                "removing presence entries failed; reconciled on the next refresh");
        }
    }

    /// Replaces the connections hash with the in-memory map, atomically.
    async fn rewrite_connections(
        &self,
        conn: &mut Conn<'_>,
        lease_ms: u64,
    ) -> Result<(), BusError> {
        let key = keys::node_connections(&self.node.id);
        let entries: Vec<(String, String)> = self
            .shared
            .connections
            .lock()
            .values()
            .map(|c| (c.client.clone(), connection_json(c)))
            .collect();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        for chunk in entries.chunks(RESYNC_CHUNK) {
            pipe.cmd("HSET").arg(&key).arg(chunk).ignore();
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(lease_ms).ignore();
        pipe.exec_async(conn).await.map_err(|e| redis_error(&e))?;
        tracing::debug!(node = %self.node.id, connections = entries.len(),
            "node connections rewritten");
        Ok(())
    }

    /// Writes the current state of each dirty client: HSET if connected, HDEL if not.
    async fn write_dirty(&self, clients: &[String]) {
        let unique: HashSet<&String> = clients.iter().collect();
        let changes: Vec<(&String, Option<String>)> = {
            let connections = self.shared.connections.lock();
            unique
                .into_iter()
                .map(|c| (c, connections.get(c).map(connection_json)))
                .collect()
        };
        let key = keys::node_connections(&self.node.id);
        let mut pipe = redis::pipe();
        for (client, json) in &changes {
            match json {
                Some(json) => pipe.cmd("HSET").arg(&key).arg(client).arg(json).ignore(),
                None => pipe.cmd("HDEL").arg(&key).arg(client).ignore(),
            };
        }
        // A hash created here must not outlive the node if it dies before the next refresh.
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(self.lease().as_millis() as u64)
            .ignore();
        let result = self
            .bus
            .with_conn("connection updates", async |conn| {
                pipe.exec_async(conn).await.map_err(|e| redis_error(&e))
            })
            .await;
        if let Err(e) = result {
            self.shared.resync.store(true, Ordering::Release);
            tracing::warn!(node = %self.node.id, changes = changes.len(), error = %e,
                "writing node connections failed; they are rewritten on the next refresh");
        }
    }

    /// Removes the node from the registry (on detach), within the timeout: first its presence
    /// entries (announcing their leaves), then its keys.
    async fn remove(&self) {
        let id = &self.node.id;
        if let Err(e) = self.bus.clear_node_presence(id).await {
            tracing::warn!(node = %id, error = %e,
                "clearing the node's presence failed; a surviving node reaps it after its lease");
        }
        let result = self
            .bus
            .with_conn("the node removal", async |conn| {
                redis::pipe()
                    .cmd("ZREM")
                    .arg(keys::nodes())
                    .arg(id)
                    .ignore()
                    .cmd("DEL")
                    .arg(keys::node(id))
                    .ignore()
                    .cmd("DEL")
                    .arg(keys::node_connections(id))
                    .ignore()
                    .cmd("DEL")
                    .arg(keys::node_presence(id))
                    .ignore()
                    .exec_async(conn)
                    .await
                    .map_err(|e| redis_error(&e))
            })
            .await;
        match result {
            Ok(()) => tracing::info!(node = %self.node.id, "node removed from the registry"),
            Err(e) => tracing::warn!(node = %self.node.id, error = %e,
                "removing the node failed; it expires with its lease"),
        }
    }
}

fn connection_json(conn: &ConnectionInfo) -> String {
    serde_json::json!({ "user": conn.user, "connected_at_ms": conn.connected_at_ms }).to_string()
}

impl RedisBus {
    pub(crate) async fn nodes(&self) -> Result<Vec<NodeInfo>, BusError> {
        self.with_conn("the nodes query", async |conn| self.try_nodes(conn).await)
            .await
    }

    async fn try_nodes(&self, conn: &mut Conn<'_>) -> Result<Vec<NodeInfo>, BusError> {
        let mut ids: Vec<String> = self
            .live_nodes_script
            .key(keys::nodes())
            .arg(self.reap_window().as_millis() as u64)
            .invoke_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(keys::node(id));
            pipe.cmd("HLEN").arg(keys::node_connections(id));
        }
        let replies: Vec<Value> = pipe.query_async(conn).await.map_err(|e| redis_error(&e))?;
        if replies.len() != ids.len() * 2 {
            return Err(BusError::Protocol(format!(
                "{} replies to {} node queries",
                replies.len(),
                ids.len() * 2
            )));
        }
        let mut replies = replies.into_iter();
        let mut nodes = Vec::with_capacity(ids.len());
        for id in ids {
            let (Some(description), Some(count)) = (replies.next(), replies.next()) else {
                break;
            };
            let description: HashMap<String, String> = redis::from_redis_value(description)
                .map_err(|e| BusError::Protocol(format!("node {id}: {e}")))?;
            let connections: u64 = redis::from_redis_value(count)
                .map_err(|e| BusError::Protocol(format!("node {id} connections: {e}")))?;
            nodes.push(NodeInfo {
                address: description.get("address").cloned().unwrap_or_default(),
                started_at_ms: description
                    .get("started_at_ms")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                connections,
                id,
            });
        }
        Ok(nodes)
    }
}
