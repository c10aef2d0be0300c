//! The subscriber: one task per attached node, holding one dedicated RESP3 connection.
//!
//! Why RESP3 on a multiplexed connection rather than the crate's `PubSub`: the RESP2 `PubSub`
//! type never reconnects and cannot PING with a deadline, so a half-open socket would hang it
//! forever. With RESP3, messages arrive as push values on an ordinary connection that still
//! answers commands (SUBSCRIBE confirmations, PING), and the crate reports a lost connection as
//! a `Disconnection` push.
//!
//! Why the task reconciles a wanted *set* instead of replaying subscribe/unsubscribe calls: the
//! hub changes [`Wanted`] synchronously and notifies; the task diffs it against what Redis
//! confirmed and sends only the difference, in batches. After a reconnect "what Redis
//! confirmed" is empty, so the same code resubscribes everything. Churn never queues up: a
//! channel wanted and unwanted before the task looks costs nothing.
//!
//! Why messages are handled in the push sender itself: the push sender runs on the
//! connection's reader (its driver task), in arrival order. Decoding there and handing the
//! envelope straight to the [`BusSink`] (which must never block) keeps channel order, needs no
//! queue between reader and sink — so no memory that grows when something is slow — and keeps
//! Redis from seeing a slow pub/sub reader. Everything that can wait (subscribing, PING,
//! reconnecting) happens in the task, never in the push sender.
//!
//! After a lost connection, publications of the gap are gone from pub/sub: the sink hears
//! `link_lost` before anything of the next connection, every channel is marked pending, and
//! the sink hears `resubscribed` for each batch Redis confirms again — the gateway's cue to
//! recover the gap from history.
//!
//! On a Redis Cluster the same task holds one cluster connection (one socket per master, made
//! by the crate) and uses sharded pub/sub: channels are SSUBSCRIBEd a slot at a time, each on
//! the master that owns it. When a slot moves, its master drops those subscriptions with an
//! `sunsubscribe` push; the task marks just those channels lost and subscribes them again
//! (now on the new owner), and the gateway recovers their gap from history. A lost socket to
//! any master reads as a lost connection, as on one Redis.
//!
//! Why a canary: a PING proves the socket, not delivery. Every `--canary-interval` the task
//! PUBLISHes a numbered canary on the node's own canary channel (to which this connection is
//! subscribed) and expects it back through the push path within `--redis-timeout`. When it
//! does not come, the connection is treated as lost: readiness drops, and the reconnect
//! rebuilds every subscription and recovers the gap. With the canary off, a plain PING guards
//! against half-open sockets instead. On a cluster there is one canary channel per master
//! (a name whose slot that master serves), so each shard's delivery path is proven, and a
//! canary that does not come back names its shard in the readiness reason.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use std::time::Instant;

use futures::future::join_all;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::LinkState;
use super::cluster;
use super::connect::async_config;
use crate::control::ControlRequest;
use crate::wanted::Wanted;
use crate::{BusSink, keys};

/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const BATCH: usize = 500;
/// How often the idle connection is PINGed to detect a half-open socket.
const PING_EVERY: Duration = Duration::from_secs(3);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Payloads on Chorus's pub/sub channels that were not envelopes, across all links.
static UNDECODABLE: AtomicU64 = AtomicU64::new(0);

/// Where a subscriber connects: one server, or a cluster by its seed nodes.
#[derive(Clone)]
pub(crate) enum Target {
    Single(redis::Client),
    Cluster(Vec<String>),
}

pub(crate) struct Subscriber {
    pub(crate) target: Target,
    pub(crate) config: crate::BusConfig,
    pub(crate) timeout: Duration,
    /// 0: no canary, PING instead.
    pub(crate) canary_interval: Duration,
    pub(crate) node: String,
    pub(crate) wanted: Arc<Wanted>,
    /// Answers to control requests, for the registry task to push (never waits).
    pub(crate) answers: mpsc::Sender<(String, String)>,
    pub(crate) sink: Arc<dyn BusSink>,
    pub(crate) state: Arc<LinkState>,
    pub(crate) cancel: CancellationToken,
}

/// A channel a canary travels on, and the cluster master it proves (`None` on one Redis).
struct Canary {
    channel: String,
    shard: Option<String>,
}

