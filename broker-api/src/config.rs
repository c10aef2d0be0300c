//! broker-api's settings, as a `clap::Args` group so that the broker-api binary and the
//! single-process `chorus` binary can both flatten it next to their other settings.
//!
//! Every flag is prefixed `--api-` (and every variable `CHORUS_API_`) so it cannot clash with
//! the gateway's flags in the single-process binary.

use std::fmt;
use std::time::Duration;

use chorus_bus::BusConfig;
use chorus_runtime::units::{parse_duration, parse_size};

/// How much longer than one bus operation a whole API request may take, when
/// `--api-request-timeout` is not given: the bus answers "unavailable" first, and the request
/// timeout only catches what the bus's own timeout missed.
pub const REQUEST_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// broker-api's settings.
#[derive(Clone, clap::Args)]
pub struct BrokerConfig {
    /// Address (host:port) where broker-api serves both HTTP/JSON and gRPC (h2c).
    #[arg(
        id = "api_listen",
        value_name = "ADDR",
        long = "api-listen",
        env = "CHORUS_API_LISTEN",
        default_value = "0.0.0.0:8001"
    )]
    pub listen: String,

    /// API key that backend applications send as `Authorization: Bearer <key>`. Several keys
    /// are allowed (repeat the flag, or separate them with commas) so keys can be rotated.
    /// At least one is required.
    #[arg(
        id = "api_keys",
        value_name = "KEY",
        long = "api-key",
        env = "CHORUS_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Largest request body: the HTTP body limit and the gRPC maximum decoded message size.
    /// Accepts bytes or a KiB/MiB suffix.
    #[arg(
        id = "api_max_body",
        value_name = "SIZE",
        long = "api-max-body",
        env = "CHORUS_API_MAX_BODY",
        default_value = "1MiB",
        value_parser = parse_size
    )]
    pub max_body: usize,

    /// Largest message data accepted for publishing (the raw JSON text of `data`, the decoded
    /// bytes of `b64data`, or the gRPC `data` bytes). Accepts bytes or a KiB/MiB suffix.
    #[arg(
        id = "api_max_data",
        value_name = "SIZE",
        long = "api-max-data",
        env = "CHORUS_API_MAX_DATA",
        default_value = "64KiB",
        value_parser = parse_size
    )]
    pub max_data: usize,

    /// Most channels one broadcast request may name.
    #[arg(
        id = "api_max_broadcast",
        value_name = "N",
        long = "api-max-broadcast",
        env = "CHORUS_API_MAX_BROADCAST",
        default_value_t = DEFAULT_MAX_BROADCAST
    )]
    pub max_broadcast: usize,

    /// Longest time one API request may take before it fails as unavailable (e.g. 3s, 500ms).
    /// Default: --redis-timeout plus 1s.
    #[arg(
        id = "api_request_timeout",
        value_name = "DURATION",
        long = "api-request-timeout",
        env = "CHORUS_API_REQUEST_TIMEOUT",
        value_parser = parse_duration
    )]
    pub request_timeout: Option<Duration>,

    /// Most publications in flight to Redis at once, over all requests and streams. Past it a
    /// publish waits up to --api-queue-wait for room, then is refused as overloaded (HTTP 429,
    /// gRPC RESOURCE_EXHAUSTED); a publish stream simply stops reading until there is room.
    #[arg(
        id = "api_max_inflight",
        value_name = "N",
        long = "api-max-inflight",
        env = "CHORUS_API_MAX_INFLIGHT",
        default_value_t = DEFAULT_MAX_INFLIGHT
    )]
    pub max_inflight: usize,

    /// How long a publish request waits for room under --api-max-inflight before it is refused
    /// as overloaded (e.g. 100ms).
    #[arg(
        id = "api_queue_wait",
        value_name = "DURATION",
        long = "api-queue-wait",
        env = "CHORUS_API_QUEUE_WAIT",
        default_value = "100ms",
        value_parser = parse_duration
    )]
    pub queue_wait: Duration,
    /// Time a client has, from connecting, to send its first bytes and (HTTP/1.1) its whole
    /// request head; then the connection is dropped (slowloris protection).
    #[arg(
        id = "api_header_timeout",
        value_name = "DURATION",
        long = "api-header-timeout",
        env = "CHORUS_API_HEADER_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub header_timeout: Duration,
}

