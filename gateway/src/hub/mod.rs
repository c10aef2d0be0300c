//! The hub: which local connections are subscribed to which channel, and the fan-out of each
//! publication to them, gapless and in order.
//!
//! The hub is the node's [`BusSink`]: the bus hands it each envelope once, already decoded,
//! and the hub passes it to its channel (`channel.rs`), whose sequencer (`sequencer.rs`)
//! decides whether it is the next one to deliver. Channels are kept in shards by channel hash
//! so that fan-out on one channel and subscribes on another do not contend; no lock is ever
//! held across an `.await` (queues are fed without waiting).
//!
//! **Catching up.** A channel that finds a gap, or whose bus subscription was renewed after
//! the link broke, stops delivering and asks the node's catch-up task (`catch_up.rs`) to read
//! the gap from history ([`Hub::catch_up_targets`] → [`Hub::finish_catch_up`]); each request
//! carries the channel's generation, and a read whose generation has passed is ignored. A gap
//! history cannot fill, a new epoch, or a backlog the node cannot afford, cannot be hidden:
//! the channel's subscribers are disconnected with `INSUFFICIENT_STATE` and recover (or learn
//! they cannot) by subscribing with their positions.
//!
//! **Subscribing without a seam.** [`Hub::hold`] adds a subscriber *held*: publications for it
//! are kept aside while its session waits for the bus to confirm the channel and reads the
//! position (or the history after the client's position). [`Hub::activate`] then, under the
//! shard lock, queues the subscribe reply, then the held publications newer than the reply's
//! offset, and makes the subscriber live; later ones at or below that offset are skipped. So a
//! client sees the reply, then offset + 1, offset + 2, … with no gap and no duplicate. A plain
//! subscribe to a channel that is already live here skips all that ([`Hub::subscribe_live`]).
//!
//! The hub also reference-counts channels for the bus: the first local subscriber of a channel
//! makes the node want it, and the last one leaving makes it unwant it. Both happen under the
//! shard lock, so the bus sees the transitions in order. It keeps its channel and subscription
//! counts as live counters, so a metrics scrape never walks the shards.

mod channel;
mod members;
mod sequencer;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use chorus_bus::{BusSink, ChannelReady, Envelope, NodeLink, Position, Recovery};
use parking_lot::Mutex;

use crate::catch_up::CatchUpQueue;
use crate::conn::{Conn, Outgoing};
use channel::{Channel, Sub, covers};
pub(crate) use members::MemberView;
use sequencer::{BacklogBudget, Sequencer, State};

const SHARDS: usize = 64;

pub(crate) struct Hub {
    shards: Box<[Mutex<HashMap<String, Channel>>]>,
    hasher: RandomState,
    catch_up: CatchUpQueue,
    /// The node-wide bound on catch-up backlogs.
    backlog: Arc<BacklogBudget>,
    channels: AtomicUsize,
    subscriptions: AtomicUsize,
    /// Smallest publication frame compressed for permessage-deflate subscribers.
    pub(crate) compress_min: usize,
}

/// Why a held subscriber could not be activated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ActivateError {
    /// It was unsubscribed (or its connection ended) meanwhile.
    Gone,
    /// The position read for it is of another epoch than the channel's live stream.
    EpochChanged,
    /// The channel has delivered past the position read for it, and what lies between is not
    /// all in its held publications (this node never received some of it: they reached the
    /// channel's first subscriber through history). Its position must be read again.
    Behind,
}

/// A channel waiting for a catch-up read: where to read from, and the generation the read
/// belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatchUpTarget {
    pub(crate) channel: String,
    pub(crate) since: Position,
    pub(crate) generation: u64,
}

