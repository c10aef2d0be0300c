//! Presence on Redis: each channel's entries in one hash, each node's entries indexed under
//! the node, and dead nodes reaped by exactly one survivor.
//!
//! - `keys::presence(channel)` (hash, client id → entry) is what readers see. Entries are
//!   added by `join.lua` and removed by `leave.lua`; each script announces the change on the
//!   channel's pub/sub stream in the same atomic step, *gated on the change happening* (the
//!   entry was new / was there). That gate is what makes every join and leave announced
//!   exactly once, whoever writes it and however often.
//! - `keys::node_presence(node)` (hash, `channel\nclient` → entry) indexes a node's entries.
//!   It outlives the node's lease (it expires after the reaping window, `REAP_WINDOW_LEASES`
//!   leases), so that when the node dies a survivor can find and remove its entries.
//! - A reader keeps only entries whose node is live (its lease in the future), so a dead
//!   node's connections vanish from presence the moment its lease runs out, before anyone has
//!   reaped them. Entries of nodes that are not even in the registry any more (dead longer than
//!   the window, with no survivor to reap them) are removed by the reader, announced once like
//!   any other leave.
//! - Every gateway looks for dead nodes every [`REAP_EVERY`]: a node whose lease ran out (and
//!   not longer ago than the window) is claimed with `SET NX PX lease` on
//!   `keys::node_reaper(node)`; the claimer removes every indexed entry through `leave.lua`,
//!   then the node's keys and its registry member. A reaper that dies mid-way loses its claim
//!   with its lease and another takes over; entries already removed are not announced twice.

use std::collections::HashMap;
use std::time::Duration;

use redis::{Script, Value};

use super::RedisBus;
use super::cluster::Conn;
use super::connect::redis_error;
use crate::presence::{Member, StoredEntry, announcement_bytes, index_field, split_index_field};
use crate::pusher::{WEBHOOK_QUEUE_MAX, WebhookEvent};
use crate::{BusError, keys};

/// A node's presence index, and dead nodes waiting to be reaped, are kept this many leases.
pub(crate) const REAP_WINDOW_LEASES: u32 = 12;
/// How often a gateway looks for dead nodes to reap.
pub(crate) const REAP_EVERY: Duration = Duration::from_millis(500);
/// Entries read per HSCAN step when reaping or rewriting.
const SCAN_COUNT: usize = 500;

pub(crate) const JOIN_LUA: &str = include_str!("lua/join.lua");
pub(crate) const LEAVE_LUA: &str = include_str!("lua/leave.lua");
const DEAD_NODES_LUA: &str = include_str!("lua/dead_nodes.lua");

pub(crate) struct Scripts {
    join: Script,
    leave: Script,
    dead_nodes: Script,
}

impl Scripts {
    /// The scripts for one Redis, or for a cluster (announcing on sharded pub/sub).
    pub(crate) fn new(on_cluster: bool) -> Self {
        let text = |source: &str| {
            if on_cluster {
                super::cluster::sharded_script(source)
            } else {
                source.to_owned()
            }
        };
        Self {
            join: Script::new(&text(JOIN_LUA)),
            leave: Script::new(&text(LEAVE_LUA)),
            dead_nodes: Script::new(DEAD_NODES_LUA),
        }
    }
}

/// What a join did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Joined {
    Added,
    Refreshed,
    Full,
}

