//! End-to-end on a bus sharded over three redis-servers: a broker-api and two gateways; real
//! WebSocket and HTTP clients. Channels on every shard reach clients on both gateways gapless;
//! one stopped shard stops only its channels, and both services' `/readyz` name it.

mod support;

use std::time::Duration;

use chorus_bus::sharded::shard_of;
use chorus_protocol::wire::Format;
use chorus_testkit::{WsClient, eventually};
use serde_json::json;
use support::Cluster;

const SHARDS: usize = 3;

/// Two channels on every shard.
fn channels() -> Vec<String> {
    let mut by_shard = vec![Vec::new(); SHARDS];
    for i in 0.. {
        let name = format!("live:{i}");
        let s = shard_of(&name, SHARDS);
        if by_shard[s].len() < 2 {
            by_shard[s].push(name);
        }
        if by_shard.iter().all(|v| v.len() == 2) {
            break;
        }
    }
    by_shard.concat()
}

async fn subscribed(url: &str, channels: &[String]) -> WsClient {
    let mut client = WsClient::connect(url, Format::Json).await.unwrap().0;
    for c in channels {
        client.subscribe(c).await.unwrap();
    }
    client
}

/// Reads until each of `channels` delivered the offsets after `from` up to `last`, in order
/// and gapless.
async fn receive(client: &mut WsClient, channels: &[String], from: u64, last: u64) {
    let mut seen = std::collections::HashMap::<String, u64>::new();
    while channels
        .iter()
        .any(|c| seen.get(c).copied().unwrap_or(from) < last)
    {
        let p = match client.next_publication().await {
            Ok(p) => p,
            Err(e) => panic!("{e}: got {seen:?} of {channels:?}"),
        };
        let before = seen.insert(p.channel.clone(), p.offset).unwrap_or(from);
        assert_eq!(p.offset, before + 1, "{}: gap or repeat", p.channel);
    }
}

async fn readyz(cluster: &Cluster, url: &str) -> (u16, String) {
    let resp = cluster.http_get(url).await;
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_on_every_shard_reach_both_gateways_and_a_stopped_shard_is_named() {
    let mut cluster = Cluster::start_sharded(2, SHARDS).await;
    let channels = channels();
    let mut a = subscribed(&cluster.ws(0), &channels).await;
    let mut b = subscribed(&cluster.ws(1), &channels).await;
    for n in 1..=5 {
        for c in &channels {
            let resp = cluster.http_publish(c, json!({ "n": n })).await;
            assert_eq!(resp.status(), 200);
        }
    }
    receive(&mut a, &channels, 0, 5).await;
    receive(&mut b, &channels, 0, 5).await;

    // Shard 1 goes away: only its channels stop, and readiness says which shard is broken.
    let (on_down, on_up): (Vec<String>, Vec<String>) = channels
        .iter()
        .cloned()
        .partition(|c| shard_of(c, SHARDS) == 1);
    cluster.shards[0].stop();
    let gateway = cluster.gateway_url(0, "/readyz");
    let api = cluster.api_url("/readyz");
    eventually(Duration::from_secs(5), "gateway not ready", || async {
        readyz(&cluster, &gateway).await.0 == 503
    })
    .await
    .unwrap();
    let (_, why) = readyz(&cluster, &gateway).await;
    assert!(
        why.contains("redis shard 1") && !why.contains("shard 2"),
        "{why}"
    );
    let (status, why) = readyz(&cluster, &api).await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("redis shard 1"), "{why}");

    for c in &on_down {
        let resp = cluster.http_publish(c, json!({ "n": 6 })).await;
        assert_eq!(resp.status(), 503, "{c}");
    }
    for c in &on_up {
        let resp = cluster.http_publish(c, json!({ "n": 6 })).await;
        assert_eq!(resp.status(), 200, "{c}");
    }
    receive(&mut a, &on_up, 5, 6).await;
    receive(&mut b, &on_up, 5, 6).await;

    // Back (empty: no persistence here): ready again, and its channels deliver again.
    cluster.shards[0].restart().unwrap();
    for url in [&gateway, &api] {
        eventually(Duration::from_secs(10), "ready again", || async {
            readyz(&cluster, url).await.0 == 200
        })
        .await
        .unwrap();
    }
    let resp = cluster.http_publish(&on_down[0], json!({ "n": 1 })).await;
    assert_eq!(resp.status(), 200);
}

/// The binary takes the shard list from `--redis-url` as operators write it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_binary_takes_a_shard_list_and_names_a_broken_shard() {
    let mut shards: Vec<chorus_testkit::RedisServer> = (0..SHARDS)
        .map(|_| chorus_testkit::RedisServer::start().unwrap())
        .collect();
    let urls: Vec<String> = shards
        .iter()
        .map(chorus_testkit::RedisServer::url)
        .collect();
    let port = chorus_testkit::free_port();
    let _gateway = support::gateway_process(&urls.join(","), port, &["--canary-interval", "200ms"]);
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    chorus_testkit::wait_http_ok(&readyz, Duration::from_secs(10))
        .await
        .unwrap();
    // Every shard has the node's lease: the gateway attached to each.
    for shard in &shards {
        eventually(
            Duration::from_secs(5),
            "the node registered on every shard",
            || async { shard.cli(&["ZCARD", &chorus_bus::keys::nodes()]).unwrap() == ["1"] },
        )
        .await
        .unwrap();
    }
    shards[2].stop();
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let resp = http.get(&readyz).send().await.unwrap();
        let (status, why) = (resp.status().as_u16(), resp.text().await.unwrap());
        if status == 503 && why.contains("redis shard 2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broken shard is not named: {status} {why}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
