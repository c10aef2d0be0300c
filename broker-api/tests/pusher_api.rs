//! The Pusher HTTP API's checks, one bad request at a time, with requests signed here the way
//! the Pusher libraries sign them; and what a good one publishes on the bus.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_bus::pusher::{App, Apps, Event};
use chorus_bus::{Bus, BusSink, Envelope, NodeInfo};
use common::{TestServer, config, signed};
use serde_json::{Value, json};

const ID: &str = "1001";

fn app() -> App {
    App {
        max_event_channels: 3,
        max_batch_events: 2,
        ..App::new(ID, "key-1001", "secret-1001")
    }
}

async fn server() -> (TestServer, Bus) {
    let bus = Bus::memory().with_pusher_apps(Apps::from_apps(vec![app()]).unwrap());
    (TestServer::start(bus.clone(), config()).await, bus)
}

async fn post(url: &str, body: &str) -> (u16, String, Option<String>) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let connection = r
        .headers()
        .get("connection")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), r.text().await.unwrap(), connection)
}

struct Collect(Mutex<Vec<Envelope>>);
impl BusSink for Collect {
    fn publication(&self, e: Envelope) {
        self.0.lock().unwrap().push(e);
    }
}

/// A node on the bus that keeps every publication it receives.
fn listener(bus: &Bus) -> (chorus_bus::NodeLink, Arc<Collect>) {
    let sink = Arc::new(Collect(Mutex::new(Vec::new())));
    let node = bus.attach(
        NodeInfo {
            id: "n".into(),
            address: "a".into(),
            connections: 0,
            started_at_ms: 0,
        },
        sink.clone(),
    );
    (node, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_published_on_the_apps_channels_with_its_socket_id_excluded() {
    let (s, bus) = server().await;
    let (node, sink) = listener(&bus);
    for ch in ["pusher-1001:a", "pusher-1001:b"] {
        node.want(ch).wait(Duration::from_secs(2)).await.unwrap();
    }
    let path = format!("/apps/{ID}/events");
    let body = json!({"name": "greet", "data": "{\"hi\":1}", "channels": ["a", "b"], "socket_id": "12.34"}).to_string();
    let (status, text, connection) = post(
        &signed(&s, &app(), "POST", &path, &body, &[], |_| {}),
        &body,
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "{}"));
    assert_ne!(connection.as_deref(), Some("close"), "keep-alive");
    let got = sink.0.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    for (env, ch) in got.iter().zip(["pusher-1001:a", "pusher-1001:b"]) {
        assert_eq!(env.channel, ch);
        assert_eq!(env.exclude_client, "12.34");
        assert_eq!(
            Event::from_publication(&env.data),
            Event {
                event: "greet".into(),
                data: "{\"hi\":1}".into(),
                user_id: None
            }
        );
    }
    // A batch, with info.
    let path = format!("/apps/{ID}/batch_events");
    let body = json!({"batch": [
        {"channel": "a", "name": "one", "data": "1", "info": "subscription_count"},
        {"channel": "b", "name": "two", "data": {"n": 2}},
    ]})
    .to_string();
    let (status, text, _) = post(
        &signed(&s, &app(), "POST", &path, &body, &[], |_| {}),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["batch"][0], json!({"subscription_count": 0}));
    let last = sink.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(Event::from_publication(&last.data).data, r#"{"n":2}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_status_and_publishes_nothing() {
    let (s, bus) = server().await;
    let (node, sink) = listener(&bus);
    node.want("pusher-1001:a")
        .wait(Duration::from_secs(2))
        .await
        .unwrap();
    let path = format!("/apps/{ID}/events");
    let good = json!({"name": "e", "data": "x", "channel": "a"}).to_string();
    let batch_path = format!("/apps/{ID}/batch_events");
    // A well-signed request to `path` whose body the app refuses.
    let case = |what, path: &str, body: Value, want| {
        let body = body.to_string();
        (
            what,
            signed(&s, &app(), "POST", path, &body, &[], |_| {}),
            body,
            want,
        )
    };
    // A request to /events with the good body and one signing parameter changed.
    let tampered = |what, change: fn(&mut Vec<(String, String)>)| {
        (
            what,
            signed(&s, &app(), "POST", &path, &good, &[], change),
            good.clone(),
            401,
        )
    };
    let e = json!({"name": "e", "data": "x", "channel": "a"});
    let cases: Vec<(&str, String, String, u16)> = vec![
        (
            "unknown app",
            s.url("/apps/9/events?auth_key=k"),
            good.clone(),
            404,
        ),
        (
            "wrong signature",
            signed(&s, &app(), "POST", &path, &good, &[], |_| {})
                .replace("auth_signature=", "auth_signature=00"),
            good.clone(),
            401,
        ),
        tampered("stale timestamp", |p| p[1].1 = "1000000000".into()),
        tampered("another key", |p| p[0].1 = "other".into()),
        tampered("bad body_md5", |p| p[3].1 = "0".repeat(32)),
        (
            "bad JSON",
            signed(&s, &app(), "POST", &path, "{nope", &[], |_| {}),
            "{nope".into(),
            400,
        ),
        case(
            "too many channels",
            &path,
            json!({"name": "e", "data": "x", "channels": ["a", "b", "c", "d"]}),
            400,
        ),
        case(
            "bad channel",
            &path,
            json!({"name": "e", "data": "x", "channel": "bad;name"}),
            400,
        ),
        case(
            "bad socket_id",
            &path,
            json!({"name": "e", "data": "x", "channel": "a", "socket_id": "abc"}),
            400,
        ),
        case(
            "data too large",
            &path,
            json!({"name": "e", "data": "y".repeat(11 * 1024), "channel": "a"}),
            413,
        ),
        case(
            "empty name",
            &path,
            json!({"name": "", "data": "x", "channel": "a"}),
            400,
        ),
        case(
            "batch too large",
            &batch_path,
            json!({"batch": [e, e, e]}),
            400,
        ),
    ];
    for (what, url, body, want) in cases {
        let (status, text, _) = post(&url, &body).await;
        assert_eq!(status, want, "{what}: {text}");
    }
    assert!(
        sink.0.lock().unwrap().is_empty(),
        "a refused request published"
    );
    // Queries are signed too, and check their parameters.
    let path = format!("/apps/{ID}/channels");
    let url = signed(
        &s,
        &app(),
        "GET",
        &path,
        "",
        &[("info", "user_count")],
        |_| {},
    );
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 400);
    let url = signed(
        &s,
        &app(),
        "GET",
        &path,
        "",
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        |_| {},
    );
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"channels": {}}));
    let url = signed(&s, &app(), "GET", &path, "", &[], |p| p[2].1 = "2.0".into());
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 401);
    let users = format!("/apps/{ID}/channels/news/users");
    let url = signed(&s, &app(), "GET", &users, "", &[], |_| {});
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 400);
}
