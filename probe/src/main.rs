//! `chorus-probe gateway|broker-api [PATH]`: exits 0 when the service on this host answers
//! `GET PATH` (default `/healthz`) with a 2xx status within 2 s, else 1. Used as the
//! `HEALTHCHECK` of Chorus's distroless images. Reads the service's listen address from the
//! same `CHORUS_GATEWAY_LISTEN` / `CHORUS_API_LISTEN` variable the service reads.

use std::process::ExitCode;
use std::time::Duration;

use chorus_probe::{Service, get, target};

const USAGE: &str = "usage: chorus-probe gateway|broker-api [PATH]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(service) = args.next().as_deref().and_then(Service::parse) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let path = args.next().unwrap_or_else(|| "/healthz".into());
    let (variable, default) = service.listen_variable();
    let listen = std::env::var(variable).unwrap_or_else(|_| default.into());
    let outcome = target(&listen).and_then(|addr| get(addr, &path, Duration::from_secs(2)));
    match outcome {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{path}: HTTP {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            ExitCode::FAILURE
        }
    }
}
