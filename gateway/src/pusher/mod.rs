//! The Pusher protocol (version 7) at `/app/{key}`: pusher-js, Laravel Echo and every other
//! Pusher client connect to a gateway unmodified.
//!
//! A Pusher connection is a connection like any other underneath: one bounded queue, one
//! writer, subscriptions in the hub, so it gets the same ordering, fan-out, slow-consumer and
//! drain behaviour as Chorus's own protocol. What differs is at the edges. The hub encodes
//! publications for it in [`Format::Pusher`] (once per publication per gateway, shared by
//! every Pusher subscriber), and this session reads Pusher messages instead of Chorus
//! commands: `pusher:subscribe` / `pusher:unsubscribe` (`subscribe.rs`), `pusher:ping`,
//! `pusher:signin`, and client events (`client-*`), which it publishes on the channel
//! excluding its own connection.
//!
//! An app's channels live in its namespace (`pusher-<id>:<name>`, see
//! `chorus_bus::pusher`); its connection's Chorus client id is its `socket_id`, so
//! publications that name a `socket_id` to exclude (the HTTP API's, client events) skip it.
//! Errors are `pusher:error` messages, and closes use Pusher's codes (4001 unknown app, 4004
//! over quota, 4007 unsupported protocol, 4009 disconnected by the app, 4100 slow consumer,
//! 4200 reconnect, 4201 idle), which tell pusher-js whether and when to reconnect.

mod messages;
mod subscribe;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chorus_bus::pusher::{App, ChannelKind, Event, WebhookEvent};
use chorus_bus::{ConnectionInfo, Publish, now_ms};
use chorus_protocol::codes::close;
use chorus_protocol::pusher as wire;
use chorus_protocol::wire::Format;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::conn::{Conn, Outgoing};
use crate::limits::{RateLimiter, Verdict};
use crate::message_reader::MessageReader;
use crate::node::Node;
use crate::read_loop;
use crate::session::{WriterTask, bounded};
use crate::sessions::{Control, ControlQueue};

/// What pusher-js is told to wait, without a message, before it pings (seconds).
const ACTIVITY_TIMEOUT_SECS: u64 = 120;

/// The node's Pusher state: socket ids and each app's connection count.
pub(crate) struct PusherNode {
    /// The first half of this node's socket ids, random per node.
    prefix: u32,
    next: AtomicU64,
    per_app: Mutex<HashMap<String, u32>>,
}

impl Default for PusherNode {
    fn default() -> Self {
        Self {
            prefix: rand::random::<u32>() % 1_000_000_000,
            next: AtomicU64::new(1),
            per_app: Mutex::default(),
        }
    }
}

impl PusherNode {
    /// A socket id, `\d+\.\d+`, unique in the cluster (random per node, counted within it).
    fn socket_id(&self) -> String {
        format!(
            "{}.{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Counts a connection of `app`, within its `max_connections` on this node.
    fn admit(self: &Arc<Self>, app: &App) -> Option<AppSlot> {
        let mut per_app = self.per_app.lock();
        let n = per_app.entry(app.id.clone()).or_default();
        if *n >= app.max_connections {
            return None;
        }
        *n += 1;
        Some(AppSlot {
            node: self.clone(),
            app: app.id.clone(),
        })
    }
}

/// One connection counted against its app; released when dropped.
struct AppSlot {
    node: Arc<PusherNode>,
    app: String,
}

impl Drop for AppSlot {
    fn drop(&mut self) {
        let mut per_app = self.node.per_app.lock();
        if let Some(n) = per_app.get_mut(&self.app) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_app.remove(&self.app);
            }
        }
    }
}

/// How a Pusher upgrade starts: its app, or why it is refused (sent after the upgrade, as
/// the protocol does, so the client learns why).
pub(crate) enum Start {
    App(Arc<App>),
    Refuse {
        code: u16,
        message: &'static str,
        reason: &'static str,
    },
}

