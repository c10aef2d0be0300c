//! The in-memory bus of the single-process mode: offsets, epochs, delivery and the node
//! registry kept in this process, behind the same contract as the Redis bus.
//!
//! Redis forgets a channel by itself when its keys expire; here nothing would, so the bus
//! bounds its own memory:
//! - A channel is forgotten once its position expired (the namespace's `history_meta_ttl`
//!   since its last publish) and no node wants it; its history is emptied at `history_ttl`.
//!   A channel that a node subscribes to keeps its position (and so its epoch) for as long as
//!   it is subscribed, so its subscribers never see it start over under them.
//! - At most `max_channels` channels: past it, a publish to a new channel is refused with
//!   [`BusError::LimitExceeded`], while channels already held keep working.
//! - Idempotency keys are forgotten only once older than their window. At most
//!   `max_idempotency_keys` are remembered: past it, a publish with a new key is refused
//!   rather than forgetting a live key (which could publish a retry twice).
//!
//! Expired channels are removed by a sweep amortised into publish ([`SWEEP_EVERY`]) rather
//! than by a background task: only a publish adds a channel, so sweeping on publish bounds
//! the map just as well, and the bus needs no runtime to be built in, no task to own, stop or
//! leak when the last clone of the bus is dropped. A channel touched between sweeps is also
//! expired on the spot, so no reader ever sees a position that should be gone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message;

use crate::config::MemoryBusConfig;
use crate::control::{ControlOp, ControlReplies, ControlReply};
use crate::namespaces::NamespaceRules;
use crate::presence::{Member, announcement};
use crate::wanted::Wanted;
use crate::{
    BusError, BusSink, ChannelReady, ConnectionInfo, Envelope, History, HistoryQuery, NodeInfo,
    Position, Publish, Published, new_epoch, now_ms,
};

/// How often a publish sweeps expired channels out. A sweep walks every channel under the
/// bus's lock (about a millisecond per 100,000 channels), so it runs rarely; expiry itself is
/// exact, since a channel touched between sweeps is expired when touched.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// At the channel cap, a publish to a new channel sweeps first, so that channels expired since
/// the last sweep make room — but at most this often, so that a flood of refused publishes
/// does not walk every channel each time.
const SWEEP_AT_CAP_EVERY: Duration = Duration::from_secs(1);

use crate::pusher::{WEBHOOK_QUEUE_MAX, WebhookEvent, WebhookRecord};

/// One channel's presence: client id → (member, whether its joins and leaves are announced).
type ChannelPresence = HashMap<String, (Member, bool)>;

pub struct MemoryBus {
    /// Per-channel position and history. Delivery happens under this lock so that every node
    /// sees a channel's publications in offset order. Lock order: `channels`, then `nodes`.
    channels: Mutex<Channels>,
    nodes: Mutex<Vec<Arc<NodeState>>>,
    /// Presence entries by channel, then client. Announcements are delivered under this lock
    /// (then `nodes`), so they reach every node in the order the entries changed.
    presence: Mutex<HashMap<String, ChannelPresence>>,
    limits: MemoryBusConfig,
    /// The Pusher apps, set once the bus is configured: which channels queue webhooks.
    apps: std::sync::OnceLock<Arc<crate::pusher::Apps>>,
    /// Webhook events waiting for broker-api's dispatcher, at most `WEBHOOK_QUEUE_MAX`.
    webhooks: Mutex<VecDeque<WebhookRecord>>,
    webhooks_queued: tokio::sync::Notify,
    webhook_ids: std::sync::atomic::AtomicU64,
    /// Channels of apps that want occupancy webhooks, with how many nodes want each. A leaf
    /// lock (taken under a hub's lock, never the other way round).
    occupancy: Mutex<HashMap<String, usize>>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new(MemoryBusConfig::default())
    }
}

#[derive(Default)]
struct Channels {
    by_name: HashMap<String, ChannelState>,
    /// (channel, key) → first publish, oldest first (all share one window, so insertion order
    /// is expiry order).
    idempotency: HashMap<(String, String), Published>,
    idempotency_order: VecDeque<((String, String), Instant)>,
    last_sweep: Option<Instant>,
}

