//! The gateway's settings: every one a CLI flag with a `CHORUS_…` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chorus_runtime::units::{parse_duration, parse_size};

use crate::auth::KeySources;

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

    /// Address of the Prometheus endpoint (`GET /metrics`), apart from the client port so
    /// that clients cannot scrape it: loopback by default (a scraper on the same host or in
    /// the same pod); `0.0.0.0:9464` to let a cluster's Prometheus reach it; `off` for none.
    /// (Embedding the gateway as a library, `GatewayConfig::default()`, serves none.)
    #[arg(
        long = "metrics-listen",
        value_name = "ADDR|off",
        env = "CHORUS_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_listen: ListenAddr,

    /// Length of the listening socket's accept queue (the kernel caps it at
    /// `net.core.somaxconn`). Bursts of connects beyond it are dropped by the kernel and
    /// retried by the client a second later.
    #[arg(
        long = "listen-backlog",
        env = "CHORUS_LISTEN_BACKLOG",
        default_value_t = 4096
    )]
    pub listen_backlog: u32,

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

    /// Offer permessage-deflate (RFC 7692) to clients that ask for it: publications of at least
    /// `--compression-min-bytes` are compressed once per wire format and shared by every
    /// subscriber that negotiated it.
    #[arg(long = "permessage-deflate", env = "CHORUS_PERMESSAGE_DEFLATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub permessage_deflate: bool,

    /// Smallest publication frame compressed for clients that negotiated permessage-deflate;
    /// smaller ones are sent as they are (compressing them saves little and costs CPU).
    #[arg(long = "compression-min-bytes", env = "CHORUS_COMPRESSION_MIN_BYTES", default_value = "256B", value_parser = parse_size)]
    pub compression_min_bytes: usize,

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

    /// Most bytes of publications all channels together keep while they wait for history
    /// (after a broken Redis link every busy channel catches up at once); a channel that
    /// finds it spent closes its subscribers with 3003 so they recover from history.
    #[arg(
        long = "catch-up-backlog-max-bytes",
        env = "CHORUS_CATCH_UP_BACKLOG_MAX_BYTES",
        default_value = "64MiB",
        value_parser = parse_size
    )]
    pub catch_up_backlog_max_bytes: usize,

    /// Largest number of channels one connection may subscribe to.
    #[arg(
        long = "max-channels-per-connection",
        env = "CHORUS_MAX_CHANNELS_PER_CONNECTION",
        default_value_t = 128
    )]
    pub max_channels_per_connection: usize,

    /// Most WebSocket connections this gateway holds; upgrades past it are refused with HTTP 503.
    #[arg(
        long = "max-connections",
        env = "CHORUS_MAX_CONNECTIONS",
        default_value_t = 100_000
    )]
    pub max_connections: usize,

    /// Most connections one user (a token's `sub`) may hold on this gateway; past it `connect`
    /// fails with error 106 and the connection is closed (3006). Anonymous ones are not counted.
    #[arg(
        long = "max-connections-per-user",
        env = "CHORUS_MAX_CONNECTIONS_PER_USER",
        default_value_t = 64
    )]
    pub max_connections_per_user: usize,

    /// Time a new WebSocket has to send `connect`; then it is closed (3005).
    #[arg(long = "connect-timeout", env = "CHORUS_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time a client has to send its HTTP request headers (the WebSocket upgrade); then the
    /// TCP connection is dropped.
    #[arg(long = "header-timeout", env = "CHORUS_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Commands per second one connection may send on average (a token bucket); 0 turns the
    /// limit off. Commands over it get error 114.
    #[arg(
        long = "command-rate",
        env = "CHORUS_COMMAND_RATE",
        default_value_t = 100
    )]
    pub command_rate: u32,

    /// Commands one connection may send at once before the rate applies. A connection that
    /// keeps sending through this many refusals in a row is closed (3007).
    #[arg(
        long = "command-burst",
        env = "CHORUS_COMMAND_BURST",
        default_value_t = 200
    )]
    pub command_burst: u32,

    /// History reads per second one connection may make on average — `history` commands and
    /// recovering subscribes, each of which reads from the bus — inside the command rate; 0
    /// turns this limit off. Reads over it get error 114 (the connection stays open).
    #[arg(
        long = "history-rate",
        env = "CHORUS_HISTORY_RATE",
        default_value_t = 10
    )]
    pub history_rate: u32,

    /// History reads one connection may make at once before the history rate applies (a
    /// client resubscribing many channels with recovery after a reconnect).
    #[arg(
        long = "history-burst",
        env = "CHORUS_HISTORY_BURST",
        default_value_t = 50
    )]
    pub history_burst: u32,

    /// Browser origins allowed to open WebSockets, comma-separated, `*` wildcards allowed
    /// (`https://app.example.com,https://*.example.org`). Empty: any origin. Requests without
    /// an Origin header (not from a browser) are always allowed. Others get HTTP 403.
    #[arg(
        long = "allowed-origins",
        env = "CHORUS_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// HMAC secret (at least 32 bytes) for HS256/HS384/HS512 connection tokens.
    #[arg(
        long = "token-hmac-secret",
        env = "CHORUS_TOKEN_HMAC_SECRET",
        hide_env_values = true
    )]
    pub token_hmac_secret: Option<Secret>,

    /// PEM file with the RSA public key for RS256/RS384/RS512 connection tokens.
    #[arg(
        long = "token-rsa-public-key",
        env = "CHORUS_TOKEN_RSA_PUBLIC_KEY",
        value_name = "FILE"
    )]
    pub token_rsa_public_key: Option<PathBuf>,

    /// PEM file with the ECDSA (P-256 or P-384) public key for ES256/ES384 connection tokens.
    #[arg(
        long = "token-ecdsa-public-key",
        env = "CHORUS_TOKEN_ECDSA_PUBLIC_KEY",
        value_name = "FILE"
    )]
    pub token_ecdsa_public_key: Option<PathBuf>,

    /// JSON Web Key Set file (`{"keys":[…]}`) with the keys for connection tokens, picked by `kid`.
    #[arg(long = "token-jwks", env = "CHORUS_TOKEN_JWKS", value_name = "FILE")]
    pub token_jwks: Option<PathBuf>,

    /// Required `aud` claim of connection tokens.
    #[arg(long = "token-audience", env = "CHORUS_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// Required `iss` claim of connection tokens.
    #[arg(long = "token-issuer", env = "CHORUS_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// Allow connections without a token (or with a token without `sub`) even though token
    /// keys are configured. Without any token key every connection is anonymous anyway.
    #[arg(long = "allow-anonymous", env = "CHORUS_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Testing only: every WebSocket message is echoed back instead of run as a command, so
    /// a WebSocket conformance suite (Autobahn, scripts/autobahn) can drive the gateway's
    /// frame handling. Never enable in production.
    #[arg(
        long = "conformance-echo",
        env = "CHORUS_CONFORMANCE_ECHO",
        hide = true
    )]
    pub conformance_echo: bool,

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
    /// Where the token keys come from.
    pub fn key_sources(&self) -> KeySources {
        KeySources {
            hmac_secret: self.token_hmac_secret.as_ref().map(|s| s.0.clone()),
            rsa_public_key: self.token_rsa_public_key.clone(),
            ecdsa_public_key: self.token_ecdsa_public_key.clone(),
            jwks: self.token_jwks.clone(),
            audience: self.token_audience.clone(),
            issuer: self.token_issuer.clone(),
        }
    }
}

