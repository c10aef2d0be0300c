//! Faults that make clients reconnect, under steady publishing, with `chorus-client` as the
//! client (reconnect with backoff, resubscribe with recovery) and every message counted:
//! Redis restarted without persistence (b), a gateway process killed (d), a rolling restart
//! of gateway processes (e). Run with `--no-capture` to see the counts.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_bus::{NamespaceRules, Namespaces};
use chorus_gateway::GatewayConfig;
use chorus_testkit::{Process, free_port, wait_http_ok};
use support::Cluster;
use support::load::{Publisher, assert_nothing_lost, followers, report, settle, stop_all, tally};

const RATE: u32 = 1000;
const CHANNELS: usize = 10;
const FOLLOWERS: usize = 6;

fn channels() -> Vec<String> {
    (0..CHANNELS).map(|i| format!("load:{i}")).collect()
}

fn gateway_process(redis_url: &str, port: u16) -> Process {
    support::gateway_process(
        redis_url,
        port,
        &[
            "--drain-window",
            "1s",
            "--redis-timeout",
            "1s",
            "--canary-interval",
            "200ms",
        ],
    )
}

async fn ready(port: u16) {
    wait_http_ok(
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(10),
    )
    .await
    .expect("gateway ready");
}

/// (d) A gateway process is killed with SIGKILL under load: its clients reconnect to the other
/// gateway with their positions and recover every message they missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_clients_recover_every_message_on_the_other_gateway() {
    let cluster = Cluster::start(0).await;
    let (pa, pb) = (free_port(), free_port());
    let mut a = gateway_process(&cluster.redis.url(), pa);
    let _b = gateway_process(&cluster.redis.url(), pb);
    ready(pa).await;
    ready(pb).await;
    let urls = [pa, pb].map(|p| format!("ws://127.0.0.1:{p}/ws"));
    let chans = channels();
    let followers = followers(&urls, &chans, FOLLOWERS).await;
    let publisher = Publisher::start(cluster.api, chans.clone(), RATE);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tokio::task::block_in_place(|| a.kill());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked = publisher.stop().await;
    settle(&followers, &acked).await;
    let (seen, stats) = stop_all(followers).await;
    let counts = tally(&seen, &acked);
    report("gateway killed", &acked, counts, &stats);
    let moved = stats.iter().filter(|s| s.connects >= 2).count();
    assert!(
        moved >= FOLLOWERS / 2,
        "the killed gateway's clients reconnected ({moved})"
    );
    // Every resubscription after the kill recovered.
    for s in &seen {
        assert!(
            s.subscribed.iter().all(|(_, _, r)| *r != Some(false)),
            "{:?}",
            s.subscribed
        );
    }
    assert_eq!(acked.errors, 0);
    assert_nothing_lost(counts, &stats);
    assert!(counts.delivered >= acked.total() * FOLLOWERS);
}

