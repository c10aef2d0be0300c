//! The gateway's metrics: names, descriptions, and the one-line calls made where things
//! happen. Served at `GET /metrics` on the gateway's port (see `chorus_bus::metrics` for the
//! process-wide recorder).
//!
//! A leaf: the rest of the gateway calls in, this module calls nothing of the gateway's.
//! Gauges are live counters (process-wide atomics summed over every node of the process)
//! that the code changing the state updates; a scrape reads them and never walks the hub.

use std::sync::Once;
use std::sync::atomic::{AtomicI64, Ordering};

use metrics::{Counter, Histogram};

/// Open WebSocket connections.
pub const CONNECTIONS: &str = "chorus_gateway_connections";
/// WebSocket connections accepted (upgrades completed or not), since start.
pub const CONNECTIONS_ACCEPTED: &str = "chorus_gateway_connections_accepted_total";
/// Client subscriptions (one per connection and channel).
pub const SUBSCRIPTIONS: &str = "chorus_gateway_subscriptions";
/// Channels with at least one local subscriber (= the node's Redis subscriptions).
pub const CHANNELS: &str = "chorus_gateway_channels";
/// Publications the node received from the bus.
pub const MESSAGES_RECEIVED: &str = "chorus_gateway_messages_received_total";
/// Publication frames written to client sockets.
pub const MESSAGES_DELIVERED: &str = "chorus_gateway_messages_delivered_total";
/// Time from the publish (the envelope's `published_at_ms`) to the write to a client socket.
pub const DELIVERY_LATENCY: &str = "chorus_gateway_delivery_latency_seconds";
/// Time from the publish (the envelope's `published_at_ms`) to the gateway receiving it from
/// the bus, once per publication per gateway: the bus's part of the delivery latency (the
/// rest is the gateway's queue and write).
pub const RECEIVE_LATENCY: &str = "chorus_gateway_receive_latency_seconds";
/// Bytes waiting in client send queues.
pub const QUEUED_BYTES: &str = "chorus_gateway_queued_bytes";
/// Bytes of publications held by channels waiting for history (bounded node-wide by
/// `--catch-up-backlog-max-bytes`).
pub const CATCH_UP_BACKLOG_BYTES: &str = "chorus_gateway_catch_up_backlog_bytes";
/// Clients closed as slow consumers (close code 3002).
pub const SLOW_CONSUMER_DISCONNECTS: &str = "chorus_gateway_slow_consumer_disconnects_total";
/// Error replies sent to clients, by protocol error code (`code="108"`).
pub const ERRORS: &str = "chorus_gateway_errors_total";
/// Close frames the gateway sent, by close code (`code="3002"`): idle, slow consumers, token
/// expiry, connect timeouts, rate limits, protocol errors, drain.
pub const CLOSES: &str = "chorus_gateway_closes_total";
/// WebSocket upgrades refused, by reason (`draining`, `origin`, `connection_limit`).
pub const UPGRADES_REFUSED: &str = "chorus_gateway_upgrades_refused_total";
/// Channel gaps filled from history (after a broken Redis link, or a missed publication).
pub const CATCH_UPS: &str = "chorus_gateway_catch_ups_total";
/// Channels whose missed publications history could not supply (Redis lost its data, or the
/// gap outgrew history): their subscribers were closed with 3003 and told on resubscribe.
pub const STATE_LOST: &str = "chorus_gateway_state_lost_total";

/// Open Pusher-protocol connections (`/app/{key}`), a part of [`CONNECTIONS`].
pub const PUSHER_CONNECTIONS: &str = "chorus_gateway_pusher_connections";
/// Pusher connections and messages refused, by reason: `unknown_app` (4001), `protocol`
/// (4007), `over_quota` (4004), `auth` (a bad subscription or sign-in signature),
/// `client_event` (client events refused: disabled, not subscribed, too large, rate).
pub const PUSHER_REFUSALS: &str = "chorus_gateway_pusher_refusals_total";
/// Client events (`client-*`) relayed from Pusher connections.
pub const PUSHER_CLIENT_EVENTS: &str = "chorus_gateway_pusher_client_events_total";

