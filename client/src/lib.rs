//! A Rust client for Chorus: connects to a gateway, subscribes to channels with positions,
//! and survives disconnects without losing or repeating a publication silently.
//!
//! ```no_run
//! # async fn run() -> Result<(), chorus_client::Error> {
//! use chorus_client::{Client, Event};
//!
//! let (client, mut events) = Client::builder("ws://127.0.0.1:8000/ws")
//!     .name("tail")
//!     .connect()?;
//! client.subscribe("news").await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Publication(p) => println!("{} #{}: {:?}", p.channel, p.offset, p.data),
//!         Event::Subscribed { channel, recovered: Some(false), from, .. } => {
//!             eprintln!("{channel}: publications after {from:?} were lost")
//!         }
//!         other => eprintln!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! [`ClientBuilder::connect`] spawns **one background task per client**, which owns the
//! WebSocket. The [`Client`] handle (cheap to clone) sends it requests over a channel; the
//! task answers them and reports everything else as [`Event`]s on a bounded queue. There are
//! no locks and no other tasks: thousands of clients in one process cost one task each.
//!
//! **Commands and replies.** Every command gets a fresh non-zero id on the current connection;
//! replies are matched by id, pushes carry none. A command unanswered within the command
//! timeout means the connection is dead: the task drops it and reconnects. Commands issued
//! while disconnected (publish, history, ping) wait for the next connection up to the command
//! timeout; a command in flight when the connection drops fails with
//! [`Error::Disconnected`] and is not resent (a publish may have been stored: the
//! application decides).
//!
//! **Positions.** The task keeps, per channel, the position (epoch, offset) of the last
//! publication it delivered. A publication is delivered only if it is the next one (offset
//! `last + 1` in the same epoch). An offset at or below the last is a duplicate: it is dropped
//! and counted ([`Stats::duplicates`]). A skipped offset or a new epoch on a live subscription
//! is a gap: the task reports [`Event::Gap`], does not deliver the publication, and
//! resubscribes with recovery from the last position, which either fills the gap or says it
//! cannot. Publications that arrive while a subscribe is in flight are held back and judged
//! after its reply, so `Subscribed` always comes before the channel's publications. The
//! client's own publications (sent without echo, so the gateway does not send them back) are
//! noted from the publish reply and skipped over, not taken for gaps.
//!
//! **Reconnecting.** On any loss of the connection — a network error, a close frame, a
//! `disconnect` push (the close code that follows is authoritative), a command without reply,
//! or silence longer than `2 × ping_interval + margin` (the gateway pings every
//! `ping_interval`; the WebSocket library answers with pongs) — the task emits
//! [`Event::Disconnected`], waits a [`Backoff`] delay (exponential, with jitter, so a drained
//! gateway's clients do not all return at once), reconnects, sends `connect` and resubscribes
//! every channel: with `recover: true` from its last position when it has one, from the
//! current position otherwise. Each resubscription emits [`Event::Subscribed`] with
//! `recovered`: `Some(true)` (the recovered publications follow as `Publication` events,
//! before any live one), `Some(false)` (publications after `from` are lost: the application is
//! told, and the channel continues from the new position), or `None` (nothing to recover
//! from). The client stops only when the application calls [`Client::close`], drops every
//! handle and the event stream, the gateway sends `disconnect` with `reconnect: false`, or it
//! refuses the token (error 101/103).
//!
//! **Presence and server-side subscriptions.** [`Client::presence`] and
//! [`Client::presence_stats`] ask the gateway (one round trip each). On channels whose
//! namespace announces joins and leaves, [`Event::Join`] and [`Event::Leave`] keep their place
//! among the channel's publications: held with them while a subscribe is in flight, dropped
//! while the channel is not subscribed; [`SubscribeOptions::join_leave`] opts one subscription
//! out. A channel the server subscribes the connection to (the server API, the token's `subs`
//! claim, the personal channel) is adopted as live at the position the push gives
//! ([`Event::ServerSubscribed`]) and then follows the same rules. After a reconnect the
//! client does not resubscribe it itself: `connect` carries the last delivered position of
//! each server-side channel, the gateway restores the claim's and the personal channels and
//! recovers them from there (the event says whether that worked, as for a subscribe); a ping
//! sent after the resubscribes finds those it did not restore (the gateway restores before it
//! answers), and [`Event::ServerUnsubscribed`] reports them.
//!
//! **Errors.** A subscribe refused with 108 Unavailable (the bus is down), 100 Internal or 105
//! AlreadySubscribed is retried with backoff ([`Event::SubscribeFailed`] with `retrying`);
//! other refusals (bad channel, permission, too many channels) are final and fail the
//! `subscribe` call.
//!
//! **Backpressure.** The event queue is bounded ([`ClientBuilder::event_capacity`]). When the
//! application does not read its events, the task waits for room, and while it waits it does
//! not read its socket: the gateway's queue for this connection fills and the gateway
//! eventually closes it as a slow consumer (close code 3002). The client then reconnects and
//! recovers what it missed — memory stays bounded on both sides, nothing is lost silently.
//! Time spent waiting for the application does not count as gateway silence. Because the
//! task also answers handle calls, do not await a handle method from the only task that
//! drains the events if the queue may be full (replies queue behind the unread
//! publications): read events in their own task.
//!
//! **Receive path.** Protobuf frames are decoded straight from the WebSocket message's
//! buffer, so publication data shares it (no copy); JSON frames go through
//! `chorus_protocol::wire::decode_frame`. Positions are updated in place (an epoch string is
//! allocated only when it changes). Per connection the task holds one read buffer
//! ([`ClientBuilder::read_buffer_size`], 16 KiB by default).
//!
//! **Formats.** JSON (text frames, the default) or protobuf (binary frames, asked for with the
//! `chorus-protobuf` subprotocol) — see [`ClientBuilder::format`]. On JSON connections,
//! published data must be JSON text ([`Error::NotJson`] otherwise), and received
//! publications carry the JSON text of `data` (or the decoded bytes of `b64data`).

mod backoff;
mod channels;
mod client;
mod connection;
mod error;
mod event;
mod pending;
mod session;
mod task;
mod track;

pub use backoff::Backoff;
pub use chorus_protocol::wire::Format;
pub use client::{Client, ClientBuilder, Events};
pub use error::Error;
pub use event::{
    ClientInfo, Event, History, HistoryOptions, Position, PresenceStats, Publication, Stats,
    SubscribeInfo, SubscribeOptions,
};
