//! The running gateway node: its identity, its link to the bus, its hub and its counters.
//! One `Node` is shared (behind an `Arc`) by every connection the node holds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use chorus_bus::control::{ControlOp, ControlReply, MAX_CHANNELS_LIMIT, MAX_COUNTED_CHANNELS};
use chorus_bus::{Bus, BusSink, Envelope, NodeInfo, NodeLink, now_ms};
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::hub::Hub;
use crate::security::Security;
use crate::sessions::{Control, Sessions};

pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) config: GatewayConfig,
    pub(crate) bus: Bus,
    /// Longest wait for the bus on a client's behalf (subscribe confirmation, publish).
    pub(crate) bus_timeout: Duration,
    pub(crate) hub: Arc<Hub>,
    pub(crate) link: NodeLink,
    /// Sessions by user, for the server API's user-level commands.
    pub(crate) sessions: Arc<Sessions>,
    next_client: AtomicU64,
    connections: AtomicUsize,
    /// Cancelled when the node starts shutting down (the drain): every session watches it.
    pub(crate) shutdown: CancellationToken,
    /// Token keys, namespace rules, connection slots (`security.rs`).
    pub(crate) security: Security,
    /// When the drain started (set by the first to look after `shutdown`).
    drain_started: OnceLock<Instant>,
    /// Socket ids and per-app connection counts of Pusher connections.
    pub(crate) pusher: Arc<crate::pusher::PusherNode>,
}

impl Node {
    pub(crate) fn start(
        bus: Bus,
        config: GatewayConfig,
        bus_timeout: Duration,
        advertise: String,
        shutdown: CancellationToken,
        security: Security,
    ) -> Arc<Self> {
        let id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("gw-{}", chorus_bus::new_epoch()));
        let hub = Arc::new(
            Hub::new(config.catch_up_backlog_max_bytes)
                .compressing_from(config.compression_min_bytes),
        );
        let info = NodeInfo {
            id: id.clone(),
            address: config.advertise_address.clone().unwrap_or(advertise),
            connections: 0,
            started_at_ms: now_ms(),
        };
        let sessions = Arc::new(Sessions::default());
        let sink = Arc::new(NodeSink {
            hub: hub.clone(),
            sessions: sessions.clone(),
        });
        let link = bus.attach(info, sink);
        tokio::spawn(crate::catch_up::run(
            hub.clone(),
            bus.clone(),
            bus_timeout,
            shutdown.clone(),
        ));
        Arc::new(Self {
            id,
            config,
            bus,
            bus_timeout,
            hub,
            link,
            sessions,
            next_client: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            shutdown,
            security,
            drain_started: OnceLock::new(),
            pusher: Arc::default(),
        })
    }

    /// A cluster-unique id for a new client connection.
    pub(crate) fn next_client_id(&self) -> String {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id)
    }

    /// Counts an open WebSocket connection for as long as the guard lives.
    pub(crate) fn track_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        crate::metrics::connections(1);
        ConnectionGuard { node: self.clone() }
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// When a session whose turn is `fraction` (0..1) of the drain window tells its client to
    /// reconnect. Call only after `shutdown` fired.
    pub(crate) fn drain_turn(&self, fraction: f64) -> Instant {
        let started = *self.drain_started.get_or_init(Instant::now);
        crate::clock::at(
            started,
            self.config.drain_window.mul_f64(fraction.clamp(0.0, 1.0)),
        )
    }

    /// When the drain window ends. Call only after `shutdown` fired.
    pub(crate) fn drain_end(&self) -> Instant {
        self.drain_turn(1.0)
    }

    /// Ready to take clients: the bus link is up and the node is not shutting down.
    pub(crate) fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled() && self.link.is_ready()
    }
}

pub(crate) struct ConnectionGuard {
    node: Arc<Node>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.node.connections.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::connections(-1);
    }
}

/// What the bus hands this node: publications (and join/leave announcements) go to the hub,
/// user-level commands to the sessions they name.
struct NodeSink {
    hub: Arc<Hub>,
    sessions: Arc<Sessions>,
}

impl BusSink for NodeSink {
    fn publication(&self, envelope: Envelope) {
        self.hub.publication(envelope);
    }

    fn link_lost(&self, lost: &dyn Fn(&str) -> bool) {
        self.hub.link_lost(lost);
    }

    fn resubscribed(&self, channels: &[String]) {
        self.hub.resubscribed(channels);
    }

    fn control(&self, op: &ControlOp) -> ControlReply {
        let (user, client, control) = match op {
            ControlOp::Channels { pattern, limit } => {
                let (channels, truncated) =
                    self.hub.channels(pattern, (*limit).min(MAX_CHANNELS_LIMIT));
                return ControlReply {
                    channels,
                    truncated,
                    ..ControlReply::default()
                };
            }
            ControlOp::Subscribers { channels } => {
                return ControlReply {
                    channels: self
                        .hub
                        .subscribers(channels.iter().take(MAX_COUNTED_CHANNELS)),
                    ..ControlReply::default()
                };
            }
            ControlOp::Disconnect {
                user,
                client,
                code,
                reason,
                reconnect,
            } => (
                user,
                client,
                Control::Disconnect {
                    code: *code,
                    reason: reason.clone(),
                    reconnect: *reconnect,
                },
            ),
            ControlOp::Subscribe {
                user,
                client,
                channel,
            } => (user, client, Control::Subscribe(channel.clone())),
            ControlOp::Unsubscribe {
                user,
                client,
                channel,
            } => (user, client, Control::Unsubscribe(channel.clone())),
        };
        ControlReply {
            connections: self.sessions.send(user, client.as_deref(), &control),
            ..ControlReply::default()
        }
    }
}
