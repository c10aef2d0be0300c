//! The background task that owns a client's WebSocket: connects, matches replies to
//! commands, tracks each channel's position, and reconnects with recovery.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chorus_protocol::client::{self, command, push, reply, server_frame};
use chorus_protocol::wire::{self, Format, PROTOBUF_SUBPROTOCOL};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::client::{ClientBuilder, Op};
use crate::error::{Error, connect_fatal, subscribe_retryable};
use crate::event::{Counters, Event, Position, SubscribeInfo};
use crate::track::{Verdict, advance, judge};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// How long the client waits for the gateway's close after a `disconnect` push.
const CLOSE_AFTER_DISCONNECT: Duration = Duration::from_secs(1);
/// How long the client waits to put its own close frame on the wire.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

pub(crate) struct Task {
    cfg: ClientBuilder,
    ops: mpsc::Receiver<Op>,
    /// False once every handle is dropped.
    ops_open: bool,
    events: mpsc::Sender<Event>,
    /// Set when an event had to wait for room: the task was not reading meanwhile.
    stalled: bool,
    cancel: CancellationToken,
    counters: Arc<Counters>,
    /// Every channel the application wants, whatever the connection's state.
    channels: HashMap<String, Chan>,
    /// Commands issued while disconnected, sent on the next connection.
    waiting: VecDeque<Waiting>,
    /// Failed connection attempts since the last successful `connect`.
    attempt: u32,
    /// Which of the configured URLs the next attempt uses.
    endpoint: usize,
}

struct Waiting {
    body: command::Body,
    deadline: Instant,
    reply: Reply<reply::Result>,
}

struct Chan {
    /// The last delivered position; `None` until the first subscribe result.
    last: Option<Position>,
    state: ChanState,
    /// `subscribe` calls waiting for the subscription to become live.
    waiters: Vec<Reply<SubscribeInfo>>,
    /// Refused subscribes in a row (for the retry backoff).
    retries: u32,
    /// This client's own publications (published without echo) not yet passed: the gateway
    /// does not send them back, so they are skipped rather than taken for a gap.
    own: Vec<Position>,
}

enum ChanState {
    /// Not subscribed on the current connection (or there is none).
    Idle,
    /// Subscribe `id` sent; publications meanwhile wait in `buffer`.
    Subscribing {
        id: u32,
        buffer: Vec<client::Publication>,
    },
    Live,
    /// Refused with a retryable error; subscribe again at `at`.
    Retry {
        at: Instant,
    },
}

/// A command waiting for its reply.
enum Pending {
    Connect,
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        reply: Option<Reply<()>>,
    },
    Request {
        reply: Reply<reply::Result>,
        /// For a publish without echo: its channel, to skip its offset.
        own: Option<String>,
    },
}

/// One connection's state.
struct Session {
    next_id: u32,
    pending: HashMap<u32, Pending>,
    /// Reply deadlines in send order.
    deadlines: VecDeque<(Instant, u32)>,
    connected: bool,
    last_rx: Instant,
    /// Silence after which the connection counts as dead (from the ping interval).
    silence: Option<Duration>,
    /// A `disconnect` push, and when to stop waiting for the close that follows it.
    disconnect: Option<(client::Disconnect, Instant)>,
    /// The earliest deadline the timer must wake for.
    wake: Instant,
}

/// How a connection ended.
enum End {
    /// Closed by the application (or nobody is left to use the client): stop.
    Closed,
    Lost {
        code: Option<u16>,
        reason: String,
        reconnect: bool,
    },
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

impl Session {
    fn new() -> Self {
        Self {
            next_id: 0,
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            connected: false,
            last_rx: Instant::now(),
            silence: None,
            disconnect: None,
            wake: far(),
        }
    }

    fn id(&mut self) -> u32 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    fn expect(&mut self, id: u32, pending: Pending, deadline: Instant) {
        self.pending.insert(id, pending);
        self.deadlines.push_back((deadline, id));
        self.wake_by(deadline);
    }

    fn wake_by(&mut self, at: Instant) {
        self.wake = self.wake.min(at);
    }

