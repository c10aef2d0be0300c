//! The hub: which local connections are subscribed to which channel, the fan-out of a
//! publication to them, and the per-channel sequencer that makes delivery gapless.
//!
//! The hub is the node's [`BusSink`]: the bus hands it each envelope once, already decoded.
//! The hub encodes the publication at most once per wire format and gives every subscriber's
//! queue a clone of the same `Bytes` — no per-subscriber serialisation. Subscriptions are kept
//! in shards by channel hash so that fan-out on one channel and subscribes on another do not
//! contend; no lock is ever held across an `.await` (queues are fed with `try_send`).
//!
//! **Sequencer.** Each channel remembers the epoch and offset of the last publication it
//! delivered. A live envelope with the next offset is delivered; an older one is a duplicate
//! and dropped; a newer one means publications went missing (a pub/sub link that broke, a
//! message Redis dropped), so the channel stops delivering, keeps what arrives in a bounded
//! backlog, and asks the node to fetch the gap from history ([`Hub::catch_up_targets`] →
//! [`Hub::finish_catch_up`]). When the link to the bus breaks, every channel waits like this
//! until its subscription is confirmed again, then catches up. A gap history cannot fill, or a
//! new epoch, cannot be hidden: the channel's subscribers are disconnected with
//! `INSUFFICIENT_STATE` and recover (or learn they cannot) by subscribing with their positions.
//!
//! **Subscribing without a seam.** A new subscriber is added *held*: publications for it are
//! kept aside while its session waits for the bus to confirm the channel and reads the
//! position (or the history after the client's position). [`Hub::activate`] then, under the
//! shard lock, queues the subscribe reply, then the held publications newer than the reply's
//! offset, and makes the subscriber live; later ones at or below that offset are skipped. So a
//! client sees the reply, then offset + 1, offset + 2, … with no gap and no duplicate.
//!
//! The hub also reference-counts channels for the bus: the first local subscriber of a channel
//! makes the node want it, and the last one leaving makes it unwant it. Both happen under the
//! shard lock, so the bus sees the transitions in order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use bytes::Bytes;
use chorus_bus::{BusSink, ChannelReady, Envelope, NodeLink, Position, Recovery};
use chorus_protocol::client::{self, push};
use chorus_protocol::codes::close;
use chorus_protocol::wire::{self, Format};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::conn::Conn;

const SHARDS: usize = 64;
/// Most bytes of publications a channel keeps while it waits for history; older ones are
/// dropped first (the gap they leave is fetched from history like any other).
const MAX_BACKLOG_BYTES: usize = 8 << 20;

pub(crate) struct Hub {
    shards: Box<[Mutex<HashMap<String, Channel>>]>,
    hasher: RandomState,
    /// Channels that need a catch-up from history.
    catch_up: Mutex<HashSet<String>>,
    catch_up_wanted: Notify,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            catch_up: Mutex::default(),
            catch_up_wanted: Notify::new(),
        }
    }
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

struct Channel {
    name: String,
    /// Contiguous for the fan-out's sake; in no particular order.
    subs: Vec<Sub>,
    /// Each subscriber's place in `subs`, by connection, so that subscribing, activating and
    /// unsubscribing cost the same on a channel of a million subscribers as on one of ten.
    index: HashMap<usize, usize>,
    seq: Sequencer,
}

/// Whether `held` (in offset order) has every offset after `after` up to `upto`.
fn covers(held: &[(u64, Bytes, i64)], after: u64, upto: u64) -> bool {
    let mut next = after + 1;
    for &(offset, ..) in held {
        if offset == next {
            next += 1;
        } else if offset > next {
            break;
        }
    }
    next > upto
}

/// A connection's identity in a channel's index.
fn conn_key(conn: &Arc<Conn>) -> usize {
    Arc::as_ptr(conn) as usize
}

