//! The `chorus-broker-api` binary: parses the settings, connects the Redis bus and serves
//! the API until SIGINT or SIGTERM. Everything else lives in the library.

use anyhow::Context as _;
use chorus_broker_api::BrokerConfig;
use chorus_bus::logging::{self, LogConfig};
use chorus_bus::namespaces::NamespacesConfig;
use chorus_bus::{Bus, BusConfig};
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Chorus broker-api: publish into Chorus over HTTP/JSON and gRPC on one port.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    broker: BrokerConfig,
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

    let broker = cli.broker.with_bus_timeout(&cli.bus);
    let namespaces = cli
        .namespaces
        .load()
        .context("loading the namespaces file")?;
    let bus = Bus::redis(&cli.bus)
        .context("configuring the Redis bus")?
        .with_namespaces(namespaces);
    let listener = TcpListener::bind(&broker.listen)
        .await
        .with_context(|| format!("binding {}", broker.listen))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(chorus_bus::shutdown::on_signal(shutdown.clone()));
    chorus_broker_api::serve(listener, bus, broker, shutdown).await?;
    Ok(())
}
