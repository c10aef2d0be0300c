//! The client against a scripted gateway: gaps, duplicates, refusals and disconnects the
//! test decides exactly.

mod support;

use std::time::Duration;

use chorus_client::{Backoff, Client, Error, Event, Position};
use chorus_protocol::client::{self, command, push, reply};
use chorus_protocol::wire;
use support::{FakeGateway, next, next_publication, publication};

fn fast_backoff() -> Backoff {
    Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(100),
        ..Backoff::default()
    }
}

fn subscribed(offset: u64, epoch: &str) -> reply::Result {
    reply::Result::Subscribe(client::SubscribeResult {
        epoch: epoch.into(),
        offset,
        ..Default::default()
    })
}

#[tokio::test]
async fn duplicates_are_dropped_and_gaps_recovered() {
    let fake = FakeGateway::start().await;
    let (client, mut events, mut conn) = fake.connected(Client::builder(fake.ws())).await;
    let sub = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe("ch").await })
    };
    let (id, req) = conn.expect_subscribe().await;
    assert_eq!((req.channel.as_str(), req.recover), ("ch", false));
    // A publication that arrives before the reply, at or below its offset, is not delivered.
    conn.publication("ch", 1, "e").await;
    conn.reply(id, subscribed(1, "e")).await;
    assert_eq!(sub.await.unwrap().unwrap().position, Position::new(1, "e"));
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    conn.publication("ch", 2, "e").await;
    conn.publication("ch", 2, "e").await; // duplicate
    conn.publication("ch", 4, "e").await; // gap: 3 is missing
    assert_eq!(next_publication(&mut events).await.1, 2);
    match next(&mut events).await {
        Event::Gap {
            channel,
            position,
            received,
        } => {
            assert_eq!(channel, "ch");
            assert_eq!(position, Position::new(2, "e"));
            assert_eq!(received, Position::new(4, "e"));
        }
        other => panic!("expected Gap, got {other:?}"),
    }
    // The client resubscribes, recovering from the last delivered position.
    conn.expect_unsubscribe("ch").await;
    let (id, req) = conn.expect_subscribe().await;
    assert!(req.recover);
    assert_eq!((req.offset, req.epoch.as_str()), (2, "e"));
    // A live publication sent before the reply waits for it and comes after the recovered.
    conn.publication("ch", 5, "e").await;
    conn.reply(
        id,
        reply::Result::Subscribe(client::SubscribeResult {
            epoch: "e".into(),
            offset: 4,
            recovered: true,
            was_recovering: true,
            publications: vec![publication("ch", 3, "e"), publication("ch", 4, "e")],
        }),
    )
    .await;
    conn.publication("ch", 6, "e").await;
    match next(&mut events).await {
        Event::Subscribed {
            recovered, from, ..
        } => {
            assert_eq!(recovered, Some(true));
            assert_eq!(from, Some(Position::new(2, "e")));
        }
        other => panic!("expected Subscribed, got {other:?}"),
    }
    for want in 3..=6 {
        let (_, offset, _, data) = next_publication(&mut events).await;
        assert_eq!(offset, want);
        assert_eq!(&data[..], want.to_string().as_bytes());
    }
    let stats = client.stats();
    assert_eq!(
        (stats.duplicates, stats.gaps, stats.publications),
        (2, 1, 5)
    );
    assert_eq!(client.position("ch").await, Some(Position::new(6, "e")));
}

