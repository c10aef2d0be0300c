//! One client's session: reads its frames, runs its commands, and cleans up after it.
//!
//! The session is the connection's only reader. It takes whole messages from the
//! `message_reader` (which checks frames, reassembles fragments and validates close frames),
//! answers pings and close frames, turns protocol violations into their RFC 6455 close codes,
//! decodes commands in the connection's format and answers each with a reply carrying its id.
//! Commands run one after another, so replies come in command order; `subscribe` (holding,
//! recovering, paging) has its own file. When the session ends, for any reason — a panic
//! included, since it happens in `Drop` — it removes the connection from the hub (releasing
//! the node's bus subscriptions it was the last user of) and from the node registry.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use chorus_bus::{BusError, ConnectionInfo, Envelope, HistoryQuery, Position, Publish, now_ms};
use chorus_protocol::client::{self, command, push, reply};
use chorus_protocol::codes::{ErrorCode, close};
use chorus_protocol::wire::{self, Format};
use chorus_protocol::{VERSION, channel};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::conn::{Conn, Outgoing};
use crate::deflate::Deflate;
use crate::limits::Verdict;
use crate::message_reader::MessageReader;
use crate::node::Node;
use crate::read_loop;
use crate::security::{Deadline, SessionSecurity};
use crate::sessions::{Control, ControlQueue};
use crate::writer;

mod subscribe;

/// Runs a WebSocket connection from the completed upgrade to the end: `socket` is the
/// upgraded TCP connection, `already` the bytes of it that arrived with the upgrade request.
pub(crate) async fn run(
    node: Arc<Node>,
    socket: TcpStream,
    already: Bytes,
    format: Format,
    deflate: Option<Deflate>,
) {
    let _counted = node.track_connection();
    let config = &node.config;
    let (conn, queue) = Conn::with_deflate(
        node.next_client_id(),
        format,
        deflate,
        config.queue_max_frames,
        config.queue_max_bytes,
    );
    let (read, write) = socket.into_split();
    let mut reader = MessageReader::new(config.max_message_size, already, deflate.is_some());
    let writer = WriterTask::spawn(write, conn.clone(), queue, config.ping_interval);
    let mut session = Session::new(&node, &conn);
    let span = tracing::debug_span!("session", client = %conn.client, ?format);
    read_loop::run(&mut session, &mut reader, &read)
        .instrument(span)
        .await;
    drop(session);
    writer.finish(&conn).await;
}

/// The connection's writer task, aborted if the session ends without waiting for it — a
/// panic in the session, say — so that no socket outlives its session.
pub(crate) struct WriterTask(Option<tokio::task::JoinHandle<()>>);

impl WriterTask {
    pub(crate) fn spawn(
        write: tokio::net::tcp::OwnedWriteHalf,
        conn: Arc<Conn>,
        queue: crate::conn::ConnQueue,
        ping_interval: std::time::Duration,
    ) -> Self {
        Self(Some(tokio::spawn(writer::run(
            write,
            conn,
            queue,
            ping_interval,
        ))))
    }

    /// Waits for the writer to send the close frame (if any) and stop. A client that stopped
    /// reading can leave it blocked on a full socket for ever: after a short grace it is
    /// aborted, which drops the socket.
    pub(crate) async fn finish(mut self, conn: &Conn) {
        if let Some(mut task) = self.0.take()
            && tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
            tracing::debug!(client = %conn.client, "writer did not finish; dropped the socket");
        }
    }
}

impl Drop for WriterTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl read_loop::Session for Session {
    const SHUTDOWN_REASON: &'static str = "gateway shutting down";
    const IDLE_REASON: &'static str = "idle timeout";

    fn node(&self) -> &Arc<Node> {
        &self.node
    }

    fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    fn control_queue(&self) -> &Arc<ControlQueue> {
        &self.control
    }

    /// The connect timeout before `connect`, the token's expiry after it.
    fn deadline(&self) -> Option<Deadline> {
        self.sec
            .deadline(self.connected || self.node.config.conformance_echo)
    }

