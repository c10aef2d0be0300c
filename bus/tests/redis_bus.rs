//! The Redis bus against a real redis-server (one per test, from chorus-testkit).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_bus::{
    Bus, BusConfig, BusError, BusSink, ConnectionInfo, Envelope, NodeInfo, Publish, keys,
};
use chorus_testkit::RedisServer;
use tokio::sync::mpsc;

mod common;
use common::node;

const WAIT: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_millis(500);

fn config(server: &RedisServer) -> BusConfig {
    BusConfig {
        redis_url: server.url(),
        redis_timeout: TIMEOUT,
        redis_pool_size: 4,
        node_lease: Duration::from_millis(1500),
        ..BusConfig::default()
    }
}

fn publish(channel: &str, data: &'static [u8]) -> Publish {
    Publish {
        channel: channel.into(),
        data: Bytes::from_static(data),
        ..Publish::default()
    }
}

fn connection(client: &str, user: &str) -> ConnectionInfo {
    ConnectionInfo {
        client: client.into(),
        user: user.into(),
        connected_at_ms: 42,
    }
}

/// A sink that forwards envelopes to the test.
struct Forward(mpsc::UnboundedSender<Envelope>);

impl BusSink for Forward {
    fn publication(&self, envelope: Envelope) {
        let _ = self.0.send(envelope);
    }
}

fn sink() -> (Arc<Forward>, mpsc::UnboundedReceiver<Envelope>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Forward(tx)), rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Envelope>) -> Envelope {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an envelope within the deadline")
        .expect("the sink is alive")
}

