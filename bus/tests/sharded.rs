//! The bus sharded over three independent redis-servers (from chorus-testkit): every channel
//! lives on one shard only, nodes receive from every shard, and one stopped shard stops only
//! its own channels.

use std::time::Duration;

use chorus_bus::sharded::shard_of;
use chorus_bus::{Bus, BusConfig, BusError, keys};
use chorus_testkit::RedisServer;

mod common;
use common::{
    assert_nodes_answer, attached, publish, publish_singly_then_batched, receive_all,
    redis_servers, redis_url, until,
};

const SHARDS: usize = 3;

fn config(servers: &[RedisServer]) -> BusConfig {
    BusConfig {
        redis_url: redis_url(servers),
        redis_timeout: Duration::from_millis(500),
        redis_pool_size: 4,
        node_lease: Duration::from_millis(1500),
        canary_interval: Duration::from_millis(200),
        ..BusConfig::default()
    }
}

/// Channels spread so that every shard holds `per_shard` of them.
fn channels(per_shard: usize) -> Vec<String> {
    let mut by_shard = vec![Vec::new(); SHARDS];
    for i in 0.. {
        let name = format!("room:{i}");
        let s = shard_of(&name, SHARDS);
        if by_shard[s].len() < per_shard {
            by_shard[s].push(name);
        }
        if by_shard.iter().all(|v| v.len() == per_shard) {
            break;
        }
    }
    by_shard.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_lives_on_its_own_shard_and_reaches_nodes_through_it() {
    let servers = redis_servers(SHARDS);
    let bus = Bus::redis(&config(&servers)).unwrap();
    let channels = channels(4);
    let (a, _, mut rx_a) = attached(&bus, "a", &channels).await;
    let (b, _, mut rx_b) = attached(&bus, "b", &channels).await;
    // One by one, then batched: one pipeline per shard.
    publish_singly_then_batched(&bus, &channels).await;
    receive_all(&mut rx_a, &channels, 4).await;
    receive_all(&mut rx_b, &channels, 4).await;

    // Each channel's keys and subscribers are on its shard and nowhere else.
    for c in &channels {
        let owner = shard_of(c, SHARDS);
        for (i, server) in servers.iter().enumerate() {
            let meta = server.cli(&["EXISTS", &keys::meta(c)]).unwrap();
            let history = server.cli(&["XLEN", &keys::history(c)]).unwrap();
            let subscribers = server.cli(&["PUBSUB", "NUMSUB", &keys::pubsub(c)]).unwrap();
            if i == owner {
                assert_eq!((meta[0].as_str(), history[0].as_str()), ("1", "4"), "{c}");
                assert_eq!(subscribers[1], "2", "{c} on shard {i}");
            } else {
                assert_eq!((meta[0].as_str(), history[0].as_str()), ("0", "0"), "{c}");
                assert_eq!(subscribers[1], "0", "{c} on shard {i}");
            }
        }
        let history = bus
            .history(c, &chorus_bus::HistoryQuery::page(None, 10, false, 1 << 20))
            .await
            .unwrap();
        assert_eq!(history.publications.len(), 4);
    }
    // The node list and the control channel live on the first shard.
    assert_nodes_answer(&bus, &["a", "b"]).await;
    // Every shard holds the nodes' leases (its presence reaper reads them); the connections
    // are registered on the home shard only.
    a.connection_opened(chorus_bus::ConnectionInfo {
        client: "c1".into(),
        user: "u1".into(),
        connected_at_ms: 1,
    });
    let conns = keys::node_connections("a");
    until("the connection registered", async || {
        servers[0].cli(&["HLEN", &conns]).unwrap() == ["1"]
    })
    .await;
    for server in &servers[1..] {
        assert_eq!(server.cli(&["ZCARD", &keys::nodes()]).unwrap(), ["2"]);
        assert_eq!(server.cli(&["HLEN", &conns]).unwrap(), ["0"]);
    }
    bus.check().await.unwrap();
    a.detach().await;
    b.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_shard_stops_only_its_channels_and_is_named() {
    let mut servers = redis_servers(SHARDS);
    let bus = Bus::redis(&config(&servers)).unwrap();
    let channels = channels(2);
    let (on_down, on_up): (Vec<String>, Vec<String>) = channels
        .iter()
        .cloned()
        .partition(|c| shard_of(c, SHARDS) == 1);
    let (link, sink, mut rx) = attached(&bus, "a", &channels).await;

    servers[1].stop();
    // The node's link to shard 1 breaks, and only shard 1's channels are marked lost.
    until("shard 1 is reported down", async || {
        link.not_ready()
            .is_some_and(|why| why.contains("redis shard 1"))
    })
    .await;
    let lost = sink.lost.lock().unwrap().clone();
    assert!(!lost.is_empty());
    for marked in &lost {
        assert_eq!(
            marked, &on_down,
            "a lost link marked other shards' channels"
        );
    }
    let down = bus.check().await.unwrap_err().to_string();
    assert!(
        down.contains("redis shard 1") && !down.contains("shard 0"),
        "{down}"
    );

    // The other shards' channels keep working, delivered; shard 1's fail, named.
    for c in &on_up {
        assert_eq!(bus.publish(publish(c, 1)).await.unwrap().offset, 1);
    }
    receive_all(&mut rx, &on_up, 1).await;
    for c in &on_down {
        match bus.publish(publish(c, 1)).await {
            Err(BusError::Unavailable(why)) => assert!(why.contains("redis shard 1"), "{why}"),
            other => panic!("a publish to a stopped shard: {other:?}"),
        }
    }
    let batch = channels.iter().map(|c| publish(c, 2)).collect();
    for (c, result) in channels.iter().zip(bus.publish_many(batch).await) {
        assert_eq!(result.is_ok(), !on_down.contains(c), "{c}: {result:?}");
    }

    // Back: the link resubscribes and the shard's channels work again (a fresh Redis).
    servers[1].restart().unwrap();
    until("shard 1 back", async || link.is_ready()).await;
    bus.check().await.unwrap();
    for c in &on_down {
        assert_eq!(bus.publish(publish(c, 1)).await.unwrap().offset, 1);
    }
    link.detach().await;
}

#[test]
fn a_bad_shard_list_is_a_configuration_error() {
    let mut config = BusConfig {
        redis_url: "redis://127.0.0.1:1,not a url".into(),
        ..BusConfig::default()
    };
    assert!(matches!(Bus::redis(&config), Err(BusError::Config(_))));
    config.redis_url = vec!["redis://127.0.0.1:1"; 65].join(",");
    let e = Bus::redis(&config).err().expect("65 shards refused");
    assert!(e.to_string().contains("2 to 64"), "{e}");
    config.redis_url = " , ".into();
    assert!(matches!(Bus::redis(&config), Err(BusError::Config(_))));
}
