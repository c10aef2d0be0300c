//! This node's sessions by user, so that a command for a user (the server API's disconnect,
//! subscribe and unsubscribe, which reach every gateway through the bus's control channel)
//! finds that user's connections here.
//!
//! A session registers once `connect` named its user and leaves in its `Drop`. Commands reach
//! it through a small bounded queue its read loop also waits on; the bus's reader hands them
//! over without waiting, so a session whose queue is full (it is busy with a slow command) is
//! not counted as reached.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Commands one session may have waiting.
pub(crate) const QUEUE: usize = 16;
const SHARDS: usize = 16;

/// What the server asks a session to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    Disconnect {
        code: u16,
        reason: String,
        reconnect: bool,
    },
    Subscribe(String),
    Unsubscribe(String),
}

/// One session's queue of server commands, at most [`QUEUE`] long.
///
/// Why not a tokio channel: every connection has one, and a channel allocates a block of 32
/// slots up front (over a kilobyte for `Control`) that almost no connection ever uses. This
/// holds no allocation until a command arrives.
#[derive(Default)]
pub(crate) struct ControlQueue {
    items: Mutex<VecDeque<Control>>,
    ready: Notify,
}

impl ControlQueue {
    /// Queues a command without waiting; false when the queue is full.
    pub(crate) fn try_push(&self, control: Control) -> bool {
        let mut items = self.items.lock();
        if items.len() >= QUEUE {
            return false;
        }
        items.push_back(control);
        drop(items);
        // A permit is kept when nobody waits yet, so a command is never missed.
        self.ready.notify_one();
        true
    }

    /// The next command. Cancel-safe: a command is taken only when it is returned.
    pub(crate) async fn recv(&self) -> Control {
        loop {
            if let Some(control) = self.items.lock().pop_front() {
                return control;
            }
            self.ready.notified().await;
        }
    }
}

type Entry = (String, Arc<ControlQueue>);
/// One shard: user → that user's sessions here (client id, command queue).
type Shard = Mutex<HashMap<String, Vec<Entry>>>;

pub(crate) struct Sessions {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Sessions {
    fn shard(&self, user: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(user) as usize % SHARDS]
    }

    pub(crate) fn register(&self, user: &str, client: &str, tx: Arc<ControlQueue>) {
        self.shard(user)
            .lock()
            .entry(user.to_owned())
            .or_default()
            .push((client.to_owned(), tx));
    }

    pub(crate) fn unregister(&self, user: &str, client: &str) {
        let mut shard = self.shard(user).lock();
        if let Some(list) = shard.get_mut(user) {
            list.retain(|(c, _)| c != client);
            if list.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// Hands `control` to the user's sessions here (only `client`'s, when given); returns
    /// how many took it.
    pub(crate) fn send(&self, user: &str, client: Option<&str>, control: &Control) -> u64 {
        let shard = self.shard(user).lock();
        let Some(list) = shard.get(user) else {
            return 0;
        };
        list.iter()
            .filter(|(c, _)| client.is_none_or(|want| want == c))
            .filter(|(_, tx)| tx.try_push(control.clone()))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(q: &ControlQueue) -> Option<Control> {
        q.items.lock().pop_front()
    }

    #[tokio::test]
    async fn commands_reach_a_users_sessions_or_one_client_and_never_wait() {
        let sessions = Sessions::default();
        let (a, b) = (
            Arc::new(ControlQueue::default()),
            Arc::new(ControlQueue::default()),
        );
        sessions.register("alice", "c1", a.clone());
        sessions.register("alice", "c2", b.clone());
        let bye = Control::Unsubscribe("x".into());
        assert_eq!(sessions.send("alice", None, &bye), 2);
        assert_eq!(a.recv().await, bye);
        assert_eq!(b.recv().await, bye);
        for _ in 0..QUEUE {
            assert_eq!(sessions.send("alice", Some("c2"), &bye), 1);
        }
        assert_eq!(taken(&a), None, "only c2");
        assert_eq!(
            sessions.send("alice", Some("c2"), &bye),
            0,
            "a full queue does not count"
        );
        assert_eq!(sessions.send("bob", None, &bye), 0);
        sessions.unregister("alice", "c1");
        sessions.unregister("alice", "c2");
        assert_eq!(sessions.send("alice", None, &bye), 0);
    }
}
