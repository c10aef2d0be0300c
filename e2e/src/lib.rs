//! Deployment tests for Chorus; everything is in `tests/`:
//!
//! - `deploy_config`: `docker-compose.yml`, `deploy/` (env file, Dockerfile, nginx template,
//!   Prometheus, Grafana) and `deploy/k8s/` checked against what the binaries accept — every
//!   variable and flag parsed by the binaries' own command-line definitions, ports and health
//!   paths answered by the real services, metric names used by the dashboard and alerts
//!   exported by the code;
//! - `local_cluster`: `scripts/local-cluster` runs the compose topology as local processes
//!   (Redis, broker-api, two gateways, nginx) and a client goes through nginx.
//! - `pusher_js`: the unmodified Pusher libraries (`sdk/pusher-test`: pusher-js, the `pusher`
//!   server library, Laravel Echo) against real processes: the Pusher protocol, the HTTP API
//!   and webhooks;
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

/// Runs `node --test` on `files` in the npm package `package` (relative to the workspace
/// root), against this build's binaries (`CHORUS_BIN_DIR`), and fails unless every test
/// passed within `limit`. `modules` are the packages the suite needs installed: without them
/// the failure says to run `npm ci` (which `scripts/test` does).
pub fn node_test(package: &str, modules: &[&str], files: &[&str], limit: std::time::Duration) {
    use std::os::unix::process::CommandExt as _;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    /// Kills the node process group (node and everything it started) if the test ends early.
    struct Group(Child);

    impl Drop for Group {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                // SAFETY: kill(2) with the group id of a child this test started.
                unsafe {
                    libc::kill(-(self.0.id() as i32), libc::SIGKILL);
                }
                let _ = self.0.wait();
            }
        }
    }

    let dir = root().join(package);
    for module in modules {
        assert!(
            dir.join("node_modules").join(module).is_dir(),
            "{package} has no node_modules/{module}: run `npm ci` in {package} (scripts/test does)"
        );
    }
    let out_path = std::env::temp_dir().join(format!(
        "chorus-node-{}-{}.log",
        std::process::id(),
        files.join("-").replace('/', "_")
    ));
    let out = std::fs::File::create(&out_path).expect("log file");
    let child = Command::new("node")
        // Force the exit once every test ended: a client library left with a socket or a
        // timer (pusher-js after a connection the server refused) would keep node alive.
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-force-exit",
            "--test-reporter=tap",
        ])
        .args(files)
        .current_dir(&dir)
        .env("CHORUS_BIN_DIR", bin_dir())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("node could not start ({e}): install Node.js >= 20"));
    let mut group = Group(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = group.0.try_wait().expect("wait for node") {
            break status;
        }
        if started.elapsed() > limit {
            let output = std::fs::read_to_string(&out_path).unwrap_or_default();
            drop(group); // kills node and the processes it started
            panic!("node --test {files:?} took longer than {limit:?}\n{output}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    // The TAP summary: `# pass N` / `# fail N`.
    let count = |key: &str| {
        output
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|n| n.trim().parse::<u32>().ok())
    };
    let (pass, fail) = (count("# pass "), count("# fail "));
    assert!(
        status.success() && fail == Some(0) && pass.is_some_and(|n| n > 0),
        "node --test {files:?}: {status}, pass {pass:?}, fail {fail:?}\n{output}"
    );
}
