//! The `chorus-broker-api` binary: parses the settings, connects the Redis bus and serves
//! the API until SIGINT or SIGTERM. Everything else lives in the library.

use anyhow::Context as _;
use chorus_broker_api::Cli;
use chorus_bus::Bus;
use chorus_runtime::logging;
use clap::{CommandFactory, Parser};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(tool) = &cli.tool {
        return Ok(tool.run(Cli::command())?);
    }
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
    tokio::spawn(chorus_runtime::shutdown::on_signal(shutdown.clone()));
    chorus_broker_api::serve(listener, bus, broker, shutdown).await?;
    Ok(())
}
