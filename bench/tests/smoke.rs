//! Every scenario of chorus-bench at tiny sizes against a real cluster in this process (a real
//! redis-server, broker-api and two gateways on loopback): the tool runs end to end, counts
//! every delivery, and sees no loss and no duplicate. Not a measurement.
//!
//! Then the client's recovery: a proxy in front of each gateway breaks every client's first
//! connection mid-run (a 3002 close, or a dropped socket), withholding one publication so
//! that each client certainly misses something. The clients reconnect and recover it from
//! history (no loss), or, where the namespace keeps no history, are told `recovered: false`
//! and the run counts the gap as lost.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, BytesMut};
use chorus_bench::client::Protocol;
use chorus_bench::procstat::Watched;
use chorus_bench::publisher::Via;
use chorus_bench::scenario::{self, Options, Report, Scenario};
use chorus_bench::wire::{self, Server};
use chorus_broker_api::BrokerConfig;
use chorus_bus::{Bus, BusConfig, NamespaceRules, Namespaces};
use chorus_gateway::GatewayConfig;
use chorus_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const KEY: &str = "smoke-key";

struct Cluster {
    _redis: RedisServer,
    api: String,
    gateways: Vec<SocketAddr>,
    shutdown: CancellationToken,
}

async fn cluster() -> Cluster {
    cluster_with(Namespaces::builtin()).await
}

/// A cluster whose broker-api and gateways apply `namespaces`.
async fn cluster_with(namespaces: Namespaces) -> Cluster {
    let redis = RedisServer::start().expect("redis-server starts");
    let bus_cfg = BusConfig {
        redis_url: redis.url(),
        redis_timeout: Duration::from_secs(2),
        ..BusConfig::default()
    };
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let config = BrokerConfig {
        api_keys: vec![KEY.into()],
        ..BrokerConfig::default()
    }
    .with_bus_timeout(&bus_cfg);
    let bus = || {
        Bus::redis(&bus_cfg)
            .unwrap()
            .with_namespaces(namespaces.clone())
            .with_pusher_apps(
                chorus_bus::pusher::Apps::from_apps(vec![chorus_bus::pusher::App::new(
                    "bench",
                    "bench-key",
                    "bench-secret",
                )])
                .unwrap(),
            )
    };
    tokio::spawn(chorus_broker_api::serve(
        listener,
        bus(),
        config,
        shutdown.clone(),
    ));
    let mut gateways = Vec::new();
    for i in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        gateways.push(addr);
        let config = GatewayConfig {
            node_id: Some(format!("smoke-gw-{i}")),
            ..GatewayConfig::default()
        };
        tokio::spawn(chorus_gateway::serve(
            listener,
            bus(),
            config,
            bus_cfg.redis_timeout,
            shutdown.clone(),
        ));
        chorus_testkit::wait_http_ok(&format!("http://{addr}/readyz"), Duration::from_secs(10))
            .await
            .expect("gateway ready");
    }
    chorus_testkit::wait_http_ok(&format!("{api}/readyz"), Duration::from_secs(10))
        .await
        .expect("broker-api ready");
    Cluster {
        _redis: redis,
        api,
        gateways,
        shutdown,
    }
}

fn options(c: &Cluster, scenario: Scenario) -> Options {
    Options {
        scenario,
        gateways: c.gateways.clone(),
        ceiling_ports: 2,
        api: c.api.clone(),
        api_key: KEY.into(),
        via: Via::GrpcStream,
        protocol: Arc::new(Protocol::Protobuf),
        deflate: false,
        pusher: None,
        clients: 6,
        messages: 40,
        rate: 400.0,
        size: 100,
        window: 16,
        connect_concurrency: 4,
        sources: 1,
        // The servers run in this process.
        servers: vec![Watched {
            name: "gateway-in-process".into(),
            pid: std::process::id(),
        }],
        ceiling_dps: None,
        shared_fraction: 0.2,
        drain: Duration::from_secs(3),
        settle: Duration::from_millis(50),
        progress: false,
        label: "smoke".into(),
        metrics: Vec::new(),
    }
}

