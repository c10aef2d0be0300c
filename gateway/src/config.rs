//! The gateway's settings: every one a CLI flag with a `CHORUS_…` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use chorus_bus::config::{parse_duration, parse_size};

#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// Address the gateway listens on for WebSocket clients (`/ws`) and health checks.
    #[arg(
        id = "gateway_listen",
        value_name = "ADDR",
        long = "gateway-listen",
        env = "CHORUS_GATEWAY_LISTEN",
        default_value = "0.0.0.0:8000"
    )]
    pub listen: SocketAddr,

    /// This node's id in the cluster registry. Default: a random id per start.
    #[arg(long = "node-id", env = "CHORUS_NODE_ID")]
    pub node_id: Option<String>,

    /// Address clients use to reach this node, shown in the nodes list. Default: the listen address.
    #[arg(long = "advertise-address", env = "CHORUS_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// Interval between the gateway's WebSocket pings to each client.
    #[arg(long = "ping-interval", env = "CHORUS_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A connection from which nothing arrives for this long is closed (code 3001).
    #[arg(long = "idle-timeout", env = "CHORUS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Largest WebSocket message a client may send (bytes, or a KiB/MiB suffix); larger ones
    /// close the connection with code 1009.
    #[arg(
        long = "max-message-size",
        env = "CHORUS_MAX_MESSAGE_SIZE",
        default_value = "64KiB",
        value_parser = parse_size
    )]
    pub max_message_size: usize,

    /// Largest number of bytes queued for one client before it is disconnected as a slow
    /// consumer (code 3002).
    #[arg(long = "queue-max-bytes", env = "CHORUS_QUEUE_MAX_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub queue_max_bytes: usize,

    /// Largest number of frames queued for one client (a second bound beside the bytes).
    #[arg(
        long = "queue-max-frames",
        env = "CHORUS_QUEUE_MAX_FRAMES",
        default_value_t = 4096
    )]
    pub queue_max_frames: usize,

    /// Largest number of channels one connection may subscribe to.
    #[arg(
        long = "max-channels-per-connection",
        env = "CHORUS_MAX_CHANNELS_PER_CONNECTION",
        default_value_t = 128
    )]
    pub max_channels_per_connection: usize,

    /// Namespaces whose channels clients may publish to, comma-separated; `*` allows every
    /// namespace, `default` the channels without a namespace.
    #[arg(
        long = "client-publish-namespaces",
        env = "CHORUS_CLIENT_PUBLISH_NAMESPACES",
        value_delimiter = ',',
        default_value = "chat"
    )]
    pub client_publish_namespaces: Vec<String>,

    /// On SIGTERM/SIGINT, the time over which the gateway tells its clients to reconnect
    /// elsewhere (each at a random moment within it, so they do not all reconnect at once);
    /// `/readyz` fails and new WebSockets are refused from the start of it.
    #[arg(long = "drain-window", env = "CHORUS_DRAIN_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub drain_window: Duration,

    /// Serve the demo page at `/`.
    #[arg(long = "demo-page", env = "CHORUS_DEMO_PAGE")]
    pub demo_page: bool,
}

impl GatewayConfig {
    /// Whether clients may publish to `namespace` (`""` is the default namespace).
    pub fn client_may_publish(&self, namespace: &str) -> bool {
        let wanted = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        self.client_publish_namespaces
            .iter()
            .any(|ns| ns == "*" || ns == wanted)
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            node_id: None,
            advertise_address: None,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            max_message_size: 65536,
            queue_max_bytes: 1 << 20,
            queue_max_frames: 4096,
            max_channels_per_connection: 128,
            client_publish_namespaces: vec!["chat".into()],
            drain_window: Duration::from_secs(10),
            demo_page: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        gateway: GatewayConfig,
    }

    #[test]
    fn cli_defaults_match_default() {
        let parsed = Cli::parse_from(["chorus-gateway"]).gateway;
        let default = GatewayConfig::default();
        assert_eq!(parsed.listen, default.listen);
        assert_eq!(parsed.ping_interval, default.ping_interval);
        assert_eq!(parsed.idle_timeout, default.idle_timeout);
        assert_eq!(parsed.max_message_size, default.max_message_size);
        assert_eq!(parsed.queue_max_bytes, default.queue_max_bytes);
        assert_eq!(parsed.drain_window, default.drain_window);
        assert_eq!(
            parsed.client_publish_namespaces,
            default.client_publish_namespaces
        );
    }

    #[test]
    fn client_publish_namespaces_match_by_name_default_or_wildcard() {
        let mut c = GatewayConfig::default();
        assert!(c.client_may_publish("chat"));
        assert!(!c.client_may_publish("news"));
        assert!(!c.client_may_publish(""));
        c.client_publish_namespaces = vec!["default".into()];
        assert!(c.client_may_publish(""));
        c.client_publish_namespaces = vec!["*".into()];
        assert!(c.client_may_publish("news"));
    }
}
