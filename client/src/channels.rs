//! The channels the application subscribed to, and the rules that make each one's
//! publications arrive exactly once and in order, across reconnects.
//!
//! A channel is tracked from `subscribe` to `unsubscribe`, whatever happens to connections
//! in between; only its [`State`] on the current connection changes:
//!
//! ```text
//!   Idle ──subscribe sent──▶ Subscribing ──reply: ok──▶ Live
//!                              │    ▲                     │
//!          reply: refused,     │    │ retry due           │ gap: unsubscribe,
//!          worth retrying      ▼    │                     │ subscribe again
//!                             Retry ┘     Subscribing ◀───┘
//!
//!   connection lost: every state → Idle.   Refused for good: the channel is dropped.
//! ```
//!
//! **Positions.** Each channel keeps the position (epoch, offset) of the last publication it
//! delivered; [`track`](crate::track) judges each arrival against it: the next one is
//! delivered, an earlier one is a duplicate and dropped, anything else is a gap, answered by
//! resubscribing with recovery from the last position. A resubscribe after a reconnect asks
//! for the same recovery, so one mechanism serves reconnects and gaps alike.
//!
//! **Holding back.** While a subscribe is in flight, publications of the channel may still
//! arrive (sent before the gateway handled it, e.g. by the subscription that a resubscribe
//! after a gap replaces). They are held and judged after the reply, once the position is
//! known, so the application always sees `Subscribed` before the channel's publications and
//! recovered ones before the others.
//!
//! **Join and leave.** A channel's `join`/`leave` pushes keep their place among its
//! publications: delivered while the channel is live, held with the publications while a
//! subscribe is in flight, dropped when it is not subscribed.
//!
//! **Server-side subscriptions.** A `subscribe` push (the server subscribed this connection)
//! adopts the channel as live at the push's position; from there it follows the same rules.
//! After a reconnect the client does not resubscribe such a channel itself: it sends the last
//! delivered positions of its server-side channels with `connect`, and the gateway restores
//! those of the token's `subs` claim and the personal channel with a new push that recovers
//! from there, as a recovering subscribe does; those it does not restore are dropped once the
//! gateway has answered a command sent after them.
//!
//! **Own publications.** A publish without echo is not sent back to its publisher, yet it
//! takes an offset. The publish reply says which; the channel notes it and steps over it
//! when it comes next, instead of taking the missing offset for a gap.
//!
//! [`Channels`] is only state and rules; the [`session`](crate::session) does the I/O
//! (sending subscribes, emitting events) with what its methods return.

use std::collections::HashMap;

use chorus_protocol::client::{self, push, reply};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{Error, subscribe_retryable};
use crate::event::{Position, Publication, SubscribeInfo, SubscribeOptions};
use crate::pending::Reply;
use crate::track::{Verdict, advance, judge};

/// A channel's subscription on the current connection.
enum State {
    /// Not subscribed on the current connection (or there is none).
    Idle,
    /// Subscribe `id` sent; publications, joins and leaves meanwhile are held in `held`.
    Subscribing {
        id: u32,
        held: Vec<push::Body>,
    },
    Live,
    /// Refused with a retryable error; subscribe again at `at`.
    Retry {
        at: Instant,
    },
}

struct Channel {
    /// The last delivered position; `None` until the first subscribe result.
    last: Option<Position>,
    state: State,
    /// `subscribe` calls waiting for the subscription to become live.
    waiters: Vec<Reply<SubscribeInfo>>,
    /// Refused subscribes in a row (for the retry backoff).
    retries: u32,
    /// This client's own publications (published without echo) not yet passed.
    own: Vec<Position>,
    /// Whether this subscription receives joins and leaves.
    join_leave: bool,
    /// Subscribed by the server: restored by the gateway after a reconnect, not by the
    /// client.
    server: bool,
}

/// What became of a publication that arrived.
pub(crate) enum Arrival {
    /// The next one: the channel advanced to it; deliver it.
    Deliver(Publication),
    /// Already delivered: drop it.
    Duplicate(Publication),
    /// Offsets were skipped (or the epoch changed) after `last`: resubscribe with recovery.
    Gap {
        publication: Publication,
        last: Position,
    },
    /// Held until the subscribe reply, or not for a live subscription: nothing to do now.
    Kept,
}

