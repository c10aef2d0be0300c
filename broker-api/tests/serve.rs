//! `serve`'s life cycle: refusing to start without a key, and stopping on cancel.

mod common;

use std::time::Duration;

use chorus_broker_api::{BrokerConfig, BrokerError};
use chorus_bus::Bus;
use common::{KEY, TestServer, config, http};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn serve_refuses_to_start_without_an_api_key() {
    for keys in [vec![], vec![String::new(), " ".into()]] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = BrokerConfig {
            api_keys: keys,
            ..BrokerConfig::default()
        };
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            chorus_broker_api::serve(listener, Bus::memory(), config, CancellationToken::new()),
        )
        .await
        .expect("serve must return at once");
        let err = result.unwrap_err();
        assert!(matches!(err, BrokerError::NoApiKey), "{err:?}");
        assert!(err.to_string().contains("CHORUS_API_KEYS"), "{err}");
    }
}

#[tokio::test]
async fn serve_returns_on_cancel_and_stops_accepting() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let addr = server.addr;
    let resp = http().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);

    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("serve must return after cancel")
        .unwrap();
    let after = http()
        .post(format!("http://{addr}/api/publish"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"channel": "news", "data": 1}))
        .send()
        .await;
    assert!(after.is_err(), "still serving after shutdown: {after:?}");
}

/// Reads until the server closes the connection; returns how long that took.
async fn time_to_close(
    stream: &mut tokio::net::TcpStream,
    started: std::time::Instant,
) -> Duration {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the server closes the connection within 5 s")
        {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {} // a 408 before the close is fine
        }
    }
}

#[tokio::test]
async fn slow_or_silent_clients_are_dropped_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let timeout = Duration::from_millis(500);
    let server = TestServer::memory_with(|c| c.header_timeout = timeout).await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthor")
        .await
        .unwrap();
    let silent_after = time_to_close(&mut silent, started).await;
    let partial_after = time_to_close(&mut partial, started).await;
    assert!(silent_after >= timeout, "{silent_after:?}");
    assert!(partial_after >= timeout, "{partial_after:?}");
    // Others are served meanwhile and after.
    let resp = http().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
}

#[test]
fn completions_and_man_page_describe_the_flags() {
    chorus_testkit::check_tools(env!("CARGO_BIN_EXE_chorus-broker-api"), "--api-listen");
}