    async fn on_control(&mut self, control: Control) -> bool {
        self.apply_control(control).await
    }

    async fn on_message(&mut self, text: bool, payload: &[u8]) {
        self.take_message(text, payload).await
    }
}

struct Session {
    node: Arc<Node>,
    conn: Arc<Conn>,
    connected: bool,
    channels: HashSet<String>,
    /// The channels where this connection has a presence entry.
    presence: HashSet<String>,
    /// Identity, grants, command rate and deadlines (`security.rs`).
    sec: SessionSecurity,
    /// Close the connection once the current command's reply is queued.
    close_after_reply: Option<(u16, &'static str)>,
    /// Server commands for this connection (`sessions.rs`), registered under the user once
    /// `connect` named it.
    control: Arc<ControlQueue>,
    /// The user this session is registered under in the node's sessions.
    registered: Option<String>,
}

impl Session {
    fn new(node: &Arc<Node>, conn: &Arc<Conn>) -> Self {
        Self {
            node: node.clone(),
            conn: conn.clone(),
            connected: false,
            channels: HashSet::new(),
            presence: HashSet::new(),
            sec: node.security.session(),
            close_after_reply: None,
            control: Arc::default(),
            registered: None,
        }
    }

    async fn take_message(&mut self, text: bool, payload: &[u8]) {
        if self.node.config.conformance_echo {
            // Conformance testing (scripts/autobahn): the message goes back as it came.
            // Compressed back when the client negotiated permessage-deflate (Autobahn 12, 13).
            let echo = match self.conn.deflate {
                Some(d) => {
                    Outgoing::Echo(text, true, crate::deflate::compress(payload, d.window_bits))
                }
                None => Outgoing::Echo(text, false, Bytes::copy_from_slice(payload)),
            };
            self.conn.send(echo);
            return;
        }
        let format = self.conn.format;
        let right_type = text == format.is_text();
        // Every message counts against the rate, frames of the wrong type included: they
        // cost an error reply each.
        match self.sec.rate() {
            Verdict::Allow => {}
            Verdict::Refuse => {
                // The command's id when it can be read; a frame of the wrong type has none.
                let id = if right_type {
                    wire::decode_command(format, payload).map_or_else(|e| e.id, |c| c.id)
                } else {
                    0
                };
                self.reply_error(
                    id,
                    ErrorCode::RateLimited.with("too many commands: slow down"),
                );
                return;
            }
            Verdict::Close => {
                tracing::info!(client = %self.conn.client, "closing a client that ignores its rate limit");
                self.conn.close(
                    close::RATE_LIMITED,
                    "too many commands after rate-limit errors",
                );
                return;
            }
        }
        if !right_type {
            let expected = if format.is_text() {
                "text (JSON)"
            } else {
                "binary (protobuf)"
            };
            self.reply_error(
                0,
                ErrorCode::WrongFrameType.with(format!("this connection takes {expected} frames")),
            );
            return;
        }
        match wire::decode_command(format, payload) {
            // Boxed: a command's future (with the bus's Redis futures inside) is many KiB. Inline,
            // it would size every idle connection's task for its largest command; boxed, it
            // takes memory only while a command runs.
            Ok(cmd) => Box::pin(self.handle(cmd)).await,
            Err(e) => self.reply_error(e.id, e.error),
        }
    }

