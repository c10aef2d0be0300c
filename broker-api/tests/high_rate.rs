//! High-rate publishing against a real Redis over real sockets: the gRPC publish stream and
//! batch, the HTTP batch, and pushback under overload (HTTP 429, gRPC RESOURCE_EXHAUSTED).

mod common;

use std::time::Duration;

use bytes::Bytes;
use chorus_bus::{Bus, BusConfig};
use chorus_protocol::api::publish_stream_result::Outcome;
use chorus_protocol::api::{PublishBatchRequest, PublishRequest};
use chorus_testkit::RedisServer;
use common::{KEY, TestServer, authed, config, http, post_json};
use serde_json::{Value, json};
use tonic::Code;

fn req(channel: &str, n: usize) -> PublishRequest {
    PublishRequest {
        channel: channel.into(),
        data: Bytes::from(n.to_string()),
        ..Default::default()
    }
}

fn redis_bus(redis: &RedisServer) -> Bus {
    Bus::redis(&BusConfig {
        redis_url: redis.url(),
        redis_timeout: Duration::from_secs(2),
        ..BusConfig::default()
    })
    .expect("bus")
}

#[tokio::test]
async fn a_publish_stream_answers_every_publication_in_order_and_fails_only_bad_ones() {
    let redis = RedisServer::start().unwrap();
    let server = TestServer::start(redis_bus(&redis), config()).await;
    let mut grpc = server.grpc().await;
    let mut requests: Vec<PublishRequest> = (0..600)
        .map(|i| req(if i % 2 == 0 { "even" } else { "odd" }, i))
        .collect();
    requests[301] = req("bad{channel}", 301);
    let stream = tokio_stream::iter(requests);
    let mut results = grpc
        .publish_stream(authed(stream, KEY))
        .await
        .unwrap()
        .into_inner();
    let (mut even, mut odd, mut failed) = (0u64, 0u64, Vec::new());
    let mut i = 0;
    while let Some(result) = results.message().await.unwrap() {
        match result.outcome {
            Some(Outcome::Published(p)) => {
                let last = if i % 2 == 0 { &mut even } else { &mut odd };
                assert_eq!(
                    p.offset,
                    *last + 1,
                    "publication {i}: offsets follow request order"
                );
                *last = p.offset;
            }
            Some(Outcome::Error(e)) => failed.push((i, e.code)),
            None => panic!("empty result"),
        }
        i += 1;
    }
    assert_eq!(i, 600, "one result per publication");
    assert_eq!(failed, vec![(301, "bad_channel".to_owned())]);
    assert_eq!((even, odd), (300, 299));
    // Everything is in history too.
    let hist = post_json(
        &server,
        "/api/history",
        &json!({"channel": "even", "limit": 1, "reverse": true}),
    )
    .await;
    assert_eq!(hist["offset"], 300);
}

#[tokio::test]
async fn batches_over_grpc_and_http_publish_in_one_pipeline_with_a_result_each() {
    let redis = RedisServer::start().unwrap();
    let server = TestServer::start(redis_bus(&redis), config()).await;
    let mut grpc = server.grpc().await;
    let batch = PublishBatchRequest {
        publications: vec![req("a", 1), req("a", 2), req("bad{", 3), req("b", 4)],
    };
    let results = grpc
        .publish_batch(authed(batch, KEY))
        .await
        .unwrap()
        .into_inner()
        .results;
    let offsets: Vec<Option<u64>> = results
        .iter()
        .map(|r| match &r.outcome {
            Some(Outcome::Published(p)) => Some(p.offset),
            _ => None,
        })
        .collect();
    assert_eq!(offsets, vec![Some(1), Some(2), None, Some(1)]);

    let batch = json!({"publications": [
        {"channel": "a", "data": {"n": 3}},
        {"channel": "a", "b64data": "!!"},
        {"channel": "b", "data": 5, "idempotency_key": "k1"},
        {"channel": "b", "data": 5, "idempotency_key": "k1"},
    ]});
    let body = post_json(&server, "/api/publish_batch", &batch).await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["offset"], 3);
    assert_eq!(results[1]["error"]["code"], "bad_request");
    assert_eq!(results[2]["offset"], 2);
    assert_eq!(
        results[3]["offset"], 2,
        "an idempotent retry answers the first offset"
    );
    assert_eq!(results[3]["duplicate"], true);
}

#[tokio::test]
async fn overload_is_pushed_back_with_429_and_resource_exhausted_not_queued() {
    let redis = RedisServer::start().unwrap();
    let mut cfg = config();
    cfg.max_inflight = 1;
    cfg.queue_wait = Duration::from_millis(20);
    let server = TestServer::start(redis_bus(&redis), cfg).await;
    // Warm the connection and the script, then pause Redis's writes: the next publish holds
    // the one slot until the pause ends.
    let mut grpc = server.grpc().await;
    grpc.publish(authed(req("x", 0), KEY)).await.unwrap();
    redis.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]).unwrap();
    let held = {
        let mut grpc = grpc.clone();
        tokio::spawn(async move { grpc.publish(authed(req("x", 1), KEY)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "the first publish waits for Redis");
    let started = std::time::Instant::now();
    let status = grpc.publish(authed(req("x", 2), KEY)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let resp = http()
        .post(server.url("/api/publish"))
        .bearer_auth(KEY)
        .json(&json!({"channel": "x", "data": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused promptly, not queued behind the stalled publish: {:?}",
        started.elapsed()
    );
    // The held publish completes once Redis wakes; then there is room again.
    assert!(held.await.unwrap().is_ok());
    grpc.publish(authed(req("x", 4), KEY)).await.unwrap();
}
