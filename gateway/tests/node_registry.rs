//! The node registry across real processes: gateways register with their connection counts,
//! and a gateway killed with SIGKILL disappears within its lease.

mod support;

use std::time::Duration;

use chorus_protocol::api;
use chorus_protocol::wire::Format;
use chorus_testkit::{Process, WsClient, eventually, free_port, wait_http_ok};
use serde_json::Value;
use support::{API_KEY, authed};

fn gateway_process(redis_url: &str, id: &str, port: u16) -> Process {
    support::gateway_process(redis_url, port, &["--node-id", id, "--node-lease", "1s"])
}

async fn http_nodes(client: &reqwest::Client, api: &str) -> Vec<(String, u64)> {
    let Ok(resp) = client
        .get(format!("{api}/api/nodes"))
        .bearer_auth(API_KEY)
        .send()
        .await
    else {
        return Vec::new();
    };
    let body: Value = resp.json().await.unwrap_or_default();
    let mut nodes: Vec<(String, u64)> = body["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or("").to_owned(),
                n["connections"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_list_counts_connections_and_forgets_a_killed_gateway_within_the_lease() {
    let cluster = support::Cluster::start(0).await;
    let redis_url = cluster.redis.url();
    let (p1, p2) = (free_port(), free_port());
    let _g1 = gateway_process(&redis_url, "gw-a", p1);
    let mut g2 = gateway_process(&redis_url, "gw-b", p2);
    for p in [p1, p2] {
        wait_http_ok(
            &format!("http://127.0.0.1:{p}/readyz"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let ws = |p: u16| format!("ws://127.0.0.1:{p}/ws");
    let _c1 = WsClient::connect(&ws(p1), Format::Json).await.unwrap();
    let _c2 = WsClient::connect(&ws(p1), Format::Protobuf).await.unwrap();
    let _c3 = WsClient::connect(&ws(p2), Format::Json).await.unwrap();

    let http = reqwest::Client::new();
    let api = cluster.api_url("");
    let expected = vec![("gw-a".to_string(), 2), ("gw-b".to_string(), 1)];
    eventually(
        Duration::from_secs(5),
        "both nodes listed with their counts",
        || {
            let (http, api, expected) = (http.clone(), api.clone(), expected.clone());
            async move { http_nodes(&http, &api).await == expected }
        },
    )
    .await
    .unwrap();
    let mut grpc_nodes: Vec<(String, u64)> = cluster
        .grpc()
        .await
        .nodes(authed(api::NodesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| (n.id, n.connections))
        .collect();
    grpc_nodes.sort();
    assert_eq!(grpc_nodes, expected);

    g2.kill();
    let killed_at = std::time::Instant::now();
    eventually(
        Duration::from_secs(4),
        "killed gateway leaves the list",
        || {
            let (http, api) = (http.clone(), api.clone());
            async move { http_nodes(&http, &api).await == vec![("gw-a".to_string(), 2)] }
        },
    )
    .await
    .unwrap();
    assert!(
        killed_at.elapsed() < Duration::from_millis(2500),
        "gone after {:?}",
        killed_at.elapsed()
    );
}

#[test]
fn completions_and_man_page_describe_the_flags() {
    chorus_testkit::check_tools(env!("CARGO_BIN_EXE_chorus-gateway"), "--metrics-listen");
}
