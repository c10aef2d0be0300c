//! One channel on this node: its local subscribers, its sequencer, and the fan-out of a
//! publication to them.
//!
//! A publication is encoded at most once per wire format ([`Encoded`]) and every
//! subscriber's queue receives a clone of the same `Bytes`: no per-subscriber serialisation.
//!
//! A subscriber is either *live* (publications go to its queue) or *held*: its session is
//! still reading its position or history, and publications for it are set aside in order
//! ([`Held`]) until the hub activates it (`Hub::activate`), which queues its reply first and
//! then what was held after the reply's position.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chorus_bus::{Envelope, Position};
use chorus_protocol::client::{self, push};
use chorus_protocol::codes::close;
use chorus_protocol::wire::{self, Format};

use super::Hub;
use super::members::{MAX_PENDING, PusherPresence};
use super::sequencer::{BacklogFull, Sequencer, State, Step};
use crate::conn::{Conn, Outgoing};

/// A publication set aside for a held subscriber, already encoded in its format.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) offset: u64,
    pub(crate) frame: Bytes,
    /// When it was published (ms since the Unix epoch), for the delivery-latency metric.
    pub(crate) published_at_ms: i64,
}

/// Whether `held` (in offset order) has every offset after `after` up to `upto`.
pub(crate) fn covers(held: &[Held], after: u64, upto: u64) -> bool {
    let mut next = after + 1;
    for h in held {
        if h.offset == next {
            next += 1;
        } else if h.offset > next {
            break;
        }
    }
    next > upto
}

/// A connection's identity in a channel's index.
fn conn_key(conn: &Arc<Conn>) -> usize {
    Arc::as_ptr(conn) as usize
}

pub(crate) struct Sub {
    pub(crate) conn: Arc<Conn>,
    /// `Some` while held: the publications set aside for it, in offset order.
    pub(crate) held: Option<Vec<Held>>,
    pub(crate) held_bytes: usize,
    /// Offsets up to this one were covered by the subscribe reply.
    pub(crate) from: u64,
    /// Whether it receives join and leave pushes (where the channel announces them).
    pub(crate) join_leave: bool,
    /// A Pusher presence subscriber: its view of the members, which joins and leaves change
    /// (`members.rs`), instead of join and leave pushes.
    pub(crate) pusher: Option<Box<PusherPresence>>,
}

impl Sub {
    pub(crate) fn held(conn: &Arc<Conn>, join_leave: bool) -> Self {
        Self {
            conn: conn.clone(),
            held: Some(Vec::new()),
            held_bytes: 0,
            from: 0,
            join_leave,
            pusher: None,
        }
    }

    /// A held Pusher presence subscriber.
    pub(crate) fn held_pusher_presence(conn: &Arc<Conn>) -> Self {
        Self {
            pusher: Some(Box::default()),
            ..Self::held(conn, false)
        }
    }

    pub(crate) fn live(conn: &Arc<Conn>, from: u64, join_leave: bool) -> Self {
        Self {
            conn: conn.clone(),
            held: None,
            held_bytes: 0,
            from,
            join_leave,
            pusher: None,
        }
    }
}

pub(crate) struct Channel {
    pub(crate) name: String,
    /// Contiguous for the fan-out's sake; in no particular order.
    subs: Vec<Sub>,
    /// Each subscriber's place in `subs`, by connection, so that subscribing, activating and
    /// unsubscribing cost the same on a channel of a million subscribers as on one of ten.
    index: HashMap<usize, usize>,
    pub(crate) seq: Sequencer,
}

/// A publication's frame, encoded at most once per wire format, and compressed at most once
/// per wire format for the subscribers that negotiated permessage-deflate.
struct Encoded {
    frame: client::ServerFrame,
    cache: [Option<Bytes>; Format::ALL.len()],
    /// `Some(None)`: too small to compress, or no smaller compressed.
    compressed: [Option<Option<Bytes>>; Format::ALL.len()],
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
            compressed: Default::default(),
        };
        (encoded, exclude_client)
    }

    fn get(&mut self, format: Format) -> &Bytes {
        self.cache[format.index()].get_or_insert_with(|| wire::encode_frame(format, &self.frame))
    }

    /// The frame compressed with the shared window, when it is at least `min` bytes and
    /// compressing makes it smaller.
    fn compressed(&mut self, format: Format, min: usize) -> Option<Bytes> {
        if let Some(done) = &self.compressed[format.index()] {
            return done.clone();
        }
        let plain = self.get(format);
        let packed = (plain.len() >= min)
            .then(|| crate::deflate::compress(plain, crate::deflate::SHARED_WINDOW_BITS))
            .filter(|packed| packed.len() < plain.len());
        self.compressed[format.index()] = Some(packed.clone());
        packed
    }

    /// What a live subscriber on `conn` is sent.
    fn outgoing(&mut self, conn: &Conn, compress_min: usize, published_at_ms: i64) -> Outgoing {
        if conn.deflate.is_some_and(|d| d.shares())
            && let Some(packed) = self.compressed(conn.format, compress_min)
        {
            return Outgoing::Compressed(packed, published_at_ms);
        }
        Outgoing::Publication(self.get(conn.format).clone(), published_at_ms)
    }
}

