//! Log set-up for every Chorus binary: `RUST_LOG` filters, `--log-format json` switches to
//! one JSON object per line for log shippers, `--otlp-endpoint` adds traces.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogConfig {
    /// Log line format.
    #[arg(long = "log-format", env = "CHORUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Send OpenTelemetry traces over OTLP/HTTP to this collector (its base URL, e.g.
    /// `http://otel-collector:4318`; spans go to `/v1/traces`). Off when unset.
    #[arg(long = "otlp-endpoint", env = "CHORUS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The fraction of publications traced when traces are on, from 0 to 1.
    #[arg(
        long = "trace-sample-ratio",
        env = "CHORUS_TRACE_SAMPLE_RATIO",
        default_value_t = 1.0
    )]
    pub trace_sample_ratio: f64,
}

/// Installs the global tracing subscriber for `service` (the binary's name): logs, filtered
/// by `RUST_LOG` (default `info`), and with `--otlp-endpoint` the traces layer
/// ([`crate::traces`]). Fails on a bad trace setting.
pub fn init(config: &LogConfig, service: &str) -> Result<(), crate::traces::TraceError> {
    if !(0.0..=1.0).contains(&config.trace_sample_ratio) {
        return Err(crate::traces::TraceError::BadRatio(
            config.trace_sample_ratio,
        ));
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Each layer filters for itself: RUST_LOG sets how much is logged, not what is traced
    // (spans at info and above).
    let traces = match &config.otlp_endpoint {
        Some(endpoint) => Some(
            crate::traces::layer(endpoint, config.trace_sample_ratio, service)?
                .with_filter(LevelFilter::INFO),
        ),
        None => None,
    };
    let registry = tracing_subscriber::registry().with(traces);
    // try_init: a second initialisation (tests, embedding) keeps the first subscriber.
    let _ = match config.log_format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_filter(filter))
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_filter(filter))
            .try_init(),
    };
    Ok(())
}
