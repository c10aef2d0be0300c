//! The hub's fan-out without network, for the criterion micro-benchmark
//! (`cargo bench -p chorus-gateway`). Not part of the gateway's API.

use std::sync::Arc;

use bytes::Bytes;
use chorus_bus::{Bus, BusSink, Envelope, NodeInfo, NodeLink, Position};
use chorus_protocol::wire::Format;

use crate::conn::{Conn, ConnQueue};
use crate::hub::Hub;

/// A hub with `subscribers` live subscribers on one channel, each with its own queue.
pub struct Fanout {
    hub: Arc<Hub>,
    _link: NodeLink,
    conns: Vec<Arc<Conn>>,
    queues: Vec<ConnQueue>,
    next: u64,
}

impl Fanout {
    /// `protobuf_share` of the subscribers use protobuf, the rest JSON.
    pub fn new(subscribers: usize, protobuf_share: f64) -> Self {
        let hub = Arc::new(Hub::new(usize::MAX));
        let link = Bus::memory().attach(
            NodeInfo {
                id: "bench".into(),
                address: String::new(),
                connections: 0,
                started_at_ms: 0,
            },
            hub.clone(),
        );
        let mut conns = Vec::with_capacity(subscribers);
        let mut queues = Vec::with_capacity(subscribers);
        let protobuf = (subscribers as f64 * protobuf_share).round() as usize;
        for i in 0..subscribers {
            let format = if i < protobuf {
                Format::Protobuf
            } else {
                Format::Json
            };
            let (conn, queue) = Conn::new(format!("c{i}"), format, 4096, 1 << 20);
            drop(hub.hold(&link, "bench", &conn, true));
            let position = Position {
                offset: 0,
                epoch: "e".into(),
            };
            if hub
                .activate("bench", &conn, &position, Some(Bytes::from_static(b"R")))
                .is_err()
            {
                continue;
            }
            conns.push(conn);
            queues.push(queue);
        }
        let mut fanout = Self {
            hub,
            _link: link,
            conns,
            queues,
            next: 1,
        };
        fanout.drain();
        fanout
    }

    /// Hands one publication of `data` to the hub, as the bus subscriber does.
    pub fn publish(&mut self, data: Bytes) {
        self.hub.publication(Envelope {
            offset: self.next,
            epoch: "e".into(),
            channel: "bench".into(),
            data,
            published_at_ms: 0,
            exclude_client: String::new(),
            presence: None,
            trace_parent: String::new(),
            trace_state: String::new(),
        });
        self.next += 1;
    }

    /// Empties every queue as the writers would; returns how many items were taken.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        let mut batch = std::collections::VecDeque::new();
        for (q, conn) in self.queues.iter_mut().zip(&self.conns) {
            n += q.try_recv_many(&mut batch, usize::MAX);
            conn.dequeued_bytes(batch.drain(..).map(|item| item.cost()).sum());
        }
        n
    }
}