/// What the push sender reports to the session: canaries seen, the connection lost, and
/// channels whose subscription a cluster master dropped (their slot moved).
#[derive(Default)]
struct Pushed {
    lost: Notify,
    /// The highest canary number seen back, per canary.
    canary_seen: Mutex<Vec<u64>>,
    canary_back: Notify,
    dropped: Mutex<Vec<String>>,
    dropped_any: Notify,
}

/// The subscriber's connection: to one server (plain pub/sub) or to a cluster (sharded).
enum Link {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Link {
    /// Subscribes pub/sub channels; on a cluster, one SSUBSCRIBE per slot, concurrently.
    async fn subscribe(&mut self, names: &[String]) -> RedisResult<()> {
        match self {
            Link::Single(c) => c.subscribe(names).await,
            Link::Cluster(c) => per_slot(c, names, true).await,
        }
    }

    async fn unsubscribe(&mut self, names: &[String]) -> RedisResult<()> {
        match self {
            Link::Single(c) => c.unsubscribe(names).await,
            Link::Cluster(c) => per_slot(c, names, false).await,
        }
    }

    /// A canary: PUBLISH on one Redis, SPUBLISH (to the channel's shard) on a cluster.
    async fn publish(&mut self, channel: &str, payload: u64) -> RedisResult<Value> {
        let mut cmd = redis::cmd(match self {
            Link::Single(_) => "PUBLISH",
            Link::Cluster(_) => "SPUBLISH",
        });
        cmd.arg(channel).arg(payload);
        self.query(&cmd).await
    }

    async fn ping(&mut self) -> RedisResult<Value> {
        self.query(&redis::cmd("PING")).await
    }

