//! What presence costs a subscribe: subscribe/unsubscribe cycles per second with and without
//! presence (and with join/leave announced), and Redis commands per cycle, against a real
//! redis-server and one gateway on loopback. Prints a table; nothing is asserted.
//!
//! `cargo bench -p chorus-gateway --bench presence` (set `PRESENCE_BENCH_SECS`, default 5, and
//! `PRESENCE_BENCH_CLIENTS`, default 50).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chorus_bus::{Bus, BusConfig, Namespaces};
use chorus_gateway::{GatewayConfig, ListenAddr};
use chorus_protocol::wire::Format;
use chorus_testkit::{RedisServer, WsClient};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const NAMESPACES: &str = r#"
[namespace.plain]
anonymous_subscribe = true

[namespace.presence]
anonymous_subscribe = true
presence = true

[namespace.joinleave]
anonymous_subscribe = true
presence = true
join_leave = true
"#;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Total Redis command calls so far (`INFO commandstats`).
fn redis_calls(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .unwrap_or_default()
        .iter()
        .filter_map(|line| {
            let calls = line.split("calls=").nth(1)?;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Runs `clients` connections each cycling subscribe/unsubscribe on `channel(i)` for `secs`.
async fn cycles(addr: SocketAddr, clients: u64, secs: u64, channel: impl Fn(u64) -> String) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (mut c, _) = WsClient::connect(&format!("ws://{addr}/ws"), Format::Json)
            .await
            .expect("connects");
        let (done, stop, ch) = (done.clone(), stop.clone(), channel(i));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                c.subscribe(&ch).await.expect("subscribes");
                c.unsubscribe(&ch).await.expect("unsubscribes");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env_or("PRESENCE_BENCH_SECS", 5);
    let clients = env_or("PRESENCE_BENCH_CLIENTS", 50);
    let redis = RedisServer::start().expect("redis-server starts");
    let bus_config = BusConfig {
        redis_url: redis.url(),
        ..BusConfig::default()
    };
    let namespaces = Namespaces::parse(NAMESPACES).expect("valid namespaces");
    let bus = Bus::redis(&bus_config)
        .expect("bus")
        .with_namespaces(namespaces);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    // The per-connection command rate limit would measure itself, not presence.
    let config = GatewayConfig {
        metrics_listen: ListenAddr(None),
        command_rate: 1_000_000,
        command_burst: 1_000_000,
        ..GatewayConfig::default()
    };
    tokio::spawn(chorus_gateway::serve(
        listener,
        bus,
        config,
        bus_config.redis_timeout,
        shutdown.clone(),
    ));
    chorus_testkit::wait_http_ok(&format!("http://{addr}/readyz"), Duration::from_secs(10))
        .await
        .expect("gateway ready");

    println!("{clients} clients, {secs} s each, one gateway, subscribe + unsubscribe cycles");
    println!(
        "| namespace | channels | cycles/s | Redis commands per cycle | vs plain |\n|---|---|---|---|---|"
    );
    for (label, shared) in [("one per client", false), ("one shared", true)] {
        let mut plain_rate = 0.0;
        for ns in ["plain", "presence", "joinleave"] {
            let before = redis_calls(&redis);
            let started = Instant::now();
            let n = cycles(addr, clients, secs, |i| {
                if shared {
                    format!("{ns}:shared")
                } else {
                    format!("{ns}:c{i}")
                }
            })
            .await;
            let rate = n as f64 / started.elapsed().as_secs_f64();
            // The INFO calls themselves count one each.
            let per = (redis_calls(&redis) - before).saturating_sub(1) as f64 / n.max(1) as f64;
            if ns == "plain" {
                plain_rate = rate;
            }
            println!(
                "| {ns} | {label} | {rate:.0} | {per:.1} | {:.2}× |",
                rate / plain_rate
            );
        }
    }
    shutdown.cancel();
}
