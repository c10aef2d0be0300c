//! A whole Chorus cluster for end-to-end tests: a real redis-server on a free port, a
//! broker-api and N gateways in this process, each with its own Redis bus (its own pool and
//! pub/sub connection, as separate processes would have), all on loopback.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chorus_broker_api::BrokerConfig;
use chorus_bus::{Bus, BusConfig, Namespaces};
use chorus_gateway::{GatewayConfig, ListenAddr};
use chorus_protocol::api::chorus_api_client::ChorusApiClient;
use chorus_testkit::RedisServer;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub mod load;

pub const API_KEY: &str = "test-key";

pub struct Cluster {
    pub redis: RedisServer,
    /// The other shards when the bus is sharded (`redis` is shard 0).
    pub shards: Vec<RedisServer>,
    pub api: SocketAddr,
    pub gateways: Vec<SocketAddr>,
    /// Each gateway's metrics listener (loopback, a port of its own).
    pub metrics: Vec<SocketAddr>,
    shutdown: CancellationToken,
    http: reqwest::Client,
}

pub fn bus_config(redis: &RedisServer) -> BusConfig {
    BusConfig {
        redis_url: redis.url(),
        redis_timeout: Duration::from_millis(800),
        node_lease: Duration::from_secs(2),
        canary_interval: Duration::from_millis(200),
        ..BusConfig::default()
    }
}

impl Cluster {
    pub async fn start(gateways: usize) -> Self {
        Self::start_with(gateways, GatewayConfig::default()).await
    }

    pub async fn start_with(gateways: usize, gateway_config: GatewayConfig) -> Self {
        Self::start_full(gateways, gateway_config, Namespaces::default(), false).await
    }

    /// A cluster with these namespace rules, on a Redis with AOF persistence
    /// (`appendfsync always`) when `persistent`.
    pub async fn start_full(
        gateways: usize,
        gateway_config: GatewayConfig,
        namespaces: Namespaces,
        persistent: bool,
    ) -> Self {
        Self::start_apps(
            gateways,
            gateway_config,
            namespaces,
            persistent,
            chorus_bus::pusher::Apps::default(),
            1,
        )
        .await
    }

    /// A cluster whose bus is sharded over `shards` redis-servers.
    pub async fn start_sharded(gateways: usize, shards: usize) -> Self {
        Self::start_apps(
            gateways,
            GatewayConfig::default(),
            Namespaces::default(),
            false,
            chorus_bus::pusher::Apps::default(),
            shards,
        )
        .await
    }

    /// A cluster serving these Pusher apps (their namespaces added to the rules).
    pub async fn start_pusher(gateways: usize, apps: chorus_bus::pusher::Apps) -> Self {
        Self::start_apps(
            gateways,
            GatewayConfig::default(),
            Namespaces::default(),
            false,
            apps,
            1,
        )
        .await
    }

    async fn start_apps(
        gateways: usize,
        gateway_config: GatewayConfig,
        namespaces: Namespaces,
        persistent: bool,
        apps: chorus_bus::pusher::Apps,
        shards: usize,
    ) -> Self {
        let redis = if persistent {
            RedisServer::start_persistent()
        } else {
            RedisServer::start()
        }
        .expect("redis-server starts");
        let shards: Vec<RedisServer> = (1..shards)
            .map(|_| RedisServer::start().expect("redis-server starts"))
            .collect();
        let shutdown = CancellationToken::new();
        let mut bus_cfg = bus_config(&redis);
        for shard in &shards {
            bus_cfg.redis_url = format!("{},{}", bus_cfg.redis_url, shard.url());
        }

        let bus = Bus::redis(&bus_cfg)
            .unwrap()
            .with_namespaces(namespaces.clone())
            .with_pusher_apps(apps.clone());
        let api = spawn_broker(&bus_cfg, bus, &shutdown).await;

        let mut addrs = Vec::new();
        let mut metrics = Vec::new();
        for i in 0..gateways {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let metrics_addr = SocketAddr::from(([127, 0, 0, 1], chorus_testkit::free_port()));
            metrics.push(metrics_addr);
            let config = GatewayConfig {
                node_id: Some(format!("gw-{}", i + 1)),
                metrics_listen: ListenAddr(Some(metrics_addr)),
                ..gateway_config.clone()
            };
            let bus = Bus::redis(&bus_cfg)
                .unwrap()
                .with_namespaces(namespaces.clone())
                .with_pusher_apps(apps.clone());
            tokio::spawn(chorus_gateway::serve(
                listener,
                bus,
                config,
                bus_cfg.redis_timeout,
                shutdown.clone(),
            ));
        }
        let cluster = Self {
            redis,
            shards,
            api,
            gateways: addrs,
            metrics,
            shutdown,
            http: reqwest::Client::new(),
        };
        for i in 0..gateways {
            chorus_testkit::wait_http_ok(
                &cluster.gateway_url(i, "/readyz"),
                Duration::from_secs(10),
            )
            .await
            .expect("gateway ready");
        }
        cluster
    }