/// Open connections that negotiated permessage-deflate.
pub const DEFLATE_CONNECTIONS: &str = "chorus_gateway_deflate_connections";
/// Publications delivered compressed (permessage-deflate), one per subscriber.
pub const COMPRESSED_DELIVERIES: &str = "chorus_gateway_compressed_deliveries_total";

/// Every metric the gateway exports, for tests and docs.
pub const ALL: &[&str] = &[
    CONNECTIONS,
    CONNECTIONS_ACCEPTED,
    SUBSCRIPTIONS,
    CHANNELS,
    MESSAGES_RECEIVED,
    MESSAGES_DELIVERED,
    DELIVERY_LATENCY,
    RECEIVE_LATENCY,
    QUEUED_BYTES,
    CATCH_UP_BACKLOG_BYTES,
    SLOW_CONSUMER_DISCONNECTS,
    ERRORS,
    CATCH_UPS,
    STATE_LOST,
    CLOSES,
    UPGRADES_REFUSED,
    PUSHER_CONNECTIONS,
    PUSHER_REFUSALS,
    PUSHER_CLIENT_EVENTS,
    DEFLATE_CONNECTIONS,
    COMPRESSED_DELIVERIES,
];

/// The reasons [`PUSHER_REFUSALS`] uses.
pub const PUSHER_REFUSAL_REASONS: &[&str] = &[
    "unknown_app",
    "protocol",
    "over_quota",
    "auth",
    "client_event",
];

/// The reasons [`UPGRADES_REFUSED`] uses.
pub const REFUSAL_REASONS: &[&str] = &["draining", "origin", "connection_limit"];

static INIT: Once = Once::new();
/// The live counters behind the gauges, for every node of the process. Some may dip below
/// zero for a moment (a decrement racing its increment); the scrape shows 0 then.
static CONNECTIONS_OPEN: AtomicI64 = AtomicI64::new(0);
static CHANNELS_HERE: AtomicI64 = AtomicI64::new(0);
static SUBSCRIPTIONS_HERE: AtomicI64 = AtomicI64::new(0);
static QUEUED: AtomicI64 = AtomicI64::new(0);
static BACKLOG: AtomicI64 = AtomicI64::new(0);
static PUSHER_OPEN: AtomicI64 = AtomicI64::new(0);
static DEFLATE_OPEN: AtomicI64 = AtomicI64::new(0);

/// Installs the process's recorder if needed and describes the gateway's metrics (once per
/// process).
pub(crate) fn init() {
    INIT.call_once(|| {
        if !chorus_bus::metrics::init() {
            return;
        }
        describe();
        chorus_runtime::metrics::add_sampler(sample);
    });
}

