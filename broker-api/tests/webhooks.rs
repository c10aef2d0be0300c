//! Pusher webhooks from broker-api's dispatcher to a real HTTP receiver: signed batches in
//! Pusher's shape, each event delivered once even with two broker-api replicas, retried when
//! the receiver fails, given up on (and counted) when it keeps failing.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chorus_bus::pusher::{App, Apps, WebhookEvent};
use chorus_bus::{Bus, BusConfig, BusSink, Envelope, NodeInfo};
use chorus_testkit::RedisServer;
use common::{TestServer, config};
use serde_json::Value;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// What the receiver got: one POST's headers and body.
struct Hook {
    key: String,
    signature: String,
    body: String,
}

struct Receiver {
    url: String,
    hooks: mpsc::UnboundedReceiver<Hook>,
    /// Requests answered so far (failed ones included).
    requests: Arc<AtomicUsize>,
}

/// An HTTP receiver on a free loopback port that answers 500 to its first `fail_first`
/// requests and 200 after.
async fn receiver(fail_first: usize) -> Receiver {
    #[derive(Clone)]
    struct S {
        tx: mpsc::UnboundedSender<Hook>,
        requests: Arc<AtomicUsize>,
        fail_first: usize,
    }
    async fn hook(State(s): State<S>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let n = s.requests.fetch_add(1, Ordering::SeqCst);
        if n < s.fail_first {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let _ = s.tx.send(Hook {
            key: header("x-pusher-key"),
            signature: header("x-pusher-signature"),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        StatusCode::OK
    }
    let (tx, hooks) = mpsc::unbounded_channel();
    let requests = Arc::new(AtomicUsize::new(0));
    let state = S {
        tx,
        requests: requests.clone(),
        fail_first,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/hooks", post(hook)).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url: format!("http://{addr}/hooks"),
        hooks,
        requests,
    }
}

fn app(url: &str) -> App {
    App {
        webhook_url: Some(url.to_owned()),
        ..App::new("7", "key-7", "secret-of-app-7")
    }
}

fn client_event(n: usize) -> WebhookEvent {
    WebhookEvent::ClientEvent {
        channel: "private-room".into(),
        event: "client-typing".into(),
        data: n.to_string(),
        socket_id: "1.1".into(),
        user_id: None,
    }
}

/// Receives POSTs until `n` events came, checking each POST's key and signature; returns
/// the events in arrival order.
async fn events(rx: &mut Receiver, app: &App, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let hook = tokio::time::timeout(WAIT, rx.hooks.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events within {WAIT:?}", got.len()))
            .unwrap();
        assert_eq!(hook.key, app.key);
        assert!(
            app.verify(&hook.body, &hook.signature),
            "bad signature on {}",
            hook.body
        );
        let body: Value = serde_json::from_str(&hook.body).unwrap();
        assert!(body["time_ms"].as_i64().unwrap() > 1_700_000_000_000);
        got.extend(body["events"].as_array().unwrap().iter().cloned());
    }
    got
}

struct Ignore;
impl BusSink for Ignore {
    fn publication(&self, _: Envelope) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_event_once_signed_in_pushers_shape() {
    let redis = RedisServer::start().unwrap();
    let mut rx = receiver(0).await;
    let app = app(&rx.url);
    let bus = || {
        let config = BusConfig {
            redis_url: redis.url(),
            redis_timeout: Duration::from_millis(500),
            ..BusConfig::default()
        };
        Bus::redis(&config)
            .unwrap()
            .with_pusher_apps(Apps::from_apps(vec![app.clone()]).unwrap())
    };
    let (bus_a, bus_b) = (bus(), bus());
    let _a = TestServer::start(bus_a.clone(), config()).await;
    let _b = TestServer::start(bus_b.clone(), config()).await;

    let node = bus_a.attach(
        NodeInfo {
            id: "gw".into(),
            address: "ws://gw".into(),
            connections: 0,
            started_at_ms: 1,
        },
        Arc::new(Ignore),
    );
    node.want("pusher-7:presence-lobby")
        .wait(WAIT)
        .await
        .unwrap();
    for n in 0..40 {
        bus_a.pusher_webhook(&app, client_event(n));
    }
    let got = events(&mut rx, &app, 41).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for event in &got {
        let key = format!("{}/{}", event["name"], event["data"]);
        *counts.entry(key).or_default() += 1;
    }
    assert_eq!(counts.len(), 41, "an event was delivered twice: {counts:?}");
    assert!(got.contains(&serde_json::json!({
        "name": "channel_occupied", "channel": "presence-lobby"
    })));
    assert!(got.contains(&serde_json::json!({
        "name": "client_event", "channel": "private-room", "event": "client-typing",
        "data": "7", "socket_id": "1.1"
    })));
    // Nothing more: no replica sends a second copy.
    let more = tokio::time::timeout(Duration::from_millis(1500), rx.hooks.recv()).await;
    assert!(
        more.is_err(),
        "a further POST came: {:?}",
        more.map(|h| h.map(|h| h.body))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_batch_again_until_it_accepts() {
    let mut rx = receiver(2).await;
    let app = app(&rx.url);
    let bus = Bus::memory().with_pusher_apps(Apps::from_apps(vec![app.clone()]).unwrap());
    let _server = TestServer::start(bus.clone(), config()).await;
    bus.pusher_webhook(&app, client_event(1));
    let got = events(&mut rx, &app, 1).await;
    assert_eq!(got[0]["data"], "1");
    assert_eq!(
        rx.requests.load(Ordering::SeqCst),
        3,
        "two failures, then the delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_keeps_failing_loses_that_batch_only() {
    let attempts = chorus_broker_api::webhooks::ATTEMPTS as usize;
    let mut rx = receiver(attempts).await;
    let app = app(&rx.url);
    let bus = Bus::memory().with_pusher_apps(Apps::from_apps(vec![app.clone()]).unwrap());
    let server = TestServer::start(bus.clone(), config()).await;
    bus.pusher_webhook(&app, client_event(1));
    // The first batch is given up on after every try; the next one is delivered.
    let start = tokio::time::Instant::now();
    while rx.requests.load(Ordering::SeqCst) < attempts {
        assert!(start.elapsed() < WAIT, "the tries did not all happen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus.pusher_webhook(&app, client_event(2));
    let got = events(&mut rx, &app, 1).await;
    assert_eq!(got, [serde_json::to_value(client_event(2)).unwrap()]);
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |line_start: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(value("chorus_api_webhook_events_total{result=\"failed\"}") >= 1.0);
    assert!(value("chorus_api_webhook_attempt_failures_total") >= attempts as f64);
}
