//! How Chorus reaches Redis, and how Redis failures read to a caller.
//!
//! Every connection Chorus opens goes through here so that they all share one set of choices:
//! TCP keepalive on (the redis crate leaves it off, and a silently dead peer would otherwise
//! hold a socket forever), `TCP_NODELAY` on (small commands, latency matters), and a
//! connection and response timeout equal to the configured `redis_timeout` (the crate's own
//! default response timeout is 500 ms, which would override the operator's setting).
//!
//! Failures are turned into [`BusError`]s here too, with a reason a person can act on
//! ("redis unreachable: connection refused"), so the publish path, the registry and the
//! subscriber all report the same way.

use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{Metrics, RecycleError, RecycleResult, Timeouts};
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, ConnectionInfo, ErrorKind, IntoConnectionInfo, ProtocolVersion,
    RedisError, ServerErrorKind,
};

use crate::{BusConfig, BusError};

/// Idle time before the first keepalive probe, and the gap between probes.
const KEEPALIVE_TIME: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// The connection info for `config.redis_url`, with Chorus's TCP settings.
pub(crate) fn connection_info(config: &BusConfig) -> Result<ConnectionInfo, BusError> {
    let info = config
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(|e| BusError::Config(format!("redis url {:?}: {e}", redact(&config.redis_url))))?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    Ok(info.set_tcp_settings(tcp))
}

/// The same server, spoken to in RESP3: pub/sub messages then arrive as push values on an
/// ordinary multiplexed connection, which can also answer PING while subscribed.
pub(crate) fn resp3(info: &ConnectionInfo) -> ConnectionInfo {
    let redis = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.clone().set_redis_settings(redis)
}

/// Connection and response timeouts for every async connection.
pub(crate) fn async_config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
}

/// A pooled connection idle this long is PINGed before it is handed out.
const PING_IF_IDLE: Duration = Duration::from_secs(1);

/// The pool of connections for publishing and queries.
pub(crate) type Pool = deadpool::managed::Pool<Manager>;
pub(crate) type PoolError = deadpool::managed::PoolError<RedisError>;

/// A pooled connection, and whether an operation on it failed for connection trouble.
pub(crate) struct Pooled {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) broken: bool,
}

/// Creates multiplexed connections; recycles busy ones without a round trip.
///
/// Why not deadpool-redis's manager: it PINGs every connection on every checkout, an extra
/// round trip per publish. Here a connection whose operation failed for connection trouble
/// (or ran out of time) is marked broken and dropped at its next recycle, and only one that
/// sat idle for [`PING_IF_IDLE`] is PINGed before reuse.
pub(crate) struct Manager {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

impl deadpool::managed::Manager for Manager {
    type Type = Pooled;
    type Error = RedisError;

    async fn create(&self) -> Result<Pooled, RedisError> {
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Pooled {
            conn,
            broken: false,
        })
    }

    async fn recycle(&self, obj: &mut Pooled, metrics: &Metrics) -> RecycleResult<RedisError> {
        if obj.broken {
            return Err(RecycleError::message("the connection failed"));
        }
        // Busy connections are trusted; one that sat idle (Redis may have restarted since)
        // proves itself with a PING first.
        if metrics.last_used() >= PING_IF_IDLE {
            redis::cmd("PING").query_async::<()>(&mut obj.conn).await?;
        }
        Ok(())
    }
}

/// The pool for publishing and queries. Waiting for a free connection and creating one are
/// each bounded by `redis_timeout`, so a caller never waits on the pool longer than the
/// operation's own deadline.
pub(crate) fn pool(config: &BusConfig, info: ConnectionInfo) -> Result<Pool, BusError> {
    if config.redis_pool_size == 0 {
        return Err(BusError::Config(
            "redis pool size must be at least 1".into(),
        ));
    }
    let manager = Manager {
        client: redis::Client::open(info)
            .map_err(|e| BusError::Config(format!("redis connection settings: {e}")))?,
        config: async_config(config.redis_timeout),
    };
    let timeout = Some(config.redis_timeout);
    Pool::builder(manager)
        .max_size(config.redis_pool_size)
        .timeouts(Timeouts {
            wait: timeout,
            create: timeout,
            recycle: timeout,
        })
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| BusError::Config(format!("redis pool: {e}")))
}

/// `redis://user:secret@host` → `redis://user:***@host`, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let auth = &url[scheme + 3..at];
            match auth.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The error for an operation that did not finish within `redis_timeout`.
pub(crate) fn timed_out(what: &str, timeout: Duration) -> BusError {
    BusError::Unavailable(format!("redis did not answer {what} within {timeout:?}"))
}

/// A redis error as a bus error: connection trouble and a server that cannot serve right now
/// are `Unavailable` (retrying later may work); anything else is an unexpected reply.
pub(crate) fn redis_error(e: &RedisError) -> BusError {
    if e.is_connection_refusal() {
        return BusError::Unavailable("redis unreachable: connection refused".into());
    }
    if e.is_timeout() {
        return BusError::Unavailable("redis unreachable: timed out".into());
    }
    if e.is_connection_dropped() {
        return BusError::Unavailable(format!("redis connection lost: {e}"));
    }
    match e.kind() {
        ErrorKind::Io => BusError::Unavailable(format!("redis unreachable: {e}")),
        ErrorKind::AuthenticationFailed => {
            BusError::Unavailable(format!("redis refused the credentials: {e}"))
        }
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => BusError::Unavailable(format!("redis cannot serve right now: {e}")),
        _ if e.code() == Some("OOM") => {
            BusError::Unavailable(format!("redis is out of memory: {e}"))
        }
        _ => BusError::Protocol(e.to_string()),
    }
}

/// A pool checkout failure as a bus error.
pub(crate) fn pool_error(e: PoolError, timeout: Duration) -> BusError {
    match e {
        PoolError::Backend(e) => redis_error(&e),
        PoolError::Timeout(deadpool::managed::TimeoutType::Wait) => BusError::Unavailable(format!(
            "no redis connection became free within {timeout:?}"
        )),
        PoolError::Timeout(deadpool::managed::TimeoutType::Create) => BusError::Unavailable(
            format!("redis unreachable: no connection within {timeout:?}"),
        ),
        PoolError::Timeout(deadpool::managed::TimeoutType::Recycle) => BusError::Unavailable(
            format!("redis unreachable: no connection recycled within {timeout:?}"),
        ),
        other => BusError::Unavailable(format!("redis pool: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("redis://token@h"), "redis://token@h");
    }

    #[test]
    fn malformed_urls_are_configuration_errors() {
        let config = BusConfig {
            redis_url: "not a url".into(),
            ..BusConfig::default()
        };
        assert!(matches!(connection_info(&config), Err(BusError::Config(_))));
    }
}
