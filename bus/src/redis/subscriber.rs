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
//! Why a canary: a PING proves the socket, not delivery. Every `--canary-interval` the task
//! PUBLISHes a numbered canary on the node's own canary channel (to which this connection is
//! subscribed) and expects it back through the push path within `--redis-timeout`. When it
//! does not come, the connection is treated as lost: readiness drops, and the reconnect
//! rebuilds every subscription and recovers the gap. With the canary off, a plain PING guards
//! against half-open sockets instead.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use std::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::LinkState;
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

pub(crate) struct Subscriber {
    pub(crate) client: redis::Client,
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

/// Why a session with Redis ended.
enum End {
    Cancelled,
    Lost(String),
}

impl Subscriber {
    pub(crate) async fn run(self) {
        let mut backoff = Backoff::default();
        loop {
            match self.session(&mut backoff).await {
                End::Cancelled => break,
                End::Lost(reason) => {
                    crate::metrics::redis_reconnect();
                    // Pending first: whoever sees "not ready" must not find a stale "live".
                    self.wanted.mark_all_pending();
                    self.state.subscriber_ready.store(false, Ordering::Release);
                    self.sink.link_lost(&|_| true);
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

    /// One connection's life: connect, subscribe the wanted set, then follow changes until
    /// the connection fails or the link is cancelled.
    async fn session(&self, backoff: &mut Backoff) -> End {
        let lost = Arc::new(Notify::new());
        let canary_seen = Arc::new(AtomicU64::new(0));
        let canary_back = Arc::new(Notify::new());
        let config = async_config(self.timeout).set_push_sender(self.push_handler(
            lost.clone(),
            canary_seen.clone(),
            canary_back.clone(),
        ));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let mut conn = tokio::select! {
            _ = self.cancel.cancelled() => return End::Cancelled,
            result = tokio::time::timeout(self.timeout, connect) => match result {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return End::Lost(super::connect::redis_error(&e).to_string()),
                Err(_) => return End::Lost(format!("no connection within {:?}", self.timeout)),
            },
        };
        let mut subscribed = HashSet::new();
        let canary_channel = keys::canary(&self.node);
        let canary_on = !self.canary_interval.is_zero();
        if let Err(reason) = self
            .bounded("SUBSCRIBE", conn.subscribe(keys::control()))
            .await
        {
            return End::Lost(reason);
        }
        if canary_on
            && let Err(reason) = self
                .bounded("SUBSCRIBE", conn.subscribe(&canary_channel))
                .await
        {
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
            self.state.subscriber_ready.store(true, Ordering::Release);
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
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    self.unsubscribe_all(&mut conn, &subscribed).await;
                    return End::Cancelled;
                }
                _ = lost.notified() => return End::Lost("connection closed".into()),
                _ = canary_back.notified(), if !proven => {
                    if canary.is_some_and(|(n, _)| canary_seen.load(Ordering::Acquire) >= n) {
                        proven = true;
                        self.state.subscriber_ready.store(true, Ordering::Release);
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
                        let ping = redis::cmd("PING");
                        match tokio::time::timeout(self.timeout, ping.query_async::<Value>(&mut conn)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return End::Lost(format!("PING failed: {e}")),
                            Err(_) => return End::Lost(format!("no PONG within {:?}", self.timeout)),
                        }
                        continue;
                    }
                    if let Some((n, sent)) = canary
                        && canary_seen.load(Ordering::Acquire) < n
                    {
                        if sent.elapsed() >= self.timeout {
                            return End::Lost(format!(
                                "canary {n} not delivered within {:?}", self.timeout
                            ));
                        }
                        continue;
                    }
                    canary_next += 1;
                    let mut cmd = redis::cmd("PUBLISH");
                    cmd.arg(&canary_channel).arg(canary_next);
                    let publish = cmd.query_async::<Value>(&mut conn);
                    match tokio::time::timeout(self.timeout, publish).await {
                        Ok(Ok(_)) => canary = Some((canary_next, Instant::now())),
                        Ok(Err(e)) => return End::Lost(format!("canary PUBLISH failed: {e}")),
                        Err(_) => return End::Lost(format!(
                            "canary PUBLISH not answered within {:?}", self.timeout
                        )),
                    }
                }
            }
        }
    }

    /// Makes Redis's subscriptions on this connection equal to the wanted set, and marks each
    /// wanted channel live once Redis confirmed it. Stops early (without error) when cancelled.
    async fn reconcile(
        &self,
        conn: &mut MultiplexedConnection,
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
    async fn unsubscribe_all(
        &self,
        conn: &mut MultiplexedConnection,
        subscribed: &HashSet<String>,
    ) {
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
        lost: Arc<Notify>,
        canary_seen: Arc<AtomicU64>,
        canary_back: Arc<Notify>,
    ) -> impl Fn(PushInfo) -> Result<(), Infallible> + Send + Sync + 'static {
        let wanted = self.wanted.clone();
        let sink = self.sink.clone();
        let node = self.node.clone();
        let canary_channel = keys::canary(&self.node).into_bytes();
        let control_channel = keys::control().into_bytes();
        let answers = self.answers.clone();
        move |push: PushInfo| {
            match push.kind {
                PushKind::Message if is_on(&push.data, &control_channel) => {
                    control(&node, sink.as_ref(), &answers, push.data);
                }
                PushKind::Message if is_on(&push.data, &canary_channel) => {
                    if let Some(Value::BulkString(n)) = push.data.get(1)
                        && let Some(n) = std::str::from_utf8(n).ok().and_then(|n| n.parse().ok())
                    {
                        canary_seen.fetch_max(n, Ordering::AcqRel);
                        canary_back.notify_one();
                    }
                }
                PushKind::Message => deliver(&node, &wanted, sink.as_ref(), push.data),
                PushKind::Disconnection => lost.notify_one(),
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
