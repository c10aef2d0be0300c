//! This node's sessions by user, so that a command for a user (the server API's disconnect,
//! subscribe and unsubscribe, which reach every gateway through the bus's control channel)
//! finds that user's connections here.
//!
//! A session registers once `connect` named its user and leaves in its `Drop`. Commands reach
//! it through a small bounded queue its read loop also waits on; the bus's reader hands them
//! over without waiting, so a session whose queue is full (it is busy with a slow command) is
//! not counted as reached.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use parking_lot::Mutex;
use tokio::sync::mpsc;

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

type Entry = (String, mpsc::Sender<Control>);
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

    pub(crate) fn register(&self, user: &str, client: &str, tx: mpsc::Sender<Control>) {
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
            .filter(|(_, tx)| tx.try_send(control.clone()).is_ok())
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_reach_a_users_sessions_or_one_client_and_never_wait() {
        let sessions = Sessions::default();
        let (a, mut a_rx) = mpsc::channel(1);
        let (b, mut b_rx) = mpsc::channel(1);
        sessions.register("alice", "c1", a);
        sessions.register("alice", "c2", b);
        let bye = Control::Unsubscribe("x".into());
        assert_eq!(sessions.send("alice", None, &bye), 2);
        assert_eq!(a_rx.try_recv().unwrap(), bye);
        assert_eq!(b_rx.try_recv().unwrap(), bye);
        assert_eq!(sessions.send("alice", Some("c2"), &bye), 1);
        assert!(a_rx.try_recv().is_err(), "only c2");
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
