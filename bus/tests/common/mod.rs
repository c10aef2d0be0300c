//! Helpers shared by the bus's integration tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_bus::{Bus, BusSink, Envelope, NodeInfo, NodeLink, Publish};
use chorus_testkit::RedisServer;
use tokio::sync::mpsc;

/// A gateway node as the registry would list it.
pub fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        address: format!("ws://{id}.local:8000/ws"),
        connections: 0,
        started_at_ms: 1_700_000_000_000,
    }
}

/// `n` throwaway redis-servers on free ports.
pub fn redis_servers(n: usize) -> Vec<RedisServer> {
    (0..n)
        .map(|_| RedisServer::start().expect("redis-server"))
        .collect()
}

/// The `--redis-url` value that shards over every one of `servers` (one URL for one).
pub fn redis_url(servers: &[RedisServer]) -> String {
    servers
        .iter()
        .map(RedisServer::url)
        .collect::<Vec<_>>()
        .join(",")
}

/// How long a test waits for anything the bus should do.
pub const WAIT: Duration = Duration::from_secs(10);

/// A publication of `n` (its data) on `channel`.
pub fn publish(channel: &str, n: u64) -> Publish {
    Publish {
        channel: channel.into(),
        data: Bytes::from(n.to_string()),
        ..Publish::default()
    }
}

/// A sink that forwards envelopes and records, of its probe channels, which each `link_lost`
/// marked and which were resubscribed.
pub struct Forward {
    tx: mpsc::UnboundedSender<Envelope>,
    probes: Vec<String>,
    pub lost: Mutex<Vec<Vec<String>>>,
    pub resubscribed: Mutex<Vec<String>>,
}

impl BusSink for Forward {
    fn publication(&self, envelope: Envelope) {
        let _ = self.tx.send(envelope);
    }

    fn link_lost(&self, lost: &dyn Fn(&str) -> bool) {
        let marked = self.probes.iter().filter(|c| lost(c)).cloned().collect();
        self.lost.lock().unwrap().push(marked);
    }

    fn resubscribed(&self, channels: &[String]) {
        self.resubscribed
            .lock()
            .unwrap()
            .extend(channels.iter().cloned());
    }
}

pub fn sink(probes: &[String]) -> (Arc<Forward>, mpsc::UnboundedReceiver<Envelope>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Forward {
        tx,
        probes: probes.to_vec(),
        lost: Mutex::default(),
        resubscribed: Mutex::default(),
    };
    (Arc::new(sink), rx)
}

/// Node `id` attached to `bus` with a [`Forward`] sink, every one of `channels` wanted and
/// confirmed, and the link ready.
pub async fn attached(
    bus: &Bus,
    id: &str,
    channels: &[String],
) -> (NodeLink, Arc<Forward>, mpsc::UnboundedReceiver<Envelope>) {
    let (sink, rx) = sink(channels);
    let link = bus.attach(node(id), sink.clone());
    for c in channels {
        link.want(c).wait(WAIT).await.unwrap();
    }
    until("the link is ready", async || link.is_ready()).await;
    (link, sink, rx)
}

/// Polls `check` until it holds; fails the test after [`WAIT`].
pub async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < end, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes envelopes until every channel reached `last`; asserts they came in order, gapless,
/// each carrying its offset as its data (see [`publish`]).
pub async fn receive_all(
    rx: &mut mpsc::UnboundedReceiver<Envelope>,
    channels: &[String],
    last: u64,
) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    while channels
        .iter()
        .any(|c| seen.get(c).copied().unwrap_or(0) < last)
    {
        let e = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("an envelope within the deadline; seen {seen:?}"))
            .expect("the sink is alive");
        let previous = seen.insert(e.channel.clone(), e.offset).unwrap_or(0);
        assert_eq!(e.offset, previous + 1, "{}: gap or repeat", e.channel);
        assert_eq!(e.data, Bytes::from(e.offset.to_string()));
    }
}

/// The bus lists exactly the nodes `ids`, and a control request reaches each and is answered.
pub async fn assert_nodes_answer(bus: &Bus, ids: &[&str]) {
    let mut nodes: Vec<String> = bus
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    nodes.sort();
    assert_eq!(nodes, ids);
    let op = chorus_bus::control::ControlOp::Channels {
        pattern: "*".into(),
        limit: 10,
    };
    let replies = bus.control(&op).await.unwrap();
    assert_eq!(
        (replies.reached, replies.replies.len()),
        (ids.len(), ids.len())
    );
}

/// Publishes offset 1 on every channel one message at a time, then offsets 2 to 4 in
/// batches over all of them (each batch crossing every shard or master), checking each
/// offset the bus answers.
pub async fn publish_singly_then_batched(bus: &Bus, channels: &[String]) {
    for c in channels {
        assert_eq!(bus.publish(publish(c, 1)).await.unwrap().offset, 1);
    }
    for n in 2..=4 {
        let batch = channels.iter().map(|c| publish(c, n)).collect();
        for result in bus.publish_many(batch).await {
            assert_eq!(result.unwrap().offset, n);
        }
    }
}