impl RedisBus {
    pub(crate) fn reap_window(&self) -> Duration {
        self.config.node_lease * REAP_WINDOW_LEASES
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.reap_window().as_millis()).unwrap_or(u64::MAX)
    }

    /// The channel's members on live nodes. Entries of nodes no longer in the registry are
    /// removed (and their leaves announced) on the way.
    pub(crate) async fn presence(&self, channel: &str) -> Result<Vec<Member>, BusError> {
        let (members, orphans) = self
            .with_conn("the presence query", async |conn| {
                self.read_presence(conn, channel).await
            })
            .await?;
        if !orphans.is_empty() {
            let removal = self
                .with_conn("removing orphaned presence entries", async |conn| {
                    for (member, announce) in &orphans {
                        self.leave_in(conn, channel, member, *announce).await?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = removal {
                tracing::warn!(channel, error = %e, "removing orphaned presence entries failed");
            }
        }
        Ok(members)
    }

    async fn read_presence(
        &self,
        conn: &mut Conn<'_>,
        channel: &str,
    ) -> Result<(Vec<Member>, Vec<(Member, bool)>), BusError> {
        let mut invocation = self.live_nodes_script.key(keys::nodes());
        invocation.arg(self.window_ms());
        let live: Vec<String> = invocation
            .invoke_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        let (registered, entries): (Vec<String>, HashMap<String, String>) = redis::pipe()
            .cmd("ZRANGE")
            .arg(keys::nodes())
            .arg(0)
            .arg(-1)
            .cmd("HGETALL")
            .arg(keys::presence(channel))
            .query_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        let mut members = Vec::with_capacity(entries.len());
        let mut orphans = Vec::new();
        for (client, text) in &entries {
            let entry = StoredEntry::decode(text)?;
            if live.iter().any(|n| *n == entry.node) {
                members.push(entry.member(client));
            } else if !registered.iter().any(|n| *n == entry.node) {
                orphans.push((entry.member(client), entry.announce));
            }
        }
        Ok((members, orphans))
    }

    /// Adds `member` to `channel`'s presence for `node`, announcing it if `announce`.
    pub(crate) async fn join_in(
        &self,
        conn: &mut Conn<'_>,
        node: &str,
        channel: &str,
        member: &Member,
        announce: bool,
        max: u32,
    ) -> Result<Joined, BusError> {
        let entry = StoredEntry::encode(member, node, announce);
        let index = keys::node_presence(node);
        // The index first: an entry Redis holds must always be findable by a reaper.
        redis::pipe()
            .cmd("HSET")
            .arg(&index)
            .arg(index_field(channel, &member.client))
            .arg(&entry)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&index)
            .arg(self.window_ms())
            .ignore()
            .exec_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        let envelope = if announce {
            announcement_bytes(channel, member, false)
        } else {
            Vec::new()
        };
        let (app, event) = self
            .webhook_for(channel, "member_added", |channel| {
                WebhookEvent::MemberAdded {
                    channel,
                    user_id: member.user.clone(),
                }
            })
            .unwrap_or_default();
        let mut invocation = self.presence_scripts.join.key(keys::presence(channel));
        self.webhook_stream(&mut invocation);
        invocation
            .arg(&member.client)
            .arg(&entry)
            .arg(max)
            .arg(envelope)
            .arg(keys::pubsub(channel))
            .arg(&app)
            .arg(&event)
            .arg(&member.user)
            .arg(WEBHOOK_QUEUE_MAX);
        let added: i64 = invocation
            .invoke_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        self.queue_due_webhook(conn, added, &app, &event).await;
        Ok(match added {
            1 | 2 => Joined::Added,
            0 => Joined::Refreshed,
            _ => {
                // Not in the channel: not in the index either.
                let _: Result<(), _> = redis::cmd("HDEL")
                    .arg(&index)
                    .arg(index_field(channel, &member.client))
                    .exec_async(conn)
                    .await;
                Joined::Full
            }
        })
    }

    /// Removes `member` from `channel`'s presence, announcing it if `announce` and it was
    /// there. Does not touch any node's index.
    pub(crate) async fn leave_in(
        &self,
        conn: &mut Conn<'_>,
        channel: &str,
        member: &Member,
        announce: bool,
    ) -> Result<bool, BusError> {
        let envelope = if announce {
            announcement_bytes(channel, member, true)
        } else {
            Vec::new()
        };
        let (app, event) = self
            .webhook_for(channel, "member_removed", |channel| {
                WebhookEvent::MemberRemoved {
                    channel,
                    user_id: member.user.clone(),
                }
            })
            .unwrap_or_default();
        let mut invocation = self.presence_scripts.leave.key(keys::presence(channel));
        self.webhook_stream(&mut invocation);
        invocation
            .arg(&member.client)
            .arg(envelope)
            .arg(keys::pubsub(channel))
            .arg(&app)
            .arg(&event)
            .arg(&member.user)
            .arg(WEBHOOK_QUEUE_MAX);
        let removed: i64 = invocation
            .invoke_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        self.queue_due_webhook(conn, removed, &app, &event).await;
        Ok(removed >= 1)
    }

    /// Removes `member` from `channel` and from `node`'s index.
    pub(crate) async fn leave_node_entry(
        &self,
        conn: &mut Conn<'_>,
        node: &str,
        channel: &str,
        member: &Member,
        announce: bool,
    ) -> Result<(), BusError> {
        self.leave_in(conn, channel, member, announce).await?;
        redis::cmd("HDEL")
            .arg(keys::node_presence(node))
            .arg(index_field(channel, &member.client))
            .exec_async(conn)
            .await
            .map_err(|e| redis_error(&e))
    }

    /// Nodes whose lease ran out within the reaping window.
    pub(crate) async fn dead_nodes(&self, conn: &mut Conn<'_>) -> Result<Vec<String>, BusError> {
        let mut invocation = self.presence_scripts.dead_nodes.key(keys::nodes());
        invocation.arg(self.window_ms());
        invocation
            .invoke_async(conn)
            .await
            .map_err(|e| redis_error(&e))
    }

    /// Claims a dead node for reaping by `me`; false when another node holds the claim.
    pub(crate) async fn claim_reap(
        &self,
        conn: &mut Conn<'_>,
        dead: &str,
        me: &str,
    ) -> Result<bool, BusError> {
        let claimed: Value = redis::cmd("SET")
            .arg(keys::node_reaper(dead))
            .arg(me)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(self.config.node_lease.as_millis()).unwrap_or(u64::MAX))
            .query_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(!matches!(claimed, Value::Nil))
    }

    /// Removes every presence entry `node` indexed (announcing the leaves its namespaces
    /// announce), then the index, a chunk per round trip to the pool so that each step stays
    /// within the Redis timeout however many entries there are. Returns how many entries
    /// were removed.
    pub(crate) async fn clear_node_presence(&self, node: &str) -> Result<usize, BusError> {
        let mut removed = 0;
        loop {
            let (read, gone) = self
                .with_conn("clearing a node's presence", async |conn| {
                    self.clear_chunk(conn, node).await
                })
                .await?;
            removed += gone;
            if read == 0 {
                return Ok(removed);
            }
        }
    }

    /// One chunk of [`RedisBus::clear_node_presence`]: how many index entries it read and
    /// how many presence entries it removed.
    async fn clear_chunk(
        &self,
        conn: &mut Conn<'_>,
        node: &str,
    ) -> Result<(usize, usize), BusError> {
        let index = keys::node_presence(node);
        // Each chunk deletes what it read, so scanning from 0 again finds the rest.
        let (_, fields): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(&index)
            .arg(0)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        if fields.is_empty() {
            return Ok((0, 0));
        }
        let mut removed = 0;
        for (field, text) in &fields {
            let Some((channel, client)) = split_index_field(field) else {
                continue;
            };
            if let Ok(entry) = StoredEntry::decode(text) {
                let member = entry.member(client);
                if self
                    .leave_in(conn, channel, &member, entry.announce)
                    .await?
                {
                    removed += 1;
                }
            }
        }
        let mut del = redis::cmd("HDEL");
        del.arg(&index);
        for (field, _) in &fields {
            del.arg(field);
        }
        del.exec_async(conn).await.map_err(|e| redis_error(&e))?;
        Ok((fields.len(), removed))
    }

    /// Reaps a dead node: its presence entries, then its registry keys and member.
    pub(crate) async fn reap(&self, dead: &str) -> Result<usize, BusError> {
        let removed = self.clear_node_presence(dead).await?;
        self.clear_node_occupancy(dead).await?;
        self.with_conn("removing a dead node", async |conn| {
            redis::pipe()
                .cmd("DEL")
                .arg(keys::node(dead))
                .ignore()
                .cmd("DEL")
                .arg(keys::node_connections(dead))
                .ignore()
                .cmd("ZREM")
                .arg(keys::nodes())
                .arg(dead)
                .ignore()
                .exec_async(conn)
                .await
                .map_err(|e| redis_error(&e))
        })
        .await?;
        Ok(removed)
    }

    /// The entries `node`'s index holds in Redis, by index field.
    pub(crate) async fn node_index(
        &self,
        conn: &mut Conn<'_>,
        node: &str,
    ) -> Result<HashMap<String, String>, BusError> {
        redis::cmd("HGETALL")
            .arg(keys::node_presence(node))
            .query_async(conn)
            .await
            .map_err(|e| redis_error(&e))
    }
}

