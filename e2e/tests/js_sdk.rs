//! The JavaScript client (`sdk/js`) and the admin page through their own test suites, so that
//! the workspace's test command covers them: `node --test` runs them against real
//! redis-server, broker-api and gateway processes of this build, and the browser suites drive
//! Debian's Chromium with playwright-core. `scripts/test` installs what they need (`npm ci` in `sdk/js`, Node.js and
//! `chromium` when missing); here a missing piece fails the test with what to do.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chorus_e2e::{bin_dir, root};

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

/// Runs `node --test` on the given files in `sdk/js` and fails unless every test passed.
fn node_test(files: &[&str], limit: Duration) {
    let sdk = root().join("sdk/js");
    assert!(
        sdk.join("node_modules/playwright-core").is_dir()
            && sdk.join("node_modules/typescript").is_dir()
            && sdk.join("node_modules/ws").is_dir(),
        "sdk/js has no node_modules: run `npm ci` in sdk/js (scripts/test does)"
    );
    let out_path = std::env::temp_dir().join(format!(
        "chorus-js-sdk-{}-{}.log",
        std::process::id(),
        files.join("-").replace('/', "_")
    ));
    let out = std::fs::File::create(&out_path).expect("log file");
    let child = Command::new("node")
        .args(["--test", "--test-concurrency=1", "--test-reporter=tap"])
        .args(files)
        .current_dir(&sdk)
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
        std::thread::sleep(Duration::from_millis(100));
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

#[test]
fn sdk_node_tests_against_real_processes() {
    node_test(
        &[
            "test/types.test.js",
            "test/client.test.js",
            "test/presence.test.js",
        ],
        Duration::from_secs(110),
    );
}

#[test]
fn demo_page_in_headless_chromium() {
    node_test(&["test/browser.test.js"], Duration::from_secs(110));
}

#[test]
fn admin_page_in_headless_chromium() {
    node_test(&["test/admin.test.js"], Duration::from_secs(110));
}
