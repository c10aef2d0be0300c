//! Redis Cluster: how Chorus names one, reaches it, and runs its commands there.
//!
//! A cluster is named by `redis+cluster://[user:password@]host:port[,host:port…]`, a list of
//! seed nodes; the crate's cluster client learns the slot map from them, routes each command
//! to the master of its key's slot and follows `MOVED`/`ASK` and failovers on its own.
//!
//! What the cluster router cannot do is run a pipeline whose commands hash to different
//! slots. The bus pipelines for fewer round trips, not for atomicity (every atomic pipeline
//! touches one key), so [`Conn`] sends such a pipeline's commands one by one, concurrently, on
//! the multiplexed cluster connection: each reaches its own slot's master, and the replies
//! come back in the pipeline's order.
//!
//! Publications travel on sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`): a channel's pub/sub
//! channel carries the same `{channel}` hash tag as its keys, so the publish script writes the
//! history and publishes on one shard, and plain `PUBLISH` (which a cluster copies to every
//! node) is never used.

use futures::future::join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};

use crate::{BusConfig, BusError, keys};

/// The scheme that names a Redis Cluster by its seed nodes.
pub const SCHEME: &str = "redis+cluster://";

/// Slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The seed node URLs of a `redis+cluster://` URL (each `redis://[auth@]host:port`), or
/// `None` when `url` does not name a cluster.
pub(crate) fn seeds(url: &str) -> Option<Result<Vec<String>, BusError>> {
    let rest = url.trim().strip_prefix(SCHEME)?;
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{}", h.trim_end_matches('/')))
        .collect();
    Some(if seeds.is_empty() {
        Err(BusError::Config(format!(
            "{SCHEME} needs at least one seed node (host:port)"
        )))
    } else {
        Ok(seeds)
    })
}

/// The cluster slot a key (or sharded pub/sub channel) hashes to: CRC16 of its hash tag
/// (the first non-empty `{...}`), or of the whole key when it has none.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| &bytes[open + 1..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// A cluster client builder for `seeds`, with Chorus's TCP settings and timeouts.
pub(crate) fn builder(
    config: &BusConfig,
    seeds: &[String],
) -> Result<ClusterClientBuilder, BusError> {
    let tcp = super::connect::connection_info(&BusConfig {
        redis_url: seeds[0].clone(),
        ..config.clone()
    })?
    .tcp_settings()
    .clone();
    Ok(ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(config.redis_timeout)
        .response_timeout(config.redis_timeout)
        .tcp_settings(tcp))
}

/// The cluster client a builder describes.
pub(crate) fn build(builder: ClusterClientBuilder) -> Result<ClusterClient, BusError> {
    builder
        .build()
        .map_err(|e| BusError::Config(format!("redis cluster settings: {e}")))
}

/// Makes cluster connections for blocking commands (BLPOP, XREADGROUP BLOCK). A cluster
/// connection multiplexes every caller onto one socket per master, and a blocked command
/// would hold up every command queued behind it there (the control reply it waits for
/// among them), so a blocking caller takes a connection of its own from this pool.
pub(crate) struct BlockingManager {
    pub(crate) client: ClusterClient,
}

impl deadpool::managed::Manager for BlockingManager {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        _: &mut ClusterConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<RedisError> {
        // It reconnects and follows the slot map on its own.
        Ok(())
    }
}

/// The pool of connections for blocking commands, bounded like the single-Redis pool.
pub(crate) type BlockingPool = deadpool::managed::Pool<BlockingManager>;

pub(crate) fn blocking_pool(
    config: &BusConfig,
    client: ClusterClient,
) -> Result<BlockingPool, BusError> {
    let timeout = Some(config.redis_timeout);
    BlockingPool::builder(BlockingManager { client })
        .max_size(config.redis_pool_size.max(1))
        .timeouts(deadpool::managed::Timeouts {
            wait: timeout,
            create: timeout,
            recycle: timeout,
        })
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| BusError::Config(format!("redis cluster pool: {e}")))
}

