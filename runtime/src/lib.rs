//! What every Chorus binary runs on, whatever service it is: log set-up ([`logging`]),
//! SIGINT/SIGTERM as a cancellation ([`shutdown`]), the process's one Prometheus recorder
//! ([`metrics`]), durations and sizes as people write them in flags and files ([`units`]),
//! OpenTelemetry traces when a collector is configured ([`traces`]), and the
//! `completions`/`man` subcommands every binary has ([`tools`]).
//!
//! A binary's `main` parses its flags (whose duration and size values go through [`units`]),
//! calls [`logging::init`], spawns [`shutdown::on_signal`] and hands the cancellation to its
//! service; each service installs the recorder with [`metrics::install`] on start and serves
//! [`metrics::render`] at `/metrics`. Nothing here knows about channels, Redis or clients.

pub mod config_file;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod tools;
pub mod traces;
pub mod units;
