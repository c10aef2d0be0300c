//! The bus: how a publication travels from whoever publishes it to every gateway with a
//! subscriber on its channel, and the cluster bookkeeping that rides alongside.
//!
//! Both services use this crate. broker-api (and a gateway, for client publishes) calls
//! [`Bus::publish`]; the bus assigns the channel's next offset and hands the resulting
//! [`Envelope`] to every gateway whose [`NodeLink`] wants that channel. A gateway attaches to
//! the bus once with [`Bus::attach`], giving a [`BusSink`] that receives envelopes, and then
//! says which channels it wants as its local subscriptions come and go.
//!
//! Three implementations sit behind the one [`Bus`] type:
//! - [`redis`]: the production bus. A Lua script per publish assigns the offset and PUBLISHes
//!   the envelope; each gateway holds one RESP3 pub/sub connection; nodes and their
//!   connections are registered under short leases. Key names live in [`keys`]. The same
//!   bus runs on a Redis Cluster ([`redis::cluster`]): commands routed by slot, publications
//!   on sharded pub/sub.
//! - [`sharded`]: channels spread over several independent Redis servers by a consistent
//!   hash, one [`redis`] bus per server, so publications scale past one Redis.
//! - [`memory`]: the single-process bus used by `chorus` with no Redis. Same contract, same
//!   callers; its memory is bounded by [`MemoryBusConfig`] (channels and idempotency keys),
//!   and a publish past a bound fails with [`BusError::LimitExceeded`].

mod backend;
pub mod config;
pub mod control;
pub mod error;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod namespaces;
pub mod presence;
pub mod pusher;
pub mod redis;
pub mod sharded;
mod wanted;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use backend::Backend;
pub use chorus_protocol::bus::Envelope;
pub use config::{BusConfig, MemoryBusConfig};
pub use error::BusError;
pub use namespaces::{NamespaceRules, Namespaces};
pub use presence::{Member, PresenceStats};
pub use wanted::ChannelReady;

/// A message to publish on one channel.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    pub channel: String,
    pub data: Bytes,
    /// The client id of a publishing client that does not want its own message back.
    pub exclude_client: String,
    /// When set, a publish with the same key on the same channel within the idempotency
    /// window publishes nothing and returns the first one's offset.
    pub idempotency_key: Option<String>,
}

/// Where a publication landed in its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub offset: u64,
    pub epoch: String,
    /// True when the idempotency key matched an earlier publish: nothing was published now.
    pub duplicate: bool,
}

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// What part of a channel's history to read.
///
/// Every read is bounded in bytes as well as in count: history is read in small chunks that
/// stop at `max_bytes`, so a channel keeping thousands of large publications costs Redis (and
/// the reader) no more than one page, and the rest is read page by page (see
/// [`History::more`]).
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// Only publications after this offset (the epoch is the caller's to compare with the
    /// returned position's).
    pub since: Option<u64>,
    /// At most this many publications; 0 means no bound but the bytes.
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
    /// At most this many bytes of publication data — but always at least one publication, so
    /// that paging makes progress whatever the sizes.
    pub max_bytes: usize,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        Self {
            since: None,
            limit: 0,
            reverse: false,
            max_bytes: DEFAULT_HISTORY_PAGE_BYTES,
        }
    }
}

/// The byte bound of a history read that names none: 4 MiB.
pub const DEFAULT_HISTORY_PAGE_BYTES: usize = 4 << 20;

/// Most publications one page of history holds (what clients and the server API may ask for).
pub const MAX_HISTORY_PAGE: usize = 1000;

impl HistoryQuery {
    /// A page of history for a client or the server API: after `since`, at most `limit`
    /// publications, where 0 (or anything above [`MAX_HISTORY_PAGE`]) means the maximum, and
    /// at most `max_bytes` of them.
    pub fn page(since: Option<u64>, limit: usize, reverse: bool, max_bytes: usize) -> Self {
        Self {
            since,
            limit: match limit {
                0 => MAX_HISTORY_PAGE,
                n => n.min(MAX_HISTORY_PAGE),
            },
            reverse,
            max_bytes,
        }
    }
}

/// A channel's history and its position, read atomically.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub publications: Vec<Envelope>,
    pub position: Position,
    /// The read stopped at its byte bound with more publications left that the query asked
    /// for: read on after the last one returned.
    pub more: bool,
}