    async fn query(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match self {
            Link::Single(c) => cmd.query_async(c).await,
            Link::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// SSUBSCRIBE (or SUNSUBSCRIBE) of `names`, one command per cluster slot (one may name only
/// one slot), concurrently.
async fn per_slot(conn: &ClusterConnection, names: &[String], subscribe: bool) -> RedisResult<()> {
    let mut groups: HashMap<u16, Vec<&String>> = HashMap::new();
    for name in names {
        groups.entry(cluster::slot(name)).or_default().push(name);
    }
    let each = groups.into_values().map(|group| {
        let mut conn = conn.clone();
        async move {
            if subscribe {
                conn.ssubscribe(group).await
            } else {
                conn.sunsubscribe(group).await
            }
        }
    });
    join_all(each).await.into_iter().collect()
}

/// Why a session with Redis ended.
enum End {
    Cancelled,
    Lost(String),
}

impl Subscriber {
    pub(crate) async fn run(self) {
        let mut backoff = Backoff::default();
        // The last session's canaries: on a cluster, the masters to name when one fails.
        let canaries = Arc::new(Mutex::new(Vec::new()));
        loop {
            match self.session(&mut backoff, &canaries).await {
                End::Cancelled => break,
                End::Lost(reason) => {
                    crate::metrics::redis_reconnect();
                    // Pending first: whoever sees "not ready" must not find a stale "live".
                    self.wanted.mark_all_pending();
                    self.state.subscriber_ready.store(false, Ordering::Release);
                    *self.state.subscriber_lost.lock() = Some(reason.clone());
                    self.sink.link_lost(&|_| true);
                    let reason = self.name_unreachable(reason, &canaries).await;
                    *self.state.subscriber_lost.lock() = Some(reason.clone());
                    let delay = backoff.next_delay();
                    tracing::warn!(node = %self.node, %reason, retry_in = ?delay,
                        "redis subscriber connection lost");
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.state.subscriber_ready.store(false, Ordering::Release);
        tracing::debug!(node = %self.node, "redis subscriber stopped");
    }

    /// `reason`, with the cluster masters of the last session that do not accept a TCP
    /// connection named: the crate reports a lost socket without saying which.
    async fn name_unreachable(&self, reason: String, canaries: &Mutex<Vec<Canary>>) -> String {
        let shards: Vec<String> = canaries
            .lock()
            .iter()
            .filter_map(|c| c.shard.clone())
            .collect();
        let probes = shards.iter().map(|shard| async move {
            let connect = tokio::net::TcpStream::connect(shard.as_str());
            match tokio::time::timeout(self.timeout, connect).await {
                Ok(Ok(_)) => None,
                _ => Some(shard.as_str()),
            }
        });
        let down: Vec<&str> = join_all(probes).await.into_iter().flatten().collect();
        if down.is_empty() {
            reason
        } else {
            format!("{reason}; redis shard {} unreachable", down.join(", "))
        }
    }

    /// Connects to the target, with the push sender attached.
    async fn connect(
        &self,
        pushed: &Arc<Pushed>,
        canaries: &Arc<Mutex<Vec<Canary>>>,
    ) -> Result<Link, String> {
        let handler = self.push_handler(pushed.clone(), canaries.clone());
        let within = self.timeout;
        let connected = match &self.target {
            Target::Single(client) => {
                let config = async_config(within).set_push_sender(handler);
                let connect = client.get_multiplexed_async_connection_with_config(&config);
                tokio::time::timeout(within, connect)
                    .await
                    .map(|c| c.map(Link::Single))
            }
            Target::Cluster(seeds) => {
                let builder = cluster::builder(&self.config, seeds)
                    .map_err(|e| e.to_string())?
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(handler);
                let client = cluster::build(builder).map_err(|e| e.to_string())?;
                tokio::time::timeout(within, client.get_async_connection())
                    .await
                    .map(|c| c.map(Link::Cluster))
            }
        };
        match connected {
            Ok(Ok(link)) => Ok(link),
            Ok(Err(e)) => Err(super::connect::redis_error(&e).to_string()),
            Err(_) => Err(format!("no connection within {:?}", self.timeout)),
        }
    }

    /// The canaries of this connection: the node's one channel on one Redis; on a cluster,
    /// one per master, on a channel whose slot that master serves.
    async fn canaries(&self, link: &mut Link) -> Result<Vec<Canary>, String> {
        match link {
            Link::Single(_) => Ok(vec![Canary {
                channel: keys::canary(&self.node),
                shard: None,
            }]),
            Link::Cluster(c) => {
                let masters = tokio::time::timeout(self.timeout, cluster::masters(c))
                    .await
                    .map_err(|_| format!("CLUSTER SLOTS not answered within {:?}", self.timeout))?
                    .map_err(|e| format!("CLUSTER SLOTS failed: {e}"))?;
                masters
                    .into_iter()
                    .map(|(shard, ranges)| {
                        let channel = cluster::canary_on(&self.node, &ranges).ok_or_else(|| {
                            format!("no canary channel lands on redis shard {shard}")
                        })?;
                        Ok(Canary {
                            channel,
                            shard: Some(shard),
                        })
                    })
                    .collect()
            }
        }
    }

    /// One connection's life: connect, subscribe the wanted set, then follow changes until
    /// the connection fails or the link is cancelled.
    async fn session(&self, backoff: &mut Backoff, canaries: &Arc<Mutex<Vec<Canary>>>) -> End {
        let pushed = Arc::new(Pushed::default());
        let mut conn = tokio::select! {
            _ = self.cancel.cancelled() => return End::Cancelled,
            link = self.connect(&pushed, canaries) => match link {
                Ok(link) => link,
                Err(reason) => return End::Lost(reason),
            },
        };
        let mut subscribed = HashSet::new();
        let canary_on = !self.canary_interval.is_zero();
        let mut fixed = vec![keys::control()];
        if canary_on {
            let found = tokio::select! {
                _ = self.cancel.cancelled() => return End::Cancelled,
                found = self.canaries(&mut conn) => found,
            };
            match found {
                Ok(found) => {
                    fixed.extend(found.iter().map(|c| c.channel.clone()));
                    *pushed.canary_seen.lock() = vec![0; found.len()];
                    *canaries.lock() = found;
                }
                Err(reason) => return End::Lost(reason),
            }
        }
        if let Err(reason) = self.bounded("SUBSCRIBE", conn.subscribe(&fixed)).await {
            return End::Lost(reason);
        }
        if let Err(reason) = self.reconcile(&mut conn, &mut subscribed).await {
            return End::Lost(reason);
        }
        if self.cancel.is_cancelled() {
            self.unsubscribe_all(&mut conn, &subscribed).await;
            return End::Cancelled;
        }
        // With the canary on, the node is ready only once a canary came back on this
        // connection: delivery proven, not just a socket.
        let mut proven = !canary_on;
        if proven {
            self.ready();
        }
        backoff.reset();
        tracing::info!(node = %self.node, channels = subscribed.len(), "redis subscriber connected");

        let every = if canary_on {
            self.canary_interval
        } else {
            PING_EVERY
        };
        // The first canary goes at once; PINGs start one period in.
        let first = if canary_on { Duration::ZERO } else { every };
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + first, every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The canary in flight: its number and when it was sent.
        let mut canary: Option<(u64, Instant)> = None;
        let mut canary_next = 0u64;
        // Which canaries have not come back with number `n` yet.
        let missing = |n: u64| -> Vec<usize> {
            let seen = pushed.canary_seen.lock();
            (0..seen.len()).filter(|&i| seen[i] < n).collect()
        };
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    self.unsubscribe_all(&mut conn, &subscribed).await;
                    return End::Cancelled;
                }
                _ = pushed.lost.notified() => return End::Lost("connection closed".into()),
                _ = pushed.dropped_any.notified() => {
                    let dropped = std::mem::take(&mut *pushed.dropped.lock());
                    if dropped.iter().any(|c| fixed.contains(c)) {
                        return End::Lost("the control or canary channel moved to another shard".into());
                    }
                    self.resubscribe_moved(&dropped, &mut subscribed);
                    if let Err(reason) = self.reconcile(&mut conn, &mut subscribed).await {
                        return End::Lost(reason);
                    }
                }
                _ = pushed.canary_back.notified(), if !proven => {
                    if canary.is_some_and(|(n, _)| missing(n).is_empty()) {
                        proven = true;
                        self.ready();
                        tracing::debug!(node = %self.node, "canary delivered; link ready");
                    }
                }
                _ = self.wanted.changed() => {
                    if let Err(reason) = self.reconcile(&mut conn, &mut subscribed).await {
                        return End::Lost(reason);
                    }
                }
                _ = ping.tick() => {
                    if !canary_on {
                        match tokio::time::timeout(self.timeout, conn.ping()).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return End::Lost(format!("PING failed: {e}")),
                            Err(_) => return End::Lost(format!("no PONG within {:?}", self.timeout)),
                        }
                        continue;
                    }
                    if let Some((n, sent)) = canary {
                        let missing = missing(n);
                        if !missing.is_empty() {
                            if sent.elapsed() >= self.timeout {
                                let canaries = canaries.lock();
                                let shards: Vec<&str> = missing
                                    .iter()
                                    .filter_map(|&i| canaries.get(i)?.shard.as_deref())
                                    .collect();
                                return End::Lost(if shards.is_empty() {
                                    format!("canary {n} not delivered within {:?}", self.timeout)
                                } else {
                                    format!(
                                        "canary {n} not delivered within {:?} by redis shard {}",
                                        self.timeout,
                                        shards.join(", ")
                                    )
                                });
                            }
                            continue;
                        }
                    }
                    canary_next += 1;
                    let channels: Vec<String> =
                        canaries.lock().iter().map(|c| c.channel.clone()).collect();
                    for channel in &channels {
                        let publish = conn.publish(channel, canary_next);
                        match tokio::time::timeout(self.timeout, publish).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return End::Lost(format!("canary PUBLISH failed: {e}")),
                            Err(_) => return End::Lost(format!(
                                "canary PUBLISH not answered within {:?}", self.timeout
                            )),
                        }
                    }
                    canary = Some((canary_next, Instant::now()));
                }
            }
        }
    }

    fn ready(&self) {
        *self.state.subscriber_lost.lock() = None;
        self.state.subscriber_ready.store(true, Ordering::Release);
    }

    /// Channels whose subscription a cluster master dropped (their slot moved): no longer
    /// subscribed, not live, and lost to the sink until the next reconcile subscribes them on
    /// their new shard. Channels no longer wanted were dropped by our own SUNSUBSCRIBE.
    fn resubscribe_moved(&self, dropped: &[String], subscribed: &mut HashSet<String>) {
        let moved: HashSet<&str> = dropped
            .iter()
            .filter_map(|name| keys::channel_of_pubsub(name))
            .filter(|c| self.wanted.contains(c) && subscribed.remove(*c))
            .collect();
        if moved.is_empty() {
            return;
        }
        for channel in &moved {
            self.wanted.mark_pending(channel);
        }
        tracing::info!(node = %self.node, channels = moved.len(),
            "redis cluster moved subscribed channels; subscribing them on their new shard");
        self.sink.link_lost(&|c| moved.contains(c));
    }

    /// Makes Redis's subscriptions on this connection equal to the wanted set, and marks each
    /// wanted channel live once Redis confirmed it. Stops early (without error) when cancelled.
    async fn reconcile(
        &self,
        conn: &mut Link,
        subscribed: &mut HashSet<String>,
    ) -> Result<(), String> {
        let snapshot = self.wanted.snapshot();
        let wanted: HashSet<&str> = snapshot.iter().map(|(c, _)| c.as_str()).collect();
        let mut to_subscribe = Vec::new();
        for (channel, live) in &snapshot {
            if !subscribed.contains(channel) {
                to_subscribe.push(channel.clone());
            } else if !live {
                // Unwanted and wanted again before the unsubscribe went out: still confirmed.
                self.wanted.mark_live(channel);
            }
        }
        let to_unsubscribe: Vec<String> = subscribed
            .iter()
            .filter(|c| !wanted.contains(c.as_str()))
            .cloned()
            .collect();

        for batch in to_subscribe.chunks(BATCH) {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let names: Vec<String> = batch.iter().map(|c| keys::pubsub(c)).collect();
            self.bounded("SUBSCRIBE", conn.subscribe(&names)).await?;
            for channel in batch {
                subscribed.insert(channel.clone());
                self.wanted.mark_live(channel);
            }
            self.sink.resubscribed(batch);
        }
        for batch in to_unsubscribe.chunks(BATCH) {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let names: Vec<String> = batch.iter().map(|c| keys::pubsub(c)).collect();
            self.bounded("UNSUBSCRIBE", conn.unsubscribe(&names))
                .await?;
            for channel in batch {
                subscribed.remove(channel);
            }
        }
        if !to_subscribe.is_empty() || !to_unsubscribe.is_empty() {
            tracing::debug!(node = %self.node, subscribed = to_subscribe.len(),
                unsubscribed = to_unsubscribe.len(), total = subscribed.len(),
                "redis subscriptions reconciled");
        }
        Ok(())
    }

    async fn bounded(
        &self,
        what: &str,
        command: impl Future<Output = redis::RedisResult<()>>,
    ) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{what} failed: {e}")),
            Err(_) => Err(format!("{what} not confirmed within {:?}", self.timeout)),
        }
    }