#[tokio::test]
async fn a_new_epoch_is_a_gap_and_unrecoverable_is_reported() {
    let fake = FakeGateway::start().await;
    let (client, mut events, mut conn) = fake.connected(Client::builder(fake.ws())).await;
    let sub = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe_from("ch", Position::new(7, "old")).await })
    };
    let (id, req) = conn.expect_subscribe().await;
    assert!(req.recover);
    assert_eq!((req.offset, req.epoch.as_str()), (7, "old"));
    conn.reply(
        id,
        reply::Result::Subscribe(client::SubscribeResult {
            epoch: "new".into(),
            offset: 3,
            recovered: false,
            was_recovering: true,
            publications: vec![],
        }),
    )
    .await;
    let info = sub.await.unwrap().unwrap();
    assert_eq!(info.recovered, Some(false));
    assert_eq!(
        next(&mut events).await,
        Event::Subscribed {
            channel: "ch".into(),
            position: Position::new(3, "new"),
            recovered: Some(false),
            from: Some(Position::new(7, "old")),
        }
    );
    assert_eq!(client.stats().unrecovered, 1);
    // Continues from the new position; then a publication of yet another epoch is a gap.
    conn.publication("ch", 4, "new").await;
    assert_eq!(next_publication(&mut events).await.1, 4);
    conn.publication("ch", 1, "newer").await;
    assert!(matches!(next(&mut events).await, Event::Gap { .. }));
    conn.expect_unsubscribe("ch").await;
    let (_, req) = conn.expect_subscribe().await;
    assert_eq!((req.offset, req.epoch.as_str()), (4, "new"));
}

#[tokio::test]
async fn unavailable_subscribes_are_retried_with_backoff() {
    let fake = FakeGateway::start().await;
    let (client, mut events, mut conn) = fake
        .connected(Client::builder(fake.ws()).backoff(fast_backoff()))
        .await;
    let sub = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe("ch").await })
    };
    let (id, _) = conn.expect_subscribe().await;
    conn.error(id, 108, "bus unavailable").await;
    assert_eq!(
        next(&mut events).await,
        Event::SubscribeFailed {
            channel: "ch".into(),
            code: 108,
            message: "bus unavailable".into(),
            retrying: true,
        }
    );
    conn.expect_unsubscribe("ch").await;
    let (id, req) = conn.expect_subscribe().await;
    assert!(!req.recover);
    conn.reply(id, subscribed(0, "")).await;
    assert_eq!(sub.await.unwrap().unwrap().position, Position::default());
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
}

#[tokio::test]
async fn reconnect_resubscribes_every_channel_from_its_position() {
    let fake = FakeGateway::start().await;
    let (client, mut events, mut conn) = fake
        .connected(Client::builder(fake.ws()).backoff(fast_backoff()))
        .await;
    let subs = {
        let client = client.clone();
        tokio::spawn(async move {
            client.subscribe("a").await.unwrap();
            client.subscribe("b").await.unwrap();
        })
    };
    let (id, _) = conn.expect_subscribe().await;
    conn.reply(id, subscribed(5, "e")).await;
    let (id, _) = conn.expect_subscribe().await;
    conn.reply(id, subscribed(0, "")).await;
    subs.await.unwrap();
    conn.publication("a", 6, "e").await;
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    assert_eq!(next_publication(&mut events).await.1, 6);
    conn.close(3002, "slow consumer").await;
    assert_eq!(
        next(&mut events).await,
        Event::Disconnected {
            code: Some(3002),
            reason: "slow consumer".into(),
            reconnect: true
        }
    );
    let mut conn = fake.accept_connected().await;
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    let mut asked = Vec::new();
    for _ in 0..2 {
        let (_, req) = conn.expect_subscribe().await;
        asked.push((req.channel, req.recover, req.offset, req.epoch));
    }
    asked.sort();
    assert_eq!(
        asked,
        vec![
            ("a".into(), true, 6, "e".into()),
            ("b".into(), true, 0, String::new()),
        ]
    );
}

#[tokio::test]
async fn commands_in_flight_fail_when_the_connection_drops() {
    let fake = FakeGateway::start().await;
    let (client, _events, mut conn) = fake
        .connected(Client::builder(fake.ws()).backoff(fast_backoff()))
        .await;
    let publish = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("chat:a", "1").await })
    };
    let cmd = conn.command().await;
    assert!(matches!(cmd.body, Some(command::Body::Publish(_))));
    drop(conn);
    assert_eq!(publish.await.unwrap(), Err(Error::Disconnected));
}