/// The answer to "what did I miss since this position?", one page at a time.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The publications after the position, in offset order, as far as the read's byte bound
    /// reached (empty unless `recovered`).
    pub publications: Vec<Envelope>,
    /// The channel's current position (its top), read with the publications.
    pub position: Position,
    /// True when `publications` are exactly what follows the requested position: every one
    /// up to the channel's top, or, with `more`, a first page of them without a hole.
    pub recovered: bool,
    /// Recovered, but the page stopped at its byte bound: recover again from the last
    /// publication returned for the next page.
    pub more: bool,
}

impl Recovery {
    /// Judges a history read since `since`: recovered only when the epoch is the same and the
    /// publications run without a hole from `since.offset + 1` to the channel's top — or, for
    /// a page cut at its byte bound, as far as the page goes. A position with no epoch and
    /// offset 0 (a client that never saw the channel) matches any epoch.
    pub fn judge(since: &Position, history: History) -> Recovery {
        let History {
            publications,
            position,
            more,
        } = history;
        let same_epoch = since.same_epoch_as(&position);
        let contiguous = publications
            .iter()
            .enumerate()
            .all(|(i, p)| p.offset == since.offset + 1 + i as u64);
        let reaches_top = since.offset + publications.len() as u64 == position.offset;
        let page = more && !publications.is_empty();
        if same_epoch && contiguous && (reaches_top || page) {
            Recovery {
                publications,
                position,
                recovered: true,
                more: page && !reaches_top,
            }
        } else {
            Recovery {
                publications: Vec::new(),
                position,
                recovered: false,
                more: false,
            }
        }
    }
}

/// A channel's current position: its epoch and the offset of its newest publication
/// (0 and an empty epoch for a channel never published to).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

impl Position {
    /// Whether a reader at this position is in the same life of the channel as `current`. A
    /// position that knows nothing of the channel (offset 0, no epoch) matches any epoch.
    pub fn same_epoch_as(&self, current: &Position) -> bool {
        (self.offset == 0 && self.epoch.is_empty()) || self.epoch == current.epoch
    }
}

/// A live gateway node, as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// Where clients reach the node (its advertised WebSocket address).
    pub address: String,
    pub connections: u64,
    pub started_at_ms: i64,
}

/// One client connection, as registered in the node registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub client: String,
    pub user: String,
    pub connected_at_ms: i64,
}

/// Receives every envelope for the channels a node wants.
///
/// Called from the bus's reader task, in channel order. It must never block or wait: a slow
/// sink would stall every channel of the node (and Redis drops pub/sub readers that fall behind).
pub trait BusSink: Send + Sync + 'static {
    fn publication(&self, envelope: Envelope);

    /// The node's link to the bus broke for the channels `lost` picks (every channel on one
    /// Redis; one shard's channels when the bus is sharded): their publications from now
    /// until `resubscribed` are missed. Called before any publication of the next connection.
    fn link_lost(&self, _lost: &dyn Fn(&str) -> bool) {}

    /// These channels are subscribed again after `link_lost` (or for the first time): what
    /// was published since the link broke must be fetched from history.
    fn resubscribed(&self, _channels: &[String]) {}

    /// A command for every gateway (see [`control`]): apply it to this node and say what
    /// was done. Called from the bus's reader like `publication`, so it must not wait.
    fn control(&self, _op: &control::ControlOp) -> control::ControlReply {
        control::ControlReply::default()
    }
}

/// The bus, shared by cloning: one implementation plus the namespace rules every publish
/// and history read applies.
#[derive(Clone)]
pub struct Bus {
    inner: Inner,
    namespaces: Arc<Namespaces>,
    pusher_apps: Arc<pusher::Apps>,
}

#[derive(Clone)]
enum Inner {
    Redis(Arc<redis::RedisBus>),
    Sharded(Arc<sharded::ShardedBus>),
    Memory(Arc<memory::MemoryBus>),
}

/// Runs `$body` with `$b` bound to whichever backend the bus is: both answer to
/// [`backend::Backend`], so the body is written once.
macro_rules! on_backend {
    ($bus:expr, $b:ident => $body:expr) => {
        match &$bus.inner {
            Inner::Redis($b) => $body,
            Inner::Sharded($b) => $body,
            Inner::Memory($b) => $body,
        }
    };
}

impl Bus {
    /// The in-memory bus of the single-process mode, with the default limits.
    pub fn memory() -> Self {
        Self::memory_with(MemoryBusConfig::default())
    }