struct ChannelState {
    position: Position,
    history: VecDeque<Envelope>,
    last_publish: Instant,
    /// The channel's namespace TTLs, kept with it so that a sweep needs no namespace rules.
    history_ttl: Duration,
    meta_ttl: Duration,
}

impl ChannelState {
    /// Applies the TTLs at `now`: false when the whole channel has expired (its position too,
    /// and no node wants it); its history is emptied once `history_ttl` passed. Whether a node
    /// wants it is asked only of a channel whose position expired, not on every publish.
    fn keep(&mut self, now: Instant, wanted: impl FnOnce() -> bool) -> bool {
        let idle = now.saturating_duration_since(self.last_publish);
        if idle >= self.meta_ttl && !wanted() {
            return false;
        }
        if idle >= self.history_ttl && !self.history.is_empty() {
            self.history = VecDeque::new();
        }
        true
    }
}

impl Channels {
    /// The channel's state, with what its TTLs have expired since its last publish removed.
    fn live(
        &mut self,
        channel: &str,
        now: Instant,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<&mut ChannelState> {
        let state = self.by_name.get_mut(channel)?;
        if !state.keep(now, || wanted(channel)) {
            self.by_name.remove(channel);
            return None;
        }
        self.by_name.get_mut(channel)
    }

    /// Removes every expired channel and idempotency key; returns how many channels went.
    fn sweep(&mut self, now: Instant, window: Duration, wanted: impl Fn(&str) -> bool) -> usize {
        let before = self.by_name.len();
        self.by_name
            .retain(|name, state| state.keep(now, || wanted(name)));
        self.forget_expired_keys(now, window);
        self.last_sweep = Some(now);
        let removed = before - self.by_name.len();
        if removed > 0 {
            tracing::debug!(
                removed,
                held = self.by_name.len(),
                "expired channels swept from the in-memory bus"
            );
        }
        removed
    }

    /// Whether the last sweep is at least `every` old (or there was none).
    fn sweep_due(&self, now: Instant, every: Duration) -> bool {
        self.last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= every)
    }

    /// Forgets the keys older than the window — and only those: a younger key still guards
    /// its publish against a retry.
    fn forget_expired_keys(&mut self, now: Instant, window: Duration) {
        while let Some((key, at)) = self.idempotency_order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            self.idempotency.remove(key);
            self.idempotency_order.pop_front();
        }
    }
}

struct NodeState {
    info: NodeInfo,
    sink: Arc<dyn BusSink>,
    wanted: Wanted,
    connections: Mutex<HashMap<String, ConnectionInfo>>,
}

/// Whether any node wants `channel` (has a subscriber on it).
fn wanted_by(nodes: &[Arc<NodeState>], channel: &str) -> bool {
    nodes.iter().any(|n| n.wanted.contains(channel))
}

impl MemoryBus {
    pub(crate) fn new(limits: MemoryBusConfig) -> Self {
        Self {
            channels: Mutex::default(),
            nodes: Mutex::default(),
            presence: Mutex::default(),
            limits,
            apps: std::sync::OnceLock::new(),
            webhooks: Mutex::default(),
            webhooks_queued: tokio::sync::Notify::new(),
            webhook_ids: std::sync::atomic::AtomicU64::new(0),
            occupancy: Mutex::default(),
        }
    }

    pub(crate) fn set_apps(&self, apps: Arc<crate::pusher::Apps>) {
        let _ = self.apps.set(apps);
    }

    /// Queues an event of `kind` on `channel` when its app wants it.
    fn webhook_on(&self, channel: &str, kind: &str, event: impl FnOnce(String) -> WebhookEvent) {
        let Some((app, name)) = self
            .apps
            .get()
            .and_then(|a| a.webhook_target(channel, kind))
        else {
            return;
        };
        self.queue_webhook(&app.id, event(name));
    }

