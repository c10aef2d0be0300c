//! The client against a real gateway (in-memory bus, broker-api for publishing).

mod support;

use std::time::Duration;

use chorus_client::{Backoff, Client, Error, Event, Format, Position};
use chorus_gateway::GatewayConfig;
use serde_json::json;
use support::{Chorus, Proxy, next, next_publication, next_skipping_retries};

fn fast_backoff() -> Backoff {
    Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_millis(400),
        ..Backoff::default()
    }
}

async fn expect_connected(events: &mut chorus_client::Events) {
    match next_skipping_retries(events).await {
        Event::Connected { client, node, .. } => {
            assert!(!client.is_empty() && !node.is_empty());
        }
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// A client with fast reconnects, connected to `url` and subscribed to `news`.
async fn subscribed_to_news(url: String) -> (Client, chorus_client::Events) {
    let (client, mut events) = Client::builder(url)
        .backoff(fast_backoff())
        .connect()
        .unwrap();
    expect_connected(&mut events).await;
    client.subscribe("news").await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    (client, events)
}

#[tokio::test]
async fn connects_subscribes_and_receives_in_both_formats() {
    let chorus = Chorus::start(GatewayConfig::default()).await;
    for format in Format::CHORUS {
        let channel = format!("news-{format:?}");
        let (client, mut events) = Client::builder(chorus.ws())
            .format(format)
            .name("test")
            .connect()
            .unwrap();
        expect_connected(&mut events).await;
        let info = client.subscribe(&channel).await.unwrap();
        assert_eq!(info.position, Position::default(), "{format:?}");
        assert_eq!(info.recovered, None);
        match next(&mut events).await {
            Event::Subscribed {
                channel: c,
                position,
                recovered: None,
                from: None,
            } => assert_eq!(
                (c.as_str(), position),
                (channel.as_str(), Position::default())
            ),
            other => panic!("expected Subscribed, got {other:?}"),
        }
        let mut landed = Vec::new();
        for n in 1..=3 {
            landed.push(chorus.publish(&channel, json!({"n": n})).await);
        }
        for (n, at) in (1..=3).zip(&landed) {
            let (c, offset, epoch, data) = next_publication(&mut events).await;
            assert_eq!(
                (c.as_str(), offset, epoch.as_str()),
                (channel.as_str(), at.offset, at.epoch.as_str())
            );
            assert_eq!(offset, n);
            assert_eq!(
                &data[..],
                format!(r#"{{"n":{n}}}"#).as_bytes(),
                "{format:?}"
            );
        }
        assert_eq!(client.position(&channel).await, Some(landed[2].clone()));
        assert_eq!(client.stats().publications, 3);
        client.close().await;
    }
}

#[tokio::test]
async fn client_publish_echo_history_of_handles_and_ping() {
    let chorus = Chorus::start(GatewayConfig::default()).await;
    let (client, mut events) = Client::builder(chorus.ws())
        .format(Format::Protobuf)
        .connect()
        .unwrap();
    expect_connected(&mut events).await;
    client.subscribe("chat:room").await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    // Without echo the sender does not get its own publication; with echo it does.
    let first = client.publish("chat:room", &b"\x00\x01"[..]).await.unwrap();
    let second = client
        .publish_echo("chat:room", &b"\x02"[..])
        .await
        .unwrap();
    assert_eq!((first.offset, second.offset), (1, 2));
    // The sender does not get its first publication back and does not take the missing
    // offset for a gap: it skips its own offset and delivers the echoed one.
    let (channel, offset, epoch, data) = next_publication(&mut events).await;
    assert_eq!(
        (channel.as_str(), offset, epoch),
        ("chat:room", 2, second.epoch.clone())
    );
    assert_eq!(&data[..], b"\x02");
    assert_eq!(client.position("chat:room").await, Some(second));
    assert_eq!(client.stats().gaps, 0);
    assert!(client.ping().await.unwrap() < Duration::from_secs(5));
    // Publishing where clients may not is refused, and not retried.
    let e = client.publish("news", &b"x"[..]).await.unwrap_err();
    assert_eq!(e.code(), Some(103));
    client.close().await;
}

#[tokio::test]
async fn json_clients_publish_json_only() {
    let chorus = Chorus::start(GatewayConfig::default()).await;
    let (client, mut events) = Client::builder(chorus.ws()).connect().unwrap();
    expect_connected(&mut events).await;
    assert_eq!(
        client.publish("chat:x", &b"not json"[..]).await,
        Err(Error::NotJson)
    );
    let at = client.publish("chat:x", r#"{"ok":true}"#).await.unwrap();
    assert_eq!(at.offset, 1);
}

#[tokio::test]
async fn refused_subscribes_fail_and_are_not_retried() {
    let chorus = Chorus::start(GatewayConfig {
        max_channels_per_connection: 1,
        ..GatewayConfig::default()
    })
    .await;
    let (client, mut events) = Client::builder(chorus.ws()).connect().unwrap();
    expect_connected(&mut events).await;
    let e = client.subscribe("bad channel").await.unwrap_err();
    assert_eq!(e.code(), Some(102));
    match next(&mut events).await {
        Event::SubscribeFailed {
            channel,
            code: 102,
            retrying: false,
            ..
        } => assert_eq!(channel, "bad channel"),
        other => panic!("expected SubscribeFailed, got {other:?}"),
    }
    client.subscribe("a").await.unwrap();
    assert_eq!(
        client.subscribe("a").await,
        Err(Error::AlreadySubscribed("a".into()))
    );
    assert_eq!(client.subscribe("b").await.unwrap_err().code(), Some(106));
    assert_eq!(client.position("b").await, None);
    assert_eq!(client.position("a").await, Some(Position::default()));
}

#[tokio::test]
async fn unsubscribed_channels_deliver_nothing_more() {
    let chorus = Chorus::start(GatewayConfig::default()).await;
    let (client, mut events) = Client::builder(chorus.ws()).connect().unwrap();
    expect_connected(&mut events).await;
    client.subscribe("a").await.unwrap();
    client.subscribe("b").await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    client.unsubscribe("a").await.unwrap();
    chorus.publish("a", json!(1)).await;
    chorus.publish("b", json!(2)).await;
    let (channel, offset, ..) = next_publication(&mut events).await;
    assert_eq!((channel.as_str(), offset), ("b", 1));
    assert_eq!(client.position("a").await, None);
}

#[tokio::test]
async fn gateway_shutdown_leads_to_reconnect_and_resubscribe() {
    let mut chorus = Chorus::start(GatewayConfig::default()).await;
    let (client, mut events) = subscribed_to_news(chorus.ws()).await;
    let first = chorus.publish("news", json!("one")).await;
    assert_eq!(next_publication(&mut events).await.1, 1);

    chorus.stop_gateway().await;
    match next(&mut events).await {
        Event::Disconnected {
            code,
            reason,
            reconnect,
        } => {
            assert_eq!(code, Some(3000), "{reason}");
            assert!(reconnect);
            assert!(!reason.is_empty());
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    // While the gateway is down the client keeps trying, with growing delays.
    for _ in 0..2 {
        match next(&mut events).await {
            Event::ConnectFailed {
                retry_in: Some(d), ..
            } => assert!(d <= Duration::from_millis(400)),
            other => panic!("expected ConnectFailed, got {other:?}"),
        }
    }
    chorus.start_gateway().await;
    expect_connected(&mut events).await;
    match next(&mut events).await {
        Event::Subscribed { channel, from, .. } => {
            assert_eq!(channel, "news");
            assert_eq!(from, Some(first.clone()));
        }
        other => panic!("expected Subscribed, got {other:?}"),
    }
    let second = chorus.publish("news", json!("two")).await;
    let (_, offset, epoch, _) = next_publication(&mut events).await;
    assert_eq!(Position::new(offset, epoch), second);
    assert_eq!(client.stats().connects, 2);
    assert_eq!(client.stats().duplicates, 0);
}

#[tokio::test]
async fn a_cut_connection_is_replaced() {
    let chorus = Chorus::start(GatewayConfig::default()).await;
    let proxy = Proxy::start(chorus.gateway_addr).await;
    let (_client, mut events) = subscribed_to_news(proxy.ws()).await;
    proxy.cut();
    match next(&mut events).await {
        Event::Disconnected {
            code: None,
            reconnect: true,
            ..
        } => {}
        other => panic!("expected Disconnected without a close code, got {other:?}"),
    }
    expect_connected(&mut events).await;
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    chorus.publish("news", json!(1)).await;
    assert_eq!(next_publication(&mut events).await.1, 1);
}

#[tokio::test]
async fn a_silent_connection_is_taken_for_dead() {
    let chorus = Chorus::start(GatewayConfig {
        ping_interval: Duration::from_secs(1),
        ..GatewayConfig::default()
    })
    .await;
    let proxy = Proxy::start(chorus.gateway_addr).await;
    let (client, mut events) = Client::builder(proxy.ws())
        .backoff(fast_backoff())
        .ping_margin(Duration::from_millis(300))
        .connect()
        .unwrap();
    match next(&mut events).await {
        Event::Connected { ping_interval, .. } => {
            assert_eq!(ping_interval, Duration::from_secs(1))
        }
        other => panic!("expected Connected, got {other:?}"),
    }
    client.subscribe("news").await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    // Pings keep a healthy connection alive past the silence limit (2 × 1 s + 0.3 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    chorus.publish("news", json!(1)).await;
    assert_eq!(next_publication(&mut events).await.1, 1);

    let frozen_at = tokio::time::Instant::now();
    proxy.freeze();
    match next(&mut events).await {
        Event::Disconnected {
            code: None,
            reason,
            reconnect: true,
        } => {
            assert!(reason.contains("nothing from the gateway"), "{reason}");
            let after = frozen_at.elapsed();
            assert!(
                after >= Duration::from_millis(1300) && after < Duration::from_secs(4),
                "{after:?}"
            );
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    expect_connected(&mut events).await;
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
}

#[tokio::test]
async fn commands_wait_for_a_connection_up_to_the_command_timeout() {
    let mut chorus = Chorus::start(GatewayConfig::default()).await;
    let (client, mut events) = Client::builder(chorus.ws())
        .backoff(fast_backoff())
        .command_timeout(Duration::from_millis(500))
        .connect()
        .unwrap();
    expect_connected(&mut events).await;
    chorus.stop_gateway().await;
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected { .. }
    ));
    // No gateway: the publish times out.
    assert_eq!(
        client.publish("chat:a", "1").await,
        Err(Error::Timeout(Duration::from_millis(500)))
    );
    // A publish issued while down goes out once the gateway is back.
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("chat:a", "2").await })
    };
    chorus.start_gateway().await;
    let landed = pending.await.unwrap().unwrap();
    assert_eq!(landed.offset, 1);
}

#[tokio::test]
async fn close_ends_the_client() {
    let chorus = Chorus::start(GatewayConfig::default()).await;
    let (client, mut events) = Client::builder(chorus.ws()).connect().unwrap();
    expect_connected(&mut events).await;
    client.subscribe("news").await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));
    client.close().await;
    assert_eq!(
        next(&mut events).await,
        Event::Disconnected {
            code: Some(1000),
            reason: "closed by the client".into(),
            reconnect: false
        }
    );
    assert_eq!(events.recv().await, None);
    assert_eq!(client.subscribe("x").await, Err(Error::Closed));
    assert_eq!(client.ping().await, Err(Error::Closed));
}

#[tokio::test]
async fn backoff_grows_while_nothing_listens() {
    // A port with nothing listening: every attempt is refused at once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let backoff = Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(160),
        factor: 2.0,
        jitter: 0.5,
    };
    let (client, mut events) = Client::builder(format!("ws://127.0.0.1:{port}/ws"))
        .backoff(backoff)
        .connect()
        .unwrap();
    let mut last: Option<(tokio::time::Instant, Duration)> = None;
    for attempt in 0..6 {
        match next(&mut events).await {
            Event::ConnectFailed {
                retry_in: Some(d), ..
            } => {
                let nominal = backoff.nominal(attempt);
                assert!(d <= nominal && d >= nominal / 2, "{attempt}: {d:?}");
                let now = tokio::time::Instant::now();
                if let Some((at, wait)) = last {
                    assert!(now - at >= wait, "retried after {:?} < {wait:?}", now - at);
                }
                last = Some((now, d));
            }
            other => panic!("expected ConnectFailed, got {other:?}"),
        }
    }
    client.close().await;
}