struct Sub {
    conn: Arc<Conn>,
    /// Publications held back until the subscribe reply is queued: (offset, frame, publish
    /// time).
    held: Option<Vec<(u64, Bytes, i64)>>,
    held_bytes: usize,
    /// Offsets up to this one were covered by the subscribe reply.
    from: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No position known yet: the first subscriber's position read will set it.
    Unsynced,
    Live,
    /// Waiting for history to fill a gap (or for the link to come back, then history).
    CatchingUp,
}

struct Sequencer {
    state: State,
    epoch: String,
    /// Offset of the last publication delivered.
    last: u64,
    backlog: VecDeque<Envelope>,
    backlog_bytes: usize,
}

enum Step {
    Next,
    Duplicate,
    Gap,
    EpochChanged,
}

impl Sequencer {
    fn new() -> Self {
        Self {
            state: State::Unsynced,
            epoch: String::new(),
            last: 0,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
        }
    }

    /// Synced to a channel that had no publication yet: the first one brings the epoch.
    fn knows_nothing(&self) -> bool {
        self.epoch.is_empty() && self.last == 0
    }

    fn position(&self) -> Position {
        Position {
            offset: self.last,
            epoch: self.epoch.clone(),
        }
    }

    fn classify(&mut self, env: &Envelope) -> Step {
        // A channel that was empty when synced takes the epoch of its first publication.
        if self.knows_nothing() {
            self.epoch.clone_from(&env.epoch);
        }
        if env.epoch != self.epoch {
            Step::EpochChanged
        } else if env.offset <= self.last {
            Step::Duplicate
        } else if env.offset == self.last + 1 {
            Step::Next
        } else {
            Step::Gap
        }
    }

    fn hold(&mut self, env: Envelope) {
        self.backlog_bytes += env.data.len();
        self.backlog.push_back(env);
        while self.backlog_bytes > MAX_BACKLOG_BYTES {
            match self.backlog.pop_front() {
                Some(old) => self.backlog_bytes -= old.data.len(),
                None => break,
            }
        }
    }

    fn take_backlog(&mut self) -> VecDeque<Envelope> {
        self.backlog_bytes = 0;
        std::mem::take(&mut self.backlog)
    }
}

/// A publication's frame, encoded at most once per wire format.
struct Encoded {
    frame: client::ServerFrame,
    cache: [Option<Bytes>; Format::ALL.len()],
}

impl Encoded {
    fn new(env: Envelope) -> (Self, String) {
        let Envelope {
            offset,
            epoch,
            channel,
            data,
            exclude_client,
            ..
        } = env;
        let frame = wire::push(push::Body::Publication(client::Publication {
            channel,
            offset,
            epoch,
            data,
        }));
        let encoded = Self {
            frame,
            cache: Default::default(),
        };
        (encoded, exclude_client)
    }

    fn get(&mut self, format: Format) -> &Bytes {
        self.cache[format.index()].get_or_insert_with(|| wire::encode_frame(format, &self.frame))
    }
}