    async fn handle(&mut self, cmd: client::Command) {
        let id = cmd.id;
        let Some(body) = cmd.body else {
            self.reply_error(id, ErrorCode::UnknownCommand.with("unknown command"));
            return;
        };
        let connecting = matches!(body, command::Body::Connect(_));
        let mut recover = HashMap::new();
        let result = match body {
            command::Body::Connect(mut req) => {
                recover = std::mem::take(&mut req.recover);
                let limit = self.node.config.max_channels_per_connection;
                if recover.len() > limit {
                    Err(ErrorCode::BadRequest
                        .with(format!("at most {limit} channels to recover at connect")))
                } else {
                    self.connect(req).map(Some)
                }
            }
            _ if !self.connected => Err(ErrorCode::NotConnected.with("send connect first")),
            command::Body::Subscribe(req) => self.subscribe(id, req).await,
            command::Body::Unsubscribe(req) => self.unsubscribe(req).await.map(Some),
            command::Body::Publish(req) => self.publish(req).await.map(Some),
            command::Body::Ping(_) => Ok(Some(reply::Result::Ping(client::PingResult {}))),
            command::Body::History(req) => self.history(req).await.map(Some),
            command::Body::Refresh(req) => self.refresh(req).map(Some),
            command::Body::Presence(req) => self.presence(req).await.map(Some),
            command::Body::PresenceStats(req) => self.presence_stats(req).await.map(Some),
        };
        match result {
            Ok(Some(result)) => self.reply(client::Reply {
                id,
                error: None,
                result: Some(result),
            }),
            Ok(None) => {} // answered already
            Err(error) => self.reply_error(id, error),
        }
        if let Some((code, reason)) = self.close_after_reply.take() {
            self.conn.close(code, reason);
            return;
        }
        if connecting && self.connected {
            self.server_subscriptions(recover).await;
        }
    }

    /// Runs a server command; false when the session ends with it.
    async fn apply_control(&mut self, control: Control) -> bool {
        match control {
            Control::Disconnect {
                code,
                reason,
                reconnect,
            } => {
                tracing::debug!(client = %self.conn.client, code, reconnect, "disconnected by the server");
                self.conn.disconnect_with(code, &reason, reconnect);
                false
            }
            // Boxed: rare, and their futures would otherwise sit in every idle connection's
            // task (the read loop holds this one inline).
            Control::Subscribe(channel) => {
                Box::pin(self.server_subscribe(channel, None)).await;
                true
            }
            Control::Unsubscribe(channel) => {
                Box::pin(self.server_unsubscribe(&channel)).await;
                true
            }
        }
    }

    /// After `connect`: the channels the token's `subs` claim names, and the user's personal
    /// channel in every namespace that keeps one, each recovered from the position the
    /// connect gave for it, if any.
    async fn server_subscriptions(&mut self, mut recover: HashMap<String, client::StreamPosition>) {
        let identity = &self.sec.identity;
        let mut channels = identity.subs.clone();
        if !identity.is_anonymous() {
            let namespaces = self.node.bus.namespaces();
            for (ns, rules) in &namespaces.named {
                let personal = format!("{ns}:#{}", identity.user);
                if rules.personal_channel && channel::validate(&personal).is_ok() {
                    channels.push(personal);
                }
            }
        }
        for ch in channels {
            let from = recover.remove(&ch);
            self.server_subscribe(ch, from).await;
        }
    }

    /// Unsubscribes on the server's word; the client learns it from an `unsubscribe` push.
    async fn server_unsubscribe(&mut self, channel: &str) {
        if !self.channels.contains(channel) {
            return;
        }
        let req = client::UnsubscribeRequest {
            channel: channel.to_owned(),
        };
        if let Err(e) = self.unsubscribe(req).await {
            tracing::debug!(client = %self.conn.client, channel, error = %e.message,
                "server unsubscribe left the presence entry to the background");
        }
        self.send(wire::push(push::Body::Unsubscribe(client::Unsubscribed {
            channel: channel.to_owned(),
            reason: "unsubscribed by the server".into(),
        })));
    }

