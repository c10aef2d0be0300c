//! `chorus-gateway`: one gateway node of a Chorus cluster (Redis bus).

use anyhow::Context;
use chorus_bus::Bus;
use chorus_gateway::Cli;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    chorus_runtime::tools::run(serve)
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let bus = Bus::configured(&cli.bus, &cli.namespaces, &cli.pusher)
        .context("setting up the Redis bus")?;
    let listener = cli
        .gateway
        .bind()
        .with_context(|| format!("binding {}", cli.gateway.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(chorus_runtime::shutdown::on_signal(shutdown.clone()));
    chorus_gateway::serve(listener, bus, cli.gateway, cli.bus.redis_timeout, shutdown).await?;
    chorus_runtime::traces::shutdown();
    Ok(())
}