/// Polls `check` until it holds or `deadline` passes; returns whether it held.
async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pubsub_channels(server: &RedisServer) -> Vec<String> {
    server.cli(&["PUBSUB", "CHANNELS", "chorus.*"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_get_consecutive_offsets_in_one_epoch_and_arrive_as_published() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server)).unwrap();
    let (sink, mut rx) = sink();
    let link = bus.attach(node("n1"), sink);
    link.want("chat:room").wait(WAIT).await.unwrap();

    let mut published = Vec::new();
    for data in [&b"one"[..], b"two", b"three"] {
        let mut msg = publish("chat:room", data);
        msg.exclude_client = "c7".into();
        published.push(bus.publish(msg).await.unwrap());
    }
    let offsets: Vec<u64> = published.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
    let epoch = &published[0].epoch;
    assert!(!epoch.is_empty());
    assert!(published.iter().all(|p| &p.epoch == epoch));

    for (p, data) in published.iter().zip([&b"one"[..], b"two", b"three"]) {
        let envelope = next(&mut rx).await;
        assert_eq!(envelope.channel, "chat:room");
        assert_eq!((envelope.offset, &envelope.epoch), (p.offset, &p.epoch));
        assert_eq!(envelope.data, Bytes::from_static(data));
        assert_eq!(envelope.exclude_client, "c7");
        assert!(envelope.published_at_ms > 0);
    }

    let position = bus.position("chat:room").await.unwrap();
    assert_eq!((position.offset, &position.epoch), (3, epoch));
    assert_eq!(bus.position("never").await.unwrap(), Default::default());
    bus.check().await.unwrap();
    link.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_wanting_a_channel_both_receive_it() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server)).unwrap();
    let (sink_a, mut rx_a) = sink();
    let (sink_b, mut rx_b) = sink();
    let a = bus.attach(node("a"), sink_a);
    let b = bus.attach(node("b"), sink_b);
    a.want("news").wait(WAIT).await.unwrap();
    b.want("news").wait(WAIT).await.unwrap();

    let p = bus.publish(publish("news", b"hello")).await.unwrap();
    for rx in [&mut rx_a, &mut rx_b] {
        let envelope = next(rx).await;
        assert_eq!(
            (envelope.offset, envelope.epoch.as_str()),
            (p.offset, p.epoch.as_str())
        );
        assert_eq!(envelope.data, Bytes::from_static(b"hello"));
    }
    a.detach().await;
    b.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwanting_a_channel_stops_delivery_and_its_redis_subscription() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server)).unwrap();
    let (sink, mut rx) = sink();
    let link = bus.attach(node("n1"), sink);
    link.want("gone").wait(WAIT).await.unwrap();
    link.want("kept").wait(WAIT).await.unwrap();
    assert!(pubsub_channels(&server).contains(&keys::pubsub("gone")));

    link.unwant("gone");
    bus.publish(publish("gone", b"not for us")).await.unwrap();
    bus.publish(publish("kept", b"for us")).await.unwrap();
    // One connection delivers in publish order: had "gone" been delivered, it would come first.
    let envelope = next(&mut rx).await;
    assert_eq!(
        (envelope.channel.as_str(), &envelope.data[..]),
        ("kept", &b"for us"[..])
    );

    assert!(
        eventually(WAIT, || async {
            !pubsub_channels(&server).contains(&keys::pubsub("gone"))
        })
        .await,
        "the unwanted channel stays subscribed in redis"
    );
    assert!(pubsub_channels(&server).contains(&keys::pubsub("kept")));

    // Wanted again: subscribed again.
    link.want("gone").wait(WAIT).await.unwrap();
    bus.publish(publish("gone", b"back")).await.unwrap();
    assert_eq!(&next(&mut rx).await.data[..], b"back");

    link.detach().await;
    assert!(
        pubsub_channels(&server).is_empty(),
        "detach leaves subscriptions behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reports_invalid_channels_and_publishes_the_rest() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server)).unwrap();
    let (sink, mut rx) = sink();
    let link = bus.attach(node("n1"), sink);
    link.want("a").wait(WAIT).await.unwrap();
    link.want("c").wait(WAIT).await.unwrap();
    bus.publish(publish("c", b"first")).await.unwrap();
    assert_eq!(next(&mut rx).await.offset, 1);

    let channels: Vec<String> = ["a", "bad{name}", "c", ""].map(String::from).to_vec();
    let results = bus.broadcast(&channels, Bytes::from_static(b"all")).await;
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap().offset, 1);
    assert!(matches!(results[1], Err(BusError::BadChannel(_))));
    assert_eq!(results[2].as_ref().unwrap().offset, 2);
    assert!(matches!(results[3], Err(BusError::BadChannel(_))));

    let mut got: Vec<(String, u64)> = Vec::new();
    for _ in 0..2 {
        let envelope = next(&mut rx).await;
        assert_eq!(&envelope.data[..], b"all");
        got.push((envelope.channel, envelope.offset));
    }
    got.sort();
    assert_eq!(got, [("a".to_string(), 1), ("c".to_string(), 2)]);
    assert!(bus.broadcast(&[], Bytes::new()).await.is_empty());
    link.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_list_attached_nodes_with_their_connection_counts() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server)).unwrap();
    let a = bus.attach(node("a"), sink().0);
    let b = bus.attach(node("b"), sink().0);
    a.connection_opened(connection("c1", "alice"));
    a.connection_opened(connection("c2", "bob"));
    b.connection_opened(connection("c3", "carol"));
    a.connection_closed("c1");

    let expected = vec![
        NodeInfo {
            connections: 1,
            ..node("a")
        },
        NodeInfo {
            connections: 1,
            ..node("b")
        },
    ];
    assert!(
        eventually(WAIT, || async { bus.nodes().await.unwrap() == expected }).await,
        "nodes: {:?}",
        bus.nodes().await
    );
    let json = server
        .cli(&["HGET", &keys::node_connections("a"), "c2"])
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"user": "bob", "connected_at_ms": 42})
    );
    assert!(a.is_ready() && b.is_ready());

    a.detach().await;
    assert_eq!(
        bus.nodes().await.unwrap(),
        vec![NodeInfo {
            connections: 1,
            ..node("b")
        }]
    );
    for key in [keys::node("a"), keys::node_connections("a")] {
        assert_eq!(
            server.cli(&["EXISTS", &key]).unwrap(),
            ["0"],
            "{key} outlives detach"
        );
    }
    b.detach().await;
    assert!(bus.nodes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_refreshing_disappears_within_its_lease() {
    let server = RedisServer::start().unwrap();
    let lease = Duration::from_millis(600);
    let bus = Bus::redis(&config(&server)).unwrap();

    // The doomed node lives on its own runtime; shutting that down kills its tasks without
    // any clean-up, as SIGKILL would.
    let doomed_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let doomed_config = BusConfig {
        node_lease: lease,
        ..config(&server)
    };
    let (doomed_bus, doomed_link) = doomed_runtime
        .spawn(async move {
            let bus = Bus::redis(&doomed_config).unwrap();
            let link = bus.attach(node("doomed"), sink().0);
            link.connection_opened(connection("c1", "u"));
            (bus, link)
        })
        .await
        .unwrap();
    assert!(
        eventually(WAIT, || async {
            bus.nodes().await.unwrap()
                == [NodeInfo {
                    connections: 1,
                    ..node("doomed")
                }]
        })
        .await
    );

    doomed_runtime.shutdown_background();
    let killed = Instant::now();
    assert!(
        eventually(WAIT, || async { bus.nodes().await.unwrap().is_empty() }).await,
        "the dead node stays listed"
    );
    let margin = Duration::from_millis(300);
    assert!(
        killed.elapsed() <= lease + margin,
        "vanished after {:?}",
        killed.elapsed()
    );
    assert!(
        eventually(lease + margin, || async {
            server
                .cli(&[
                    "EXISTS",
                    &keys::node("doomed"),
                    &keys::node_connections("doomed"),
                ])
                .unwrap()
                == ["0"]
        })
        .await,
        "the dead node's hashes do not expire"
    );
    // Their tasks are gone with their runtime; dropping them here would touch it.
    std::mem::forget((doomed_bus, doomed_link));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_everything_recovers_after_restart() {
    let mut server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server)).unwrap();
    let (sink, mut rx) = sink();
    let link = bus.attach(node("n1"), sink);
    link.connection_opened(connection("c1", "alice"));
    link.want("news").wait(WAIT).await.unwrap();
    let before = bus.publish(publish("news", b"before")).await.unwrap();
    assert_eq!(next(&mut rx).await.offset, before.offset);
    assert!(eventually(WAIT, || async { link.is_ready() }).await);

    server.stop();
    let started = Instant::now();
    let err = bus.publish(publish("news", b"lost")).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(&err, BusError::Unavailable(_)), "{err:?}");
    assert!(
        took <= TIMEOUT + Duration::from_millis(250),
        "publish failed after {took:?}"
    );
    assert!(matches!(bus.check().await, Err(BusError::Unavailable(_))));
    assert!(matches!(bus.nodes().await, Err(BusError::Unavailable(_))));
    assert!(
        eventually(WAIT, || async { !link.is_ready() }).await,
        "still ready with redis down"
    );

    server.restart().unwrap();
    let after = bus.publish(publish("other", b"x")).await.unwrap();
    assert_eq!(after.offset, 1);
    assert!(
        eventually(WAIT, || async { link.is_ready() }).await,
        "not ready again"
    );
    link.want("news").wait(WAIT).await.unwrap();
    // Redis lost the channel: a new epoch starts at offset 1.
    let again = bus.publish(publish("news", b"after")).await.unwrap();
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, before.epoch);
    let envelope = next(&mut rx).await;
    assert_eq!((envelope.offset, &envelope.data[..]), (1, &b"after"[..]));
    // The registry comes back, connections included.
    assert!(
        eventually(WAIT, || async {
            bus.nodes().await.is_ok_and(|n| {
                n == [NodeInfo {
                    connections: 1,
                    ..node("n1")
                }]
            })
        })
        .await
    );
    link.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_reported_as_unavailable_with_a_reason() {
    let config = BusConfig {
        redis_url: format!("redis://127.0.0.1:{}", chorus_testkit::free_port()),
        redis_timeout: TIMEOUT,
        ..BusConfig::default()
    };
    let bus = Bus::redis(&config).unwrap();
    let started = Instant::now();
    match bus.publish(publish("news", b"x")).await {
        Err(BusError::Unavailable(reason)) => {
            assert!(reason.contains("connection refused"), "{reason}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(started.elapsed() <= TIMEOUT + Duration::from_millis(250));
    let results = bus
        .broadcast(&["a".into(), "b{".into()], Bytes::new())
        .await;
    assert!(matches!(results[0], Err(BusError::Unavailable(_))));
    assert!(matches!(results[1], Err(BusError::BadChannel(_))));
    assert!(matches!(
        Bus::redis(&BusConfig {
            redis_url: "nope://".into(),
            ..config
        }),
        Err(BusError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_reconnects_and_resubscribes() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server)).unwrap();
    let (sink, mut rx) = sink();
    let link = bus.attach(node("n1"), sink);
    link.want("news").wait(WAIT).await.unwrap();
    assert!(eventually(WAIT, || async { link.is_ready() }).await);

    let killed = server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
    assert_eq!(killed, ["1"], "exactly the subscriber connection");
    // Resubscribed on a new connection: the pub/sub channel is back and delivery resumes.
    assert!(
        eventually(WAIT, || async {
            server
                .cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
                .unwrap()
                .len()
                == 1
                && pubsub_channels(&server).contains(&keys::pubsub("news"))
        })
        .await
    );
    link.want("news").wait(WAIT).await.unwrap();
    assert!(eventually(WAIT, || async { link.is_ready() }).await);
    let p = bus.publish(publish("news", b"again")).await.unwrap();
    assert_eq!(next(&mut rx).await.offset, p.offset);
    link.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_connection_that_stops_answering_is_replaced() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server)).unwrap();
    let (sink, mut rx) = sink();
    let link = bus.attach(node("n1"), sink);
    link.want("news").wait(WAIT).await.unwrap();
    let subscriber_id = |server: &RedisServer| -> Option<String> {
        let list = server.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]).unwrap();
        let line = list.first()?;
        line.split(' ')
            .find_map(|f| f.strip_prefix("id="))
            .map(str::to_owned)
    };
    let before = subscriber_id(&server).unwrap();

    // Redis keeps the socket open but answers nothing for longer than a PING period plus its
    // deadline: only the subscriber's own PING can tell.
    server.cli(&["CLIENT", "PAUSE", "4000", "ALL"]).unwrap();
    assert!(
        eventually(Duration::from_secs(8), || async {
            subscriber_id(&server).is_some_and(|id| id != before)
        })
        .await,
        "the stalled subscriber connection was kept"
    );
    link.want("news").wait(WAIT).await.unwrap();
    let p = bus.publish(publish("news", b"x")).await.unwrap();
    assert_eq!(next(&mut rx).await.offset, p.offset);
    link.detach().await;
}

