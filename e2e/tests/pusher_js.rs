//! Pusher compatibility with the real, unmodified libraries from npm (`sdk/pusher-test`):
//! pusher-js and Laravel Echo as clients of two gateways, the official `pusher` server library
//! signing subscriptions, and webhooks verified by that library's checker; `node --test`
//! against real redis-server, broker-api and gateway processes of this build.

use std::time::Duration;

use chorus_e2e::node_test;

const MODULES: &[&str] = &["pusher-js", "pusher", "laravel-echo"];

#[test]
fn pusher_js_and_laravel_echo_against_two_gateways() {
    node_test(
        "sdk/pusher-test",
        MODULES,
        &["test/pusher-js.test.js"],
        Duration::from_secs(100),
    );
}

#[test]
fn the_pusher_server_library_against_the_http_api() {
    node_test(
        "sdk/pusher-test",
        MODULES,
        &["test/server-lib.test.js"],
        Duration::from_secs(100),
    );
}

#[test]
fn webhooks_verified_by_the_pusher_library() {
    node_test(
        "sdk/pusher-test",
        MODULES,
        &["test/webhooks.test.js"],
        Duration::from_secs(100),
    );
}
