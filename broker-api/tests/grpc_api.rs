//! The gRPC API over a real TCP connection (h2c) on the same port as HTTP (memory bus).

mod common;

use bytes::Bytes;
use chorus_bus::Bus;
use chorus_protocol::api::broadcast_result::Outcome;
use chorus_protocol::api::{BroadcastRequest, NodesRequest, PublishRequest};
use common::{KEY, OTHER_KEY, TestServer, attach_node, authed, config, http};
use serde_json::{Value, json};
use tonic::Code;

fn publish_req(channel: &str, data: &'static [u8]) -> PublishRequest {
    PublishRequest {
        channel: channel.into(),
        data: Bytes::from_static(data),
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_publish_continues_the_offsets_of_http_publishes_on_the_same_channel() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let resp = http()
        .post(server.url("/api/publish"))
        .bearer_auth(KEY)
        .json(&json!({"channel": "shared", "data": 1}))
        .send()
        .await
        .unwrap();
    let first: Value = resp.json().await.unwrap();
    assert_eq!(first["offset"], 1);

    let mut grpc = server.grpc().await;
    let second = grpc
        .publish(authed(publish_req("shared", b"\x00binary"), KEY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.offset, 2);
    assert_eq!(second.epoch, first["epoch"].as_str().unwrap());
}

#[tokio::test]
async fn grpc_without_key_is_unauthenticated() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let mut grpc = server.grpc().await;
    let status = grpc
        .publish(tonic::Request::new(publish_req("news", b"1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = grpc.nodes(NodesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn grpc_with_wrong_key_is_unauthenticated_and_any_configured_key_works() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let mut grpc = server.grpc().await;
    let status = grpc
        .publish(authed(publish_req("news", b"1"), "wrong"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    for key in [KEY, OTHER_KEY] {
        grpc.publish(authed(publish_req("news", b"1"), key))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn grpc_invalid_channel_is_invalid_argument() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let mut grpc = server.grpc().await;
    let status = grpc
        .publish(authed(publish_req("bad{name}", b"1"), KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.metadata().get("chorus-error-code").unwrap(),
        "bad_channel"
    );
}

#[tokio::test]
async fn grpc_oversized_data_is_invalid_argument_naming_the_limit() {
    let server = TestServer::memory_with(|c| c.max_data = 8).await;
    let mut grpc = server.grpc().await;
    let status = grpc
        .publish(authed(publish_req("news", b"123456789"), KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("limit is 8 bytes"), "{status:?}");
    assert_eq!(
        status.metadata().get("chorus-error-code").unwrap(),
        "too_large"
    );
}

#[tokio::test]
async fn grpc_message_over_the_body_limit_is_refused() {
    let server = TestServer::memory_with(|c| c.max_body = 1024).await;
    let mut grpc = server.grpc().await;
    let req = PublishRequest {
        channel: "news".into(),
        data: Bytes::from(vec![b'x'; 4096]),
        ..Default::default()
    };
    let status = grpc.publish(authed(req, KEY)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn grpc_broadcast_reports_each_channel_with_the_same_error_codes() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let mut grpc = server.grpc().await;
    let req = BroadcastRequest {
        channels: vec!["a".into(), "bad{name}".into(), "b".into()],
        data: Bytes::from_static(b"hi"),
    };
    let results = grpc
        .broadcast(authed(req, KEY))
        .await
        .unwrap()
        .into_inner()
        .results;
    let channels: Vec<_> = results.iter().map(|r| r.channel.as_str()).collect();
    assert_eq!(channels, ["a", "bad{name}", "b"]);
    assert!(matches!(&results[0].outcome, Some(Outcome::Published(p)) if p.offset == 1));
    assert!(matches!(&results[1].outcome, Some(Outcome::Error(e)) if e.code == "bad_channel"));
    assert!(matches!(&results[2].outcome, Some(Outcome::Published(p)) if p.offset == 1));

    let empty = BroadcastRequest {
        channels: vec![],
        data: Bytes::new(),
    };
    let status = grpc.broadcast(authed(empty, KEY)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn grpc_nodes_lists_an_attached_node_with_its_connection_count() {
    let bus = Bus::memory();
    let _link = attach_node(&bus, 42, &["c1"]);
    let server = TestServer::start(bus, config()).await;
    let mut grpc = server.grpc().await;
    let nodes = grpc
        .nodes(authed(NodesRequest {}, KEY))
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].id, "gateway-1");
    assert_eq!(nodes[0].address, "ws://127.0.0.1:9000/ws");
    assert_eq!(nodes[0].connections, 1);
    assert_eq!(nodes[0].started_at_ms, 42);
}
