//! Pusher webhook events on the bus: produced once in the cluster (member events per user,
//! occupancy per channel across nodes, client events), queued, and handed to one reader —
//! against a real redis-server, and the same on the in-memory bus.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chorus_bus::pusher::{App, Apps, WebhookEvent, WebhookRecord};
use chorus_bus::{Bus, BusConfig, BusSink, Envelope, Member, NamespaceRules};
use chorus_testkit::{RedisCluster, RedisServer};

mod common;
use common::{node, redis_servers, redis_url};

const WAIT: Duration = Duration::from_secs(5);

struct Ignore;
impl BusSink for Ignore {
    fn publication(&self, _: Envelope) {}
}

fn apps() -> Apps {
    let hooked = App {
        webhook_url: Some("http://127.0.0.1:9/hooks".into()),
        ..App::new("1", "key-1", "secret-1-long")
    };
    let only_members = App {
        webhook_url: Some("http://127.0.0.1:9/hooks".into()),
        webhook_events: vec!["member_added".into(), "member_removed".into()],
        ..App::new("2", "key-2", "secret-2-long")
    };
    let silent = App::new("3", "key-3", "secret-3-long");
    Apps::from_apps(vec![hooked, only_members, silent]).unwrap()
}

/// A bus on `servers` (sharded over them when there are several) with the test apps.
fn redis_bus(servers: &[RedisServer], lease: Duration) -> Bus {
    let config = BusConfig {
        redis_url: redis_url(servers),
        redis_timeout: Duration::from_millis(500),
        redis_pool_size: 4,
        node_lease: lease,
        ..BusConfig::default()
    };
    Bus::redis(&config).unwrap().with_pusher_apps(apps())
}

/// The bus sharded over `servers`; the channels these tests use lie on more than one shard,
/// so the events come from several shards' queues.
fn sharded_bus(servers: &[RedisServer]) -> Bus {
    let shards: std::collections::HashSet<usize> = ["pusher-1:presence-room", "pusher-1:news"]
        .iter()
        .map(|c| chorus_bus::sharded::shard_of(c, servers.len()))
        .collect();
    assert!(shards.len() > 1 || !shards.contains(&0), "{shards:?}");
    redis_bus(servers, Duration::from_secs(2))
}

/// A bus on a Redis Cluster: the scripts find the webhook stream on another slot, so they
/// leave each due event for the bus to queue in a second step.
fn cluster_bus(cluster: &RedisCluster) -> Bus {
    let config = BusConfig {
        redis_url: cluster.url(),
        redis_timeout: Duration::from_millis(1000),
        redis_pool_size: 4,
        node_lease: Duration::from_secs(2),
        ..BusConfig::default()
    };
    Bus::redis(&config).unwrap().with_pusher_apps(apps())
}

fn member(client: &str, user: &str) -> Member {
    Member {
        client: client.into(),
        user: user.into(),
        info: Default::default(),
    }
}

fn rules(bus: &Bus, channel: &str) -> NamespaceRules {
    bus.presence_rules(channel).unwrap().clone()
}

