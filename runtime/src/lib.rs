//! What every Chorus binary runs on, whatever service it is: log set-up ([`logging`]),
//! SIGINT/SIGTERM as a cancellation ([`shutdown`]), the process's one Prometheus recorder
//! ([`metrics`]), durations and sizes as people write them in flags and files ([`units`]),
//! OpenTelemetry traces when a collector is configured ([`traces`]), the runtime's thread
//! count, and the `completions`/`man` subcommands every binary has ([`tools`]).
//!
//! A service binary's `main` is [`tools::run`]: it parses the flags (whose duration and size
//! values go through [`units`]), builds the runtime with the threads they ask for, calls
//! [`logging::init`] in it and runs the service, which spawns [`shutdown::on_signal`] and
//! hands the cancellation on; each service installs the recorder with [`metrics::install`] on
//! start and serves [`metrics::render`] at `/metrics`. Nothing here knows about channels,
//! Redis or clients.

pub mod config_file;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod tools;
pub mod traces;
pub mod units;
