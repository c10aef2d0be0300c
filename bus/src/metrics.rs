//! The bus's own metrics: the state of gateways' pub/sub links to Redis. The recorder they go
//! to is the process's one (`chorus_runtime::metrics`); [`init`] installs it and describes
//! these.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Once, Weak};

use parking_lot::Mutex;

use crate::memory::MemoryBus;
use crate::redis::LinkState;

/// Gateway pub/sub links to Redis that are up (connected, wanted set subscribed), summed over
/// the process: 1 for a healthy gateway process, 0 while its link is down.
pub const REDIS_LINK_UP: &str = "chorus_bus_redis_link_up";
/// Times a gateway's pub/sub link to Redis failed (lost, or a connect attempt failed) and a
/// reconnect was scheduled.
pub const REDIS_RECONNECTS: &str = "chorus_bus_redis_reconnects_total";

/// Channels the in-memory bus of the single-process `chorus` holds (bounded by
/// `--max-channels`).
pub const MEMORY_CHANNELS: &str = "chorus_bus_memory_channels";
/// Idempotency keys the in-memory bus remembers (bounded by `--max-idempotency-keys`).
pub const MEMORY_IDEMPOTENCY_KEYS: &str = "chorus_bus_memory_idempotency_keys";
/// Publishes the in-memory bus refused at a bound, by `limit` (`channels` or
/// `idempotency_keys`).
pub const MEMORY_REFUSED: &str = "chorus_bus_memory_refused_total";

/// Dead gateway nodes this process reaped (removed their presence entries and registry
/// keys after their lease ran out).
pub const NODES_REAPED: &str = "chorus_bus_nodes_reaped_total";
/// Presence entries removed by reaping dead nodes (each announced as one leave where the
/// namespace announces them).
pub const PRESENCE_REAPED: &str = "chorus_bus_presence_entries_reaped_total";

/// Pusher webhook events lost before delivery: the in-memory queue was full (the oldest
/// went), or queueing a client event on Redis failed.
pub const WEBHOOKS_DROPPED: &str = "chorus_bus_webhook_events_dropped_total";

/// Every metric of the bus, as it is exported.
pub const ALL: &[&str] = &[
    REDIS_LINK_UP,
    REDIS_RECONNECTS,
    NODES_REAPED,
    PRESENCE_REAPED,
    MEMORY_CHANNELS,
    MEMORY_IDEMPOTENCY_KEYS,
    MEMORY_REFUSED,
    WEBHOOKS_DROPPED,
];

static LINKS: Mutex<Vec<Weak<LinkState>>> = Mutex::new(Vec::new());
static MEMORY_BUSES: Mutex<Vec<Weak<MemoryBus>>> = Mutex::new(Vec::new());

/// Installs the process's recorder (see `chorus_runtime::metrics::install`) and, once,
/// describes the bus's metrics. Returns whether the recorder is Chorus's.
pub fn init() -> bool {
    static DESCRIBED: Once = Once::new();
    let ours = chorus_runtime::metrics::install();
    if ours {
        DESCRIBED.call_once(describe);
    }
    ours
}

fn describe() {
    metrics::describe_gauge!(
        REDIS_LINK_UP,
        "Gateway pub/sub links to Redis that are up (1 per healthy gateway process)"
    );
    metrics::describe_counter!(
        REDIS_RECONNECTS,
        "Times a gateway's pub/sub link to Redis failed and a reconnect was scheduled"
    );
    metrics::counter!(REDIS_RECONNECTS).increment(0);
    metrics::describe_counter!(
        NODES_REAPED,
        "Dead gateway nodes this process reaped after their lease ran out"
    );
    metrics::describe_counter!(
        PRESENCE_REAPED,
        "Presence entries removed by reaping dead gateway nodes"
    );
    metrics::counter!(NODES_REAPED).increment(0);
    metrics::counter!(PRESENCE_REAPED).increment(0);
    metrics::describe_gauge!(
        MEMORY_CHANNELS,
        "Channels the in-memory bus holds (single-process mode)"
    );
    metrics::describe_gauge!(
        MEMORY_IDEMPOTENCY_KEYS,
        "Idempotency keys the in-memory bus remembers (single-process mode)"
    );
    metrics::describe_counter!(
        MEMORY_REFUSED,
        "Publishes the in-memory bus refused at its channel or idempotency-key bound"
    );
    metrics::describe_counter!(
        WEBHOOKS_DROPPED,
        "Pusher webhook events lost before delivery (queue full, or queueing failed)"
    );
    metrics::counter!(WEBHOOKS_DROPPED).increment(0);
    chorus_runtime::metrics::add_sampler(sample_links);
    chorus_runtime::metrics::add_sampler(sample_memory_buses);
}

/// Counts a link's state in [`REDIS_LINK_UP`] for as long as the link lives.
pub(crate) fn watch_link(state: &Arc<LinkState>) {
    LINKS.lock().push(Arc::downgrade(state));
}

/// A gateway's pub/sub link to Redis failed; it will reconnect.
pub(crate) fn redis_reconnect() {
    metrics::counter!(REDIS_RECONNECTS).increment(1);
}

/// Counts a memory bus in [`MEMORY_CHANNELS`] and [`MEMORY_IDEMPOTENCY_KEYS`] for as long as
/// it lives. A process without one (a gateway on Redis) exports neither.
pub(crate) fn watch_memory_bus(bus: &Arc<MemoryBus>) {
    for limit in ["channels", "idempotency_keys"] {
        metrics::counter!(MEMORY_REFUSED, "limit" => limit).increment(0);
    }
    MEMORY_BUSES.lock().push(Arc::downgrade(bus));
}

/// A webhook event was lost before delivery.
pub(crate) fn webhook_dropped() {
    metrics::counter!(WEBHOOKS_DROPPED).increment(1);
}

/// The in-memory bus refused a publish at its `limit` (`channels` or `idempotency_keys`).
pub(crate) fn memory_refused(limit: &'static str) {
    metrics::counter!(MEMORY_REFUSED, "limit" => limit).increment(1);
}

fn sample_memory_buses() {
    let mut buses = MEMORY_BUSES.lock();
    if buses.is_empty() {
        // No memory bus was ever built here (a gateway on Redis): export neither gauge.
        return;
    }
    // Buses dropped since count as empty, so the gauges fall to 0 with the last one.
    buses.retain(|b| b.strong_count() > 0);
    let (channels, keys) = buses
        .iter()
        .filter_map(Weak::upgrade)
        .map(|b| b.sizes())
        .fold((0, 0), |(c, k), (bc, bk)| (c + bc, k + bk));
    metrics::gauge!(MEMORY_CHANNELS).set(channels as f64);
    metrics::gauge!(MEMORY_IDEMPOTENCY_KEYS).set(keys as f64);
}

fn sample_links() {
    let mut links = LINKS.lock();
    links.retain(|l| l.strong_count() > 0);
    let up = links
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|s| s.subscriber_ready.load(Ordering::Acquire))
        .count();
    metrics::gauge!(REDIS_LINK_UP).set(up as f64);
}

/// This process reaped a dead node holding `entries` presence entries.
pub(crate) fn node_reaped(entries: usize) {
    metrics::counter!(NODES_REAPED).increment(1);
    metrics::counter!(PRESENCE_REAPED).increment(entries as u64);
}