    /// A node started (`true`) or stopped wanting `channel`: the first node in queues
    /// `channel_occupied`, the last one out `channel_vacated`, for apps that want them.
    fn occupancy_changed(&self, channel: &str, wanted: bool) {
        let wants = self
            .apps
            .get()
            .and_then(|a| a.of_channel(channel))
            .is_some_and(|app| {
                app.wants_webhook("channel_occupied") || app.wants_webhook("channel_vacated")
            });
        if !wants {
            return;
        }
        let mut occupancy = self.occupancy.lock();
        if wanted {
            let nodes = occupancy.entry(channel.to_owned()).or_default();
            *nodes += 1;
            if *nodes == 1 {
                self.webhook_on(channel, "channel_occupied", |channel| {
                    WebhookEvent::ChannelOccupied { channel }
                });
            }
        } else if let Some(nodes) = occupancy.get_mut(channel) {
            *nodes = nodes.saturating_sub(1);
            if *nodes == 0 {
                occupancy.remove(channel);
                self.webhook_on(channel, "channel_vacated", |channel| {
                    WebhookEvent::ChannelVacated { channel }
                });
            }
        }
    }

    pub(crate) fn queue_webhook(&self, app: &str, event: WebhookEvent) {
        let id = self
            .webhook_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut queue = self.webhooks.lock();
        if queue.len() >= WEBHOOK_QUEUE_MAX {
            queue.pop_front();
            crate::metrics::webhook_dropped();
        }
        queue.push_back(WebhookRecord {
            id: id.to_string(),
            app: app.to_owned(),
            event,
        });
        drop(queue);
        self.webhooks_queued.notify_one();
    }

    /// Up to `count` queued events, waiting at most `block` for one. Taking them ends them:
    /// the dispatcher retries a delivery itself.
    pub(crate) async fn read_webhooks(&self, count: usize, block: Duration) -> Vec<WebhookRecord> {
        let take = |queue: &mut VecDeque<WebhookRecord>| -> Vec<WebhookRecord> {
            let n = count.min(queue.len());
            queue.drain(..n).collect()
        };
        let taken = take(&mut self.webhooks.lock());
        if !taken.is_empty() {
            return taken;
        }
        let _ = tokio::time::timeout(block, self.webhooks_queued.notified()).await;
        take(&mut self.webhooks.lock())
    }

    pub(crate) fn publish(
        &self,
        msg: Publish,
        rules: &NamespaceRules,
    ) -> Result<Published, BusError> {
        self.publish_at(msg, rules, Instant::now())
    }

