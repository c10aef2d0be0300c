//! `chorus`: the whole of Chorus in one process — a gateway, the broker API and an in-memory
//! bus — with the demo page at `/`. Needs no Redis. It runs the same gateway and broker-api
//! code as a cluster; only the bus differs.

use std::time::Duration;

use anyhow::Context;
use chorus_broker_api::BrokerConfig;
use chorus_bus::logging::{self, LogConfig};
use chorus_bus::namespaces::NamespacesConfig;
use chorus_bus::{Bus, MemoryBusConfig};
use chorus_gateway::GatewayConfig;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The API key used when none is configured, so a first run works out of the box.
const DEV_API_KEY: &str = "dev-key";
/// How long a client command may wait on the bus. The in-memory bus answers at once; this only
/// bounds the wait the gateway's code path always has.
const BUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Chorus in one process: WebSocket gateway, broker API (HTTP and gRPC) and an in-memory bus.
#[derive(Parser)]
#[command(name = "chorus", version)]
struct Cli {
    #[command(flatten)]
    gateway: GatewayConfig,
    #[command(flatten)]
    api: BrokerConfig,
    #[command(flatten)]
    namespaces: NamespacesConfig,
    #[command(flatten)]
    bus: MemoryBusConfig,
    #[command(flatten)]
    log: LogConfig,
    /// Do not serve the demo page at `/`.
    #[arg(long = "no-demo-page", env = "CHORUS_NO_DEMO_PAGE")]
    no_demo_page: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    logging::init(&cli.log);
    cli.gateway.demo_page = !cli.no_demo_page;
    if cli.api.api_keys.iter().all(|k| k.trim().is_empty()) {
        tracing::warn!(
            key = DEV_API_KEY,
            "no --api-key given; using the development key"
        );
        cli.api.api_keys = vec![DEV_API_KEY.into()];
    }

    let namespaces = cli
        .namespaces
        .load()
        .context("loading the namespaces file")?;
    let bus = Bus::memory_with(cli.bus).with_namespaces(namespaces);
    let shutdown = CancellationToken::new();
    let gateway_listener = cli
        .gateway
        .bind()
        .with_context(|| format!("binding the gateway to {}", cli.gateway.listen))?;
    let api_listener = tokio::net::TcpListener::bind(&cli.api.listen)
        .await
        .with_context(|| format!("binding the broker API to {}", cli.api.listen))?;
    let ws = gateway_listener.local_addr()?;
    let api = api_listener.local_addr()?;
    tracing::info!("Chorus is running in one process with an in-memory bus");
    if cli.gateway.demo_page {
        tracing::info!("demo page:  http://{}/", reachable(ws));
    }
    tracing::info!("WebSocket:  ws://{}/ws", reachable(ws));
    tracing::info!(
        "server API: http://{}/api/ (HTTP JSON and gRPC; Authorization: Bearer <key>)",
        reachable(api)
    );

    tokio::spawn(chorus_bus::shutdown::on_signal(shutdown.clone()));
    let gateway = chorus_gateway::serve(
        gateway_listener,
        bus.clone(),
        cli.gateway,
        BUS_TIMEOUT,
        shutdown.clone(),
    );
    let broker = chorus_broker_api::serve(api_listener, bus, cli.api, shutdown.clone());
    let (gateway, broker) = tokio::join!(gateway, broker);
    gateway.context("gateway")?;
    broker.context("broker API")?;
    Ok(())
}

/// A listen address as a person would type it in a browser: `0.0.0.0` becomes `127.0.0.1`.
fn reachable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_of_gateway_and_broker_api_do_not_clash() {
        Cli::command().debug_assert();
    }

    #[test]
    fn memory_bus_limits_have_their_defaults_and_can_be_set() {
        let cli = Cli::try_parse_from(["chorus"]).expect("no flags parse");
        assert_eq!(
            cli.bus.max_channels,
            chorus_bus::config::DEFAULT_MAX_CHANNELS
        );
        let cli = Cli::try_parse_from([
            "chorus",
            "--max-channels",
            "5",
            "--max-idempotency-keys",
            "7",
        ])
        .expect("limits parse");
        assert_eq!((cli.bus.max_channels, cli.bus.max_idempotency_keys), (5, 7));
    }
}
