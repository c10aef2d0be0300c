//! The Rust client (`chorus-client`) on presence channels and server-side subscriptions,
//! against a real Redis, a broker-api and two gateways: what its handle answers and which
//! events it emits, in which order.

mod support;

use std::time::Duration;

use chorus_bus::Namespaces;
use chorus_client::{Backoff, Client, Event, Events, Position, SubscribeOptions};
use chorus_gateway::GatewayConfig;
use chorus_gateway::config::Secret;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use support::{API_KEY, Cluster};

const SECRET: &str = "test-only-hmac-secret-0123456789abcdef";

async fn cluster() -> Cluster {
    let config = GatewayConfig {
        token_hmac_secret: Some(Secret(SECRET.into())),
        ..GatewayConfig::default()
    };
    let namespaces = Namespaces::parse(
        r#"
[default]

[namespace.room]
client_publish = true
presence = true
join_leave = true

[namespace.user]
personal_channel = true
"#,
    )
    .expect("valid namespaces");
    Cluster::start_full(2, config, namespaces, false).await
}

fn token(user: &str) -> String {
    let claims = json!({"sub": user, "info": {"name": user}, "exp": 4_000_000_000u64});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token signs")
}

/// A client of `user` on `url`, once connected (its personal channel, if any, not yet
/// announced).
async fn connected(url: String, user: &str) -> (Client, Events, String) {
    connected_with(url, user, Duration::from_millis(20)).await
}

/// As [`connected`], reconnecting after `backoff` exactly.
async fn connected_with(url: String, user: &str, backoff: Duration) -> (Client, Events, String) {
    let (client, mut events) = Client::builder(url)
        .token(token(user))
        .backoff(Backoff {
            min: backoff,
            max: backoff,
            jitter: 0.0,
            ..Backoff::default()
        })
        .connect()
        .expect("client starts");
    match next(&mut events).await {
        Event::Connected { client: id, .. } => (client, events, id),
        other => panic!("expected Connected, got {other:?}"),
    }
}

async fn next(events: &mut Events) -> Event {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("the event stream is open")
}

/// The next event that is not the announcement of a personal channel.
async fn next_skipping_personal(events: &mut Events) -> Event {
    loop {
        match next(events).await {
            Event::ServerSubscribed { channel, .. } if channel.starts_with("user:#") => {}
            other => return other,
        }
    }
}

async fn post(cluster: &Cluster, path: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(cluster.api_url(path))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("HTTP answers");
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.expect("JSON answer")
}