    /// On detach: leave Redis with no subscriptions of ours, within the timeout.
    async fn unsubscribe_all(&self, conn: &mut Link, subscribed: &HashSet<String>) {
        if subscribed.is_empty() {
            return;
        }
        let names: Vec<String> = subscribed.iter().map(|c| keys::pubsub(c)).collect();
        let all = async {
            for batch in names.chunks(BATCH) {
                conn.unsubscribe(batch).await?;
            }
            Ok::<(), redis::RedisError>(())
        };
        match tokio::time::timeout(self.timeout, all).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(node = %self.node, error = %e, "UNSUBSCRIBE on detach failed")
            }
            Err(_) => tracing::warn!(node = %self.node, "UNSUBSCRIBE on detach timed out"),
        }
    }

    /// The push sender: runs on the connection's reader for every push value. Never waits.
    fn push_handler(
        &self,
        pushed: Arc<Pushed>,
        canaries: Arc<Mutex<Vec<Canary>>>,
    ) -> impl Fn(PushInfo) -> Result<(), Infallible> + Send + Sync + 'static {
        let wanted = self.wanted.clone();
        let sink = self.sink.clone();
        let node = self.node.clone();
        let control_channel = keys::control().into_bytes();
        let answers = self.answers.clone();
        move |push: PushInfo| {
            match push.kind {
                PushKind::Message | PushKind::SMessage => {
                    if is_on(&push.data, &control_channel) {
                        control(&node, sink.as_ref(), &answers, push.data);
                    } else if let Some(i) = is_canary(&push.data)
                        .then(|| {
                            canaries
                                .lock()
                                .iter()
                                .position(|c| is_on(&push.data, c.channel.as_bytes()))
                        })
                        .flatten()
                    {
                        if let Some(Value::BulkString(n)) = push.data.get(1)
                            && let Some(n) = std::str::from_utf8(n)
                                .ok()
                                .and_then(|n| n.parse::<u64>().ok())
                            && let Some(seen) = pushed.canary_seen.lock().get_mut(i)
                        {
                            *seen = (*seen).max(n);
                            pushed.canary_back.notify_one();
                        }
                    } else {
                        deliver(&node, &wanted, sink.as_ref(), push.data);
                    }
                }
                PushKind::SUnsubscribe => {
                    if let Some(Value::BulkString(name)) = push.data.first()
                        && let Ok(name) = std::str::from_utf8(name)
                    {
                        pushed.dropped.lock().push(name.to_owned());
                        pushed.dropped_any.notify_one();
                    }
                }
                PushKind::Disconnection => pushed.lost.notify_one(),
                _ => {}
            }
            Ok(())
        }
    }
}