/// A connection a bus operation runs on: one server's multiplexed connection, or the
/// cluster's.
pub(crate) enum Conn<'a> {
    Single(&'a mut MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(cluster_pipeline(c, pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A pipeline on the cluster: as one when its commands share a slot, else each command on
/// its own (an atomic pipeline over several slots stays an error: it cannot be honoured).
async fn cluster_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> Result<Vec<Value>, RedisError> {
    match conn.req_packed_commands(pipeline, offset, count).await {
        Err(e) if offset == 0 && e.kind() == ErrorKind::Server(ServerErrorKind::CrossSlot) => {
            let replies = join_all(pipeline.cmd_iter().map(|cmd| {
                let mut conn = conn.clone();
                let mut one = Pipeline::with_capacity(1);
                one.add_command(cmd.clone());
                async move {
                    let mut reply = conn.req_packed_commands(&one, 0, 1).await?;
                    Ok(reply.pop().unwrap_or(Value::Nil))
                }
            }))
            .await;
            replies.into_iter().collect()
        }
        other => other,
    }
}

/// The cluster's masters, each with the slot ranges it serves, from `CLUSTER SLOTS`.
pub(crate) async fn masters(
    conn: &mut ClusterConnection,
) -> Result<Vec<(String, Vec<(u16, u16)>)>, BusError> {
    let value: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .map_err(|e| super::connect::redis_error(&e))?;
    let unreadable = || BusError::Protocol("an unreadable CLUSTER SLOTS reply".into());
    let Value::Array(ranges) = value else {
        return Err(unreadable());
    };
    let mut masters: Vec<(String, Vec<(u16, u16)>)> = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(unreadable());
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(unreadable());
        };
        let host = match master.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return Err(unreadable()),
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return Err(unreadable());
        };
        let address = format!("{host}:{port}");
        let range = (
            u16::try_from(*start).map_err(|_| unreadable())?,
            u16::try_from(*end).map_err(|_| unreadable())?,
        );
        match masters.iter_mut().find(|(a, _)| *a == address) {
            Some((_, ranges)) => ranges.push(range),
            None => masters.push((address, vec![range])),
        }
    }
    masters.sort();
    Ok(masters)
}

impl super::RedisBus {
    /// Whether every master of the cluster answers PING; an error names each one that does
    /// not (`redis shard 10.0.0.7:6379: ...`).
    pub(crate) async fn check_masters(&self) -> Result<(), BusError> {
        self.with_conn("PING", async |conn| {
            let Conn::Cluster(conn) = conn else {
                return Err(BusError::Protocol("not a cluster connection".into()));
            };
            let masters = masters(conn).await?;
            let pings = masters.iter().map(|(address, _)| {
                let mut conn = conn.clone();
                async move {
                    let (host, port) = address.rsplit_once(':')?;
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.to_owned(),
                        port: port.parse().ok()?,
                    });
                    match conn.route_command(redis::cmd("PING"), routing).await {
                        Ok(_) => None,
                        Err(e) => Some(format!(
                            "redis shard {address}: {}",
                            super::connect::redis_error(&e)
                        )),
                    }
                }
            });
            let broken: Vec<String> = join_all(pings).await.into_iter().flatten().collect();
            if broken.is_empty() {
                Ok(())
            } else {
                Err(BusError::Unavailable(broken.join("; ")))
            }
        })
        .await
    }
}

/// A canary channel of `node` whose slot one of `ranges` holds: the node's canary on that
/// master. `None` only if no candidate among the first million lands there.
pub(crate) fn canary_on(node: &str, ranges: &[(u16, u16)]) -> Option<String> {
    (0..1 << 20)
        .map(|i| keys::canary(&format!("{node}/{i}")))
        .find(|name| {
            let s = slot(name);
            ranges
                .iter()
                .any(|(start, end)| (*start..=*end).contains(&s))
        })
}

/// The script text for a cluster: publications go out with `SPUBLISH`, on the shard that
/// holds the script's keys.
pub(crate) fn sharded_script(source: &str) -> String {
    source.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from Redis Cluster's specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot(&keys::meta("news")), slot(&keys::pubsub("news")));
        assert_eq!(slot(&keys::history("news")), slot("news"));
    }

    #[test]
    fn cluster_urls_list_seed_nodes() {
        assert!(seeds("redis://h:1").is_none());
        assert_eq!(
            seeds("redis+cluster://a:7000,b:7001/").unwrap().unwrap(),
            ["redis://a:7000", "redis://b:7001"]
        );
        assert_eq!(
            seeds("redis+cluster://u:p@a:7000,b:7001").unwrap().unwrap(),
            ["redis://u:p@a:7000", "redis://u:p@b:7001"]
        );
        assert!(matches!(
            seeds("redis+cluster://"),
            Some(Err(BusError::Config(_)))
        ));
    }

    #[test]
    fn every_publishing_script_publishes_sharded_on_a_cluster() {
        for source in [
            super::super::publish::PUBLISH_LUA,
            super::super::presence::JOIN_LUA,
            super::super::presence::LEAVE_LUA,
        ] {
            let sharded = sharded_script(source);
            assert!(sharded.contains("redis.call('SPUBLISH',"));
            assert!(!sharded.contains("'PUBLISH'"), "{sharded}");
        }
    }

    #[test]
    fn a_canary_lands_on_the_master_asked_for() {
        for ranges in [[(0, 5460)], [(5461, 10922)], [(16383, 16383)]] {
            let name = canary_on("gw-1", &ranges).unwrap();
            let s = slot(&name);
            assert!((ranges[0].0..=ranges[0].1).contains(&s), "{name} {s}");
        }
    }
}
