//! Channels sharded over independent Redis servers.
//!
//! With several Redis URLs, each channel belongs to one of them, picked by a jump consistent
//! hash of its name ([`shard_of`]): adding a fifth server to four moves about a fifth of the
//! channels and no others. Everything of a channel lives on its shard — offset, epoch,
//! history, idempotency keys, presence, occupancy and its pub/sub channel — so each shard is a
//! whole single-Redis bus for its channels, and the publish script, the subscriber link, the
//! canary, the node's lease (which that shard's presence reaper reads) and the reaper run on
//! each shard unchanged. What belongs to no channel lives on the first shard, the *home*
//! shard: the node list that `nodes` reads and the connection registry, the control channel,
//! and the webhook queue of client events (member and occupancy events are queued on their
//! channel's shard, and the dispatcher reads every shard).
//!
//! A gateway attaches to every shard ([`ShardedLink`]): one subscriber connection, canary and
//! lease per shard. A shard that fails affects only its channels: their publishes fail as
//! unavailable naming the shard, its subscriber link reconnects and fills the gap from
//! history, and readiness names the broken shard while the other shards keep delivering.
//!
//! When the shard list changes, a moved channel starts afresh on its new shard: a new epoch
//! and offset 1, no history. A client recovering on it gets `recovered: false` with the new
//! epoch, as after a Redis restart without persistence.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::join_all;

use crate::backend::Backend;
use crate::control::{ControlOp, ControlReplies};
use crate::namespaces::{NamespaceRules, Namespaces};
use crate::presence::Member;
use crate::pusher::WebhookRecord;
use crate::redis::{RedisBus, RedisLink};
use crate::{
    BusConfig, BusError, BusSink, ChannelReady, ConnectionInfo, Envelope, History, HistoryQuery,
    NodeInfo, Position, Publish, Published,
};

/// Most shards one bus may have.
pub const MAX_SHARDS: usize = 64;

