//! `chorus`: the whole of Chorus in one process — a gateway, the broker API and an in-memory
//! bus — with the demo page at `/`. Needs no Redis. It runs the same gateway and broker-api
//! code as a cluster; only the bus differs.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use chorus_broker_api::BrokerConfig;
use chorus_bus::namespaces::NamespacesConfig;
use chorus_bus::{Bus, MemoryBusConfig};
use chorus_gateway::GatewayConfig;
use chorus_runtime::logging::{self, LogConfig};

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
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
    pusher: chorus_bus::pusher::PusherConfig,
    #[command(flatten)]
    bus: MemoryBusConfig,
    #[command(flatten)]
    log: LogConfig,
    /// Do not serve the demo page at `/`.
    #[arg(long = "no-demo-page", env = "CHORUS_NO_DEMO_PAGE")]
    no_demo_page: bool,
    #[command(flatten)]
    config: chorus_runtime::config_file::ConfigArg,
    /// Instead of running: print shell completions, the man page, or check/print a settings file.
    #[command(subcommand)]
    tool: Option<chorus_runtime::tools::Tool>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = Cli::command()
        .get_matches_from(chorus_runtime::tools::args_with_config_file(&Cli::command()));
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Some(tool) = &cli.tool {
        return Ok(tool.run(Cli::command())?);
    }
    logging::init(&cli.log, "chorus")?;
    cli.gateway.demo_page = !cli.no_demo_page;
    match use_dev_key(&mut cli, &matches) {
        DevKey::NotUsed => {}
        DevKey::OnLoopback => tracing::warn!(
            key = DEV_API_KEY,
            "no --api-key given: using the development key and listening on 127.0.0.1 only \
             (give --api-key, or --gateway-listen/--api-listen, to listen elsewhere)"
        ),
        DevKey::WhereAsked => tracing::warn!(
            key = DEV_API_KEY,
            "no --api-key given: using the development key on the addresses given; \
             anyone who can reach the API can publish"
        ),
    }

    let bus = Bus::memory_with(cli.bus)
        .with_config(&cli.namespaces, &cli.pusher)
        .context("loading the configuration")?;
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

    tokio::spawn(chorus_runtime::shutdown::on_signal(shutdown.clone()));
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
    chorus_runtime::traces::shutdown();
    Ok(())
}

/// Whether the development API key is in use, and where Chorus then listens.
#[derive(Debug, PartialEq, Eq)]
enum DevKey {
    NotUsed,
    /// No address was given either: both ports moved to loopback.
    OnLoopback,
    /// The operator chose the addresses: they stand.
    WhereAsked,
}

/// With no API key, uses the development key — which anyone can read in this file — and keeps
/// both ports to this machine unless the operator chose where to listen.
fn use_dev_key(cli: &mut Cli, matches: &clap::ArgMatches) -> DevKey {
    if !cli.api.api_keys.iter().all(|k| k.trim().is_empty()) {
        return DevKey::NotUsed;
    }
    cli.api.api_keys = vec![DEV_API_KEY.into()];
    let chosen = |id: &str| matches.value_source(id) != Some(ValueSource::DefaultValue);
    if chosen("gateway_listen") || chosen("api_listen") {
        return DevKey::WhereAsked;
    }
    cli.gateway.listen.set_ip(Ipv4Addr::LOCALHOST.into());
    cli.api.listen = loopback(&cli.api.listen);
    DevKey::OnLoopback
}

/// `host:port` with the host replaced by 127.0.0.1 (unchanged if it does not parse).
fn loopback(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) => std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())).to_string(),
        Err(_) => listen.to_owned(),
    }
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

    fn settled(args: &[&str]) -> (Cli, DevKey) {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let mut cli = Cli::from_arg_matches(&matches).unwrap();
        let dev = use_dev_key(&mut cli, &matches);
        (cli, dev)
    }

    #[test]
    fn the_development_key_keeps_chorus_on_loopback_unless_told_otherwise() {
        let (cli, dev) = settled(&["chorus"]);
        assert_eq!(dev, DevKey::OnLoopback);
        assert_eq!(cli.gateway.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(cli.api.listen, "127.0.0.1:8001");
        assert_eq!(cli.api.api_keys, [DEV_API_KEY]);

        let (cli, dev) = settled(&["chorus", "--api-key", "a-real-key"]);
        assert_eq!(dev, DevKey::NotUsed);
        assert_eq!(cli.gateway.listen.to_string(), "0.0.0.0:8000");

        let (cli, dev) = settled(&["chorus", "--gateway-listen", "0.0.0.0:9000"]);
        assert_eq!(dev, DevKey::WhereAsked);
        assert_eq!(cli.gateway.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(cli.api.listen, "0.0.0.0:8001");
    }

    #[test]
    fn loopback_keeps_the_port() {
        assert_eq!(loopback("0.0.0.0:8001"), "127.0.0.1:8001");
        assert_eq!(loopback("[::]:9"), "127.0.0.1:9");
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
