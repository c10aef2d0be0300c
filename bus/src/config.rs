//! Settings shared by every process that talks to the bus.

use std::time::Duration;

use chorus_runtime::units::parse_duration;

/// How to reach Redis and how patient to be with it.
#[derive(Debug, Clone, clap::Args)]
pub struct BusConfig {
    /// Redis URL (`redis://[user:password@]host:port[/db]`).
    #[arg(
        long = "redis-url",
        env = "CHORUS_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Longest wait for any one Redis operation before it fails as unavailable.
    #[arg(long = "redis-timeout", env = "CHORUS_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// Largest number of pooled Redis connections for publishing and queries (on a Redis
    /// Cluster, which multiplexes those over one connection per master: for blocking reads).
    #[arg(
        long = "redis-pool-size",
        env = "CHORUS_REDIS_POOL_SIZE",
        default_value_t = 16
    )]
    pub redis_pool_size: usize,

    /// How long a node's registry entry (and its connections) outlives the node's last refresh.
    /// A node that dies disappears from the nodes list within this time.
    #[arg(long = "node-lease", env = "CHORUS_NODE_LEASE", default_value = "5s", value_parser = parse_duration)]
    pub node_lease: Duration,

    /// How long a publish's idempotency key is remembered: a retry with the same key within
    /// this window publishes nothing and returns the first offset.
    #[arg(long = "idempotency-window", env = "CHORUS_IDEMPOTENCY_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub idempotency_window: Duration,

    /// How often a gateway sends a canary through Redis to itself. A canary not back within
    /// `--redis-timeout` marks the node not ready and rebuilds its subscriptions. 0 disables.
    #[arg(long = "canary-interval", env = "CHORUS_CANARY_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub canary_interval: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_timeout: Duration::from_secs(2),
            redis_pool_size: 16,
            node_lease: Duration::from_secs(5),
            idempotency_window: Duration::from_secs(300),
            canary_interval: Duration::from_secs(1),
        }
    }
}

/// The limits of the in-memory bus of the single-process `chorus`, which keeps every channel's
/// position and history, and every idempotency key, in the process's memory.
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryBusConfig {
    /// Most channels the in-memory bus holds at once. A publish to a new channel past it is
    /// refused (`limit_exceeded`); channels it already holds keep working. A channel without
    /// subscribers is forgotten once its position expires (the namespace's `history_meta_ttl`).
    #[arg(
        long = "max-channels",
        env = "CHORUS_MAX_CHANNELS",
        default_value_t = DEFAULT_MAX_CHANNELS
    )]
    pub max_channels: usize,

    /// Most idempotency keys the in-memory bus remembers at once. A key is never forgotten
    /// within its window: past this, a publish with a new key is refused (`limit_exceeded`)
    /// until older keys expire. Publishes without a key are not affected.
    #[arg(
        long = "max-idempotency-keys",
        env = "CHORUS_MAX_IDEMPOTENCY_KEYS",
        default_value_t = DEFAULT_MAX_IDEMPOTENCY_KEYS
    )]
    pub max_idempotency_keys: usize,

    /// How long a publish's idempotency key is remembered: a retry with the same key within
    /// this window publishes nothing and returns the first offset.
    #[arg(long = "idempotency-window", env = "CHORUS_IDEMPOTENCY_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub idempotency_window: Duration,
}

/// Built-in most channels of the in-memory bus.
pub const DEFAULT_MAX_CHANNELS: usize = 100_000;
/// Built-in most idempotency keys of the in-memory bus.
pub const DEFAULT_MAX_IDEMPOTENCY_KEYS: usize = 100_000;

impl Default for MemoryBusConfig {
    fn default() -> Self {
        Self {
            max_channels: DEFAULT_MAX_CHANNELS,
            max_idempotency_keys: DEFAULT_MAX_IDEMPOTENCY_KEYS,
            idempotency_window: Duration::from_secs(300),
        }
    }
}
