//! One session: what the task does while a connection is up, from `connect` to its end.
//!
//! The session waits on four things at once — the socket, the handle's ops (once `connect`
//! has succeeded: nothing is sent before it), one timer and the client's cancellation — and
//! handles whichever is ready, one at a time, so no state needs a lock. Each handler returns
//! the connection's [`End`] when the connection is over; the task then fails what was in
//! flight and reconnects (see [`task`](crate::task)).
//!
//! **What comes in.** Replies are matched to the commands in flight by id
//! ([`pending`](crate::pending)); pushes carry publications, judged per channel
//! ([`channels`](crate::channels)), or announce a `disconnect`. The `connect` reply starts
//! the session proper: every channel is resubscribed, with recovery from its last position,
//! and the requests deferred while disconnected go out, in the order they were issued.
//!
//! **Gaps.** A publication that skips offsets is not delivered: the channel is unsubscribed
//! and subscribed again with recovery from its last delivered position, and the gateway's
//! reply either fills the gap or says it cannot. The unsubscribe first matters: the gateway
//! may still hold the old subscription, and a second subscribe would be refused.
//!
//! **The timer.** One timer per session, armed for [`Connection::wake`], the earliest
//! deadline of anything; when it fires, every deadline is checked and the next is set. A
//! missed reply or too long a silence ends the connection; a subscribe whose retry is due is
//! sent again.

use std::time::Duration;

use chorus_protocol::client::{self, command, push, reply, server_frame};
use futures::StreamExt;
use tokio::time::Instant;

use crate::channels::{Arrival, SubscribeOutcome};
use crate::client::Op;
use crate::connection::{Connection, End, Incoming, far};
use crate::error::{Error, connect_fatal};
use crate::event::{Counters, Event, Position};
use crate::pending::{Deadlines, Pending, Reply};
use crate::task::Task;

impl Task {
    /// Runs one connection from `connect` to its end.
    pub(crate) async fn session(&mut self, conn: &mut Connection) -> End {
        let connect = command::Body::Connect(client::ConnectRequest {
            token: self.cfg.token.clone(),
            name: self.cfg.name.clone(),
            recover: self.channels.server_positions(),
        });
        let deadline = Instant::now() + self.cfg.connect_timeout;
        if let Err(end) = conn.request(Pending::Connect, deadline, connect).await {
            return end;
        }
        let timer = tokio::time::sleep_until(conn.wake);
        tokio::pin!(timer);
        let mut armed = Some(conn.wake);
        loop {
            if armed != Some(conn.wake) {
                timer.as_mut().reset(conn.wake);
                armed = Some(conn.wake);
            }
            let step = tokio::select! {
                _ = self.cancel.cancelled() => {
                    conn.close().await;
                    return End::Closed;
                }
                msg = conn.ws.next() => {
                    conn.last_rx = Instant::now();
                    match conn.receive(msg) {
                        Ok(Incoming::Frame(frame)) => self.on_frame(conn, frame).await,
                        Ok(Incoming::Close { code, reason }) => Err(conn.lost(Some(code), reason)),
                        Ok(Incoming::Nothing) => Ok(()),
                        Err(end) => Err(end),
                    }
                }
                op = self.ops.recv(), if conn.connected && self.ops_open => match op {
                    Some(op) => self.on_op(conn, op).await,
                    None => {
                        self.ops_open = false;
                        Ok(())
                    }
                },
                () = &mut timer => {
                    armed = None;
                    conn.wake = far();
                    self.on_timer(conn).await
                }
            };
            if let Err(end) = step {
                return end;
            }
            if std::mem::take(&mut self.stalled) {
                conn.last_rx = Instant::now();
            }
            if self.gone() {
                conn.close().await;
                return End::Closed;
            }
        }
    }

    async fn on_op(&mut self, conn: &mut Connection, op: Op) -> Result<(), End> {
        match op {
            Op::Subscribe {
                channel,
                options,
                reply,
            } => match self.channels.add(channel, options, reply) {
                Some(channel) => self.subscribe(conn, channel, false).await,
                None => Ok(()),
            },
            Op::Unsubscribe { channel, reply } => {
                if !self.channels.remove(&channel) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let body = command::Body::Unsubscribe(client::UnsubscribeRequest { channel });
                let pending = Pending::Unsubscribe { reply: Some(reply) };
                conn.request(pending, Instant::now() + self.cfg.command_timeout, body)
                    .await
            }
            Op::Request { body, reply, .. } => self.send_request(conn, body, reply).await,
            Op::Position { channel, reply } => {
                let _ = reply.send(self.channels.position(&channel));
                Ok(())
            }
        }
    }

