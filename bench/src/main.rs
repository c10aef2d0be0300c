//! `chorus-bench`: runs one scenario against running Chorus services (or, for `ceiling`,
//! against its own in-process fan-out server), shows progress on stderr, and ends with a
//! human summary and one JSON line on stdout. `scripts/bench` runs the whole suite.

use std::net::SocketAddr;
use std::time::Duration;

use chorus_bench::client::Protocol;
use chorus_bench::procstat::Watched;
use chorus_bench::publisher::Via;
use chorus_bench::scenario::{self, Scenario};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "chorus-bench", version, about = "Chorus load generator")]
struct Cli {
    /// fanout | channels | connect | ceiling
    #[arg(value_enum)]
    scenario: Scenario,
    /// A gateway's address (host:port); repeat for several. Clients are spread round-robin.
    #[arg(long = "gateway", default_value = "127.0.0.1:8000")]
    gateways: Vec<SocketAddr>,
    /// broker-api's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    api: String,
    #[arg(long, env = "CHORUS_BENCH_API_KEY", default_value = "dev-key")]
    api_key: String,
    /// How to publish through broker-api.
    #[arg(long, value_enum, default_value = "grpc-stream")]
    via: Via,
    /// The clients' protocol: protobuf (lean), json (Chorus's JSON form, as browsers use
    /// it) or pusher (the Pusher protocol at /app/{key}, needs --pusher-app).
    #[arg(long = "client-protocol", value_enum, default_value = "protobuf")]
    client_protocol: ClientProtocol,
    /// Offer permessage-deflate (RFC 7692) in every client's upgrade and inflate the frames
    /// that arrive compressed; the report adds the bytes received on the wire per delivery.
    #[arg(long)]
    deflate: bool,
    /// A Pusher app, ID:KEY:SECRET, for `--client-protocol pusher` and `--via pusher`.
    #[arg(long = "pusher-app")]
    pusher_app: Option<chorus_bench::publisher::PusherApp>,
    /// Connections (C).
    #[arg(long, short = 'c', default_value_t = 1000)]
    clients: usize,
    /// Publications (M); with --duration, rate × duration instead.
    #[arg(long, short = 'm', default_value_t = 1000)]
    messages: u64,
    /// Publications per second (R); 0 = as fast as the window allows.
    #[arg(long, short = 'r', default_value_t = 100.0)]
    rate: f64,
    /// Publish for this long (sets M = R × duration), e.g. 10s.
    #[arg(long, value_parser = humantime_secs)]
    duration: Option<Duration>,
    /// Bytes of data per publication (S; at least 62).
    #[arg(long, short = 's', default_value_t = 100)]
    size: usize,
    /// Publications in flight at most.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Connection attempts in flight at most.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Spread client connections over this many source addresses 127.0.0.1..=N (for many
    /// thousands of connections).
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// A server process to measure, NAME=PID (names starting with "gateway" count as
    /// gateways); repeat.
    #[arg(long = "server")]
    servers: Vec<Watched>,
    /// The ceiling's deliveries/s from the same run, to report the ratio.
    #[arg(long)]
    ceiling_dps: Option<f64>,
    /// ceiling: how many ports (like gateways) the in-process server listens on.
    #[arg(long, default_value_t = 2)]
    ceiling_ports: usize,
    /// channels: the share of publications sent to the channel every client is on.
    #[arg(long, default_value_t = 0.01)]
    shared_fraction: f64,
    /// Stop waiting for deliveries after this long without one.
    #[arg(long, value_parser = humantime_secs, default_value = "5s")]
    drain: Duration,
    /// connect: wait this long before reading memory.
    #[arg(long, value_parser = humantime_secs, default_value = "2s")]
    settle: Duration,
    /// A service's `/metrics` URL (broker-api's, each gateway's); repeat. Their latency
    /// histograms over the run give the per-stage latencies in the report.
    #[arg(long = "metrics")]
    metrics: Vec<String>,
    /// A label for the report.
    #[arg(long, default_value = "")]
    label: String,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientProtocol {
    Protobuf,
    Json,
    Pusher,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = n.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let messages = match cli.duration {
        Some(d) if cli.rate > 0.0 => (cli.rate * d.as_secs_f64()).round() as u64,
        _ => cli.messages,
    };
    let protocol = match cli.client_protocol {
        ClientProtocol::Protobuf => Protocol::Protobuf,
        ClientProtocol::Json => Protocol::Json,
        ClientProtocol::Pusher => Protocol::Pusher {
            key: cli
                .pusher_app
                .as_ref()
                .map(|a| a.key.clone())
                .ok_or_else(|| anyhow::anyhow!("--client-protocol pusher needs --pusher-app"))?,
        },
    };
    let opts = scenario::Options {
        scenario: cli.scenario,
        gateways: cli.gateways,
        ceiling_ports: cli.ceiling_ports,
        api: cli.api,
        api_key: cli.api_key,
        via: cli.via,
        protocol: std::sync::Arc::new(protocol),
        deflate: cli.deflate,
        pusher: cli.pusher_app,
        clients: cli.clients,
        messages,
        rate: cli.rate,
        size: cli.size,
        window: cli.window,
        connect_concurrency: cli.connect_concurrency,
        sources: cli.sources.max(1),
        servers: cli.servers,
        ceiling_dps: cli.ceiling_dps,
        shared_fraction: cli.shared_fraction,
        drain: cli.drain,
        settle: cli.settle,
        progress: !cli.quiet,
        label: cli.label,
        metrics: cli.metrics,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(scenario::run(opts))?;
    print!("{}", report.summary());
    println!("{}", serde_json::to_string(&report)?);
    // Client tasks may still be closing their sockets: do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