    fn connect(&mut self, req: client::ConnectRequest) -> Result<reply::Result, client::Error> {
        if self.connected {
            return Err(ErrorCode::AlreadyConnected.with("already connected"));
        }
        let identity = self.node.security.authenticate(&req.token)?;
        if let Err(e) = self.sec.connect(&self.node.security, identity) {
            // The error reply goes out first, then the close frame.
            self.close_after_reply = Some((
                close::CONNECTION_LIMIT,
                "too many connections for this user",
            ));
            return Err(e);
        }
        self.connected = true;
        let user = &self.sec.identity.user;
        if !user.is_empty() && self.registered.is_none() {
            let queue = self.control.clone();
            self.node.sessions.register(user, &self.conn.client, queue);
            self.registered = Some(user.clone());
        }
        self.node.link.connection_opened(ConnectionInfo {
            client: self.conn.client.clone(),
            user: self.sec.identity.user.clone(),
            connected_at_ms: now_ms(),
        });
        Ok(reply::Result::Connect(client::ConnectResult {
            client: self.conn.client.clone(),
            node: self.node.id.clone(),
            version: VERSION.into(),
            ping_interval: u32::try_from(self.node.config.ping_interval.as_secs())
                .unwrap_or(u32::MAX),
        }))
    }

    fn refresh(&mut self, req: client::RefreshRequest) -> Result<reply::Result, client::Error> {
        let identity = self.node.security.authenticate(&req.token)?;
        self.sec.refresh(identity).map(reply::Result::Refresh)
    }

    /// Reads a channel's history: the publications after `since` (whose epoch must be the
    /// channel's), or the oldest/newest kept, as many as fit in one reply (`more` says when
    /// the limit was not reached for that reason).
    async fn history(
        &mut self,
        req: client::HistoryRequest,
    ) -> Result<reply::Result, client::Error> {
        valid_channel(&req.channel)?;
        self.sec
            .may_subscribe(self.node.bus.namespaces(), &req.channel)?;
        self.sec.may_read_history()?;
        let since = req.since.map(|p| Position {
            offset: p.offset,
            epoch: p.epoch,
        });
        let query = HistoryQuery::page(
            since.as_ref().map(|p| p.offset),
            req.limit as usize,
            req.reverse,
            self.reply_budget(),
        );
        let node = &self.node;
        let history = bounded(node.bus_timeout, node.bus.history(&req.channel, &query))
            .await
            .map_err(bus_error)?;
        if let Some(since) = &since
            && !since.same_epoch_as(&history.position)
        {
            return Err(ErrorCode::UnrecoverablePosition.with(format!(
                "epoch {:?} is not the channel's current epoch {:?}",
                since.epoch, history.position.epoch
            )));
        }
        Ok(reply::Result::History(client::HistoryResult {
            publications: history.publications.into_iter().map(publication).collect(),
            offset: history.position.offset,
            epoch: history.position.epoch,
            more: history.more,
        }))
    }

    /// Unsubscribes; answers once the connection's presence entry (if any) is gone for every
    /// reader. The subscription itself ends at once, whatever Redis says: if the entry cannot
    /// be removed now, the node removes it in the background and the error says so.
    async fn unsubscribe(
        &mut self,
        req: client::UnsubscribeRequest,
    ) -> Result<reply::Result, client::Error> {
        valid_channel(&req.channel)?;
        if self.channels.remove(&req.channel) {
            self.node
                .hub
                .unsubscribe(&self.node.link, &req.channel, &self.conn);
        }
        if self.presence.remove(&req.channel) {
            let node = &self.node;
            if let Err(e) = bounded(
                node.bus_timeout,
                node.link.leave(&req.channel, &self.conn.client),
            )
            .await
            {
                node.link.left(&req.channel, &self.conn.client);
                return Err(bus_error(e));
            }
        }
        Ok(reply::Result::Unsubscribe(client::UnsubscribeResult {}))
    }