    /// The in-memory bus of the single-process mode, bounded by `limits`.
    pub fn memory_with(limits: MemoryBusConfig) -> Self {
        let bus = Arc::new(memory::MemoryBus::new(limits));
        metrics::watch_memory_bus(&bus);
        Self {
            inner: Inner::Memory(bus),
            namespaces: Arc::default(),
            pusher_apps: Arc::default(),
        }
    }

    /// A Redis bus: on one Redis; with channels sharded over several when `redis_url`
    /// lists them separated by commas (see [`sharded`]); on a Redis Cluster when it is a
    /// `redis+cluster://` URL of seed nodes (see [`redis::cluster`]). Connects lazily: this fails only on
    /// a malformed configuration, so a service can start while Redis is down and report it
    /// through readiness.
    pub fn redis(config: &BusConfig) -> Result<Self, BusError> {
        let urls = sharded::urls(&config.redis_url);
        let inner = match urls.as_slice() {
            // A cluster's seed list is one URL, commas and all.
            _ if redis::cluster::seeds(&config.redis_url).is_some() => {
                Inner::Redis(Arc::new(redis::RedisBus::new(config)?))
            }
            [] => return Err(BusError::Config("no Redis URL".into())),
            [one] => Inner::Redis(Arc::new(redis::RedisBus::new(&BusConfig {
                redis_url: (*one).to_owned(),
                ..config.clone()
            })?)),
            several => Inner::Sharded(Arc::new(sharded::ShardedBus::new(config, several)?)),
        };
        Ok(Self {
            inner,
            namespaces: Arc::default(),
            pusher_apps: Arc::default(),
        })
    }

    /// The Redis bus a service's flags describe: `config`, with the namespace rules of the
    /// file `namespaces` names (or the built-in ones) and the Pusher apps `pusher` names.
    pub fn configured(
        config: &BusConfig,
        namespaces: &namespaces::NamespacesConfig,
        pusher: &pusher::PusherConfig,
    ) -> Result<Self, BusError> {
        Self::redis(config)?.with_config(namespaces, pusher)
    }

    /// This bus with the namespace rules and Pusher apps the configuration names.
    pub fn with_config(
        self,
        namespaces: &namespaces::NamespacesConfig,
        pusher: &pusher::PusherConfig,
    ) -> Result<Self, BusError> {
        let rules = namespaces
            .load()
            .map_err(|e| BusError::Config(format!("loading the namespaces file: {e}")))?;
        let apps = pusher::Apps::load(pusher)
            .map_err(|e| BusError::Config(format!("loading the Pusher apps: {e}")))?;
        Ok(self.with_namespaces(rules).with_pusher_apps(apps))
    }

    /// The same bus serving these Pusher apps: each app's namespace is added to the rules
    /// (unless they name it already). Call after [`Bus::with_namespaces`].
    pub fn with_pusher_apps(mut self, apps: pusher::Apps) -> Self {
        let mut rules = (*self.namespaces).clone();
        apps.add_namespaces(&mut rules);
        self.namespaces = Arc::new(rules);
        self.pusher_apps = Arc::new(apps);
        match &self.inner {
            Inner::Redis(b) => b.set_apps(self.pusher_apps.clone()),
            Inner::Sharded(b) => b.set_apps(&self.pusher_apps),
            Inner::Memory(b) => b.set_apps(self.pusher_apps.clone()),
        }
        self
    }

    /// The Pusher apps this deployment serves (empty: the Pusher protocol and API are off).
    pub fn pusher_apps(&self) -> &Arc<pusher::Apps> {
        &self.pusher_apps
    }

    /// Queues a webhook event of `app` for delivery to its `webhook_url`, once in the
    /// cluster. Returns at once; does nothing when the app does not want this kind.
    pub fn pusher_webhook(&self, app: &pusher::App, event: pusher::WebhookEvent) {
        if !app.wants_webhook(event.kind()) {
            return;
        }
        let redis = match &self.inner {
            Inner::Memory(b) => return b.queue_webhook(&app.id, event),
            Inner::Redis(b) => b,
            Inner::Sharded(b) => b.home(),
        };
        let Ok(json) = serde_json::to_string(&event) else {
            return;
        };
        let (bus, app) = (redis.clone(), app.id.clone());
        // Client events are rate-limited per connection, which bounds these tasks.
        tokio::spawn(async move {
            if let Err(e) = bus.queue_webhook(&app, &json).await {
                metrics::webhook_dropped();
                tracing::warn!(app, error = %e, "queueing a webhook event failed");
            }
        });
    }

