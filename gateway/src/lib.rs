//! The Chorus gateway: holds client WebSocket connections and fans publications out to them.
//!
//! Data flows like this. [`serve`] accepts TCP connections and routes them (`server`); a
//! `GET /ws` upgrade becomes a `session`, which reads the client's frames off the bare TCP
//! socket (`frame_reader`) and runs its commands. A subscribe adds the connection to the `hub` and, for a channel's first local
//! subscriber, makes the node's bus link want the channel. The bus delivers each envelope of a
//! wanted channel to the hub once; the hub encodes it once per wire format and queues the same
//! bytes on every subscriber's `conn`, whose single `writer` task puts them on the socket.
//! A client publish goes from the session straight to the bus, like a broker-api publish.
//!
//! The gateway keeps no state that matters: subscriptions live in memory, messages live in
//! the bus, and a client that loses its gateway reconnects to any other.

pub mod auth;
#[doc(hidden)]
pub mod bench_support;
mod catch_up;
pub mod cli;
mod clock;
pub mod config;
mod conn;
mod deflate;
mod frame_reader;
mod hub;
mod limits;
mod message_reader;
pub mod metrics;
mod node;
mod permissions;
mod pusher;
mod read_loop;
mod security;
mod server;
mod session;
mod sessions;
mod writer;

use std::time::Duration;

use chorus_bus::Bus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use cli::Cli;
pub use config::{GatewayConfig, ListenAddr};

/// Runs a gateway node on `listener` until `shutdown` is cancelled, then closes every client
/// connection (close code 3000, after a `disconnect` push with `reconnect: true`) and leaves
/// the cluster registry.
///
/// `bus_timeout` bounds every wait on the bus on a client's behalf. Fails at once
/// (`InvalidInput`) when the configured token keys cannot be loaded.
pub async fn serve(
    listener: TcpListener,
    bus: Bus,
    config: GatewayConfig,
    bus_timeout: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let security = security::Security::from_config(&config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    metrics::init();
    let metrics_listener = match config.metrics_listen.0 {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding --metrics-listen {addr}: {e}"))
        })?),
        None => None,
    };
    let node = node::Node::start(
        bus,
        config,
        bus_timeout,
        local.to_string(),
        shutdown,
        security,
    );
    tracing::info!(node = %node.id, address = %local, "gateway listening");
    if let Some(listener) = metrics_listener {
        tracing::info!(address = %listener.local_addr()?, "metrics at /metrics");
        tokio::spawn(server::metrics_loop(listener, node.shutdown.clone()));
    }
    server::accept_loop(listener, node.clone()).await;
    tracing::info!(node = %node.id, connections = node.connection_count(), channels = node.hub.channel_count(), subscriptions = node.hub.subscription_count(), "gateway stopped");
    node.link.detach().await;
    Ok(())
}