    /// Checks everything with a deadline, and sets the next wake-up.
    async fn on_timer(&mut self, conn: &mut Connection) -> Result<(), End> {
        let now = Instant::now();
        conn.check_liveness(now)?;
        match conn.in_flight.check(now, self.cfg.command_timeout) {
            Deadlines::Missed(id) => {
                return Err(conn.lost(None, format!("no reply to command {id} in time")));
            }
            Deadlines::Next(at) => conn.wake_by(at),
            Deadlines::Clear => {}
        }
        let retries = self.channels.retries(now);
        if let Some(at) = retries.next {
            conn.wake_by(at);
        }
        for channel in retries.due {
            self.subscribe(conn, channel, true).await?;
        }
        Ok(())
    }

    async fn on_frame(
        &mut self,
        conn: &mut Connection,
        frame: client::ServerFrame,
    ) -> Result<(), End> {
        match frame.frame {
            Some(server_frame::Frame::Push(p)) => match p.body {
                Some(push::Body::Disconnect(d)) => {
                    conn.announced(d);
                    Ok(())
                }
                Some(push::Body::Subscribe(s)) => self.on_server_subscribed(conn, s).await,
                Some(push::Body::Unsubscribe(u)) => {
                    if self.channels.server_unsubscribed(&u.channel) {
                        self.emit(Event::ServerUnsubscribed {
                            channel: u.channel,
                            reason: u.reason,
                        })
                        .await;
                    }
                    Ok(())
                }
                Some(body) => self.on_channel_push(conn, body).await,
                None => Ok(()),
            },
            Some(server_frame::Frame::Reply(r)) => self.on_reply(conn, r).await,
            None => Ok(()),
        }
    }

