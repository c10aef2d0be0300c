//! The user-level server API end to end: disconnect, server-side subscribe and unsubscribe,
//! the `subs` claim, personal channels and the channels list, over HTTP and gRPC, against a
//! real Redis and two gateways.

mod support;

use std::time::{Duration, Instant};

use chorus_bus::Namespaces;
use chorus_client::{Client, Event};
use chorus_gateway::GatewayConfig;
use chorus_gateway::config::Secret;
use chorus_protocol::api;
use chorus_protocol::client::{self, command, push};
use chorus_protocol::codes::ErrorCode;
use chorus_protocol::wire::Format;
use chorus_testkit::WsClient;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use support::{API_KEY, Cluster, authed};

const SECRET: &str = "test-only-hmac-secret-0123456789abcdef";

fn cluster_config() -> (GatewayConfig, Namespaces) {
    let config = GatewayConfig {
        token_hmac_secret: Some(Secret(SECRET.into())),
        allow_anonymous: true,
        ..GatewayConfig::default()
    };
    let namespaces = Namespaces::parse(
        r#"
[default]
anonymous_subscribe = true

[namespace.user]
personal_channel = true

[namespace.room]
anonymous_subscribe = true
"#,
    )
    .expect("valid namespaces");
    (config, namespaces)
}

async fn cluster() -> Cluster {
    let (config, namespaces) = cluster_config();
    Cluster::start_full(2, config, namespaces, false).await
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token signs")
}

/// A connection of `user`, once its personal channel's `subscribe` push came.
async fn as_user(url: &str, user: &str) -> (WsClient, String) {
    let (mut c, r) = WsClient::connect_with(url, Format::Json, &token(json!({"sub": user})))
        .await
        .expect("connects");
    match c.next_push().await.expect("a push") {
        push::Body::Subscribe(s) => assert_eq!(s.channel, format!("user:#{user}")),
        other => panic!("expected the personal channel, got {other:?}"),
    }
    (c, r.client)
}

