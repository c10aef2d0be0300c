//! Metrics: the process's one Prometheus recorder, and the bus's own metrics.
//!
//! A Prometheus recorder is process-global, while a process may run several services (the
//! single-process `chorus` runs a gateway and broker-api; tests run many gateways). So the
//! recorder is installed once, by whichever service starts first ([`install`]), and every
//! service's `/metrics` renders the same registry ([`render`]). Gauges that are a sum over
//! the process's parts (connections, channels, Redis links up) are computed at scrape time by
//! *samplers* that each service registers ([`add_sampler`]), so they stay right however many
//! parts one process holds.
//!
//! Metric names are `chorus_<service>_<what>`; labels are low-cardinality only (an error code,
//! an operation name — never a channel, client or node id). Histograms whose name ends in
//! `_seconds` get [`LATENCY_BUCKETS`] and render as Prometheus histograms.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
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

/// Every metric of the bus, as it is exported.
pub const ALL: &[&str] = &[
    REDIS_LINK_UP,
    REDIS_RECONNECTS,
    MEMORY_CHANNELS,
    MEMORY_IDEMPOTENCY_KEYS,
    MEMORY_REFUSED,
];

/// Bucket bounds (seconds) of every `*_seconds` histogram: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `Content-Type` of a `/metrics` answer (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram data is drained into the exporter's buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static SAMPLERS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());
static LINKS: Mutex<Vec<Weak<LinkState>>> = Mutex::new(Vec::new());
static MEMORY_BUSES: Mutex<Vec<Weak<MemoryBus>>> = Mutex::new(Vec::new());

/// Installs the Prometheus recorder for this process, once; later calls only report whether
/// it is ours. Returns false when another recorder was installed first (an embedding
/// application's): metrics then go to that one and [`render`] has nothing to show.
pub fn install() -> bool {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics disabled: bad histogram buckets");
                    return None;
                }
            };
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed; /metrics stays empty");
                    return None;
                }
            };
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                // Rendering drains histograms too; upkeep only bounds memory between scrapes.
                tracing::warn!(error = %e, "no metrics upkeep thread");
            }
            describe();
            Some(handle)
        })
        .is_some()
}

/// Registers a function that sets scrape-time gauges; [`render`] runs every sampler first.
/// Register each sampler once (e.g. under a `std::sync::Once`).
pub fn add_sampler(sampler: fn()) {
    SAMPLERS.lock().push(sampler);
}

/// The process's metrics in the Prometheus text format, or `None` when [`install`] did not
/// install Chorus's recorder.
pub fn render() -> Option<String> {
    let handle = HANDLE.get()?.as_ref()?;
    let samplers: Vec<fn()> = SAMPLERS.lock().clone();
    for sample in samplers {
        sample();
    }
    Some(handle.render())
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
    add_sampler(sample_links);
    add_sampler(sample_memory_buses);
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