/// What a subscribe reply did to its channel.
pub(crate) enum SubscribeOutcome {
    /// The channel is gone or resubscribed since: the reply no longer matters.
    Stale,
    /// Refused. Retrying at `retry_at`, or dropped (its `subscribe` calls failed).
    Refused {
        error: client::Error,
        retry_at: Option<Instant>,
    },
    /// A reply with neither an error nor a subscribe result: the gateway is broken.
    Malformed,
    /// The subscription is live.
    Live(Subscribed),
}

/// A subscription that became live, for the `Subscribed` event and what follows it.
pub(crate) struct Subscribed {
    pub(crate) position: Position,
    pub(crate) recovered: Option<bool>,
    pub(crate) from: Option<Position>,
    /// Recovered publications, to judge first, in order.
    pub(crate) recovered_publications: Vec<Publication>,
    /// Pushes (publications, joins, leaves) that arrived while subscribing, to judge after
    /// them.
    pub(crate) held: Vec<push::Body>,
}

/// Subscribes refused with a retryable error, seen from the timer.
pub(crate) struct Retries {
    /// Channels to subscribe again now.
    pub(crate) due: Vec<String>,
    /// When the next retry after those is due.
    pub(crate) next: Option<Instant>,
}

/// Every channel the application wants, whatever the connection's state.
#[derive(Default)]
pub(crate) struct Channels {
    channels: HashMap<String, Channel>,
}

impl Channels {
    /// Adds a channel the application wants; returns its name if it is new.
    pub(crate) fn add(
        &mut self,
        channel: String,
        options: SubscribeOptions,
        reply: Reply<SubscribeInfo>,
    ) -> Option<String> {
        if self.channels.contains_key(&channel) {
            let _ = reply.send(Err(Error::AlreadySubscribed(channel)));
            return None;
        }
        self.channels.insert(
            channel.clone(),
            Channel {
                last: options.from,
                state: State::Idle,
                waiters: vec![reply],
                retries: 0,
                own: Vec::new(),
                join_leave: options.join_leave,
                server: false,
            },
        );
        Some(channel)
    }

    /// Forgets a channel; returns whether the gateway may still have it subscribed.
    pub(crate) fn remove(&mut self, channel: &str) -> bool {
        let Some(ch) = self.channels.remove(channel) else {
            return false;
        };
        for w in ch.waiters {
            let _ = w.send(Err(Error::Unsubscribed(channel.to_owned())));
        }
        matches!(ch.state, State::Live | State::Subscribing { .. })
    }

    pub(crate) fn contains(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// The channels the client subscribes itself after a reconnect (not the server's).
    pub(crate) fn names(&self) -> Vec<String> {
        self.channels
            .iter()
            .filter(|(_, ch)| !ch.server)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether a server-side subscription waits for the gateway to restore it.
    pub(crate) fn awaiting_server(&self) -> bool {
        self.channels
            .values()
            .any(|ch| ch.server && matches!(ch.state, State::Idle))
    }

    /// Drops the server-side subscriptions the gateway did not restore after a reconnect;
    /// returns their names.
    pub(crate) fn unrestored(&mut self) -> Vec<String> {
        let gone: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.server && matches!(ch.state, State::Idle))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.channels.remove(name);
        }
        gone
    }

    /// The last delivered positions of the server-side subscriptions, for the gateway to
    /// recover them from when it restores them at connect.
    pub(crate) fn server_positions(&self) -> HashMap<String, client::StreamPosition> {
        self.channels
            .iter()
            .filter(|(_, ch)| ch.server)
            .filter_map(|(name, ch)| {
                let last = ch.last.as_ref()?;
                let position = client::StreamPosition {
                    offset: last.offset,
                    epoch: last.epoch.clone(),
                };
                Some((name.clone(), position))
            })
            .collect()
    }