impl Channel {
    pub(crate) fn new(name: &str, seq: Sequencer) -> Self {
        Self {
            name: name.to_owned(),
            subs: Vec::new(),
            index: HashMap::new(),
            seq,
        }
    }

    pub(crate) fn subscriber_count(&self) -> usize {
        self.subs.len()
    }

    /// Adds a subscriber, replacing the connection's earlier entry if it had one. Returns
    /// whether it is a new subscription.
    pub(crate) fn add(&mut self, sub: Sub) -> bool {
        let key = conn_key(&sub.conn);
        match self.index.get(&key) {
            Some(&i) => {
                self.subs[i] = sub;
                false
            }
            None => {
                self.index.insert(key, self.subs.len());
                self.subs.push(sub);
                true
            }
        }
    }

    pub(crate) fn sub_mut(&mut self, conn: &Arc<Conn>) -> Option<&mut Sub> {
        let i = *self.index.get(&conn_key(conn))?;
        self.subs.get_mut(i)
    }

    /// Removes a subscriber; returns whether it was there.
    pub(crate) fn remove(&mut self, conn: &Arc<Conn>) -> bool {
        let Some(i) = self.index.remove(&conn_key(conn)) else {
            return false;
        };
        self.subs.swap_remove(i);
        if let Some(moved) = self.subs.get(i) {
            self.index.insert(conn_key(&moved.conn), i);
        }
        true
    }

    /// Feeds one envelope from the bus through the sequencer.
    pub(crate) fn feed(&mut self, env: Envelope, hub: &Hub) {
        match self.seq.state {
            State::Unsynced | State::CatchingUp => self.hold(env, hub),
            State::Live => self.step(env, hub),
        }
    }

    /// Keeps an envelope until the channel can deliver; gives up on the channel when the
    /// node's backlog budget is spent.
    fn hold(&mut self, env: Envelope, hub: &Hub) {
        if self.seq.hold(env) == Err(BacklogFull) {
            self.lose("the node's catch-up backlog is full", hub);
        }
    }

    /// A live channel's next envelope, from the bus or from history.
    pub(crate) fn step(&mut self, env: Envelope, hub: &Hub) {
        if env.presence.is_some() {
            // A join or leave has no offset: it goes out where it arrived among the
            // publications (after a catch-up, where it waited in the backlog).
            self.announce(env);
            return;
        }
        match self.seq.classify(&env) {
            Step::Next => {
                self.seq.last = env.offset;
                self.deliver_to(env, false, hub.compress_min);
            }
            Step::Duplicate => {}
            Step::Gap => {
                tracing::info!(channel = %self.name, last = self.seq.last, got = env.offset,
                    "gap in a channel's publications; catching up from history");
                self.seq.start_catch_up();
                hub.request_catch_up(&self.name);
                self.hold(env, hub);
            }
            Step::EpochChanged => self.lose("the channel's epoch changed", hub),
        }
    }

    /// Back to live after a catch-up or a sync: replays the backlog through the sequencer.
    pub(crate) fn drain(&mut self, hub: &Hub) {
        self.seq.state = State::Live;
        let mut backlog = self.seq.take_backlog();
        while let Some(env) = backlog.pop_front() {
            self.step(env, hub);
            if self.seq.state != State::Live {
                // The rest waits for the next catch-up (or a new sync, after a loss).
                if self.seq.state == State::CatchingUp {
                    for env in backlog {
                        self.hold(env, hub);
                    }
                }
                return;
            }
        }
    }

