//! Presence and join/leave, end to end: a real Redis, a broker-api and two gateways in this
//! process, a third gateway as a child process to SIGKILL; real WebSocket, HTTP and gRPC
//! clients over loopback.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chorus_bus::Namespaces;
use chorus_gateway::GatewayConfig;
use chorus_gateway::config::Secret;
use chorus_protocol::client::{self, command, push, reply};
use chorus_protocol::wire::Format;
use chorus_protocol::{api, codes::ErrorCode};
use chorus_testkit::{WsClient, eventually, free_port, wait_http_ok};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use support::{Cluster, authed};

const SECRET: &str = "test-only-hmac-secret-0123456789abcdef";

const NAMESPACES: &str = r#"
[default]
anonymous_subscribe = true

[namespace.room]
anonymous_subscribe = true
client_publish = true
presence = true
join_leave = true

[namespace.quiet]
anonymous_subscribe = true
presence = true

[namespace.small]
anonymous_subscribe = true
presence = true
presence_max_clients = 2
"#;

fn namespaces() -> Namespaces {
    Namespaces::parse(NAMESPACES).expect("valid namespaces")
}

fn config() -> GatewayConfig {
    GatewayConfig {
        token_hmac_secret: Some(Secret(SECRET.into())),
        allow_anonymous: true,
        ..GatewayConfig::default()
    }
}

async fn cluster() -> Cluster {
    Cluster::start_full(2, config(), namespaces(), false).await
}

fn token(user: &str, info: Value) -> String {
    let claims = json!({"sub": user, "info": info, "exp": 4_000_000_000u64});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token signs")
}

async fn user(url: &str, name: &str) -> (WsClient, String) {
    let (c, r) = WsClient::connect_with(url, Format::Json, &token(name, json!({"name": name})))
        .await
        .expect("connects");
    (c, r.client)
}

async fn anonymous(url: &str) -> (WsClient, String) {
    let (c, r) = WsClient::connect(url, Format::Json)
        .await
        .expect("connects");
    (c, r.client)
}

/// The (client, user) pairs a client's `presence` command answers, sorted.
async fn presence_of(c: &mut WsClient, channel: &str) -> Vec<(String, String)> {
    let reply = c
        .ok(command::Body::Presence(client::PresenceRequest {
            channel: channel.into(),
        }))
        .await
        .expect("presence answers");
    let Some(reply::Result::Presence(p)) = reply.result else {
        panic!("not a presence reply: {reply:?}")
    };
    let mut out: Vec<_> = p.clients.into_iter().map(|c| (c.client, c.user)).collect();
    out.sort();
    out
}

async fn stats_of(c: &mut WsClient, channel: &str) -> (u32, u32) {
    let reply = c
        .ok(command::Body::PresenceStats(client::PresenceStatsRequest {
            channel: channel.into(),
        }))
        .await
        .expect("presence_stats answers");
    let Some(reply::Result::PresenceStats(s)) = reply.result else {
        panic!("not a presence_stats reply: {reply:?}")
    };
    (s.num_clients, s.num_users)
}

