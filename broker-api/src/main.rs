//! The `chorus-broker-api` binary: parses the settings, connects the Redis bus and serves
//! the API until SIGINT or SIGTERM. Everything else lives in the library.

use anyhow::Context as _;
use chorus_broker_api::BrokerConfig;
use chorus_bus::logging::{self, LogConfig};
use chorus_bus::{Bus, BusConfig};
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Chorus broker-api: publish into Chorus over HTTP/JSON and gRPC on one port.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    broker: BrokerConfig,
    #[command(flatten)]
    bus: BusConfig,
    #[command(flatten)]
    log: LogConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(&cli.log);

    let broker = cli.broker.with_bus_timeout(&cli.bus);
    let bus = Bus::redis(&cli.bus).context("configuring the Redis bus")?;
    let listener = TcpListener::bind(&broker.listen)
        .await
        .with_context(|| format!("binding {}", broker.listen))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    chorus_broker_api::serve(listener, bus, broker, shutdown).await?;
    Ok(())
}

/// Cancels `shutdown` on SIGINT (Ctrl-C) or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => info!("SIGINT received"),
                    _ = term.recv() => info!("SIGTERM received"),
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
                info!("SIGINT received");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        info!("SIGINT received");
    }
    shutdown.cancel();
}
