//! Pusher webhooks: the dispatcher that POSTs the apps' webhook events to their
//! `webhook_url`, in batches, signed, retried with backoff.
//!
//! Events are produced once in the cluster (by the gateway that saw a client event, by the
//! Lua step that changed presence or occupancy) into the bus's webhook queue; every
//! broker-api runs one dispatcher, and the queue hands each event to one dispatcher only
//! ([`Bus::read_webhooks`]). A batch is grouped by app, and each app's events go in one POST
//! `{"time_ms": …, "events": [...]}` with `X-Pusher-Key` and `X-Pusher-Signature`
//! (HMAC-SHA256 of the body with the app's secret), as Pusher's webhooks are. A delivery is
//! retried [`ATTEMPTS`] times with doubling delays; then its events are dropped and counted.
//! Events are acknowledged once their delivery ended either way; a dispatcher that dies
//! before that leaves them to another, which claims them after a minute.
//!
//! Delivery is at least once: a receiver that answers after its deadline, or a dispatcher
//! that dies between the POST and the acknowledgement, sends a batch again.

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_bus::Bus;
use chorus_bus::pusher::{App, WebhookEvent, WebhookRecord};
use tokio_util::sync::CancellationToken;

/// Events read from the queue at once.
const BATCH: usize = 100;
/// How long a read waits for events.
const READ_WAIT: Duration = Duration::from_secs(1);
/// Deadline of one POST.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per delivery before its events are dropped.
pub const ATTEMPTS: u32 = 5;
/// Delay before the first retry; doubled for each next one.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Starts the dispatcher when some app has a webhook URL; it stops with `shutdown`.
pub fn spawn(bus: Bus, shutdown: CancellationToken) {
    if !bus.pusher_apps().iter().any(|a| a.webhook_url.is_some()) {
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("chorus-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "the webhook HTTP client could not be built; no webhooks are sent");
            return;
        }
    };
    let consumer = format!("broker-api-{}", uuid::Uuid::new_v4().simple());
    tokio::spawn(run(bus, client, consumer, shutdown));
}

async fn run(bus: Bus, client: reqwest::Client, consumer: String, shutdown: CancellationToken) {
    tracing::info!(consumer, "webhook dispatcher started");
    let mut failing = Duration::ZERO;
    loop {
        let read = tokio::select! {
            () = shutdown.cancelled() => break,
            read = bus.read_webhooks(&consumer, BATCH, READ_WAIT) => read,
        };
        let records = match read {
            Ok(records) => {
                failing = Duration::ZERO;
                records
            }
            Err(e) => {
                failing = (failing * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in = ?failing, "reading the webhook queue failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(failing) => continue,
                }
            }
        };
        if records.is_empty() {
            continue;
        }
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let deliveries = by_app(&bus, records).into_iter().map(|(app, events)| {
            let client = &client;
            let shutdown = &shutdown;
            async move { deliver(client, &app, &events, shutdown).await }
        });
        let ended = futures::future::join_all(deliveries).await;
        if ended.iter().any(|done| !done) {
            // Shutting down mid-delivery: left unacknowledged for another dispatcher.
            break;
        }
        if let Err(e) = bus.ack_webhooks(&ids).await {
            tracing::warn!(error = %e, events = ids.len(),
                "acknowledging webhook events failed; they may be sent again");
        }
    }
    tracing::info!(consumer, "webhook dispatcher stopped");
}

/// The records' events grouped by app, in queue order; events of apps no longer configured
/// are dropped.
fn by_app(bus: &Bus, records: Vec<WebhookRecord>) -> Vec<(std::sync::Arc<App>, Vec<WebhookEvent>)> {
    let mut groups: BTreeMap<String, Vec<WebhookEvent>> = BTreeMap::new();
    for record in records {
        groups.entry(record.app).or_default().push(record.event);
    }
    groups
        .into_iter()
        .filter_map(|(id, events)| match bus.pusher_apps().by_id(&id) {
            Some(app) if app.webhook_url.is_some() => Some((app.clone(), events)),
            _ => {
                crate::metrics::webhooks("dropped", events.len());
                None
            }
        })
        .collect()
}

/// The body of one webhook POST.
pub fn body(time_ms: i64, events: &[WebhookEvent]) -> String {
    serde_json::json!({ "time_ms": time_ms, "events": events }).to_string()
}

/// POSTs `events` to the app's URL until it answers 2xx or the tries run out. Returns false
/// only when `shutdown` cut it short.
async fn deliver(
    client: &reqwest::Client,
    app: &App,
    events: &[WebhookEvent],
    shutdown: &CancellationToken,
) -> bool {
    let Some(url) = &app.webhook_url else {
        return true;
    };
    let body = body(chorus_bus::now_ms(), events);
    let signature = app.sign(&body);
    let mut delay = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("x-pusher-key", &app.key)
            .header("x-pusher-signature", &signature)
            .body(body.clone())
            .send();
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return false,
            outcome = sent => outcome,
        };
        let failure = match outcome {
            Ok(resp) if resp.status().is_success() => {
                crate::metrics::webhooks("delivered", events.len());
                return true;
            }
            Ok(resp) => format!("HTTP {}", resp.status()),
            Err(e) => e.to_string(),
        };
        crate::metrics::webhook_attempt_failed();
        if attempt == ATTEMPTS {
            tracing::warn!(app = %app.id, events = events.len(), error = failure, attempts = ATTEMPTS,
                "webhook delivery failed; its events are dropped");
            break;
        }
        tracing::debug!(app = %app.id, attempt, error = failure, retry_in = ?delay,
            "webhook delivery failed; retrying");
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay *= 2;
    }
    crate::metrics::webhooks("failed", events.len());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_pushers_shape() {
        let body = body(
            7,
            &[
                WebhookEvent::ChannelOccupied {
                    channel: "a".into(),
                },
                WebhookEvent::MemberAdded {
                    channel: "presence-b".into(),
                    user_id: "u".into(),
                },
            ],
        );
        assert_eq!(
            body,
            r#"{"time_ms":7,"events":[{"name":"channel_occupied","channel":"a"},{"name":"member_added","channel":"presence-b","user_id":"u"}]}"#
        );
    }
}