    /// Delivers to every subscriber (live ones' queues, held ones' held lists), or with
    /// `held_only` to the held subscribers only.
    fn deliver_to(&mut self, env: Envelope, held_only: bool, compress_min: usize) {
        let (offset, published_at_ms) = (env.offset, env.published_at_ms);
        let (mut encoded, exclude) = Encoded::new(env);
        let (mut queued, mut compressed) = (0, 0);
        for sub in &mut self.subs {
            if offset <= sub.from
                || (!exclude.is_empty() && sub.conn.client == exclude)
                || (held_only && sub.held.is_none())
            {
                continue;
            }
            match &mut sub.held {
                None => {
                    let out = encoded.outgoing(&sub.conn, compress_min, published_at_ms);
                    compressed += u64::from(matches!(out, Outgoing::Compressed(..)));
                    queued += sub.conn.push(out);
                }
                Some(held) => {
                    let frame = encoded.get(sub.conn.format).clone();
                    sub.held_bytes += frame.len();
                    held.push(Held {
                        offset,
                        frame,
                        published_at_ms,
                    });
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
        // One update of the process-wide metrics per publication, not per subscriber.
        crate::metrics::queued(queued as i64);
        crate::metrics::compressed_deliveries(compressed);
    }

    /// Delivers a join or leave to the live subscribers that take them. Held subscribers do
    /// not get it: their presence view starts when they are live (a `presence` call then sees
    /// the entry, written before its announcement).
    fn announce(&mut self, env: Envelope) {
        let Envelope {
            channel,
            exclude_client,
            presence: Some(event),
            ..
        } = env
        else {
            return;
        };
        let info = Some(client::ClientInfo {
            client: event.client.clone(),
            user: event.user.clone(),
            info: event.info.clone(),
        });
        let body = if event.leave {
            push::Body::Leave(client::Leave { channel, info })
        } else {
            push::Body::Join(client::Join { channel, info })
        };
        let frame = wire::push(body);
        let mut cache: [Option<Bytes>; Format::ALL.len()] = Default::default();
        let mut queued = 0;
        for sub in &mut self.subs {
            if sub.conn.client == exclude_client {
                continue;
            }
            if let Some(pusher) = &mut sub.pusher {
                match &mut pusher.view {
                    Some(view) => {
                        if let Some(message) = view.apply(&self.name, &event) {
                            queued += sub.conn.push(Outgoing::Data(message));
                        }
                    }
                    None if pusher.pending.len() < MAX_PENDING => {
                        pusher.pending.push(event.clone());
                    }
                    None => {
                        sub.conn.close(
                            close::SLOW_CONSUMER,
                            "too many members came and went before the subscription was ready",
                        );
                    }
                }
                continue;
            }
            if !sub.join_leave || sub.held.is_some() {
                continue;
            }
            let bytes = cache[sub.conn.format.index()]
                .get_or_insert_with(|| wire::encode_frame(sub.conn.format, &frame))
                .clone();
            queued += sub.conn.push(Outgoing::Data(bytes));
        }
        crate::metrics::queued(queued as i64);
    }

    /// Syncs an unsynced channel at `position` (the first activation's) and goes live. What
    /// waited in the backlog at or below that position is covered by the activating
    /// subscriber's reply, but not necessarily by the other held subscribers': each read its
    /// own position, which may be lower. They get it in their held lists, and their own
    /// activation keeps what lies after their position.
    pub(crate) fn sync(&mut self, position: &Position, hub: &Hub) {
        self.seq.epoch.clone_from(&position.epoch);
        self.seq.last = position.offset;
        for env in self.seq.backlog_covered_by(position) {
            self.deliver_to(env, true, hub.compress_min);
        }
        self.drain(hub);
    }

    /// Publications of this channel were lost for good: tell every subscriber (they reconnect
    /// and subscribe with their positions, and learn per channel what could be recovered), and
    /// start over unsynced.
    pub(crate) fn lose(&mut self, why: &str, hub: &Hub) {
        crate::metrics::state_lost();
        let name = &self.name;
        tracing::warn!(channel = %name, why, subscribers = self.subs.len(),
            "channel state lost; disconnecting its subscribers to recover");
        for sub in &self.subs {
            sub.conn.disconnect(
                close::INSUFFICIENT_STATE,
                &format!("publications of {name} were lost: {why}"),
            );
        }
        // They are gone from the channel at once: a connection told it lost state must not
        // receive anything more of this channel (in particular nothing of a new epoch) before
        // its close goes out. Their sessions' unsubscribes then find nothing to remove.
        hub.subscriptions_removed(self.subs.len());
        self.subs.clear();
        self.index.clear();
        self.seq.reset();
    }
}
