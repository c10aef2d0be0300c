//! Commands waiting for their reply: those in flight on the current connection, and those
//! the application issued while there was no connection.
//!
//! **In flight.** Every command the task sends gets a fresh non-zero id on its connection (0
//! is what a push carries), and [`InFlight`] remembers what each id was for, so its reply
//! goes where it belongs: the `connect` reply starts the session, a subscribe reply makes a
//! channel live, a request's reply answers the handle call that sent it. Each command also
//! has a deadline. Deadlines are kept in send order and only the oldest unanswered one
//! matters: the timer looks at the front of the queue and drops answered entries as it meets
//! them, so a reply costs one map removal and no search. A missed deadline means the
//! connection is dead (the gateway answers every command), and the task replaces it.
//!
//! **Deferred.** A publish, history or ping issued while disconnected is not failed at once:
//! it waits in [`Deferred`] for the next connection, up to the deadline the handle gave it
//! (the command timeout), and is sent after `connect` succeeds, in the order issued. One
//! that outlives its deadline fails with [`Error::Timeout`]; past [`MAX_DEFERRED`] waiting,
//! a new one fails at once with [`Error::TooManyWaiting`].
//!
//! When a connection ends, what was in flight fails with [`Error::Disconnected`] and is not
//! resent: a publish may have been stored, and only the application can decide whether to
//! publish it again.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chorus_protocol::client::{command, reply};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::Error;

/// Where the task answers a handle call.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// What a command in flight was sent for.
pub(crate) enum Pending {
    /// The `connect` that opens every session.
    Connect,
    Subscribe {
        channel: String,
    },
    /// `reply` is `None` for the unsubscribe the task sends itself before resubscribing.
    Unsubscribe {
        reply: Option<Reply<()>>,
    },
    /// The ping sent after a reconnect's resubscribes when server-side subscriptions wait to
    /// be restored: the gateway restores them before it answers, so those still waiting at
    /// its reply are not coming back.
    Restored,
    /// A publish, history or ping from the handle.
    Request {
        reply: Reply<reply::Result>,
        /// For a publish without echo: its channel, to skip its offset.
        own: Option<String>,
    },
}

/// When the reply to command `id` is due.
struct Deadline {
    at: Instant,
    id: u32,
}

/// What the deadlines of the commands in flight say.
pub(crate) enum Deadlines {
    /// Command `id` was not answered in time: the connection is dead.
    Missed(u32),
    /// The oldest unanswered command is due at this instant.
    Next(Instant),
    /// Nothing is in flight.
    Clear,
}

/// The commands in flight on one connection.
#[derive(Default)]
pub(crate) struct InFlight {
    last_id: u32,
    commands: HashMap<u32, Pending>,
    /// In send order.
    deadlines: VecDeque<Deadline>,
}

impl InFlight {
    /// A fresh id: never 0, wrapping to 1 after `u32::MAX`.
    pub(crate) fn next_id(&mut self) -> u32 {
        self.last_id = self.last_id.checked_add(1).unwrap_or(1);
        self.last_id
    }

    /// Remembers command `id` until its reply, due `at`.
    pub(crate) fn expect(&mut self, id: u32, pending: Pending, at: Instant) {
        self.commands.insert(id, pending);
        self.deadlines.push_back(Deadline { at, id });
    }

    /// The command a reply answers, if it is still waited for.
    pub(crate) fn answered(&mut self, id: u32) -> Option<Pending> {
        self.commands.remove(&id)
    }

    /// Checks the oldest unanswered command's deadline. A missed request fails with
    /// [`Error::Timeout`] (`timeout` is what it was given).
    pub(crate) fn check(&mut self, now: Instant, timeout: Duration) -> Deadlines {
        while let Some(&Deadline { at, id }) = self.deadlines.front() {
            if !self.commands.contains_key(&id) {
                self.deadlines.pop_front();
                continue;
            }
            if at <= now {
                if let Some(Pending::Request { reply, .. }) = self.commands.remove(&id) {
                    let _ = reply.send(Err(Error::Timeout(timeout)));
                }
                return Deadlines::Missed(id);
            }
            return Deadlines::Next(at);
        }
        Deadlines::Clear
    }