fn short_history(size: u32) -> chorus_bus::Namespaces {
    chorus_bus::Namespaces {
        default: chorus_bus::NamespaceRules {
            history_size: size,
            history_ttl: Duration::from_secs(60),
            history_meta_ttl: Duration::from_secs(120),
            ..chorus_bus::NamespaceRules::default()
        },
        ..chorus_bus::Namespaces::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_exactly_its_size_with_ttls_and_reads_atomically_with_the_position() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server))
        .unwrap()
        .with_namespaces(short_history(3));
    for _ in 0..5 {
        bus.publish(publish("h", b"x")).await.unwrap();
    }
    let all = bus
        .history("h", &chorus_bus::HistoryQuery::default())
        .await
        .unwrap();
    let offsets: Vec<u64> = all.publications.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [3, 4, 5], "exactly the newest 3");
    assert_eq!(all.position.offset, 5);
    assert!(
        all.publications
            .iter()
            .all(|e| e.epoch == all.position.epoch)
    );
    let ttl = |key: String| {
        server.cli(&["PTTL", &key]).unwrap()[0]
            .parse::<i64>()
            .unwrap()
    };
    let (history_ttl, meta_ttl) = (ttl(keys::history("h")), ttl(keys::meta("h")));
    assert!(
        (1..=60_000).contains(&history_ttl),
        "history PTTL {history_ttl}"
    );
    assert!(
        (60_001..=120_000).contains(&meta_ttl),
        "meta PTTL {meta_ttl}"
    );

    let reverse = chorus_bus::HistoryQuery {
        since: Some(3),
        limit: 1,
        reverse: true,
        ..Default::default()
    };
    let newest = bus.history("h", &reverse).await.unwrap();
    assert_eq!(
        newest
            .publications
            .iter()
            .map(|e| e.offset)
            .collect::<Vec<_>>(),
        [5]
    );

    // From 1 the gap cannot be filled (2 is gone); from 2 it can.
    let judge = |offset| chorus_bus::Position {
        offset,
        epoch: all.position.epoch.clone(),
    };
    assert!(
        !bus.recover("h", &judge(1), 1 << 20)
            .await
            .unwrap()
            .recovered
    );
    let from_two = bus.recover("h", &judge(2), 1 << 20).await.unwrap();
    assert!(from_two.recovered);
    assert_eq!(from_two.publications.len(), 3);
}