    async fn on_reply(&mut self, conn: &mut Connection, r: client::Reply) -> Result<(), End> {
        let Some(pending) = conn.in_flight.answered(r.id) else {
            tracing::debug!(id = r.id, "reply to no pending command");
            return Ok(());
        };
        match pending {
            Pending::Connect => self.on_connected(conn, r).await,
            Pending::Restored => {
                for channel in self.channels.unrestored() {
                    self.emit(Event::ServerUnsubscribed {
                        channel,
                        reason: "not restored after a reconnect".into(),
                    })
                    .await;
                }
                Ok(())
            }
            Pending::Subscribe { channel } => self.on_subscribed(conn, channel, r).await,
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
                    let at = Position::new(p.offset, p.epoch.clone());
                    self.channels.own_publication(&channel, at);
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

    /// `connect` answered: the session starts, every channel is resubscribed and the
    /// deferred requests go out.
    async fn on_connected(&mut self, conn: &mut Connection, r: client::Reply) -> Result<(), End> {
        if let Some(e) = r.error {
            return Err(End::Lost {
                code: None,
                reason: format!("connect refused: {} {}", e.code, e.message),
                reconnect: !connect_fatal(e.code),
            });
        }
        let Some(reply::Result::Connect(c)) = r.result else {
            return Err(conn.lost(None, "connect reply without a result".into()));
        };
        let ping_interval = Duration::from_secs(c.ping_interval.into());
        conn.connected(ping_interval, self.cfg.ping_margin);
        self.attempt = 0;
        Counters::add(&self.counters.connects);
        tracing::debug!(client = %c.client, node = %c.node, "connected");
        self.emit(Event::Connected {
            client: c.client,
            node: c.node,
            ping_interval,
        })
        .await;
        for channel in self.channels.names() {
            self.subscribe(conn, channel, false).await?;
        }
        if self.channels.awaiting_server() {
            let deadline = Instant::now() + self.cfg.command_timeout;
            let ping = command::Body::Ping(client::PingRequest {});
            conn.request(Pending::Restored, deadline, ping).await?;
        }
        while let Some(r) = self.deferred.pop() {
            self.send_request(conn, r.body, r.reply).await?;
        }
        Ok(())
    }

    async fn send_request(
        &self,
        conn: &mut Connection,
        body: command::Body,
        reply: Reply<reply::Result>,
    ) -> Result<(), End> {
        let own = match &body {
            command::Body::Publish(p) if !p.echo => Some(p.channel.clone()),
            _ => None,
        };
        let deadline = Instant::now() + self.cfg.command_timeout;
        conn.request(Pending::Request { reply, own }, deadline, body)
            .await
    }

    /// Subscribes `channel`, recovering from its last position when it has one. With
    /// `again`, unsubscribes first (the gateway may still hold the old subscription).
    async fn subscribe(
        &mut self,
        conn: &mut Connection,
        channel: String,
        again: bool,
    ) -> Result<(), End> {
        let deadline = Instant::now() + self.cfg.command_timeout;
        if again {
            let body = command::Body::Unsubscribe(client::UnsubscribeRequest {
                channel: channel.clone(),
            });
            conn.request(Pending::Unsubscribe { reply: None }, deadline, body)
                .await?;
        }
        if !self.channels.contains(&channel) {
            return Ok(());
        }
        let id = conn.in_flight.next_id();
        let Some(request) = self.channels.subscribing(&channel, id) else {
            return Ok(());
        };
        conn.expect(id, Pending::Subscribe { channel }, deadline);
        conn.send(id, command::Body::Subscribe(request)).await
    }

    /// A subscribe answered: the channel is live (its recovered publications, then those
    /// held meanwhile, follow the `Subscribed` event), retrying, or refused for good.
    async fn on_subscribed(
        &mut self,
        conn: &mut Connection,
        channel: String,
        r: client::Reply,
    ) -> Result<(), End> {
        let live = match self.channels.subscribed(&channel, r, &self.cfg.backoff) {
            SubscribeOutcome::Stale => return Ok(()),
            SubscribeOutcome::Malformed => {
                return Err(conn.lost(None, "subscribe reply without a result".into()));
            }
            SubscribeOutcome::Refused { error, retry_at } => {
                if let Some(at) = retry_at {
                    conn.wake_by(at);
                }
                let retrying = retry_at.is_some();
                tracing::debug!(%channel, code = error.code, message = %error.message, retrying, "subscribe refused");
                self.emit(Event::SubscribeFailed {
                    channel,
                    code: error.code,
                    message: error.message,
                    retrying,
                })
                .await;
                return Ok(());
            }
            SubscribeOutcome::Live(live) => live,
        };
        if live.recovered == Some(false) {
            Counters::add(&self.counters.unrecovered);
            tracing::info!(%channel, from = ?live.from, to = %live.position, "publications could not be recovered");
        }
        self.emit(Event::Subscribed {
            channel,
            position: live.position,
            recovered: live.recovered,
            from: live.from,
        })
        .await;
        for p in live.recovered_publications {
            self.on_publication(conn, p).await?;
        }
        for body in live.held {
            self.on_channel_push(conn, body).await?;
        }
        Ok(())
    }

    /// A push about one subscribed channel: a publication, a join or a leave.
    async fn on_channel_push(
        &mut self,
        conn: &mut Connection,
        body: push::Body,
    ) -> Result<(), End> {
        let channel = match body {
            push::Body::Publication(p) => return self.on_publication(conn, p).await,
            push::Body::Join(ref j) => j.channel.clone(),
            push::Body::Leave(ref l) => l.channel.clone(),
            _ => return Ok(()),
        };
        let event = match self.channels.presence_event(&channel, body) {
            Some(push::Body::Join(j)) => Event::Join {
                channel: j.channel,
                info: j.info.unwrap_or_default(),
            },
            Some(push::Body::Leave(l)) => Event::Leave {
                channel: l.channel,
                info: l.info.unwrap_or_default(),
            },
            _ => return Ok(()),
        };
        self.emit(event).await;
        Ok(())
    }

    /// The server subscribed this connection to a channel: the application is told, then
    /// the publications the push recovered follow, then the live ones.
    async fn on_server_subscribed(
        &mut self,
        conn: &mut Connection,
        s: client::Subscribed,
    ) -> Result<(), End> {
        let channel = s.channel.clone();
        let Some(live) = self.channels.adopt(s) else {
            tracing::debug!(%channel, "subscribe push for a channel already subscribed");
            return Ok(());
        };
        if live.recovered == Some(false) {
            Counters::add(&self.counters.unrecovered);
            tracing::info!(%channel, from = ?live.from, to = %live.position, "server-side subscription restored without what it missed");
        }
        self.emit(Event::ServerSubscribed {
            channel,
            position: live.position,
            recovered: live.recovered,
            from: live.from,
        })
        .await;
        for p in live.recovered_publications {
            self.on_publication(conn, p).await?;
        }
        Ok(())
    }

    /// A publication of a channel: delivered if it is the next one, dropped if already
    /// delivered, a recovery if offsets were skipped.
    async fn on_publication(
        &mut self,
        conn: &mut Connection,
        p: client::Publication,
    ) -> Result<(), End> {
        match self.channels.arrived(p) {
            Arrival::Deliver(p) => {
                Counters::add(&self.counters.publications);
                self.emit(Event::Publication(p)).await;
                Ok(())
            }
            Arrival::Duplicate(p) => {
                Counters::add(&self.counters.duplicates);
                tracing::trace!(channel = %p.channel, offset = p.offset, "duplicate dropped");
                Ok(())
            }
            Arrival::Gap {
                publication: p,
                last,
            } => {
                Counters::add(&self.counters.gaps);
                tracing::info!(channel = %p.channel, last = %last, offset = p.offset, epoch = %p.epoch, "gap; recovering");
                let channel = p.channel;
                self.emit(Event::Gap {
                    channel: channel.clone(),
                    position: last,
                    received: Position::new(p.offset, p.epoch),
                })
                .await;
                self.subscribe(conn, channel, true).await
            }
            Arrival::Kept => Ok(()),
        }
    }
}