impl Start {
    /// Reads `/app/{key}?protocol=7…`.
    pub(crate) fn of(node: &Node, path: &str, query: Option<&str>) -> Self {
        let key = path.strip_prefix("/app/").unwrap_or_default();
        let Some(app) = node.bus.pusher_apps().by_key(key) else {
            return Start::Refuse {
                code: 4001,
                message: "Application does not exist",
                reason: "unknown_app",
            };
        };
        let protocol = query
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("protocol="))
            .and_then(|v| v.parse::<u32>().ok());
        if protocol.is_none_or(|p| p < 7) {
            return Start::Refuse {
                code: 4007,
                message: "Unsupported protocol version: use protocol=7",
                reason: "protocol",
            };
        }
        Start::App(app.clone())
    }
}

/// Counts an open Pusher connection for as long as it lives.
struct Counted;

impl Counted {
    fn new() -> Self {
        crate::metrics::pusher_connections(1);
        Self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        crate::metrics::pusher_connections(-1);
    }
}

/// Runs a Pusher connection from the completed upgrade to the end.
pub(crate) async fn run(
    node: Arc<Node>,
    socket: TcpStream,
    already: Bytes,
    start: Start,
    deflate: Option<crate::deflate::Deflate>,
) {
    let _counted = node.track_connection();
    let _pusher = Counted::new();
    let config = &node.config;
    let (conn, queue) = Conn::with_deflate(
        node.pusher.socket_id(),
        Format::Pusher,
        deflate,
        config.queue_max_frames,
        config.queue_max_bytes,
    );
    let (read, write) = socket.into_split();
    let writer = WriterTask::spawn(write, conn.clone(), queue, config.ping_interval);
    let app = match start {
        Start::App(app) => app,
        Start::Refuse {
            code,
            message,
            reason,
        } => {
            crate::metrics::pusher_refused(reason);
            refuse(&conn, code, message);
            writer.finish(&conn).await;
            return;
        }
    };
    let Some(_slot) = node.pusher.admit(&app) else {
        crate::metrics::pusher_refused("over_quota");
        refuse(&conn, 4004, "Over connection quota");
        writer.finish(&conn).await;
        return;
    };
    let established = serde_json::json!({
        "socket_id": conn.client,
        "activity_timeout": ACTIVITY_TIMEOUT_SECS,
    })
    .to_string();
    conn.send(Outgoing::Data(wire::message(
        "pusher:connection_established",
        None,
        &established,
        None,
    )));
    let mut reader = MessageReader::new(config.max_message_size, already, deflate.is_some());
    let mut session = PusherSession::new(&node, &conn, app);
    let span = tracing::debug_span!("pusher", socket_id = %conn.client, app = %session.app.id);
    read_loop::run(&mut session, &mut reader, &read)
        .instrument(span)
        .await;
    drop(session);
    writer.finish(&conn).await;
}

/// Sends `pusher:error` with `code` and closes with it.
fn refuse(conn: &Conn, code: u16, message: &str) {
    conn.send(Outgoing::Data(wire::error(Some(code), message)));
    conn.close(code, message);
}

impl read_loop::Session for PusherSession {
    const SHUTDOWN_REASON: &'static str = "gateway shutting down: reconnect";
    const IDLE_REASON: &'static str = "Pong reply not received";

    fn node(&self) -> &Arc<Node> {
        &self.node
    }

    fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    fn control_queue(&self) -> &Arc<ControlQueue> {
        &self.control
    }

    async fn on_control(&mut self, control: Control) -> bool {
        self.apply_control(control)
    }

    async fn on_message(&mut self, text: bool, payload: &[u8]) {
        // Boxed, like Chorus's commands: only a running message's future takes memory, not
        // every idle connection's task.
        Box::pin(self.take_message(text, payload)).await
    }
}

struct PusherSession {
    node: Arc<Node>,
    conn: Arc<Conn>,
    app: Arc<App>,
    /// Subscribed channels: Pusher name → Chorus channel.
    channels: HashMap<String, String>,
    /// Chorus channels where this connection has a presence entry, with its user id.
    presence: HashMap<String, String>,
    /// The signed-in user's id.
    user: Option<String>,
    /// The control user this connection is registered under (once signed in).
    registered: Option<String>,
    /// Server commands for this connection, registered once signed in.
    control: Arc<ControlQueue>,
    /// Every message, like Chorus's command rate.
    rate: RateLimiter,
    /// Client events, at the app's `client_event_rate` per second.
    client_events: RateLimiter,
}

