//! The bus on a real Redis Cluster (six redis-servers from chorus-testkit, three masters with a
//! replica each): every channel lives on the master of its slot and travels on sharded
//! pub/sub there; a moved slot and a failed-over master are followed.

use std::collections::HashMap;
use std::time::Duration;

use chorus_bus::redis::cluster::slot;
use chorus_bus::{Bus, BusConfig, keys};
use chorus_testkit::RedisCluster;

mod common;
use common::{
    WAIT, assert_nodes_answer, attached, publish, publish_singly_then_batched, receive_all, until,
};

fn config(cluster: &RedisCluster) -> BusConfig {
    BusConfig {
        redis_url: cluster.url(),
        redis_timeout: Duration::from_millis(1000),
        redis_pool_size: 4,
        node_lease: Duration::from_millis(1500),
        canary_interval: Duration::from_millis(200),
        ..BusConfig::default()
    }
}

/// The port of the master serving `channel`'s slot.
fn owner(cluster: &RedisCluster, channel: &str) -> u16 {
    cluster.master_of(slot(&keys::pubsub(channel))).unwrap()
}

/// `per_master` channels on every master.
fn channels(cluster: &RedisCluster, per_master: usize) -> Vec<String> {
    let masters: Vec<u16> = cluster.masters().unwrap().iter().map(|m| m.0).collect();
    let mut by_master: HashMap<u16, Vec<String>> = HashMap::new();
    for i in 0.. {
        let name = format!("room:{i}");
        let list = by_master.entry(owner(cluster, &name)).or_default();
        if list.len() < per_master {
            list.push(name);
        }
        if masters
            .iter()
            .all(|m| by_master.get(m).is_some_and(|l| l.len() == per_master))
        {
            break;
        }
    }
    masters.iter().flat_map(|m| by_master[m].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_on_every_master_travel_on_their_own_shard_only() {
    let cluster = RedisCluster::start().unwrap();
    let rules = chorus_bus::NamespaceRules {
        presence: true,
        join_leave: true,
        ..chorus_bus::NamespaceRules::default()
    };
    let bus = Bus::redis(&config(&cluster))
        .unwrap()
        .with_namespaces(chorus_bus::Namespaces {
            default: rules.clone(),
            ..chorus_bus::Namespaces::default()
        });
    let channels = channels(&cluster, 2);
    let (a, _, mut rx_a) = attached(&bus, "a", &channels).await;
    let (b, _, mut rx_b) = attached(&bus, "b", &channels).await;
    // One by one, then batched (one pipeline over every master's slots).
    publish_singly_then_batched(&bus, &channels).await;
    receive_all(&mut rx_a, &channels, 4).await;
    receive_all(&mut rx_b, &channels, 4).await;

    // Each channel's keys and subscribers are on its master only; nothing uses plain pub/sub.
    let masters: Vec<u16> = cluster.masters().unwrap().iter().map(|m| m.0).collect();
    assert_eq!(masters.len(), 3);
    for c in &channels {
        let home = owner(&cluster, c);
        for &m in &masters {
            let server = cluster.node(m);
            let shard = server
                .cli(&["PUBSUB", "SHARDNUMSUB", &keys::pubsub(c)])
                .unwrap();
            let plain = server.cli(&["PUBSUB", "NUMSUB", &keys::pubsub(c)]).unwrap();
            assert_eq!(plain[1], "0", "{c} on plain pub/sub of {m}");
            if m == home {
                assert_eq!(shard[1], "2", "{c} on its master {m}");
                assert_eq!(server.cli(&["XLEN", &keys::history(c)]).unwrap(), ["4"]);
            } else {
                assert_eq!(shard[1], "0", "{c} on {m}, not its master");
                assert!(server.cli(&["DBSIZE"]).is_ok());
            }
        }
        let history = bus
            .history(c, &chorus_bus::HistoryQuery::page(None, 10, false, 1 << 20))
            .await
            .unwrap();
        assert_eq!(history.publications.len(), 4);
    }
    // Each node's canary runs on every master.
    for &m in &masters {
        let canaries = cluster
            .node(m)
            .cli(&["PUBSUB", "SHARDCHANNELS", "chorus.canary.*"])
            .unwrap();
        assert_eq!(
            canaries.len(),
            2,
            "one canary per node on {m}: {canaries:?}"
        );
    }

    // The registry, the control channel and presence work across slots.
    assert_nodes_answer(&bus, &["a", "b"]).await;
    let member = chorus_bus::Member {
        client: "c1".into(),
        user: "u1".into(),
        ..chorus_bus::Member::default()
    };
    a.join(&channels[0], member.clone(), &rules).await.unwrap();
    let present = bus.presence(&channels[0]).await.unwrap();
    assert_eq!(present.len(), 1);
    assert_eq!(present[0].client, "c1");
    a.leave(&channels[0], "c1").await.unwrap();
    assert!(bus.presence(&channels[0]).await.unwrap().is_empty());
    bus.check().await.unwrap();
    a.detach().await;
    b.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_slot_is_subscribed_again_on_its_new_master() {
    let cluster = RedisCluster::start().unwrap();
    let bus = Bus::redis(&config(&cluster)).unwrap();
    let channels = channels(&cluster, 1);
    let (moving, staying) = (channels[0].clone(), channels[1..].to_vec());
    let (link, sink, mut rx) = attached(&bus, "a", &channels).await;
    // A batch over every master: split by master with the slot map as it is now.
    let batch = channels.iter().map(|c| publish(c, 1)).collect();
    for result in bus.publish_many(batch).await {
        assert_eq!(result.unwrap().offset, 1);
    }
    receive_all(&mut rx, &channels, 1).await;
    sink.resubscribed.lock().unwrap().clear();

    let from = owner(&cluster, &moving);
    let to = owner(&cluster, &staying[0]);
    cluster
        .migrate_slot(slot(&keys::pubsub(&moving)), from, to)
        .unwrap();

    // Only the moved channel is lost, then subscribed again, on its new master.
    until("the moved channel resubscribed", async || {
        sink.resubscribed.lock().unwrap().contains(&moving)
    })
    .await;
    assert_eq!(*sink.lost.lock().unwrap(), [vec![moving.clone()]]);
    assert_eq!(
        cluster
            .node(to)
            .cli(&["PUBSUB", "SHARDNUMSUB", &keys::pubsub(&moving)])
            .unwrap()[1],
        "1"
    );
    // Its offsets and history moved with it, and publications reach the node again. The
    // batch goes out with the old slot map: the moved channel's publish is refused by its old
    // master (MOVED, not run) and sent again to the new one.
    let batch = channels.iter().map(|c| publish(c, 2)).collect();
    for result in bus.publish_many(batch).await {
        assert_eq!(result.unwrap().offset, 2);
    }
    assert_eq!(bus.publish(publish(&moving, 3)).await.unwrap().offset, 3);
    let mut seen = HashMap::new();
    while seen.len() < channels.len() {
        let e = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if e.offset == 2 {
            seen.insert(e.channel.clone(), e.offset);
        }
    }
    assert!(link.is_ready());
    link.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_the_link_comes_back() {
    let mut cluster = RedisCluster::start().unwrap();
    let bus = Bus::redis(&config(&cluster)).unwrap();
    let channels = channels(&cluster, 1);
    let (link, sink, mut rx) = attached(&bus, "a", &channels).await;
    let batch = channels.iter().map(|c| publish(c, 1)).collect();
    for result in bus.publish_many(batch).await {
        result.unwrap();
    }
    receive_all(&mut rx, &channels, 1).await;

    let owners: Vec<u16> = channels.iter().map(|c| owner(&cluster, c)).collect();
    let victim = owners[0];
    cluster.kill(victim);
    // Until a replica takes over, a batch fails only on the dead master's channels.
    let batch = channels.iter().map(|c| publish(c, 2)).collect();
    let results = bus.publish_many(batch).await;
    for ((c, result), home) in channels.iter().zip(results).zip(owners) {
        if home == victim {
            assert!(
                matches!(result, Err(chorus_bus::BusError::Unavailable(_))),
                "{c}: {result:?}"
            );
        } else {
            assert_eq!(result.unwrap().offset, 2, "{c}");
        }
    }
    // A service's readiness check names the dead master too, until its replica takes over.
    let why = bus.check().await.unwrap_err().to_string();
    assert!(
        why.contains(&format!("redis shard 127.0.0.1:{victim}")),
        "{why}"
    );
    // The replica takes over; the link resubscribes every channel and delivery resumes.
    until("the replica promoted", async || {
        cluster
            .master_of(slot(&keys::pubsub(&channels[0])))
            .is_ok_and(|m| m != victim)
    })
    .await;
    cluster.wait_ok(Duration::from_secs(30)).unwrap();
    until("the link is back", async || link.is_ready()).await;
    bus.check().await.unwrap();
    for c in &channels {
        assert!(sink.resubscribed.lock().unwrap().contains(c));
    }
    for c in &channels {
        let published = bus.publish(publish(c, 2)).await.unwrap();
        assert!(published.offset >= 1, "{c}: {published:?}");
    }
    let mut seen = 0;
    while seen < channels.len() {
        let e = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if e.data == "2" {
            seen += 1;
        }
    }
    link.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_lost_with_its_replica_is_named_until_it_returns() {
    let mut cluster = RedisCluster::start().unwrap();
    let bus = Bus::redis(&config(&cluster)).unwrap();
    let channels = channels(&cluster, 1);
    let (link, _sink, mut rx) = attached(&bus, "a", &channels).await;

    // No replica left to take over: the master's slots stay down, and both the gateway's
    // readiness and a service's check say which master it is.
    let victim = owner(&cluster, &channels[0]);
    let replica = cluster.replica_of(victim).unwrap();
    cluster.kill(replica);
    cluster.kill(victim);
    let dead = format!("redis shard 127.0.0.1:{victim} unreachable");
    until("readiness names the dead master", async || {
        link.not_ready().is_some_and(|why| why.contains(&dead))
    })
    .await;
    let why = bus.check().await.unwrap_err().to_string();
    assert!(
        why.contains(&format!("redis shard 127.0.0.1:{victim}")),
        "{why}"
    );

    // Back with its slots (and no data: its channels start a new epoch).
    cluster.restart(victim).unwrap();
    cluster.wait_ok(Duration::from_secs(30)).unwrap();
    until("the link is back", async || link.is_ready()).await;
    for c in &channels {
        until("publishing works again", async || {
            bus.publish(publish(c, 1)).await.is_ok()
        })
        .await;
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < channels.len() {
        let e = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        seen.insert(e.channel);
    }
    link.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_slot_the_map_lacks_publishes_it_once() {
    let cluster = RedisCluster::start().unwrap();
    for node in cluster.nodes() {
        node.cli(&["CONFIG", "SET", "cluster-require-full-coverage", "no"])
            .unwrap();
    }
    // A longer deadline than the other tests: the resend goes through the crate's own slot
    // map, which learns the slot anew, and gets half the deadline; under a loaded CI machine
    // 500 ms was not always enough.
    let bus = Bus::redis(&BusConfig {
        redis_timeout: Duration::from_secs(3),
        ..config(&cluster)
    })
    .unwrap();
    let channels = channels(&cluster, 1);
    let (lacking, others) = (&channels[0], &channels[1..]);
    let home = owner(&cluster, lacking);
    let slot = slot(&keys::pubsub(lacking)).to_string();
    // The slot served by no master while a batch over the others reads the slot map...
    for node in cluster.nodes() {
        node.cli(&["CLUSTER", "DELSLOTS", &slot]).unwrap();
    }
    let batch = others.iter().map(|c| publish(c, 1)).collect();
    for result in bus.publish_many(batch).await {
        assert_eq!(result.unwrap().offset, 1);
    }
    // ...then served again: the next batch finds it missing from the map it holds.
    cluster
        .node(home)
        .cli(&["CLUSTER", "ADDSLOTS", &slot])
        .unwrap();
    until("every node sees the slot served again", async || {
        cluster.masters().is_ok_and(|m| {
            m.iter().any(|(_, r)| {
                r.iter()
                    .any(|(a, b)| (*a..=*b).contains(&slot.parse().unwrap()))
            })
        }) && bus.position(lacking).await.is_ok()
    })
    .await;
    let batch = channels.iter().map(|c| publish(c, 1)).collect();
    for (c, result) in channels.iter().zip(bus.publish_many(batch).await) {
        let expected = if c == lacking { 1 } else { 2 };
        assert_eq!(result.unwrap().offset, expected, "{c}");
    }
    // Published once: its position and history hold one publication.
    assert_eq!(bus.position(lacking).await.unwrap().offset, 1);
}