/// Reads what the queue holds until `n` events came (or the deadline passed), acknowledging
/// them; then checks that nothing more arrives within a short while.
async fn drain(bus: &Bus, n: usize) -> Vec<(String, WebhookEvent)> {
    let mut got: Vec<WebhookRecord> = Vec::new();
    let end = tokio::time::Instant::now() + WAIT;
    while got.len() < n && tokio::time::Instant::now() < end {
        let batch = bus
            .read_webhooks("test", 100, Duration::from_millis(100))
            .await
            .unwrap();
        let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
        bus.ack_webhooks(&ids).await.unwrap();
        got.extend(batch);
    }
    let extra = bus
        .read_webhooks("test", 100, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(extra.is_empty(), "more events than expected: {extra:?}");
    got.into_iter().map(|r| (r.app, r.event)).collect()
}

fn added(app: &str, channel: &str, user: &str) -> (String, WebhookEvent) {
    (
        app.into(),
        WebhookEvent::MemberAdded {
            channel: channel.into(),
            user_id: user.into(),
        },
    )
}

fn removed(app: &str, channel: &str, user: &str) -> (String, WebhookEvent) {
    (
        app.into(),
        WebhookEvent::MemberRemoved {
            channel: channel.into(),
            user_id: user.into(),
        },
    )
}

/// Member events are per user: a user's second connection adds nothing, and the user is
/// removed only with their last one; apps without member webhooks queue nothing.
async fn member_events_are_per_user(bus: &Bus) {
    let a = bus.attach(node("a"), Arc::new(Ignore));
    let b = bus.attach(node("b"), Arc::new(Ignore));
    let ch = "pusher-1:presence-room";
    let r = rules(bus, ch);
    a.join(ch, member("1.1", "alice"), &r).await.unwrap();
    b.join(ch, member("2.1", "alice"), &r).await.unwrap();
    b.join(ch, member("2.2", "bob"), &r).await.unwrap();
    // Written again (a node re-asserting its entries): no new event.
    a.join(ch, member("1.1", "alice"), &r).await.unwrap();
    a.leave(ch, "1.1").await.unwrap();
    b.leave(ch, "2.1").await.unwrap();
    b.leave(ch, "2.1").await.unwrap();
    let silent = "pusher-3:presence-room";
    a.join(silent, member("1.2", "carol"), &rules(bus, silent))
        .await
        .unwrap();
    assert_eq!(
        drain(bus, 3).await,
        [
            added("1", "presence-room", "alice"),
            added("1", "presence-room", "bob"),
            removed("1", "presence-room", "alice"),
        ]
    );
}

/// A channel is occupied once, when its first node wants it, and vacated once, after its
/// last; an app that wants only member events gets none of these.
async fn occupancy_is_counted_across_nodes(bus: &Bus) {
    let a = bus.attach(node("a"), Arc::new(Ignore));
    let b = bus.attach(node("b"), Arc::new(Ignore));
    let ch = "pusher-1:news";
    a.want(ch).wait(WAIT).await.unwrap();
    b.want(ch).wait(WAIT).await.unwrap();
    b.want("pusher-2:news").wait(WAIT).await.unwrap();
    let occupied = (
        "1".to_owned(),
        WebhookEvent::ChannelOccupied {
            channel: "news".into(),
        },
    );
    assert_eq!(drain(bus, 1).await, [occupied]);
    a.unwant(ch);
    // Still wanted by b: nothing yet. Then b lets go too.
    assert!(drain(bus, 0).await.is_empty());
    b.unwant(ch);
    b.unwant("pusher-2:news");
    let vacated = (
        "1".to_owned(),
        WebhookEvent::ChannelVacated {
            channel: "news".into(),
        },
    );
    assert_eq!(drain(bus, 1).await, [vacated]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_member_events_are_per_user_and_queued_once() {
    let server = RedisServer::start().unwrap();
    member_events_are_per_user(&redis_bus(
        std::slice::from_ref(&server),
        Duration::from_secs(2),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_member_events_are_per_user_and_queued_once() {
    member_events_are_per_user(&Bus::memory().with_pusher_apps(apps())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_occupancy_is_counted_across_nodes() {
    let server = RedisServer::start().unwrap();
    occupancy_is_counted_across_nodes(&redis_bus(
        std::slice::from_ref(&server),
        Duration::from_secs(2),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_member_events_are_per_user_and_queued_once() {
    let servers = redis_servers(3);
    member_events_are_per_user(&sharded_bus(&servers)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_occupancy_is_counted_across_nodes() {
    let servers = redis_servers(3);
    occupancy_is_counted_across_nodes(&sharded_bus(&servers)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_member_events_are_per_user_and_queued_once() {
    let cluster = RedisCluster::start().unwrap();
    member_events_are_per_user(&cluster_bus(&cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_occupancy_is_counted_across_nodes() {
    let cluster = RedisCluster::start().unwrap();
    occupancy_is_counted_across_nodes(&cluster_bus(&cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_occupancy_is_counted_across_nodes() {
    occupancy_is_counted_across_nodes(&Bus::memory().with_pusher_apps(apps())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_channels_are_vacated_and_its_members_removed_once_by_a_survivor() {
    killed_node_reaped(&[RedisServer::start().unwrap()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_a_killed_nodes_channels_are_vacated_and_its_members_removed_once() {
    killed_node_reaped(&redis_servers(3)).await;
}

/// A node killed without clean-up: a survivor vacates its channels and removes its members,
/// once, on whichever shard they live.
async fn killed_node_reaped(servers: &[RedisServer]) {
    let lease = Duration::from_millis(600);
    let survivor_bus = redis_bus(servers, lease);
    let survivor = survivor_bus.attach(node("survivor"), Arc::new(Ignore));
    let ch = "pusher-1:presence-x";

    // The doomed node lives on its own runtime; shutting that down kills its tasks without
    // any clean-up, as SIGKILL would.
    let doomed_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Built here, used only there: its connections and tasks belong to the doomed runtime.
    let bus = redis_bus(servers, lease);
    let (doomed_bus, doomed_link) = doomed_runtime
        .spawn(async move {
            let link = bus.attach(node("doomed"), Arc::new(Ignore));
            link.want(ch).wait(WAIT).await.unwrap();
            let r = bus.presence_rules(ch).unwrap().clone();
            link.join(ch, member("9.1", "dora"), &r).await.unwrap();
            (bus, link)
        })
        .await
        .unwrap();
    assert_eq!(
        drain(&survivor_bus, 2).await,
        [
            (
                "1".to_owned(),
                WebhookEvent::ChannelOccupied {
                    channel: "presence-x".into()
                }
            ),
            added("1", "presence-x", "dora"),
        ]
    );

    doomed_runtime.shutdown_background();
    let mut events = drain(&survivor_bus, 2).await;
    events.sort_by_key(|(_, e)| e.kind());
    assert_eq!(
        events,
        [
            (
                "1".to_owned(),
                WebhookEvent::ChannelVacated {
                    channel: "presence-x".into()
                }
            ),
            removed("1", "presence-x", "dora"),
        ]
    );
    for server in servers {
        assert_eq!(
            server
                .cli(&["HLEN", &chorus_bus::keys::node_occupancy("doomed")])
                .unwrap(),
            ["0"],
            "the dead node's occupancy index is gone"
        );
    }
    drop(survivor);
    // Their tasks are gone with their runtime; dropping them here would touch it.
    std::mem::forget((doomed_bus, doomed_link));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_queued_event_goes_to_one_reader_and_an_acknowledged_one_never_comes_back() {
    let server = RedisServer::start().unwrap();
    let bus = redis_bus(std::slice::from_ref(&server), Duration::from_secs(2));
    let app = bus.pusher_apps().by_id("1").unwrap().clone();
    for n in 0..50 {
        bus.pusher_webhook(
            &app,
            WebhookEvent::ClientEvent {
                channel: "private-a".into(),
                event: "client-n".into(),
                data: n.to_string(),
                socket_id: "1.2".into(),
                user_id: None,
            },
        );
    }
    // Two readers, as two broker-api replicas: together they see each event exactly once.
    let mut seen = Vec::new();
    let end = tokio::time::Instant::now() + WAIT;
    while seen.len() < 50 && tokio::time::Instant::now() < end {
        for reader in ["r1", "r2"] {
            let batch = bus
                .read_webhooks(reader, 7, Duration::from_millis(50))
                .await
                .unwrap();
            let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
            bus.ack_webhooks(&ids).await.unwrap();
            seen.extend(batch.into_iter().map(|r| match r.event {
                WebhookEvent::ClientEvent { data, .. } => data,
                other => panic!("unexpected {other:?}"),
            }));
        }
    }
    assert_eq!(seen.len(), 50);
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 50, "an event was handed out twice");
    assert!(drain(&bus, 0).await.is_empty());
    assert_eq!(
        server
            .cli(&["XLEN", &chorus_bus::keys::webhooks()])
            .unwrap(),
        ["0"],
        "acknowledged events are deleted"
    );
    // A queue entry that is not an event is dropped, not handed out forever.
    server
        .cli(&[
            "XADD",
            &chorus_bus::keys::webhooks(),
            "*",
            "a",
            "1",
            "e",
            "{not json",
        ])
        .unwrap();
    assert!(drain(&bus, 0).await.is_empty());
}
