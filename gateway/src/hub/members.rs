//! What one Pusher connection knows of a presence channel's members, kept in the hub beside
//! the subscriber so that it changes in the order the channel's joins and leaves arrive.
//!
//! Pusher's members are users, not connections: `member_added` goes out when a user's first
//! connection joins the channel, `member_removed` after their last leaves. The view is the
//! presence snapshot read when the subscription was made (after the bus confirmed the
//! channel, so every later join or leave reaches the hub), then each announcement applied by
//! client id: an announcement the snapshot already reflects changes nothing, so none is lost
//! or counted twice. Announcements that arrive while the subscriber is held are kept (bounded)
//! and applied, after its `subscription_succeeded`, when it goes live.

use std::collections::HashMap;

use bytes::Bytes;
use chorus_bus::Member;
use chorus_protocol::bus::PresenceEvent;
use chorus_protocol::pusher;
use serde_json::value::RawValue;

/// Announcements kept for a held subscriber; past it the subscriber is cut off (its client
/// subscribes again), so that a held subscriber on a churning channel cannot grow memory.
pub(crate) const MAX_PENDING: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct MemberView {
    /// client id → user
    clients: HashMap<String, String>,
    /// user → (connections, user_info JSON)
    users: HashMap<String, (u32, Bytes)>,
}

impl MemberView {
    pub(crate) fn new(members: &[Member]) -> Self {
        let mut view = Self::default();
        for m in members {
            view.join(&m.client, &m.user, &m.info);
        }
        view
    }

    /// Adds a connection; true when it is its user's first.
    fn join(&mut self, client: &str, user: &str, info: &Bytes) -> bool {
        if self.clients.contains_key(client) {
            return false;
        }
        self.clients.insert(client.to_owned(), user.to_owned());
        let entry = self
            .users
            .entry(user.to_owned())
            .or_insert_with(|| (0, info.clone()));
        entry.0 += 1;
        entry.0 == 1
    }

    /// Removes a connection; the user when it was their last.
    fn leave(&mut self, client: &str) -> Option<String> {
        let user = self.clients.remove(client)?;
        let entry = self.users.get_mut(&user)?;
        entry.0 -= 1;
        if entry.0 == 0 {
            self.users.remove(&user);
            return Some(user);
        }
        None
    }

    /// Applies a join or leave; the Pusher message for the client when the members changed.
    pub(crate) fn apply(&mut self, channel: &str, event: &PresenceEvent) -> Option<Bytes> {
        let name = pusher::pusher_name(channel);
        if event.leave {
            let user = self.leave(&event.client)?;
            let data = serde_json::json!({ "user_id": user }).to_string();
            return Some(pusher::message(
                "pusher_internal:member_removed",
                Some(&name),
                &data,
                None,
            ));
        }
        let info = Bytes::clone(&event.info);
        if !self.join(&event.client, &event.user, &info) {
            return None;
        }
        let data = format!(
            "{{\"user_id\":{},\"user_info\":{}}}",
            serde_json::Value::String(event.user.clone()),
            info_json(&info)
        );
        Some(pusher::message(
            "pusher_internal:member_added",
            Some(&name),
            &data,
            None,
        ))
    }

    /// How many distinct users the view holds.
    pub(crate) fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The `presence` object of `subscription_succeeded`: `{ids, hash, count}`.
    pub(crate) fn presence_data(&self) -> String {
        let mut ids: Vec<&String> = self.users.keys().collect();
        ids.sort();
        let hash: Vec<String> = ids
            .iter()
            .map(|id| {
                let info = self.users.get(*id).map_or("null", |(_, i)| info_json(i));
                format!("{}:{info}", serde_json::Value::String((*id).clone()))
            })
            .collect();
        format!(
            "{{\"presence\":{{\"ids\":{},\"hash\":{{{}}},\"count\":{}}}}}",
            serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()),
            hash.join(","),
            ids.len()
        )
    }
}

/// A member's `user_info` as JSON text (`null` when it has none or it is not JSON).
fn info_json(info: &Bytes) -> &str {
    std::str::from_utf8(info)
        .ok()
        .filter(|s| serde_json::from_str::<&RawValue>(s).is_ok())
        .unwrap_or("null")
}

/// A Pusher presence subscriber's state in the hub.
#[derive(Debug, Default)]
pub(crate) struct PusherPresence {
    /// `None` while held.
    pub(crate) view: Option<MemberView>,
    /// Announcements that arrived while held, in order.
    pub(crate) pending: Vec<PresenceEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(leave: bool, client: &str, user: &str) -> PresenceEvent {
        PresenceEvent {
            leave,
            client: client.into(),
            user: user.into(),
            info: Bytes::from_static(br#"{"name":"x"}"#),
        }
    }

    #[test]
    fn members_are_users_and_announcements_already_seen_change_nothing() {
        let snapshot = [Member {
            client: "1.1".into(),
            user: "alice".into(),
            info: Bytes::from_static(br#"{"name":"Alice"}"#),
        }];
        let mut view = MemberView::new(&snapshot);
        assert_eq!(
            view.presence_data(),
            r#"{"presence":{"ids":["alice"],"hash":{"alice":{"name":"Alice"}},"count":1}}"#
        );
        let ch = "pusher-1:presence-r";
        // Alice's own join, already in the snapshot.
        assert_eq!(view.apply(ch, &event(false, "1.1", "alice")), None);
        // Alice again, on another connection: not a new member.
        assert_eq!(view.apply(ch, &event(false, "1.2", "alice")), None);
        let bob = view.apply(ch, &event(false, "2.1", "bob")).unwrap();
        assert_eq!(
            bob,
            r#"{"event":"pusher_internal:member_added","channel":"presence-r","data":"{\"user_id\":\"bob\",\"user_info\":{\"name\":\"x\"}}"}"#
        );
        assert_eq!(view.apply(ch, &event(true, "1.1", "alice")), None);
        let gone = view.apply(ch, &event(true, "1.2", "alice")).unwrap();
        assert_eq!(
            gone,
            r#"{"event":"pusher_internal:member_removed","channel":"presence-r","data":"{\"user_id\":\"alice\"}"}"#
        );
        // A leave for a connection never seen, and a second leave: nothing.
        assert_eq!(view.apply(ch, &event(true, "9.9", "zed")), None);
        assert_eq!(view.apply(ch, &event(true, "1.2", "alice")), None);
    }
}
