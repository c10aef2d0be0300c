//! One client's session: reads its frames, runs its commands, and cleans up after it.
//!
//! The session is the connection's only reader. It takes whole messages from the
//! `message_reader` (which checks frames, reassembles fragments and validates close frames),
//! answers pings and close frames, turns protocol violations into their RFC 6455 close codes,
//! decodes commands in the connection's format and answers each with a reply carrying its id. Commands run one after another, so replies come in command order.
//! When the session ends, for any reason, it removes the connection from the hub (releasing
//! the node's bus subscriptions it was the last user of) and from the node registry.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use chorus_bus::{
    BusError, ConnectionInfo, Envelope, HistoryQuery, Position, Publish, Recovery, now_ms,
};
use chorus_protocol::client::{self, command, reply};
use chorus_protocol::codes::{ErrorCode, close};
use chorus_protocol::wire::{self, Format};
use chorus_protocol::{VERSION, channel};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tracing::Instrument;

use crate::conn::{Conn, Outgoing};
use crate::frame_reader::ReadError;
use crate::hub::ActivateError;
use crate::limits::Verdict;
use crate::message_reader::{Message, MessageReader};
use crate::node::Node;
use crate::security::SessionSecurity;
use crate::writer;

/// Reads of a subscriber's position (or recovery) before its subscribe gives up, when the
/// channel keeps moving past it with holes (see `ActivateError::Behind`).
const MAX_POSITION_READS: u32 = 3;

/// Runs a WebSocket connection from the completed upgrade to the end: `socket` is the
/// upgraded TCP connection, `already` the bytes of it that arrived with the upgrade request.
pub(crate) async fn run(node: Arc<Node>, socket: TcpStream, already: Bytes, format: Format) {
    let _counted = node.track_connection();
    let config = &node.config;
    let (conn, queue) = Conn::new(
        node.next_client_id(),
        format,
        config.queue_max_frames,
        config.queue_max_bytes,
    );
    let (read, write) = socket.into_split();
    let mut reader = MessageReader::new(config.max_message_size, already);
    let mut writer = tokio::spawn(writer::run(
        write,
        conn.clone(),
        queue,
        config.ping_interval,
    ));
    let mut session = Session {
        node: node.clone(),
        conn: conn.clone(),
        connected: false,
        channels: HashSet::new(),
        sec: node.security.session(),
        close_after_reply: None,
    };
    let span = tracing::debug_span!("session", client = %conn.client, ?format);
    session.read_loop(&mut reader, &read).instrument(span).await;
    session.end();
    // The writer sends the close frame (if any) and stops. A client that stopped reading can
    // leave it blocked on a full socket for ever: after a short grace it is aborted, which
    // drops the socket.
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
        tracing::debug!(client = %conn.client, "writer did not finish; dropped the socket");
    }
}

