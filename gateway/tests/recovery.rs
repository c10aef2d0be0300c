//! History, recovery and the subscribe seam, end to end: a real redis-server, broker-api and
//! gateways in this process, real WebSocket, HTTP and gRPC clients.

mod support;

use std::time::Duration;

use chorus_bus::{NamespaceRules, Namespaces};
use chorus_gateway::GatewayConfig;
use chorus_protocol::api;
use chorus_protocol::client::{self, command, reply};
use chorus_protocol::codes::ErrorCode;
use chorus_protocol::wire::Format;
use chorus_testkit::WsClient;
use serde_json::{Value, json};
use support::{Cluster, authed};

async fn connected(url: &str) -> WsClient {
    WsClient::connect(url, Format::Json).await.unwrap().0
}

/// Publishes `n` JSON messages `{"n": i}` on `channel`; returns the epoch.
async fn publish_n(cluster: &Cluster, channel: &str, n: u64) -> String {
    let mut epoch = String::new();
    for i in 1..=n {
        let resp = cluster.http_publish(channel, json!({ "n": i })).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        epoch = body["epoch"].as_str().unwrap().to_owned();
    }
    epoch
}

fn subscribe_from(channel: &str, offset: u64, epoch: &str) -> command::Body {
    command::Body::Subscribe(client::SubscribeRequest {
        channel: channel.into(),
        recover: true,
        offset,
        epoch: epoch.into(),
        no_join_leave: false,
    })
}

fn subscribe_result(r: client::Reply) -> client::SubscribeResult {
    match r.result {
        Some(reply::Result::Subscribe(s)) => s,
        other => panic!("expected a subscribe result, got {other:?} ({:?})", r.error),
    }
}

fn history_result(r: client::Reply) -> client::HistoryResult {
    match r.result {
        Some(reply::Result::History(h)) => h,
        other => panic!("expected a history result, got {other:?} ({:?})", r.error),
    }
}

fn offsets(pubs: &[client::Publication]) -> Vec<u64> {
    pubs.iter().map(|p| p.offset).collect()
}