    /// The end of this connection, told by what the gateway said before it went.
    fn lost(&self, code: Option<u16>, reason: String) -> End {
        match &self.disconnect {
            Some((d, _)) => End::Lost {
                code: code.or(u16::try_from(d.code).ok()),
                reason: if reason.is_empty() || code.is_none() {
                    d.reason.clone()
                } else {
                    reason
                },
                reconnect: d.reconnect,
            },
            None => End::Lost {
                code,
                reason,
                reconnect: true,
            },
        }
    }
}

impl Task {
    pub(crate) fn new(
        cfg: ClientBuilder,
        ops: mpsc::Receiver<Op>,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            cfg,
            ops,
            ops_open: true,
            events,
            stalled: false,
            cancel,
            counters,
            channels: HashMap::new(),
            waiting: VecDeque::new(),
            attempt: 0,
            endpoint: 0,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut delay = None;
        let mut was_connected = false;
        loop {
            if let Some(d) = delay.take()
                && !self.offline(Instant::now() + d).await
            {
                break;
            }
            if self.gone() {
                break;
            }
            let opened = tokio::select! {
                _ = self.cancel.cancelled() => break,
                r = tokio::time::timeout(self.cfg.connect_timeout, self.open()) => r,
            };
            let ws = match opened {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    self.rotate();
                    delay = Some(self.connect_failed(e.to_string()).await);
                    continue;
                }
                Err(_) => {
                    self.rotate();
                    let error = format!("no WebSocket within {:?}", self.cfg.connect_timeout);
                    delay = Some(self.connect_failed(error).await);
                    continue;
                }
            };
            let mut s = Session::new();
            let end = self.session(ws, &mut s).await;
            self.end_session(&mut s);
            self.rotate();
            was_connected = s.connected;
            match end {
                End::Closed => break,
                End::Lost {
                    code,
                    reason,
                    reconnect,
                } if s.connected => {
                    tracing::debug!(?code, %reason, reconnect, "disconnected");
                    let d = self.next_delay();
                    self.emit(Event::Disconnected {
                        code,
                        reason,
                        reconnect,
                    })
                    .await;
                    if !reconnect {
                        self.finish(None);
                        return;
                    }
                    delay = Some(d);
                }
                End::Lost {
                    reason, reconnect, ..
                } => {
                    if !reconnect {
                        tracing::warn!(%reason, "giving up");
                        self.finish(Some(Event::ConnectFailed {
                            error: reason,
                            retry_in: None,
                        }));
                        return;
                    }
                    delay = Some(self.connect_failed(reason).await);
                }
            }
        }
        let last = Event::Disconnected {
            code: was_connected.then_some(1000),
            reason: "closed by the client".into(),
            reconnect: false,
        };
        self.finish((self.cancel.is_cancelled()).then_some(last));
    }

    /// Nobody is left: every handle and the event stream are dropped.
    fn gone(&self) -> bool {
        !self.ops_open && self.events.is_closed()
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.cfg.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    async fn connect_failed(&mut self, error: String) -> Duration {
        let d = self.next_delay();
        tracing::debug!(%error, retry_in = ?d, "connection attempt failed");
        self.emit(Event::ConnectFailed {
            error,
            retry_in: Some(d),
        })
        .await;
        d
    }

    /// Fails whatever still waits, and sends the last event if there is room for it.
    fn finish(&mut self, last: Option<Event>) {
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(Err(Error::Closed));
        }
        for (_, ch) in self.channels.drain() {
            for w in ch.waiters {
                let _ = w.send(Err(Error::Closed));
            }
        }
        self.ops.close();
        if let Some(event) = last {
            let _ = self.events.try_send(event);
        }
    }

    /// The URL of the next attempt.
    fn url(&self) -> &str {
        match self.endpoint {
            0 => &self.cfg.url,
            i => &self.cfg.fallbacks[(i - 1) % self.cfg.fallbacks.len()],
        }
    }

    /// Moves on to the next configured URL (after a failed attempt or a lost connection).
    fn rotate(&mut self) {
        self.endpoint = (self.endpoint + 1) % (self.cfg.fallbacks.len() + 1);
    }

