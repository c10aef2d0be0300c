//! The application's side: [`ClientBuilder`] and the [`Client`] handle.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chorus_protocol::client::{self, command, reply};
use chorus_protocol::wire::Format;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::Error;
use crate::event::{
    ClientInfo, Counters, Event, History, HistoryOptions, Position, PresenceStats, Stats,
    SubscribeInfo, SubscribeOptions,
};
use crate::task::Task;

/// The receiving end of a client's events. See [`Event`] and the crate docs on backpressure.
pub type Events = mpsc::Receiver<Event>;

/// Settings of one client; built with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) url: String,
    /// Other gateways' URLs, tried in turn after `url`.
    pub(crate) fallbacks: Vec<String>,
    pub(crate) format: Format,
    pub(crate) token: String,
    pub(crate) name: String,
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) ping_margin: Duration,
    pub(crate) event_capacity: usize,
    pub(crate) read_buffer_size: usize,
}

impl ClientBuilder {
    /// Another gateway to use: after a failed attempt or a lost connection the client moves
    /// on to the next URL (`url`, then the fallbacks in the order given, round and round), so a
    /// client whose gateway died or is draining reconnects to another one. Without a load
    /// balancer in front of the gateways, give every gateway here.
    pub fn fallback(mut self, url: impl Into<String>) -> Self {
        self.fallbacks.push(url.into());
        self
    }

    /// Wire format: JSON text frames (default) or protobuf binary frames.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Connection token sent in `connect`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// Client name sent in `connect` (shows in the gateway's logs).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Reconnect and subscribe-retry delays. Default: 100 ms doubling to 5 s, 50 % jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Bound on opening the WebSocket plus the `connect` round trip. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on any command's reply; a connection that leaves a command unanswered this long
    /// is taken for dead and replaced. Also how long a command issued while disconnected
    /// waits for a connection. Default 10 s.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// A connection from which nothing arrives for `2 × ping_interval + margin` is taken for
    /// dead. Default margin 5 s.
    pub fn ping_margin(mut self, margin: Duration) -> Self {
        self.ping_margin = margin;
        self
    }