#[tokio::test]
async fn an_unanswered_command_times_out_and_replaces_the_connection() {
    let fake = FakeGateway::start().await;
    let (client, mut events, mut conn) = fake
        .connected(
            Client::builder(fake.ws())
                .backoff(fast_backoff())
                .command_timeout(Duration::from_millis(300)),
        )
        .await;
    let ping = {
        let client = client.clone();
        tokio::spawn(async move { client.ping().await })
    };
    let cmd = conn.command().await;
    assert!(matches!(cmd.body, Some(command::Body::Ping(_))));
    assert_eq!(
        ping.await.unwrap(),
        Err(Error::Timeout(Duration::from_millis(300)))
    );
    match next(&mut events).await {
        Event::Disconnected {
            code: None, reason, ..
        } => assert!(reason.contains("no reply"), "{reason}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let _conn = fake.accept_connected().await;
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
}

#[tokio::test]
async fn a_disconnect_without_reconnect_is_final() {
    let fake = FakeGateway::start().await;
    let (client, mut events, mut conn) = fake
        .connected(Client::builder(fake.ws()).backoff(fast_backoff()))
        .await;
    conn.send(wire::push(push::Body::Disconnect(client::Disconnect {
        code: 4001,
        reason: "go away".into(),
        reconnect: false,
    })))
    .await;
    conn.close(4001, "").await;
    assert_eq!(
        next(&mut events).await,
        Event::Disconnected {
            code: Some(4001),
            reason: "go away".into(),
            reconnect: false
        }
    );
    assert_eq!(events.recv().await, None);
    assert!(!fake.connects_within(Duration::from_millis(300)).await);
    assert_eq!(client.ping().await, Err(Error::Closed));
}

#[tokio::test]
async fn a_refused_token_is_final() {
    let fake = FakeGateway::start().await;
    let (_client, mut events) = Client::builder(fake.ws())
        .token("bad")
        .backoff(fast_backoff())
        .connect()
        .unwrap();
    let mut conn = fake.accept().await;
    let cmd = conn.command().await;
    match &cmd.body {
        Some(command::Body::Connect(c)) => assert_eq!(c.token, "bad"),
        other => panic!("expected connect, got {other:?}"),
    }
    conn.error(cmd.id, 101, "invalid token").await;
    match next(&mut events).await {
        Event::ConnectFailed {
            error,
            retry_in: None,
        } => assert!(error.contains("101"), "{error}"),
        other => panic!("expected a final ConnectFailed, got {other:?}"),
    }
    assert_eq!(events.recv().await, None);
}

#[tokio::test]
async fn own_publications_are_skipped_not_taken_for_gaps() {
    let fake = FakeGateway::start().await;
    let (client, mut events, mut conn) = fake.connected(Client::builder(fake.ws())).await;
    let sub = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe("chat:a").await })
    };
    let (id, _) = conn.expect_subscribe().await;
    conn.reply(id, subscribed(1, "e")).await;
    sub.await.unwrap().unwrap();
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    let publish = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("chat:a", "0").await })
    };
    let cmd = conn.command().await;
    assert!(matches!(&cmd.body, Some(command::Body::Publish(p)) if !p.echo));
    // The client's publication landed at 3, after someone else's 2, which arrives later; the
    // gateway does not send 3 back.
    conn.reply(
        cmd.id,
        reply::Result::Publish(client::PublishResult {
            offset: 3,
            epoch: "e".into(),
        }),
    )
    .await;
    assert_eq!(publish.await.unwrap(), Ok(Position::new(3, "e")));
    conn.publication("chat:a", 2, "e").await;
    conn.publication("chat:a", 4, "e").await;
    assert_eq!(next_publication(&mut events).await.1, 2);
    assert_eq!(next_publication(&mut events).await.1, 4);
    assert_eq!(client.stats().gaps, 0);
    assert_eq!(client.position("chat:a").await, Some(Position::new(4, "e")));
}
