//! Presence: which connections are subscribed to a channel whose namespace keeps it, and the
//! join/leave announcements that travel with the channel's publications.
//!
//! Both backends share what is here: the entry types, the JSON an entry is stored as, and the
//! envelope a join or leave is announced in. An announcement is an [`Envelope`] with
//! `presence` set and no offset: it is not kept in history, and it reaches every gateway on
//! the channel's own pub/sub stream, so it is ordered with the channel's publications.

use std::collections::HashSet;

use bytes::Bytes;
use chorus_protocol::bus::PresenceEvent;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{BusError, Envelope, now_ms};

/// One subscribed connection in a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// The connection's id.
    pub client: String,
    /// The token's user; empty for an anonymous connection.
    pub user: String,
    /// The token's `info` claim as JSON text; empty when it has none.
    pub info: Bytes,
}

/// How many connections, and how many distinct users among them, a channel's presence holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PresenceStats {
    pub clients: u32,
    pub users: u32,
}

impl PresenceStats {
    pub fn of(members: &[Member]) -> Self {
        let users: HashSet<&str> = members.iter().map(|m| m.user.as_str()).collect();
        Self {
            clients: u32::try_from(members.len()).unwrap_or(u32::MAX),
            users: u32::try_from(users.len()).unwrap_or(u32::MAX),
        }
    }
}

/// The stored form of an entry: the member (its client id is the hash field), the node that
/// holds the connection, and whether its namespace announces joins and leaves (so that whoever
/// removes it — its own node or a survivor reaping a dead one — knows whether to announce).
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredEntry<'a> {
    #[serde(borrow)]
    pub(crate) user: std::borrow::Cow<'a, str>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub(crate) info: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) node: std::borrow::Cow<'a, str>,
    #[serde(default)]
    pub(crate) announce: bool,
}

impl StoredEntry<'_> {
    pub(crate) fn encode(member: &Member, node: &str, announce: bool) -> String {
        let info = std::str::from_utf8(&member.info)
            .ok()
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
        let entry = StoredEntry {
            user: member.user.as_str().into(),
            info,
            node: node.into(),
            announce,
        };
        // Strings, a bool and an already-valid RawValue cannot fail to serialise.
        serde_json::to_string(&entry).unwrap_or_default()
    }

    pub(crate) fn decode(text: &str) -> Result<StoredEntry<'_>, BusError> {
        serde_json::from_str(text)
            .map_err(|e| BusError::Protocol(format!("a presence entry is not valid: {e}")))
    }

    pub(crate) fn member(&self, client: &str) -> Member {
        Member {
            client: client.to_owned(),
            user: self.user.to_string(),
            info: self
                .info
                .map_or_else(Bytes::new, |i| Bytes::copy_from_slice(i.get().as_bytes())),
        }
    }
}

/// The envelope announcing that `member` joined or left `channel`. Its sender is excluded:
/// a connection is not told of its own join.
pub(crate) fn announcement(channel: &str, member: &Member, leave: bool) -> Envelope {
    Envelope {
        channel: channel.to_owned(),
        published_at_ms: now_ms(),
        exclude_client: member.client.clone(),
        presence: Some(PresenceEvent {
            leave,
            client: member.client.clone(),
            user: member.user.clone(),
            info: member.info.clone(),
        }),
        ..Envelope::default()
    }
}

pub(crate) fn announcement_bytes(channel: &str, member: &Member, leave: bool) -> Vec<u8> {
    announcement(channel, member, leave).encode_to_vec()
}

/// The field of a node's presence index for one entry: the channel and the client, which
/// never contain a newline.
pub(crate) fn index_field(channel: &str, client: &str) -> String {
    format!("{channel}\n{client}")
}

pub(crate) fn split_index_field(field: &str) -> Option<(&str, &str)> {
    field.split_once('\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_its_info_as_json_and_its_announce_flag() {
        let member = Member {
            client: "gw-1-1".into(),
            user: "alice".into(),
            info: Bytes::from_static(br#"{"name":"Alice"}"#),
        };
        let text = StoredEntry::encode(&member, "gw-1", true);
        let back = StoredEntry::decode(&text).unwrap();
        assert_eq!(back.member("gw-1-1"), member);
        assert_eq!(back.node, "gw-1");
        assert!(back.announce);
        let bare = Member {
            info: Bytes::new(),
            ..member
        };
        let text = StoredEntry::encode(&bare, "gw-1", false);
        assert!(!text.contains("info"), "{text}");
        assert_eq!(StoredEntry::decode(&text).unwrap().member("gw-1-1"), bare);
        assert!(StoredEntry::decode("{").is_err());
    }

    #[test]
    fn stats_count_connections_and_distinct_users() {
        let m = |client: &str, user: &str| Member {
            client: client.into(),
            user: user.into(),
            info: Bytes::new(),
        };
        let stats = PresenceStats::of(&[m("1", "a"), m("2", "a"), m("3", "b")]);
        assert_eq!(
            stats,
            PresenceStats {
                clients: 3,
                users: 2
            }
        );
    }
}
