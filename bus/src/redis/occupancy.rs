//! Channel occupancy for Pusher's `channel_occupied` and `channel_vacated` webhooks: exactly
//! one event when a channel gains its first subscriber anywhere in the cluster, one when it
//! loses its last.
//!
//! Why per node and not per connection: a node wants a channel from its first local
//! subscriber to its last ([`Wanted`]), so the cluster's channel is occupied while at least
//! one node wants it. Each channel has a set of the nodes that want it
//! (`keys::occupancy`); `occupancy.lua` adds or removes one node and queues the webhook event
//! in the same step when the set goes from empty to one or from one to empty, so concurrent
//! nodes can never both (or neither) report it.
//!
//! Why a task reconciling a set, like the subscriber: the hub changes the wanted set on its
//! hot path and must not wait; the task diffs the channels this node counts as occupied
//! against the wanted ones (only channels of apps that want occupancy webhooks) and writes
//! the difference. Churn costs nothing: a channel wanted and unwanted before the task looks
//! is never written. A failed write is retried a second later.
//!
//! Why an index: a node killed with SIGKILL cannot leave its channels. Each channel it counts
//! is also in its occupancy index (`keys::node_occupancy`, expiring with the reaping window
//! like the presence index); the survivor that reaps the node removes it from each of those
//! channels' sets, queuing `channel_vacated` where it was the last.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio_util::sync::CancellationToken;

use super::RedisBus;
use super::cluster::Conn;
use super::connect::redis_error;
use crate::pusher::{WEBHOOK_QUEUE_MAX, WebhookEvent};
use crate::wanted::Wanted;
use crate::{BusError, keys};

const OCCUPANCY_LUA: &str = include_str!("lua/occupancy.lua");
/// How long after a failed write the task tries again.
const RETRY: Duration = Duration::from_secs(1);

pub(crate) fn occupancy_script() -> Script {
    Script::new(OCCUPANCY_LUA)
}

pub(crate) struct Occupancy {
    bus: Arc<RedisBus>,
    node: String,
    wanted: Arc<Wanted>,
    /// The channels this node is counted in, as Redis last confirmed.
    occupied: HashSet<String>,
}

impl Occupancy {
    pub(crate) fn new(bus: Arc<RedisBus>, node: String, wanted: Arc<Wanted>) -> Self {
        Self {
            bus,
            node,
            wanted,
            occupied: HashSet::new(),
        }
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let mut behind = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wanted.occupancy_changed() => {}
                _ = tokio::time::sleep(RETRY), if behind => {}
            }
            behind = self.reconcile().await.is_err();
        }
        // Detaching: this node leaves every channel (a survivor does it if this fails).
        let occupied: Vec<String> = self.occupied.drain().collect();
        for channel in occupied {
            if let Err(e) = self.bus.vacate(&self.node, &channel).await {
                tracing::warn!(node = %self.node, channel, error = %e,
                    "leaving a channel's occupancy failed; a surviving node does it after the lease");
                break;
            }
        }
    }

    async fn reconcile(&mut self) -> Result<(), BusError> {
        let Some(apps) = self.bus.apps.get() else {
            return Ok(());
        };
        let wanted: HashSet<String> = self
            .wanted
            .snapshot()
            .into_iter()
            .map(|(channel, _)| channel)
            .filter(|channel| {
                apps.of_channel(channel).is_some_and(|app| {
                    app.wants_webhook("channel_occupied") || app.wants_webhook("channel_vacated")
                })
            })
            .collect();
        let joining: Vec<String> = wanted.difference(&self.occupied).cloned().collect();
        let leaving: Vec<String> = self.occupied.difference(&wanted).cloned().collect();
        for channel in joining {
            self.bus.occupy(&self.node, &channel).await?;
            self.occupied.insert(channel);
        }
        for channel in leaving {
            self.bus.vacate(&self.node, &channel).await?;
            self.occupied.remove(&channel);
        }
        Ok(())
    }
}

impl RedisBus {
    /// Counts `node` in `channel`'s occupancy (the index first, so a reaper can always find
    /// what Redis holds).
    async fn occupy(&self, node: &str, channel: &str) -> Result<(), BusError> {
        let (app, event) = self
            .webhook_for(channel, "channel_occupied", |channel| {
                WebhookEvent::ChannelOccupied { channel }
            })
            .unwrap_or_default();
        let window = self.reap_window().as_millis() as u64;
        self.with_conn("counting a channel occupied", async |conn| {
            redis::pipe()
                .cmd("HSET")
                .arg(keys::node_occupancy(node))
                .arg(channel)
                .arg(&app)
                .ignore()
                .cmd("PEXPIRE")
                .arg(keys::node_occupancy(node))
                .arg(window)
                .ignore()
                .exec_async(conn)
                .await
                .map_err(|e| redis_error(&e))?;
            self.run_occupancy(conn, node, channel, true, &app, &event)
                .await
        })
        .await
    }

    /// Takes `node` out of `channel`'s occupancy, then out of its index.
    pub(crate) async fn vacate(&self, node: &str, channel: &str) -> Result<(), BusError> {
        self.with_conn("counting a channel vacated", async |conn| {
            self.vacate_in(conn, node, channel).await
        })
        .await
    }

    async fn vacate_in(
        &self,
        conn: &mut Conn<'_>,
        node: &str,
        channel: &str,
    ) -> Result<(), BusError> {
        let (app, event) = self
            .webhook_for(channel, "channel_vacated", |channel| {
                WebhookEvent::ChannelVacated { channel }
            })
            .unwrap_or_default();
        self.run_occupancy(conn, node, channel, false, &app, &event)
            .await?;
        redis::cmd("HDEL")
            .arg(keys::node_occupancy(node))
            .arg(channel)
            .exec_async(conn)
            .await
            .map_err(|e| redis_error(&e))
    }

    async fn run_occupancy(
        &self,
        conn: &mut Conn<'_>,
        node: &str,
        channel: &str,
        occupied: bool,
        app: &str,
        event: &str,
    ) -> Result<(), BusError> {
        let mut invocation = self.occupancy_script.key(keys::occupancy(channel));
        self.webhook_stream(&mut invocation);
        invocation
            .arg(node)
            .arg(if occupied { "1" } else { "0" })
            .arg(app)
            .arg(event)
            .arg(WEBHOOK_QUEUE_MAX);
        let queued: i64 = invocation
            .invoke_async(conn)
            .await
            .map_err(|e| redis_error(&e))?;
        self.queue_due_webhook(conn, queued, app, event).await;
        Ok(())
    }

    /// Takes a dead node out of every channel its occupancy index names.
    pub(crate) async fn clear_node_occupancy(&self, node: &str) -> Result<(), BusError> {
        let index: HashMap<String, String> = self
            .with_conn("reading a node's occupancy", async |conn| {
                redis::cmd("HGETALL")
                    .arg(keys::node_occupancy(node))
                    .query_async(conn)
                    .await
                    .map_err(|e| redis_error(&e))
            })
            .await?;
        for channel in index.keys() {
            self.vacate(node, channel).await?;
        }
        Ok(())
    }
}