    /// Up to `count` webhook events for the dispatcher `consumer` (one broker-api), waiting
    /// at most `block` for some. Each event is handed to one dispatcher in the cluster; end
    /// them with [`Bus::ack_webhooks`] once delivered (or given up on).
    pub async fn read_webhooks(
        &self,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<pusher::WebhookRecord>, BusError> {
        match &self.inner {
            Inner::Memory(b) => Ok(b.read_webhooks(count, block).await),
            Inner::Redis(b) => b.read_webhooks(consumer, count, block).await,
            Inner::Sharded(b) => b.read_webhooks(consumer, count, block).await,
        }
    }

    /// Ends webhook events read with [`Bus::read_webhooks`].
    pub async fn ack_webhooks(&self, ids: &[String]) -> Result<(), BusError> {
        match &self.inner {
            Inner::Memory(_) => Ok(()),
            Inner::Redis(b) => b.ack_webhooks(ids).await,
            Inner::Sharded(b) => b.ack_webhooks(ids).await,
        }
    }

    /// The same bus applying `namespaces` (history size and TTLs per namespace) instead of
    /// the built-in defaults.
    pub fn with_namespaces(mut self, namespaces: Namespaces) -> Self {
        self.namespaces = Arc::new(namespaces);
        self
    }

    /// The namespace rules this bus applies.
    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// Publishes one message. Returns only after the bus accepted it and assigned its offset.
    pub async fn publish(&self, msg: Publish) -> Result<Published, BusError> {
        check_publish(&msg)?;
        let rules = self.namespaces.rules(&msg.channel);
        on_backend!(self, b => Backend::publish(&**b, msg, rules).await)
    }

    /// Publishes many messages in one pipeline (one round trip to Redis however many there
    /// are); one result per message, in order. A bad message fails only its own result.
    /// Messages to one channel keep their order.
    pub async fn publish_many(&self, msgs: Vec<Publish>) -> Vec<Result<Published, BusError>> {
        let checked: Vec<Result<Publish, BusError>> = msgs
            .into_iter()
            .map(|msg| check_publish(&msg).map(|()| msg))
            .collect();
        on_backend!(self, b => Backend::publish_many(&**b, checked, &self.namespaces).await)
    }

    /// Publishes one message to many channels; one result per channel, in order. A
    /// broadcast is a batch of publishes of the same data, checked and sent like one.
    pub async fn broadcast(
        &self,
        channels: &[String],
        data: Bytes,
    ) -> Vec<Result<Published, BusError>> {
        let msgs = channels
            .iter()
            .map(|channel| Publish {
                channel: channel.clone(),
                data: data.clone(),
                ..Publish::default()
            })
            .collect();
        self.publish_many(msgs).await
    }

    /// A channel's current position.
    pub async fn position(&self, channel: &str) -> Result<Position, BusError> {
        chorus_protocol::channel::validate(channel)?;
        on_backend!(self, b => Backend::position(&**b, channel).await)
    }

    /// Part of a channel's history, with its position, read in one atomic step.
    pub async fn history(&self, channel: &str, query: &HistoryQuery) -> Result<History, BusError> {
        chorus_protocol::channel::validate(channel)?;
        on_backend!(self, b => Backend::history(&**b, channel, query).await)
    }

    /// What was published on `channel` after `since`, if history still holds all of it: as
    /// much as `max_bytes` allows, with [`Recovery::more`] when the rest needs another read.
    pub async fn recover(
        &self,
        channel: &str,
        since: &Position,
        max_bytes: usize,
    ) -> Result<Recovery, BusError> {
        let query = HistoryQuery {
            since: Some(since.offset),
            limit: 0,
            reverse: false,
            max_bytes,
        };
        let history = self.history(channel, &query).await?;
        Ok(Recovery::judge(since, history))
    }

    /// Who is subscribed to `channel`, across every gateway: one entry per connection, at
    /// most the namespace's `presence_max_clients`. Refused for a channel whose namespace
    /// keeps no presence.
    pub async fn presence(&self, channel: &str) -> Result<Vec<Member>, BusError> {
        self.presence_rules(channel)?;
        on_backend!(self, b => Backend::presence(&**b, channel).await)
    }

    /// How many connections and distinct users are subscribed to `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BusError> {
        Ok(PresenceStats::of(&self.presence(channel).await?))
    }

