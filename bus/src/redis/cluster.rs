//! Redis Cluster: how Chorus names one, reaches it, and runs its commands there.
//!
//! A cluster is named by `redis+cluster://[user:password@]host:port[,host:port…]`, a list of
//! seed nodes; the crate's cluster client learns the slot map from them, routes each command
//! to the master of its key's slot and follows `MOVED`/`ASK` and failovers on its own.
//!
//! What the cluster router cannot do is run a pipeline whose commands hash to different
//! slots. The bus pipelines for fewer round trips, not for atomicity (every atomic pipeline
//! touches one key), so [`Conn`] splits such a pipeline by master ([`Masters`]: a slot map
//! from `CLUSTER SLOTS`, a direct connection per master) and puts the replies back in the
//! pipeline's order; what a master refuses as not its slot goes again through the cluster
//! connection, which follows the redirect. Blocking commands get connections of their own
//! ([`BlockingManager`]).
//!
//! Publications travel on sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`): a channel's pub/sub
//! channel carries the same `{channel}` hash tag as its keys, so the publish script writes the
//! history and publishes on one shard, and plain `PUBLISH` (which a cluster copies to every
//! node) is never used.

use std::collections::HashMap;

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
    slot_of_bytes(key.as_bytes())
}

fn slot_of_bytes(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')? + open + 1;
            (close > open + 1).then(|| &key[open + 1..close])
        })
        .unwrap_or(key);
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
    Cluster(ClusterConnection, &'a Masters),
}

impl ConnectionLike for Conn<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c, _) => c.req_packed_command(cmd),
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
            Conn::Cluster(c, masters) => {
                Box::pin(cluster_pipeline(c, masters, pipeline, offset, count))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c, _) => c.get_db(),
        }
    }
}

/// A pipeline on the cluster: as one when its commands share a slot; else one pipeline per
/// master (see [`Masters`]), or, for commands whose key cannot be read, each command on its
/// own. An atomic pipeline over several slots stays an error: it cannot be honoured.
async fn cluster_pipeline(
    conn: &mut ClusterConnection,
    masters: &Masters,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> Result<Vec<Value>, RedisError> {
    match conn.req_packed_commands(pipeline, offset, count).await {
        Err(e) if offset == 0 && e.kind() == ErrorKind::Server(ServerErrorKind::CrossSlot) => {
            let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
            let keys: Option<Vec<Vec<u8>>> = cmds.iter().map(|c| key_of(c)).collect();
            match keys {
                Some(keys) => masters.run(conn, &cmds, &keys).await,
                None => one_by_one(conn, &cmds, masters.config.redis_timeout / 2)
                    .await
                    .into_iter()
                    .collect(),
            }
        }
        other => other,
    }
}

/// Each command on its own through the cluster connection (which follows redirects),
/// concurrently, replies in order. Each gets at most `within`: a command for a master that is
/// gone fails in time for the others' replies to be used, instead of running the whole
/// operation out of its deadline while the crate retries.
async fn one_by_one(
    conn: &ClusterConnection,
    cmds: &[&Cmd],
    within: std::time::Duration,
) -> Vec<Result<Value, RedisError>> {
    join_all(cmds.iter().map(|cmd| {
        let mut conn = conn.clone();
        let mut one = Pipeline::with_capacity(1);
        one.add_command((*cmd).clone());
        async move {
            let sent = tokio::time::timeout(within, conn.req_packed_commands(&one, 0, 1)).await;
            let mut reply = sent.map_err(|_| {
                RedisError::from((ErrorKind::Io, "no reply", format!("within {within:?}")))
            })??;
            Ok(reply.pop().unwrap_or(Value::Nil))
        }
    }))
    .await
}

/// A command's failure to reach Redis as its reply in a pipeline, so that the other commands'
/// replies stand: a server error as Redis sent it, anything else as a `CLUSTERDOWN` error
/// (read as "unavailable, retry later").
fn failed(e: &RedisError) -> Value {
    let text = e.to_string().replace(['\r', '\n'], " ");
    redis::parse_redis_value(format!("-CLUSTERDOWN {text}\r\n").as_bytes()).unwrap_or(Value::Nil)
}

/// The first key of a command: the argument after the name, or after the script and key
/// count for EVAL/EVALSHA; `None` when it has none.
fn key_of(cmd: &Cmd) -> Option<Vec<u8>> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        let _script = args.next()?;
        if args.next()? == b"0" {
            return None;
        }
    }
    args.next().map(<[u8]>::to_vec)
}

/// Whether a reply says the command went to a node that does not serve its slot (now): it
/// did not run there, so it can be sent again.
fn misrouted(value: &Value) -> bool {
    matches!(value, Value::ServerError(e)
        if matches!(e.code(), "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN"))
}

/// Slot ranges with the address of the master serving each: `(first, last, host:port)`.
type SlotMap = Vec<(u16, u16, String)>;

/// Direct connections to the cluster's masters, for pipelines over many slots.
///
/// The cluster router runs a pipeline on one slot only, and sending a batch of publications to
/// a thousand channels one command at a time costs twice the CPU of the single-Redis
/// pipeline. So a batch is split by master, with a slot map read from `CLUSTER SLOTS`, and
/// each part is pipelined on a plain connection to its master. A command that master refuses
/// as not its slot (`MOVED`, `ASK`: a slot moved since the map was read) did not run; it is
/// sent again on its own through the cluster connection, which follows the redirect, and the
/// map is read again before the next batch. Connection trouble on a master's pipeline fails
/// that part, as on one Redis: whether its commands ran is unknown, so none is resent.
pub(crate) struct Masters {
    config: BusConfig,
    /// `redis://[auth@]` of the seeds, for connections to the masters by address.
    auth: String,
    map: parking_lot::RwLock<Option<std::sync::Arc<SlotMap>>>,
    conns: parking_lot::Mutex<HashMap<String, MultiplexedConnection>>,
}

