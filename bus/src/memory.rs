//! The in-memory bus of the single-process mode: offsets, epochs, delivery and the node
//! registry kept in this process, behind the same contract as the Redis bus.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::wanted::Wanted;
use crate::{
    BusSink, ChannelReady, ConnectionInfo, Envelope, NodeInfo, Position, Publish, Published,
    new_epoch, now_ms,
};

#[derive(Default)]
pub struct MemoryBus {
    /// Per-channel position. Delivery happens under this lock so that every node sees a
    /// channel's publications in offset order.
    channels: Mutex<HashMap<String, Position>>,
    nodes: Mutex<Vec<Arc<NodeState>>>,
}

struct NodeState {
    info: NodeInfo,
    sink: Arc<dyn BusSink>,
    wanted: Wanted,
    connections: Mutex<HashMap<String, ConnectionInfo>>,
}

impl MemoryBus {
    pub(crate) fn publish(&self, msg: Publish) -> Published {
        let mut channels = self.channels.lock();
        let pos = channels.entry(msg.channel.clone()).or_default();
        if pos.epoch.is_empty() {
            pos.epoch = new_epoch();
        }
        pos.offset += 1;
        let published = Published {
            offset: pos.offset,
            epoch: pos.epoch.clone(),
        };
        let envelope = Envelope {
            offset: published.offset,
            epoch: published.epoch.clone(),
            channel: msg.channel,
            data: msg.data,
            published_at_ms: now_ms(),
            exclude_client: msg.exclude_client,
        };
        for node in self.nodes.lock().iter() {
            if node.wanted.contains(&envelope.channel) {
                node.sink.publication(envelope.clone());
            }
        }
        published
    }

    pub(crate) fn position(&self, channel: &str) -> Position {
        self.channels
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default()
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
            exclude_client: String::new(),
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
}
