//! Commands for every gateway: act on a user's connections wherever they are, or ask each
//! node what it holds. broker-api sends one [`ControlOp`] to all gateways at once (on Redis,
//! one PUBLISH on the control channel, which every gateway's subscriber connection listens
//! to); each gateway answers with a [`ControlReply`], and the caller adds them up.

use serde::{Deserialize, Serialize};

/// Longest reason a server-side disconnect may carry, in bytes (a WebSocket close reason
/// must fit in 123 bytes).
pub const MAX_REASON_LEN: usize = 120;
/// Longest user id a control command may name, in bytes.
pub const MAX_USER_LEN: usize = 256;
/// Most channels one `channels` answer lists.
pub const MAX_CHANNELS_LIMIT: usize = 10_000;
/// Most channels one `subscribers` request may name.
pub const MAX_COUNTED_CHANNELS: usize = 1_000;

/// What to do, on every gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlOp {
    /// Close the user's connections (or only `client`) with `code` and `reason`; `reconnect`
    /// tells clients whether to come back.
    Disconnect {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        code: u16,
        reason: String,
        reconnect: bool,
    },
    /// Subscribe the user's live connections (or only `client`) to `channel`.
    Subscribe {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        channel: String,
    },
    /// Unsubscribe the user's live connections (or only `client`) from `channel`.
    Unsubscribe {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        channel: String,
    },
    /// The channels with local subscribers whose names match `pattern` (`*` matches any
    /// run of characters), at most `limit` of them.
    Channels { pattern: String, limit: usize },
    /// Local subscribers of each named channel (at most [`MAX_COUNTED_CHANNELS`] names);
    /// channels with none are left out of the answer.
    Subscribers { channels: Vec<String> },
}

/// One request on the control channel: the op, and where to answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlRequest {
    #[serde(flatten)]
    pub op: ControlOp,
    /// The Redis list the answer is pushed to; empty on the in-memory bus.
    #[serde(default)]
    pub reply_to: String,
}

/// One gateway's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    pub node: String,
    /// Connections the op was applied to.
    #[serde(default)]
    pub connections: u64,
    /// For `channels` and `subscribers`: (channel, local subscribers), in no particular order.
    #[serde(default)]
    pub channels: Vec<(String, u64)>,
    /// For `channels`: more matched than `limit`.
    #[serde(default)]
    pub truncated: bool,
}

/// What every gateway answered, and how many were asked.
#[derive(Debug, Clone, Default)]
pub struct ControlReplies {
    pub replies: Vec<ControlReply>,
    /// Gateways the request reached; fewer replies than this means some did not answer in
    /// time.
    pub reached: usize,
}

impl ControlReplies {
    /// Connections the op was applied to, across the cluster.
    pub fn connections(&self) -> u64 {
        self.replies.iter().map(|r| r.connections).sum()
    }

    /// Each channel's subscribers summed over the gateways (a channel no gateway listed has
    /// none).
    pub fn subscribers(&self) -> std::collections::HashMap<String, u64> {
        let mut merged = std::collections::HashMap::<String, u64>::new();
        for reply in &self.replies {
            for (channel, n) in &reply.channels {
                *merged.entry(channel.clone()).or_default() += n;
            }
        }
        merged
    }

    /// Channels with their subscribers summed over the gateways, sorted by name, at most
    /// `limit`; and whether more matched.
    pub fn channels(&self, limit: usize) -> (Vec<(String, u64)>, bool) {
        let mut merged = std::collections::BTreeMap::<&str, u64>::new();
        for reply in &self.replies {
            for (channel, n) in &reply.channels {
                *merged.entry(channel).or_default() += n;
            }
        }
        let truncated = merged.len() > limit || self.replies.iter().any(|r| r.truncated);
        let channels = merged
            .into_iter()
            .take(limit)
            .map(|(c, n)| (c.to_owned(), n))
            .collect();
        (channels, truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_travel_as_json_and_answers_add_up() {
        let req = ControlRequest {
            op: ControlOp::Disconnect {
                user: "alice".into(),
                client: None,
                code: 4000,
                reason: "bye".into(),
                reconnect: false,
            },
            reply_to: "k".into(),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.contains(r#""op":"disconnect""#), "{text}");
        let back: ControlRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.op, req.op);

        let replies = ControlReplies {
            replies: vec![
                ControlReply {
                    node: "a".into(),
                    connections: 2,
                    channels: vec![("x".into(), 2), ("y".into(), 1)],
                    truncated: false,
                },
                ControlReply {
                    node: "b".into(),
                    connections: 1,
                    channels: vec![("x".into(), 3)],
                    truncated: false,
                },
            ],
            reached: 2,
        };
        assert_eq!(replies.connections(), 3);
        assert_eq!(
            replies.channels(10),
            (vec![("x".into(), 5), ("y".into(), 1)], false)
        );
        assert_eq!(replies.channels(1), (vec![("x".into(), 5)], true));
        let counts = replies.subscribers();
        assert_eq!((counts["x"], counts["y"], counts.len()), (5, 1, 2));
    }
}