/// Applies a control request to this node and queues its answer.
fn control(
    node: &str,
    sink: &dyn BusSink,
    answers: &mpsc::Sender<(String, String)>,
    data: Vec<Value>,
) {
    let Some(Value::BulkString(payload)) = data.into_iter().nth(1) else {
        return;
    };
    let request: ControlRequest = match serde_json::from_slice(&payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(node, error = %e, "an unreadable control request");
            return;
        }
    };
    let mut reply = sink.control(&request.op);
    reply.node = node.to_owned();
    if request.reply_to.is_empty() {
        return;
    }
    let Ok(text) = serde_json::to_string(&reply) else {
        return;
    };
    if answers.try_send((request.reply_to, text)).is_err() {
        tracing::warn!(node, "too many control answers waiting; one is dropped");
    }
}

/// Whether a message push came on a canary channel (of any node), so that ordinary
/// publications skip the lookup among this connection's canaries.
fn is_canary(data: &[Value]) -> bool {
    matches!(data.first(),
        Some(Value::BulkString(name)) if name.starts_with(keys::CANARY_PREFIX.as_bytes()))
}

/// Whether a message push came on `channel_name`.
fn is_on(data: &[Value], channel_name: &[u8]) -> bool {
    matches!(data.first(), Some(Value::BulkString(name)) if name.as_slice() == channel_name)
}