/// Every [`REAP_EVERY`] (or a third of the lease, if shorter), until cancelled: looks for
/// nodes whose lease ran out and reaps each one this node can claim, so that their presence
/// entries go and each leave is announced once. A task of its own, so that reaping a large
/// node never delays the registry's lease refresh.
pub(crate) async fn reap_loop(
    bus: std::sync::Arc<RedisBus>,
    me: String,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(REAP_EVERY.min(bus.config.node_lease / 3));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => reap_dead(&bus, &me).await,
        }
    }
}

async fn reap_dead(bus: &RedisBus, me: &str) {
    let claimed = bus
        .with_conn("looking for dead nodes", async |conn| {
            let mut claimed = Vec::new();
            for dead in bus.dead_nodes(conn).await? {
                if dead != me && bus.claim_reap(conn, &dead, me).await? {
                    claimed.push(dead);
                }
            }
            Ok(claimed)
        })
        .await;
    let claimed = match claimed {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::debug!(node = %me, error = %e, "looking for dead nodes failed");
            return;
        }
    };
    for dead in claimed {
        match bus.reap(&dead).await {
            Ok(removed) => {
                crate::metrics::node_reaped(removed);
                tracing::info!(node = %me, dead = %dead, presence_entries = removed,
                    "reaped a dead node");
            }
            Err(e) => tracing::warn!(node = %me, dead = %dead, error = %e,
                "reaping a dead node failed; it is retried once the claim expires"),
        }
    }
}
