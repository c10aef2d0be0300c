//! What the client tells the application: events, positions, results.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use chorus_protocol::client::{ClientInfo, Publication};

/// A place in a channel's stream: the offset of a publication within an epoch.
///
/// `offset` 0 with an empty `epoch` is the position of a channel that was never published to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

impl Position {
    pub fn new(offset: u64, epoch: impl Into<String>) -> Self {
        Self {
            offset,
            epoch: epoch.into(),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.offset, self.epoch)
    }
}

/// Something that happened on the client's connection, in the order it happened.
///
/// For each channel: `Subscribed` (or `ServerSubscribed`), then its publications in offset
/// order, each exactly once, with `Join`/`Leave` in their place among them; after a reconnect,
/// `Subscribed` again (saying whether recovery worked), the recovered publications, then live
/// ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection is up and `connect` succeeded. Subscriptions are being restored.
    Connected {
        client: String,
        node: String,
        /// The gateway's WebSocket ping interval (zero: it does not ping).
        ping_interval: Duration,
    },
    /// The connection ended. `code` is the WebSocket close code (`None` when the connection
    /// failed without one, or the client gave up on a silent one). `reconnect` says whether
    /// the client will reconnect; `false` is final (closed by the application, or the gateway
    /// said not to come back) and the event stream ends after it.
    Disconnected {
        code: Option<u16>,
        reason: String,
        reconnect: bool,
    },
    /// A connection attempt failed (the gateway could not be reached, or refused `connect`).
    /// `retry_in` is the backoff before the next attempt; `None` means the client gave up
    /// (the token was refused) and the event stream ends.
    ConnectFailed {
        error: String,
        retry_in: Option<Duration>,
    },
    /// A subscription became live, first or again after a reconnect or a gap.
    ///
    /// `recovered` is `None` when the client had no position to recover from, `Some(true)`
    /// when every publication after `from` follows (as `Publication` events), and
    /// `Some(false)` when they could not be recovered: **publications after `from` were
    /// lost**, and the channel continues from `position`.
    Subscribed {
        channel: String,
        position: Position,
        recovered: Option<bool>,
        /// The position the client recovered from (its last delivered publication).
        from: Option<Position>,
    },
    /// The gateway refused a subscribe. With `retrying` the client tries again with backoff
    /// (the bus was unavailable); otherwise the subscription is dropped.
    SubscribeFailed {
        channel: String,
        code: u32,
        message: String,
        retrying: bool,
    },
    /// A publication, delivered exactly once and in offset order per channel.
    Publication(Publication),
    /// Another connection subscribed to `channel` (namespaces with `join_leave`, unless this
    /// subscription opted out). In order with the channel's publications.
    Join { channel: String, info: ClientInfo },
    /// A connection left `channel`: it unsubscribed, closed, or its gateway died. In order
    /// with the channel's publications: never before those it made earlier.
    Leave { channel: String, info: ClientInfo },
    /// The server subscribed this client to `channel` (the server API's `subscribe`, the
    /// token's `subs` claim, the user's personal channel). The channel's publications after
    /// `position` follow, exactly once and in order, as for a channel the client subscribed.
    ///
    /// After a reconnect, the gateway subscribes again the channels of the `subs` claim and
    /// the personal channel, recovering from the last position the client delivered (`from`),
    /// as for [`Event::Subscribed`]: `Some(true)` when every publication after `from` follows,
    /// `Some(false)` when they could not be recovered (**publications after `from` were
    /// lost**; the channel continues from `position`). `None` for a channel new to this
    /// client.
    ServerSubscribed {
        channel: String,
        position: Position,
        recovered: Option<bool>,
        from: Option<Position>,
    },
    /// The server unsubscribed this client from `channel` (the server API's `unsubscribe`), or
    /// a server-side subscription was not restored after a reconnect (one the server API
    /// made: only the `subs` claim and the personal channel come back). Nothing more of it
    /// follows.
    ServerUnsubscribed { channel: String, reason: String },
    /// A live publication skipped offsets (or came from another epoch). The client does not
    /// deliver it; it resubscribes with recovery from `position`, and the `Subscribed` event
    /// that follows fills the gap or says it could not.
    Gap {
        channel: String,
        /// The last delivered position.
        position: Position,
        /// The publication that revealed the gap.
        received: Position,
    },
}

/// The result of a subscribe: where the subscription started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeInfo {
    pub position: Position,
    /// As in [`Event::Subscribed`].
    pub recovered: Option<bool>,
}

/// How to subscribe: see [`Client::subscribe_with`](crate::Client::subscribe_with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Recover every publication after this position (as
    /// [`Client::subscribe_from`](crate::Client::subscribe_from)).
    pub from: Option<Position>,
    /// Receive [`Event::Join`] and [`Event::Leave`] where the channel's namespace announces
    /// them (the default); `false` opts this subscription out.
    pub join_leave: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            from: None,
            join_leave: true,
        }
    }
}

/// How many connections, and distinct users among them, are subscribed to a presence
/// channel across every gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceStats {
    pub clients: u32,
    pub users: u32,
}

/// A page of a channel's history.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub publications: Vec<Publication>,
    /// The channel's current position.
    pub position: Position,
}

/// What to read from a channel's history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Only publications after this position; without it, from the oldest kept (newest with
    /// `reverse`). A position from another epoch is refused with error 112.
    pub since: Option<Position>,
    /// At most this many; 0 means the gateway's maximum.
    pub limit: u32,
    /// Newest first.
    pub reverse: bool,
}

/// Counters of one client, readable at any time with [`Client::stats`](crate::Client::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Publications delivered as events.
    pub publications: u64,
    /// Publications dropped because their offset was already delivered.
    pub duplicates: u64,
    /// Gaps detected in live publications.
    pub gaps: u64,
    /// Successful `connect`s (the first one included).
    pub connects: u64,
    /// Subscribes whose recovery failed (publications lost).
    pub unrecovered: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub publications: AtomicU64,
    pub duplicates: AtomicU64,
    pub gaps: AtomicU64,
    pub connects: AtomicU64,
    pub unrecovered: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Stats {
        Stats {
            publications: self.publications.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            gaps: self.gaps.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            unrecovered: self.unrecovered.load(Ordering::Relaxed),
        }
    }
}