struct Session {
    node: Arc<Node>,
    conn: Arc<Conn>,
    connected: bool,
    channels: HashSet<String>,
    /// Identity, grants, command rate and deadlines (`security.rs`).
    sec: SessionSecurity,
    /// Close the connection once the current command's reply is queued.
    close_after_reply: Option<(u16, &'static str)>,
}

impl Session {
    async fn read_loop(&mut self, reader: &mut MessageReader, socket: &OwnedReadHalf) {
        let idle_timeout = self.node.config.idle_timeout;
        // This session's moment in the drain window, fixed once so that re-entering the
        // select below does not move it.
        let drain_fraction: f64 = rand::random();
        loop {
            if !reader.has_frame() {
                self.conn.uncork();
            }
            // The connect timeout before `connect`, the token's expiry after it.
            let deadline = self
                .sec
                .deadline(self.connected || self.node.config.conformance_echo);
            let deadline_passed = async {
                match &deadline {
                    Some(d) => tokio::time::sleep_until(d.at).await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                biased;
                _ = self.conn.closing.cancelled() => return,
                _ = deadline_passed => {
                    if let Some(d) = deadline {
                        tracing::debug!(client = %self.conn.client, code = d.code, "closing at a deadline: {}", d.reason);
                        if d.code == close::TOKEN_EXPIRED {
                            self.conn.disconnect(d.code, d.reason);
                        } else {
                            self.conn.close(d.code, d.reason);
                        }
                    }
                    return;
                }
                _ = async {
                    self.node.shutdown.cancelled().await;
                    tokio::time::sleep_until(self.node.drain_turn(drain_fraction)).await;
                } => {
                    self.conn.disconnect(close::SHUTDOWN, "gateway shutting down");
                    return;
                }
                read = tokio::time::timeout(idle_timeout, reader.next(socket)) => read,
            };
            // Commands that arrived together are answered together (see `Conn::cork`): the
            // writer is held while more are in hand, and woken (top of the loop) before the
            // session waits for the client again.
            if reader.has_frame() {
                self.conn.cork();
            }
            let message = match read {
                Err(_) => {
                    self.conn.close(close::IDLE_TIMEOUT, "idle timeout");
                    return;
                }
                Ok(Err(ReadError::Violation(v))) => {
                    tracing::debug!(client = %self.conn.client, code = v.code, "closing on a frame violation: {}", v.reason);
                    self.conn.close(v.code, v.reason);
                    return;
                }
                Ok(Err(ReadError::Lost(e))) => {
                    tracing::debug!(client = %self.conn.client, error = %e, "connection lost");
                    self.conn.abandon();
                    return;
                }
                Ok(Ok(message)) => message,
            };
            match message {
                Message::Close(payload) => {
                    self.conn.send(Outgoing::CloseEcho(payload));
                    return;
                }
                Message::Ping(payload) => self.conn.send(Outgoing::Pong(payload)),
                Message::Pong => {}
                Message::Data { text, payload } => self.on_message(text, &payload).await,
            }
        }
    }

    async fn on_message(&mut self, text: bool, payload: &[u8]) {
        if self.node.config.conformance_echo {
            // Conformance testing (scripts/autobahn): the message goes back as it came.
            self.conn
                .send(Outgoing::Echo(text, Bytes::copy_from_slice(payload)));
            return;
        }
        let format = self.conn.format;
        // Every message counts against the rate, frames of the wrong type included: they
        // cost an error reply each.
        let verdict = self.sec.rate();
        if text != format.is_text() && verdict != Verdict::Close {
            let expected = if format.is_text() {
                "text (JSON)"
            } else {
                "binary (protobuf)"
            };
            let error = match verdict {
                Verdict::Allow => ErrorCode::WrongFrameType
                    .with(format!("this connection takes {expected} frames")),
                _ => ErrorCode::RateLimited.with("too many commands: slow down"),
            };
            self.reply_error(0, error);
            return;
        }
        let decoded = wire::decode_command(format, payload);
        match verdict {
            Verdict::Allow => {}
            Verdict::Refuse => {
                let id = decoded.as_ref().map_or_else(|e| e.id, |c| c.id);
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
        match decoded {
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
        let result = match body {
            command::Body::Connect(req) => self.connect(req).map(Some),
            _ if !self.connected => Err(ErrorCode::NotConnected.with("send connect first")),
            command::Body::Subscribe(req) => self.subscribe(id, req).await,
            command::Body::Unsubscribe(req) => self.unsubscribe(req).map(Some),
            command::Body::Publish(req) => self.publish(req).await.map(Some),
            command::Body::Ping(_) => Ok(Some(reply::Result::Ping(client::PingResult {}))),
            command::Body::History(req) => self.history(req).await.map(Some),
            command::Body::Refresh(req) => self.refresh(req).map(Some),
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
        }
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

    /// Subscribes, answering through the hub so that the reply comes before any publication
    /// after it (see the hub's "subscribing without a seam"). Returns `Ok(None)` once replied.
    async fn subscribe(
        &mut self,
        id: u32,
        req: client::SubscribeRequest,
    ) -> Result<Option<reply::Result>, client::Error> {
        let ch = req.channel;
        valid_channel(&ch)?;
        self.sec.may_subscribe(self.node.bus.namespaces(), &ch)?;
        if self.channels.contains(&ch) {
            return Err(ErrorCode::AlreadySubscribed.with(format!("already subscribed to {ch}")));
        }
        let limit = self.node.config.max_channels_per_connection;
        if self.channels.len() >= limit {
            return Err(
                ErrorCode::LimitExceeded.with(format!("at most {limit} channels per connection"))
            );
        }
        if req.recover {
            self.sec.may_read_history()?;
        }
        let node = &self.node;
        let since = req.recover.then_some(Position {
            offset: req.offset,
            epoch: req.epoch,
        });
        let format = self.conn.format;
        if since.is_none()
            && node.hub.subscribe_live(&ch, &self.conn, |pos| {
                subscribe_reply(format, id, position_result(pos))
            })
        {
            self.channels.insert(ch);
            return Ok(None);
        }
        let ready = node.hub.hold(&node.link, &ch, &self.conn);
        self.channels.insert(ch.clone());
        if let Err(e) = ready.wait(node.bus_timeout).await {
            self.leave(&ch);
            return Err(bus_error(e));
        }
        let mut reads = 0;
        loop {
            reads += 1;
            let start = match &since {
                Some(since) => self.first_page(&ch, since).await,
                None => bounded(node.bus_timeout, node.bus.position(&ch))
                    .await
                    .map(|pos| (position_result(pos), false)),
            };
            let (result, more) = match start {
                Ok(start) => start,
                Err(e) => {
                    self.leave(&ch);
                    return Err(bus_error(e));
                }
            };
            let position = Position {
                offset: result.offset,
                epoch: result.epoch.clone(),
            };
            let reply = subscribe_reply(self.conn.format, id, result);
            if more {
                // Paged: the reply goes now, the rest of the recovery follows it as
                // publications, then the live ones held meanwhile.
                self.conn.send(Outgoing::Data(reply));
                self.send_pages(&ch, position).await;
                return Ok(None);
            }
            let error = match node.hub.activate(&ch, &self.conn, &position, Some(reply)) {
                Ok(()) => return Ok(None),
                // The channel moved past this position with a hole this subscriber's held
                // publications do not fill: read again, now at least as far as the channel.
                Err(ActivateError::Behind) if reads < MAX_POSITION_READS => continue,
                Err(e) => activate_error(&e),
            };
            self.leave(&ch);
            return Err(error);
        }
    }

    /// Undoes a subscribe that failed half-way.
    fn leave(&mut self, ch: &str) {
        self.channels.remove(ch);
        self.node.hub.unsubscribe(&self.node.link, ch, &self.conn);
    }

    /// Bytes of publications one reply may carry: half the client's queue, so that a reply
    /// always fits beside what is already queued.
    fn reply_budget(&self) -> usize {
        self.node.config.queue_max_bytes / 2
    }

    /// The first (often the only) part of a recovering subscribe's answer, and whether more
    /// publications follow it. Recovered: the publications after `since`, as many as one reply
    /// holds. Not recovered because the channel's epoch changed (Redis lost the channel) while
    /// history still holds the new epoch from its first offset: `recovered: false`, with the
    /// new epoch's publications from its start, so that the client misses only what Redis
    /// lost. Otherwise `recovered: false` at the channel's current position.
    async fn first_page(
        &self,
        ch: &str,
        since: &Position,
    ) -> Result<(client::SubscribeResult, bool), BusError> {
        let node = &self.node;
        let budget = self.reply_budget();
        let recovery = bounded(node.bus_timeout, node.bus.recover(ch, since, budget)).await?;
        if recovery.recovered {
            let more = recovery.more;
            return Ok((recovered_result(recovery, true), more));
        }
        if since.same_epoch_as(&recovery.position) || recovery.position.offset == 0 {
            return Ok((recovered_result(recovery, false), false));
        }
        let epoch_start = Position {
            offset: 0,
            epoch: recovery.position.epoch.clone(),
        };
        let from_start =
            bounded(node.bus_timeout, node.bus.recover(ch, &epoch_start, budget)).await?;
        if from_start.recovered && from_start.position.epoch == recovery.position.epoch {
            let more = from_start.more;
            tracing::debug!(client = %self.conn.client, channel = ch,
                "epoch changed; delivering the new epoch from its start");
            return Ok((recovered_result(from_start, false), more));
        }
        Ok((recovered_result(recovery, false), false))
    }

    /// Sends the rest of a paged recovery after its reply (which ended at `after`): each page
    /// as publications once the client's queue has room for it, then makes the subscriber
    /// live. The reply has told the client it is subscribed, so a failure now cannot be an
    /// error reply: the connection is closed with 3003 and the client recovers again from
    /// what it received.
    async fn send_pages(&mut self, ch: &str, mut after: Position) {
        let node = self.node.clone();
        let budget = self.reply_budget();
        let mut behind = 0;
        let failure = loop {
            let recovery =
                match bounded(node.bus_timeout, node.bus.recover(ch, &after, budget)).await {
                    Ok(r) if r.recovered => r,
                    Ok(_) => break "history moved past the recovery while it was sent".to_owned(),
                    Err(e) => break format!("reading history failed while recovering: {e}"),
                };
            let frames: Vec<Bytes> = recovery
                .publications
                .into_iter()
                .map(|env| {
                    after.offset = env.offset;
                    let push = wire::push(client::push::Body::Publication(publication(env)));
                    wire::encode_frame(self.conn.format, &push)
                })
                .collect();
            let bytes = frames.iter().map(Bytes::len).sum();
            if !self.conn.room_for(bytes).await {
                self.leave(ch);
                return;
            }
            for frame in frames {
                self.conn.send(Outgoing::Data(frame));
            }
            if recovery.more {
                continue;
            }
            match node.hub.activate(ch, &self.conn, &after, None) {
                Ok(()) => return,
                Err(ActivateError::Behind) if behind < MAX_POSITION_READS => behind += 1,
                Err(e) => break activate_error(&e).message,
            }
        };
        tracing::info!(client = %self.conn.client, channel = ch, why = %failure,
            "paged recovery failed; closing for the client to recover again");
        self.leave(ch);
        self.conn.disconnect(close::INSUFFICIENT_STATE, &failure);
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

    fn unsubscribe(
        &mut self,
        req: client::UnsubscribeRequest,
    ) -> Result<reply::Result, client::Error> {
        valid_channel(&req.channel)?;
        if self.channels.remove(&req.channel) {
            self.node
                .hub
                .unsubscribe(&self.node.link, &req.channel, &self.conn);
        }
        Ok(reply::Result::Unsubscribe(client::UnsubscribeResult {}))
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

    /// Releases everything the session holds in the hub and the registry.
    fn end(&mut self) {
        for ch in self.channels.drain() {
            self.node.hub.unsubscribe(&self.node.link, &ch, &self.conn);
        }
        if self.connected {
            self.node.link.connection_closed(&self.conn.client);
        }
        self.conn.abandon();
    }
}

/// A bus call with an overall deadline, so a client's command never hangs on the bus.
async fn bounded<T>(
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

/// A subscribe reply, encoded for the connection.
fn subscribe_reply(format: Format, id: u32, result: client::SubscribeResult) -> Bytes {
    wire::encode_frame(
        format,
        &wire::reply(client::Reply {
            id,
            error: None,
            result: Some(reply::Result::Subscribe(result)),
        }),
    )
}

/// The result of a plain subscribe (no recovery) at `position`.
fn position_result(position: Position) -> client::SubscribeResult {
    client::SubscribeResult {
        epoch: position.epoch,
        offset: position.offset,
        ..Default::default()
    }
}

/// A recovering subscribe's result: with publications, the reply's position is the last of
/// them (what follows continues from there); without, the channel's current position.
fn recovered_result(recovery: Recovery, recovered: bool) -> client::SubscribeResult {
    let (offset, epoch) = match recovery.publications.last() {
        Some(last) => (last.offset, last.epoch.clone()),
        None => (recovery.position.offset, recovery.position.epoch),
    };
    client::SubscribeResult {
        epoch,
        offset,
        recovered,
        publications: recovery.publications.into_iter().map(publication).collect(),
        was_recovering: true,
    }
}

/// Why a held subscriber could not be made live, for the client.
fn activate_error(e: &ActivateError) -> client::Error {
    match e {
        ActivateError::Behind => {
            ErrorCode::Unavailable.with("the channel moved on while subscribing; subscribe again")
        }
        ActivateError::EpochChanged => ErrorCode::Unavailable
            .with("the channel started a new epoch meanwhile; subscribe again"),
        ActivateError::Gone => ErrorCode::Internal.with("subscription vanished"),
    }
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
