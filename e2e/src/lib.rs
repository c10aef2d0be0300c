//! Deployment tests for Chorus; everything is in `tests/`:
//!
//! - `deploy_config`: `docker-compose.yml`, `deploy/` (env file, Dockerfile, nginx template,
//!   Prometheus, Grafana) and `deploy/k8s/` checked against what the binaries accept — every
//!   variable and flag parsed by the binaries' own command-line definitions, ports and health
//!   paths answered by the real services, metric names used by the dashboard and alerts
//!   exported by the code;
//! - `local_cluster`: `scripts/local-cluster` runs the compose topology as local processes
//!   (Redis, broker-api, two gateways, nginx) and a client goes through nginx.
//! - `js_sdk`: the JavaScript client's suites (`node --test` in `sdk/js`): the client against
//!   real redis-server, broker-api and gateway processes, and the demo page in headless
//!   Chromium driven by playwright-core (`scripts/test` installs Node.js, Chromium and the
//!   npm packages).
//!
//! All use the `chorus-gateway` and `chorus-broker-api` binaries of the same build (the
//! target directory holding the test executable), which `cargo nextest run --workspace` /
//! `scripts/test` build. Run alone: `cargo build -p chorus-gateway -p chorus-broker-api` first.

use std::path::{Path, PathBuf};

/// The workspace's root directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The directory of this build's binaries (a test executable lives in its `deps/`), checked to
/// hold `chorus-gateway` and `chorus-broker-api`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    for bin in ["chorus-gateway", "chorus-broker-api"] {
        assert!(
            dir.join(bin).is_file(),
            "{bin} is not built in {}: run scripts/test, or cargo build -p chorus-gateway \
             -p chorus-broker-api --bins before running this test alone",
            dir.display()
        );
    }
    dir
}
