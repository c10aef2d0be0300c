//! `chorus-gateway`: one gateway node of a Chorus cluster (Redis bus).

use anyhow::Context;
use chorus_bus::logging::{self, LogConfig};
use chorus_bus::namespaces::NamespacesConfig;
use chorus_bus::{Bus, BusConfig};
use chorus_gateway::GatewayConfig;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// A Chorus gateway node: holds client WebSockets at /ws and fans out publications from Redis.
#[derive(Parser)]
#[command(name = "chorus-gateway", version)]
struct Cli {
    #[command(flatten)]
    gateway: GatewayConfig,
    #[command(flatten)]
    bus: BusConfig,
    #[command(flatten)]
    namespaces: NamespacesConfig,
    #[command(flatten)]
    log: LogConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(&cli.log);
    let bus = Bus::redis(&cli.bus)
        .context("configuring the Redis bus")?
        .with_namespaces(cli.namespaces.load()?);
    let listener = tokio::net::TcpListener::bind(cli.gateway.listen)
        .await
        .with_context(|| format!("binding {}", cli.gateway.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(chorus_bus::shutdown::on_signal(shutdown.clone()));
    chorus_gateway::serve(listener, bus, cli.gateway, cli.bus.redis_timeout, shutdown).await?;
    Ok(())
}