    /// [`MemoryBus::publish`] at the instant `now` (tests pass their own clock).
    fn publish_at(
        &self,
        msg: Publish,
        rules: &NamespaceRules,
        now: Instant,
    ) -> Result<Published, BusError> {
        let mut channels = self.channels.lock();
        let nodes = self.nodes.lock();
        let wanted = |channel: &str| wanted_by(&nodes, channel);
        channels.forget_expired_keys(now, self.limits.idempotency_window);
        let idem = msg
            .idempotency_key
            .as_ref()
            .map(|key| (msg.channel.clone(), key.clone()));
        if let Some(key) = &idem {
            if let Some(first) = channels.idempotency.get(key) {
                return Ok(Published {
                    duplicate: true,
                    ..first.clone()
                });
            }
            if channels.idempotency.len() >= self.limits.max_idempotency_keys {
                crate::metrics::memory_refused("idempotency_keys");
                return Err(BusError::LimitExceeded(format!(
                    "the in-memory bus remembers at most {} idempotency keys, and none is older \
                     than the {:?} idempotency window yet; retry later",
                    self.limits.max_idempotency_keys, self.limits.idempotency_window
                )));
            }
        }
        if channels.sweep_due(now, SWEEP_EVERY) {
            channels.sweep(now, self.limits.idempotency_window, wanted);
        }
        if channels.live(&msg.channel, now, wanted).is_none() {
            if channels.by_name.len() >= self.limits.max_channels
                && channels.sweep_due(now, SWEEP_AT_CAP_EVERY)
            {
                channels.sweep(now, self.limits.idempotency_window, wanted);
            }
            if channels.by_name.len() >= self.limits.max_channels {
                crate::metrics::memory_refused("channels");
                return Err(BusError::LimitExceeded(format!(
                    "the in-memory bus holds at most {} channels; a channel without \
                     subscribers is forgotten once its position expires (history_meta_ttl)",
                    self.limits.max_channels
                )));
            }
            channels.by_name.insert(
                msg.channel.clone(),
                ChannelState {
                    position: Position {
                        offset: 0,
                        epoch: new_epoch(),
                    },
                    history: VecDeque::new(),
                    last_publish: now,
                    history_ttl: rules.history_ttl,
                    meta_ttl: rules.history_meta_ttl,
                },
            );
        }
        let Some(state) = channels.by_name.get_mut(&msg.channel) else {
            unreachable!("inserted above");
        };
        state.position.offset += 1;
        state.last_publish = now;
        let published = Published {
            offset: state.position.offset,
            epoch: state.position.epoch.clone(),
            duplicate: false,
        };
        let envelope = Envelope {
            offset: published.offset,
            epoch: published.epoch.clone(),
            channel: msg.channel,
            data: msg.data,
            published_at_ms: now_ms(),
            exclude_client: msg.exclude_client,
            presence: None,
            trace_parent: String::new(),
            trace_state: String::new(),
        };
        if rules.history_size > 0 {
            state.history.push_back(envelope.clone());
            while state.history.len() > rules.history_size as usize {
                state.history.pop_front();
            }
        }
        if let Some(key) = idem {
            channels.idempotency.insert(key.clone(), published.clone());
            channels.idempotency_order.push_back((key, now));
        }
        for node in nodes.iter() {
            if node.wanted.contains(&envelope.channel) {
                node.sink.publication(envelope.clone());
            }
        }
        Ok(published)
    }

    /// Removes every channel and idempotency key that expired by `now`; returns how many
    /// channels went. Publishes call it every [`SWEEP_EVERY`].
    pub fn sweep(&self, now: Instant) -> usize {
        let mut channels = self.channels.lock();
        let nodes = self.nodes.lock();
        channels.sweep(now, self.limits.idempotency_window, |channel| {
            wanted_by(&nodes, channel)
        })
    }

    /// How many channels and idempotency keys the bus holds (for the metrics).
    pub fn sizes(&self) -> (usize, usize) {
        let channels = self.channels.lock();
        (channels.by_name.len(), channels.idempotency.len())
    }

    pub(crate) fn position(&self, channel: &str) -> Position {
        let mut channels = self.channels.lock();
        let nodes = self.nodes.lock();
        channels
            .live(channel, Instant::now(), |c| wanted_by(&nodes, c))
            .map(|s| s.position.clone())
            .unwrap_or_default()
    }

    pub(crate) fn history(&self, channel: &str, query: &HistoryQuery) -> History {
        let mut channels = self.channels.lock();
        let nodes = self.nodes.lock();
        let Some(state) = channels.live(channel, Instant::now(), |c| wanted_by(&nodes, c)) else {
            return History::default();
        };
        let after = query.since.unwrap_or(0);
        let limit = if query.limit == 0 {
            usize::MAX
        } else {
            query.limit
        };
        let matching = state.history.iter().filter(|e| e.offset > after);
        let in_order: Box<dyn Iterator<Item = &Envelope>> = if query.reverse {
            Box::new(matching.rev())
        } else {
            Box::new(matching)
        };
        // The same bound as the Redis script's: stop before the entry that would pass the
        // byte bound (but keep at least one), and say whether one was left.
        let mut publications = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for envelope in in_order.take(limit) {
            let size = envelope.encoded_len();
            if !publications.is_empty() && bytes + size > query.max_bytes {
                more = true;
                break;
            }
            bytes += size;
            publications.push(envelope.clone());
        }
        History {
            publications,
            position: state.position.clone(),
            more,
        }
    }