/// The shard of `channel` among `shards`: Lamping and Veach's jump consistent hash of the
/// name's 64-bit FNV-1a hash. Stable across processes and versions: it is how every gateway
/// and broker-api agree where a channel lives.
pub fn shard_of(channel: &str, shards: usize) -> usize {
    let mut key = channel.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let (mut b, mut j) = (-1_i64, 0_i64);
    while j < shards as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1_u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

/// The Redis URLs a `--redis-url` value names: one, or several separated by commas.
pub fn urls(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

pub struct ShardedBus {
    shards: Vec<Arc<RedisBus>>,
    /// Each shard's `host:port`, for errors and readiness (never the password).
    names: Vec<String>,
    /// The shard the next webhook read starts at, so that a busy shard cannot starve others.
    next_webhook_shard: AtomicUsize,
}

impl ShardedBus {
    pub(crate) fn new(config: &BusConfig, urls: &[&str]) -> Result<Self, BusError> {
        if urls.len() < 2 || urls.len() > MAX_SHARDS {
            return Err(BusError::Config(format!(
                "sharding takes 2 to {MAX_SHARDS} Redis URLs, not {}",
                urls.len()
            )));
        }
        let mut shards = Vec::with_capacity(urls.len());
        let mut names = Vec::with_capacity(urls.len());
        for url in urls {
            let config = BusConfig {
                redis_url: (*url).to_owned(),
                ..config.clone()
            };
            shards.push(Arc::new(RedisBus::new(&config)?));
            names.push(host_port(url));
        }
        Ok(Self {
            shards,
            names,
            next_webhook_shard: AtomicUsize::new(0),
        })
    }

    /// The shard that holds what belongs to no channel.
    pub(crate) fn home(&self) -> &Arc<RedisBus> {
        &self.shards[0]
    }

    /// Sets the Pusher apps on every shard (member and occupancy webhooks are queued on
    /// their channel's shard).
    pub(crate) fn set_apps(&self, apps: &Arc<crate::pusher::Apps>) {
        for shard in &self.shards {
            shard.set_apps(apps.clone());
        }
    }

    fn index(&self, channel: &str) -> usize {
        shard_of(channel, self.shards.len())
    }

    /// Runs `op` on `channel`'s shard, naming the shard in an unavailable error.
    async fn on_channel<T>(
        &self,
        channel: &str,
        op: impl AsyncFnOnce(&RedisBus) -> Result<T, BusError>,
    ) -> Result<T, BusError> {
        let i = self.index(channel);
        op(&self.shards[i]).await.map_err(|e| self.named(i, e))
    }

    fn named(&self, shard: usize, e: BusError) -> BusError {
        named(shard, &self.names[shard], e)
    }

    /// Up to `count` webhook events from the shards in turn, waiting at most `block` in all.
    /// Record ids carry their shard (`<shard>/<stream id>`) for [`ShardedBus::ack_webhooks`].
    pub(crate) async fn read_webhooks(
        &self,
        consumer: &str,
        count: usize,
        block: std::time::Duration,
    ) -> Result<Vec<WebhookRecord>, BusError> {
        let n = self.shards.len();
        let first = self.next_webhook_shard.fetch_add(1, Ordering::Relaxed) % n;
        let mut failed = None;
        // Every shard once without waiting, then the first one again, waiting.
        let reads = (0..n)
            .map(|k| ((first + k) % n, std::time::Duration::ZERO))
            .chain(std::iter::once((first, block)));
        for (i, block) in reads {
            match self.shards[i].read_webhooks(consumer, count, block).await {
                Ok(records) if !records.is_empty() => {
                    return Ok(records
                        .into_iter()
                        .map(|mut r| {
                            r.id = format!("{i}/{}", r.id);
                            r
                        })
                        .collect());
                }
                Ok(_) => {}
                Err(e) => failed = Some(self.named(i, e)),
            }
        }
        failed.map_or(Ok(Vec::new()), Err)
    }

    /// Ends webhook events read with [`ShardedBus::read_webhooks`], on their shards.
    pub(crate) async fn ack_webhooks(&self, ids: &[String]) -> Result<(), BusError> {
        let mut by_shard = vec![Vec::new(); self.shards.len()];
        for id in ids {
            let Some((shard, id)) = id.split_once('/') else {
                return Err(BusError::BadRequest(format!(
                    "not a sharded webhook id: {id}"
                )));
            };
            match shard.parse::<usize>() {
                Ok(i) if i < by_shard.len() => by_shard[i].push(id.to_owned()),
                _ => {
                    return Err(BusError::BadRequest(format!(
                        "no shard for webhook id {id}"
                    )));
                }
            }
        }
        let acks = by_shard
            .iter()
            .enumerate()
            .map(|(i, ids)| async move { (i, self.shards[i].ack_webhooks(ids).await) });
        for (i, result) in join_all(acks).await {
            result.map_err(|e| self.named(i, e))?;
        }
        Ok(())
    }

    /// Attaches a gateway node to every shard.
    pub(crate) fn attach(&self, node: NodeInfo, sink: Arc<dyn BusSink>) -> ShardedLink {
        let shards = self.shards.len();
        let links = self
            .shards
            .iter()
            .enumerate()
            .map(|(shard, bus)| {
                let sink = Arc::new(ShardSink {
                    sink: sink.clone(),
                    shard,
                    shards,
                });
                bus.attach(node.clone(), sink)
            })
            .collect();
        ShardedLink {
            links,
            names: self.names.clone(),
        }
    }
}

/// `e` with the shard it came from, when it is an outage (other errors are the caller's).
fn named(shard: usize, name: &str, e: BusError) -> BusError {
    match e {
        BusError::Unavailable(reason) => {
            BusError::Unavailable(format!("redis shard {shard} ({name}): {reason}"))
        }
        other => other,
    }
}

/// `host:port` of a Redis URL, without user or password.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

impl Backend for ShardedBus {
    async fn publish(&self, msg: Publish, rules: &NamespaceRules) -> Result<Published, BusError> {
        let channel = msg.channel.clone();
        self.on_channel(&channel, async |b| b.publish(msg, rules).await)
            .await
    }

    /// One pipeline per shard, all shards at once; each message's result in its place.
    async fn publish_many(
        &self,
        msgs: Vec<Result<Publish, BusError>>,
        namespaces: &Namespaces,
    ) -> Vec<Result<Published, BusError>> {
        let total = msgs.len();
        // Per shard: each message's place in `msgs`, and the message.
        let mut by_shard: Vec<(Vec<usize>, Vec<_>)> =
            (0..self.shards.len()).map(|_| Default::default()).collect();
        let mut results: Vec<Option<Result<Published, BusError>>> =
            (0..total).map(|_| None).collect();
        for (i, msg) in msgs.into_iter().enumerate() {
            match msg {
                Ok(msg) => {
                    let shard = &mut by_shard[self.index(&msg.channel)];
                    shard.0.push(i);
                    shard.1.push(Ok(msg));
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let runs = by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, (places, _))| !places.is_empty())
            .map(|(shard, (places, msgs))| async move {
                let published = self.shards[shard].publish_many(msgs, namespaces).await;
                (shard, places, published)
            });
        for (shard, places, published) in join_all(runs).await {
            for (place, result) in places.into_iter().zip(published) {
                results[place] = Some(result.map_err(|e| self.named(shard, e)));
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(BusError::Protocol("a publish went unanswered".into())))
            })
            .collect()
    }

    async fn position(&self, channel: &str) -> Result<Position, BusError> {
        self.on_channel(channel, async |b| b.position(channel).await)
            .await
    }

    async fn history(&self, channel: &str, query: &HistoryQuery) -> Result<History, BusError> {
        self.on_channel(channel, async |b| b.history(channel, query).await)
            .await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BusError> {
        self.home().nodes().await.map_err(|e| self.named(0, e))
    }

    async fn control(&self, op: &ControlOp) -> Result<ControlReplies, BusError> {
        self.home().control(op).await.map_err(|e| self.named(0, e))
    }

    async fn presence(&self, channel: &str) -> Result<Vec<Member>, BusError> {
        self.on_channel(channel, async |b| b.presence(channel).await)
            .await
    }

    /// Every shard at once; an error names every shard that failed.
    async fn check(&self) -> Result<(), BusError> {
        let checks = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, b)| async move { (i, b.check().await) });
        let broken: Vec<String> = join_all(checks)
            .await
            .into_iter()
            .filter_map(|(i, r)| r.err().map(|e| self.named(i, e).to_string()))
            .collect();
        if broken.is_empty() {
            Ok(())
        } else {
            Err(BusError::Unavailable(broken.join("; ")))
        }
    }
}

/// A gateway's attachment to every shard: one [`RedisLink`] (subscriber connection, canary,
/// lease, presence reaper) per shard; each channel goes to its shard's link.
pub struct ShardedLink {
    links: Vec<RedisLink>,
    names: Vec<String>,
}

impl ShardedLink {
    fn of(&self, channel: &str) -> &RedisLink {
        &self.links[shard_of(channel, self.links.len())]
    }

    pub(crate) fn want(&self, channel: &str) -> ChannelReady {
        self.of(channel).want(channel)
    }

    pub(crate) fn unwant(&self, channel: &str) {
        self.of(channel).unwant(channel)
    }

    /// The shards whose link is not up, as `shard N (host:port)`.
    pub(crate) fn broken(&self) -> Vec<String> {
        self.links
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_ready())
            .map(|(i, _)| format!("redis shard {i} ({})", self.names[i]))
            .collect()
    }

    /// Connections are registered on the home shard only: the node list is read there.
    pub(crate) fn connection_opened(&self, conn: ConnectionInfo) {
        self.links[0].connection_opened(conn);
    }

    pub(crate) fn connection_closed(&self, client: &str) {
        self.links[0].connection_closed(client);
    }

    pub(crate) async fn join(
        &self,
        channel: &str,
        member: Member,
        announce: bool,
        max: u32,
    ) -> Result<(), BusError> {
        let i = shard_of(channel, self.links.len());
        self.links[i]
            .join(channel, member, announce, max)
            .await
            .map_err(|e| named(i, &self.names[i], e))
    }

    pub(crate) async fn leave(&self, channel: &str, client: &str) -> Result<(), BusError> {
        let i = shard_of(channel, self.links.len());
        self.links[i]
            .leave(channel, client)
            .await
            .map_err(|e| named(i, &self.names[i], e))
    }

    pub(crate) fn left(&self, channel: &str, client: &str) {
        self.of(channel).left(channel, client)
    }

    pub(crate) async fn detach(&self) {
        join_all(self.links.iter().map(RedisLink::detach)).await;
    }
}

