//! The in-memory bus of the single-process mode: offsets, epochs, delivery and the node
//! registry kept in this process, behind the same contract as the Redis bus.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message;

use crate::namespaces::NamespaceRules;
use crate::wanted::Wanted;
use crate::{
    BusSink, ChannelReady, ConnectionInfo, Envelope, History, HistoryQuery, NodeInfo, Position,
    Publish, Published, new_epoch, now_ms,
};

/// How long idempotency keys are remembered in the single-process mode.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);
/// Most idempotency keys remembered at once; the oldest are forgotten first.
const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

#[derive(Default)]
pub struct MemoryBus {
    /// Per-channel position and history. Delivery happens under this lock so that every node
    /// sees a channel's publications in offset order.
    channels: Mutex<Channels>,
    nodes: Mutex<Vec<Arc<NodeState>>>,
}

#[derive(Default)]
struct Channels {
    by_name: HashMap<String, ChannelState>,
    /// (channel, key) → first publish, oldest first (all share one window, so insertion order
    /// is expiry order).
    idempotency: HashMap<(String, String), Published>,
    idempotency_order: VecDeque<((String, String), Instant)>,
}

struct ChannelState {
    position: Position,
    history: VecDeque<Envelope>,
    last_publish: Instant,
}

impl Channels {
    /// The channel's state, with what its TTLs have expired since its last publish removed.
    fn live(&mut self, channel: &str, rules: &NamespaceRules) -> Option<&mut ChannelState> {
        let idle = self.by_name.get(channel)?.last_publish.elapsed();
        if idle >= rules.history_meta_ttl {
            self.by_name.remove(channel);
            return None;
        }
        let state = self.by_name.get_mut(channel)?;
        if idle >= rules.history_ttl {
            state.history.clear();
        }
        Some(state)
    }

    fn forget_expired_keys(&mut self) {
        while let Some((key, at)) = self.idempotency_order.front() {
            if at.elapsed() < IDEMPOTENCY_WINDOW && self.idempotency.len() < MAX_IDEMPOTENCY_KEYS {
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

impl MemoryBus {
    pub(crate) fn publish(&self, msg: Publish, rules: &NamespaceRules) -> Published {
        let mut channels = self.channels.lock();
        channels.forget_expired_keys();
        let idem = msg
            .idempotency_key
            .as_ref()
            .map(|key| (msg.channel.clone(), key.clone()));
        if let Some(first) = idem.as_ref().and_then(|k| channels.idempotency.get(k)) {
            return Published {
                duplicate: true,
                ..first.clone()
            };
        }
        if channels.live(&msg.channel, rules).is_none() {
            channels.by_name.insert(
                msg.channel.clone(),
                ChannelState {
                    position: Position {
                        offset: 0,
                        epoch: new_epoch(),
                    },
                    history: VecDeque::new(),
                    last_publish: Instant::now(),
                },
            );
        }
        let Some(state) = channels.by_name.get_mut(&msg.channel) else {
            unreachable!("inserted above");
        };
        state.position.offset += 1;
        state.last_publish = Instant::now();
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
        };
        if rules.history_size > 0 {
            state.history.push_back(envelope.clone());
            while state.history.len() > rules.history_size as usize {
                state.history.pop_front();
            }
        }
        if let Some(key) = idem {
            channels.idempotency.insert(key.clone(), published.clone());
            channels.idempotency_order.push_back((key, Instant::now()));
        }
        for node in self.nodes.lock().iter() {
            if node.wanted.contains(&envelope.channel) {
                node.sink.publication(envelope.clone());
            }
        }
        published
    }

    pub(crate) fn position(&self, channel: &str, rules: &NamespaceRules) -> Position {
        self.channels
            .lock()
            .live(channel, rules)
            .map(|s| s.position.clone())
            .unwrap_or_default()
    }

    pub(crate) fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        rules: &NamespaceRules,
    ) -> History {
        let mut channels = self.channels.lock();
        let Some(state) = channels.live(channel, rules) else {
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
        self.node.wanted.want(channel, true)
    }

    pub(crate) fn unwant(&self, channel: &str) {
        self.node.wanted.unwant(channel);
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
}