    pub(crate) fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .lock()
            .iter()
            .map(|n| NodeInfo {
                connections: n.connections.lock().len() as u64,
                ..n.info.clone()
            })
            .collect()
    }

    pub(crate) fn control(&self, op: &ControlOp) -> ControlReplies {
        let nodes: Vec<Arc<NodeState>> = self.nodes.lock().clone();
        let replies: Vec<ControlReply> = nodes.iter().map(|n| n.sink.control(op)).collect();
        ControlReplies {
            reached: replies.len(),
            replies,
        }
    }

    pub(crate) fn presence(&self, channel: &str) -> Vec<Member> {
        self.presence
            .lock()
            .get(channel)
            .map(|entries| entries.values().map(|(m, _)| m.clone()).collect())
            .unwrap_or_default()
    }

    fn join(
        &self,
        channel: &str,
        member: Member,
        announce: bool,
        max: u32,
    ) -> Result<(), BusError> {
        let mut presence = self.presence.lock();
        let entries = presence.entry(channel.to_owned()).or_default();
        if !entries.contains_key(&member.client) && entries.len() >= max as usize {
            if entries.is_empty() {
                presence.remove(channel);
            }
            return Err(BusError::LimitExceeded(format!(
                "{channel} has its most presence entries ({max})"
            )));
        }
        let first_of_user = !entries.values().any(|(m, _)| m.user == member.user);
        let new = entries
            .insert(member.client.clone(), (member.clone(), announce))
            .is_none();
        if new && announce {
            self.announce(announcement(channel, &member, false));
        }
        if new && first_of_user {
            self.webhook_on(channel, "member_added", |channel| {
                WebhookEvent::MemberAdded {
                    channel,
                    user_id: member.user.clone(),
                }
            });
        }
        Ok(())
    }

    fn leave(&self, channel: &str, client: &str) {
        let mut presence = self.presence.lock();
        let Some(entries) = presence.get_mut(channel) else {
            return;
        };
        let removed = entries.remove(client);
        let user_left = removed
            .as_ref()
            .is_some_and(|(m, _)| !entries.values().any(|(other, _)| other.user == m.user));
        if entries.is_empty() {
            presence.remove(channel);
        }
        if let Some((member, announce)) = removed {
            if announce {
                self.announce(announcement(channel, &member, true));
            }
            if user_left {
                self.webhook_on(channel, "member_removed", |channel| {
                    WebhookEvent::MemberRemoved {
                        channel,
                        user_id: member.user,
                    }
                });
            }
        }
    }

    /// Delivers a join or leave to every node that wants its channel (called under the
    /// presence lock).
    fn announce(&self, envelope: Envelope) {
        for node in self.nodes.lock().iter() {
            if node.wanted.contains(&envelope.channel) {
                node.sink.publication(envelope.clone());
            }
        }
    }

    pub(crate) fn attach(self: &Arc<Self>, info: NodeInfo, sink: Arc<dyn BusSink>) -> MemoryLink {
        let node = Arc::new(NodeState {
            info,
            sink,
            wanted: Wanted::default(),
            connections: Mutex::default(),
        });
        self.nodes.lock().push(node.clone());
        MemoryLink {
            bus: Arc::downgrade(self),
            node,
        }
    }
}

pub struct MemoryLink {
    bus: Weak<MemoryBus>,
    node: Arc<NodeState>,
}

impl MemoryLink {
    pub(crate) fn want(&self, channel: &str) -> ChannelReady {
        // The hub calls this under its lock for the channel, so "new for this node" cannot
        // race with this node's own unwant. No bus-wide lock here: the publish path holds
        // those while it calls into the hub.
        let new = !self.node.wanted.contains(channel);
        let ready = self.node.wanted.want(channel, true);
        if new && let Some(bus) = self.bus.upgrade() {
            bus.occupancy_changed(channel, true);
        }
        ready
    }

    pub(crate) fn unwant(&self, channel: &str) {
        let was = self.node.wanted.contains(channel);
        self.node.wanted.unwant(channel);
        if was && let Some(bus) = self.bus.upgrade() {
            bus.occupancy_changed(channel, false);
        }
    }

    pub(crate) fn connection_opened(&self, conn: ConnectionInfo) {
        self.node
            .connections
            .lock()
            .insert(conn.client.clone(), conn);
    }

