//! The `chorus-broker-api` binary's command line, here in the library so that tests can check
//! deployment files (compose, Kubernetes) against the flags and variables it really accepts.

use chorus_bus::BusConfig;
use chorus_bus::namespaces::NamespacesConfig;
use chorus_runtime::logging::LogConfig;

use crate::BrokerConfig;

/// Chorus broker-api: publish into Chorus over HTTP/JSON and gRPC on one port.
#[derive(clap::Parser)]
#[command(name = "chorus-broker-api", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub broker: BrokerConfig,
    #[command(flatten)]
    pub bus: BusConfig,
    #[command(flatten)]
    pub namespaces: NamespacesConfig,
    #[command(flatten)]
    pub pusher: chorus_bus::pusher::PusherConfig,
    #[command(flatten)]
    pub log: LogConfig,
    #[command(flatten)]
    pub runtime: chorus_runtime::tools::RuntimeConfig,
    #[command(flatten)]
    pub config: chorus_runtime::config_file::ConfigArg,
    /// Instead of running: print shell completions, the man page, or check/print a settings file.
    #[command(subcommand)]
    pub tool: Option<chorus_runtime::tools::Tool>,
}

chorus_runtime::service_cli!(Cli);