/// A secret from the configuration; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An address to listen on, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenAddr(pub Option<SocketAddr>);

impl std::str::FromStr for ListenAddr {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "off" => Ok(Self(None)),
            addr => addr.parse().map(|a| Self(Some(a))),
        }
    }
}

impl GatewayConfig {
    /// Binds the gateway's listening socket with its accept queue length (the standard
    /// library's and tokio's `bind` use 128, which a burst of reconnecting clients overflows).
    pub fn bind(&self) -> std::io::Result<tokio::net::TcpListener> {
        let socket = match self.listen {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(self.listen)?;
        socket.listen(self.listen_backlog)
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            metrics_listen: ListenAddr(None),
            listen_backlog: 4096,
            node_id: None,
            advertise_address: None,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            max_message_size: 65536,
            permessage_deflate: true,
            compression_min_bytes: 256,
            queue_max_bytes: 1 << 20,
            queue_max_frames: 4096,
            catch_up_backlog_max_bytes: 64 << 20,
            max_channels_per_connection: 128,
            max_connections: 100_000,
            max_connections_per_user: 64,
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            command_rate: 100,
            command_burst: 200,
            history_rate: 10,
            history_burst: 50,
            allowed_origins: Vec::new(),
            token_hmac_secret: None,
            token_rsa_public_key: None,
            token_ecdsa_public_key: None,
            token_jwks: None,
            token_audience: None,
            token_issuer: None,
            allow_anonymous: false,
            conformance_echo: false,
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
        assert_eq!(
            parsed.metrics_listen,
            "127.0.0.1:9464".parse().unwrap(),
            "the binary serves metrics on loopback; the library default serves none"
        );
        assert_eq!(default.metrics_listen, ListenAddr(None));
        let off = Cli::parse_from(["chorus-gateway", "--metrics-listen", "off"]).gateway;
        assert_eq!(off.metrics_listen, ListenAddr(None));
        assert_eq!(parsed.ping_interval, default.ping_interval);
        assert_eq!(parsed.idle_timeout, default.idle_timeout);
        assert_eq!(parsed.max_message_size, default.max_message_size);
        assert_eq!(parsed.queue_max_bytes, default.queue_max_bytes);
        assert_eq!(parsed.max_connections, default.max_connections);
        assert_eq!(parsed.drain_window, default.drain_window);
        assert_eq!(
            parsed.max_connections_per_user,
            default.max_connections_per_user
        );
        assert_eq!(parsed.connect_timeout, default.connect_timeout);
        assert_eq!(parsed.header_timeout, default.header_timeout);
        assert_eq!(parsed.command_rate, default.command_rate);
        assert_eq!(parsed.command_burst, default.command_burst);
        assert_eq!(parsed.history_rate, default.history_rate);
        assert_eq!(parsed.history_burst, default.history_burst);
        assert_eq!(parsed.allowed_origins, default.allowed_origins);
        assert_eq!(parsed.allow_anonymous, default.allow_anonymous);
        assert_eq!(parsed.token_hmac_secret, None);
    }

    #[test]
    fn the_hmac_secret_is_never_printed() {
        let parsed = Cli::parse_from([
            "chorus-gateway",
            "--token-hmac-secret",
            "0123456789abcdef0123456789abcdef-s3cret",
        ])
        .gateway;
        assert!(!format!("{parsed:?}").contains("s3cret"));
        assert!(parsed.key_sources().hmac_secret.is_some());
    }
}
