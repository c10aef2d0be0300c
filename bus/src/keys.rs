//! The Redis key layout, in one place.
//!
//! Every key and pub/sub channel of a Chorus channel carries the channel name in a `{...}`
//! hash tag, so all of one channel's keys hash to one slot and the layout works unchanged on
//! Redis Cluster. Channel names cannot contain braces (see `chorus_protocol::channel`).

/// Prefix of every key Chorus writes.
pub const PREFIX: &str = "chorus";

/// The pub/sub channel that carries a channel's envelopes.
pub fn pubsub(channel: &str) -> String {
    format!("{PREFIX}.pub.{{{channel}}}")
}

/// The channel name back from its pub/sub channel, if it is one of Chorus's.
pub fn channel_of_pubsub(pubsub: &str) -> Option<&str> {
    pubsub
        .strip_prefix(PREFIX)?
        .strip_prefix(".pub.{")?
        .strip_suffix('}')
}

/// Hash with a channel's metadata: `epoch` and `offset` (the newest publication's offset).
pub fn meta(channel: &str) -> String {
    format!("{PREFIX}:meta:{{{channel}}}")
}

/// Stream with a channel's recent publications (entry id `<offset>-0`, field `e` = the
/// encoded envelope); trimmed to the namespace's history size, expires with its history TTL.
pub fn history(channel: &str) -> String {
    format!("{PREFIX}:history:{{{channel}}}")
}

/// A publish's idempotency key on a channel: `<offset>:<epoch>` of the first publish with it.
pub fn idempotency(channel: &str, key: &str) -> String {
    format!("{PREFIX}:idem:{{{channel}}}:{key}")
}

/// What every canary channel's name starts with.
pub const CANARY_PREFIX: &str = "chorus.canary.";

/// The pub/sub channel a node sends its canary on (and is subscribed to).
pub fn canary(node: &str) -> String {
    format!("{CANARY_PREFIX}{{{node}}}")
}

/// Sorted set of live node ids, scored by lease expiry (ms since the Unix epoch).
pub fn nodes() -> String {
    format!("{PREFIX}:nodes")
}

/// Hash with one node's description (`address`, `started_at_ms`); expires with its lease.
pub fn node(id: &str) -> String {
    format!("{PREFIX}:node:{{{id}}}")
}

/// Hash of one node's connections: client id → JSON `{user, connected_at_ms}`; expires with
/// the node's lease.
pub fn node_connections(id: &str) -> String {
    format!("{PREFIX}:node:{{{id}}}:conns")
}

/// The control channel every gateway listens to (server API commands for all nodes).
pub fn control() -> String {
    format!("{PREFIX}.control")
}

/// The list one control request's answers are pushed to.
pub fn control_reply(id: &str) -> String {
    format!("{PREFIX}:control:{{{id}}}")
}

/// A channel's presence: client id → entry (see `presence.rs`).
pub fn presence(channel: &str) -> String {
    format!("{PREFIX}:presence:{{{channel}}}")
}

/// Stream of Pusher webhook events waiting for delivery (fields `a` = app id, `e` = the
/// event's JSON), read by broker-api through the consumer group [`WEBHOOK_GROUP`].
pub fn webhooks() -> String {
    format!("{PREFIX}:webhooks")
}

/// The consumer group of the webhook stream.
pub const WEBHOOK_GROUP: &str = "chorus-webhooks";

/// Set of the nodes that hold subscribers of a channel (for occupancy webhooks).
pub fn occupancy(channel: &str) -> String {
    format!("{PREFIX}:occupancy:{{{channel}}}")
}

/// A node's occupancy index: channel → app id, for every channel the node counts as
/// occupied, so that a survivor can vacate them when the node dies.
pub fn node_occupancy(id: &str) -> String {
    format!("{PREFIX}:node:{{{id}}}:occupancy")
}

/// A node's presence index: `channel\nclient` → entry, for every presence entry the node
/// holds, so that a survivor can remove them all when the node dies.
pub fn node_presence(id: &str) -> String {
    format!("{PREFIX}:node:{{{id}}}:presence")
}

/// Who is reaping a dead node (set with NX and a lease, so one survivor does it at a time).
pub fn node_reaper(id: &str) -> String {
    format!("{PREFIX}:node:{{{id}}}:reaper")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_names_round_trip_and_carry_a_hash_tag() {
        let p = pubsub("chat:room");
        assert_eq!(p, "chorus.pub.{chat:room}");
        assert_eq!(channel_of_pubsub(&p), Some("chat:room"));
        assert_eq!(channel_of_pubsub("other"), None);
        assert_eq!(meta("news"), "chorus:meta:{news}");
        assert_eq!(history("news"), "chorus:history:{news}");
        assert_eq!(idempotency("news", "k1"), "chorus:idem:{news}:k1");
        // A canary never reads as a channel.
        assert_eq!(channel_of_pubsub(&canary("n1")), None);
        assert_eq!(canary("n1"), format!("{PREFIX}.canary.{{n1}}"));
    }
}
