//! Bad input from a client gets its exact answer and, where the protocol allows, leaves the
//! connection usable.

mod support;

use std::time::Duration;

use chorus_gateway::GatewayConfig;
use chorus_protocol::client::{self, command, push, server_frame};
use chorus_protocol::codes::{ErrorCode, close};
use chorus_protocol::wire::Format;
use chorus_testkit::WsClient;
use support::MemoryGateway;
use tokio_tungstenite::tungstenite::Message;

async fn connected(gw: &MemoryGateway, format: Format) -> WsClient {
    WsClient::connect(&gw.ws(), format)
        .await
        .expect("connects")
        .0
}

/// Sends a raw WebSocket message and returns the reply it produced.
async fn raw_reply(c: &mut WsClient, msg: Message) -> client::Reply {
    c.send_message(msg).await.unwrap();
    match c.next_frame().await.unwrap().frame {
        Some(server_frame::Frame::Reply(r)) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

async fn raw_text_reply(c: &mut WsClient, text: &str) -> client::Reply {
    raw_reply(c, Message::Text(text.into())).await
}

async fn still_usable(c: &mut WsClient) {
    c.ok(command::Body::Ping(client::PingRequest {}))
        .await
        .expect("connection still answers commands");
}

fn code(reply: &client::Reply) -> u32 {
    reply.error.as_ref().map_or(0, |e| e.code)
}

#[tokio::test]
async fn invalid_json_gets_bad_request_and_the_connection_stays_usable() {
    let gw = MemoryGateway::start(GatewayConfig::default()).await;
    let mut c = connected(&gw, Format::Json).await;
    let reply = raw_text_reply(&mut c, "{this is not json").await;
    assert_eq!((reply.id, code(&reply)), (0, ErrorCode::BadRequest.code()));
    let reply = raw_text_reply(&mut c, r#"{"id":7,"subscribe":{"chan":"x"}}"#).await;
    assert_eq!((reply.id, code(&reply)), (7, ErrorCode::BadRequest.code()));
    still_usable(&mut c).await;
}

#[tokio::test]
async fn unknown_command_gets_unknown_command() {
    let gw = MemoryGateway::start(GatewayConfig::default()).await;
    let mut c = connected(&gw, Format::Json).await;
    let reply = raw_text_reply(&mut c, r#"{"id":3,"teleport":{}}"#).await;
    assert_eq!(
        (reply.id, code(&reply)),
        (3, ErrorCode::UnknownCommand.code())
    );
    still_usable(&mut c).await;
}

#[tokio::test]
async fn binary_frame_on_a_json_connection_gets_wrong_frame_type() {
    let gw = MemoryGateway::start(GatewayConfig::default()).await;
    let mut c = connected(&gw, Format::Json).await;
    let reply = raw_reply(&mut c, Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(code(&reply), ErrorCode::WrongFrameType.code());
    still_usable(&mut c).await;
}

#[tokio::test]
async fn text_frame_on_a_protobuf_connection_gets_wrong_frame_type() {
    let gw = MemoryGateway::start(GatewayConfig::default()).await;
    let mut c = connected(&gw, Format::Protobuf).await;
    let reply = raw_reply(&mut c, Message::Text(r#"{"id":1,"ping":{}}"#.into())).await;
    assert_eq!(code(&reply), ErrorCode::WrongFrameType.code());
    still_usable(&mut c).await;
}

#[tokio::test]
async fn invalid_protobuf_gets_bad_request() {
    let gw = MemoryGateway::start(GatewayConfig::default()).await;
    let mut c = connected(&gw, Format::Protobuf).await;
    let reply = raw_reply(&mut c, Message::Binary(vec![0xff, 0xff, 0xff, 0xff].into())).await;
    assert_eq!(code(&reply), ErrorCode::BadRequest.code());
    still_usable(&mut c).await;
}

#[tokio::test]
async fn invalid_channel_name_gets_bad_channel() {
    let gw = MemoryGateway::start(GatewayConfig::default()).await;
    let mut c = connected(&gw, Format::Json).await;
    for bad in ["", "has space", "a{b}", "Chat:x"] {
        let reply = c
            .request(command::Body::Subscribe(client::SubscribeRequest {
                channel: bad.into(),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(code(&reply), ErrorCode::BadChannel.code(), "{bad:?}");
    }
    still_usable(&mut c).await;
}

#[tokio::test]
async fn commands_before_connect_get_not_connected() {
    let gw = MemoryGateway::start(GatewayConfig::default()).await;
    let mut c = WsClient::open(&gw.ws(), Format::Json).await.unwrap();
    let reply = c
        .request(command::Body::Subscribe(client::SubscribeRequest {
            channel: "news".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(code(&reply), ErrorCode::NotConnected.code());
    c.ok(command::Body::Connect(client::ConnectRequest::default()))
        .await
        .unwrap();
    let reply = c
        .request(command::Body::Connect(client::ConnectRequest::default()))
        .await
        .unwrap();
    assert_eq!(code(&reply), ErrorCode::AlreadyConnected.code());
}

#[tokio::test]
async fn subscribing_twice_and_past_the_channel_limit_are_refused_and_keep_existing_subscriptions()
{
    let config = GatewayConfig {
        max_channels_per_connection: 2,
        ..GatewayConfig::default()
    };
    let gw = MemoryGateway::start(config).await;
    let mut c = connected(&gw, Format::Json).await;
    c.subscribe("a").await.unwrap();
    let sub = |ch: &str| {
        command::Body::Subscribe(client::SubscribeRequest {
            channel: ch.into(),
            ..Default::default()
        })
    };
    assert_eq!(
        code(&c.request(sub("a")).await.unwrap()),
        ErrorCode::AlreadySubscribed.code()
    );
    c.subscribe("b").await.unwrap();
    assert_eq!(
        code(&c.request(sub("c")).await.unwrap()),
        ErrorCode::LimitExceeded.code()
    );
    // "a" still delivers.
    gw.bus
        .publish(chorus_bus::Publish {
            channel: "a".into(),
            data: bytes::Bytes::from_static(b"1"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(c.next_publication().await.unwrap().channel, "a");
}

#[tokio::test]
async fn client_publish_outside_the_allowed_namespaces_is_denied() {
    let gw = MemoryGateway::start(GatewayConfig::default()).await;
    let mut c = connected(&gw, Format::Json).await;
    let reply = c
        .request(command::Body::Publish(client::PublishRequest {
            channel: "news".into(),
            data: bytes::Bytes::from_static(b"1"),
            echo: false,
        }))
        .await
        .unwrap();
    assert_eq!(code(&reply), ErrorCode::PermissionDenied.code());
    c.publish("chat:x", b"1")
        .await
        .expect("chat namespace allows client publish");
}

#[tokio::test]
async fn message_over_the_size_limit_closes_with_1009() {
    let config = GatewayConfig {
        max_message_size: 1024,
        ..GatewayConfig::default()
    };
    let gw = MemoryGateway::start(config).await;
    let mut c = connected(&gw, Format::Json).await;
    let big = format!(
        r#"{{"id":1,"publish":{{"channel":"chat:x","data":"{}"}}}}"#,
        "x".repeat(2000)
    );
    c.send_message(Message::Text(big.into())).await.unwrap();
    assert_eq!(c.closed().await.unwrap().code, close::MESSAGE_TOO_BIG);
}

#[tokio::test]
async fn fragmented_message_over_the_size_limit_closes_with_1009() {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let config = GatewayConfig {
        max_message_size: 1024,
        ..GatewayConfig::default()
    };
    let gw = MemoryGateway::start(config).await;
    let mut c = connected(&gw, Format::Json).await;
    let part = vec![b'x'; 600];
    let first = Frame::message(part.clone(), OpCode::Data(Data::Text), false);
    let rest = Frame::message(part, OpCode::Data(Data::Continue), false);
    c.send_message(Message::Frame(first)).await.unwrap();
    c.send_message(Message::Frame(rest)).await.unwrap();
    assert_eq!(c.closed().await.unwrap().code, close::MESSAGE_TOO_BIG);
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_idle_timeout() {
    let config = GatewayConfig {
        idle_timeout: Duration::from_millis(300),
        ping_interval: Duration::from_secs(60),
        ..GatewayConfig::default()
    };
    let gw = MemoryGateway::start(config).await;
    let mut c = connected(&gw, Format::Json).await;
    let closed = c.closed().await.unwrap();
    assert_eq!(closed.code, close::IDLE_TIMEOUT);
}

#[tokio::test]
async fn client_answering_pings_outlives_the_idle_timeout() {
    let config = GatewayConfig {
        idle_timeout: Duration::from_millis(400),
        ping_interval: Duration::from_millis(100),
        ..GatewayConfig::default()
    };
    let gw = MemoryGateway::start(config).await;
    let mut c = connected(&gw, Format::Json).await;
    // Ten pings span 2.5 idle timeouts; the client's automatic pongs keep it alive.
    c.wait_pings(10).await.unwrap();
    still_usable(&mut c).await;
}

#[tokio::test]
async fn shutdown_sends_a_reconnect_disconnect_push_and_closes_with_3000() {
    let gw = MemoryGateway::start(GatewayConfig {
        drain_window: Duration::from_millis(200),
        ..GatewayConfig::default()
    })
    .await;
    let mut c = connected(&gw, Format::Json).await;
    gw.shut_down();
    match c.next_frame().await.unwrap().frame {
        Some(server_frame::Frame::Push(client::Push {
            body: Some(push::Body::Disconnect(d)),
        })) => {
            assert_eq!(d.code, u32::from(close::SHUTDOWN));
            assert!(d.reconnect);
        }
        other => panic!("expected a disconnect push, got {other:?}"),
    }
    assert_eq!(c.closed().await.unwrap().code, close::SHUTDOWN);
}

#[tokio::test]
async fn client_close_is_echoed_with_its_code() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let gw = MemoryGateway::start(GatewayConfig::default()).await;
    let mut c = connected(&gw, Format::Json).await;
    c.send_message(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    assert_eq!(c.closed().await.unwrap().code, close::NORMAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_others_get_everything() {
    let config = GatewayConfig {
        queue_max_bytes: 64 * 1024,
        ..GatewayConfig::default()
    };
    let gw = MemoryGateway::start(config).await;
    let mut stalled = WsClient::open_slow_reader(&gw.ws(), Format::Protobuf)
        .await
        .unwrap();
    stalled.subscribe("firehose").await.unwrap();
    let mut healthy = connected(&gw, Format::Protobuf).await;
    healthy.subscribe("firehose").await.unwrap();

    // 400 × 32 KiB = 12.5 MiB: far more than the stalled client's socket buffers and its 64 KiB
    // queue can hold. Each message is published only after the healthy client received the
    // previous one, so only the stalled client falls behind.
    const N: u64 = 400;
    let payload = bytes::Bytes::from(vec![7u8; 32 * 1024]);
    for i in 1..=N {
        gw.bus
            .publish(chorus_bus::Publish {
                channel: "firehose".into(),
                data: payload.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(healthy.next_publication().await.unwrap().offset, i);
    }
    let got = stalled.drain_until_closed().await.unwrap();
    assert!(
        got < N as usize,
        "the stalled client was cut off, after {got} of {N}"
    );
    still_usable(&mut healthy).await;
}
