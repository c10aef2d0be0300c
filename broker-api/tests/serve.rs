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