impl PusherSession {
    fn new(node: &Arc<Node>, conn: &Arc<Conn>, app: Arc<App>) -> Self {
        node.link.connection_opened(ConnectionInfo {
            client: conn.client.clone(),
            user: String::new(),
            connected_at_ms: now_ms(),
        });
        let config = &node.config;
        Self {
            node: node.clone(),
            conn: conn.clone(),
            channels: HashMap::new(),
            presence: HashMap::new(),
            user: None,
            registered: None,
            control: Arc::default(),
            rate: RateLimiter::new(config.command_rate, config.command_burst),
            client_events: RateLimiter::new(app.client_event_rate, app.client_event_rate),
            app,
        }
    }

    /// A server command for this connection; false when it ends the session.
    fn apply_control(&mut self, control: Control) -> bool {
        match control {
            Control::Disconnect {
                reason, reconnect, ..
            } => {
                // Pusher's codes: 4009 "disconnected by the app" (pusher-js stays away),
                // 4200 reconnect now.
                let code = if reconnect { 4200 } else { 4009 };
                refuse(&self.conn, code, &reason);
                false
            }
            // Server-side subscriptions are Chorus's; a Pusher client could not tell.
            Control::Subscribe(_) | Control::Unsubscribe(_) => true,
        }
    }

    async fn take_message(&mut self, text: bool, payload: &[u8]) {
        match self.rate.check() {
            Verdict::Allow => {}
            Verdict::Refuse => {
                self.error(None, "Too many messages: slow down");
                return;
            }
            Verdict::Close => {
                self.conn
                    .close(close::RATE_LIMITED, "too many messages after errors");
                return;
            }
        }
        if !text {
            self.error(None, "Pusher messages are JSON in text frames");
            return;
        }
        let incoming: messages::Incoming<'_> = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                self.error(None, &format!("Invalid message: {e}"));
                return;
            }
        };
        let data = incoming.data.map(|d| d.get()).unwrap_or("{}");
        match incoming.event.as_ref() {
            "pusher:ping" => self.send(wire::message("pusher:pong", None, "{}", None)),
            "pusher:pong" => {}
            "pusher:subscribe" => match serde_json::from_str::<messages::Subscribe>(data) {
                Ok(req) => self.subscribe(req).await,
                Err(e) => self.error(None, &format!("Invalid pusher:subscribe: {e}")),
            },
            "pusher:unsubscribe" => match serde_json::from_str::<messages::Unsubscribe>(data) {
                Ok(req) => self.unsubscribe(&req.channel).await,
                Err(e) => self.error(None, &format!("Invalid pusher:unsubscribe: {e}")),
            },
            "pusher:signin" => match serde_json::from_str::<messages::Signin>(data) {
                Ok(req) => self.signin(req),
                Err(e) => self.error(None, &format!("Invalid pusher:signin: {e}")),
            },
            event if event.starts_with("client-") => {
                let channel = incoming.channel.as_deref().unwrap_or_default().to_owned();
                let data = messages::event_data(incoming.data);
                self.client_event(event.to_owned(), channel, data).await;
            }
            other => self.error(None, &format!("Unsupported event {other:?}")),
        }
    }

    /// `pusher:signin`: checks the signature over `socket_id::user::user_data`, then the
    /// connection may subscribe to its user's server-to-user channel and is reached by the
    /// app's user-level commands.
    fn signin(&mut self, req: messages::Signin) {
        if !self.app.user_authentication {
            self.error(None, "User authentication is not enabled for this app");
            return;
        }
        let signed = format!("{}::user::{}", self.conn.client, req.user_data);
        let checked = (req.user_data.len() <= messages::MAX_USER_DATA)
            .then_some(())
            .ok_or_else(|| "user_data is too large".to_owned())
            .and_then(|()| messages::check_auth(&self.app, Some(&req.auth), &signed))
            .and_then(|()| messages::user_id_of(&req.user_data));
        let id = match checked {
            Ok(id) => id,
            Err(e) => {
                crate::metrics::pusher_refused("auth");
                self.error(Some(4009), &format!("Sign-in refused: {e}"));
                return;
            }
        };
        if self.user.as_ref().is_some_and(|u| *u != id) {
            self.error(None, "Already signed in as another user");
            return;
        }
        if self.registered.is_none() {
            let control_user = self.app.control_user(&id);
            let queue = self.control.clone();
            self.node
                .sessions
                .register(&control_user, &self.conn.client, queue);
            self.registered = Some(control_user);
        }
        self.user = Some(id);
        let data = serde_json::json!({ "user_data": req.user_data }).to_string();
        self.send(wire::message("pusher:signin_success", None, &data, None));
    }

    /// A client event: on a private or presence channel this connection is subscribed to,
    /// when the app allows them, within the rate and size limits; published to the channel's
    /// other subscribers (not the sender).
    async fn client_event(&mut self, event: String, channel: String, data: String) {
        let refused = if !self.app.client_events {
            Some("Client events are not enabled for this app".to_owned())
        } else if !ChannelKind::of(&channel).takes_client_events() {
            Some("Client events are only allowed on private and presence channels".to_owned())
        } else if !self.channels.contains_key(&channel) {
            Some(format!("Not subscribed to {channel}"))
        } else if data.len() > self.app.max_event_bytes {
            Some(format!(
                "Client event data is larger than {} bytes",
                self.app.max_event_bytes
            ))
        } else if self.client_events.check() != Verdict::Allow {
            crate::metrics::pusher_refused("client_event");
            self.error(
                Some(4301),
                &format!(
                    "Client event rejected: at most {} per second",
                    self.app.client_event_rate
                ),
            );
            return;
        } else {
            None
        };
        if let Some(message) = refused {
            crate::metrics::pusher_refused("client_event");
            self.error(None, &message);
            return;
        }
        let Some(chorus) = self.channels.get(&channel).cloned() else {
            return;
        };
        let user_id = self.presence.get(&chorus).cloned();
        let publish = Publish {
            channel: chorus,
            data: Event {
                event: event.clone(),
                data: data.clone(),
                user_id: user_id.clone(),
            }
            .to_bytes(),
            exclude_client: self.conn.client.clone(),
            idempotency_key: None,
        };
        let node = &self.node;
        match bounded(node.bus_timeout, node.bus.publish(publish)).await {
            Ok(_) => {
                crate::metrics::pusher_client_event();
                node.bus.pusher_webhook(
                    &self.app,
                    WebhookEvent::ClientEvent {
                        channel,
                        event,
                        data,
                        socket_id: self.conn.client.clone(),
                        user_id,
                    },
                );
            }
            Err(e) => self.error(None, &format!("Client event not sent: {e}")),
        }
    }

    fn send(&self, message: Bytes) {
        self.conn.send(Outgoing::Data(message));
    }

    fn error(&self, code: Option<u16>, message: &str) {
        self.send(wire::error(code, message));
    }
}

/// Teardown in `Drop`, as for Chorus's sessions: whatever ends the session, the connection
/// leaves the hub, presence and the registry.
impl Drop for PusherSession {
    fn drop(&mut self) {
        for (_, ch) in self.channels.drain() {
            self.node.hub.unsubscribe(&self.node.link, &ch, &self.conn);
        }
        for (ch, _) in self.presence.drain() {
            self.node.link.left(&ch, &self.conn.client);
        }
        if let Some(user) = self.registered.take() {
            self.node.sessions.unregister(&user, &self.conn.client);
        }
        self.node.link.connection_closed(&self.conn.client);
        self.conn.abandon();
    }
}

/// The channels a signed-in user may read besides public and signed ones: their own.
fn own_user_channel(user: Option<&str>, name: &str) -> bool {
    user.is_some_and(|u| name.strip_prefix(chorus_bus::pusher::USER_CHANNEL_PREFIX) == Some(u))
}