/// The node's sink as one shard's link sees it: a lost link loses only that shard's channels.
struct ShardSink {
    sink: Arc<dyn BusSink>,
    shard: usize,
    shards: usize,
}

impl BusSink for ShardSink {
    fn publication(&self, envelope: Envelope) {
        self.sink.publication(envelope);
    }

    fn link_lost(&self, lost: &dyn Fn(&str) -> bool) {
        let (shard, shards) = (self.shard, self.shards);
        self.sink
            .link_lost(&|channel| shard_of(channel, shards) == shard && lost(channel));
    }

    fn resubscribed(&self, channels: &[String]) {
        self.sink.resubscribed(channels);
    }

    fn control(&self, op: &ControlOp) -> crate::control::ControlReply {
        self.sink.control(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_keeps_its_shard_and_a_new_shard_takes_about_its_share() {
        let names: Vec<String> = (0..20_000).map(|i| format!("ns:channel-{i}")).collect();
        for shards in 1..=8 {
            let mut counts = vec![0_usize; shards];
            for name in &names {
                let s = shard_of(name, shards);
                assert_eq!(s, shard_of(name, shards), "stable");
                counts[s] += 1;
            }
            let fair = names.len() / shards;
            for c in &counts {
                assert!(c.abs_diff(fair) < fair / 10, "{shards} shards: {counts:?}");
            }
        }
        // From 3 to 4 shards only channels moving to the new shard move: about a quarter.
        let moved: Vec<&String> = names
            .iter()
            .filter(|n| shard_of(n, 3) != shard_of(n, 4))
            .collect();
        assert!(moved.iter().all(|n| shard_of(n, 4) == 3));
        let share = moved.len() as f64 / names.len() as f64;
        assert!((0.22..0.28).contains(&share), "{share}");
        // Fixed values: every process must agree, whatever version it runs.
        let fixed = ["a", "news", "chat:room-1", "pusher-1:presence-x"].map(|c| shard_of(c, 3));
        assert_eq!(fixed, [2, 2, 0, 2]);
        let fixed = ["a", "b", "c", "d", "e", "f"].map(|c| shard_of(c, 16));
        assert_eq!(fixed, [12, 3, 15, 0, 12, 8]);
    }

    #[test]
    fn urls_split_and_hosts_hide_passwords() {
        assert_eq!(urls("redis://a:1"), vec!["redis://a:1"]);
        assert_eq!(
            urls("redis://a:1, redis://b:2/0,"),
            vec!["redis://a:1", "redis://b:2/0"]
        );
        assert_eq!(host_port("redis://user:secret@h:6380/2"), "h:6380");
        assert_eq!(host_port("redis://h:6379"), "h:6379");
        let e = named(1, "h:1", BusError::Unavailable("down".into()));
        assert_eq!(e.to_string(), "bus unavailable: redis shard 1 (h:1): down");
    }
}
