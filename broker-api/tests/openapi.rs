//! The OpenAPI description against the live server: every documented operation is sent a
//! sample request (a valid one and, for bodies, an invalid one), and each answer's status must
//! be one the description lists for it and its body must match the schema listed for that
//! status. A path added to the server without a description, or described without a sample
//! here, fails the test.

mod common;

use std::collections::BTreeSet;

use chorus_bus::Bus;
use chorus_bus::pusher::{App, Apps};
use common::{KEY, TestServer, config, http, signed};
use serde_json::{Value, json};

/// A Pusher sample: method, documented path, path, body, extra query parameters.
type PusherSample = (
    &'static str,
    &'static str,
    &'static str,
    Option<Value>,
    Vec<(&'static str, &'static str)>,
);

/// The Pusher app the samples of `/apps/…` use.
fn pusher_app() -> App {
    App::new("1001", "key-1001", "secret-1001")
}

/// A sample request per documented operation: method, documented path, the URL to send to,
/// body. `/api/…` samples go to their path; Pusher ones to a signed URL.
fn samples(s: &TestServer) -> Vec<(&'static str, &'static str, String, Option<Value>)> {
    let api: Vec<(&'static str, &'static str, Option<Value>)> = vec![
        (
            "post",
            "/api/publish",
            Some(json!({"channel": "news", "data": {"n": 1}})),
        ),
        ("post", "/api/publish", Some(json!({"channel": "news"}))),
        (
            "post",
            "/api/publish_batch",
            Some(json!({"publications": [
                {"channel": "news", "data": 1},
                {"channel": "bad channel", "data": 2},
            ]})),
        ),
        (
            "post",
            "/api/publish_batch",
            Some(json!({"publications": 3})),
        ),
        (
            "post",
            "/api/broadcast",
            Some(json!({"channels": ["a", "b", "bad channel"], "b64data": "aGk="})),
        ),
        ("post", "/api/broadcast", Some(json!({"channels": ["a"]}))),
        (
            "post",
            "/api/history",
            Some(json!({"channel": "news", "limit": 10})),
        ),
        (
            "post",
            "/api/history",
            Some(json!({"channel": "news", "since": {"offset": 1, "epoch": "not-it"}})),
        ),
        (
            "post",
            "/api/presence",
            Some(json!({"channel": "chat:room"})),
        ),
        ("post", "/api/presence", Some(json!({"channel": "news"}))),
        (
            "post",
            "/api/presence_stats",
            Some(json!({"channel": "chat:room"})),
        ),
        (
            "post",
            "/api/presence_stats",
            Some(json!({"channel": "bad channel"})),
        ),
        (
            "post",
            "/api/disconnect",
            Some(json!({"user": "nobody", "code": 4001, "reason": "bye"})),
        ),
        ("post", "/api/disconnect", Some(json!({"user": ""}))),
        (
            "post",
            "/api/subscribe",
            Some(json!({"user": "nobody", "channel": "news"})),
        ),
        (
            "post",
            "/api/subscribe",
            Some(json!({"user": "u", "channel": "bad channel"})),
        ),
        (
            "post",
            "/api/unsubscribe",
            Some(json!({"user": "nobody", "channel": "news"})),
        ),
        ("post", "/api/unsubscribe", Some(json!({"channel": "news"}))),
        ("post", "/api/channels", Some(json!({"pattern": "chat:*"}))),
        ("post", "/api/channels", Some(json!({"limit": 100000}))),
        ("get", "/api/nodes", None),
        ("get", "/healthz", None),
        ("get", "/readyz", None),
    ];
    let mut out: Vec<_> = api
        .into_iter()
        .map(|(m, p, b)| (m, p, s.url(p), b))
        .collect();
    let app = pusher_app();
    let event = json!({"name": "e", "data": "{}", "channel": "news", "info": "subscription_count"});
    let bad_event = json!({"name": "e", "data": "{}", "channel": "bad;name"});
    let batch = json!({"batch": [{"name": "e", "data": "1", "channel": "news"}]});
    let pusher: Vec<PusherSample> = vec![
        (
            "post",
            "/apps/{app_id}/events",
            "/apps/1001/events",
            Some(event),
            vec![],
        ),
        (
            "post",
            "/apps/{app_id}/events",
            "/apps/1001/events",
            Some(bad_event),
            vec![],
        ),
        (
            "post",
            "/apps/{app_id}/batch_events",
            "/apps/1001/batch_events",
            Some(batch),
            vec![],
        ),
        (
            "get",
            "/apps/{app_id}/channels",
            "/apps/1001/channels",
            None,
            vec![("filter_by_prefix", "presence-"), ("info", "user_count")],
        ),
        (
            "get",
            "/apps/{app_id}/channels",
            "/apps/1001/channels",
            None,
            vec![("info", "user_count")],
        ),
        (
            "get",
            "/apps/{app_id}/channels/{channel}",
            "/apps/1001/channels/news",
            None,
            vec![("info", "subscription_count")],
        ),
        (
            "get",
            "/apps/{app_id}/channels/{channel}/users",
            "/apps/1001/channels/presence-room/users",
            None,
            vec![],
        ),
        (
            "get",
            "/apps/{app_id}/channels/{channel}/users",
            "/apps/1001/channels/news/users",
            None,
            vec![],
        ),
        (
            "post",
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            "/apps/1001/users/nobody/terminate_connections",
            None,
            vec![],
        ),
    ];
    for (method, template, path, body, extra) in pusher {
        let text = body.as_ref().map(Value::to_string).unwrap_or_default();
        let url = signed(s, &app, &method.to_uppercase(), path, &text, &extra, |_| {});
        out.push((method, template, url, body));
    }
    // An unknown app, with its documented answer.
    out.push((
        "post",
        "/apps/{app_id}/events",
        s.url("/apps/9/events"),
        Some(json!({})),
    ));
    out
}

