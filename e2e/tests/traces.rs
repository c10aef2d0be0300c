//! One publication's trace across processes: a broker-api and a gateway started with
//! `--otlp-endpoint` export their spans over OTLP/HTTP to a collector in this test, and the
//! spans form one connected trace — broker-api's publish, its Redis step, the gateway's
//! receive and fan-out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use chorus_e2e::bin_dir;
use chorus_protocol::wire::Format;
use chorus_testkit::{Process, RedisServer, WsClient, eventually, free_port, wait_http_ok};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

type Received = Arc<Mutex<Vec<Span>>>;

async fn export(State(received): State<Received>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut spans = received.lock().expect("not poisoned");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for s in scope.spans {
                spans.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace: s.trace_id,
                    id: s.span_id,
                    parent: s.parent_span_id,
                });
            }
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// An OTLP/HTTP collector on a free port; returns its base URL and what it received.
async fn collector() -> (String, Received) {
    let received = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(export))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_is_one_trace_from_broker_api_through_redis_to_the_gateway() {
    let (endpoint, received) = collector().await;
    let redis = RedisServer::start().expect("redis-server starts");
    let bins = bin_dir();
    // The exporters send every 100 ms instead of every 5 s; logs stay quiet.
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "100"), ("RUST_LOG", "warn")];
    let (api_port, gw_port) = (free_port(), free_port());
    let _api = Process::spawn(
        bins.join("chorus-broker-api").to_str().unwrap(),
        &[
            "--api-listen".into(),
            format!("127.0.0.1:{api_port}"),
            "--api-key".into(),
            "k".into(),
            "--redis-url".into(),
            redis.url(),
            "--otlp-endpoint".into(),
            endpoint.clone(),
        ],
        &env,
    )
    .expect("broker-api starts");
    let _gateway = Process::spawn(
        bins.join("chorus-gateway").to_str().unwrap(),
        &[
            "--gateway-listen".into(),
            format!("127.0.0.1:{gw_port}"),
            "--metrics-listen".into(),
            "off".into(),
            "--redis-url".into(),
            redis.url(),
            "--otlp-endpoint".into(),
            endpoint,
            "--trace-sample-ratio".into(),
            "1".into(),
        ],
        &env,
    )
    .expect("gateway starts");
    for url in [
        format!("http://127.0.0.1:{api_port}/readyz"),
        format!("http://127.0.0.1:{gw_port}/readyz"),
    ] {
        wait_http_ok(&url, Duration::from_secs(15))
            .await
            .expect("ready");
    }
    let (mut client, _) = WsClient::connect(&format!("ws://127.0.0.1:{gw_port}/ws"), Format::Json)
        .await
        .expect("connects");
    client.subscribe("traced").await.expect("subscribes");
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{api_port}/api/publish"))
        .bearer_auth("k")
        .json(&serde_json::json!({"channel": "traced", "data": {"n": 1}}))
        .send()
        .await
        .expect("publishes");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        client.next_publication().await.expect("delivered").offset,
        1
    );

    let find = |spans: &[Span], name: &str| spans.iter().find(|s| s.name == name).cloned();
    eventually(Duration::from_secs(15), "every span exported", || {
        let received = received.clone();
        async move {
            let spans = received.lock().unwrap().clone();
            [
                "broker_api.publish",
                "redis.publish",
                "gateway.receive",
                "gateway.fanout",
            ]
            .iter()
            .all(|n| find(&spans, n).is_some())
        }
    })
    .await
    .expect("spans arrive");
    let spans = received.lock().unwrap().clone();
    let by_name: HashMap<&str, Span> = [
        "broker_api.publish",
        "redis.publish",
        "gateway.receive",
        "gateway.fanout",
    ]
    .into_iter()
    .map(|n| (n, find(&spans, n).expect("exported")))
    .collect();
    let publish = &by_name["broker_api.publish"];
    let redis_step = &by_name["redis.publish"];
    let receive = &by_name["gateway.receive"];
    let fanout = &by_name["gateway.fanout"];
    assert_eq!(publish.service, "chorus-broker-api");
    assert_eq!(receive.service, "chorus-gateway");
    for span in [redis_step, receive, fanout] {
        assert_eq!(
            span.trace, publish.trace,
            "{} is in the publish's trace",
            span.name
        );
    }
    assert!(publish.parent.is_empty(), "the publish is the trace's root");
    assert_eq!(
        redis_step.parent, publish.id,
        "the Redis step is the publish's child"
    );
    assert_eq!(
        receive.parent, redis_step.id,
        "the gateway continues from the Redis step"
    );
    assert_eq!(
        fanout.parent, receive.id,
        "the fan-out is the receive's child"
    );
}

#[test]
fn a_bad_trace_setting_stops_the_binary_with_a_clear_error() {
    let out = std::process::Command::new(bin_dir().join("chorus-broker-api"))
        .args(["--api-key", "k", "--trace-sample-ratio", "2"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("between 0 and 1"), "{stderr}");
}