impl Channel {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            subs: Vec::new(),
            index: HashMap::new(),
            seq: Sequencer::new(),
        }
    }

    /// Adds a subscriber, replacing the connection's earlier entry if it had one.
    fn add(&mut self, sub: Sub) {
        let key = conn_key(&sub.conn);
        match self.index.get(&key) {
            Some(&i) => self.subs[i] = sub,
            None => {
                self.index.insert(key, self.subs.len());
                self.subs.push(sub);
            }
        }
    }

    fn sub_mut(&mut self, conn: &Arc<Conn>) -> Option<&mut Sub> {
        let i = *self.index.get(&conn_key(conn))?;
        self.subs.get_mut(i)
    }

    fn remove(&mut self, conn: &Arc<Conn>) {
        if let Some(i) = self.index.remove(&conn_key(conn)) {
            self.subs.swap_remove(i);
            if let Some(moved) = self.subs.get(i) {
                self.index.insert(conn_key(&moved.conn), i);
            }
        }
    }

    /// Feeds one envelope from the bus (or from history) through the sequencer.
    fn feed(&mut self, env: Envelope, hub: &Hub) {
        match self.seq.state {
            State::Unsynced | State::CatchingUp => self.seq.hold(env),
            State::Live => self.step(env, hub),
        }
    }

    fn step(&mut self, env: Envelope, hub: &Hub) {
        match self.seq.classify(&env) {
            Step::Next => {
                self.seq.last = env.offset;
                self.deliver(env);
            }
            Step::Duplicate => {}
            Step::Gap => {
                tracing::info!(channel = %self.name, last = self.seq.last, got = env.offset,
                    "gap in a channel's publications; catching up from history");
                self.seq.state = State::CatchingUp;
                self.seq.hold(env);
                hub.request_catch_up(&self.name);
            }
            Step::EpochChanged => self.lose("the channel's epoch changed"),
        }
    }

    /// Back to live after a catch-up or a sync: replays the backlog through the sequencer.
    fn drain(&mut self, hub: &Hub) {
        self.seq.state = State::Live;
        let mut backlog = self.seq.take_backlog();
        while let Some(env) = backlog.pop_front() {
            self.step(env, hub);
            if self.seq.state != State::Live {
                // The rest waits for the next catch-up (or a new sync, after a loss).
                for env in backlog {
                    self.seq.hold(env);
                }
                return;
            }
        }
    }

    fn deliver(&mut self, env: Envelope) {
        self.deliver_to(env, false);
    }

    /// Delivers to every subscriber (live ones' queues, held ones' held lists), or with
    /// `held_only` to the held subscribers only.
    fn deliver_to(&mut self, env: Envelope, held_only: bool) {
        let (offset, published_at_ms) = (env.offset, env.published_at_ms);
        let (mut encoded, exclude) = Encoded::new(env);
        let mut queued = 0;
        for sub in &mut self.subs {
            if offset <= sub.from
                || (!exclude.is_empty() && sub.conn.client == exclude)
                || (held_only && sub.held.is_none())
            {
                continue;
            }
            let bytes = encoded.get(sub.conn.format).clone();
            match &mut sub.held {
                None => queued += sub.conn.publication_uncounted(bytes, published_at_ms),
                Some(held) => {
                    sub.held_bytes += bytes.len();
                    held.push((offset, bytes, published_at_ms));
                    if sub.held_bytes > sub.conn.max_bytes() {
                        held.clear();
                        sub.conn.close(
                            close::SLOW_CONSUMER,
                            "slow consumer: too much arrived before the subscription was ready",
                        );
                    }
                }
            }
        }
        // One update of the process-wide gauge per publication, not per subscriber.
        crate::metrics::queued(queued as i64);
    }

    /// Syncs an unsynced channel at `position` (the first activation's) and goes live. What
    /// waited in the backlog at or below that position is covered by the activating
    /// subscriber's reply, but not necessarily by the other held subscribers': each read its
    /// own position, which may be lower. They get it in their held lists, and their own
    /// activation keeps what lies after their position.
    fn sync(&mut self, position: &Position, hub: &Hub) {
        self.seq.epoch.clone_from(&position.epoch);
        self.seq.last = position.offset;
        let covered: Vec<Envelope> = self
            .seq
            .backlog
            .iter()
            .filter(|env| env.epoch == position.epoch && env.offset <= position.offset)
            .cloned()
            .collect();
        for env in covered {
            self.deliver_to(env, true);
        }
        self.drain(hub);
    }

    /// Publications of this channel were lost for good: tell every subscriber (they reconnect
    /// and subscribe with their positions, and learn per channel what could be recovered), and
    /// start over unsynced.
    fn lose(&mut self, why: &str) {
        crate::metrics::state_lost();
        let name = &self.name;
        tracing::warn!(channel = %name, why, subscribers = self.subs.len(),
            "channel state lost; disconnecting its subscribers to recover");
        for sub in &self.subs {
            let frame = wire::push(push::Body::Disconnect(client::Disconnect {
                code: u32::from(close::INSUFFICIENT_STATE),
                reason: format!("publications of {name} were lost: {why}"),
                reconnect: true,
            }));
            sub.conn
                .deliver(wire::encode_frame(sub.conn.format, &frame));
            sub.conn.close(
                close::INSUFFICIENT_STATE,
                "insufficient state: reconnect and recover",
            );
        }
        // They are gone from the channel at once: a connection told it lost state must not
        // receive anything more of this channel (in particular nothing of a new epoch) before
        // its close goes out. Their sessions' unsubscribes then find nothing to remove.
        self.subs.clear();
        self.index.clear();
        self.seq = Sequencer::new();
    }
}