async fn post(cluster: &Cluster, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(cluster.api_url(path))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("HTTP answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_a_users_connections_on_every_gateway_with_the_given_code() {
    let cluster = cluster().await;
    let (mut a0, _) = as_user(&cluster.ws(0), "alice").await;
    let (mut a1, _) = as_user(&cluster.ws(1), "alice").await;
    let (mut bob, _) = as_user(&cluster.ws(1), "bob").await;
    bob.subscribe("news").await.unwrap();

    let (status, body) = post(
        &cluster,
        "/api/disconnect",
        json!({"user": "alice", "code": 4101, "reason": "banned", "reconnect": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"], 2);
    assert_eq!(body["nodes"], 2);
    assert_eq!(body["answered"], 2);
    for c in [&mut a0, &mut a1] {
        match c.next_push().await.unwrap() {
            push::Body::Disconnect(d) => {
                assert_eq!(
                    (d.code, d.reason.as_str(), d.reconnect),
                    (4101, "banned", false)
                );
            }
            other => panic!("expected a disconnect push, got {other:?}"),
        }
        let closed = c.closed().await.unwrap();
        assert_eq!(closed.code, 4101);
    }
    // Bob is untouched.
    cluster.http_publish("news", json!({"still": "here"})).await;
    assert_eq!(bob.next_publication().await.unwrap().offset, 1);

    // Nobody left to disconnect: a clear 404, over HTTP and gRPC.
    let (status, body) = post(&cluster, "/api/disconnect", json!({"user": "alice"})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_connected");
    let status = cluster
        .grpc()
        .await
        .disconnect(authed(api::DisconnectRequest {
            user: "alice".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_without_reconnect_stops_the_rust_client_and_one_client_id_can_be_named() {
    let cluster = cluster().await;
    let (client, mut events) = Client::builder(cluster.ws(0))
        .token(token(json!({"sub": "carol"})))
        .connect()
        .unwrap();
    let id = loop {
        match next_event(&mut events).await {
            Event::Connected { client, .. } => break client,
            Event::ConnectFailed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let (mut other_carol, _) = as_user(&cluster.ws(1), "carol").await;
    let resp = cluster
        .grpc()
        .await
        .disconnect(authed(api::DisconnectRequest {
            user: "carol".into(),
            client: id,
            code: 4200,
            reason: "one of them".into(),
            reconnect: false,
        }))
        .await
        .expect("gRPC disconnect")
        .into_inner();
    assert_eq!(resp.connections, 1, "only the named connection");
    let mut event = next_event(&mut events).await;
    if let Event::ServerSubscribed { channel, .. } = &event {
        // Her personal channel, subscribed by the gateway at connect.
        assert_eq!(channel, "user:#carol");
        event = next_event(&mut events).await;
    }
    match event {
        Event::Disconnected {
            code, reconnect, ..
        } => {
            assert_eq!(code, Some(4200));
            assert!(!reconnect, "the client does not come back");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("the event stream ends")
            .is_none(),
        "no reconnect: the stream is over"
    );
    drop(client);
    // The other connection of the same user is still there.
    other_carol
        .subscribe("news")
        .await
        .expect("still connected");
}

async fn next_event(events: &mut chorus_client::Events) -> Event {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_subscribe_delivers_the_push_then_the_channel_gapless_and_unsubscribe_stops_it()
{
    let cluster = cluster().await;
    let (mut d0, _) = as_user(&cluster.ws(0), "dave").await;
    let (mut d1, _) = as_user(&cluster.ws(1), "dave").await;
    // Publications before the subscribe set the channel's position.
    for i in 0..3 {
        cluster.http_publish("feed", json!({"before": i})).await;
    }
    let (status, body) = post(
        &cluster,
        "/api/subscribe",
        json!({"user": "dave", "channel": "feed"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"], 2);
    let mut positions = Vec::new();
    for c in [&mut d0, &mut d1] {
        match c.next_push().await.unwrap() {
            push::Body::Subscribe(s) => {
                assert_eq!(s.channel, "feed");
                positions.push(s.offset);
            }
            other => panic!("expected a subscribe push, got {other:?}"),
        }
    }
    assert!(positions.iter().all(|p| *p == 3), "{positions:?}");
    for i in 0..20 {
        cluster.http_publish("feed", json!({"after": i})).await;
    }
    for c in [&mut d0, &mut d1] {
        for offset in 4..=23 {
            assert_eq!(
                c.next_publication().await.unwrap().offset,
                offset,
                "gapless"
            );
        }
    }

    let resp = cluster
        .grpc()
        .await
        .unsubscribe(authed(api::UserSubscribeRequest {
            user: "dave".into(),
            channel: "feed".into(),
            ..Default::default()
        }))
        .await
        .expect("gRPC unsubscribe")
        .into_inner();
    assert_eq!((resp.connections, resp.nodes, resp.answered), (2, 2, 2));
    for c in [&mut d0, &mut d1] {
        match c.next_push().await.unwrap() {
            push::Body::Unsubscribe(u) => assert_eq!(u.channel, "feed"),
            other => panic!("expected an unsubscribe push, got {other:?}"),
        }
        c.subscribe("marker").await.unwrap();
    }
    cluster.http_publish("feed", json!({"gone": true})).await;
    cluster.http_publish("marker", json!({"m": 1})).await;
    for c in [&mut d0, &mut d1] {
        let p = c.next_publication().await.unwrap();
        assert_eq!(p.channel, "marker", "nothing more of feed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subs_claim_and_the_personal_channel_subscribe_at_connect() {
    let cluster = cluster().await;
    let claims = json!({"sub": "erin", "subs": ["news", "alerts"]});
    let (mut erin, _) = WsClient::connect_with(&cluster.ws(0), Format::Json, &token(claims))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        match erin.next_push().await.unwrap() {
            push::Body::Subscribe(s) => got.push(s.channel),
            other => panic!("expected subscribe pushes, got {other:?}"),
        }
    }
    got.sort();
    assert_eq!(got, ["alerts", "news", "user:#erin"]);
    cluster
        .http_publish("user:#erin", json!({"to": "erin"}))
        .await;
    let p = erin.next_publication().await.unwrap();
    assert_eq!(p.channel, "user:#erin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_recovers_its_server_side_channels_from_the_positions_it_gives() {
    let cluster = cluster().await;
    let claims = json!({"sub": "fay", "subs": ["news"]});
    let connect = |recover: Vec<(&str, u64, &str)>| client::ConnectRequest {
        token: token(claims.clone()),
        recover: recover
            .into_iter()
            .map(|(ch, offset, epoch)| {
                let at = client::StreamPosition {
                    offset,
                    epoch: epoch.into(),
                };
                (ch.to_owned(), at)
            })
            .collect(),
        ..Default::default()
    };
    let first = cluster.http_publish("news", json!({"n": 1})).await;
    let first: Value = first.json().await.unwrap();
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for n in 2..=4 {
        cluster.http_publish("news", json!({"n": n})).await;
    }
    for format in Format::CHORUS {
        let mut fay = WsClient::open(&cluster.ws(0), format).await.unwrap();
        // From offset 1: 2..=4 are recovered in the push. A channel the gateway does not
        // subscribe at connect is ignored.
        fay.ok(command::Body::Connect(connect(vec![
            ("news", 1, &epoch),
            ("elsewhere", 7, "x"),
        ])))
        .await
        .expect("connects");
        let mut pushes = Vec::new();
        for _ in 0..2 {
            match fay.next_push().await.unwrap() {
                push::Body::Subscribe(s) => pushes.push(s),
                other => panic!("expected subscribe pushes, got {other:?}"),
            }
        }
        pushes.sort_by(|a, b| a.channel.cmp(&b.channel));
        let news = &pushes[0];
        assert_eq!(news.channel, "news", "{format:?}");
        assert!(news.was_recovering && news.recovered, "{format:?}");
        assert_eq!(
            news.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            [2, 3, 4],
            "{format:?}"
        );
        assert_eq!((news.offset, news.epoch.as_str()), (4, epoch.as_str()));
        let personal = &pushes[1];
        assert_eq!(personal.channel, "user:#fay");
        assert!(!personal.was_recovering, "not asked to recover");
        // From another epoch: not recovered, said so; the current epoch follows from its
        // start, as far as history reaches (as for a subscribe).
        let mut again = WsClient::open(&cluster.ws(1), format).await.unwrap();
        again
            .ok(command::Body::Connect(connect(vec![(
                "news",
                1,
                "old-epoch",
            )])))
            .await
            .expect("connects");
        let news = loop {
            match again.next_push().await.unwrap() {
                push::Body::Subscribe(s) if s.channel == "news" => break s,
                push::Body::Subscribe(_) => {}
                other => panic!("expected subscribe pushes, got {other:?}"),
            }
        };
        assert!(news.was_recovering && !news.recovered, "{format:?}");
        assert_eq!(
            news.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(news.offset, 4);
    }
    // More positions than a connection may have channels: refused, and no session starts.
    let mut greedy = WsClient::open(&cluster.ws(0), Format::Json).await.unwrap();
    let many = (0..1000).map(|i| format!("ch{i}")).collect::<Vec<_>>();
    let reply = greedy
        .request(command::Body::Connect(connect(
            many.iter().map(|c| (c.as_str(), 1, "e")).collect(),
        )))
        .await
        .unwrap();
    let error = reply.error.expect("refused");
    assert_eq!(error.code, ErrorCode::BadRequest as u32);
    assert!(error.message.contains("to recover"), "{}", error.message);
    let reply = greedy
        .request(command::Body::Ping(client::PingRequest {}))
        .await
        .unwrap();
    assert_eq!(
        reply.error.map(|e| e.code),
        Some(ErrorCode::NotConnected as u32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_lists_subscribed_channels_with_counts_across_gateways_filtered_and_bounded() {
    let cluster = cluster().await;
    let mut clients = Vec::new();
    for (gateway, channel) in [(0, "room:a"), (1, "room:a"), (1, "room:b"), (0, "news")] {
        let (mut c, _) = WsClient::connect(&cluster.ws(gateway), Format::Json)
            .await
            .unwrap();
        c.subscribe(channel).await.unwrap();
        clients.push(c);
    }
    let (status, body) = post(&cluster, "/api/channels", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": [
            {"channel": "news", "subscribers": 1},
            {"channel": "room:a", "subscribers": 2},
            {"channel": "room:b", "subscribers": 1},
        ], "truncated": false})
    );
    let (_, body) = post(
        &cluster,
        "/api/channels",
        json!({"pattern": "room:*", "limit": 1}),
    )
    .await;
    assert_eq!(
        body,
        json!({"channels": [{"channel": "room:a", "subscribers": 2}], "truncated": true})
    );
    let grpc = cluster
        .grpc()
        .await
        .channels(authed(api::ChannelsRequest {
            pattern: "news".into(),
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grpc.channels.len(), 1);
    assert_eq!(grpc.channels[0].subscribers, 1);

    let (status, _) = post(&cluster, "/api/channels", json!({"limit": 10001})).await;
    assert_eq!(status, 400);
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_user_commands_get_clear_errors_and_redis_down_gets_503() {
    let mut cluster = cluster().await;
    for (path, body, code) in [
        ("/api/disconnect", json!({"user": ""}), "bad_request"),
        (
            "/api/disconnect",
            json!({"user": "x", "code": 1000}),
            "bad_request",
        ),
        (
            "/api/disconnect",
            json!({"user": "x", "reason": "r".repeat(121)}),
            "bad_request",
        ),
        (
            "/api/subscribe",
            json!({"user": "x", "channel": "no spaces"}),
            "bad_channel",
        ),
        (
            "/api/unsubscribe",
            json!({"user": "x", "channel": "news", "extra": 1}),
            "bad_request",
        ),
        (
            "/api/subscribe",
            json!({"user": "nobody", "channel": "news"}),
            "not_connected",
        ),
    ] {
        let (_, answer) = post(&cluster, path, body.clone()).await;
        assert_eq!(answer["error"]["code"], code, "{path} {body}");
    }
    cluster.redis.stop();
    let started = Instant::now();
    let (status, body) = post(&cluster, "/api/disconnect", json!({"user": "x"})).await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = post(&cluster, "/api/channels", json!({})).await;
    assert_eq!(status, 503);
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
}