/// A history read stops at its byte bound inside Redis (not after reading everything) and
/// says so; page after page, the reads add up to the whole history, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_read_in_pages_bounded_in_bytes_that_add_up_to_all_of_it() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server)).unwrap();
    for _ in 0..50 {
        bus.publish(publish("p", &[b'x'; 1000])).await.unwrap();
    }
    let page_bytes = 10_500; // ten envelopes of ~1,050 bytes
    let mut pages = Vec::new();
    let mut since = 0;
    loop {
        let query = chorus_bus::HistoryQuery::page(Some(since), 0, false, page_bytes);
        let page = bus.history("p", &query).await.unwrap();
        assert!(!page.publications.is_empty());
        since = page.publications.last().unwrap().offset;
        pages.push(
            page.publications
                .iter()
                .map(|e| e.offset)
                .collect::<Vec<_>>(),
        );
        if !page.more {
            break;
        }
        assert!(pages.len() < 50, "paging must make progress");
    }
    assert!(pages.len() >= 5, "pages of at most ~10 entries: {pages:?}");
    assert!(pages.iter().all(|p| p.len() <= 10), "{pages:?}");
    let all: Vec<u64> = pages.concat();
    assert_eq!(all, (1..=50).collect::<Vec<_>>());

    // Newest first, the same bound; an entry larger than the bound still comes, alone.
    let read = async |limit, reverse, bytes| {
        let query = chorus_bus::HistoryQuery::page(None, limit, reverse, bytes);
        bus.history("p", &query).await.unwrap()
    };
    let newest = read(0, true, page_bytes).await;
    assert!(newest.more);
    assert_eq!(newest.publications.first().map(|e| e.offset), Some(50));
    let tiny = read(0, false, 1).await;
    assert_eq!(tiny.publications.len(), 1);
    assert!(tiny.more);
    // A count limit reached inside the bound is not "more".
    let counted = read(3, false, page_bytes).await;
    assert_eq!(counted.publications.len(), 3);
    assert!(!counted.more);

    // Recovery pages the same way: recovered at every page, more until the top.
    let epoch = newest.position.epoch.clone();
    let first = bus
        .recover("p", &chorus_bus::Position { offset: 0, epoch }, page_bytes)
        .await
        .unwrap();
    assert!(first.recovered && first.more);
    assert_eq!(first.publications.first().map(|e| e.offset), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_position_was_lost_starts_a_new_epoch_without_the_old_history() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&config(&server)).unwrap();
    let first = bus.publish(publish("e", b"old")).await.unwrap();
    bus.publish(publish("e", b"old")).await.unwrap();
    server.cli(&["DEL", &keys::meta("e")]).unwrap();
    let reborn = bus.publish(publish("e", b"new")).await.unwrap();
    assert_eq!(reborn.offset, 1);
    assert_ne!(reborn.epoch, first.epoch);
    let history = bus
        .history("e", &chorus_bus::HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(history.publications.len(), 1);
    assert_eq!(history.publications[0].data.as_ref(), b"new");
    let old = chorus_bus::Position {
        offset: 2,
        epoch: first.epoch,
    };
    let recovery = bus.recover("e", &old, 1 << 20).await.unwrap();
    assert!(!recovery.recovered);
    assert_eq!(recovery.position.epoch, reborn.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_answers_the_first_offset_within_its_window_only() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::redis(&BusConfig {
        idempotency_window: Duration::from_millis(300),
        ..config(&server)
    })
    .unwrap();
    let keyed = |key: &str| Publish {
        idempotency_key: Some(key.into()),
        ..publish("i", b"x")
    };
    let first = bus.publish(keyed("k1")).await.unwrap();
    let again = bus.publish(keyed("k1")).await.unwrap();
    assert_eq!((again.offset, again.duplicate), (first.offset, true));
    assert_eq!(
        bus.position("i").await.unwrap().offset,
        1,
        "nothing published"
    );
    let other = bus.publish(keyed("k2")).await.unwrap();
    assert_eq!((other.offset, other.duplicate), (2, false));
    // After the window the key is forgotten (Redis expires it).
    let forgotten = eventually(Duration::from_secs(3), || {
        let n = server
            .cli(&["EXISTS", &keys::idempotency("i", "k1")])
            .unwrap();
        async move { n[0] == "0" }
    })
    .await;
    assert!(forgotten);
    let later = bus.publish(keyed("k1")).await.unwrap();
    assert_eq!((later.offset, later.duplicate), (3, false));
    // Malformed keys are refused before reaching Redis.
    for bad in ["", "has space", &"k".repeat(129)] {
        let err = bus.publish(keyed(bad)).await.unwrap_err();
        assert!(matches!(err, BusError::BadRequest(_)), "{bad:?}: {err:?}");
    }
}