    /// The server subscribed this connection to a channel: it is live from the push's
    /// position, after the publications the push recovered. `None` when the push does not
    /// apply (the client already has the channel live or subscribing).
    pub(crate) fn adopt(&mut self, push: client::Subscribed) -> Option<Subscribed> {
        let channel = push.channel;
        let ch = match self.channels.get_mut(&channel) {
            Some(ch) if ch.server && matches!(ch.state, State::Idle) => ch,
            Some(_) => return None,
            None => self.channels.entry(channel.clone()).or_insert(Channel {
                last: None,
                state: State::Idle,
                waiters: Vec::new(),
                retries: 0,
                own: Vec::new(),
                join_leave: true,
                server: true,
            }),
        };
        ch.state = State::Live;
        let position = Position::new(push.offset, push.epoch);
        let from = ch.last.take();
        let recovered = if push.was_recovering {
            Some(push.recovered)
        } else {
            // Restored without recovery (not asked for): whether anything was missed shows
            // from the positions alone.
            from.as_ref().map(|f| *f == position)
        };
        if !(push.was_recovering && push.recovered) {
            ch.own.clear();
        }
        ch.last = Some(
            match (
                push.was_recovering,
                recovered,
                &from,
                push.publications.first(),
            ) {
                (true, Some(true), Some(from), _) => from.clone(),
                (true, Some(false), _, Some(first)) => {
                    Position::new(first.offset.saturating_sub(1), first.epoch.clone())
                }
                _ => position.clone(),
            },
        );
        let mut recovered_publications = push.publications;
        for p in &mut recovered_publications {
            if p.channel.is_empty() {
                p.channel.clone_from(&channel);
            }
        }
        Some(Subscribed {
            position,
            recovered,
            from,
            recovered_publications,
            held: Vec::new(),
        })
    }

    /// The server unsubscribed this connection from `channel`; returns whether the client
    /// had it.
    pub(crate) fn server_unsubscribed(&mut self, channel: &str) -> bool {
        let Some(ch) = self.channels.remove(channel) else {
            return false;
        };
        for w in ch.waiters {
            let _ = w.send(Err(Error::Unsubscribed(channel.to_owned())));
        }
        true
    }

    /// A `join` or `leave` of `channel` arrived: returns it when it is to be delivered now;
    /// holds it while a subscribe is in flight, drops it when the channel is not live.
    pub(crate) fn presence_event(&mut self, channel: &str, body: push::Body) -> Option<push::Body> {
        let ch = self.channels.get_mut(channel)?;
        match &mut ch.state {
            State::Live => Some(body),
            State::Subscribing { held, .. } => {
                held.push(body);
                None
            }
            State::Idle | State::Retry { .. } => None,
        }
    }

    /// The last delivered position of a channel.
    pub(crate) fn position(&self, channel: &str) -> Option<Position> {
        self.channels.get(channel).and_then(|ch| ch.last.clone())
    }

    /// Subscribe `id` is about to be sent for `channel`: the request, recovering from the
    /// last position when there is one.
    pub(crate) fn subscribing(
        &mut self,
        channel: &str,
        id: u32,
    ) -> Option<client::SubscribeRequest> {
        let ch = self.channels.get_mut(channel)?;
        let (recover, offset, epoch) = match &ch.last {
            Some(p) => (true, p.offset, p.epoch.clone()),
            None => (false, 0, String::new()),
        };
        ch.state = State::Subscribing {
            id,
            held: Vec::new(),
        };
        Some(client::SubscribeRequest {
            channel: channel.to_owned(),
            recover,
            offset,
            epoch,
            no_join_leave: !ch.join_leave,
        })
    }