    /// The connection ended: answers what was in flight.
    pub(crate) fn connection_lost(&mut self) {
        for (_, pending) in self.commands.drain() {
            match pending {
                Pending::Request { reply, .. } => {
                    let _ = reply.send(Err(Error::Disconnected));
                }
                // The gateway forgets a connection's subscriptions with it.
                Pending::Unsubscribe { reply: Some(reply) } => {
                    let _ = reply.send(Ok(()));
                }
                _ => {}
            }
        }
    }
}

/// A request issued while disconnected.
pub(crate) struct DeferredRequest {
    pub(crate) body: command::Body,
    pub(crate) deadline: Instant,
    pub(crate) reply: Reply<reply::Result>,
}

/// Most requests that wait for a connection at once: an application that keeps publishing
/// while the gateway is unreachable is told at once (`Error::TooManyWaiting`) rather than
/// growing the client's memory until each request's timeout.
pub(crate) const MAX_DEFERRED: usize = 1024;

/// Requests waiting for the next connection, in the order issued.
#[derive(Default)]
pub(crate) struct Deferred {
    requests: VecDeque<DeferredRequest>,
}

impl Deferred {
    /// Queues a request, or fails it with [`Error::TooManyWaiting`] past [`MAX_DEFERRED`].
    pub(crate) fn push(&mut self, request: DeferredRequest) {
        if self.requests.len() >= MAX_DEFERRED {
            let _ = request.reply.send(Err(Error::TooManyWaiting(MAX_DEFERRED)));
            return;
        }
        self.requests.push_back(request);
    }

    /// The oldest request, to send now that a connection is up.
    pub(crate) fn pop(&mut self) -> Option<DeferredRequest> {
        self.requests.pop_front()
    }

    /// The earliest of `until` and every request's deadline.
    pub(crate) fn wake(&self, until: Instant) -> Instant {
        self.requests
            .iter()
            .map(|r| r.deadline)
            .fold(until, Instant::min)
    }

    /// Fails the requests whose deadline has passed with [`Error::Timeout`].
    pub(crate) fn expire(&mut self, now: Instant, timeout: Duration) {
        let (expired, kept) = self.requests.drain(..).partition(|r| r.deadline <= now);
        self.requests = kept;
        for r in expired {
            let _ = r.reply.send(Err(Error::Timeout(timeout)));
        }
    }

    /// The client stops: fails every request with [`Error::Closed`].
    pub(crate) fn close(&mut self) {
        for r in self.requests.drain(..) {
            let _ = r.reply.send(Err(Error::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_protocol::client::PingRequest;

    fn request() -> (
        DeferredRequest,
        oneshot::Receiver<Result<reply::Result, Error>>,
    ) {
        let (reply, answer) = oneshot::channel();
        let request = DeferredRequest {
            body: command::Body::Ping(PingRequest {}),
            deadline: Instant::now() + Duration::from_secs(60),
            reply,
        };
        (request, answer)
    }

    #[test]
    fn requests_past_the_bound_are_refused_at_once() {
        let mut deferred = Deferred::default();
        let mut waiting = Vec::new();
        for _ in 0..MAX_DEFERRED {
            let (r, answer) = request();
            deferred.push(r);
            waiting.push(answer);
        }
        let (r, mut refused) = request();
        deferred.push(r);
        assert!(matches!(
            refused.try_recv(),
            Ok(Err(Error::TooManyWaiting(MAX_DEFERRED)))
        ));
        assert!(
            waiting[0].try_recv().is_err(),
            "the waiting ones still wait"
        );
        deferred.pop();
        let (r, mut admitted) = request();
        deferred.push(r);
        assert!(admitted.try_recv().is_err(), "room again once one is sent");
    }
}