/// Default for `--api-max-inflight`.
pub const DEFAULT_MAX_INFLIGHT: usize = 4096;

/// Default for `--api-max-broadcast`.
pub const DEFAULT_MAX_BROADCAST: usize = 1000;

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8001".into(),
            api_keys: Vec::new(),
            max_body: 1024 * 1024,
            max_data: 64 * 1024,
            max_broadcast: DEFAULT_MAX_BROADCAST,
            request_timeout: None,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            queue_wait: Duration::from_millis(100),
            header_timeout: Duration::from_secs(10),
        }
    }
}

impl BrokerConfig {
    /// Fills in the request timeout from the bus's settings when it was not set explicitly:
    /// `redis_timeout` plus [`REQUEST_TIMEOUT_MARGIN`]. Call this wherever both configs are
    /// known (the binaries do).
    pub fn with_bus_timeout(mut self, bus: &BusConfig) -> Self {
        self.request_timeout
            .get_or_insert(bus.redis_timeout + REQUEST_TIMEOUT_MARGIN);
        self
    }

    /// The overall limit on one request: the configured one, or the default bus timeout plus
    /// the margin.
    pub fn effective_request_timeout(&self) -> Duration {
        self.request_timeout
            .unwrap_or(BusConfig::default().redis_timeout + REQUEST_TIMEOUT_MARGIN)
    }

    /// The configured keys without blanks (a trailing comma in `CHORUS_API_KEYS` adds none).
    pub(crate) fn usable_keys(&self) -> Vec<String> {
        self.api_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl fmt::Debug for BrokerConfig {
    // Written out so that the keys never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("listen", &self.listen)
            .field(
                "api_keys",
                &format_args!("[{} redacted]", self.api_keys.len()),
            )
            .field("max_body", &self.max_body)
            .field("max_data", &self.max_data)
            .field("max_broadcast", &self.max_broadcast)
            .field("request_timeout", &self.request_timeout)
            .field("header_timeout", &self.header_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        broker: BrokerConfig,
    }

    #[test]
    fn flags_are_well_formed_with_ids_that_cannot_clash_when_flattened() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let ids: Vec<_> = Cli::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(ids.iter().all(|id| id.starts_with("api_")), "{ids:?}");
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let d = BrokerConfig::default();
        assert_eq!(cli.broker.listen, d.listen);
        assert_eq!(cli.broker.max_body, d.max_body);
        assert_eq!(cli.broker.max_data, d.max_data);
        assert_eq!(cli.broker.max_broadcast, d.max_broadcast);
        assert_eq!(cli.broker.request_timeout, None);
        assert_eq!(cli.broker.header_timeout, d.header_timeout);
    }

    #[test]
    fn keys_come_comma_separated_or_repeated_and_blanks_are_dropped() {
        let cli = Cli::try_parse_from(["x", "--api-key", "a,b,", "--api-key", " c "]).unwrap();
        assert_eq!(cli.broker.usable_keys(), ["a", "b", "c"]);
    }

    #[test]
    fn request_timeout_follows_the_bus_timeout_unless_set() {
        let bus = BusConfig {
            redis_timeout: Duration::from_millis(500),
            ..BusConfig::default()
        };
        let derived = BrokerConfig::default().with_bus_timeout(&bus);
        assert_eq!(
            derived.effective_request_timeout(),
            Duration::from_millis(1500)
        );
        let explicit = BrokerConfig {
            request_timeout: Some(Duration::from_secs(9)),
            ..BrokerConfig::default()
        }
        .with_bus_timeout(&bus);
        assert_eq!(explicit.effective_request_timeout(), Duration::from_secs(9));
    }

    #[test]
    fn debug_output_hides_the_keys() {
        let c = BrokerConfig {
            api_keys: vec!["s3cret".into()],
            ..BrokerConfig::default()
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