/// (e) Rolling restart: each gateway in turn gets SIGTERM under load, drains (clients told to
/// reconnect), exits and comes back; clients move over and back with zero loss and zero
/// duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_and_duplicates_nothing() {
    let cluster = Cluster::start(0).await;
    let ports = [free_port(), free_port()];
    let redis_url = cluster.redis.url();
    let mut gateways: Vec<Process> = ports
        .iter()
        .map(|p| gateway_process(&redis_url, *p))
        .collect();
    for p in ports {
        ready(p).await;
    }
    let urls = ports.map(|p| format!("ws://127.0.0.1:{p}/ws"));
    let chans = channels();
    let followers = followers(&urls, &chans, FOLLOWERS).await;
    let publisher = Publisher::start(cluster.api, chans.clone(), RATE);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..2 {
        let gw = &mut gateways[i];
        let clean = tokio::task::block_in_place(|| gw.terminate(Duration::from_secs(15))).unwrap();
        assert!(clean, "gateway {i} drained and exited cleanly");
        gateways[i] = gateway_process(&redis_url, ports[i]);
        ready(ports[i]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = publisher.stop().await;
    settle(&followers, &acked).await;
    let (seen, stats) = stop_all(followers).await;
    let counts = tally(&seen, &acked);
    report("rolling restart", &acked, counts, &stats);
    // Every client was told to move at least once (each gateway restarted once).
    let told: usize = seen
        .iter()
        .filter(|s| s.disconnects.contains(&Some(3000)))
        .count();
    assert_eq!(told, FOLLOWERS, "every client was drained at least once");
    assert_eq!(acked.errors, 0);
    assert_nothing_lost(counts, &stats);
}

/// (b) Redis restarted without persistence: the channels' history and positions are gone.
/// Clients are never left with a silent gap: each is disconnected (3003), resubscribes with
/// its position and is told `recovered: false` with the channel's new epoch, then receives
/// the new epoch without a hole — from its first offset: history still holds the new epoch
/// from its start, so the clients miss only what Redis itself lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_persistence_reports_recovered_false_with_the_new_epoch() {
    // History long enough to hold the new epoch from its start while clients reconnect.
    let builtin = Namespaces::default();
    let namespaces = Namespaces {
        default: NamespaceRules {
            history_size: 1000,
            ..builtin.default.clone()
        },
        ..builtin
    };
    let mut cluster = Cluster::start_full(2, GatewayConfig::default(), namespaces, false).await;
    let urls = [cluster.ws(0), cluster.ws(1)];
    let chans = channels();
    let followers = followers(&urls, &chans, FOLLOWERS).await;
    let publisher = Publisher::start(cluster.api, chans.clone(), RATE);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let redis = &mut cluster.redis;
    tokio::task::block_in_place(|| redis.restart()).unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let acked = publisher.stop().await;
    settle(&followers, &acked).await;
    let (seen, stats) = stop_all(followers).await;

    let mut epochs_per_channel = BTreeMap::new();
    for (ch, offs) in &acked.per_channel {
        let mut epochs: Vec<&str> = offs.iter().map(|(e, _)| e.as_str()).collect();
        epochs.dedup();
        epochs_per_channel.insert(ch.clone(), epochs);
    }
    assert!(
        epochs_per_channel.values().all(|e| e.len() == 2),
        "each channel has an old and a new epoch: {epochs_per_channel:?}"
    );
    let mut told = 0;
    let mut delivered = 0;
    let mut holes = 0;
    let mut missed_from_new_start = 0;
    for s in &seen {
        for (ch, epochs) in &epochs_per_channel {
            let (old, new) = (epochs[0], epochs[1]);
            let got = |epoch: &str| -> Vec<u64> {
                s.publications
                    .get(ch)
                    .into_iter()
                    .flatten()
                    .filter(|(e, _)| e == epoch)
                    .map(|(_, o)| *o)
                    .collect()
            };
            let (before, after) = (got(old), got(new));
            delivered += before.len() + after.len();
            // Old epoch: from 1 without a hole, up to wherever the loss cut it.
            holes += before
                .iter()
                .enumerate()
                .filter(|(i, o)| **o != *i as u64 + 1)
                .count();
            // The client was told: a subscribe after the restart answered recovered: false.
            let told_here = s
                .subscribed
                .iter()
                .any(|(c, _, r)| c == ch && *r == Some(false));
            assert!(
                told_here,
                "{ch}: the client was told of the loss: {:?}",
                s.subscribed
            );
            told += 1;
            // New epoch: contiguous from the first one it got to the top acknowledged.
            let top_new = acked.per_channel[ch]
                .iter()
                .filter(|(e, _)| e == new)
                .map(|(_, o)| *o)
                .max()
                .unwrap_or(0);
            if let Some(&first) = after.first() {
                let expected: Vec<u64> = (first..=top_new).collect();
                assert_eq!(after, expected, "{ch}: new epoch without a hole");
                missed_from_new_start += first - 1;
            }
            assert_eq!(
                after.last().copied().unwrap_or(0),
                top_new,
                "{ch}: reached the top"
            );
        }
    }
    let dups: u64 = stats.iter().map(|s| s.duplicates).sum();
    println!(
        "redis restarted without persistence: published {} (publish errors {}), delivered {delivered}, \
         told recovered:false {told} (client × channel), holes within an epoch {holes}, \
         new-epoch publications missed from its start {missed_from_new_start}, \
         duplicates dropped by the clients {dups}",
        acked.total(),
        acked.errors
    );
    assert_eq!(holes, 0);
    assert_eq!(
        missed_from_new_start, 0,
        "every client receives the new epoch from offset 1"
    );
    assert_eq!(dups, 0);
    let mut lost = 0.0;
    for i in 0..2 {
        let text = reqwest::get(cluster.metrics_url(i))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let scrape = chorus_testkit::Scrape::parse(&text).unwrap();
        lost = scrape.value(chorus_gateway::metrics::STATE_LOST, &[]);
    }
    // One recorder per process: both in-process gateways count into the same series.
    assert!(
        lost >= CHANNELS as f64,
        "every channel's loss was counted ({lost})"
    );
}
