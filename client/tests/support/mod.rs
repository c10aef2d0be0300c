//! Test parts for the client: a real gateway and broker-api on an in-memory bus (the gateway
//! can be stopped and started again on the same port), a TCP proxy that can cut or freeze
//! connections, and a scripted fake gateway for behaviour a real one does not produce on
//! demand (gaps, duplicates, refusals).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chorus_broker_api::BrokerConfig;
use chorus_bus::Bus;
use chorus_bus::namespaces::Namespaces;
use chorus_client::{Client, ClientBuilder, Event, Events, Position};
use chorus_gateway::GatewayConfig;
use chorus_protocol::client::{self, command, push, reply};
use chorus_protocol::wire::{self, Format};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How long a test waits for anything it expects.
pub const WAIT: Duration = Duration::from_secs(10);
const API_KEY: &str = "test-key";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A gateway and broker-api sharing an in-memory bus.
pub struct Chorus {
    pub bus: Bus,
    pub gateway_addr: SocketAddr,
    api_addr: SocketAddr,
    config: GatewayConfig,
    gateway: Option<(CancellationToken, JoinHandle<std::io::Result<()>>)>,
    api_shutdown: CancellationToken,
    http: reqwest::Client,
}

impl Chorus {
    pub async fn start(config: GatewayConfig) -> Self {
        Self::start_with(config, "").await
    }

    /// With namespace rules (TOML, as in a `--namespaces` file). The gateway's drain window
    /// is always short (100 ms), so that stopping it in a test is quick.
    pub async fn start_with(config: GatewayConfig, namespaces: &str) -> Self {
        init_tracing();
        let config = GatewayConfig {
            drain_window: Duration::from_millis(100),
            ..config
        };
        // No text means no file: the built-in rules (open to anonymous clients), as the
        // binaries use without --namespaces.
        let rules = if namespaces.is_empty() {
            Namespaces::builtin()
        } else {
            Namespaces::parse(namespaces).expect("valid namespaces")
        };
        let bus = Bus::memory().with_namespaces(rules);
        let api_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_addr = api_listener.local_addr().unwrap();
        let api_shutdown = CancellationToken::new();
        let api_config = BrokerConfig {
            api_keys: vec![API_KEY.into()],
            ..BrokerConfig::default()
        };
        tokio::spawn(chorus_broker_api::serve(
            api_listener,
            bus.clone(),
            api_config,
            api_shutdown.clone(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut chorus = Self {
            bus,
            gateway_addr: listener.local_addr().unwrap(),
            api_addr,
            config,
            gateway: None,
            api_shutdown,
            http: reqwest::Client::new(),
        };
        chorus.serve(listener);
        chorus
    }

    fn serve(&mut self, listener: TcpListener) {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(chorus_gateway::serve(
            listener,
            self.bus.clone(),
            self.config.clone(),
            Duration::from_secs(2),
            shutdown.clone(),
        ));
        self.gateway = Some((shutdown, task));
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.gateway_addr)
    }

    /// Shuts the gateway down as SIGTERM would (clients get a `disconnect` push and close
    /// 3000) and waits until it has stopped.
    pub async fn stop_gateway(&mut self) {
        let (shutdown, task) = self.gateway.take().expect("gateway running");
        shutdown.cancel();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("gateway stops")
            .expect("gateway task")
            .expect("gateway ran");
    }

    /// Starts a new gateway on the same address.
    pub async fn start_gateway(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let listener = loop {
            match TcpListener::bind(self.gateway_addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "rebinding the gateway's port");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.gateway_addr),
            }
        };
        self.serve(listener);
    }

    /// Publishes through broker-api's HTTP API; returns where the publication landed.
    pub async fn publish(&self, channel: &str, data: Value) -> Position {
        let response = self
            .http
            .post(format!("http://{}/api/publish", self.api_addr))
            .bearer_auth(API_KEY)
            .json(&json!({"channel": channel, "data": data}))
            .send()
            .await
            .expect("HTTP publish");
        assert!(response.status().is_success(), "{}", response.status());
        let body: Value = response.json().await.expect("JSON reply");
        Position::new(
            body["offset"].as_u64().expect("offset"),
            body["epoch"].as_str().expect("epoch"),
        )
    }
}

impl Drop for Chorus {
    fn drop(&mut self) {
        if let Some((shutdown, _)) = &self.gateway {
            shutdown.cancel();
        }
        self.api_shutdown.cancel();
    }
}

/// The next event, within [`WAIT`].
pub async fn next(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event within the wait")
        .expect("the event stream is open")
}

/// The next event other than a failed connection attempt (their number depends on timing).
pub async fn next_skipping_retries(events: &mut Events) -> Event {
    loop {
        match next(events).await {
            Event::ConnectFailed {
                retry_in: Some(_), ..
            } => continue,
            other => return other,
        }
    }
}

/// Expects the next event to be a publication; returns (channel, offset, epoch, data).
pub async fn next_publication(events: &mut Events) -> (String, u64, String, Bytes) {
    match next(events).await {
        Event::Publication(p) => (p.channel, p.offset, p.epoch, p.data),
        other => panic!("expected a publication, got {other:?}"),
    }
}