    async fn open(&self) -> Result<Ws, tungstenite::Error> {
        let mut request = self.url().into_client_request()?;
        if self.cfg.format == Format::Protobuf {
            request.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(PROTOBUF_SUBPROTOCOL),
            );
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(self.cfg.read_buffer_size)
            .write_buffer_size(0);
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
        Ok(ws)
    }

    /// Waits out a backoff delay while serving the handle. False: the client is closed.
    async fn offline(&mut self, until: Instant) -> bool {
        loop {
            if self.gone() {
                return false;
            }
            let wake = self
                .waiting
                .iter()
                .map(|w| w.deadline)
                .fold(until, Instant::min);
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                op = self.ops.recv(), if self.ops_open => match op {
                    Some(op) => self.on_op_offline(op),
                    None => self.ops_open = false,
                },
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    self.expire_waiting(now);
                    if now >= until {
                        return true;
                    }
                }
            }
        }
    }

    fn expire_waiting(&mut self, now: Instant) {
        let timeout = self.cfg.command_timeout;
        let (expired, kept) = self.waiting.drain(..).partition(|w| w.deadline <= now);
        self.waiting = kept;
        for w in expired {
            let _ = w.reply.send(Err(Error::Timeout(timeout)));
        }
    }

    fn on_op_offline(&mut self, op: Op) {
        match op {
            Op::Subscribe {
                channel,
                from,
                reply,
            } => {
                self.add_channel(channel, from, reply);
            }
            Op::Unsubscribe { channel, reply } => {
                self.remove_channel(&channel);
                let _ = reply.send(Ok(()));
            }
            Op::Request {
                body,
                deadline,
                reply,
            } => self.waiting.push_back(Waiting {
                body,
                deadline,
                reply,
            }),
            Op::Position { channel, reply } => {
                let _ = reply.send(self.position(&channel));
            }
        }
    }

    /// Adds a channel the application wants; returns its name if it is new.
    fn add_channel(
        &mut self,
        channel: String,
        from: Option<Position>,
        reply: Reply<SubscribeInfo>,
    ) -> Option<String> {
        if self.channels.contains_key(&channel) {
            let _ = reply.send(Err(Error::AlreadySubscribed(channel)));
            return None;
        }
        self.channels.insert(
            channel.clone(),
            Chan {
                last: from,
                state: ChanState::Idle,
                waiters: vec![reply],
                retries: 0,
                own: Vec::new(),
            },
        );
        Some(channel)
    }

    /// Forgets a channel; returns whether the gateway may still have it subscribed.
    fn remove_channel(&mut self, channel: &str) -> bool {
        let Some(ch) = self.channels.remove(channel) else {
            return false;
        };
        for w in ch.waiters {
            let _ = w.send(Err(Error::Unsubscribed(channel.to_owned())));
        }
        matches!(ch.state, ChanState::Live | ChanState::Subscribing { .. })
    }

    fn position(&self, channel: &str) -> Option<Position> {
        self.channels.get(channel).and_then(|ch| ch.last.clone())
    }

    /// Sends an event, waiting for room if the queue is full: this is the backpressure that
    /// stops the task reading its socket while the application does not read its events.
    async fn emit(&mut self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(event)) => {
                tokio::select! {
                    _ = self.events.send(event) => {}
                    _ = self.cancel.cancelled() => {}
                }
                self.stalled = true;
            }
        }
    }

    /// Runs one connection from `connect` to its end.
    async fn session(&mut self, mut ws: Ws, s: &mut Session) -> End {
        let id = s.id();
        s.expect(
            id,
            Pending::Connect,
            Instant::now() + self.cfg.connect_timeout,
        );
        let connect = command::Body::Connect(client::ConnectRequest {
            token: self.cfg.token.clone(),
            name: self.cfg.name.clone(),
        });
        if let Err(end) = self.send(&mut ws, s, id, connect).await {
            return end;
        }
        let timer = tokio::time::sleep_until(s.wake);
        tokio::pin!(timer);
        let mut armed = Some(s.wake);
        loop {
            if armed != Some(s.wake) {
                timer.as_mut().reset(s.wake);
                armed = Some(s.wake);
            }
            let step = tokio::select! {
                _ = self.cancel.cancelled() => {
                    close(&mut ws).await;
                    return End::Closed;
                }
                msg = ws.next() => {
                    s.last_rx = Instant::now();
                    self.on_message(&mut ws, s, msg).await
                }
                op = self.ops.recv(), if s.connected && self.ops_open => match op {
                    Some(op) => self.on_op(&mut ws, s, op).await,
                    None => {
                        self.ops_open = false;
                        Ok(())
                    }
                },
                () = &mut timer => {
                    armed = None;
                    s.wake = far();
                    self.on_timer(&mut ws, s).await
                }
            };
            if let Err(end) = step {
                return end;
            }
            if std::mem::take(&mut self.stalled) {
                s.last_rx = Instant::now();
            }
            if self.gone() {
                close(&mut ws).await;
                return End::Closed;
            }
        }
    }

    /// After a connection ended: fails its commands and marks every channel unsubscribed.
    fn end_session(&mut self, s: &mut Session) {
        for (_, pending) in s.pending.drain() {
            match pending {
                Pending::Request { reply, .. } => {
                    let _ = reply.send(Err(Error::Disconnected));
                }
                // The gateway forgets a connection's subscriptions with it.
                Pending::Unsubscribe { reply: Some(reply) } => {
                    let _ = reply.send(Ok(()));
                }
                _ => {}
            }
        }
        for ch in self.channels.values_mut() {
            ch.state = ChanState::Idle;
        }
    }

    async fn send(
        &self,
        ws: &mut Ws,
        s: &Session,
        id: u32,
        body: command::Body,
    ) -> Result<(), End> {
        let format = self.cfg.format;
        let bytes = wire::encode_command(
            format,
            &client::Command {
                id,
                body: Some(body),
            },
        );
        let msg = match format {
            Format::Json => Message::Text(
                Utf8Bytes::try_from(bytes)
                    .map_err(|_| s.lost(None, "a JSON command was not UTF-8".into()))?,
            ),
            Format::Protobuf => Message::Binary(bytes),
        };
        ws.send(msg)
            .await
            .map_err(|e| s.lost(None, format!("sending: {e}")))
    }

    async fn send_request(
        &self,
        ws: &mut Ws,
        s: &mut Session,
        body: command::Body,
        reply: Reply<reply::Result>,
    ) -> Result<(), End> {
        let own = match &body {
            command::Body::Publish(p) if !p.echo => Some(p.channel.clone()),
            _ => None,
        };
        let id = s.id();
        s.expect(
            id,
            Pending::Request { reply, own },
            Instant::now() + self.cfg.command_timeout,
        );
        self.send(ws, s, id, body).await
    }

    /// Subscribes `channel`, recovering from its last position when it has one. With
    /// `again`, unsubscribes first (the gateway may still hold the old subscription).
    async fn send_subscribe(
        &mut self,
        ws: &mut Ws,
        s: &mut Session,
        channel: String,
        again: bool,
    ) -> Result<(), End> {
        let deadline = Instant::now() + self.cfg.command_timeout;
        if again {
            let id = s.id();
            s.expect(id, Pending::Unsubscribe { reply: None }, deadline);
            let body = command::Body::Unsubscribe(client::UnsubscribeRequest {
                channel: channel.clone(),
            });
            self.send(ws, s, id, body).await?;
        }
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        let id = s.id();
        let (recover, offset, epoch) = match &ch.last {
            Some(p) => (true, p.offset, p.epoch.clone()),
            None => (false, 0, String::new()),
        };
        ch.state = ChanState::Subscribing {
            id,
            buffer: Vec::new(),
        };
        let body = command::Body::Subscribe(client::SubscribeRequest {
            channel: channel.clone(),
            recover,
            offset,
            epoch,
        });
        s.expect(id, Pending::Subscribe { channel }, deadline);
        self.send(ws, s, id, body).await
    }

    async fn on_op(&mut self, ws: &mut Ws, s: &mut Session, op: Op) -> Result<(), End> {
        match op {
            Op::Subscribe {
                channel,
                from,
                reply,
            } => match self.add_channel(channel, from, reply) {
                Some(channel) => self.send_subscribe(ws, s, channel, false).await,
                None => Ok(()),
            },
            Op::Unsubscribe { channel, reply } => {
                if !self.remove_channel(&channel) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let id = s.id();
                s.expect(
                    id,
                    Pending::Unsubscribe { reply: Some(reply) },
                    Instant::now() + self.cfg.command_timeout,
                );
                let body = command::Body::Unsubscribe(client::UnsubscribeRequest { channel });
                self.send(ws, s, id, body).await
            }
            Op::Request { body, reply, .. } => self.send_request(ws, s, body, reply).await,
            Op::Position { channel, reply } => {
                let _ = reply.send(self.position(&channel));
                Ok(())
            }
        }
    }

    async fn on_timer(&mut self, ws: &mut Ws, s: &mut Session) -> Result<(), End> {
        let now = Instant::now();
        if let Some((_, at)) = &s.disconnect {
            if *at <= now {
                return Err(s.lost(None, String::new()));
            }
            let at = *at;
            s.wake_by(at);
        }
        if let Some(silence) = s.silence {
            let quiet = now.saturating_duration_since(s.last_rx);
            if quiet >= silence {
                return Err(s.lost(None, format!("nothing from the gateway for {quiet:?}")));
            }
            let at = s.last_rx + silence;
            s.wake_by(at);
        }
        while let Some(&(at, id)) = s.deadlines.front() {
            if !s.pending.contains_key(&id) {
                s.deadlines.pop_front();
                continue;
            }
            if at <= now {
                if let Some(Pending::Request { reply, .. }) = s.pending.remove(&id) {
                    let _ = reply.send(Err(Error::Timeout(self.cfg.command_timeout)));
                }
                return Err(s.lost(None, format!("no reply to command {id} in time")));
            }
            s.wake_by(at);
            break;
        }
        let mut due = Vec::new();
        for (name, ch) in &self.channels {
            if let ChanState::Retry { at } = ch.state {
                if at <= now {
                    due.push(name.clone());
                } else {
                    s.wake_by(at);
                }
            }
        }
        for channel in due {
            self.send_subscribe(ws, s, channel, true).await?;
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        ws: &mut Ws,
        s: &mut Session,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), End> {
        let msg = match msg {
            None => return Err(s.lost(None, "connection ended".into())),
            Some(Err(e)) => return Err(s.lost(None, e.to_string())),
            Some(Ok(msg)) => msg,
        };
        let frame = match msg {
            Message::Text(text) => wire::decode_frame(Format::Json, text.as_bytes()),
            // Decoding from `Bytes` lets publication data share the frame's buffer.
            Message::Binary(bytes) => client::ServerFrame::decode(bytes).map_err(|e| e.to_string()),
            Message::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (1005, String::new()),
                };
                return Err(s.lost(Some(code), reason));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        match frame {
            Ok(frame) => self.on_frame(ws, s, frame).await,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an undecodable frame from the gateway");
                Ok(())
            }
        }
    }

    async fn on_frame(
        &mut self,
        ws: &mut Ws,
        s: &mut Session,
        frame: client::ServerFrame,
    ) -> Result<(), End> {
        match frame.frame {
            Some(server_frame::Frame::Push(p)) => match p.body {
                Some(push::Body::Publication(p)) => self.on_publication(ws, s, p).await,
                Some(push::Body::Disconnect(d)) => {
                    tracing::debug!(code = d.code, reason = %d.reason, reconnect = d.reconnect, "disconnect push");
                    let at = Instant::now() + CLOSE_AFTER_DISCONNECT;
                    s.wake_by(at);
                    s.disconnect = Some((d, at));
                    Ok(())
                }
                None => Ok(()),
            },
            Some(server_frame::Frame::Reply(r)) => self.on_reply(ws, s, r).await,
            None => Ok(()),
        }
    }

    async fn on_reply(
        &mut self,
        ws: &mut Ws,
        s: &mut Session,
        r: client::Reply,
    ) -> Result<(), End> {
        let Some(pending) = s.pending.remove(&r.id) else {
            tracing::debug!(id = r.id, "reply to no pending command");
            return Ok(());
        };
        match pending {
            Pending::Connect => self.on_connected(ws, s, r).await,
            Pending::Subscribe { channel } => self.on_subscribed(ws, s, channel, r).await,
            Pending::Unsubscribe { reply } => {
                if let Some(reply) = reply {
                    let _ = reply.send(match r.error {
                        Some(e) => Err(Error::server(e)),
                        None => Ok(()),
                    });
                }
                Ok(())
            }
            Pending::Request { reply, own } => {
                if let (Some(channel), Some(reply::Result::Publish(p))) = (own, &r.result) {
                    self.own_publication(channel, Position::new(p.offset, p.epoch.clone()));
                }
                let _ = reply.send(match (r.error, r.result) {
                    (Some(e), _) => Err(Error::server(e)),
                    (None, Some(result)) => Ok(result),
                    (None, None) => Err(Error::Server {
                        code: 0,
                        message: "reply without a result".into(),
                    }),
                });
                Ok(())
            }
        }
    }

    async fn on_connected(
        &mut self,
        ws: &mut Ws,
        s: &mut Session,
        r: client::Reply,
    ) -> Result<(), End> {
        if let Some(e) = r.error {
            return Err(End::Lost {
                code: None,
                reason: format!("connect refused: {} {}", e.code, e.message),
                reconnect: !connect_fatal(e.code),
            });
        }
        let Some(reply::Result::Connect(c)) = r.result else {
            return Err(s.lost(None, "connect reply without a result".into()));
        };
        s.connected = true;
        self.attempt = 0;
        Counters::add(&self.counters.connects);
        let ping_interval = Duration::from_secs(c.ping_interval.into());
        if !ping_interval.is_zero() {
            let silence = ping_interval * 2 + self.cfg.ping_margin;
            s.silence = Some(silence);
            s.wake_by(Instant::now() + silence);
        }
        tracing::debug!(client = %c.client, node = %c.node, "connected");
        self.emit(Event::Connected {
            client: c.client,
            node: c.node,
            ping_interval,
        })
        .await;
        let channels: Vec<String> = self.channels.keys().cloned().collect();
        for channel in channels {
            self.send_subscribe(ws, s, channel, false).await?;
        }
        while let Some(w) = self.waiting.pop_front() {
            self.send_request(ws, s, w.body, w.reply).await?;
        }
        Ok(())
    }

    async fn on_subscribed(
        &mut self,
        ws: &mut Ws,
        s: &mut Session,
        channel: String,
        r: client::Reply,
    ) -> Result<(), End> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        let buffer = match &mut ch.state {
            ChanState::Subscribing { id, buffer } if *id == r.id => std::mem::take(buffer),
            _ => return Ok(()), // a reply superseded by an unsubscribe or a newer subscribe
        };
        if let Some(e) = r.error {
            let retrying = subscribe_retryable(e.code);
            if retrying {
                let at = Instant::now() + self.cfg.backoff.delay(ch.retries);
                ch.retries = ch.retries.saturating_add(1);
                ch.state = ChanState::Retry { at };
                s.wake_by(at);
            } else if let Some(ch) = self.channels.remove(&channel) {
                for w in ch.waiters {
                    let _ = w.send(Err(Error::server(e.clone())));
                }
            }
            tracing::debug!(%channel, code = e.code, message = %e.message, retrying, "subscribe refused");
            self.emit(Event::SubscribeFailed {
                channel,
                code: e.code,
                message: e.message,
                retrying,
            })
            .await;
            return Ok(());
        }
        let Some(reply::Result::Subscribe(result)) = r.result else {
            return Err(s.lost(None, "subscribe reply without a result".into()));
        };
        ch.retries = 0;
        ch.state = ChanState::Live;
        if starts_afresh(&result) {
            ch.own.clear();
        }
        let position = Position::new(result.offset, result.epoch);
        let recovered = result.was_recovering.then_some(result.recovered);
        let from = ch.last.take();
        // Publications are judged against the position recovered from. Not recovered but with
        // publications: the channel's new epoch from its start (its old one was lost), which
        // continues from just before the first of them. Otherwise (nothing to recover, or
        // nothing recoverable) the channel continues from the reply's position.
        ch.last = Some(match (recovered, &from, result.publications.first()) {
            (Some(true), Some(from), _) => from.clone(),
            (Some(false), _, Some(first)) => {
                Position::new(first.offset.saturating_sub(1), first.epoch.clone())
            }
            _ => position.clone(),
        });
        let info = SubscribeInfo {
            position: position.clone(),
            recovered,
        };
        for w in ch.waiters.drain(..) {
            let _ = w.send(Ok(info.clone()));
        }
        if recovered == Some(false) {
            Counters::add(&self.counters.unrecovered);
            tracing::info!(%channel, from = ?from, to = %position, "publications could not be recovered");
        }
        self.emit(Event::Subscribed {
            channel: channel.clone(),
            position,
            recovered,
            from,
        })
        .await;
        for mut p in result.publications {
            if p.channel.is_empty() {
                p.channel.clone_from(&channel);
            }
            self.on_publication(ws, s, p).await?;
        }
        for p in buffer {
            self.on_publication(ws, s, p).await?;
        }
        Ok(())
    }

    /// A publication of a channel: delivered if it is the next one, dropped if already
    /// delivered, a recovery if offsets were skipped.
    async fn on_publication(
        &mut self,
        ws: &mut Ws,
        s: &mut Session,
        p: client::Publication,
    ) -> Result<(), End> {
        let Some(ch) = self.channels.get_mut(&p.channel) else {
            return Ok(()); // unsubscribed meanwhile
        };
        let last = match &mut ch.state {
            ChanState::Live => {
                let last = ch.last.get_or_insert_with(Position::default);
                if !ch.own.is_empty() {
                    skip_own(last, &mut ch.own);
                }
                last
            }
            ChanState::Subscribing { buffer, .. } => {
                buffer.push(p);
                return Ok(());
            }
            ChanState::Idle | ChanState::Retry { .. } => return Ok(()),
        };
        match judge(last, p.offset, &p.epoch) {
            Verdict::Next => {
                advance(last, p.offset, &p.epoch);
                Counters::add(&self.counters.publications);
                self.emit(Event::Publication(p)).await;
                Ok(())
            }
            Verdict::Duplicate => {
                Counters::add(&self.counters.duplicates);
                tracing::trace!(channel = %p.channel, offset = p.offset, "duplicate dropped");
                Ok(())
            }
            Verdict::Gap => {
                let position = last.clone();
                Counters::add(&self.counters.gaps);
                tracing::info!(channel = %p.channel, last = %position, offset = p.offset, epoch = %p.epoch, "gap; recovering");
                let channel = p.channel;
                self.emit(Event::Gap {
                    channel: channel.clone(),
                    position,
                    received: Position::new(p.offset, p.epoch),
                })
                .await;
                self.send_subscribe(ws, s, channel, true).await
            }
        }
    }
}