/// Follows a `$ref` into the document.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let path = r.trim_start_matches("#/");
            let target = path
                .split('/')
                .fold(doc, |v, part| &v[part.replace("~1", "/").as_str()]);
            resolve(doc, target)
        }
        None => schema,
    }
}

/// Whether `value` matches `schema` (types, required properties, items, oneOf/anyOf), with
/// what failed.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            return if options.iter().any(|o| check(doc, o, value, at).is_ok()) {
                Ok(())
            } else {
                Err(format!("{at}: {value} matches none of {key}"))
            };
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(doc, s, value, at)?;
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let type_ok = types.is_empty()
        || types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
    if !type_ok {
        return Err(format!("{at}: {value} is not of type {types:?}"));
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if value.get(name).is_none() {
                return Err(format!("{at}: missing required {name} in {value}"));
            }
        }
    }
    if let (Some(props), Some(object)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (name, v) in object {
            if let Some(s) = props.get(name) {
                check(doc, s, v, &format!("{at}.{name}"))?;
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            check(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_path_answers_as_documented() {
    let bus = Bus::memory().with_pusher_apps(Apps::from_apps(vec![pusher_app()]).unwrap());
    let server = TestServer::start(bus, config()).await;
    let client = http();
    let url = server.url("/api/openapi.json");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let doc: Value = client
        .get(&url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let sampled: BTreeSet<(String, String)> = samples(&server)
        .iter()
        .map(|(m, p, _, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, sampled,
        "every documented operation has a sample, and no more"
    );

    let mut statuses = BTreeSet::new();
    for (method, path, url, body) in samples(&server) {
        let op = &doc["paths"][path][method];
        let mut req = match method {
            "get" => client.get(&url),
            _ => client.post(&url),
        }
        .bearer_auth(KEY);
        if let Some(body) = &body {
            // The exact bytes the URL's body_md5 was made of.
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16().to_string();
        let value: Value = resp.json().await.unwrap();
        let documented = &op["responses"][&status];
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which is not documented: {value}"
        );
        let schema = &resolve(&doc, documented)["content"]["application/json"]["schema"];
        check(&doc, schema, &value, &format!("{method} {path} {status}"))
            .unwrap_or_else(|e| panic!("{e}"));
        statuses.insert(format!("{method} {path} {status}"));
    }
    // The samples reach the error answers too, not only the happy path.
    for expected in [
        "post /api/publish 400",
        "post /api/history 409",
        "post /api/publish_batch 400",
        "post /api/broadcast 400",
        "post /apps/{app_id}/events 400",
        "post /apps/{app_id}/events 404",
        "get /apps/{app_id}/channels 400",
    ] {
        assert!(statuses.contains(expected), "{expected} in {statuses:?}");
    }
}