impl Hub {
    /// A hub whose channels together keep at most `max_backlog_bytes` while catching up.
    pub(crate) fn new(max_backlog_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            catch_up: CatchUpQueue::default(),
            backlog: BacklogBudget::new(max_backlog_bytes),
            channels: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            compress_min: usize::MAX,
        }
    }

    /// The same hub compressing publication frames of at least `min` bytes for subscribers
    /// that negotiated permessage-deflate.
    pub(crate) fn compressing_from(mut self, min: usize) -> Self {
        self.compress_min = min;
        self
    }

    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, Channel>> {
        let i = self.hasher.hash_one(channel) as usize % SHARDS;
        &self.shards[i]
    }

    /// Adds `conn` to `channel`'s subscribers, *held* until [`Hub::activate`]; returns when the
    /// bus will confirm the channel.
    pub(crate) fn hold(
        &self,
        link: &NodeLink,
        channel: &str,
        conn: &Arc<Conn>,
        join_leave: bool,
    ) -> ChannelReady {
        let mut shard = self.shard(channel).lock();
        let ch = shard.entry(channel.to_owned()).or_insert_with(|| {
            self.channels_changed(1);
            Channel::new(channel, Sequencer::new(self.backlog.clone()))
        });
        if ch.add(Sub::held(conn, join_leave)) {
            self.subscriptions_added(1);
        }
        // `want` is idempotent: later subscribers wait on the same confirmation. Called under
        // the shard lock, so the bus sees want and unwant in order.
        link.want(channel)
    }

    /// [`Hub::hold`] for a Pusher presence subscriber: joins and leaves that arrive while it
    /// is held are kept for its member view ([`Hub::activate_presence`]).
    pub(crate) fn hold_presence(
        &self,
        link: &NodeLink,
        channel: &str,
        conn: &Arc<Conn>,
    ) -> ChannelReady {
        let mut shard = self.shard(channel).lock();
        let ch = shard.entry(channel.to_owned()).or_insert_with(|| {
            self.channels_changed(1);
            Channel::new(channel, Sequencer::new(self.backlog.clone()))
        });
        if ch.add(Sub::held_pusher_presence(conn)) {
            self.subscriptions_added(1);
        }
        link.want(channel)
    }

    /// Subscribes `conn` to a channel this node already delivers live, at the position of the
    /// last publication delivered: `reply` makes the subscribe reply for that position, which
    /// is queued under the same lock, so nothing can come between it and the publications
    /// after it. No bus round trip: subscribing to a busy channel is local. Returns `false`
    /// when the channel is not live here (absent, syncing or catching up); the caller then
    /// takes the way through the bus ([`Hub::hold`], [`Hub::activate`]).
    pub(crate) fn subscribe_live(
        &self,
        channel: &str,
        conn: &Arc<Conn>,
        join_leave: bool,
        reply: impl FnOnce(Position) -> Bytes,
    ) -> bool {
        let mut shard = self.shard(channel).lock();
        let Some(ch) = shard.get_mut(channel) else {
            return false;
        };
        if ch.seq.state != State::Live {
            return false;
        }
        let position = ch.seq.position();
        let from = position.offset;
        conn.send(Outgoing::Data(reply(position)));
        if ch.add(Sub::live(conn, from, join_leave)) {
            self.subscriptions_added(1);
        }
        true
    }

    /// Makes a held subscriber live at `position`: queues `reply` (which covers everything up
    /// to `position.offset`; `None` when the session queued its reply and everything up to
    /// the position itself, as a paged recovery does), then the held publications after it.
    pub(crate) fn activate(
        &self,
        channel: &str,
        conn: &Arc<Conn>,
        position: &Position,
        reply: Option<Bytes>,
    ) -> Result<(), ActivateError> {
        self.activate_with(channel, conn, position, [reply, None], None)
    }

    /// [`Hub::activate`] with a second message right after the reply, before any
    /// publication: a Pusher cache channel's last event (or its cache miss).
    pub(crate) fn activate_then(
        &self,
        channel: &str,
        conn: &Arc<Conn>,
        position: &Position,
        reply: Bytes,
        then: Option<Bytes>,
    ) -> Result<(), ActivateError> {
        self.activate_with(channel, conn, position, [Some(reply), then], None)
    }

    /// Makes a Pusher presence subscriber (held by [`Hub::hold_presence`]) live with `view`,
    /// the members it was told of in `reply`: then the joins and leaves that arrived while it
    /// was held, as member messages where they change the view, then the held publications.
    pub(crate) fn activate_presence(
        &self,
        channel: &str,
        conn: &Arc<Conn>,
        position: &Position,
        view: MemberView,
        reply: Bytes,
        then: Option<Bytes>,
    ) -> Result<(), ActivateError> {
        self.activate_with(channel, conn, position, [Some(reply), then], Some(view))
    }

    fn activate_with(
        &self,
        channel: &str,
        conn: &Arc<Conn>,
        position: &Position,
        replies: [Option<Bytes>; 2],
        view: Option<MemberView>,
    ) -> Result<(), ActivateError> {
        let mut shard = self.shard(channel).lock();
        let ch = shard.get_mut(channel).ok_or(ActivateError::Gone)?;
        let sync = ch.seq.state == State::Unsynced;
        if !sync && ch.seq.epoch != position.epoch && !ch.seq.knows_nothing() {
            return Err(ActivateError::EpochChanged);
        }
        let delivered = ch.seq.last;
        let sub = ch
            .sub_mut(conn)
            .filter(|s| s.held.is_some())
            .ok_or(ActivateError::Gone)?;
        if !sync
            && position.offset < delivered
            && !covers(
                sub.held.as_deref().unwrap_or_default(),
                position.offset,
                delivered,
            )
        {
            return Err(ActivateError::Behind);
        }
        sub.from = position.offset;
        let mut queued = 0;
        for reply in replies.into_iter().flatten() {
            queued += sub.conn.push(Outgoing::Data(reply));
        }
        if let (Some(pusher), Some(mut view)) = (sub.pusher.as_mut(), view) {
            for event in std::mem::take(&mut pusher.pending) {
                if let Some(message) = view.apply(channel, &event) {
                    queued += sub.conn.push(Outgoing::Data(message));
                }
            }
            pusher.view = Some(view);
        }
        for held in sub.held.take().unwrap_or_default() {
            if held.offset > position.offset {
                queued += sub
                    .conn
                    .push(Outgoing::Publication(held.frame, held.published_at_ms));
            }
        }
        crate::metrics::queued(queued as i64);
        sub.held_bytes = 0;
        if sync {
            ch.sync(position, self);
        }
        Ok(())
    }

    /// Removes `conn` from `channel`; the bus stops delivering the channel to this node when
    /// its last local subscriber leaves.
    pub(crate) fn unsubscribe(&self, link: &NodeLink, channel: &str, conn: &Arc<Conn>) {
        let mut shard = self.shard(channel).lock();
        if let Some(ch) = shard.get_mut(channel) {
            if ch.remove(conn) {
                self.subscriptions_removed(1);
            }
            if ch.subscriber_count() == 0 {
                shard.remove(channel);
                self.channels_changed(-1);
                link.unwant(channel);
            }
        }
    }

    /// The channels with local subscribers whose names match `pattern` (`*` matches any run),
    /// with their subscriber counts: the first `limit` by name, and whether more matched.
    /// First by name, so that the first `limit` of every node together hold the cluster's
    /// first `limit` with their full counts.
    pub(crate) fn channels(&self, pattern: &str, limit: usize) -> (Vec<(String, u64)>, bool) {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (name, ch) in shard.lock().iter() {
                if crate::auth::glob_match(pattern, name) {
                    out.push((name.clone(), ch.subscriber_count() as u64));
                }
            }
        }
        out.sort_unstable();
        let truncated = out.len() > limit;
        out.truncate(limit);
        (out, truncated)
    }

    /// Local subscribers of each of `names` that has any.
    pub(crate) fn subscribers<'a>(
        &self,
        names: impl Iterator<Item = &'a String>,
    ) -> Vec<(String, u64)> {
        names
            .filter_map(|name| {
                let n = self.shard(name).lock().get(name)?.subscriber_count() as u64;
                (n > 0).then(|| (name.clone(), n))
            })
            .collect()
    }

    /// Number of subscriptions (connection × channel).
    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Number of channels with at least one local subscriber (or held one).
    pub(crate) fn channel_count(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }

    /// Bytes held in catch-up backlogs now.
    #[cfg(test)]
    pub(crate) fn backlog_bytes(&self) -> usize {
        self.backlog.used()
    }

    fn subscriptions_added(&self, n: usize) {
        self.subscriptions.fetch_add(n, Ordering::Relaxed);
        crate::metrics::subscriptions(n as i64);
    }

    fn subscriptions_removed(&self, n: usize) {
        if n > 0 {
            self.subscriptions.fetch_sub(n, Ordering::Relaxed);
            crate::metrics::subscriptions(-(n as i64));
        }
    }

    fn channels_changed(&self, delta: i64) {
        if delta > 0 {
            self.channels.fetch_add(delta as usize, Ordering::Relaxed);
        } else {
            self.channels
                .fetch_sub(delta.unsigned_abs() as usize, Ordering::Relaxed);
        }
        crate::metrics::channels(delta);
    }

    fn request_catch_up(&self, channel: &str) {
        self.catch_up.request(channel);
    }

    /// Waits until some channel needs a catch-up.
    pub(crate) async fn catch_up_needed(&self) {
        self.catch_up.needed().await;
    }

    /// The channels waiting for a catch-up, each with the position to recover from and the
    /// generation the read belongs to.
    pub(crate) fn catch_up_targets(&self) -> Vec<CatchUpTarget> {
        self.catch_up
            .take()
            .into_iter()
            .filter_map(|name| {
                let shard = self.shard(&name).lock();
                let ch = shard.get(&name)?;
                (ch.seq.state == State::CatchingUp).then(|| CatchUpTarget {
                    since: ch.seq.position(),
                    generation: ch.seq.generation(),
                    channel: name.clone(),
                })
            })
            .collect()
    }

    /// Applies a catch-up read made for `target`: delivers what was missed and goes live, or,
    /// when history could not fill the gap, disconnects the channel's subscribers. `None` (the
    /// bus failed) asks for another try. A read the channel no longer expects — its generation
    /// passed (the link broke or the channel was resubscribed while it was in flight), or the
    /// channel moved on — is ignored: a newer request stands for it.
    pub(crate) fn finish_catch_up(&self, target: &CatchUpTarget, recovery: Option<Recovery>) {
        let channel = target.channel.as_str();
        let mut shard = self.shard(channel).lock();
        let Some(ch) = shard.get_mut(channel) else {
            return;
        };
        if !ch.seq.expects(&target.since, target.generation) {
            return;
        }
        match recovery {
            None => {
                drop(shard);
                self.request_catch_up(channel);
            }
            Some(r) if r.recovered => {
                ch.seq.state = State::Live;
                let count = r.publications.len();
                for env in r.publications {
                    ch.step(env, self);
                    if ch.seq.state != State::Live {
                        break;
                    }
                }
                if ch.seq.state == State::Live && r.more {
                    // A page of what was missed: read the next from where it ended (the
                    // backlog waits; on a quiet channel nothing else would reveal the rest).
                    ch.seq.start_catch_up();
                    drop(shard);
                    self.request_catch_up(channel);
                    tracing::debug!(channel, recovered = count, "caught up one page; reading on");
                    return;
                }
                if ch.seq.state == State::Live {
                    ch.drain(self);
                }
                crate::metrics::caught_up();
                tracing::info!(channel, recovered = count, "channel caught up from history");
            }
            Some(_) => ch.lose("history no longer reaches back", self),
        }
    }
}