impl Task {
    /// Notes a publication of this client's own that the gateway will not send back.
    fn own_publication(&mut self, channel: String, at: Position) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        ch.own.push(at);
        if let (ChanState::Live, Some(last)) = (&ch.state, ch.last.as_mut()) {
            skip_own(last, &mut ch.own);
        }
    }
}

/// Advances `last` over the client's own publications that come next, and forgets those
/// already passed.
fn skip_own(last: &mut Position, own: &mut Vec<Position>) {
    while let Some(i) = own
        .iter()
        .position(|o| judge(last, o.offset, &o.epoch) == Verdict::Next)
    {
        let o = own.swap_remove(i);
        advance(last, o.offset, &o.epoch);
    }
    own.retain(|o| judge(last, o.offset, &o.epoch) == Verdict::Gap);
}

/// Whether a subscribe result starts the channel afresh (no recovery from the old position):
/// then the client's own publications noted before it no longer apply.
fn starts_afresh(result: &client::SubscribeResult) -> bool {
    !(result.was_recovering && result.recovered)
}

/// Closes the WebSocket with 1000, without waiting long for a gateway that does not read.
async fn close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "closed by the client".into(),
    };
    let _ = tokio::time::timeout(CLOSE_WRITE, ws.close(Some(frame))).await;
}
