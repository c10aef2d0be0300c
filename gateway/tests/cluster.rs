//! End-to-end: a real Redis, a broker-api and two gateways; real WebSocket, HTTP and gRPC
//! clients over loopback.

mod support;

use std::time::Duration;

use chorus_protocol::api;
use chorus_protocol::wire::Format;
use chorus_testkit::{WsClient, eventually};
use serde_json::{Value, json};
use support::{Cluster, authed};

async fn connected(url: &str, format: Format) -> WsClient {
    WsClient::connect(url, format)
        .await
        .expect("client connects")
        .0
}

fn json_of(data: &[u8]) -> Value {
    serde_json::from_slice(data).expect("publication data is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_both_gateways_receive_http_and_grpc_publishes_with_consecutive_offsets() {
    let cluster = Cluster::start(2).await;
    let mut a = connected(&cluster.ws(0), Format::Json).await;
    let mut b = connected(&cluster.ws(1), Format::Json).await;
    a.subscribe("news").await.unwrap();
    b.subscribe("news").await.unwrap();

    let resp = cluster.http_publish("news", json!({"n": 1})).await;
    assert_eq!(resp.status(), 200);
    let first: Value = resp.json().await.unwrap();
    let reply = cluster
        .grpc()
        .await
        .publish(authed(api::PublishRequest {
            channel: "news".into(),
            data: br#"{"n":2}"#.to_vec().into(),
            ..Default::default()
        }))
        .await
        .expect("gRPC publish")
        .into_inner();
    assert_eq!(first["offset"], 1);
    assert_eq!(reply.offset, 2);
    assert_eq!(first["epoch"], reply.epoch.as_str());

    for client in [&mut a, &mut b] {
        let p1 = client.next_publication().await.unwrap();
        let p2 = client.next_publication().await.unwrap();
        assert_eq!((p1.channel.as_str(), p1.offset, p2.offset), ("news", 1, 2));
        assert_eq!(json_of(&p1.data), json!({"n": 1}));
        assert_eq!(json_of(&p2.data), json!({"n": 2}));
        assert_eq!(p1.epoch, reply.epoch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publish_reaches_every_other_subscriber_but_not_the_sender() {
    let cluster = Cluster::start(2).await;
    let mut a = connected(&cluster.ws(0), Format::Json).await;
    let mut b = connected(&cluster.ws(0), Format::Json).await;
    let mut c = connected(&cluster.ws(1), Format::Json).await;
    for client in [&mut a, &mut b, &mut c] {
        client.subscribe("chat:room").await.unwrap();
    }

    let sent = a
        .publish("chat:room", br#"{"text":"hi from a"}"#)
        .await
        .unwrap();
    for client in [&mut b, &mut c] {
        let p = client.next_publication().await.unwrap();
        assert_eq!(p.offset, sent.offset);
        assert_eq!(json_of(&p.data), json!({"text": "hi from a"}));
    }
    // A's own message must not come back: the next thing A receives is B's later message.
    let later = b
        .publish("chat:room", br#"{"text":"hi from b"}"#)
        .await
        .unwrap();
    let p = a.next_publication().await.unwrap();
    assert_eq!(p.offset, later.offset);
    assert_eq!(json_of(&p.data), json!({"text": "hi from b"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_and_the_last_one_releases_the_redis_subscription() {
    // Two gateways, clients only on the first: only the first subscribes in Redis.
    let cluster = Cluster::start(2).await;
    let mut a = connected(&cluster.ws(0), Format::Json).await;
    let mut b = connected(&cluster.ws(0), Format::Json).await;
    a.subscribe("news").await.unwrap();
    b.subscribe("news").await.unwrap();
    let pubsub = |redis: &chorus_testkit::RedisServer| {
        redis.cli(&["PUBSUB", "CHANNELS", "chorus.pub.*"]).unwrap()
    };
    assert_eq!(
        pubsub(&cluster.redis),
        vec!["chorus.pub.{news}".to_string()]
    );
    let numsub = cluster
        .redis
        .cli(&["PUBSUB", "NUMSUB", "chorus.pub.{news}"])
        .unwrap();
    assert_eq!(
        numsub,
        vec!["chorus.pub.{news}".to_string(), "1".to_string()]
    );

    a.unsubscribe("news").await.unwrap();
    assert_eq!(pubsub(&cluster.redis).len(), 1, "B still needs the channel");
    cluster.http_publish("news", json!("after a left")).await;
    assert_eq!(
        json_of(&b.next_publication().await.unwrap().data),
        json!("after a left")
    );
    // A gets nothing more from news: its next publication is from a channel it still has.
    a.subscribe("other").await.unwrap();
    cluster.http_publish("other", json!("marker")).await;
    let p = a.next_publication().await.unwrap();
    assert_eq!(
        (p.channel.as_str(), json_of(&p.data)),
        ("other", json!("marker"))
    );

    b.unsubscribe("news").await.unwrap();
    eventually(
        Duration::from_secs(5),
        "news leaves PUBSUB CHANNELS",
        || {
            let channels = pubsub(&cluster.redis);
            async move { !channels.iter().any(|c| c == "chorus.pub.{news}") }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_protobuf_clients_receive_the_same_publication() {
    let cluster = Cluster::start(1).await;
    let mut j = connected(&cluster.ws(0), Format::Json).await;
    let mut p = connected(&cluster.ws(0), Format::Protobuf).await;
    j.subscribe("mixed").await.unwrap();
    p.subscribe("mixed").await.unwrap();
    cluster.http_publish("mixed", json!({"k": [1, 2, 3]})).await;
    let from_json = j.next_publication().await.unwrap();
    let from_proto = p.next_publication().await.unwrap();
    assert_eq!(from_json.offset, from_proto.offset);
    assert_eq!(from_json.epoch, from_proto.epoch);
    assert_eq!(json_of(&from_json.data), json_of(&from_proto.data));
    assert_eq!(&from_proto.data[..], br#"{"k":[1,2,3]}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_publish_and_readiness_and_both_recover_when_it_returns() {
    let mut cluster = Cluster::start(1).await;
    let mut a = connected(&cluster.ws(0), Format::Json).await;
    a.subscribe("news").await.unwrap();

    cluster.redis.stop();
    let started = std::time::Instant::now();
    let resp = cluster.http_publish("news", json!(1)).await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered in {:?}",
        started.elapsed()
    );
    let status = cluster
        .grpc()
        .await
        .publish(authed(api::PublishRequest {
            channel: "news".into(),
            data: b"1".to_vec().into(),
            ..Default::default()
        }))
        .await
        .expect_err("publish fails while Redis is down");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let readyz = cluster.gateway_url(0, "/readyz");
    eventually(Duration::from_secs(5), "gateway /readyz fails", || {
        let url = readyz.clone();
        async move { reqwest::get(url).await.is_ok_and(|r| r.status() == 503) }
    })
    .await
    .unwrap();

    cluster.redis.restart().unwrap();
    eventually(Duration::from_secs(10), "gateway /readyz recovers", || {
        let url = readyz.clone();
        async move { reqwest::get(url).await.is_ok_and(|r| r.status() == 200) }
    })
    .await
    .unwrap();
    let resp = cluster.http_publish("news", json!("back")).await;
    assert_eq!(resp.status(), 200);
    // The gateway resubscribed: the client that stayed connected receives it.
    let p = a.next_publication().await.unwrap();
    assert_eq!(json_of(&p.data), json!("back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_broadcast_reaches_subscribers_of_every_channel_on_every_gateway() {
    let cluster = Cluster::start(2).await;
    let mut a = connected(&cluster.ws(0), Format::Json).await;
    let mut b = connected(&cluster.ws(1), Format::Protobuf).await;
    a.subscribe("alerts:eu").await.unwrap();
    b.subscribe("alerts:us").await.unwrap();

    let resp = reqwest::Client::new()
        .post(cluster.api_url("/api/broadcast"))
        .bearer_auth(support::API_KEY)
        .json(
            &json!({"channels": ["alerts:eu", "alerts:us", "bad name"], "data": {"level": "high"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["offset"], 1);
    assert_eq!(results[1]["offset"], 1);
    assert_eq!(results[2]["error"]["code"], "bad_channel");

    let pa = a.next_publication().await.unwrap();
    let pb = b.next_publication().await.unwrap();
    assert_eq!(
        (pa.channel.as_str(), pb.channel.as_str()),
        ("alerts:eu", "alerts:us")
    );
    assert_eq!(json_of(&pa.data), json!({"level": "high"}));
    assert_eq!(json_of(&pb.data), json!({"level": "high"}));
}