    pub fn ws(&self, gateway: usize) -> String {
        format!("ws://{}/ws", self.gateways[gateway])
    }

    /// A gateway's `/metrics`, on its metrics listener.
    pub fn metrics_url(&self, gateway: usize) -> String {
        format!("http://{}/metrics", self.metrics[gateway])
    }

    pub fn gateway_url(&self, gateway: usize, path: &str) -> String {
        format!("http://{}{path}", self.gateways[gateway])
    }

    pub async fn http_publish(&self, channel: &str, data: Value) -> reqwest::Response {
        self.http
            .post(format!("http://{}/api/publish", self.api))
            .bearer_auth(API_KEY)
            .json(&json!({"channel": channel, "data": data}))
            .send()
            .await
            .expect("HTTP request")
    }

    pub async fn http_get(&self, url: &str) -> reqwest::Response {
        self.http
            .get(url)
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("HTTP request")
    }

    pub async fn grpc(&self) -> ChorusApiClient<Channel> {
        ChorusApiClient::connect(format!("http://{}", self.api))
            .await
            .expect("gRPC connect")
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gRPC request carrying the test API key.
/// A broker-api in this process on a loopback port, on `bus`, until `shutdown`.
pub async fn spawn_broker(
    bus_cfg: &BusConfig,
    bus: Bus,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let config = BrokerConfig {
        api_keys: vec![API_KEY.into()],
        ..BrokerConfig::default()
    }
    .with_bus_timeout(bus_cfg);
    tokio::spawn(chorus_broker_api::serve(
        listener,
        bus,
        config,
        shutdown.clone(),
    ));
    api
}

pub fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {API_KEY}").parse().unwrap(),
    );
    req
}

/// A `chorus-gateway` process on loopback `port` with Redis at `redis_url` (no metrics
/// listener: several run on one host), plus `extra` flags.
pub fn gateway_process(redis_url: &str, port: u16, extra: &[&str]) -> chorus_testkit::Process {
    let mut args = vec![
        "--gateway-listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--metrics-listen".into(),
        "off".into(),
        "--redis-url".into(),
        redis_url.into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    chorus_testkit::Process::spawn(
        env!("CARGO_BIN_EXE_chorus-gateway"),
        &args,
        &[("RUST_LOG", "warn")],
    )
    .expect("gateway starts")
}

/// One gateway on the in-memory bus, for tests of a single connection's behaviour.
pub struct MemoryGateway {
    pub addr: SocketAddr,
    pub bus: Bus,
    shutdown: CancellationToken,
}

impl MemoryGateway {
    pub async fn start(config: GatewayConfig) -> Self {
        Self::start_with_bus(config, Bus::memory()).await
    }

    /// A gateway on the given in-memory bus (e.g. one with namespace rules).
    pub async fn start_with_bus(config: GatewayConfig, bus: Bus) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(chorus_gateway::serve(
            listener,
            bus.clone(),
            config,
            Duration::from_secs(2),
            shutdown.clone(),
        ));
        Self {
            addr,
            bus,
            shutdown,
        }
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stops the gateway as SIGTERM would.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for MemoryGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
