//! broker-api's `/metrics`: every metric exists and moves when its event happens.
//!
//! The recorder is process-global, so the checks compare scrapes before and after each event,
//! and the story runs as one test so that nothing else in the process moves the numbers.

mod common;

use std::time::Duration;

use bytes::Bytes;
use chorus_broker_api::metrics as m;
use chorus_bus::metrics as bus_m;
use chorus_bus::{Bus, BusConfig, MemoryBusConfig};
use chorus_protocol::api::{BroadcastRequest, PublishRequest};
use chorus_testkit::{Scrape, free_port};
use common::{KEY, TestServer, authed, config, http};
use serde_json::json;

fn publish_count(s: &Scrape, op: &str) -> f64 {
    s.value(&format!("{}_count", m::PUBLISH_LATENCY), &[("op", op)])
}

fn errors(s: &Scrape, code: &str) -> f64 {
    s.value(m::ERRORS, &[("code", code)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_api_metric_moves_when_its_event_happens() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let url = server.url("/metrics");
    // No API key needed.
    let before = Scrape::fetch(&url).await.unwrap();
    assert_eq!(before.kind(m::MESSAGES_PUBLISHED), Some("counter"));

    // HTTP and gRPC publishes: counted and timed as `publish`.
    let resp = http()
        .post(server.url("/api/publish"))
        .bearer_auth(KEY)
        .json(&json!({"channel": "news", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut grpc = server.grpc().await;
    let req = PublishRequest {
        channel: "news".into(),
        data: Bytes::from_static(b"2"),
        ..Default::default()
    };
    grpc.publish(authed(req, KEY)).await.unwrap();
    // A broadcast to three channels, one of them bad: two messages, one `broadcast`.
    let req = BroadcastRequest {
        channels: vec!["a".into(), "bad{name}".into(), "b".into()],
        data: Bytes::from_static(b"3"),
    };
    grpc.broadcast(authed(req, KEY)).await.unwrap();

    let s = Scrape::fetch(&url).await.unwrap();
    assert_eq!(
        s.value(m::MESSAGES_PUBLISHED, &[]),
        before.value(m::MESSAGES_PUBLISHED, &[]) + 4.0
    );
    assert_eq!(
        publish_count(&s, "publish"),
        publish_count(&before, "publish") + 2.0
    );
    assert_eq!(
        publish_count(&s, "broadcast"),
        publish_count(&before, "broadcast") + 1.0
    );
    assert_eq!(s.kind(m::PUBLISH_LATENCY), Some("histogram"));
    let fast = s.value(
        &format!("{}_bucket", m::PUBLISH_LATENCY),
        &[("op", "publish"), ("le", "10")],
    );
    assert_eq!(fast, publish_count(&s, "publish"));

    // Errors by code, over HTTP and gRPC.
    let resp = http()
        .post(server.url("/api/publish"))
        .bearer_auth("wrong-key")
        .json(&json!({"channel": "news", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let req = PublishRequest {
        channel: "bad{name}".into(),
        data: Bytes::from_static(b"x"),
        ..Default::default()
    };
    grpc.publish(authed(req, KEY)).await.unwrap_err();
    let s = Scrape::fetch(&url).await.unwrap();
    assert_eq!(
        errors(&s, "unauthorized"),
        errors(&before, "unauthorized") + 1.0
    );
    assert_eq!(
        errors(&s, "bad_channel"),
        errors(&before, "bad_channel") + 1.0
    );

    // The in-memory bus's size: news, a and b. A second, capped memory bus refuses a second
    // channel: counted as a `limit_exceeded` error and a refusal at the channel bound, and its
    // one channel adds to the gauge (the gauges sum over the process's memory buses).
    assert_eq!(s.kind(bus_m::MEMORY_CHANNELS), Some("gauge"));
    assert_eq!(s.value(bus_m::MEMORY_CHANNELS, &[]), 3.0);
    assert_eq!(s.value(bus_m::MEMORY_IDEMPOTENCY_KEYS, &[]), 0.0);
    let capped = Bus::memory_with(MemoryBusConfig {
        max_channels: 1,
        ..MemoryBusConfig::default()
    });
    let capped = TestServer::start(capped, config()).await;
    for (channel, status) in [("x", 200), ("y", 429)] {
        let resp = http()
            .post(capped.url("/api/publish"))
            .bearer_auth(KEY)
            .json(&json!({"channel": channel, "data": 1, "idempotency_key": channel}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{channel}");
    }
    let refused = |s: &Scrape| s.value(bus_m::MEMORY_REFUSED, &[("limit", "channels")]);
    let c = Scrape::fetch(&url).await.unwrap();
    assert_eq!(
        errors(&c, "limit_exceeded"),
        errors(&s, "limit_exceeded") + 1.0
    );
    assert_eq!(refused(&c), refused(&s) + 1.0);
    assert_eq!(c.value(bus_m::MEMORY_CHANNELS, &[]), 4.0);
    assert_eq!(c.value(bus_m::MEMORY_IDEMPOTENCY_KEYS, &[]), 1.0);
    drop(capped);

    // Building an error and converting it, even twice, answers no call: nothing is counted.
    let e = chorus_broker_api::error::ApiError::new(
        chorus_broker_api::error::ErrorCode::BadChannel,
        "converted, never sent",
    );
    drop((e.to_status(), e.to_status(), tonic::Status::from(e.clone())));
    drop(axum::response::IntoResponse::into_response(e));
    let after_converting = Scrape::fetch(&url).await.unwrap();
    assert_eq!(
        errors(&after_converting, "bad_channel"),
        errors(&s, "bad_channel")
    );

    // Redis unreachable: the publish fails as `unavailable` (counted, and timed); a failing
    // readiness probe is not an API error.
    let bus = Bus::redis(&BusConfig {
        redis_url: format!("redis://127.0.0.1:{}", free_port()),
        redis_timeout: Duration::from_millis(300),
        ..BusConfig::default()
    })
    .unwrap();
    let down = TestServer::start(bus, config().with_bus_timeout(&BusConfig::default())).await;
    let resp = http().get(down.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let resp = http()
        .post(down.url("/api/publish"))
        .bearer_auth(KEY)
        .json(&json!({"channel": "news", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let s = Scrape::fetch(&down.url("/metrics")).await.unwrap();
    assert_eq!(
        errors(&s, "unavailable"),
        errors(&before, "unavailable") + 1.0
    );
    // Timed: the three that succeeded, the bad channel, the refused one and the unavailable one.
    assert_eq!(
        publish_count(&s, "publish"),
        publish_count(&before, "publish") + 6.0
    );
    assert_eq!(
        s.value(m::MESSAGES_PUBLISHED, &[]),
        before.value(m::MESSAGES_PUBLISHED, &[]) + 5.0,
        "a failed publish is not a published message"
    );

    for name in m::ALL.iter().chain(bus_m::ALL) {
        assert!(s.has(name), "{name} is exported");
    }
}
