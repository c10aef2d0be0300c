//! A real broker-api on a loopback port for the integration tests, with real HTTP and gRPC
//! clients.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chorus_broker_api::{BrokerConfig, BrokerError};
use chorus_bus::{Bus, BusSink, Envelope};
use chorus_protocol::api::chorus_api_client::ChorusApiClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The key most tests authenticate with.
pub const KEY: &str = "test-key-one";
/// A second configured key (key rotation).
pub const OTHER_KEY: &str = "test-key-two";

/// A config with two API keys and otherwise the defaults.
pub fn config() -> BrokerConfig {
    BrokerConfig {
        api_keys: vec![KEY.into(), OTHER_KEY.into()],
        ..BrokerConfig::default()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), BrokerError>>>,
}

impl TestServer {
    /// Serves `bus` with `config` on 127.0.0.1 on a free port.
    pub async fn start(bus: Bus, config: BrokerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(chorus_broker_api::serve(
            listener,
            bus,
            config,
            shutdown.clone(),
        ));
        Self {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// Serves an in-memory bus with the test configuration as `edit` changes it.
    pub async fn memory_with(edit: impl FnOnce(&mut BrokerConfig)) -> Self {
        let mut config = config();
        edit(&mut config);
        Self::start(Bus::memory(), config).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cancels and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), BrokerError> {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        task.await.unwrap()
    }

    /// A gRPC client over a real TCP connection to this server.
    pub async fn grpc(&self) -> ChorusApiClient<Channel> {
        ChorusApiClient::connect(self.url("")).await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gRPC request carrying `authorization: Bearer <key>`.
pub fn authed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

/// POSTs `body` to `path` on `server` with the API key and returns the answer's JSON.
pub async fn post_json(
    server: &TestServer,
    path: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    http()
        .post(server.url(path))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Attaches a node `gateway-1` (at `ws://127.0.0.1:9000/ws`, started at `started_at_ms`) to
/// `bus` with one open connection per name in `clients`, as a gateway would.
pub fn attach_node(bus: &Bus, started_at_ms: i64, clients: &[&str]) -> chorus_bus::NodeLink {
    let link = bus.attach(
        chorus_bus::NodeInfo {
            id: "gateway-1".into(),
            address: "ws://127.0.0.1:9000/ws".into(),
            connections: 0,
            started_at_ms,
        },
        Collect::new(),
    );
    for client in clients {
        link.connection_opened(chorus_bus::ConnectionInfo {
            client: (*client).into(),
            user: "u".into(),
            connected_at_ms: 0,
        });
    }
    link
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Collects every envelope a node attached to the bus receives.
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<Envelope>>);

impl BusSink for Collect {
    fn publication(&self, envelope: Envelope) {
        self.0.lock().unwrap().push(envelope);
    }
}

impl Collect {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn data(&self) -> Vec<Vec<u8>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.data.to_vec())
            .collect()
    }
}

/// A Pusher HTTP API URL signed for `app`, as the Pusher libraries sign it: a signed URL for `method path` with `body` and extra query parameters, as the libraries
/// build it; `edit` may spoil one part.
pub fn signed(
    s: &TestServer,
    app: &chorus_bus::pusher::App,
    method: &str,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
    edit: impl FnOnce(&mut Vec<(String, String)>),
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), app.key.clone()),
        ("auth_timestamp".into(), now.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push((
            "body_md5".into(),
            hex::encode(<md5::Md5 as md5::Digest>::digest(body.as_bytes())),
        ));
    }
    for (k, v) in extra {
        params.push(((*k).into(), (*v).into()));
    }
    edit(&mut params);
    params.sort();
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let signature = app.sign(&format!("{method}\n{path}\n{query}"));
    s.url(&format!("{path}?{query}&auth_signature={signature}"))
}