impl Masters {
    pub(crate) fn new(config: &BusConfig, seeds: &[String]) -> Self {
        let auth = seeds
            .first()
            .and_then(|s| s.strip_prefix("redis://"))
            .and_then(|rest| rest.rsplit_once('@'))
            .map_or_else(String::new, |(auth, _)| format!("{auth}@"));
        Self {
            config: config.clone(),
            auth,
            map: parking_lot::RwLock::new(None),
            conns: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    async fn run(
        &self,
        cluster: &mut ClusterConnection,
        cmds: &[&Cmd],
        keys: &[Vec<u8>],
    ) -> Result<Vec<Value>, RedisError> {
        let cached = self.map.read().clone();
        let map = match cached {
            Some(map) => map,
            None => {
                let read = masters(cluster).await.map_err(|e| {
                    RedisError::from((ErrorKind::Io, "CLUSTER SLOTS", e.to_string()))
                })?;
                let map: SlotMap = read
                    .into_iter()
                    .flat_map(|(addr, ranges)| {
                        ranges.into_iter().map(move |(a, b)| (a, b, addr.clone()))
                    })
                    .collect();
                let map = std::sync::Arc::new(map);
                *self.map.write() = Some(map.clone());
                map
            }
        };
        // A command whose slot the map does not hold gets no part: left unanswered, it is
        // sent on its own below.
        let mut parts: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = slot_of_bytes(key);
            if let Some((_, _, addr)) = map.iter().find(|(a, b, _)| (*a..=*b).contains(&slot)) {
                parts.entry(addr.as_str()).or_default().push(i);
            }
        }
        let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
        let runs = parts.into_iter().map(|(addr, indices)| async move {
            let mut pipe = Pipeline::with_capacity(indices.len());
            for &i in &indices {
                pipe.add_command(cmds[i].clone());
            }
            // Nothing sent (no connection): left unanswered, so sent again below.
            let Ok(mut conn) = self.connection(addr).await else {
                return (indices, None);
            };
            let ran = conn.req_packed_commands(&pipe, 0, indices.len()).await;
            if ran.is_err() {
                self.conns.lock().remove(addr);
            }
            (indices, Some(ran))
        });
        for (indices, result) in join_all(runs).await {
            match result {
                Some(Ok(values)) => {
                    for (i, value) in indices.into_iter().zip(values) {
                        replies[i] = Some(value);
                    }
                }
                // Sent, outcome unknown: each command fails, none is sent again.
                Some(Err(e)) => {
                    *self.map.write() = None;
                    for i in indices {
                        replies[i] = Some(failed(&e));
                    }
                }
                None => {}
            }
        }
        let again: Vec<usize> = (0..cmds.len())
            .filter(|&i| replies[i].as_ref().is_none_or(misrouted))
            .collect();
        if !again.is_empty() {
            *self.map.write() = None;
            let resend: Vec<&Cmd> = again.iter().map(|&i| cmds[i]).collect();
            let within = self.config.redis_timeout / 2;
            for (i, value) in again
                .into_iter()
                .zip(one_by_one(cluster, &resend, within).await)
            {
                replies[i] = Some(value.unwrap_or_else(|e| failed(&e)));
            }
        }
        Ok(replies
            .into_iter()
            .map(|v| v.unwrap_or(Value::Nil))
            .collect())
    }

    /// The shared connection to the master at `addr`, made on first use.
    async fn connection(&self, addr: &str) -> Result<MultiplexedConnection, RedisError> {
        let cached = self.conns.lock().get(addr).cloned();
        if let Some(conn) = cached {
            return Ok(conn);
        }
        let info = super::connect::connection_info(&BusConfig {
            redis_url: format!("redis://{}{addr}", self.auth),
            ..self.config.clone()
        })
        .map_err(|e| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "master address",
                e.to_string(),
            ))
        })?;
        let conn = redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(&super::connect::async_config(
                self.config.redis_timeout,
            ))
            .await?;
        self.conns.lock().insert(addr.to_owned(), conn.clone());
        Ok(conn)
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
            let Conn::Cluster(conn, _) = conn else {
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
    fn a_commands_key_is_read_past_a_scripts_key_count() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc").arg(2).arg("k1").arg("k2").arg("a");
        assert_eq!(key_of(&eval).as_deref(), Some(&b"k1"[..]));
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0).arg("a");
        assert_eq!(key_of(&keyless), None);
        let mut hset = redis::cmd("HSET");
        hset.arg("h").arg("f").arg("v");
        assert_eq!(key_of(&hset).as_deref(), Some(&b"h"[..]));
        assert_eq!(key_of(&redis::cmd("PING")), None);
    }

    #[test]
    fn a_failure_reads_as_an_unavailable_reply() {
        let e = RedisError::from((ErrorKind::Io, "connection refused"));
        let Value::ServerError(reply) = failed(&e) else {
            panic!("not an error reply");
        };
        assert_eq!(reply.code(), "CLUSTERDOWN");
        let bus_error = super::super::connect::redis_error(&reply.into());
        assert!(
            matches!(bus_error, BusError::Unavailable(_)),
            "{bus_error:?}"
        );
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