fn assert_complete(r: &Report) {
    assert_eq!(r.clients_failed, 0, "{r:?}");
    assert_eq!(r.publish_errors, 0, "{r:?}");
    assert_eq!((r.lost, r.duplicated), (0, 0), "{r:?}");
    assert_eq!(r.deliveries, r.expected_deliveries, "{r:?}");
    assert!(r.deliveries > 0 && r.deliveries_per_sec > 0.0, "{r:?}");
    assert!(r.latency_ms.max > 0.0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_end_to_end_without_loss() {
    let c = cluster().await;

    let mut ceiling = options(&c, Scenario::Ceiling);
    ceiling.rate = 0.0;
    let ceiling = scenario::run(ceiling).await.unwrap();
    assert_complete(&ceiling);
    assert_eq!(ceiling.deliveries, 6 * 40);

    // The ceiling speaks JSON to JSON clients too.
    let mut json_ceiling = options(&c, Scenario::Ceiling);
    json_ceiling.rate = 0.0;
    json_ceiling.protocol = Arc::new(Protocol::Json);
    let json_ceiling = scenario::run(json_ceiling).await.unwrap();
    assert_complete(&json_ceiling);
    assert_eq!(json_ceiling.deliveries, 6 * 40);

    for via in [Via::GrpcStream, Via::Grpc, Via::Http] {
        let mut o = options(&c, Scenario::Fanout);
        o.via = via;
        o.ceiling_dps = Some(ceiling.deliveries_per_sec);
        let r = scenario::run(o).await.unwrap();
        assert_complete(&r);
        assert_eq!(r.published, 40, "{via:?}");
        assert_eq!(r.deliveries, 6 * 40, "{via:?}");
        assert!(r.ratio_to_ceiling.is_some());
        assert!(r.gateway_cpu_us_per_delivery.is_some());
    }

    let r = scenario::run(options(&c, Scenario::Channels))
        .await
        .unwrap();
    assert_complete(&r);
    assert_eq!(r.published, 40);

    // The Pusher protocol, published through the Pusher HTTP API.
    for scenario in [Scenario::Fanout, Scenario::Channels] {
        let mut o = options(&c, scenario);
        o.protocol = Arc::new(Protocol::Pusher {
            key: "bench-key".into(),
        });
        o.via = Via::Pusher;
        o.pusher = Some("bench:bench-key:bench-secret".parse().unwrap());
        let r = scenario::run(o).await.unwrap();
        assert_complete(&r);
        assert_eq!(r.published, 40, "{scenario:?}");
        assert_eq!(r.protocol, "pusher");
    }

    // The JSON form, published over HTTP: what a browser app sees.
    for scenario in [Scenario::Fanout, Scenario::Channels] {
        let mut o = options(&c, scenario);
        o.protocol = Arc::new(Protocol::Json);
        o.via = Via::Http;
        // The services run in this process: one registry, served by broker-api.
        o.metrics = vec![format!("{}/metrics", c.api)];
        let r = scenario::run(o).await.unwrap();
        assert_complete(&r);
        assert_eq!(r.published, 40, "{scenario:?}");
        assert_eq!(r.protocol, "json");
        let names: Vec<&str> = r.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names.len(), 3, "every stage measured: {names:?}");
        for stage in &r.stages {
            assert!(stage.recorded >= 40.0 && stage.p99_ms > 0.0, "{stage:?}");
            assert!(stage.p50_ms <= stage.p99_ms, "{stage:?}");
        }
    }

    // With permessage-deflate: 1 KiB JSON publications arrive compressed and are inflated;
    // the wire carries fewer bytes per delivery than without.
    let mut wire = Vec::new();
    for deflate in [false, true] {
        let mut o = options(&c, Scenario::Fanout);
        o.protocol = Arc::new(Protocol::Json);
        o.via = Via::Http;
        o.size = 1024;
        o.deflate = deflate;
        let r = scenario::run(o).await.unwrap();
        assert_complete(&r);
        assert!(r.deflate == deflate);
        wire.push(r.wire_bytes_per_delivery.unwrap());
    }
    assert!(
        wire[1] < wire[0] * 0.8,
        "bytes per delivery, plain then deflate: {wire:?}"
    );

    let mut o = options(&c, Scenario::Connect);
    o.clients = 30;
    let r = scenario::run(o).await.unwrap();
    assert_eq!(r.clients_failed, 0, "{r:?}");
    assert!(r.connections_per_sec.unwrap() > 0.0);
    assert!(r.handshake_ms.as_ref().unwrap().p99 > 0.0);
    // Both kinds of output render.
    assert!(r.summary().contains("connections/s"));
    assert!(
        serde_json::to_string(&r)
            .unwrap()
            .contains("\"scenario\":\"connect\"")
    );

    c.shutdown.cancel();
}

/// A loopback proxy in front of `upstream` that breaks the first `cut` connections it carries:
/// after relaying `after` binary frames from the gateway it withholds the next publication (so
/// that the client certainly misses one), then ends the connection — with a 3002 close frame,
/// as a gateway closes a slow consumer, on even-numbered connections, by dropping the socket on
/// odd ones. Later connections are relayed untouched.
async fn breaking_proxy(upstream: SocketAddr, cut: usize, after: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let n = accepted.fetch_add(1, Ordering::Relaxed);
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            tokio::spawn(relay(
                client,
                server,
                (n < cut).then_some((after, n.is_multiple_of(2))),
            ));
        }
    });
    addr
}