    /// Who is subscribed to a channel, across the cluster; for a connection that may
    /// subscribe to it. One reply holds the whole answer (at most the namespace's
    /// `presence_max_clients` entries); an answer larger than half the connection's queue is
    /// refused with `limit_exceeded` — `presence_stats` still answers.
    async fn presence(
        &mut self,
        req: client::PresenceRequest,
    ) -> Result<reply::Result, client::Error> {
        let members = self.read_presence(&req.channel).await?;
        let size: usize = members
            .iter()
            .map(|m| m.client.len() + m.user.len() + m.info.len() + 48)
            .sum();
        if size > self.reply_budget() {
            return Err(ErrorCode::LimitExceeded.with(format!(
                "the presence of {} ({} entries) does not fit in one reply; ask presence_stats",
                req.channel,
                members.len()
            )));
        }
        Ok(reply::Result::Presence(client::PresenceResult {
            clients: members
                .into_iter()
                .map(|m| client::ClientInfo {
                    client: m.client,
                    user: m.user,
                    info: m.info,
                })
                .collect(),
        }))
    }

    async fn presence_stats(
        &mut self,
        req: client::PresenceStatsRequest,
    ) -> Result<reply::Result, client::Error> {
        let stats = chorus_bus::PresenceStats::of(&self.read_presence(&req.channel).await?);
        Ok(reply::Result::PresenceStats(client::PresenceStatsResult {
            num_clients: stats.clients,
            num_users: stats.users,
        }))
    }

    async fn read_presence(
        &mut self,
        channel: &str,
    ) -> Result<Vec<chorus_bus::Member>, client::Error> {
        valid_channel(channel)?;
        self.sec
            .may_subscribe(self.node.bus.namespaces(), channel)?;
        let node = &self.node;
        bounded(node.bus_timeout, node.bus.presence(channel))
            .await
            .map_err(bus_error)
    }

    async fn publish(
        &mut self,
        req: client::PublishRequest,
    ) -> Result<reply::Result, client::Error> {
        valid_channel(&req.channel)?;
        self.sec
            .may_publish(self.node.bus.namespaces(), &req.channel)?;
        let msg = Publish {
            channel: req.channel,
            data: req.data,
            exclude_client: if req.echo {
                String::new()
            } else {
                self.conn.client.clone()
            },
            idempotency_key: None,
        };
        let published = bounded(self.node.bus_timeout, self.node.bus.publish(msg))
            .await
            .map_err(bus_error)?;
        Ok(reply::Result::Publish(client::PublishResult {
            offset: published.offset,
            epoch: published.epoch,
        }))
    }

    fn reply(&self, reply: client::Reply) {
        self.send(wire::reply(reply));
    }

    fn reply_error(&self, id: u32, error: client::Error) {
        crate::metrics::error_replied(error.code);
        self.reply(client::Reply {
            id,
            error: Some(error),
            result: None,
        });
    }

    fn send(&self, frame: client::ServerFrame) {
        self.conn
            .send(Outgoing::Data(wire::encode_frame(self.conn.format, &frame)));
    }
}

/// Whatever ends a session — its read loop returning, or a panic unwinding through it — the
/// connection leaves the hub and the registry and its queue closes: teardown lives in `Drop`,
/// so no path can skip it.
impl Drop for Session {
    fn drop(&mut self) {
        for ch in self.channels.drain() {
            self.node.hub.unsubscribe(&self.node.link, &ch, &self.conn);
        }
        for ch in self.presence.drain() {
            self.node.link.left(&ch, &self.conn.client);
        }
        if let Some(user) = self.registered.take() {
            self.node.sessions.unregister(&user, &self.conn.client);
        }
        if std::mem::take(&mut self.connected) {
            self.node.link.connection_closed(&self.conn.client);
        }
        self.conn.abandon();
    }
}

/// A bus call with an overall deadline, so a client's command never hangs on the bus.
pub(crate) async fn bounded<T>(
    timeout: std::time::Duration,
    fut: impl std::future::Future<Output = Result<T, BusError>>,
) -> Result<T, BusError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(BusError::Unavailable(format!(
                "no answer from the bus within {timeout:?}"
            )))
        })
}

/// A channel name a command names, checked by the protocol's one set of channel rules.
fn valid_channel(name: &str) -> Result<(), client::Error> {
    channel::validate(name).map_err(|e| ErrorCode::BadChannel.with(e.to_string()))
}

