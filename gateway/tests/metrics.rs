//! The gateway's `/metrics`: every metric exists and moves when its event happens.
//!
//! The Prometheus recorder is process-global and every gateway of this process renders it, so
//! the checks compare scrapes taken before and after each event (deltas), and the whole story
//! runs as one test so that no other test in the process moves the same numbers meanwhile.

mod support;

use std::time::Duration;

use chorus_gateway::GatewayConfig;
use chorus_gateway::metrics as m;
use chorus_protocol::client::{self, command};
use chorus_protocol::wire::Format;
use chorus_testkit::{Scrape, WsClient, eventually};
use serde_json::json;
use support::{Cluster, MemoryGateway};

const WITHIN: Duration = Duration::from_secs(10);

/// Waits until a fresh scrape of `url` satisfies `check`; returns that scrape.
async fn scrape_until(url: &str, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let scrape = Scrape::fetch(url).await.expect("/metrics answers");
        if check(&scrape) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WITHIN:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn v(s: &Scrape, name: &str) -> f64 {
    s.value(name, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_metric_moves_when_its_event_happens() {
    let mut cluster = Cluster::start_with(
        1,
        GatewayConfig {
            queue_max_bytes: 64 * 1024,
            ..GatewayConfig::default()
        },
    )
    .await;
    let url = cluster.metrics_url(0);
    let on_client_port = reqwest::get(cluster.gateway_url(0, "/metrics"))
        .await
        .unwrap();
    assert_eq!(
        on_client_port.status(),
        404,
        "metrics are not served where clients connect"
    );
    let before = Scrape::fetch(&url).await.unwrap();
    assert_eq!(
        before.kind(m::CONNECTIONS_ACCEPTED),
        Some("counter"),
        "counters are described and exported from the start"
    );

    // A connection and a subscription.
    let (mut a, _) = WsClient::connect(&cluster.ws(0), Format::Json)
        .await
        .unwrap();
    a.subscribe("news").await.unwrap();
    let s = Scrape::fetch(&url).await.unwrap();
    assert_eq!(v(&s, m::CONNECTIONS), v(&before, m::CONNECTIONS) + 1.0);
    assert_eq!(
        v(&s, m::CONNECTIONS_ACCEPTED),
        v(&before, m::CONNECTIONS_ACCEPTED) + 1.0
    );
    assert_eq!(v(&s, m::SUBSCRIPTIONS), v(&before, m::SUBSCRIPTIONS) + 1.0);
    assert_eq!(v(&s, m::CHANNELS), v(&before, m::CHANNELS) + 1.0);

    // A publication received from the bus and delivered, with its latency.
    let count = format!("{}_count", m::DELIVERY_LATENCY);
    let resp = cluster.http_publish("news", json!({"n": 1})).await;
    assert_eq!(resp.status(), 200);
    a.next_publication().await.unwrap();
    // The writer counts the delivery and records its latency one after the other: a scrape
    // may fall between the two.
    let s = scrape_until(&url, "a delivery and its latency are recorded", |s| {
        v(s, m::MESSAGES_DELIVERED) > v(&before, m::MESSAGES_DELIVERED)
            && v(s, &count) > v(&before, &count)
    })
    .await;
    assert_eq!(
        v(&s, m::MESSAGES_RECEIVED),
        v(&before, m::MESSAGES_RECEIVED) + 1.0
    );
    assert_eq!(
        v(&s, m::MESSAGES_DELIVERED),
        v(&before, m::MESSAGES_DELIVERED) + 1.0
    );
    assert_eq!(v(&s, &count), v(&before, &count) + 1.0);
    let received = format!("{}_count", m::RECEIVE_LATENCY);
    assert_eq!(v(&s, &received), v(&before, &received) + 1.0);
    assert_eq!(s.kind(m::DELIVERY_LATENCY), Some("histogram"));
    let within_10s = s.value(&format!("{}_bucket", m::DELIVERY_LATENCY), &[("le", "10")]);
    assert_eq!(
        within_10s,
        v(&s, &count),
        "every delivery on loopback took under 10 s"
    );

    // An error reply, by code.
    let reply = a
        .request(command::Body::Subscribe(client::SubscribeRequest {
            channel: "bad{channel}".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(reply.error.map(|e| e.code), Some(102));
    let s = Scrape::fetch(&url).await.unwrap();
    assert_eq!(
        s.value(m::ERRORS, &[("code", "102")]),
        before.value(m::ERRORS, &[("code", "102")]) + 1.0
    );

    // A slow consumer is disconnected: 200 × 32 KiB is far more than its socket buffers and
    // 64 KiB queue hold.
    let mut stalled = WsClient::open_slow_reader(&cluster.ws(0), Format::Json)
        .await
        .unwrap();
    stalled.subscribe("firehose").await.unwrap();
    let big = "x".repeat(32 * 1024);
    for _ in 0..200 {
        let resp = cluster.http_publish("firehose", json!(big)).await;
        assert_eq!(resp.status(), 200);
    }
    stalled.drain_until_closed().await.unwrap();
    let closes_3002 = |s: &Scrape| s.value(m::CLOSES, &[("code", "3002")]);
    scrape_until(&url, "the slow consumer is counted", |s| {
        v(s, m::SLOW_CONSUMER_DISCONNECTS) == v(&before, m::SLOW_CONSUMER_DISCONNECTS) + 1.0
            && closes_3002(s) == closes_3002(&before) + 1.0
    })
    .await;

    // Bytes queued: a client that stops reading, on a gateway whose queue is large enough to
    // hold everything, leaves megabytes queued — until it goes away.
    let gw = MemoryGateway::start(GatewayConfig {
        queue_max_bytes: 64 << 20,
        ..GatewayConfig::default()
    })
    .await;
    chorus_testkit::wait_http_ok(&format!("http://{}/readyz", gw.addr), WITHIN)
        .await
        .unwrap();
    let queued_before = v(&Scrape::fetch(&url).await.unwrap(), m::QUEUED_BYTES);
    let mut reader = WsClient::open_slow_reader(&gw.ws(), Format::Protobuf)
        .await
        .unwrap();
    reader.subscribe("backlog").await.unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 32 * 1024]);
    for _ in 0..400 {
        gw.bus
            .publish(chorus_bus::Publish {
                channel: "backlog".into(),
                data: payload.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    scrape_until(&url, "megabytes are queued", |s| {
        v(s, m::QUEUED_BYTES) >= queued_before + f64::from(1 << 20)
    })
    .await;
    drop(reader);
    scrape_until(&url, "the queue is released with its client", |s| {
        v(s, m::QUEUED_BYTES) <= queued_before
    })
    .await;

    // The Redis link goes down, is counted as a reconnect, and comes back.
    let up = v(
        &Scrape::fetch(&url).await.unwrap(),
        chorus_bus::metrics::REDIS_LINK_UP,
    );
    assert!(up >= 1.0, "the gateway's Redis link is up");
    let reconnects = chorus_bus::metrics::REDIS_RECONNECTS;
    cluster.redis.stop();
    scrape_until(&url, "the link is down and a reconnect counted", |s| {
        v(s, chorus_bus::metrics::REDIS_LINK_UP) == up - 1.0
            && v(s, reconnects) > v(&before, reconnects)
    })
    .await;
    cluster.redis.restart().unwrap();
    scrape_until(&url, "the link is up again", |s| {
        v(s, chorus_bus::metrics::REDIS_LINK_UP) == up
    })
    .await;

    // The connection's end is seen in the gauges.
    drop(a);
    drop(stalled);
    drop(gw);
    let s = scrape_until(&url, "connections and subscriptions are released", |s| {
        v(s, m::CONNECTIONS) == v(&before, m::CONNECTIONS)
            && v(s, m::SUBSCRIPTIONS) == v(&before, m::SUBSCRIPTIONS)
            && v(s, m::CHANNELS) == v(&before, m::CHANNELS)
    })
    .await;

    for name in m::ALL {
        assert!(s.has(name), "{name} is exported");
    }
    // A draining gateway refuses upgrades, and says so.
    let refused = |s: &Scrape| s.value(m::UPGRADES_REFUSED, &[("reason", "draining")]);
    let draining = MemoryGateway::start(GatewayConfig {
        drain_window: Duration::from_secs(5),
        ..GatewayConfig::default()
    })
    .await;
    let before_drain = Scrape::fetch(&url).await.unwrap();
    draining.shut_down();
    eventually(WITHIN, "the draining gateway refuses an upgrade", || {
        let ws = draining.ws();
        async move { WsClient::open(&ws, Format::Json).await.is_err() }
    })
    .await
    .unwrap();
    scrape_until(&url, "the refusal is counted", |s| {
        refused(s) >= refused(&before_drain) + 1.0
    })
    .await;
    eventually(WITHIN, "readyz again", || async {
        reqwest::get(cluster.gateway_url(0, "/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
    .unwrap();
}
