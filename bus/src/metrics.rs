//! The bus's own metrics: the state of gateways' pub/sub links to Redis. The recorder they go
//! to is the process's one (`chorus_runtime::metrics`); [`init`] installs it and describes
//! these.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Once, Weak};

use parking_lot::Mutex;

use crate::redis::LinkState;

/// Gateway pub/sub links to Redis that are up (connected, wanted set subscribed), summed over
/// the process: 1 for a healthy gateway process, 0 while its link is down.
pub const REDIS_LINK_UP: &str = "chorus_bus_redis_link_up";
/// Times a gateway's pub/sub link to Redis failed (lost, or a connect attempt failed) and a
/// reconnect was scheduled.
pub const REDIS_RECONNECTS: &str = "chorus_bus_redis_reconnects_total";

static LINKS: Mutex<Vec<Weak<LinkState>>> = Mutex::new(Vec::new());

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
    chorus_runtime::metrics::add_sampler(sample_links);
}

/// Counts a link's state in [`REDIS_LINK_UP`] for as long as the link lives.
pub(crate) fn watch_link(state: &Arc<LinkState>) {
    LINKS.lock().push(Arc::downgrade(state));
}

/// A gateway's pub/sub link to Redis failed; it will reconnect.
pub(crate) fn redis_reconnect() {
    metrics::counter!(REDIS_RECONNECTS).increment(1);
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