    /// Capacity of the event queue (at least 1). Default 1024.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// The WebSocket read buffer, allocated once per connection. Default 16 KiB: small, for
    /// processes holding thousands of clients; raise it for one very busy client.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.read_buffer_size = bytes.max(1024);
        self
    }

    /// Starts the client: spawns its background task (on the current Tokio runtime), which
    /// connects at once and keeps reconnecting. Returns the handle and the event stream.
    ///
    /// Fails only on a URL that is not `ws://` or `wss://`.
    pub fn connect(self) -> Result<(Client, Events), Error> {
        // Checked once here; the task builds a fresh request per connection attempt.
        for url in std::iter::once(&self.url).chain(&self.fallbacks) {
            url.as_str()
                .into_client_request()
                .map_err(|e| Error::InvalidUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        }
        let (ops_tx, ops_rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::channel(self.event_capacity);
        let cancel = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let client = Client {
            ops: ops_tx,
            cancel: cancel.clone(),
            counters: counters.clone(),
            format: self.format,
            command_timeout: self.command_timeout,
        };
        let task = Task::new(self, ops_rx, events_tx, cancel, counters);
        tokio::spawn(task.run());
        Ok((client, events_rx))
    }
}

/// What the handle asks of the background task.
pub(crate) enum Op {
    Subscribe {
        channel: String,
        options: SubscribeOptions,
        reply: oneshot::Sender<Result<SubscribeInfo, Error>>,
    },
    Unsubscribe {
        channel: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// A command answered by its reply (publish, history, ping).
    Request {
        body: command::Body,
        deadline: Instant,
        reply: oneshot::Sender<Result<reply::Result, Error>>,
    },
    Position {
        channel: String,
        reply: oneshot::Sender<Option<Position>>,
    },
}

/// A handle to one client connection (cheap to clone). The connection itself lives in a
/// background task; see the crate docs.
#[derive(Clone)]
pub struct Client {
    ops: mpsc::Sender<Op>,
    cancel: CancellationToken,
    counters: Arc<Counters>,
    format: Format,
    command_timeout: Duration,
}

impl Client {
    /// A builder for a client of the gateway at `url` (e.g. `ws://127.0.0.1:8000/ws`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            fallbacks: Vec::new(),
            format: Format::Json,
            token: String::new(),
            name: String::new(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            ping_margin: Duration::from_secs(5),
            event_capacity: 1024,
            read_buffer_size: 16 * 1024,
        }
    }

    /// Subscribes to `channel` from its current position.
    ///
    /// Returns once the subscription is live (across reconnects, and retrying while the
    /// gateway answers 108 Unavailable), or fails when the gateway refuses it for good (e.g.
    /// 102 bad channel, 106 too many channels). From then on the client keeps the channel
    /// subscribed, with recovery, until [`unsubscribe`](Self::unsubscribe).
    pub async fn subscribe(&self, channel: impl Into<String>) -> Result<SubscribeInfo, Error> {
        self.subscribe_with(channel, SubscribeOptions::default())
            .await
    }

    /// Subscribes to `channel` and recovers every publication after `position` (e.g. one the
    /// application saved). The result's `recovered` says whether that was possible.
    pub async fn subscribe_from(
        &self,
        channel: impl Into<String>,
        position: Position,
    ) -> Result<SubscribeInfo, Error> {
        let options = SubscribeOptions {
            from: Some(position),
            ..SubscribeOptions::default()
        };
        self.subscribe_with(channel, options).await
    }

    /// Subscribes to `channel` with options: a position to recover from, and whether to
    /// receive join/leave events.
    pub async fn subscribe_with(
        &self,
        channel: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<SubscribeInfo, Error> {
        let channel = channel.into();
        self.call(|reply| Op::Subscribe {
            channel,
            options,
            reply,
        })
        .await?
    }

    /// Unsubscribes from `channel`. Its publications stop being delivered at once, even those
    /// the gateway had already sent.
    pub async fn unsubscribe(&self, channel: impl Into<String>) -> Result<(), Error> {
        let channel = channel.into();
        self.call(|reply| Op::Unsubscribe { channel, reply })
            .await?
    }

    /// Publishes `data` to `channel` (where the gateway lets clients publish); returns where
    /// it landed. The sender does not receive its own publication. On a JSON connection the
    /// data must be JSON text.
    pub async fn publish(
        &self,
        channel: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Result<Position, Error> {
        self.publish_inner(channel.into(), data.into(), false).await
    }

    /// Like [`publish`](Self::publish), but the sender receives its own publication too (if
    /// subscribed).
    pub async fn publish_echo(
        &self,
        channel: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Result<Position, Error> {
        self.publish_inner(channel.into(), data.into(), true).await
    }

    async fn publish_inner(
        &self,
        channel: String,
        data: Bytes,
        echo: bool,
    ) -> Result<Position, Error> {
        if self.format == Format::Json
            && serde_json::from_slice::<&serde_json::value::RawValue>(&data).is_err()
        {
            return Err(Error::NotJson);
        }
        let body = command::Body::Publish(client::PublishRequest {
            channel,
            data,
            echo,
        });
        match self.request(body).await? {
            reply::Result::Publish(p) => Ok(Position::new(p.offset, p.epoch)),
            other => Err(unexpected(other)),
        }
    }

    /// Reads a channel's history.
    pub async fn history(
        &self,
        channel: impl Into<String>,
        options: HistoryOptions,
    ) -> Result<History, Error> {
        let body = command::Body::History(client::HistoryRequest {
            channel: channel.into(),
            since: options.since.map(|p| client::StreamPosition {
                offset: p.offset,
                epoch: p.epoch,
            }),
            limit: options.limit,
            reverse: options.reverse,
        });
        match self.request(body).await? {
            reply::Result::History(h) => Ok(History {
                publications: h.publications,
                position: Position::new(h.offset, h.epoch),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Every connection subscribed to a presence channel, across every gateway (where the
    /// connection may subscribe to it; the gateway refuses channels larger than its presence
    /// limit with error 106).
    pub async fn presence(&self, channel: impl Into<String>) -> Result<Vec<ClientInfo>, Error> {
        let body = command::Body::Presence(client::PresenceRequest {
            channel: channel.into(),
        });
        match self.request(body).await? {
            reply::Result::Presence(p) => Ok(p.clients),
            other => Err(unexpected(other)),
        }
    }

    /// How many connections and distinct users are subscribed to a presence channel.
    pub async fn presence_stats(&self, channel: impl Into<String>) -> Result<PresenceStats, Error> {
        let body = command::Body::PresenceStats(client::PresenceStatsRequest {
            channel: channel.into(),
        });
        match self.request(body).await? {
            reply::Result::PresenceStats(s) => Ok(PresenceStats {
                clients: s.num_clients,
                users: s.num_users,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// An application-level round trip to the gateway; returns its duration.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        self.request(command::Body::Ping(client::PingRequest {}))
            .await?;
        Ok(start.elapsed())
    }

    /// The last delivered position of a subscribed channel (`None` when not subscribed, or
    /// subscribed and not yet positioned). Save it to resume later with
    /// [`subscribe_from`](Self::subscribe_from).
    pub async fn position(&self, channel: impl Into<String>) -> Option<Position> {
        let channel = channel.into();
        self.call(|reply| Op::Position { channel, reply })
            .await
            .ok()
            .flatten()
    }

    /// Counters of this client.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Closes the connection (close code 1000) and stops reconnecting. Returns once the
    /// background task has ended; the event stream ends after a final `Disconnected`.
    pub async fn close(&self) {
        self.cancel.cancel();
        self.ops.closed().await;
    }

    async fn request(&self, body: command::Body) -> Result<reply::Result, Error> {
        let deadline = Instant::now() + self.command_timeout;
        self.call(|reply| Op::Request {
            body,
            deadline,
            reply,
        })
        .await?
    }

    async fn call<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(op(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }
}

fn unexpected(result: reply::Result) -> Error {
    Error::Server {
        code: 0,
        message: format!("unexpected reply: {result:?}"),
    }
}