fn publication(env: Envelope) -> client::Publication {
    client::Publication {
        channel: env.channel,
        offset: env.offset,
        epoch: env.epoch,
        data: env.data,
    }
}

fn bus_error(e: BusError) -> client::Error {
    match e {
        BusError::BadChannel(e) => ErrorCode::BadChannel.with(e.to_string()),
        BusError::Unavailable(reason) => ErrorCode::Unavailable.with(reason),
        BusError::BadRequest(reason) => ErrorCode::BadRequest.with(reason),
        BusError::LimitExceeded(reason) => ErrorCode::LimitExceeded.with(reason),
        other => {
            tracing::warn!(error = %other, "bus error");
            ErrorCode::Internal.with("internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chorus_bus::{Bus, NamespaceRules, Namespaces};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::GatewayConfig;
    use crate::security::Security;

    #[tokio::test]
    async fn a_session_that_panics_still_leaves_the_hub_and_the_registry() {
        let config = GatewayConfig::default();
        let bus = Bus::memory().with_namespaces(Namespaces {
            default: NamespaceRules {
                anonymous_subscribe: true,
                ..NamespaceRules::default()
            },
            ..Namespaces::default()
        });
        let node = Node::start(
            bus.clone(),
            config.clone(),
            Duration::from_secs(1),
            "127.0.0.1:0".into(),
            CancellationToken::new(),
            Security::from_config(&config).unwrap(),
        );
        let (conn, _queue) = Conn::new(node.next_client_id(), Format::Json, 8, 1 << 16);
        let mut session = Session::new(&node, &conn);
        session.connect(client::ConnectRequest::default()).unwrap();
        let subscribe = client::SubscribeRequest {
            channel: "news".into(),
            ..Default::default()
        };
        session.subscribe(1, subscribe).await.unwrap();
        let connections = async || bus.nodes().await.unwrap()[0].connections;
        assert_eq!(node.hub.subscription_count(), 1);
        assert_eq!(connections().await, 1);

        let ended = tokio::spawn(async move {
            let _session = session;
            panic!("a bug while running a command");
        })
        .await;
        assert!(ended.unwrap_err().is_panic());
        assert_eq!(node.hub.subscription_count(), 0, "left the hub");
        assert_eq!(connections().await, 0, "left the registry");
        assert!(conn.is_ending(), "its queue and writer are done");
    }
}

#[cfg(test)]
mod task_size {
    use super::*;

    /// Every connection's task holds its session future whole, and moving it into the task
    /// touches every byte: a large future inlined in the read loop (a server-side subscribe
    /// once made it 16 KiB) costs that much memory per idle connection.
    #[tokio::test]
    async fn an_idle_connections_tasks_stay_small() {
        let config = crate::config::GatewayConfig::default();
        let node = Node::start(
            chorus_bus::Bus::memory(),
            config.clone(),
            std::time::Duration::from_secs(1),
            "127.0.0.1:0".into(),
            tokio_util::sync::CancellationToken::new(),
            crate::security::Security::from_config(&config).unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = || TcpStream::connect(addr);
        let chorus = run(
            node.clone(),
            socket().await.unwrap(),
            Bytes::new(),
            Format::Json,
            None,
        );
        let refused = crate::pusher::Start::Refuse {
            code: 4001,
            message: "",
            reason: "",
        };
        let pusher = crate::pusher::run(
            node.clone(),
            socket().await.unwrap(),
            Bytes::new(),
            refused,
            None,
        );
        let (conn, queue) = Conn::new("c".into(), Format::Json, 8, 1 << 16);
        let (_, write) = socket().await.unwrap().into_split();
        let writer = crate::writer::run(write, conn, queue, std::time::Duration::from_secs(25));
        let sizes = [
            std::mem::size_of_val(&chorus),
            std::mem::size_of_val(&pusher),
            std::mem::size_of_val(&writer),
        ];
        assert!(
            sizes.iter().all(|s| *s <= 4096),
            "session, Pusher session, writer: {sizes:?} bytes"
        );
    }
}
