//! The process's one Prometheus recorder.
//!
//! A Prometheus recorder is process-global, while a process may run several services (the
//! single-process `chorus` runs a gateway and broker-api; tests run many gateways). So the
//! recorder is installed once, by whichever service starts first ([`install`]), and every
//! service's `/metrics` renders the same registry ([`render`]). Gauges that are a sum over
//! the process's parts are computed at scrape time by *samplers* that each service registers
//! ([`add_sampler`]), so they stay right however many parts one process holds.
//!
//! Metric names are `chorus_<service>_<what>`; labels are low-cardinality only (an error code,
//! an operation name — never a channel, client or node id). Histograms whose name ends in
//! `_seconds` get [`LATENCY_BUCKETS`] and render as Prometheus histograms.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;

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

/// Installs the Prometheus recorder for this process, once; later calls only report whether
/// it is ours. Returns false when another recorder was installed first (an embedding
/// application's): metrics then go to that one and [`render`] has nothing to show.
pub fn install() -> bool {
    HANDLE.get_or_init(build).is_some()
}

fn build() -> Option<PrometheusHandle> {
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
    Some(handle)
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
