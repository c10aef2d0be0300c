//! The hub: which local connections are subscribed to which channel, and the fan-out of a
//! publication to them.
//!
//! The hub is the node's [`BusSink`]: the bus hands it each envelope once, already decoded.
//! The hub encodes the publication at most once per wire format and gives every subscriber's
//! queue a clone of the same `Bytes` — no per-subscriber serialisation. Subscriptions are kept
//! in shards by channel hash so that fan-out on one channel and subscribes on another do not
//! contend; no lock is ever held across an `.await` (queues are fed with `try_send`).
//!
//! The hub also reference-counts channels for the bus: the first local subscriber of a channel
//! makes the node want it, and the last one leaving makes it unwant it. Both happen under the
//! shard lock, so the bus sees the transitions in order.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use bytes::Bytes;
use chorus_bus::{BusSink, ChannelReady, Envelope, NodeLink};
use chorus_protocol::client::{self, push};
use chorus_protocol::wire::{self, Format};
use parking_lot::RwLock;

use crate::conn::Conn;

const SHARDS: usize = 64;

type Subscribers = Vec<Arc<Conn>>;

pub(crate) struct Hub {
    shards: Box<[RwLock<HashMap<String, Subscribers>>]>,
    hasher: RandomState,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Hub {
    fn shard(&self, channel: &str) -> &RwLock<HashMap<String, Subscribers>> {
        let i = self.hasher.hash_one(channel) as usize % SHARDS;
        &self.shards[i]
    }

    /// Adds `conn` to `channel`'s subscribers; returns when the bus will confirm the channel.
    pub(crate) fn subscribe(
        &self,
        link: &NodeLink,
        channel: &str,
        conn: &Arc<Conn>,
    ) -> ChannelReady {
        let mut shard = self.shard(channel).write();
        shard
            .entry(channel.to_owned())
            .or_default()
            .push(conn.clone());
        // `want` is idempotent: later subscribers wait on the same confirmation.
        link.want(channel)
    }

    /// Removes `conn` from `channel`; the bus stops delivering the channel to this node when
    /// its last local subscriber leaves.
    pub(crate) fn unsubscribe(&self, link: &NodeLink, channel: &str, conn: &Arc<Conn>) {
        let mut shard = self.shard(channel).write();
        if let Some(subs) = shard.get_mut(channel) {
            subs.retain(|c| !Arc::ptr_eq(c, conn));
            if subs.is_empty() {
                shard.remove(channel);
                link.unwant(channel);
            }
        }
    }

    /// Number of subscriptions (connection × channel), for metrics.
    pub(crate) fn subscription_count(&self) -> usize {
        let count = |s: &RwLock<HashMap<String, Subscribers>>| {
            s.read().values().map(Vec::len).sum::<usize>()
        };
        self.shards.iter().map(count).sum()
    }

    /// Number of channels with at least one local subscriber.
    pub(crate) fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

impl BusSink for Hub {
    fn publication(&self, envelope: Envelope) {
        crate::metrics::message_received();
        let shard = self.shard(&envelope.channel).read();
        let Some(subs) = shard.get(&envelope.channel) else {
            return;
        };
        let Envelope {
            offset,
            epoch,
            channel,
            data,
            exclude_client,
            published_at_ms,
            ..
        } = envelope;
        let frame = wire::push(push::Body::Publication(client::Publication {
            channel,
            offset,
            epoch,
            data,
        }));
        let mut encoded: [Option<Bytes>; Format::ALL.len()] = Default::default();
        for conn in subs {
            if !exclude_client.is_empty() && conn.client == exclude_client {
                continue;
            }
            let bytes = encoded[conn.format.index()]
                .get_or_insert_with(|| wire::encode_frame(conn.format, &frame));
            conn.deliver_publication(bytes.clone(), published_at_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_bus::{Bus, NodeInfo};

    fn link(bus: &Bus, hub: &Arc<Hub>) -> NodeLink {
        let node = NodeInfo {
            id: "n".into(),
            address: String::new(),
            connections: 0,
            started_at_ms: 0,
        };
        bus.attach(node, hub.clone())
    }

    fn envelope(channel: &str, exclude: &str) -> Envelope {
        Envelope {
            offset: 1,
            epoch: "e".into(),
            channel: channel.into(),
            data: Bytes::from_static(b"{}"),
            published_at_ms: 0,
            exclude_client: exclude.into(),
        }
    }

    #[test]
    fn subscribers_of_one_format_share_one_encoding() {
        let bus = Bus::memory();
        let hub = Arc::new(Hub::default());
        let link = link(&bus, &hub);
        let (a, mut qa) = Conn::new("a".into(), Format::Json, 8, 1024);
        let (b, mut qb) = Conn::new("b".into(), Format::Json, 8, 1024);
        let (c, mut qc) = Conn::new("c".into(), Format::Protobuf, 8, 1024);
        let (a, b, c) = (Arc::new(a), Arc::new(b), Arc::new(c));
        for conn in [&a, &b, &c] {
            drop(hub.subscribe(&link, "ch", conn));
        }
        hub.publication(envelope("ch", ""));
        let take = |q: &mut crate::conn::ConnQueue| match q.rx.try_recv() {
            Ok(crate::conn::Outgoing::Publication(b, _)) => b,
            other => panic!("expected a publication, got {other:?}"),
        };
        let (fa, fb, fc) = (take(&mut qa), take(&mut qb), take(&mut qc));
        assert_eq!(
            fa.as_ptr(),
            fb.as_ptr(),
            "JSON subscribers share one buffer"
        );
        assert_ne!(fa, fc, "protobuf is encoded separately");
    }

    #[test]
    fn excluded_sender_is_skipped_and_last_unsubscribe_unwants() {
        let bus = Bus::memory();
        let hub = Arc::new(Hub::default());
        let link = link(&bus, &hub);
        let (a, mut qa) = Conn::new("a".into(), Format::Json, 8, 1024);
        let (b, mut qb) = Conn::new("b".into(), Format::Json, 8, 1024);
        let (a, b) = (Arc::new(a), Arc::new(b));
        drop(hub.subscribe(&link, "ch", &a));
        drop(hub.subscribe(&link, "ch", &b));
        hub.publication(envelope("ch", "a"));
        assert!(qa.rx.try_recv().is_err());
        assert!(qb.rx.try_recv().is_ok());
        hub.unsubscribe(&link, "ch", &a);
        assert_eq!(hub.channel_count(), 1);
        hub.unsubscribe(&link, "ch", &b);
        assert_eq!(hub.channel_count(), 0);
        hub.publication(envelope("ch", ""));
        assert!(qb.rx.try_recv().is_err());
    }
}
