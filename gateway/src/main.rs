//! `chorus-gateway`: one gateway node of a Chorus cluster (Redis bus).

use anyhow::Context;
use chorus_bus::Bus;
use chorus_gateway::Cli;
use chorus_runtime::logging;
use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(tool) = &cli.tool {
        return Ok(tool.run(Cli::command())?);
    }
    logging::init(&cli.log);
    let namespaces = cli
        .namespaces
        .load()
        .context("loading the namespaces file")?;
    let bus = Bus::redis(&cli.bus)
        .context("configuring the Redis bus")?
        .with_namespaces(namespaces);
    let listener = cli
        .gateway
        .bind()
        .with_context(|| format!("binding {}", cli.gateway.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(chorus_runtime::shutdown::on_signal(shutdown.clone()));
    chorus_gateway::serve(listener, bus, cli.gateway, cli.bus.redis_timeout, shutdown).await?;
    Ok(())
}
