//! `chorus-bench`, Chorus's load generator. See `docs/benchmarks.md` for the scenarios, how
//! to run them (`scripts/bench`) and the figures measured.

pub mod ceiling;
pub mod client;
pub mod hist;
pub mod procstat;
pub mod publisher;
pub mod scenario;
pub mod wire;