impl Hub {
    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, Channel>> {
        let i = self.hasher.hash_one(channel) as usize % SHARDS;
        &self.shards[i]
    }

    /// Adds `conn` to `channel`'s subscribers, held until [`Hub::activate`]; returns when the
    /// bus will confirm the channel.
    pub(crate) fn subscribe(
        &self,
        link: &NodeLink,
        channel: &str,
        conn: &Arc<Conn>,
    ) -> ChannelReady {
        let mut shard = self.shard(channel).lock();
        shard
            .entry(channel.to_owned())
            .or_insert_with(|| Channel::new(channel))
            .add(Sub {
                conn: conn.clone(),
                held: Some(Vec::new()),
                held_bytes: 0,
                from: 0,
            });
        // `want` is idempotent: later subscribers wait on the same confirmation.
        link.want(channel)
    }

    /// Subscribes `conn` to a channel this node already delivers live, at the position of the
    /// last publication delivered: `reply` makes the subscribe reply for that position, which
    /// is queued under the same lock, so nothing can come between it and the publications
    /// after it. No bus round trip: subscribing to a busy channel is local. Returns `false`
    /// when the channel is not live here (absent, syncing or catching up); the caller then
    /// takes the way through the bus ([`Hub::subscribe`], [`Hub::activate`]).
    pub(crate) fn subscribe_live(
        &self,
        channel: &str,
        conn: &Arc<Conn>,
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
        conn.deliver(reply(position));
        ch.add(Sub {
            conn: conn.clone(),
            held: None,
            held_bytes: 0,
            from,
        });
        true
    }

    /// Makes a held subscriber live at `position`: queues `reply` (which covers everything up
    /// to `position.offset`), then the held publications after it.
    pub(crate) fn activate(
        &self,
        channel: &str,
        conn: &Arc<Conn>,
        position: &Position,
        reply: Bytes,
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
        sub.conn.deliver(reply);
        for (offset, frame, published_at_ms) in sub.held.take().unwrap_or_default() {
            if offset > position.offset {
                sub.conn.deliver_publication(frame, published_at_ms);
            }
        }
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
            ch.remove(conn);
            if ch.subs.is_empty() {
                shard.remove(channel);
                link.unwant(channel);
            }
        }
    }

    /// Number of subscriptions (connection × channel), for metrics.
    pub(crate) fn subscription_count(&self) -> usize {
        let count = |s: &Mutex<HashMap<String, Channel>>| {
            s.lock().values().map(|ch| ch.subs.len()).sum::<usize>()
        };
        self.shards.iter().map(count).sum()
    }

    /// Number of channels with at least one local subscriber.
    pub(crate) fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn request_catch_up(&self, channel: &str) {
        self.catch_up.lock().insert(channel.to_owned());
        self.catch_up_wanted.notify_one();
    }

    /// Waits until some channel needs a catch-up.
    pub(crate) async fn catch_up_needed(&self) {
        self.catch_up_wanted.notified().await;
    }

    /// The channels waiting for a catch-up, each with the position to recover from.
    pub(crate) fn catch_up_targets(&self) -> Vec<(String, Position)> {
        let names: Vec<String> = self.catch_up.lock().drain().collect();
        names
            .into_iter()
            .filter_map(|name| {
                let shard = self.shard(&name).lock();
                let ch = shard.get(&name)?;
                (ch.seq.state == State::CatchingUp).then(|| (name.clone(), ch.seq.position()))
            })
            .collect()
    }

    /// Applies a catch-up read from `since`: delivers what was missed and goes live, or, when
    /// history could not fill the gap, disconnects the channel's subscribers. `None` (the bus
    /// failed) asks for another try.
    pub(crate) fn finish_catch_up(
        &self,
        channel: &str,
        since: &Position,
        recovery: Option<Recovery>,
    ) {
        let mut shard = self.shard(channel).lock();
        let Some(ch) = shard.get_mut(channel) else {
            return;
        };
        if ch.seq.state != State::CatchingUp || ch.seq.position() != *since {
            return; // the channel moved on (lost, or caught up by another read)
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
                if ch.seq.state == State::Live {
                    ch.drain(self);
                }
                crate::metrics::caught_up();
                tracing::info!(channel, recovered = count, "channel caught up from history");
            }
            Some(_) => ch.lose("history no longer reaches back"),
        }
    }
}