/// A TCP proxy in front of an address: it can cut every connection (no close frame, like a
/// network failure) or freeze them (open, but nothing passes, like a dead link).
pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    freeze: Arc<Mutex<CancellationToken>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let freeze = Arc::new(Mutex::new(CancellationToken::new()));
        let accept = {
            let conns = conns.clone();
            let freeze = freeze.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let frozen = freeze.lock().unwrap().clone();
                    let task = tokio::spawn(pipe(client, server, frozen));
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Self {
            addr,
            conns,
            freeze,
            accept,
        }
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drops every current connection (both sides see the TCP connection end).
    pub fn cut(&self) {
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Stops every current connection from passing bytes, keeping it open. New connections
    /// pass normally.
    pub fn freeze(&self) {
        let mut token = self.freeze.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pipe(mut a: TcpStream, mut b: TcpStream, frozen: CancellationToken) {
    let (mut ar, mut aw) = a.split();
    let (mut br, mut bw) = b.split();
    let copy = async {
        tokio::select! {
            _ = copy(&mut ar, &mut bw) => {}
            _ = copy(&mut br, &mut aw) => {}
        }
    };
    tokio::select! {
        _ = copy => {}
        _ = frozen.cancelled() => std::future::pending::<()>().await,
    }
}

async fn copy(r: &mut (impl AsyncReadExt + Unpin), w: &mut (impl AsyncWriteExt + Unpin)) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A scripted gateway speaking JSON: the test reads each command and writes each frame.
pub struct FakeGateway {
    listener: TcpListener,
}

impl FakeGateway {
    pub async fn start() -> Self {
        init_tracing();
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.listener.local_addr().unwrap())
    }

    /// Accepts the next client connection, within the wait.
    pub async fn accept(&self) -> FakeConn {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("a client connects")
            .unwrap();
        FakeConn {
            ws: tokio_tungstenite::accept_async(stream).await.unwrap(),
        }
    }

    /// Accepts a connection and completes `connect` (no pings).
    pub async fn accept_connected(&self) -> FakeConn {
        let mut conn = self.accept().await;
        let cmd = conn.command().await;
        assert!(
            matches!(cmd.body, Some(command::Body::Connect(_))),
            "{cmd:?}"
        );
        conn.reply(
            cmd.id,
            reply::Result::Connect(client::ConnectResult {
                client: "fake-1".into(),
                node: "fake".into(),
                version: "0".into(),
                ping_interval: 0,
            }),
        )
        .await;
        conn
    }

    /// Starts a client from `builder` (aimed at this gateway), accepts its connection and
    /// completes `connect`; the client has reported `Connected`.
    pub async fn connected(&self, builder: ClientBuilder) -> (Client, Events, FakeConn) {
        let (client, mut events) = builder.connect().unwrap();
        let conn = self.accept_connected().await;
        assert!(matches!(next(&mut events).await, Event::Connected { .. }));
        (client, events, conn)
    }

    /// Whether a client connects within `wait`.
    pub async fn connects_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.listener.accept())
            .await
            .is_ok()
    }
}

pub struct FakeConn {
    ws: WebSocketStream<TcpStream>,
}

impl FakeConn {
    /// The next command from the client.
    pub async fn command(&mut self) -> client::Command {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a command within the wait")
                .expect("connection open")
                .expect("a frame");
            match msg {
                Message::Text(t) => {
                    return wire::decode_command(Format::Json, t.as_bytes()).expect("a command");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a command, got {other:?}"),
            }
        }
    }

    pub async fn send(&mut self, frame: client::ServerFrame) {
        let bytes = wire::encode_frame(Format::Json, &frame);
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn reply(&mut self, id: u32, result: reply::Result) {
        self.send(wire::reply(client::Reply {
            id,
            error: None,
            result: Some(result),
        }))
        .await;
    }

    pub async fn error(&mut self, id: u32, code: u32, message: &str) {
        self.send(wire::reply(client::Reply {
            id,
            error: Some(client::Error {
                code,
                message: message.into(),
            }),
            result: None,
        }))
        .await;
    }

    pub async fn publication(&mut self, channel: &str, offset: u64, epoch: &str) {
        self.send(wire::push(push::Body::Publication(publication(
            channel, offset, epoch,
        ))))
        .await;
    }

    pub async fn close(&mut self, code: u16, reason: &str) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: code.into(),
                reason: reason.into(),
            }))
            .await;
    }

    /// Expects a subscribe; returns (id, request).
    pub async fn expect_subscribe(&mut self) -> (u32, client::SubscribeRequest) {
        let cmd = self.command().await;
        match cmd.body {
            Some(command::Body::Subscribe(s)) => (cmd.id, s),
            other => panic!("expected subscribe, got {other:?}"),
        }
    }

    /// Expects an unsubscribe of `channel` and answers it.
    pub async fn expect_unsubscribe(&mut self, channel: &str) {
        let cmd = self.command().await;
        match cmd.body {
            Some(command::Body::Unsubscribe(u)) if u.channel == channel => {
                self.reply(
                    cmd.id,
                    reply::Result::Unsubscribe(client::UnsubscribeResult {}),
                )
                .await
            }
            other => panic!("expected unsubscribe of {channel}, got {other:?}"),
        }
    }
}

/// A publication whose data is its offset as JSON.
pub fn publication(channel: &str, offset: u64, epoch: &str) -> client::Publication {
    client::Publication {
        channel: channel.into(),
        offset,
        epoch: epoch.into(),
        data: Bytes::from(offset.to_string()),
    }
}