    /// The channels whose subscribe retry is due at `now`, and when the next one is.
    pub(crate) fn retries(&self, now: Instant) -> Retries {
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (name, ch) in &self.channels {
            if let State::Retry { at } = ch.state {
                if at <= now {
                    due.push(name.clone());
                } else {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        Retries { due, next }
    }

    /// The connection ended: the gateway forgot every subscription with it.
    pub(crate) fn connection_lost(&mut self) {
        for ch in self.channels.values_mut() {
            ch.state = State::Idle;
        }
    }

    /// The client stops: fails the `subscribe` calls still waiting, forgets every channel.
    pub(crate) fn close(&mut self) {
        for (_, ch) in self.channels.drain() {
            for w in ch.waiters {
                let _ = w.send(Err(Error::Closed));
            }
        }
    }

    /// Applies the reply to a subscribe of `channel`.
    pub(crate) fn subscribed(
        &mut self,
        channel: &str,
        r: client::Reply,
        backoff: &Backoff,
    ) -> SubscribeOutcome {
        let Some(ch) = self.channels.get_mut(channel) else {
            return SubscribeOutcome::Stale;
        };
        let held = match &mut ch.state {
            State::Subscribing { id, held } if *id == r.id => std::mem::take(held),
            // A reply superseded by an unsubscribe or a newer subscribe.
            _ => return SubscribeOutcome::Stale,
        };
        if let Some(e) = r.error {
            let retry_at = if subscribe_retryable(e.code) {
                let at = Instant::now() + backoff.delay(ch.retries);
                ch.retries = ch.retries.saturating_add(1);
                ch.state = State::Retry { at };
                Some(at)
            } else {
                if let Some(ch) = self.channels.remove(channel) {
                    for w in ch.waiters {
                        let _ = w.send(Err(Error::server(e.clone())));
                    }
                }
                None
            };
            return SubscribeOutcome::Refused { error: e, retry_at };
        }
        let Some(reply::Result::Subscribe(result)) = r.result else {
            return SubscribeOutcome::Malformed;
        };
        ch.retries = 0;
        ch.state = State::Live;
        if starts_afresh(&result) {
            ch.own.clear();
        }
        let position = Position::new(result.offset, result.epoch);
        let recovered = result.was_recovering.then_some(result.recovered);
        let from = ch.last.take();
        // Publications are judged against the position recovered from. Not recovered but with
        // publications: the channel's new epoch from its start (its old one was lost), which
        // continues from just before the first of them. Otherwise (nothing to recover, or
        // nothing recoverable) the channel continues from the reply's position.
        ch.last = Some(match (recovered, &from, result.publications.first()) {
            (Some(true), Some(from), _) => from.clone(),
            (Some(false), _, Some(first)) => {
                Position::new(first.offset.saturating_sub(1), first.epoch.clone())
            }
            _ => position.clone(),
        });
        let info = SubscribeInfo {
            position: position.clone(),
            recovered,
        };
        for w in ch.waiters.drain(..) {
            let _ = w.send(Ok(info.clone()));
        }
        let mut recovered_publications = result.publications;
        for p in &mut recovered_publications {
            // Recovered publications may leave out the channel the reply is about.
            if p.channel.is_empty() {
                p.channel = channel.to_owned();
            }
        }
        SubscribeOutcome::Live(Subscribed {
            position,
            recovered,
            from,
            recovered_publications,
            held,
        })
    }

    /// Judges a publication against its channel's last delivered position, advancing it
    /// when the publication is the next one.
    pub(crate) fn arrived(&mut self, p: Publication) -> Arrival {
        let Some(ch) = self.channels.get_mut(&p.channel) else {
            return Arrival::Kept; // unsubscribed meanwhile
        };
        let last = match &mut ch.state {
            State::Live => {
                let last = ch.last.get_or_insert_with(Position::default);
                if !ch.own.is_empty() {
                    skip_own(last, &mut ch.own);
                }
                last
            }
            State::Subscribing { held, .. } => {
                held.push(push::Body::Publication(p));
                return Arrival::Kept;
            }
            State::Idle | State::Retry { .. } => return Arrival::Kept,
        };
        match judge(last, p.offset, &p.epoch) {
            Verdict::Next => {
                advance(last, p.offset, &p.epoch);
                Arrival::Deliver(p)
            }
            Verdict::Duplicate => Arrival::Duplicate(p),
            Verdict::Gap => Arrival::Gap {
                last: last.clone(),
                publication: p,
            },
        }
    }

    /// Notes a publication of this client's own that the gateway will not send back.
    pub(crate) fn own_publication(&mut self, channel: &str, at: Position) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        ch.own.push(at);
        if let (State::Live, Some(last)) = (&ch.state, ch.last.as_mut()) {
            skip_own(last, &mut ch.own);
        }
    }
}

/// Advances `last` over the client's own publications that come next, and forgets those
/// already passed.
fn skip_own(last: &mut Position, own: &mut Vec<Position>) {
    while let Some(i) = own
        .iter()
        .position(|o| judge(last, o.offset, &o.epoch) == Verdict::Next)
    {
        let o = own.swap_remove(i);
        advance(last, o.offset, &o.epoch);
    }
    own.retain(|o| judge(last, o.offset, &o.epoch) == Verdict::Gap);
}

/// Whether a subscribe result starts the channel afresh (no recovery from the old position):
/// then the client's own publications noted before it no longer apply.
fn starts_afresh(result: &client::SubscribeResult) -> bool {
    !(result.was_recovering && result.recovered)
}