async fn publish(cluster: &Cluster, channel: &str, data: Value) -> Position {
    let body = post(
        cluster,
        "/api/publish",
        json!({"channel": channel, "data": data}),
    )
    .await;
    Position::new(
        body["offset"].as_u64().expect("offset"),
        body["epoch"].as_str().expect("epoch"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_stats_joins_and_leaves_in_order_and_the_opt_out() {
    let cluster = cluster().await;
    let (alice, mut a_events, alice_id) = connected(cluster.ws(0), "alice").await;
    let (bob, mut b_events, bob_id) = connected(cluster.ws(1), "bob").await;
    let (carol, mut c_events, _) = connected(cluster.ws(1), "carol").await;
    for events in [&mut a_events, &mut b_events, &mut c_events] {
        assert!(matches!(
            next(events).await,
            Event::ServerSubscribed { channel, .. } if channel.starts_with("user:#")
        ));
    }

    alice.subscribe("room:1").await.expect("alice subscribes");
    assert!(matches!(
        next(&mut a_events).await,
        Event::Subscribed { .. }
    ));
    let quiet = SubscribeOptions {
        join_leave: false,
        ..SubscribeOptions::default()
    };
    carol
        .subscribe_with("room:1", quiet)
        .await
        .expect("carol subscribes");
    assert!(matches!(
        next(&mut c_events).await,
        Event::Subscribed { .. }
    ));
    match next(&mut a_events).await {
        Event::Join { channel, info } => {
            assert_eq!((channel.as_str(), info.user.as_str()), ("room:1", "carol"));
        }
        other => panic!("expected carol's join, got {other:?}"),
    }

    bob.subscribe("room:1").await.expect("bob subscribes");
    assert!(matches!(
        next(&mut b_events).await,
        Event::Subscribed { .. }
    ));
    match next(&mut a_events).await {
        Event::Join { channel, info } => {
            assert_eq!(channel, "room:1");
            assert_eq!(
                (info.client.as_str(), info.user.as_str()),
                (bob_id.as_str(), "bob")
            );
            assert_eq!(
                serde_json::from_slice::<Value>(&info.info).expect("info is JSON"),
                json!({"name": "bob"})
            );
        }
        other => panic!("expected bob's join, got {other:?}"),
    }

    // Presence and its stats, asked on either gateway, list all three.
    let mut here: Vec<(String, String)> = bob
        .presence("room:1")
        .await
        .expect("presence")
        .into_iter()
        .map(|c| (c.user, c.client))
        .collect();
    here.sort();
    assert_eq!(here.len(), 3);
    assert_eq!(here[0], ("alice".into(), alice_id.clone()));
    assert_eq!(here[1], ("bob".into(), bob_id.clone()));
    let stats = alice.presence_stats("room:1").await.expect("stats");
    assert_eq!((stats.clients, stats.users), (3, 3));

    // Bob publishes, then leaves: alice receives his publication, then his leave.
    let at = bob
        .publish("room:1", r#"{"said":"bye"}"#)
        .await
        .expect("publish");
    bob.unsubscribe("room:1").await.expect("unsubscribe");
    match next(&mut a_events).await {
        Event::Publication(p) => assert_eq!((p.offset, p.epoch), (at.offset, at.epoch)),
        other => panic!("expected bob's publication, got {other:?}"),
    }
    match next(&mut a_events).await {
        Event::Leave { channel, info } => {
            assert_eq!(
                (channel.as_str(), info.client.as_str()),
                ("room:1", bob_id.as_str())
            );
        }
        other => panic!("expected bob's leave, got {other:?}"),
    }
    // Carol opted out: her next event is the publication, no join or leave before it.
    match next(&mut c_events).await {
        Event::Publication(p) => assert_eq!(p.offset, at.offset),
        other => panic!("carol opted out of joins and leaves, got {other:?}"),
    }
    let stats = carol.presence_stats("room:1").await.expect("stats");
    assert_eq!((stats.clients, stats.users), (2, 2));

    // A channel without presence: a clear refusal.
    match alice.presence("news").await {
        Err(chorus_client::Error::Server { code, .. }) => assert_eq!(code, 107),
        other => panic!("expected a refusal, got {other:?}"),
    }
    for c in [alice, bob, carol] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_subscriptions_deliver_in_order_and_come_back_recovered_after_a_reconnect() {
    let cluster = cluster().await;
    // Reconnects after a second, so that publications made right after the disconnect are
    // missed and must be recovered.
    let (dave, mut events, _) = connected_with(cluster.ws(0), "dave", Duration::from_secs(1)).await;
    // The personal channel, subscribed by the gateway at connect.
    let personal = match next(&mut events).await {
        Event::ServerSubscribed {
            channel,
            position,
            recovered: None,
            from: None,
        } => {
            assert_eq!(channel, "user:#dave");
            position
        }
        other => panic!("expected the personal channel, got {other:?}"),
    };
    let at = publish(&cluster, "user:#dave", json!({"n": 1})).await;
    assert_eq!(at.offset, personal.offset + 1);
    match next(&mut events).await {
        Event::Publication(p) => {
            assert_eq!((p.channel.as_str(), p.offset), ("user:#dave", at.offset))
        }
        other => panic!("expected the personal publication, got {other:?}"),
    }

    // Put into a channel by the server API: the event, then its publications, gapless.
    publish(&cluster, "feed", json!({"before": true})).await;
    post(
        &cluster,
        "/api/subscribe",
        json!({"user": "dave", "channel": "feed"}),
    )
    .await;
    let start = match next(&mut events).await {
        Event::ServerSubscribed {
            channel, position, ..
        } => {
            assert_eq!(channel, "feed");
            position
        }
        other => panic!("expected the feed, got {other:?}"),
    };
    for n in 1..=3u64 {
        publish(&cluster, "feed", json!({"n": n})).await;
    }
    for n in 1..=3u64 {
        match next(&mut events).await {
            Event::Publication(p) => {
                assert_eq!((p.channel.as_str(), p.offset), ("feed", start.offset + n));
            }
            other => panic!("expected feed #{n}, got {other:?}"),
        }
    }
    assert_eq!(
        dave.position("feed").await,
        Some(Position::new(start.offset + 3, start.epoch.clone()))
    );

    // A reconnect: the personal channel comes back with what was published meanwhile; the
    // feed (put there by the API) does not, and the client says so.
    post(
        &cluster,
        "/api/disconnect",
        json!({"user": "dave", "code": 4100, "reason": "move", "reconnect": true}),
    )
    .await;
    match next(&mut events).await {
        Event::Disconnected { reconnect, .. } => assert!(reconnect),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let missed = [
        publish(&cluster, "user:#dave", json!({"missed": 1})).await,
        publish(&cluster, "user:#dave", json!({"missed": 2})).await,
    ];
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    match next(&mut events).await {
        Event::ServerSubscribed {
            channel,
            position,
            recovered,
            from,
        } => {
            assert_eq!(channel, "user:#dave");
            assert_eq!(
                recovered,
                Some(true),
                "recovered from the last delivered position"
            );
            assert_eq!(from, Some(at.clone()));
            assert_eq!(position, missed[1], "the push carried what was missed");
        }
        other => panic!("expected the personal channel again, got {other:?}"),
    }
    for m in &missed {
        match next(&mut events).await {
            Event::Publication(p) => {
                assert_eq!((p.channel.as_str(), p.offset), ("user:#dave", m.offset));
            }
            other => panic!("expected a recovered publication, got {other:?}"),
        }
    }
    assert_eq!(dave.stats().unrecovered, 0);
    match next(&mut events).await {
        Event::ServerUnsubscribed { channel, reason } => {
            assert_eq!(channel, "feed");
            assert!(reason.contains("not restored"), "{reason}");
        }
        other => panic!("expected the feed to be dropped, got {other:?}"),
    }
    assert_eq!(dave.position("feed").await, None);

    // Taken out of a channel by the API.
    post(
        &cluster,
        "/api/subscribe",
        json!({"user": "dave", "channel": "feed"}),
    )
    .await;
    assert!(matches!(
        next_skipping_personal(&mut events).await,
        Event::ServerSubscribed { channel, .. } if channel == "feed"
    ));
    post(
        &cluster,
        "/api/unsubscribe",
        json!({"user": "dave", "channel": "feed"}),
    )
    .await;
    match next(&mut events).await {
        Event::ServerUnsubscribed { channel, .. } => assert_eq!(channel, "feed"),
        other => panic!("expected the unsubscribe, got {other:?}"),
    }
    publish(&cluster, "feed", json!({"after": true})).await;
    let last = publish(&cluster, "user:#dave", json!({"marker": true})).await;
    match next(&mut events).await {
        Event::Publication(p) => {
            assert_eq!((p.channel.as_str(), p.offset), ("user:#dave", last.offset));
        }
        other => panic!("nothing of the feed after its unsubscribe, got {other:?}"),
    }
    dave.close().await;
}