/// Decodes one pub/sub message and hands it to the sink if the node still wants its channel.
fn deliver(node: &str, wanted: &Wanted, sink: &dyn BusSink, data: Vec<Value>) {
    let mut data = data.into_iter();
    let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        undecodable(node, "", "message push without channel and payload");
        return;
    };
    let Some(channel) = std::str::from_utf8(&name)
        .ok()
        .and_then(keys::channel_of_pubsub)
    else {
        return; // not one of Chorus's channels
    };
    if !wanted.contains(channel) {
        return; // unwanted while the UNSUBSCRIBE was on its way
    }
    match chorus_protocol::envelope::decode_envelope(channel, &payload) {
        Ok(envelope) => sink.publication(envelope),
        Err(e) => undecodable(node, channel, &e.to_string()),
    }
}

fn undecodable(node: &str, channel: &str, reason: &str) {
    let total = UNDECODABLE.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(
        node,
        channel,
        reason,
        total,
        "dropped an undecodable bus message"
    );
}

/// Exponential backoff: 100 ms doubling to 5 s, each delay drawn from its upper half so that
/// many gateways losing Redis at once do not come back in lockstep.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let ceiling = BACKOFF_FIRST
            .saturating_mul(1 << self.attempt.min(16))
            .min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;
    use parking_lot::Mutex;
    use prost::Message;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_jitter() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= BACKOFF_FIRST);
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
        assert!(delays[9] >= BACKOFF_MAX / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_FIRST);
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<Envelope>>);
    impl BusSink for Collect {
        fn publication(&self, envelope: Envelope) {
            self.0.lock().push(envelope);
        }
    }

    fn message(channel: &str, payload: Vec<u8>) -> Vec<Value> {
        vec![
            Value::BulkString(keys::pubsub(channel).into_bytes()),
            Value::BulkString(payload),
        ]
    }

    #[test]
    fn undecodable_or_unwanted_messages_are_dropped_without_panicking() {
        let wanted = Wanted::default();
        let _ready = wanted.want("a", false);
        let sink = Collect::default();
        let good = Envelope {
            offset: 3,
            epoch: "e".into(),
            ..Envelope::default()
        }
        .encode_to_vec();
        deliver("n", &wanted, &sink, message("a", vec![0xff, 0xff, 0xff]));
        deliver("n", &wanted, &sink, message("a", vec![]));
        deliver("n", &wanted, &sink, vec![Value::Nil]);
        deliver("n", &wanted, &sink, message("b", good.clone()));
        deliver("n", &wanted, &sink, message("a", good));
        let got = sink.0.lock();
        // Only the good envelope on the wanted channel, its channel filled in from the name.
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].channel.as_str(), got[0].offset), ("a", 3));
    }
}