fn history(channel: &str, since: Option<(u64, &str)>, limit: u32, reverse: bool) -> command::Body {
    command::Body::History(client::HistoryRequest {
        channel: channel.into(),
        since: since.map(|(offset, epoch)| client::StreamPosition {
            offset,
            epoch: epoch.into(),
        }),
        limit,
        reverse,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_command_reads_since_a_position_newest_first_and_refuses_another_epoch() {
    let cluster = Cluster::start(1).await;
    let epoch = publish_n(&cluster, "hist", 5).await;
    let mut c = connected(&cluster.ws(0)).await;

    let all = history_result(c.ok(history("hist", None, 0, false)).await.unwrap());
    assert_eq!(offsets(&all.publications), [1, 2, 3, 4, 5]);
    assert_eq!((all.offset, all.epoch.as_str()), (5, epoch.as_str()));
    assert_eq!(all.publications[0].data.as_ref(), br#"{"n":1}"#);

    let since = c.ok(history("hist", Some((2, &epoch)), 0, false)).await;
    assert_eq!(
        offsets(&history_result(since.unwrap()).publications),
        [3, 4, 5]
    );

    let newest = c.ok(history("hist", None, 2, true)).await;
    assert_eq!(
        offsets(&history_result(newest.unwrap()).publications),
        [5, 4]
    );

    let stale = c
        .request(history("hist", Some((2, "not-the-epoch")), 0, false))
        .await
        .unwrap();
    assert_eq!(
        stale.error.map(|e| e.code),
        Some(ErrorCode::UnrecoverablePosition.code())
    );
    // The connection stays usable, and an empty channel has an empty history.
    let empty = history_result(c.ok(history("none", None, 0, false)).await.unwrap());
    assert!(empty.publications.is_empty());
    assert_eq!((empty.offset, empty.epoch.as_str()), (0, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_a_position_recovers_what_was_missed_then_continues_live() {
    let cluster = Cluster::start(2).await;
    let epoch = publish_n(&cluster, "rec", 3).await;
    let mut c = connected(&cluster.ws(1)).await;
    let result = subscribe_result(c.ok(subscribe_from("rec", 1, &epoch)).await.unwrap());
    assert!(result.was_recovering && result.recovered, "{result:?}");
    assert_eq!(offsets(&result.publications), [2, 3]);
    assert_eq!((result.offset, result.epoch.as_str()), (3, epoch.as_str()));

    publish_n(&cluster, "rec", 1).await;
    let live = c.next_publication().await.unwrap();
    assert_eq!((live.offset, live.epoch.as_str()), (4, epoch.as_str()));

    // A client that saw everything recovers with nothing to replay.
    let mut d = connected(&cluster.ws(0)).await;
    let result = subscribe_result(d.ok(subscribe_from("rec", 4, &epoch)).await.unwrap());
    assert!(result.recovered && result.publications.is_empty());
    assert_eq!(result.offset, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_says_false_with_the_current_position_when_epoch_or_history_do_not_match() {
    let namespaces = Namespaces {
        default: NamespaceRules {
            history_size: 2,
            anonymous_subscribe: true,
            ..NamespaceRules::default()
        },
        ..Namespaces::default()
    };
    let cluster = Cluster::start_full(1, GatewayConfig::default(), namespaces, false).await;
    let epoch = publish_n(&cluster, "short", 5).await;
    let mut c = connected(&cluster.ws(0)).await;

    // History keeps 4 and 5 only: from 1, offsets 2 and 3 are gone.
    let result = subscribe_result(c.ok(subscribe_from("short", 1, &epoch)).await.unwrap());
    assert!(result.was_recovering && !result.recovered, "{result:?}");
    assert!(result.publications.is_empty());
    assert_eq!((result.offset, result.epoch.as_str()), (5, epoch.as_str()));
    c.unsubscribe("short").await.unwrap();

    // From 3, history still reaches back.
    let result = subscribe_result(c.ok(subscribe_from("short", 3, &epoch)).await.unwrap());
    assert!(result.recovered);
    assert_eq!(offsets(&result.publications), [4, 5]);
    c.unsubscribe("short").await.unwrap();

    // Another epoch: nothing of it can be recovered.
    let result = subscribe_result(c.ok(subscribe_from("short", 4, "gone")).await.unwrap());
    assert!(!result.recovered);
    assert_eq!((result.offset, result.epoch.as_str()), (5, epoch.as_str()));
}

/// Subscribes while a publisher is busy on the channel: the reply's offset k is followed by
/// k+1, k+2, … exactly, for plain and recovering subscribes alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_racing_a_subscribe_arrive_after_its_reply_without_gap_or_duplicate() {
    const TOTAL: u64 = 300;
    let namespaces = Namespaces {
        default: NamespaceRules {
            history_size: 1000,
            anonymous_subscribe: true,
            ..NamespaceRules::default()
        },
        ..Namespaces::default()
    };
    let cluster = Cluster::start_full(2, GatewayConfig::default(), namespaces, false).await;
    let mut grpc = cluster.grpc().await;
    let publisher = tokio::spawn(async move {
        for i in 1..=TOTAL {
            grpc.publish(authed(api::PublishRequest {
                channel: "race".into(),
                data: format!("{i}").into_bytes().into(),
                ..Default::default()
            }))
            .await
            .unwrap();
        }
    });
    let mut checked = 0;
    for round in 0..6 {
        let mut c = connected(&cluster.ws(round % 2)).await;
        let body = if round % 2 == 0 {
            command::Body::Subscribe(client::SubscribeRequest {
                channel: "race".into(),
                ..Default::default()
            })
        } else {
            subscribe_from("race", 0, "")
        };
        let result = subscribe_result(c.ok(body).await.unwrap());
        let mut expected = if result.was_recovering {
            assert!(result.recovered, "from the start, all is kept");
            assert_eq!(result.publications.first().map(|p| p.offset), Some(1));
            assert_eq!(
                offsets(&result.publications),
                (1..=result.offset).collect::<Vec<_>>()
            );
            result.offset + 1
        } else {
            result.offset + 1
        };
        // Read a stretch of live publications: each must be the next offset.
        let until = (expected + 40).min(TOTAL);
        while expected <= until {
            let p = c.next_publication().await.unwrap();
            assert_eq!(p.offset, expected, "round {round}");
            expected += 1;
            checked += 1;
        }
    }
    publisher.await.unwrap();
    assert!(checked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_with_its_idempotency_key_is_delivered_once() {
    let cluster = Cluster::start(1).await;
    let mut c = connected(&cluster.ws(0)).await;
    c.subscribe("orders").await.unwrap();
    let http = reqwest::Client::new();
    let publish = |key: &str, n: u64| {
        http.post(cluster.api_url("/api/publish"))
            .bearer_auth(support::API_KEY)
            .json(&json!({"channel": "orders", "data": {"n": n}, "idempotency_key": key}))
            .send()
    };
    let first: Value = publish("order-17", 1).await.unwrap().json().await.unwrap();
    let retry: Value = publish("order-17", 1).await.unwrap().json().await.unwrap();
    assert_eq!(first["offset"], 1);
    assert_eq!(first.get("duplicate"), None);
    assert_eq!(
        (retry["offset"].as_u64(), retry["duplicate"].as_bool()),
        (Some(1), Some(true))
    );

    // The same key over gRPC is the same publish.
    let grpc_retry = cluster
        .grpc()
        .await
        .publish(authed(api::PublishRequest {
            channel: "orders".into(),
            data: br#"{"n":1}"#.to_vec().into(),
            idempotency_key: "order-17".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((grpc_retry.offset, grpc_retry.duplicate), (1, true));

    let other: Value = publish("order-18", 2).await.unwrap().json().await.unwrap();
    assert_eq!(other["offset"], 2);
    // The subscriber saw 1 then 2: the retries published nothing.
    assert_eq!(c.next_publication().await.unwrap().offset, 1);
    assert_eq!(c.next_publication().await.unwrap().offset, 2);

    let bad = publish("has space", 3).await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_history_over_http_and_grpc() {
    let cluster = Cluster::start(1).await;
    let epoch = publish_n(&cluster, "feed", 3).await;
    let http = reqwest::Client::new();
    let read = |body: Value| {
        http.post(cluster.api_url("/api/history"))
            .bearer_auth(support::API_KEY)
            .json(&body)
            .send()
    };
    let resp: Value = read(json!({"channel": "feed", "since": {"offset": 1, "epoch": epoch}}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["offset"], 3);
    assert_eq!(resp["epoch"], epoch.as_str());
    let pubs = resp["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 2);
    assert_eq!(
        (pubs[0]["offset"].clone(), pubs[0]["data"].clone()),
        (json!(2), json!({"n": 2}))
    );

    let stale = read(json!({"channel": "feed", "since": {"offset": 1, "epoch": "old"}}))
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    let body: Value = stale.json().await.unwrap();
    assert_eq!(body["error"]["code"], "position_lost");

    let mut grpc = cluster.grpc().await;
    let newest = grpc
        .history(authed(api::HistoryRequest {
            channel: "feed".into(),
            limit: 1,
            reverse: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(newest.publications.len(), 1);
    assert_eq!(newest.publications[0].offset, 3);
    assert_eq!(newest.publications[0].data.as_ref(), br#"{"n":3}"#);
    assert!(newest.publications[0].published_at_ms > 0);
    let status = grpc
        .history(authed(api::HistoryRequest {
            channel: "feed".into(),
            since_offset: 1,
            since_epoch: "old".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_fails_readiness_refuses_new_clients_and_spreads_reconnects_over_the_window() {
    let window = Duration::from_millis(1500);
    let gw = support::MemoryGateway::start(GatewayConfig {
        drain_window: window,
        ..GatewayConfig::default()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(connected(&gw.ws()).await);
    }
    let ready = format!("http://{}/readyz", gw.addr);
    assert_eq!(reqwest::get(&ready).await.unwrap().status(), 200);

    let started = tokio::time::Instant::now();
    gw.shut_down();
    chorus_testkit::eventually(Duration::from_secs(2), "readyz fails", || {
        let ready = ready.clone();
        async move { reqwest::get(&ready).await.is_ok_and(|r| r.status() == 503) }
    })
    .await
    .unwrap();
    assert!(
        WsClient::open(&gw.ws(), Format::Json).await.is_err(),
        "a new WebSocket is refused while draining"
    );

    // Each client notes when its own disconnect push arrived.
    let told_at = futures::future::join_all(clients.iter_mut().map(|c| async move {
        let frame = c.next_frame().await.unwrap().frame;
        let at = started.elapsed();
        match frame {
            Some(client::server_frame::Frame::Push(client::Push {
                body: Some(client::push::Body::Disconnect(d)),
            })) => {
                assert!(d.reconnect);
                assert_eq!(d.code, 3000);
            }
            other => panic!("expected a disconnect push, got {other:?}"),
        }
        assert_eq!(c.closed().await.unwrap().code, 3000);
        at
    }))
    .await;
    let first = told_at.iter().min().copied().unwrap();
    let last = told_at.iter().max().copied().unwrap();
    assert!(
        last <= window + Duration::from_secs(1),
        "last told at {last:?}"
    );
    assert!(
        last - first >= window / 4,
        "reconnects are spread over the window: {first:?}..{last:?}"
    );
}

fn history_namespaces(size: u32) -> Namespaces {
    Namespaces {
        default: NamespaceRules {
            history_size: size,
            anonymous_subscribe: true,
            ..NamespaceRules::default()
        },
        ..Namespaces::default()
    }
}

/// A recovery bigger than one reply (half the client's queue) is still recovered: the reply
/// carries a first page and says where it ends, the rest follows as publications, then the
/// live ones — each offset once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_larger_than_one_reply_is_paged_and_still_recovered() {
    let config = GatewayConfig {
        queue_max_bytes: 16 << 10,
        ..GatewayConfig::default()
    };
    let cluster = Cluster::start_full(1, config, history_namespaces(1000), false).await;
    let pad = "x".repeat(1000);
    for i in 1..=60 {
        let resp = cluster
            .http_publish("big", json!({ "n": i, "pad": pad }))
            .await;
        assert_eq!(resp.status(), 200);
    }
    let mut c = connected(&cluster.ws(0)).await;
    let result = subscribe_result(c.ok(subscribe_from("big", 0, "")).await.unwrap());
    assert!(result.was_recovering && result.recovered, "{result:?}");
    let first_page = offsets(&result.publications);
    assert!(
        !first_page.is_empty() && first_page.len() < 60,
        "one reply holds part of it: {first_page:?}"
    );
    assert_eq!(
        first_page,
        (1..=first_page.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        result.offset,
        first_page.len() as u64,
        "the reply ends at its last"
    );

    let mut next = result.offset + 1;
    while next <= 60 {
        let p = c.next_publication().await.unwrap();
        assert_eq!(p.offset, next, "the rest in order, once each");
        next += 1;
    }
    let resp = cluster.http_publish("big", json!({ "n": 61 })).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(c.next_publication().await.unwrap().offset, 61);

    // The history command is bounded the same way and says there is more.
    let page = history_result(c.ok(history("big", None, 0, false)).await.unwrap());
    assert!(
        page.more && page.publications.len() < 61,
        "{}",
        page.publications.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_over_their_rate_get_114_and_the_connection_stays_usable() {
    let config = GatewayConfig {
        history_rate: 1,
        history_burst: 2,
        ..GatewayConfig::default()
    };
    let cluster = Cluster::start_full(1, config, history_namespaces(10), false).await;
    publish_n(&cluster, "h", 2).await;
    let mut c = connected(&cluster.ws(0)).await;
    c.ok(history("h", None, 0, false)).await.unwrap();
    c.ok(subscribe_from("h", 0, "")).await.unwrap();
    let refused = c.request(history("h", None, 0, false)).await.unwrap();
    assert_eq!(
        refused.error.map(|e| e.code),
        Some(ErrorCode::RateLimited.code()),
        "a recovering subscribe counts as a history read"
    );
    c.unsubscribe("h").await.unwrap();
    let refused = c.request(subscribe_from("h", 0, "")).await.unwrap();
    assert_eq!(
        refused.error.map(|e| e.code),
        Some(ErrorCode::RateLimited.code())
    );
    // Other commands are not held back, and a plain subscribe reads no history.
    c.ok(command::Body::Ping(client::PingRequest {}))
        .await
        .unwrap();
    c.subscribe("h").await.unwrap();
}

/// Redis lost the channel (restarted empty): its new epoch starts at offset 1. A client
/// recovering from the old epoch is told `recovered: false` — the old epoch's tail is gone —
/// and still receives the new epoch from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovering_across_a_lost_epoch_delivers_the_new_epoch_from_its_start() {
    let cluster =
        Cluster::start_full(1, GatewayConfig::default(), history_namespaces(100), false).await;
    let old = publish_n(&cluster, "lost", 3).await;
    cluster.redis.cli(&["FLUSHALL"]).unwrap();
    let new = publish_n(&cluster, "lost", 2).await;
    assert_ne!(old, new);

    let mut c = connected(&cluster.ws(0)).await;
    let result = subscribe_result(c.ok(subscribe_from("lost", 3, &old)).await.unwrap());
    assert!(result.was_recovering && !result.recovered, "{result:?}");
    assert_eq!(offsets(&result.publications), [1, 2]);
    assert_eq!((result.offset, result.epoch.as_str()), (2, new.as_str()));
    publish_n(&cluster, "lost", 1).await;
    let live = c.next_publication().await.unwrap();
    assert_eq!((live.offset, live.epoch.as_str()), (3, new.as_str()));
}