/// The `/metrics` body, or `None` when metrics are not Chorus's to render.
pub(crate) fn render() -> Option<String> {
    chorus_runtime::metrics::render()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(PUSHER_CONNECTIONS, "Open Pusher-protocol connections");
    describe_counter!(
        PUSHER_REFUSALS,
        "Pusher connections and messages refused, by reason"
    );
    describe_counter!(
        PUSHER_CLIENT_EVENTS,
        "Client events relayed from Pusher connections"
    );
    for reason in PUSHER_REFUSAL_REASONS {
        metrics::counter!(PUSHER_REFUSALS, "reason" => *reason).increment(0);
    }
    metrics::counter!(PUSHER_CLIENT_EVENTS).increment(0);
    describe_gauge!(
        DEFLATE_CONNECTIONS,
        "Open connections that negotiated permessage-deflate"
    );
    describe_counter!(
        COMPRESSED_DELIVERIES,
        "Publications delivered compressed with permessage-deflate"
    );
    metrics::counter!(COMPRESSED_DELIVERIES).increment(0);
    describe_gauge!(CONNECTIONS, "Open WebSocket connections");
    describe_counter!(CONNECTIONS_ACCEPTED, "WebSocket upgrades accepted");
    describe_gauge!(
        SUBSCRIPTIONS,
        "Client subscriptions (one per connection and channel)"
    );
    describe_gauge!(CHANNELS, "Channels with at least one local subscriber");
    describe_counter!(MESSAGES_RECEIVED, "Publications received from the bus");
    describe_counter!(
        MESSAGES_DELIVERED,
        "Publication frames written to client sockets"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        metrics::Unit::Seconds,
        "Publish (envelope timestamp) to client socket write"
    );
    describe_histogram!(
        RECEIVE_LATENCY,
        metrics::Unit::Seconds,
        "Publish (envelope timestamp) to the gateway receiving it from the bus"
    );
    describe_gauge!(
        QUEUED_BYTES,
        metrics::Unit::Bytes,
        "Bytes waiting in client send queues"
    );
    describe_gauge!(
        CATCH_UP_BACKLOG_BYTES,
        metrics::Unit::Bytes,
        "Bytes of publications held by channels waiting for history"
    );
    describe_counter!(
        SLOW_CONSUMER_DISCONNECTS,
        "Clients closed as slow consumers (close code 3002)"
    );
    describe_counter!(
        ERRORS,
        "Error replies sent to clients, by protocol error code"
    );
    describe_counter!(CATCH_UPS, "Channel gaps filled from history");
    describe_counter!(CLOSES, "Close frames sent to clients, by close code");
    describe_counter!(
        UPGRADES_REFUSED,
        "WebSocket upgrades refused, by reason (draining, origin, connection_limit)"
    );
    for reason in REFUSAL_REASONS {
        metrics::counter!(UPGRADES_REFUSED, "reason" => *reason).increment(0);
    }
    describe_counter!(
        STATE_LOST,
        "Channels whose missed publications were gone (subscribers closed with 3003)"
    );
    for counter in [
        CONNECTIONS_ACCEPTED,
        MESSAGES_RECEIVED,
        MESSAGES_DELIVERED,
        SLOW_CONSUMER_DISCONNECTS,
        CATCH_UPS,
        STATE_LOST,
    ] {
        metrics::counter!(counter).increment(0);
    }
}

fn sample() {
    for (name, value) in [
        (CONNECTIONS, &CONNECTIONS_OPEN),
        (CHANNELS, &CHANNELS_HERE),
        (SUBSCRIPTIONS, &SUBSCRIPTIONS_HERE),
        (QUEUED_BYTES, &QUEUED),
        (CATCH_UP_BACKLOG_BYTES, &BACKLOG),
        (PUSHER_CONNECTIONS, &PUSHER_OPEN),
        (DEFLATE_CONNECTIONS, &DEFLATE_OPEN),
    ] {
        metrics::gauge!(name).set(value.load(Ordering::Relaxed).max(0) as f64);
    }
}

/// A WebSocket upgrade was accepted.
pub(crate) fn connection_accepted() {
    metrics::counter!(CONNECTIONS_ACCEPTED).increment(1);
}

/// A publication arrived from the bus.
pub(crate) fn message_received(published_at_ms: i64) {
    metrics::counter!(MESSAGES_RECEIVED).increment(1);
    if published_at_ms > 0 {
        // A publisher's clock ahead of ours would read negative: count it as immediate.
        let lag = (chorus_bus::now_ms() - published_at_ms).max(0);
        metrics::histogram!(RECEIVE_LATENCY).record(lag as f64 / 1000.0);
    }
}

/// The gateway sent a close frame with `code` (a fixed set: `chorus_protocol::codes::close`).
pub(crate) fn closed(code: u16) {
    metrics::counter!(CLOSES, "code" => code.to_string()).increment(1);
}

/// A WebSocket upgrade was refused; `reason` is one of [`REFUSAL_REASONS`].
/// A Pusher connection opened (`1`) or closed (`-1`).
/// Connections that negotiated permessage-deflate opened (positive) or ended (negative).
pub(crate) fn deflate_connections(delta: i64) {
    DEFLATE_OPEN.fetch_add(delta, Ordering::Relaxed);
}