    pub(crate) fn connection_closed(&self, client: &str) {
        self.node.connections.lock().remove(client);
    }

    pub(crate) fn join(
        &self,
        channel: &str,
        member: Member,
        announce: bool,
        max: u32,
    ) -> Result<(), BusError> {
        match self.bus.upgrade() {
            Some(bus) => bus.join(channel, member, announce, max),
            None => Err(BusError::Unavailable("the bus is gone".into())),
        }
    }

    pub(crate) fn leave(&self, channel: &str, client: &str) {
        if let Some(bus) = self.bus.upgrade() {
            bus.leave(channel, client);
        }
    }

    pub(crate) fn detach(&self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.nodes.lock().retain(|n| !Arc::ptr_eq(n, &self.node));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bus;
    use crate::config::MemoryBusConfig;
    use bytes::Bytes;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Envelope>>);
    impl BusSink for Collect {
        fn publication(&self, envelope: Envelope) {
            self.0.lock().push(envelope);
        }
    }

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: String::new(),
            connections: 0,
            started_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn presence_is_shared_by_every_node_and_joins_and_leaves_are_announced_once() {
        let bus = Bus::memory();
        let sink_a = Arc::new(Collect::default());
        let sink_b = Arc::new(Collect::default());
        let a = bus.attach(node("a"), sink_a.clone());
        let b = bus.attach(node("b"), sink_b.clone());
        drop(a.want("chat:r"));
        drop(b.want("chat:r"));
        let rules = NamespaceRules {
            presence: true,
            join_leave: true,
            presence_max_clients: 2,
            ..NamespaceRules::default()
        };
        let member = |client: &str| Member {
            client: client.into(),
            user: "u".into(),
            info: Bytes::new(),
        };
        a.join("chat:r", member("c1"), &rules).await.unwrap();
        b.join("chat:r", member("c2"), &rules).await.unwrap();
        a.join("chat:r", member("c1"), &rules).await.unwrap();
        assert!(matches!(
            b.join("chat:r", member("c3"), &rules).await,
            Err(BusError::LimitExceeded(_))
        ));
        assert_eq!(bus.presence_stats("chat:r").await.unwrap().clients, 2);
        a.left("chat:r", "c1");
        b.leave("chat:r", "c1").await.unwrap();
        for sink in [&sink_a, &sink_b] {
            let events: Vec<(bool, String)> = sink
                .0
                .lock()
                .iter()
                .map(|e| {
                    let p = e.presence.as_ref().unwrap();
                    (p.leave, p.client.clone())
                })
                .collect();
            assert_eq!(
                events,
                [
                    (false, "c1".to_owned()),
                    (false, "c2".to_owned()),
                    (true, "c1".to_owned())
                ],
                "one join per new entry, one leave however often it is removed"
            );
        }
        let quiet = NamespaceRules {
            join_leave: false,
            ..rules
        };
        a.join("chat:r", member("c4"), &quiet).await.unwrap();
        assert_eq!(sink_a.0.lock().len(), 3, "not announced");
        assert_eq!(bus.presence("chat:r").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn offsets_are_consecutive_and_only_wanted_channels_are_delivered() {
        let bus = Bus::memory();
        let sink = Arc::new(Collect::default());
        let link = bus.attach(node("n1"), sink.clone());
        link.want("a")
            .wait(std::time::Duration::from_secs(1))
            .await
            .unwrap();
        let publish = |ch: &str| Publish {
            channel: ch.into(),
            data: Bytes::from_static(b"1"),
            ..Publish::default()
        };
        let first = bus.publish(publish("a")).await.unwrap();
        let second = bus.publish(publish("a")).await.unwrap();
        bus.publish(publish("b")).await.unwrap();
        assert_eq!((first.offset, second.offset), (1, 2));
        assert_eq!(first.epoch, second.epoch);
        let got: Vec<_> = sink
            .0
            .lock()
            .iter()
            .map(|e| (e.channel.clone(), e.offset))
            .collect();
        assert_eq!(got, vec![("a".into(), 1), ("a".into(), 2)]);
        link.unwant("a");
        bus.publish(publish("a")).await.unwrap();
        assert_eq!(sink.0.lock().len(), 2);
        assert!(bus.publish(publish("bad{name}")).await.is_err());
    }

    #[tokio::test]
    async fn registry_counts_connections_and_forgets_detached_nodes() {
        let bus = Bus::memory();
        let link = bus.attach(node("n1"), Arc::new(Collect::default()));
        link.connection_opened(ConnectionInfo {
            client: "c1".into(),
            user: String::new(),
            connected_at_ms: 0,
        });
        assert_eq!(bus.nodes().await.unwrap()[0].connections, 1);
        link.connection_closed("c1");
        assert_eq!(bus.nodes().await.unwrap()[0].connections, 0);
        link.detach().await;
        assert!(bus.nodes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn history_is_trimmed_to_its_size_and_keys_make_publishes_idempotent() {
        let rules = crate::NamespaceRules {
            history_size: 2,
            ..crate::NamespaceRules::default()
        };
        let bus = Bus::memory().with_namespaces(crate::Namespaces {
            default: rules,
            ..crate::Namespaces::default()
        });
        let msg = |key: Option<&str>| Publish {
            channel: "m".into(),
            data: Bytes::from_static(b"1"),
            idempotency_key: key.map(Into::into),
            ..Publish::default()
        };
        let first = bus.publish(msg(Some("k"))).await.unwrap();
        let retry = bus.publish(msg(Some("k"))).await.unwrap();
        assert_eq!((retry.offset, retry.duplicate), (first.offset, true));
        for _ in 0..3 {
            bus.publish(msg(None)).await.unwrap();
        }
        let history = bus
            .history("m", &crate::HistoryQuery::default())
            .await
            .unwrap();
        let offsets: Vec<u64> = history.publications.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, [3, 4]);
        let since = |offset| Position {
            offset,
            epoch: first.epoch.clone(),
        };
        assert!(
            bus.recover("m", &since(2), 1 << 20)
                .await
                .unwrap()
                .recovered
        );
        assert!(
            !bus.recover("m", &since(1), 1 << 20)
                .await
                .unwrap()
                .recovered
        );
    }

    fn rules(history_ttl: u64, meta_ttl: u64) -> NamespaceRules {
        NamespaceRules {
            history_ttl: Duration::from_secs(history_ttl),
            history_meta_ttl: Duration::from_secs(meta_ttl),
            ..NamespaceRules::default()
        }
    }

    fn msg(channel: &str, key: Option<&str>) -> Publish {
        Publish {
            channel: channel.into(),
            data: Bytes::from_static(b"1"),
            idempotency_key: key.map(Into::into),
            ..Publish::default()
        }
    }

    fn limits(max_channels: usize, max_idempotency_keys: usize) -> MemoryBusConfig {
        MemoryBusConfig {
            max_channels,
            max_idempotency_keys,
            idempotency_window: Duration::from_secs(60),
        }
    }

    fn held(bus: &MemoryBus) -> Vec<String> {
        let mut names: Vec<String> = bus.channels.lock().by_name.keys().cloned().collect();
        names.sort();
        names
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn sweep_forgets_idle_channels_and_keeps_subscribed_and_young_ones() {
        let bus = Arc::new(MemoryBus::new(MemoryBusConfig::default()));
        let rules = rules(5, 60);
        let t0 = Instant::now();
        let link = bus.attach(node("n1"), Arc::new(Collect::default()));
        drop(link.want("subscribed"));
        for channel in ["idle", "subscribed"] {
            bus.publish_at(msg(channel, None), &rules, t0).unwrap();
        }
        bus.publish_at(msg("young", None), &rules, t0 + secs(58))
            .unwrap();

        assert_eq!(bus.sweep(t0 + secs(59)), 0, "no position expired yet");
        assert_eq!(bus.sweep(t0 + secs(61)), 1);
        assert_eq!(held(&bus), ["subscribed", "young"]);
        {
            let channels = bus.channels.lock();
            let subscribed = &channels.by_name["subscribed"];
            assert_eq!(
                subscribed.position.offset, 1,
                "a subscribed channel keeps its position"
            );
            assert!(subscribed.history.is_empty(), "but its history expired");
            assert_eq!(channels.by_name["young"].history.len(), 1);
        }

        link.unwant("subscribed");
        assert_eq!(bus.sweep(t0 + secs(61)), 1, "unsubscribed, it expires");
        assert_eq!(held(&bus), ["young"]);
        assert_eq!(bus.sweep(t0 + secs(118)), 1);
        assert!(held(&bus).is_empty());
        assert_eq!(bus.sizes(), (0, 0));
    }

    #[test]
    fn publishing_sweeps_expired_channels_every_sweep_interval() {
        let bus = MemoryBus::new(MemoryBusConfig::default());
        let rules = rules(5, 60);
        let t0 = Instant::now();
        for i in 0..100 {
            bus.publish_at(msg(&format!("chat:{i}"), None), &rules, t0)
                .unwrap();
        }
        bus.publish_at(msg("chat:late", None), &rules, t0 + secs(61))
            .unwrap();
        assert_eq!(held(&bus), ["chat:late"], "random channels do not pile up");
    }

    #[test]
    fn past_the_channel_cap_a_new_channel_is_refused_and_held_ones_still_publish() {
        let bus = MemoryBus::new(limits(2, 10));
        let rules = rules(5, 60);
        let t0 = Instant::now();
        bus.publish_at(msg("a", None), &rules, t0).unwrap();
        bus.publish_at(msg("b", None), &rules, t0).unwrap();
        let refused = bus.publish_at(msg("c", None), &rules, t0 + secs(1));
        match refused {
            Err(BusError::LimitExceeded(message)) => {
                assert!(message.contains("at most 2 channels"), "{message}")
            }
            other => panic!("expected LimitExceeded, got {other:?}"),
        }
        assert_eq!(
            held(&bus),
            ["a", "b"],
            "nothing of the refused publish is kept"
        );
        let again = bus
            .publish_at(msg("a", None), &rules, t0 + secs(2))
            .unwrap();
        assert_eq!(again.offset, 2, "a channel the bus holds keeps working");

        // Once b's position expired, the sweep at the cap makes room for a new channel.
        let later = t0 + secs(61);
        assert_eq!(
            bus.publish_at(msg("c", None), &rules, later)
                .unwrap()
                .offset,
            1
        );
        assert_eq!(held(&bus), ["a", "c"]);
    }

    #[test]
    fn idempotency_never_forgets_a_key_younger_than_its_window() {
        let bus = MemoryBus::new(limits(10, 3));
        let rules = NamespaceRules::default();
        let t0 = Instant::now();
        for (i, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
            bus.publish_at(msg("m", Some(key)), &rules, t0 + secs(i as u64))
                .unwrap();
        }
        // The table is full of live keys: a new key is refused rather than one forgotten...
        let refused = bus.publish_at(msg("m", Some("k4")), &rules, t0 + secs(3));
        assert!(
            matches!(refused, Err(BusError::LimitExceeded(_))),
            "{refused:?}"
        );
        // ...so a retry of the oldest key still publishes nothing.
        let retry = bus
            .publish_at(msg("m", Some("k1")), &rules, t0 + secs(4))
            .unwrap();
        assert_eq!((retry.offset, retry.duplicate), (1, true));
        // Publishes without a key are not held back by the key table.
        let plain = bus
            .publish_at(msg("m", None), &rules, t0 + secs(4))
            .unwrap();
        assert_eq!(plain.offset, 4);

        // Past k1's window (and only k1's) there is room again.
        let later = t0 + secs(60);
        let k4 = bus.publish_at(msg("m", Some("k4")), &rules, later).unwrap();
        assert_eq!((k4.offset, k4.duplicate), (5, false));
        let k2 = bus.publish_at(msg("m", Some("k2")), &rules, later).unwrap();
        assert_eq!((k2.offset, k2.duplicate), (2, true), "k2 is 59 s old");
        assert_eq!(bus.sizes().1, 3);
    }
}