#[tokio::test]
async fn an_application_that_stops_reading_is_cut_off_and_told_what_it_lost() {
    let chorus = Chorus::start(GatewayConfig {
        queue_max_bytes: 64 * 1024,
        ..GatewayConfig::default()
    })
    .await;
    let (client, mut events) = Client::builder(chorus.ws())
        .format(Format::Protobuf)
        .backoff(fast_backoff())
        .event_capacity(1)
        .connect()
        .unwrap();
    expect_connected(&mut events).await;
    client.subscribe("firehose").await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Subscribed { .. }));

    // The application reads nothing while 400 × 32 KiB (12.5 MiB) are published: far more than
    // the event queue, the socket buffers and the gateway's 64 KiB queue hold.
    const N: u64 = 400;
    let payload = bytes::Bytes::from(vec![7u8; 32 * 1024]);
    for _ in 0..N {
        chorus
            .bus
            .publish(chorus_bus::Publish {
                channel: "firehose".into(),
                data: payload.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    // Now it reads: publications in order, then the slow-consumer close, then a resubscribe
    // that either recovers the rest or says they are lost — never a silent hole.
    let mut last = 0;
    loop {
        match next(&mut events).await {
            Event::Publication(p) => {
                assert_eq!(p.offset, last + 1);
                last = p.offset;
            }
            Event::Disconnected {
                code, reconnect, ..
            } => {
                assert_eq!(code, Some(3002));
                assert!(reconnect);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(last < N, "cut off after {last} of {N}");
    expect_connected(&mut events).await;
    match next(&mut events).await {
        Event::Subscribed {
            position,
            recovered,
            from,
            ..
        } => {
            assert_eq!(from.map(|p| p.offset), Some(last));
            assert_eq!(position.offset, N);
            match recovered {
                Some(true) => {
                    for want in last + 1..=N {
                        assert_eq!(next_publication(&mut events).await.1, want);
                    }
                }
                Some(false) => assert_eq!(client.stats().unrecovered, 1),
                None => panic!("the resubscribe did not recover"),
            }
        }
        other => panic!("expected Subscribed, got {other:?}"),
    }
    chorus.publish("firehose", json!("after")).await;
    assert_eq!(next_publication(&mut events).await.1, N + 1);
    assert_eq!(client.stats().duplicates, 0);
}