/// Relays one connection; `cut` = (binary frames to relay, whether to close with 3002).
async fn relay(client: TcpStream, server: TcpStream, cut: Option<(usize, bool)>) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let downstream = async {
        let mut buf = BytesMut::with_capacity(16 << 10);
        // The upgrade response, as it is.
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                client_wr.write_all(&buf[..end + 4]).await?;
                buf.advance(end + 4);
                break;
            }
            if server_rd.read_buf(&mut buf).await? == 0 {
                return Ok::<(), std::io::Error>(());
            }
        }
        let mut relayed = 0;
        loop {
            while let Some((op, range, end)) = wire::parse_frame(&buf) {
                if let Some((after, close)) = cut
                    && op == wire::OP_BINARY
                    && relayed >= after
                    && matches!(
                        wire::read_server(&buf[range]),
                        Some(Server::Publication { .. })
                    )
                {
                    if close {
                        // Close 3002 (slow consumer), as the gateway sends it.
                        client_wr.write_all(&[0x88, 0x02, 0x0B, 0xBA]).await?;
                    }
                    return Ok(());
                }
                relayed += usize::from(op == wire::OP_BINARY);
                client_wr.write_all(&buf[..end]).await?;
                buf.advance(end);
            }
            if server_rd.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    };
    // Whichever direction ends first ends the connection (both sockets drop here).
    tokio::select! {
        _ = downstream => {}
        _ = tokio::io::copy(&mut client_rd, &mut server_wr) => {}
    }
}

/// A fan-out run whose every client loses its first connection after 12 frames (the connect
/// and subscribe replies and 10 publications) and misses the 11th publication.
async fn fanout_through_breaking_proxies(c: &Cluster) -> Report {
    let mut o = options(c, Scenario::Fanout);
    o.messages = 100;
    o.rate = 500.0;
    let per_gateway = o.clients / c.gateways.len();
    let mut proxied = Vec::new();
    for gw in &c.gateways {
        proxied.push(breaking_proxy(*gw, per_gateway, 12).await);
    }
    o.gateways = proxied;
    scenario::run(o).await.unwrap()
}

fn namespaces_with_history(history_size: u32) -> Namespaces {
    let mut ns = Namespaces::builtin();
    ns.default = NamespaceRules {
        history_size,
        ..ns.default
    };
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_and_recover_what_they_missed() {
    let c = cluster_with(namespaces_with_history(1000)).await;
    let r = fanout_through_breaking_proxies(&c).await;
    assert_complete(&r);
    assert_eq!(r.deliveries, 6 * 100, "{r:?}");
    assert_eq!(recovery_counts(&r), (6, 6, 6, 0, 0), "{r:?}");
    assert!(
        r.summary().contains("reconnects 6  recovered 6"),
        "{}",
        r.summary()
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["reconnects"], 6);
    assert_eq!(json["recovered"], 6);
    assert_eq!(json["not_recovered"], 0);
    c.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_history_cannot_fill_counts_as_lost() {
    let c = cluster_with(namespaces_with_history(0)).await;
    let r = fanout_through_breaking_proxies(&c).await;
    assert_eq!(recovery_counts(&r), (6, 6, 0, 6, 0), "{r:?}");
    assert_eq!(r.published, 100, "{r:?}");
    assert_eq!(r.duplicated, 0, "{r:?}");
    // Each client missed at least the withheld publication; nothing is double-counted.
    assert!(r.lost >= 6, "{r:?}");
    assert_eq!(r.deliveries + r.lost, r.expected_deliveries, "{r:?}");
    c.shutdown.cancel();
}

/// (disconnects, reconnects, recovered, not recovered, gave up) of a run.
fn recovery_counts(r: &chorus_bench::scenario::Report) -> (u64, u64, u64, u64, u64) {
    (
        r.disconnects,
        r.reconnects,
        r.recovered,
        r.not_recovered,
        r.gave_up,
    )
}