    /// The rules of a channel that keeps presence, or why it does not.
    pub fn presence_rules(&self, channel: &str) -> Result<&NamespaceRules, BusError> {
        chorus_protocol::channel::validate(channel)?;
        let rules = self
            .namespaces
            .lookup(channel)
            .map_err(|e| BusError::BadRequest(e.to_string()))?;
        if !rules.presence {
            return Err(BusError::BadRequest(format!(
                "presence is not kept for {channel}: its namespace does not set presence = true"
            )));
        }
        Ok(rules)
    }

    /// Sends `op` to every gateway and collects their answers (within the Redis timeout; a
    /// gateway that does not answer in time is left out, and `reached` says how many got it).
    pub async fn control(
        &self,
        op: &control::ControlOp,
    ) -> Result<control::ControlReplies, BusError> {
        on_backend!(self, b => Backend::control(&**b, op).await)
    }

    /// The live gateway nodes.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, BusError> {
        on_backend!(self, b => Backend::nodes(&**b).await)
    }

    /// Whether the bus can currently publish (Redis reachable).
    pub async fn check(&self) -> Result<(), BusError> {
        on_backend!(self, b => Backend::check(&**b).await)
    }

    /// Attaches a gateway node: registers it and starts delivering wanted channels to `sink`.
    pub fn attach(&self, node: NodeInfo, sink: Arc<dyn BusSink>) -> NodeLink {
        match &self.inner {
            Inner::Redis(b) => NodeLink::Redis(b.attach(node, sink)),
            Inner::Sharded(b) => NodeLink::Sharded(b.attach(node, sink)),
            Inner::Memory(b) => NodeLink::Memory(b.attach(node, sink)),
        }
    }
}

/// What every publish is checked for before it reaches the bus: its channel name and its
/// idempotency key.
fn check_publish(msg: &Publish) -> Result<(), BusError> {
    chorus_protocol::channel::validate(&msg.channel)?;
    if let Some(key) = &msg.idempotency_key {
        check_idempotency_key(key)?;
    }
    Ok(())
}

fn check_idempotency_key(key: &str) -> Result<(), BusError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(BusError::BadRequest(format!(
            "idempotency key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} bytes"
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BusError::BadRequest(
            "idempotency key must be printable ASCII without spaces".into(),
        ));
    }
    Ok(())
}

/// A gateway's attachment to the bus: its channel subscriptions and its registry entry.
///
/// `want`/`unwant` are synchronous and ordered so the hub can call them under its own lock
/// when a channel's first local subscriber arrives or its last one leaves; the bus reconciles
/// its real subscriptions with the wanted set in the background (and again after every
/// reconnect).
pub enum NodeLink {
    Redis(redis::RedisLink),
    Sharded(sharded::ShardedLink),
    Memory(memory::MemoryLink),
}

impl NodeLink {
    /// Starts (or keeps) receiving `channel`. Await the returned [`ChannelReady`] before
    /// telling a client it is subscribed.
    pub fn want(&self, channel: &str) -> ChannelReady {
        match self {
            NodeLink::Redis(l) => l.want(channel),
            NodeLink::Sharded(l) => l.want(channel),
            NodeLink::Memory(l) => l.want(channel),
        }
    }

    /// Stops receiving `channel`.
    pub fn unwant(&self, channel: &str) {
        match self {
            NodeLink::Redis(l) => l.unwant(channel),
            NodeLink::Sharded(l) => l.unwant(channel),
            NodeLink::Memory(l) => l.unwant(channel),
        }
    }

    /// Whether the node's link to the bus is up (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why the node's link to the bus is not up, naming the broken shards when the bus is
    /// sharded; `None` when it is up.
    pub fn not_ready(&self) -> Option<String> {
        match self {
            NodeLink::Redis(l) => l.not_ready(),
            NodeLink::Sharded(l) => {
                let broken = l.broken();
                (!broken.is_empty()).then(|| format!("link down: {}", broken.join(", ")))
            }
            NodeLink::Memory(_) => None,
        }
    }

    /// Records a new client connection in the registry. Never waits.
    pub fn connection_opened(&self, conn: ConnectionInfo) {
        match self {
            NodeLink::Redis(l) => l.connection_opened(conn),
            NodeLink::Sharded(l) => l.connection_opened(conn),
            NodeLink::Memory(l) => l.connection_opened(conn),
        }
    }

    /// Removes a client connection from the registry. Never waits.
    pub fn connection_closed(&self, client: &str) {
        match self {
            NodeLink::Redis(l) => l.connection_closed(client),
            NodeLink::Sharded(l) => l.connection_closed(client),
            NodeLink::Memory(l) => l.connection_closed(client),
        }
    }