async fn http_presence(cluster: &Cluster, channel: &str) -> Vec<(String, String)> {
    let resp = reqwest::Client::new()
        .post(cluster.api_url("/api/presence"))
        .bearer_auth(support::API_KEY)
        .json(&json!({"channel": channel}))
        .send()
        .await
        .expect("HTTP presence");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let mut out: Vec<_> = body["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["client"].as_str().unwrap().to_owned(),
                c["user"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn error_code(reply: &client::Reply) -> Option<u32> {
    reply.error.as_ref().map(|e| e.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_stats_agree_on_both_gateways_and_the_server_api_as_clients_come_and_go() {
    let cluster = cluster().await;
    let (mut alice, alice_id) = user(&cluster.ws(0), "alice").await;
    let (mut bob, bob_id) = user(&cluster.ws(1), "bob").await;
    let (mut alice2, alice2_id) = user(&cluster.ws(1), "alice").await;
    for c in [&mut alice, &mut bob, &mut alice2] {
        c.subscribe("quiet:lobby").await.unwrap();
    }
    let mut everyone = vec![
        (alice_id.clone(), "alice".to_owned()),
        (alice2_id.clone(), "alice".to_owned()),
        (bob_id.clone(), "bob".to_owned()),
    ];
    everyone.sort();
    // Each subscribe is answered only once its entry is written: no waiting needed.
    assert_eq!(presence_of(&mut alice, "quiet:lobby").await, everyone);
    assert_eq!(presence_of(&mut bob, "quiet:lobby").await, everyone);
    assert_eq!(http_presence(&cluster, "quiet:lobby").await, everyone);
    assert_eq!(stats_of(&mut bob, "quiet:lobby").await, (3, 2));
    let grpc = cluster
        .grpc()
        .await
        .presence(authed(api::PresenceRequest {
            channel: "quiet:lobby".into(),
        }))
        .await
        .expect("gRPC presence")
        .into_inner();
    let alice_entry = grpc
        .clients
        .iter()
        .find(|c| c.client == alice_id)
        .expect("alice is present over gRPC");
    assert_eq!(
        serde_json::from_slice::<Value>(&alice_entry.info).unwrap(),
        json!({"name": "alice"}),
        "the token's info travels with the entry"
    );
    let stats = cluster
        .grpc()
        .await
        .presence_stats(authed(api::PresenceStatsRequest {
            channel: "quiet:lobby".into(),
        }))
        .await
        .expect("gRPC presence stats")
        .into_inner();
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));

    // An unsubscribe is answered once the entry is gone for every reader.
    bob.unsubscribe("quiet:lobby").await.unwrap();
    everyone.retain(|(c, _)| *c != bob_id);
    assert_eq!(presence_of(&mut alice, "quiet:lobby").await, everyone);
    assert_eq!(http_presence(&cluster, "quiet:lobby").await, everyone);
    assert_eq!(stats_of(&mut bob, "quiet:lobby").await, (2, 1));

    // A closed connection's entry goes in the background.
    drop(alice2);
    everyone.retain(|(c, _)| *c != alice2_id);
    eventually(Duration::from_secs(5), "the closed connection left", || {
        let want = everyone.clone();
        let c = &cluster;
        async move { http_presence(c, "quiet:lobby").await == want }
    })
    .await
    .unwrap();
    assert_eq!(stats_of(&mut alice, "quiet:lobby").await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_refuses_channels_without_it_and_bad_input_with_clear_errors() {
    let cluster = cluster().await;
    let (mut c, _) = anonymous(&cluster.ws(0)).await;
    let ask = |channel: &str| {
        command::Body::Presence(client::PresenceRequest {
            channel: channel.into(),
        })
    };
    let reply = c.request(ask("news")).await.unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::BadRequest.code()));
    assert!(
        reply
            .error
            .unwrap()
            .message
            .contains("presence is not kept"),
        "says why"
    );
    let reply = c.request(ask("bad channel")).await.unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::BadChannel.code()));
    let reply = c.request(ask("nowhere:x")).await.unwrap();
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::BadChannel.code()),
        "an unknown namespace"
    );

    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(cluster.api_url(path))
            .bearer_auth(support::API_KEY)
            .json(&body)
            .send()
    };
    let resp = post("/api/presence", json!({"channel": "news"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let resp = post("/api/presence_stats", json!({"chanel": "room:a"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "an unknown field");
    let resp = reqwest::Client::new()
        .post(cluster.api_url("/api/presence"))
        .json(&json!({"channel": "room:a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the API key is needed");
    let status = cluster
        .grpc()
        .await
        .presence(authed(api::PresenceRequest {
            channel: "news".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_presence_channel_refuses_the_next_subscriber_with_106_and_takes_it_once_room_is_made()
 {
    let cluster = cluster().await;
    let (mut a, _) = anonymous(&cluster.ws(0)).await;
    let (mut b, _) = anonymous(&cluster.ws(1)).await;
    let (mut c, _) = anonymous(&cluster.ws(0)).await;
    a.subscribe("small:x").await.unwrap();
    b.subscribe("small:x").await.unwrap();
    let reply = c
        .request(command::Body::Subscribe(client::SubscribeRequest {
            channel: "small:x".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::LimitExceeded.code()));
    assert_eq!(
        stats_of(&mut c, "small:x").await,
        (2, 1),
        "nothing of c stayed"
    );
    a.unsubscribe("small:x").await.unwrap();
    c.subscribe("small:x").await.expect("room was made");
    assert_eq!(stats_of(&mut c, "small:x").await, (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_presence_subscribe_and_query_answer_108_and_the_api_503() {
    let mut cluster = cluster().await;
    let (mut a, _) = anonymous(&cluster.ws(0)).await;
    cluster.redis.stop();
    let started = Instant::now();
    let reply = a
        .request(command::Body::Subscribe(client::SubscribeRequest {
            channel: "quiet:down".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::Unavailable.code()));
    let reply = a
        .request(command::Body::PresenceStats(client::PresenceStatsRequest {
            channel: "quiet:down".into(),
        }))
        .await
        .unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::Unavailable.code()));
    let resp = reqwest::Client::new()
        .post(cluster.api_url("/api/presence"))
        .bearer_auth(support::API_KEY)
        .json(&json!({"channel": "quiet:down"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered, not hung"
    );
}

/// The join or leave push of `channel` a client receives next, skipping nothing.
async fn next_presence_event(c: &mut WsClient) -> (bool, String, String) {
    match c.next_push().await.expect("a push") {
        push::Body::Join(j) => {
            let info = j.info.unwrap_or_default();
            (false, j.channel, info.client)
        }
        push::Body::Leave(l) => {
            let info = l.info.unwrap_or_default();
            (true, l.channel, info.client)
        }
        other => panic!("expected a join or leave, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_reach_other_subscribers_in_order_with_publications() {
    let cluster = cluster().await;
    let (mut a, a_id) = user(&cluster.ws(0), "ann").await;
    a.subscribe("room:r").await.unwrap();
    let (mut b, b_id) = user(&cluster.ws(1), "ben").await;
    b.subscribe("room:r").await.unwrap();
    // A subscriber that asked for no join/leave pushes.
    let (mut quiet, _) = anonymous(&cluster.ws(1)).await;
    quiet
        .ok(command::Body::Subscribe(client::SubscribeRequest {
            channel: "room:r".into(),
            no_join_leave: true,
            ..Default::default()
        }))
        .await
        .unwrap();

    let event = next_presence_event(&mut a).await;
    assert_eq!(
        event,
        (false, "room:r".into(), b_id.clone()),
        "a hears b join"
    );
    let event = next_presence_event(&mut a).await;
    assert!(!event.0, "then the quiet subscriber's join");

    // b publishes a burst, then leaves: a receives every publication, then the leave.
    const N: u64 = 200;
    for i in 0..N {
        b.publish("room:r", format!(r#"{{"i":{i}}}"#).as_bytes())
            .await
            .unwrap();
    }
    b.unsubscribe("room:r").await.unwrap();
    let mut last = 0;
    for _ in 0..N {
        match a.next_push().await.unwrap() {
            push::Body::Publication(p) => {
                assert_eq!(p.offset, last + 1, "in order");
                last = p.offset;
            }
            other => panic!("a leave before b's earlier publications: {other:?}"),
        }
    }
    let event = next_presence_event(&mut a).await;
    assert_eq!(event, (true, "room:r".into(), b_id), "then b's leave");

    // b never heard its own join; the quiet subscriber heard no join or leave at all: the
    // first push each receives after this publish is the publication itself.
    let marker = cluster.http_publish("room:r", json!({"marker": 1})).await;
    assert_eq!(marker.status(), 200);
    for c in [&mut a, &mut quiet] {
        let mut pubs = 0;
        loop {
            match c.next_push().await.unwrap() {
                push::Body::Publication(p) if p.data.as_ref() == br#"{"marker":1}"# => break,
                push::Body::Publication(_) => pubs += 1,
                other => panic!("unexpected push {other:?}"),
            }
        }
        assert!(pubs == 0 || pubs == N as usize, "{pubs}");
    }
    let _ = a_id;
}

fn namespaces_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "chorus-presence-{}-{}.toml",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&path, NAMESPACES).expect("namespaces file written");
    path
}

/// Node ids in the registry, dead or alive.
fn registered(cluster: &Cluster) -> Vec<String> {
    cluster
        .redis
        .cli(&["ZRANGE", "chorus:nodes", "0", "-1"])
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_members_leave_within_the_lease_and_each_leave_arrives_once() {
    const DOOMED: usize = 5;
    let cluster = cluster().await;
    let file = namespaces_file();
    let port = free_port();
    let mut doomed_gateway = support::gateway_process(
        &cluster.redis.url(),
        port,
        &[
            "--node-lease",
            "2s",
            "--node-id",
            "gw-doomed",
            "--namespaces",
            file.to_str().unwrap(),
        ],
    );
    wait_http_ok(
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(10),
    )
    .await
    .expect("the doomed gateway is ready");

    // A watcher on each surviving gateway.
    let (mut w0, _) = anonymous(&cluster.ws(0)).await;
    let (mut w1, _) = anonymous(&cluster.ws(1)).await;
    w0.subscribe("room:k").await.unwrap();
    w1.subscribe("room:k").await.unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut doomed = Vec::new();
    let mut ids = HashSet::new();
    for _ in 0..DOOMED {
        let (mut c, id) = anonymous(&url).await;
        c.subscribe("room:k").await.unwrap();
        ids.insert(id);
        doomed.push(c);
    }
    // w0 also hears w1 join; then both hear the doomed clients join.
    let (leave, _, _) = next_presence_event(&mut w0).await;
    assert!(!leave);
    for w in [&mut w0, &mut w1] {
        let mut joined = HashSet::new();
        while joined.len() < DOOMED {
            let (leave, _, client) = next_presence_event(w).await;
            assert!(!leave);
            joined.insert(client);
        }
        assert_eq!(joined, ids);
    }
    assert_eq!(http_presence(&cluster, "room:k").await.len(), DOOMED + 2);

    let killed = Instant::now();
    tokio::task::block_in_place(|| doomed_gateway.kill());
    let lease = Duration::from_secs(2);
    eventually(
        lease + Duration::from_secs(1),
        "the dead gateway's members are gone from presence within the lease",
        || async { http_presence(&cluster, "room:k").await.len() == 2 },
    )
    .await
    .unwrap();
    let gone_after = killed.elapsed();
    for w in [&mut w0, &mut w1] {
        let mut left = HashSet::new();
        while left.len() < DOOMED {
            let (leave, _, client) = next_presence_event(w).await;
            assert!(leave, "only leaves now");
            assert!(left.insert(client), "a leave arrived twice");
        }
        assert_eq!(left, ids);
    }
    let leaves_after = killed.elapsed();
    assert!(
        leaves_after <= lease + Duration::from_secs(1) + Duration::from_millis(500),
        "every leave within the lease + 1 s: {leaves_after:?}"
    );
    // The reaper removes the dead node from the registry after its last leave: past that
    // point no other leave can come, so the next push after a marker is the marker.
    eventually(
        Duration::from_secs(5),
        "the dead node was reaped",
        || async { !registered(&cluster).contains(&"gw-doomed".to_owned()) },
    )
    .await
    .unwrap();
    let marker = cluster
        .http_publish("room:k", json!({"marker": true}))
        .await;
    assert_eq!(marker.status(), 200);
    for w in [&mut w0, &mut w1] {
        match w.next_push().await.unwrap() {
            push::Body::Publication(p) => assert_eq!(p.data.as_ref(), br#"{"marker":true}"#),
            other => panic!("a second leave or something else: {other:?}"),
        }
    }
    let _ = std::fs::remove_file(file);
    eprintln!("presence gone after {gone_after:?}, every leave after {leaves_after:?}");
}
