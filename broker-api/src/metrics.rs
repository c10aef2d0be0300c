//! broker-api's metrics: names, descriptions and the one-line calls made where things happen.
//! Served at `GET /metrics` on the API port, without an API key (see `chorus_bus::metrics`
//! for the process-wide recorder).

use std::sync::Once;
use std::time::Instant;

use crate::error::ErrorCode;

/// Time from a publish request reaching the service layer to the bus's acknowledgement (the
/// offset assigned), by operation (`op="publish"` or `op="broadcast"`), failures included.
pub const PUBLISH_LATENCY: &str = "chorus_api_publish_duration_seconds";
/// Publications acknowledged by the bus (a broadcast counts one per channel).
pub const MESSAGES_PUBLISHED: &str = "chorus_api_messages_published_total";
/// Failed API requests, by error code name (`code="unavailable"`), HTTP and gRPC alike.
pub const ERRORS: &str = "chorus_api_errors_total";

/// Pusher webhook events whose delivery ended, by `result`: `delivered` (the app's URL
/// answered 2xx), `failed` (every try failed; dropped), `dropped` (the app is no longer
/// configured).
pub const WEBHOOK_EVENTS: &str = "chorus_api_webhook_events_total";
/// Webhook POSTs that failed (an error or a non-2xx answer), retried or not.
pub const WEBHOOK_ATTEMPT_FAILURES: &str = "chorus_api_webhook_attempt_failures_total";

/// Every metric broker-api exports, for tests and docs.
pub const ALL: &[&str] = &[
    PUBLISH_LATENCY,
    MESSAGES_PUBLISHED,
    ERRORS,
    WEBHOOK_EVENTS,
    WEBHOOK_ATTEMPT_FAILURES,
];

static INIT: Once = Once::new();

/// Installs the process's recorder if needed and describes broker-api's metrics. Idempotent.
pub fn init() {
    INIT.call_once(|| {
        if !chorus_bus::metrics::init() {
            return;
        }
        metrics::describe_histogram!(
            PUBLISH_LATENCY,
            metrics::Unit::Seconds,
            "Publish request to bus acknowledgement, by operation"
        );
        metrics::describe_counter!(
            MESSAGES_PUBLISHED,
            "Publications acknowledged by the bus (one per broadcast channel)"
        );
        metrics::describe_counter!(ERRORS, "Failed API requests by error code");
        metrics::counter!(MESSAGES_PUBLISHED).increment(0);
        metrics::describe_counter!(
            WEBHOOK_EVENTS,
            "Pusher webhook events whose delivery ended, by result"
        );
        metrics::describe_counter!(
            WEBHOOK_ATTEMPT_FAILURES,
            "Pusher webhook POSTs that failed (retried or not)"
        );
        for result in ["delivered", "failed", "dropped"] {
            metrics::counter!(WEBHOOK_EVENTS, "result" => result).increment(0);
        }
        metrics::counter!(WEBHOOK_ATTEMPT_FAILURES).increment(0);
    });
}

/// A publish operation (`op`) that started at `started` has finished, `published` messages
/// acknowledged.
pub(crate) fn published(op: &'static str, started: Instant, published: usize) {
    metrics::histogram!(PUBLISH_LATENCY, "op" => op).record(started.elapsed().as_secs_f64());
    metrics::counter!(MESSAGES_PUBLISHED).increment(published as u64);
}

/// A request failed with `code`.
pub(crate) fn error(code: ErrorCode) {
    metrics::counter!(ERRORS, "code" => code.name()).increment(1);
}

/// `n` webhook events of an app ended with `result` (`delivered`, `failed`, `dropped`).
pub(crate) fn webhooks(result: &'static str, n: usize) {
    metrics::counter!(WEBHOOK_EVENTS, "result" => result).increment(n as u64);
}

/// A webhook POST failed.
pub(crate) fn webhook_attempt_failed() {
    metrics::counter!(WEBHOOK_ATTEMPT_FAILURES).increment(1);
}
