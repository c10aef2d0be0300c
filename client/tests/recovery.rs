//! Recovery against a real gateway: what a client missed while disconnected comes back in
//! order and exactly once, or the client is told it is lost.

mod support;

use std::time::Duration;

use chorus_client::{Backoff, Client, Event, Events, HistoryOptions, Position};
use chorus_gateway::GatewayConfig;
use serde_json::json;
use support::{Chorus, next, next_publication, next_skipping_retries};

fn fast_backoff() -> Backoff {
    Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_millis(400),
        ..Backoff::default()
    }
}

async fn connected(chorus: &Chorus) -> (Client, Events) {
    let (client, mut events) = Client::builder(chorus.ws())
        .backoff(fast_backoff())
        .connect()
        .unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    (client, events)
}

/// Stops the gateway, runs `meanwhile`, starts it again, and returns the client's
/// `Subscribed` event after its reconnect.
async fn across_restart(
    chorus: &mut Chorus,
    events: &mut Events,
    meanwhile: impl AsyncFnOnce(&Chorus),
) -> Event {
    chorus.stop_gateway().await;
    match next(events).await {
        Event::Disconnected {
            code: Some(3000),
            reconnect: true,
            ..
        } => {}
        other => panic!("expected Disconnected 3000, got {other:?}"),
    }
    meanwhile(chorus).await;
    chorus.start_gateway().await;
    assert!(matches!(
        next_skipping_retries(events).await,
        Event::Connected { .. }
    ));
    next(events).await
}

#[tokio::test]
async fn publications_missed_while_disconnected_are_recovered_in_order() {
    let mut chorus = Chorus::start(GatewayConfig::default()).await;
    let (client, mut events) = connected(&chorus).await;
    client.subscribe("news").await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    let first = chorus.publish("news", json!(1)).await;
    assert_eq!(next_publication(&mut events).await.1, 1);

    let subscribed = across_restart(&mut chorus, &mut events, async |c: &Chorus| {
        for n in 2..=4 {
            c.publish("news", json!(n)).await;
        }
    })
    .await;
    assert_eq!(
        subscribed,
        Event::Subscribed {
            channel: "news".into(),
            position: Position::new(4, first.epoch.clone()),
            recovered: Some(true),
            from: Some(first.clone()),
        }
    );
    for n in 2..=4u64 {
        let (_, offset, _, data) = next_publication(&mut events).await;
        assert_eq!(offset, n);
        assert_eq!(&data[..], n.to_string().as_bytes());
    }
    chorus.publish("news", json!(5)).await;
    assert_eq!(next_publication(&mut events).await.1, 5);
    let stats = client.stats();
    assert_eq!(
        (stats.publications, stats.duplicates, stats.gaps),
        (5, 0, 0)
    );
    assert_eq!(stats.unrecovered, 0);
}

#[tokio::test]
async fn a_channel_first_published_while_disconnected_is_recovered_from_its_start() {
    let mut chorus = Chorus::start(GatewayConfig::default()).await;
    let (client, mut events) = connected(&chorus).await;
    let info = client.subscribe("news").await.unwrap();
    assert_eq!(info.position, Position::default());
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    let subscribed = across_restart(&mut chorus, &mut events, async |c: &Chorus| {
        c.publish("news", json!(1)).await;
        c.publish("news", json!(2)).await;
    })
    .await;
    match subscribed {
        Event::Subscribed {
            recovered, from, ..
        } => {
            assert_eq!(recovered, Some(true));
            assert_eq!(from, Some(Position::default()));
        }
        other => panic!("expected Subscribed, got {other:?}"),
    }
    assert_eq!(next_publication(&mut events).await.1, 1);
    assert_eq!(next_publication(&mut events).await.1, 2);
}

#[tokio::test]
async fn publications_beyond_history_are_reported_lost() {
    let mut chorus = Chorus::start_with(
        GatewayConfig::default(),
        "[namespace.short]\nhistory_size = 2\nanonymous_subscribe = true\n",
    )
    .await;
    let (client, mut events) = connected(&chorus).await;
    client.subscribe("short:x").await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    let first = chorus.publish("short:x", json!(1)).await;
    assert_eq!(next_publication(&mut events).await.1, 1);

    let subscribed = across_restart(&mut chorus, &mut events, async |c: &Chorus| {
        for n in 2..=5 {
            c.publish("short:x", json!(n)).await;
        }
    })
    .await;
    assert_eq!(
        subscribed,
        Event::Subscribed {
            channel: "short:x".into(),
            position: Position::new(5, first.epoch.clone()),
            recovered: Some(false),
            from: Some(first),
        }
    );
    assert_eq!(client.stats().unrecovered, 1);
    // The channel continues from the new position.
    chorus.publish("short:x", json!(6)).await;
    assert_eq!(next_publication(&mut events).await.1, 6);
    assert_eq!(client.stats().gaps, 0);
}

#[tokio::test]
async fn subscribe_from_a_saved_position() {
    let chorus = Chorus::start(GatewayConfig::default()).await;
    let mut at = Vec::new();
    for n in 1..=5 {
        at.push(chorus.publish("news", json!(n)).await);
    }
    let (client, mut events) = connected(&chorus).await;
    let info = client.subscribe_from("news", at[1].clone()).await.unwrap();
    assert_eq!((info.position, info.recovered), (at[4].clone(), Some(true)));
    assert!(matches!(
        next(&mut events).await,
        Event::Subscribed {
            recovered: Some(true),
            ..
        }
    ));
    for n in 3..=5 {
        assert_eq!(next_publication(&mut events).await.1, n);
    }
    // A position of another epoch cannot be recovered; the client is told.
    let info = client
        .subscribe_from("other", Position::new(3, "no-such-epoch"))
        .await
        .unwrap();
    assert_eq!(info.recovered, Some(false));
    assert_eq!(info.position, Position::default());
}

#[tokio::test]
async fn history_reads() {
    let chorus = Chorus::start(GatewayConfig::default()).await;
    let mut at = Vec::new();
    for n in 1..=5 {
        at.push(chorus.publish("news", json!(n)).await);
    }
    let (client, _events) = connected(&chorus).await;
    let page = client
        .history(
            "news",
            HistoryOptions {
                since: Some(at[1].clone()),
                limit: 2,
                reverse: false,
            },
        )
        .await
        .unwrap();
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![3, 4]);
    assert_eq!(page.position, at[4]);
    let newest = client
        .history(
            "news",
            HistoryOptions {
                limit: 2,
                reverse: true,
                ..HistoryOptions::default()
            },
        )
        .await
        .unwrap();
    let offsets: Vec<u64> = newest.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![5, 4]);
    let e = client
        .history(
            "news",
            HistoryOptions {
                since: Some(Position::new(1, "no-such-epoch")),
                ..HistoryOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(112));
}