    /// Adds `member` to `channel`'s presence (announcing the join when the namespace
    /// announces joins and leaves). Returns once every gateway and broker-api can see it;
    /// `LimitExceeded` when the channel holds its most entries.
    pub async fn join(
        &self,
        channel: &str,
        member: Member,
        rules: &NamespaceRules,
    ) -> Result<(), BusError> {
        let (announce, max) = (rules.join_leave, rules.presence_max_clients);
        match self {
            NodeLink::Redis(l) => l.join(channel, member, announce, max).await,
            NodeLink::Sharded(l) => l.join(channel, member, announce, max).await,
            NodeLink::Memory(l) => l.join(channel, member, announce, max),
        }
    }

    /// Removes a connection from `channel`'s presence (announcing the leave where joins and
    /// leaves are announced). Returns once it is gone for every reader.
    pub async fn leave(&self, channel: &str, client: &str) -> Result<(), BusError> {
        match self {
            NodeLink::Redis(l) => l.leave(channel, client).await,
            NodeLink::Sharded(l) => l.leave(channel, client).await,
            NodeLink::Memory(l) => {
                l.leave(channel, client);
                Ok(())
            }
        }
    }

    /// Removes a closed connection from `channel`'s presence in the background. Never waits.
    pub fn left(&self, channel: &str, client: &str) {
        match self {
            NodeLink::Redis(l) => l.left(channel, client),
            NodeLink::Sharded(l) => l.left(channel, client),
            NodeLink::Memory(l) => l.leave(channel, client),
        }
    }

    /// Detaches: stops the background tasks and removes the node from the registry.
    pub async fn detach(&self) {
        match self {
            NodeLink::Redis(l) => l.detach().await,
            NodeLink::Sharded(l) => l.detach().await,
            NodeLink::Memory(l) => l.detach(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// A fresh random epoch: identifies one life of a channel's offset sequence.
pub fn new_epoch() -> String {
    let bytes: [u8; 6] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(offset: u64) -> Envelope {
        Envelope {
            offset,
            epoch: "e".into(),
            ..Envelope::default()
        }
    }

    fn judge_page(since: (u64, &str), offsets: &[u64], top: u64, more: bool) -> Recovery {
        let history = History {
            publications: offsets.iter().map(|o| env(*o)).collect(),
            position: Position {
                offset: top,
                epoch: "e".into(),
            },
            more,
        };
        let since = Position {
            offset: since.0,
            epoch: since.1.into(),
        };
        Recovery::judge(&since, history)
    }

    fn judge(since: (u64, &str), offsets: &[u64], top: u64) -> bool {
        judge_page(since, offsets, top, false).recovered
    }

    #[test]
    fn a_page_cut_at_its_byte_bound_is_recovered_so_far_and_says_more() {
        let first = judge_page((2, "e"), &[3, 4], 9, true);
        assert!(first.recovered && first.more);
        let last = judge_page((4, "e"), &[5, 6, 7, 8, 9], 9, false);
        assert!(last.recovered && !last.more);
        let cut_at_the_top = judge_page((4, "e"), &[5, 6, 7, 8, 9], 9, true);
        assert!(cut_at_the_top.recovered && !cut_at_the_top.more);
        assert!(
            !judge_page((2, "e"), &[4, 5], 9, true).recovered,
            "a page must still start right after the position"
        );
        assert!(
            !judge_page((2, "other"), &[3, 4], 9, true).recovered,
            "and be of its epoch"
        );
        assert!(
            !judge_page((2, "e"), &[], 9, true).recovered,
            "an empty page recovers nothing"
        );
    }

    #[test]
    fn recovery_needs_the_same_epoch_and_every_offset_up_to_the_top() {
        assert!(judge((2, "e"), &[3, 4], 4));
        assert!(judge((4, "e"), &[], 4), "nothing missed");
        assert!(
            judge((0, ""), &[1, 2], 2),
            "a fresh position matches any epoch"
        );
        assert!(!judge((2, "other"), &[3, 4], 4), "another epoch");
        assert!(!judge((1, "e"), &[3, 4], 4), "history starts too late");
        assert!(!judge((2, "e"), &[3], 4), "history ends too early");
        assert!(!judge((2, "e"), &[3, 5], 5), "a hole");
        assert!(!judge((5, "e"), &[], 4), "a position past the top");
    }
}