impl BusSink for Hub {
    fn publication(&self, envelope: Envelope) {
        crate::metrics::message_received();
        let mut shard = self.shard(&envelope.channel).lock();
        if let Some(ch) = shard.get_mut(&envelope.channel) {
            ch.feed(envelope, self);
        }
    }

    fn link_lost(&self) {
        for shard in self.shards.iter() {
            for ch in shard.lock().values_mut() {
                if ch.seq.state == State::Live {
                    ch.seq.state = State::CatchingUp;
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
                ch.seq.state = State::CatchingUp;
                drop(shard);
                self.request_catch_up(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{ConnQueue, Outgoing};
    use chorus_bus::{Bus, NodeInfo};

    fn link(bus: &Bus, hub: &Arc<Hub>) -> NodeLink {
        let node = NodeInfo {
            id: "n".into(),
            address: String::new(),
            connections: 0,
            started_at_ms: 0,
        };
        bus.attach(node, hub.clone())
    }

    /// A hub attached to an in-memory bus (kept alive by the caller) as node `n`.
    fn setup() -> (Bus, Arc<Hub>, NodeLink) {
        let bus = Bus::memory();
        let hub = Arc::new(Hub::default());
        let link = link(&bus, &hub);
        (bus, hub, link)
    }

    fn envelope(channel: &str, offset: u64, exclude: &str) -> Envelope {
        Envelope {
            offset,
            epoch: "e".into(),
            channel: channel.into(),
            data: Bytes::from_static(b"{}"),
            published_at_ms: 0,
            exclude_client: exclude.into(),
        }
    }

    fn pos(offset: u64) -> Position {
        Position {
            offset,
            epoch: "e".into(),
        }
    }

    fn conn(name: &str, format: Format) -> (Arc<Conn>, ConnQueue) {
        let (c, q) = Conn::new(name.into(), format, 64, 1 << 16);
        (c, q)
    }

    /// Subscribes and activates at `at` with a reply frame `R`.
    fn live(hub: &Hub, link: &NodeLink, ch: &str, c: &Arc<Conn>, at: u64) {
        drop(hub.subscribe(link, ch, c));
        hub.activate(ch, c, &pos(at), Bytes::from_static(b"R"))
            .unwrap();
    }

    fn take(q: &mut ConnQueue) -> Bytes {
        match q.try_recv() {
            Some(Outgoing::Data(b) | Outgoing::Publication(b, _)) => b,
            other => panic!("expected data, got {other:?}"),
        }
    }

    /// The offsets of the publications queued, replies shown as 0.
    fn offsets(q: &mut ConnQueue) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(Outgoing::Data(b) | Outgoing::Publication(b, _)) = q.try_recv() {
            if b.as_ref() == b"R" {
                out.push(0);
                continue;
            }
            let frame = wire::decode_frame(Format::Json, &b).unwrap();
            match frame.frame {
                Some(client::server_frame::Frame::Push(client::Push {
                    body: Some(push::Body::Publication(p)),
                })) => out.push(p.offset),
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }

    #[test]
    fn subscribers_of_one_format_share_one_encoding() {
        let (_bus, hub, link) = setup();
        let (a, mut qa) = conn("a", Format::Json);
        let (b, mut qb) = conn("b", Format::Json);
        let (c, mut qc) = conn("c", Format::Protobuf);
        for conn in [&a, &b, &c] {
            live(&hub, &link, "ch", conn, 0);
        }
        hub.publication(envelope("ch", 1, ""));
        for q in [&mut qa, &mut qb, &mut qc] {
            take(q); // the reply
        }
        let (fa, fb, fc) = (take(&mut qa), take(&mut qb), take(&mut qc));
        assert_eq!(
            fa.as_ptr(),
            fb.as_ptr(),
            "JSON subscribers share one buffer"
        );
        assert_ne!(fa, fc, "protobuf is encoded separately");
    }

    #[test]
    fn excluded_sender_is_skipped_and_last_unsubscribe_unwants() {
        let (_bus, hub, link) = setup();
        let (a, mut qa) = conn("a", Format::Json);
        let (b, mut qb) = conn("b", Format::Json);
        live(&hub, &link, "ch", &a, 0);
        live(&hub, &link, "ch", &b, 0);
        hub.publication(envelope("ch", 1, "a"));
        assert_eq!(offsets(&mut qa), vec![0]);
        assert_eq!(offsets(&mut qb), vec![0, 1]);
        hub.unsubscribe(&link, "ch", &a);
        assert_eq!(hub.channel_count(), 1);
        hub.unsubscribe(&link, "ch", &b);
        assert_eq!(hub.channel_count(), 0);
        hub.publication(envelope("ch", 2, ""));
        assert!(qb.try_recv().is_none());
    }

    #[test]
    fn unsubscribing_from_the_middle_keeps_every_other_subscriber_reachable() {
        let (_bus, hub, link) = setup();
        let mut conns: Vec<_> = (0..6)
            .map(|i| conn(&format!("c{i}"), Format::Json))
            .collect();
        for (c, _) in &conns[..5] {
            live(&hub, &link, "ch", c, 0);
        }
        // The last one stays held: activating it after others moved must find it.
        drop(hub.subscribe(&link, "ch", &conns[5].0));
        hub.unsubscribe(&link, "ch", &conns[1].0);
        hub.unsubscribe(&link, "ch", &conns[0].0);
        hub.unsubscribe(&link, "ch", &conns[1].0); // twice: nothing more happens
        assert_eq!(hub.subscription_count(), 4);
        hub.publication(envelope("ch", 1, ""));
        hub.activate("ch", &conns[5].0, &pos(0), Bytes::from_static(b"R"))
            .unwrap();
        hub.publication(envelope("ch", 2, ""));
        let got: Vec<_> = conns.iter_mut().map(|(_, q)| offsets(q)).collect();
        assert_eq!(got[0], vec![0], "left before anything was published");
        assert_eq!(got[1], vec![0]);
        for live in &got[2..5] {
            assert_eq!(live, &vec![0, 1, 2]);
        }
        assert_eq!(got[5], vec![0, 1, 2], "held, then activated at 0");
        assert_eq!(
            hub.activate("ch", &conns[0].0, &pos(0), Bytes::new()),
            Err(ActivateError::Gone)
        );
    }

    #[test]
    fn subscribing_to_a_live_channel_is_local_and_seamless() {
        let (_bus, hub, link) = setup();
        let (a, mut qa) = conn("a", Format::Json);
        let (b, mut qb) = conn("b", Format::Json);
        let (c, _qc) = conn("c", Format::Json);
        let reply = |p: Position| {
            assert_eq!(p, pos(2), "the position of the last publication delivered");
            Bytes::from_static(b"R")
        };
        assert!(!hub.subscribe_live("ch", &b, reply), "no channel here yet");
        drop(hub.subscribe(&link, "ch", &a));
        assert!(!hub.subscribe_live("ch", &b, reply), "not synced yet");
        hub.activate("ch", &a, &pos(0), Bytes::from_static(b"R"))
            .unwrap();
        hub.publication(envelope("ch", 1, ""));
        hub.publication(envelope("ch", 2, ""));
        assert!(hub.subscribe_live("ch", &b, reply));
        hub.publication(envelope("ch", 3, ""));
        assert_eq!(offsets(&mut qa), vec![0, 1, 2, 3]);
        assert_eq!(offsets(&mut qb), vec![0, 3]);
        hub.publication(envelope("ch", 5, "")); // a gap: catching up
        assert!(
            !hub.subscribe_live("ch", &c, |_| Bytes::new()),
            "a channel catching up takes the way through the bus"
        );
        hub.unsubscribe(&link, "ch", &b);
        assert_eq!(hub.subscription_count(), 1);
    }

    #[test]
    fn held_subscribers_behind_the_first_activation_still_get_what_lies_between() {
        // Two clients subscribe to a channel this node has not synced yet and read their
        // positions at different moments: A at 1, B at 2. Publications 2 and 3 arrive before
        // either is active; B activates first and syncs the channel at 2.
        let (_bus, hub, link) = setup();
        let (a, mut qa) = conn("a", Format::Json);
        let (b, mut qb) = conn("b", Format::Json);
        drop(hub.subscribe(&link, "ch", &a));
        drop(hub.subscribe(&link, "ch", &b));
        hub.publication(envelope("ch", 2, ""));
        hub.publication(envelope("ch", 3, ""));
        hub.activate("ch", &b, &pos(2), Bytes::from_static(b"R"))
            .unwrap();
        hub.activate("ch", &a, &pos(1), Bytes::from_static(b"R"))
            .unwrap();
        hub.publication(envelope("ch", 4, ""));
        assert_eq!(offsets(&mut qb), vec![0, 3, 4]);
        assert_eq!(
            offsets(&mut qa),
            vec![0, 2, 3, 4],
            "2 is after A's position"
        );
    }

    #[test]
    fn a_held_subscriber_behind_a_hole_it_cannot_fill_is_told_to_read_again() {
        // The node never received 2..=5 (its bus subscription was being renewed): B synced the
        // channel at 5 from its own read; A read 1 earlier and holds nothing of 2..=5.
        let (_bus, hub, link) = setup();
        let (a, mut qa) = conn("a", Format::Json);
        let (b, mut qb) = conn("b", Format::Json);
        drop(hub.subscribe(&link, "ch", &a));
        drop(hub.subscribe(&link, "ch", &b));
        hub.activate("ch", &b, &pos(5), Bytes::from_static(b"R"))
            .unwrap();
        assert_eq!(
            hub.activate("ch", &a, &pos(1), Bytes::from_static(b"R")),
            Err(ActivateError::Behind)
        );
        assert!(qa.try_recv().is_none(), "nothing queued for A yet");
        hub.publication(envelope("ch", 6, ""));
        // A's second read is at least as far as what the channel delivered.
        hub.activate("ch", &a, &pos(5), Bytes::from_static(b"R"))
            .unwrap();
        hub.publication(envelope("ch", 7, ""));
        assert_eq!(offsets(&mut qa), vec![0, 6, 7]);
        assert_eq!(offsets(&mut qb), vec![0, 6, 7]);
    }

    #[test]
    fn a_held_subscriber_gets_its_reply_first_then_only_newer_publications() {
        let (_bus, hub, link) = setup();
        let (a, mut qa) = conn("a", Format::Json);
        live(&hub, &link, "ch", &a, 0);
        let (b, mut qb) = conn("b", Format::Json);
        drop(hub.subscribe(&link, "ch", &b));
        for offset in 1..=3 {
            hub.publication(envelope("ch", offset, ""));
        }
        // b's position read saw offset 2: it gets the reply, then 3, then live ones.
        hub.activate("ch", &b, &pos(2), Bytes::from_static(b"R"))
            .unwrap();
        hub.publication(envelope("ch", 4, ""));
        assert_eq!(offsets(&mut qb), vec![0, 3, 4]);
        assert_eq!(offsets(&mut qa), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn the_first_subscriber_syncs_the_channel_and_the_backlog_is_deduplicated() {
        let (_bus, hub, link) = setup();
        let (a, mut qa) = conn("a", Format::Json);
        drop(hub.subscribe(&link, "ch", &a));
        hub.publication(envelope("ch", 5, ""));
        hub.publication(envelope("ch", 6, ""));
        // The position read happened after 5 and before 6 was published.
        hub.activate("ch", &a, &pos(5), Bytes::from_static(b"R"))
            .unwrap();
        hub.publication(envelope("ch", 6, "")); // a duplicate from the bus
        hub.publication(envelope("ch", 7, ""));
        assert_eq!(offsets(&mut qa), vec![0, 6, 7]);
    }

    #[test]
    fn a_gap_waits_for_history_then_delivers_in_order_exactly_once() {
        let (_bus, hub, link) = setup();
        let (a, mut qa) = conn("a", Format::Json);
        live(&hub, &link, "ch", &a, 1);
        hub.publication(envelope("ch", 2, ""));
        hub.publication(envelope("ch", 5, "")); // 3 and 4 went missing
        hub.publication(envelope("ch", 6, ""));
        assert_eq!(offsets(&mut qa), vec![0, 2]);
        let targets = hub.catch_up_targets();
        assert_eq!(targets, vec![("ch".to_owned(), pos(2))]);
        let recovery = Recovery {
            publications: (3..=5).map(|o| envelope("ch", o, "")).collect(),
            position: pos(5),
            recovered: true,
        };
        hub.finish_catch_up("ch", &pos(2), Some(recovery));
        hub.publication(envelope("ch", 7, ""));
        assert_eq!(offsets(&mut qa), vec![3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_lost_link_waits_for_resubscription_and_a_failed_read_is_retried() {
        let (_bus, hub, link) = setup();
        let (a, mut qa) = conn("a", Format::Json);
        live(&hub, &link, "ch", &a, 1);
        hub.link_lost();
        hub.publication(envelope("ch", 4, "")); // arrives on the new connection
        assert!(
            hub.catch_up_targets().is_empty(),
            "no read before resubscription"
        );
        hub.resubscribed(&["ch".into()]);
        let targets = hub.catch_up_targets();
        assert_eq!(targets, vec![("ch".to_owned(), pos(1))]);
        hub.finish_catch_up("ch", &pos(1), None);
        assert_eq!(hub.catch_up_targets(), vec![("ch".to_owned(), pos(1))]);
        let recovery = Recovery {
            publications: (2..=3).map(|o| envelope("ch", o, "")).collect(),
            position: pos(3),
            recovered: true,
        };
        hub.finish_catch_up("ch", &pos(1), Some(recovery));
        assert_eq!(offsets(&mut qa), vec![0, 2, 3, 4]);
    }

    #[test]
    fn an_unfillable_gap_or_a_new_epoch_disconnects_subscribers_with_insufficient_state() {
        let (_bus, hub, link) = setup();
        let (a, _qa) = conn("a", Format::Json);
        live(&hub, &link, "ch", &a, 1);
        hub.publication(envelope("ch", 9, ""));
        let lost = Recovery {
            publications: Vec::new(),
            position: pos(9),
            recovered: false,
        };
        hub.finish_catch_up("ch", &pos(1), Some(lost));
        assert_eq!(
            a.take_close_frame().map(|(code, _)| code),
            Some(close::INSUFFICIENT_STATE)
        );
        assert_eq!(hub.subscription_count(), 0, "the told subscriber is gone");
        // Its session's unsubscribe finds nothing, and releases the channel.
        hub.unsubscribe(&link, "ch", &a);
        assert_eq!(hub.channel_count(), 0);

        let (b, _qb) = conn("b", Format::Json);
        live(&hub, &link, "other", &b, 3);
        let mut reborn = envelope("other", 1, "");
        reborn.epoch = "new".into();
        hub.publication(reborn);
        assert_eq!(
            b.take_close_frame().map(|(code, _)| code),
            Some(close::INSUFFICIENT_STATE)
        );
    }
}
