//! The single-process `chorus` binary, run as a real process with no Redis anywhere: the same
//! publish/subscribe flow as a cluster, the demo page, and the development API key.

use std::time::Duration;

use chorus_protocol::wire::Format;
use chorus_testkit::{Process, WsClient, free_port, wait_http_ok};
use serde_json::{Value, json};

struct Chorus {
    _process: Process,
    ws: String,
    http: String,
    api: String,
}

async fn start_chorus() -> Chorus {
    let (gw, api) = (free_port(), free_port());
    let args = [
        "--gateway-listen".to_string(),
        format!("127.0.0.1:{gw}"),
        "--api-listen".into(),
        format!("127.0.0.1:{api}"),
        "--metrics-listen".into(),
        "off".into(),
    ];
    // No CHORUS_REDIS_URL, no Redis: the binary must not need one.
    let process = Process::spawn(env!("CARGO_BIN_EXE_chorus"), &args, &[("RUST_LOG", "warn")])
        .expect("chorus starts");
    let chorus = Chorus {
        _process: process,
        ws: format!("ws://127.0.0.1:{gw}/ws"),
        http: format!("http://127.0.0.1:{gw}"),
        api: format!("http://127.0.0.1:{api}"),
    };
    wait_http_ok(&format!("{}/readyz", chorus.http), Duration::from_secs(10))
        .await
        .unwrap();
    wait_http_ok(&format!("{}/healthz", chorus.api), Duration::from_secs(10))
        .await
        .unwrap();
    chorus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_work_in_one_process_without_redis() {
    let chorus = start_chorus().await;
    let (mut a, _) = WsClient::connect(&chorus.ws, Format::Json).await.unwrap();
    let (mut b, _) = WsClient::connect(&chorus.ws, Format::Protobuf)
        .await
        .unwrap();
    a.subscribe("chat:lobby").await.unwrap();
    b.subscribe("chat:lobby").await.unwrap();

    let resp = reqwest::Client::new()
        .post(format!("{}/api/publish", chorus.api))
        .bearer_auth("dev-key")
        .json(&json!({"channel": "chat:lobby", "data": {"text": "from the backend"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["offset"], 1);
    for client in [&mut a, &mut b] {
        let p = client.next_publication().await.unwrap();
        assert_eq!(p.offset, 1);
        assert_eq!(
            serde_json::from_slice::<Value>(&p.data).unwrap(),
            json!({"text": "from the backend"})
        );
    }

    let sent = a
        .publish("chat:lobby", br#"{"text":"from a"}"#)
        .await
        .unwrap();
    assert_eq!(sent.offset, 2);
    let p = b.next_publication().await.unwrap();
    assert_eq!((p.offset, &p.data[..]), (2, &br#"{"text":"from a"}"#[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_is_served_at_the_root() {
    let chorus = start_chorus().await;
    let resp = reqwest::get(format!("{}/", chorus.http)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/html"))
    );
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("/ws"),
        "the page connects to the gateway's WebSocket"
    );
}

#[test]
fn completions_and_man_page_describe_the_flags() {
    chorus_testkit::check_tools(env!("CARGO_BIN_EXE_chorus"), "--no-demo-page");
}
