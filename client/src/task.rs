//! The background task that runs a client: one per [`Client`](crate::Client), owning its
//! connection, its channels and everything waiting for a reply.
//!
//! The task's life is a loop over connections: open a WebSocket to the next gateway URL,
//! send `connect`, run the session until the connection ends, then wait a [`Backoff`]
//! delay and start again — until the application closes the client, drops every handle and
//! the event stream, or the gateway says not to come back. A failed attempt and a lost
//! connection are treated alike, except that only a connection that had succeeded emits
//! `Disconnected` (a failed attempt emits `ConnectFailed`).
//!
//! **One task, no locks.** The handle sends [`Op`]s over a channel; the task owns all state,
//! so it needs no locks and a client costs one task. While connected, the
//! [`session`](crate::session) serves the socket, the handle and the timers. While
//! disconnected the task still serves the handle: subscribes and unsubscribes change what the
//! next connection restores, requests wait for it ([`Deferred`]) up to the command timeout.
//!
//! **Backpressure.** Events go out on a bounded queue; when it is full the task waits for
//! room ([`Task::emit`]), and meanwhile reads nothing from its socket, so a slow application
//! slows its gateway connection down instead of growing memory. Time spent so does not count
//! as gateway silence.
//!
//! The details live next door: [`session`](crate::session) (one connection's events),
//! [`connection`](crate::connection) (the socket, liveness, endpoints),
//! [`pending`](crate::pending) (commands awaiting replies) and
//! [`channels`](crate::channels) (subscriptions, positions, recovery).
//!
//! [`Backoff`]: crate::Backoff

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::channels::Channels;
use crate::client::{ClientBuilder, Op};
use crate::connection::{Connection, End, Endpoints};
use crate::event::{Counters, Event};
use crate::pending::{Deferred, DeferredRequest};

pub(crate) struct Task {
    pub(crate) cfg: ClientBuilder,
    pub(crate) ops: mpsc::Receiver<Op>,
    /// False once every handle is dropped.
    pub(crate) ops_open: bool,
    pub(crate) events: mpsc::Sender<Event>,
    /// Set when an event had to wait for room: the task was not reading meanwhile.
    pub(crate) stalled: bool,
    pub(crate) cancel: CancellationToken,
    pub(crate) counters: Arc<Counters>,
    pub(crate) channels: Channels,
    /// Requests issued while disconnected, sent on the next connection.
    pub(crate) deferred: Deferred,
    /// Failed connection attempts since the last successful `connect`.
    pub(crate) attempt: u32,
    endpoints: Endpoints,
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
            channels: Channels::default(),
            deferred: Deferred::default(),
            attempt: 0,
            endpoints: Endpoints::default(),
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
            let url = self.endpoints.url(&self.cfg);
            let opened = tokio::select! {
                _ = self.cancel.cancelled() => break,
                r = tokio::time::timeout(self.cfg.connect_timeout, Connection::open(&self.cfg, url)) => r,
            };
            let mut conn = match opened {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    self.endpoints.rotate(&self.cfg);
                    delay = Some(self.connect_failed(e.to_string()).await);
                    continue;
                }
                Err(_) => {
                    self.endpoints.rotate(&self.cfg);
                    let error = format!("no WebSocket within {:?}", self.cfg.connect_timeout);
                    delay = Some(self.connect_failed(error).await);
                    continue;
                }
            };
            let end = self.session(&mut conn).await;
            conn.in_flight.connection_lost();
            self.channels.connection_lost();
            self.endpoints.rotate(&self.cfg);
            was_connected = conn.connected;
            match end {
                End::Closed => break,
                End::Lost {
                    code,
                    reason,
                    reconnect,
                } if conn.connected => {
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
    pub(crate) fn gone(&self) -> bool {
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
        self.deferred.close();
        self.channels.close();
        self.ops.close();
        if let Some(event) = last {
            let _ = self.events.try_send(event);
        }
    }

    /// Waits out a backoff delay while serving the handle. False: the client is closed.
    async fn offline(&mut self, until: Instant) -> bool {
        loop {
            if self.gone() {
                return false;
            }
            let wake = self.deferred.wake(until);
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                op = self.ops.recv(), if self.ops_open => match op {
                    Some(op) => self.on_op_offline(op),
                    None => self.ops_open = false,
                },
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    self.deferred.expire(now, self.cfg.command_timeout);
                    if now >= until {
                        return true;
                    }
                }
            }
        }
    }

    fn on_op_offline(&mut self, op: Op) {
        match op {
            Op::Subscribe {
                channel,
                options,
                reply,
            } => {
                self.channels.add(channel, options, reply);
            }
            Op::Unsubscribe { channel, reply } => {
                self.channels.remove(&channel);
                let _ = reply.send(Ok(()));
            }
            Op::Request {
                body,
                deadline,
                reply,
            } => self.deferred.push(DeferredRequest {
                body,
                deadline,
                reply,
            }),
            Op::Position { channel, reply } => {
                let _ = reply.send(self.channels.position(&channel));
            }
        }
    }

    /// Sends an event, waiting for room if the queue is full: this is the backpressure that
    /// stops the task reading its socket while the application does not read its events.
    pub(crate) async fn emit(&mut self, event: Event) {
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
}