/// `n` subscribers of one publication got it compressed.
pub(crate) fn compressed_deliveries(n: u64) {
    if n > 0 {
        metrics::counter!(COMPRESSED_DELIVERIES).increment(n);
    }
}

pub(crate) fn pusher_connections(delta: i64) {
    PUSHER_OPEN.fetch_add(delta, Ordering::Relaxed);
}

/// A Pusher connection or message was refused.
pub(crate) fn pusher_refused(reason: &'static str) {
    metrics::counter!(PUSHER_REFUSALS, "reason" => reason).increment(1);
}

/// A client event was relayed.
pub(crate) fn pusher_client_event() {
    metrics::counter!(PUSHER_CLIENT_EVENTS).increment(1);
}

pub(crate) fn upgrade_refused(reason: &'static str) {
    metrics::counter!(UPGRADES_REFUSED, "reason" => reason).increment(1);
}

/// A channel's gap was filled from history.
pub(crate) fn caught_up() {
    metrics::counter!(CATCH_UPS).increment(1);
}

/// A channel's missed publications were gone; its subscribers were told.
pub(crate) fn state_lost() {
    metrics::counter!(STATE_LOST).increment(1);
}

/// A client was closed as a slow consumer.
pub(crate) fn slow_consumer() {
    metrics::counter!(SLOW_CONSUMER_DISCONNECTS).increment(1);
}

/// An error reply went to a client. The label is the protocol's error code number: a small,
/// fixed set (`chorus_protocol::codes::ErrorCode`).
pub(crate) fn error_replied(code: u32) {
    metrics::counter!(ERRORS, "code" => code.to_string()).increment(1);
}

/// Bytes were queued for a client (positive) or left its queue (negative).
pub(crate) fn queued(bytes: i64) {
    QUEUED.fetch_add(bytes, Ordering::Relaxed);
}

/// WebSocket connections opened (positive) or ended (negative).
pub(crate) fn connections(delta: i64) {
    CONNECTIONS_OPEN.fetch_add(delta, Ordering::Relaxed);
}

/// Channels gained (positive) or released (negative) by a node's hub.
pub(crate) fn channels(delta: i64) {
    CHANNELS_HERE.fetch_add(delta, Ordering::Relaxed);
}

/// Subscriptions added (positive) or removed (negative).
pub(crate) fn subscriptions(delta: i64) {
    SUBSCRIPTIONS_HERE.fetch_add(delta, Ordering::Relaxed);
}

/// Bytes taken into (positive) or released from (negative) catch-up backlogs.
pub(crate) fn backlog(bytes: i64) {
    BACKLOG.fetch_add(bytes, Ordering::Relaxed);
}

/// The handles a connection's writer records deliveries on, looked up once per connection.
pub(crate) struct Delivery {
    pub(crate) delivered: Counter,
    pub(crate) latency: Histogram,
}

impl Delivery {
    pub(crate) fn new() -> Self {
        Self {
            delivered: metrics::counter!(MESSAGES_DELIVERED),
            latency: metrics::histogram!(DELIVERY_LATENCY),
        }
    }

    /// Records publications published at `published_at_ms` (each) and written at `now_ms`.
    pub(crate) fn record(&self, now_ms: i64, published_at_ms: &[i64]) {
        self.delivered.increment(published_at_ms.len() as u64);
        // Publications of one batch mostly share their millisecond: one record per run of
        // equal values.
        let mut i = 0;
        while i < published_at_ms.len() {
            let at = published_at_ms[i];
            let run = published_at_ms[i..]
                .iter()
                .take_while(|&&a| a == at)
                .count();
            // A publisher's clock ahead of ours would read negative: count it as immediate.
            self.latency
                .record_many((now_ms - at).max(0) as f64 / 1000.0, run);
            i += run;
        }
    }
}
