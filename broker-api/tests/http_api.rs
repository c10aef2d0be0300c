//! The HTTP/JSON API against a real server on a loopback port (memory bus).

mod common;

use std::time::Duration;

use chorus_bus::{Bus, NodeInfo};
use common::{Collect, KEY, OTHER_KEY, TestServer, attach_node, config, http};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(server: &TestServer, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
    let resp = http()
        .post(server.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

async fn post_raw(server: &TestServer, path: &str, body: &'static str) -> (StatusCode, Value) {
    let resp = http()
        .post(server.url(path))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

fn assert_error_shape(body: &Value, code: &str) {
    assert_eq!(error_code(body), code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without message: {body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "extra fields: {body}");
}

#[tokio::test]
async fn publish_returns_consecutive_offsets_in_one_epoch() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let mut seen = Vec::new();
    for i in 0..3 {
        let (status, body) = post(
            &server,
            "/api/publish",
            KEY,
            json!({"channel": "news", "data": {"n": i}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        seen.push((
            body["offset"].as_u64().unwrap(),
            body["epoch"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(!seen[0].1.is_empty());
    assert!(
        seen.iter().all(|s| s.1 == seen[0].1),
        "epochs differ: {seen:?}"
    );
}

#[tokio::test]
async fn published_data_is_the_exact_json_text_or_the_decoded_base64() {
    let bus = Bus::memory();
    let sink = Collect::new();
    let link = bus.attach(
        NodeInfo {
            id: "gw".into(),
            address: String::new(),
            connections: 0,
            started_at_ms: 0,
        },
        sink.clone(),
    );
    link.want("raw").wait(Duration::from_secs(1)).await.unwrap();
    let server = TestServer::start(bus, config()).await;

    let (status, _) = post_raw(
        &server,
        "/api/publish",
        r#"{"channel":"raw","data":{"b":  1, "a":[1.50, "x"]}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post_raw(&server, "/api/publish", r#"{"channel":"raw","data":null}"#).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post_raw(
        &server,
        "/api/publish",
        r#"{"channel":"raw","b64data":"AAH/"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(
        sink.data(),
        [
            br#"{"b":  1, "a":[1.50, "x"]}"#.to_vec(),
            b"null".to_vec(),
            vec![0, 1, 255],
        ]
    );
}

#[tokio::test]
async fn broadcast_gives_one_result_per_channel_in_order_including_bad_channel() {
    let server = TestServer::start(Bus::memory(), config()).await;
    post(
        &server,
        "/api/publish",
        KEY,
        json!({"channel": "b", "data": 1}),
    )
    .await;
    let (status, body) = post(
        &server,
        "/api/broadcast",
        KEY,
        json!({"channels": ["a", "bad{name}", "b"], "data": "hi"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["channel"], "a");
    assert_eq!(results[0]["offset"], 1);
    assert!(results[0]["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(results[1]["channel"], "bad{name}");
    assert_eq!(results[1]["error"]["code"], "bad_channel");
    assert!(
        results[1]["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(results[1].get("offset").is_none());
    assert_eq!(results[2]["channel"], "b");
    assert_eq!(results[2]["offset"], 2);
}

#[tokio::test]
async fn broadcast_with_no_channels_is_a_bad_request() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let (status, body) = post(
        &server,
        "/api/broadcast",
        KEY,
        json!({"channels": [], "data": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body, "bad_request");
}

#[tokio::test]
async fn broadcast_over_the_channel_limit_is_too_large() {
    let server = TestServer::memory_with(|c| c.max_broadcast = 2).await;
    let (status, body) = post(
        &server,
        "/api/broadcast",
        KEY,
        json!({"channels": ["a", "b", "c"], "data": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_shape(&body, "too_large");
}

#[tokio::test]
async fn invalid_json_is_a_bad_request_in_the_error_shape() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let (status, body) = post_raw(&server, "/api/publish", r#"{"channel":"news","data":"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body, "bad_request");
}

#[tokio::test]
async fn missing_field_is_a_bad_request() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let (status, body) = post(&server, "/api/publish", KEY, json!({"data": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body, "bad_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("channel"),
        "{body}"
    );

    let (status, body) = post(&server, "/api/publish", KEY, json!({"channel": "news"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body, "bad_request");

    let (status, body) = post(&server, "/api/broadcast", KEY, json!({"data": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body, "bad_request");
}

#[tokio::test]
async fn both_data_and_b64data_is_a_bad_request() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let (status, body) = post(
        &server,
        "/api/publish",
        KEY,
        json!({"channel": "news", "data": 1, "b64data": "AQ=="}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body, "bad_request");
}

#[tokio::test]
async fn invalid_base64_is_a_bad_request() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let (status, body) = post(
        &server,
        "/api/publish",
        KEY,
        json!({"channel": "news", "b64data": "not base64!"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body, "bad_request");
}

#[tokio::test]
async fn non_json_content_type_is_a_bad_request() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let resp = http()
        .post(server.url("/api/publish"))
        .bearer_auth(KEY)
        .header("content-type", "text/plain")
        .body(r#"{"channel":"news","data":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_error_shape(&resp.json().await.unwrap(), "bad_request");
}

#[tokio::test]
async fn bad_channel_name_is_a_400_bad_channel() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let (status, body) = post(
        &server,
        "/api/publish",
        KEY,
        json!({"channel": "no spaces", "data": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body, "bad_channel");
}

#[tokio::test]
async fn oversized_data_is_413_too_large_naming_the_limit() {
    let server = TestServer::memory_with(|c| c.max_data = 100).await;
    let big = "x".repeat(200);
    let (status, body) = post(
        &server,
        "/api/publish",
        KEY,
        json!({"channel": "news", "data": big}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_shape(&body, "too_large");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("100"),
        "{body}"
    );

    // The same limit applies to decoded base64 and to broadcasts.
    let b64 = "A".repeat(400);
    let (status, body) = post(
        &server,
        "/api/publish",
        KEY,
        json!({"channel": "news", "b64data": b64}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_shape(&body, "too_large");
    let (status, body) = post(
        &server,
        "/api/broadcast",
        KEY,
        json!({"channels": ["a"], "data": "x".repeat(200)}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_shape(&body, "too_large");
}

#[tokio::test]
async fn body_over_the_body_limit_is_413_too_large() {
    let server = TestServer::memory_with(|c| c.max_body = 1024).await;
    let (status, body) = post(
        &server,
        "/api/publish",
        KEY,
        json!({"channel": "news", "data": "x".repeat(4096)}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_shape(&body, "too_large");
}

#[tokio::test]
async fn missing_key_is_401_unauthorized() {
    let server = TestServer::start(Bus::memory(), config()).await;
    for (method, path) in [
        ("POST", "/api/publish"),
        ("POST", "/api/broadcast"),
        ("GET", "/api/nodes"),
    ] {
        let resp = http()
            .request(method.parse().unwrap(), server.url(path))
            .json(&json!({"channel": "news", "channels": ["news"], "data": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_error_shape(&resp.json().await.unwrap(), "unauthorized");
    }
}

#[tokio::test]
async fn wrong_key_is_401_unauthorized() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let (status, body) = post(
        &server,
        "/api/publish",
        "not-a-key",
        json!({"channel": "news", "data": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error_shape(&body, "unauthorized");

    let resp = http()
        .post(server.url("/api/publish"))
        .header("authorization", format!("Basic {KEY}"))
        .json(&json!({"channel": "news", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn any_of_several_configured_keys_is_accepted() {
    let server = TestServer::start(Bus::memory(), config()).await;
    for key in [KEY, OTHER_KEY] {
        let (status, body) = post(
            &server,
            "/api/publish",
            key,
            json!({"channel": "news", "data": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn nodes_lists_an_attached_node_with_its_connection_count() {
    let bus = Bus::memory();
    let _link = attach_node(&bus, 1_700_000_000_000, &["c1", "c2"]);
    let server = TestServer::start(bus, config()).await;
    let resp = http()
        .get(server.url("/api/nodes"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"nodes": [{
            "id": "gateway-1",
            "address": "ws://127.0.0.1:9000/ws",
            "connections": 2,
            "started_at_ms": 1_700_000_000_000_i64,
        }]})
    );
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_without_a_key() {
    let server = TestServer::start(Bus::memory(), config()).await;
    for path in ["/healthz", "/readyz"] {
        let resp = http().get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let resp = http()
        .get(server.url("/api/publsh"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_error_shape(&resp.json().await.unwrap(), "not_found");

    let resp = http()
        .get(server.url("/api/publish"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_error_shape(&resp.json().await.unwrap(), "method_not_allowed");
}

#[tokio::test]
async fn publish_past_the_memory_bus_channel_cap_is_refused_as_limit_exceeded() {
    let bus = Bus::memory_with(chorus_bus::MemoryBusConfig {
        max_channels: 2,
        ..chorus_bus::MemoryBusConfig::default()
    });
    let server = TestServer::start(bus, config()).await;
    for channel in ["chat:a", "chat:b"] {
        let (status, body) = post(
            &server,
            "/api/publish",
            KEY,
            json!({"channel": channel, "data": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = post(
        &server,
        "/api/publish",
        KEY,
        json!({"channel": "chat:c", "data": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_error_shape(&body, "limit_exceeded");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("at most 2 channels"), "{body}");
    // The channels the bus already holds keep working.
    let (status, body) = post(
        &server,
        "/api/publish",
        KEY,
        json!({"channel": "chat:a", "data": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["offset"], 2, "{body}");
}
