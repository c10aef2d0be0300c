//! The JavaScript client (`sdk/js`) and the admin page through their own test suites, so that
//! the workspace's test command covers them: `node --test` runs them against real
//! redis-server, broker-api and gateway processes of this build, and the browser suites drive
//! Debian's Chromium with playwright-core. `scripts/test` installs what they need (`npm ci` in `sdk/js`, Node.js and
//! `chromium` when missing); here a missing piece fails the test with what to do.

use std::time::Duration;

use chorus_e2e::node_test;

/// The JavaScript client's packages its suites need.
const SDK_MODULES: &[&str] = &["playwright-core", "typescript", "ws"];

fn sdk_test(files: &[&str], limit: Duration) {
    node_test("sdk/js", SDK_MODULES, files, limit);
}

#[test]
fn sdk_node_tests_against_real_processes() {
    sdk_test(
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
    sdk_test(&["test/browser.test.js"], Duration::from_secs(110));
}

#[test]
fn admin_page_in_headless_chromium() {
    sdk_test(&["test/admin.test.js"], Duration::from_secs(110));
}
