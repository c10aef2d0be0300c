//! Redis going away and coming back, with the real Redis bus and a real redis-server.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_bus::{Bus, BusConfig};
use chorus_protocol::api::PublishRequest;
use chorus_testkit::RedisServer;
use common::{KEY, TestServer, authed, config, http};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

async fn http_publish(server: &TestServer) -> (StatusCode, Value) {
    let resp = http()
        .post(server.url("/api/publish"))
        .bearer_auth(KEY)
        .json(&json!({"channel": "news", "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

fn news_publish() -> PublishRequest {
    PublishRequest {
        channel: "news".into(),
        data: Bytes::from_static(b"1"),
        ..Default::default()
    }
}

/// A gRPC publish, which must fail UNAVAILABLE; how long the answer took.
async fn grpc_publish_unavailable(server: &TestServer) -> Duration {
    let mut grpc = server.grpc().await;
    let started = Instant::now();
    let status = grpc.publish(authed(news_publish(), KEY)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    started.elapsed()
}

/// Publishes until one succeeds, each failure being `unavailable`, before `deadline`.
async fn publish_until_ok(server: &TestServer, deadline: Instant, when: &str) -> Value {
    loop {
        let (status, body) = http_publish(server).await;
        if status == StatusCode::OK {
            return body;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            Instant::now() < deadline,
            "publish still failing {when}: {body}"
        );
        // Polling a service that comes back on its own schedule: there is no event to await.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A broker-api on a Redis bus with the short test timeout.
async fn server_on(redis: &RedisServer) -> TestServer {
    let bus_config = BusConfig {
        redis_url: redis.url(),
        redis_timeout: REDIS_TIMEOUT,
        ..BusConfig::default()
    };
    let bus = Bus::redis(&bus_config).unwrap();
    TestServer::start(bus, config().with_bus_timeout(&bus_config)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_answers_503_and_unavailable_then_recovers() {
    let mut redis = RedisServer::start().unwrap();
    let server = server_on(&redis).await;
    let bound = REDIS_TIMEOUT + Duration::from_secs(1);

    let (status, body) = http_publish(&server).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ready = http().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    tokio::task::block_in_place(|| redis.stop());

    let started = Instant::now();
    let (status, body) = http_publish(&server).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(took <= bound, "HTTP publish took {took:?} with Redis down");

    let took = grpc_publish_unavailable(&server).await;
    assert!(took <= bound, "gRPC publish took {took:?} with Redis down");

    let started = Instant::now();
    let ready = http().get(server.url("/readyz")).send().await.unwrap();
    assert!(
        started.elapsed() <= bound,
        "/readyz took {:?}",
        started.elapsed()
    );
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    tokio::task::block_in_place(|| redis.restart()).unwrap();

    // The bus reconnects on its own; poll until a publish goes through again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = publish_until_ok(&server, deadline, "after Redis restart").await;
    assert!(body["offset"].as_u64().is_some_and(|o| o >= 1), "{body}");
    server
        .grpc()
        .await
        .publish(authed(news_publish(), KEY))
        .await
        .unwrap();
    let ready = http().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

/// A Redis that accepts connections but stops answering (paused clients) exercises the
/// timeouts rather than a fast "connection refused".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_that_stops_answering_gets_503_within_the_timeout_then_recovers() {
    let redis = RedisServer::start().unwrap();
    let server = server_on(&redis).await;
    let bound = REDIS_TIMEOUT + Duration::from_secs(1);
    let (status, body) = http_publish(&server).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Redis holds every command of every normal client for 3 s.
    let paused_at = Instant::now();
    tokio::task::block_in_place(|| redis.cli(&["CLIENT", "PAUSE", "3000", "ALL"])).unwrap();

    let (status, body) = http_publish(&server).await;
    let took = paused_at.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        took <= bound,
        "HTTP publish took {took:?} with Redis paused"
    );

    let took = grpc_publish_unavailable(&server).await;
    assert!(
        took <= bound,
        "gRPC publish took {took:?} with Redis paused"
    );

    // Once the pause ends, publishing works again.
    let deadline = Instant::now() + Duration::from_secs(15);
    publish_until_ok(&server, deadline, "after the pause").await;
}

/// Shutdown lets a request that is waiting on the bus finish: a publish held up by a paused
/// Redis still gets its answer (and its offset) although the server was told to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_a_publish_that_is_in_flight() {
    let redis = RedisServer::start().unwrap();
    let server = server_on(&redis).await;
    let url = server.url("/api/publish");
    redis.cli(&["CLIENT", "PAUSE", "400", "ALL"]).unwrap();
    let in_flight = tokio::spawn(async move {
        http()
            .post(url)
            .bearer_auth(KEY)
            .json(&json!({"channel": "news", "data": "late"}))
            .send()
            .await
    });
    // Not synchronisation of the outcome: if the request had not reached the server yet, it
    // would be refused and the test would fail, never pass by accident. 100 ms is ample on
    // loopback for a request to be accepted and wait on the paused Redis.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = tokio::spawn(server.stop());
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["offset"], 1);
    stopped.await.unwrap().unwrap();
}