/// The gateway's span for a traced publication, a child of the publisher's span.
fn traced(envelope: &Envelope) -> tracing::span::EnteredSpan {
    let span = tracing::info_span!(
        "gateway.receive",
        channel = %envelope.channel,
        offset = envelope.offset
    );
    chorus_runtime::traces::continue_from(&span, &envelope.trace_parent, &envelope.trace_state);
    span.entered()
}

impl BusSink for Hub {
    fn publication(&self, envelope: Envelope) {
        crate::metrics::message_received(envelope.published_at_ms);
        // A traced publication (only when the publisher records traces) continues its trace
        // here; an untraced one costs no span.
        let _traced = (!envelope.trace_parent.is_empty() && chorus_runtime::traces::enabled())
            .then(|| traced(&envelope));
        let mut shard = self.shard(&envelope.channel).lock();
        if let Some(ch) = shard.get_mut(&envelope.channel) {
            let _fanout = _traced
                .is_some()
                .then(|| tracing::info_span!("gateway.fanout").entered());
            ch.feed(envelope, self);
        }
    }

    fn link_lost(&self, lost: &dyn Fn(&str) -> bool) {
        for shard in self.shards.iter() {
            for (name, ch) in shard.lock().iter_mut() {
                if ch.seq.state != State::Unsynced && lost(name) {
                    ch.seq.start_catch_up();
                }
            }
        }
    }

    fn resubscribed(&self, channels: &[String]) {
        for name in channels {
            let mut shard = self.shard(name).lock();
            if let Some(ch) = shard.get_mut(name)
                && ch.seq.state != State::Unsynced
            {
                ch.seq.start_catch_up();
                drop(shard);
                self.request_catch_up(name);
            }
        }
    }
}
