//! The `chorus-broker-api` binary: parses the settings, connects the Redis bus and serves
//! the API until SIGINT or SIGTERM. Everything else lives in the library.

use anyhow::Context as _;
use chorus_broker_api::Cli;
use chorus_bus::Bus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    chorus_runtime::tools::run(serve)
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let broker = cli.broker.with_bus_timeout(&cli.bus);
    let bus = Bus::configured(&cli.bus, &cli.namespaces, &cli.pusher)
        .context("setting up the Redis bus")?;
    let listener = TcpListener::bind(&broker.listen)
        .await
        .with_context(|| format!("binding {}", broker.listen))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(chorus_runtime::shutdown::on_signal(shutdown.clone()));
    chorus_broker_api::serve(listener, bus, broker, shutdown).await?;
    chorus_runtime::traces::shutdown();
    Ok(())
}
