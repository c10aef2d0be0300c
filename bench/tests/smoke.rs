//! Every scenario of chorus-bench at tiny sizes against a real cluster in this process (a real
//! redis-server, broker-api and two gateways on loopback): the tool runs end to end, counts
//! every delivery, and sees no loss and no duplicate. Not a measurement.

use std::net::SocketAddr;
use std::time::Duration;

use chorus_bench::procstat::Watched;
use chorus_bench::publisher::Via;
use chorus_bench::scenario::{self, Options, Report, Scenario};
use chorus_broker_api::BrokerConfig;
use chorus_bus::{Bus, BusConfig};
use chorus_gateway::GatewayConfig;
use chorus_testkit::RedisServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const KEY: &str = "smoke-key";

struct Cluster {
    _redis: RedisServer,
    api: String,
    gateways: Vec<SocketAddr>,
    shutdown: CancellationToken,
}

async fn cluster() -> Cluster {
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
    tokio::spawn(chorus_broker_api::serve(
        listener,
        Bus::redis(&bus_cfg).unwrap(),
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
            Bus::redis(&bus_cfg).unwrap(),
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
