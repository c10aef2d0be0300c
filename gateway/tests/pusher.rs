//! The Pusher protocol at `/app/{key}`, spoken by a plain WebSocket client against two
//! gateways on a real Redis: the handshake and its refusals, public, private and presence
//! channels, members across gateways, client events, sign-in and the user's channel, the
//! app's disconnect, and bad input.

mod support;

use std::time::Duration;

use chorus_bus::pusher::{App, Apps};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::Cluster;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(5);
const KEY: &str = "app-key";

fn app() -> App {
    App {
        client_event_rate: 3,
        ..App::new("1001", KEY, "app-secret-1001")
    }
}

async fn cluster(gateways: usize) -> Cluster {
    Cluster::start_pusher(gateways, Apps::from_apps(vec![app()]).unwrap()).await
}

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    socket_id: String,
}

/// A message as pusher-js reads it: `data` parsed when it is a JSON string.
fn decoded(text: &str) -> Value {
    let mut v: Value = serde_json::from_str(text).expect("JSON message");
    if let Some(Value::String(data)) = v.get("data")
        && let Ok(parsed) = serde_json::from_str::<Value>(data)
    {
        v["data"] = parsed;
    }
    v
}

impl Client {
    async fn raw(
        c: &Cluster,
        gateway: usize,
        path: &str,
    ) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        let url = format!("ws://{}{path}", c.gateways[gateway]);
        tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade")
            .0
    }

    async fn connect(c: &Cluster, gateway: usize) -> Self {
        let mut ws = Self::raw(
            c,
            gateway,
            &format!("/app/{KEY}?protocol=7&client=js&version=8.4.0"),
        )
        .await;
        let first = next_text(&mut ws).await;
        assert_eq!(first["event"], "pusher:connection_established");
        assert_eq!(first["data"]["activity_timeout"], 120);
        let socket_id = first["data"]["socket_id"].as_str().unwrap().to_owned();
        let (a, b) = socket_id.split_once('.').expect("socket_id is \\d+.\\d+");
        assert!(
            a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok(),
            "{socket_id}"
        );
        Self { ws, socket_id }
    }

    async fn send(&mut self, event: &str, data: Value, channel: Option<&str>) {
        let mut m = json!({"event": event, "data": data});
        if let Some(ch) = channel {
            m["channel"] = json!(ch);
        }
        self.ws.send(Message::text(m.to_string())).await.unwrap();
    }

    async fn next(&mut self) -> Value {
        next_text(&mut self.ws).await
    }

    /// The next message that is not about another channel's members.
    async fn next_event(&mut self, event: &str) -> Value {
        loop {
            let m = self.next().await;
            if m["event"] == event {
                return m;
            }
        }
    }

    async fn subscribe(
        &mut self,
        channel: &str,
        auth: Option<String>,
        channel_data: Option<&str>,
    ) -> Value {
        let mut data = json!({"channel": channel});
        if let Some(a) = auth {
            data["auth"] = json!(a);
        }
        if let Some(cd) = channel_data {
            data["channel_data"] = json!(cd);
        }
        self.send("pusher:subscribe", data, None).await;
        self.next().await
    }

    fn auth(&self, signed_tail: &str) -> String {
        format!(
            "{KEY}:{}",
            app().sign(&format!("{}:{signed_tail}", self.socket_id))
        )
    }

    async fn presence(&mut self, channel: &str, user: &str) -> Value {
        let data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
        let auth = self.auth(&format!("{channel}:{data}"));
        self.subscribe(channel, Some(auth), Some(&data)).await
    }

    /// Nothing arrives for a short while.
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(300), self.ws.next()).await;
        assert!(got.is_err(), "unexpected message: {got:?}");
    }

    /// The close code the server ends with (messages before it are skipped).
    async fn closed(&mut self) -> (Vec<Value>, u16) {
        let mut before = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a close within the deadline")
            {
                Some(Ok(Message::Text(t))) => before.push(decoded(&t)),
                Some(Ok(Message::Close(Some(frame)))) => return (before, u16::from(frame.code)),
                Some(Ok(Message::Close(None))) => return (before, 1005),
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    }
}

async fn next_text(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within the deadline")
        {
            Some(Ok(Message::Text(t))) => return decoded(&t),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn publish(c: &Cluster, channel: &str, event: &str, data: &str) {
    let body = json!({"event": event, "data": data});
    let r = c
        .http_publish(&format!("pusher-1001:{channel}"), body)
        .await;
    assert!(r.status().is_success(), "{}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_pings_and_refusals_follow_the_protocol() {
    let c = cluster(1).await;
    let mut client = Client::connect(&c, 0).await;
    client.send("pusher:ping", json!({}), None).await;
    assert_eq!(client.next().await["event"], "pusher:pong");

    // Bad input gets an error and the connection stays.
    client.ws.send(Message::text("{not json")).await.unwrap();
    let e = client.next().await;
    assert_eq!(e["event"], "pusher:error");
    assert!(
        e["data"]["message"]
            .as_str()
            .unwrap()
            .contains("Invalid message"),
        "{e}"
    );
    client
        .send("pusher:subscribe", json!({"nochannel": 1}), None)
        .await;
    assert_eq!(client.next().await["event"], "pusher:error");
    client
        .ws
        .send(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(client.next().await["event"], "pusher:error");
    client.send("pusher:frobnicate", json!({}), None).await;
    assert_eq!(client.next().await["event"], "pusher:error");
    client.send("pusher:ping", json!({}), None).await;
    assert_eq!(client.next().await["event"], "pusher:pong");

    // A message over the gateway's size limit closes with 1009, as any WebSocket would.
    let huge = "x".repeat(70 * 1024);
    client
        .send("client-big", json!(huge), Some("private-a"))
        .await;
    assert_eq!(client.closed().await.1, 1009);

    for (path, code) in [
        ("/app/nope?protocol=7", 4001),
        (&format!("/app/{KEY}")[..], 4007),
        (&format!("/app/{KEY}?protocol=5")[..], 4007),
    ] {
        let ws = Client::raw(&c, 0, path).await;
        let mut client = Client {
            ws,
            socket_id: String::new(),
        };
        let (before, got) = client.closed().await;
        assert_eq!(got, code, "{path}");
        assert_eq!(before[0]["event"], "pusher:error");
        assert_eq!(before[0]["data"]["code"], code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_and_private_channels_deliver_in_pusher_form_after_their_success() {
    let c = cluster(2).await;
    let mut a = Client::connect(&c, 0).await;
    let mut b = Client::connect(&c, 1).await;
    let ok = a.subscribe("news", None, None).await;
    assert_eq!(
        ok,
        json!({"event": "pusher_internal:subscription_succeeded", "channel": "news", "data": {}})
    );
    assert_eq!(
        b.subscribe("news", None, None).await["event"],
        "pusher_internal:subscription_succeeded"
    );

    publish(&c, "news", "headline", r#"{"title":"hi"}"#).await;
    for client in [&mut a, &mut b] {
        assert_eq!(
            client.next().await,
            json!({"event": "headline", "channel": "news", "data": {"title": "hi"}})
        );
    }
    // Data published by other means arrives as a "message" event.
    let r = c.http_publish("pusher-1001:news", json!({"n": 1})).await;
    assert!(r.status().is_success());
    for client in [&mut a, &mut b] {
        assert_eq!(
            client.next().await,
            json!({"event": "message", "channel": "news", "data": {"n": 1}})
        );
    }

    // Private: a wrong signature is refused on the channel, a right one accepted.
    let bad = format!("{KEY}:{}", "0".repeat(64));
    let refused = a.subscribe("private-room", Some(bad), None).await;
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(refused["channel"], "private-room");
    assert_eq!(refused["data"]["status"], 401);
    assert_eq!(refused["data"]["type"], "AuthError");
    let missing = a.subscribe("private-room", None, None).await;
    assert_eq!(missing["data"]["status"], 401);
    let auth = a.auth("private-room");
    assert_eq!(
        a.subscribe("private-room", Some(auth), None).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    // Encrypted channels are authorized the same way; the server only relays.
    let auth = a.auth("private-encrypted-vault");
    assert_eq!(
        a.subscribe("private-encrypted-vault", Some(auth), None)
            .await["event"],
        "pusher_internal:subscription_succeeded"
    );
    // Bad names and another user's channel.
    assert_eq!(
        a.subscribe("bad;name", None, None).await["data"]["status"],
        400
    );
    assert_eq!(
        a.subscribe("#server-to-user-bob", None, None).await["data"]["status"],
        401
    );

    // Unsubscribed: nothing more of it.
    a.send("pusher:unsubscribe", json!({"channel": "news"}), None)
        .await;
    a.send("pusher:ping", json!({}), None).await;
    assert_eq!(a.next().await["event"], "pusher:pong");
    publish(&c, "news", "later", "1").await;
    assert_eq!(b.next().await["event"], "later");
    a.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_members_are_users_across_gateways() {
    let c = cluster(2).await;
    let ch = "presence-lobby";
    let mut alice = Client::connect(&c, 0).await;
    let ok = alice.presence(ch, "alice").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(
        ok["data"],
        json!({"presence": {"ids": ["alice"], "hash": {"alice": {"name": "alice"}}, "count": 1}})
    );

    let mut bob = Client::connect(&c, 1).await;
    let ok = bob.presence(ch, "bob").await;
    assert_eq!(ok["data"]["presence"]["ids"], json!(["alice", "bob"]));
    assert_eq!(ok["data"]["presence"]["count"], 2);
    let added = alice.next().await;
    assert_eq!(
        added,
        json!({"event": "pusher_internal:member_added", "channel": ch,
               "data": {"user_id": "bob", "user_info": {"name": "bob"}}})
    );

    // Alice again, on the other gateway: one member, no member_added for anyone.
    let mut alice2 = Client::connect(&c, 1).await;
    assert_eq!(
        alice2.presence(ch, "alice").await["data"]["presence"]["count"],
        2
    );
    bob.quiet().await;
    alice.quiet().await;

    // Her first connection leaves: still a member. Her second: removed, once.
    alice
        .send("pusher:unsubscribe", json!({"channel": ch}), None)
        .await;
    bob.quiet().await;
    drop(alice2);
    assert_eq!(
        bob.next_event("pusher_internal:member_removed").await["data"],
        json!({"user_id": "alice"})
    );
    bob.quiet().await;

    // A bad presence signature, or channel_data without a user, is refused.
    let mut eve = Client::connect(&c, 0).await;
    let data = json!({"user_id": "eve"}).to_string();
    let wrong = eve.auth(&format!("{ch}:{{}}"));
    assert_eq!(
        eve.subscribe(ch, Some(wrong), Some(&data)).await["data"]["status"],
        401
    );
    let no_user = json!({"user_info": {}}).to_string();
    let auth = eve.auth(&format!("{ch}:{no_user}"));
    assert_eq!(
        eve.subscribe(ch, Some(auth), Some(&no_user)).await["data"]["status"],
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_subscribing_at_the_same_moment_each_learn_of_the_other() {
    let c = cluster(2).await;
    for round in 0..10 {
        let ch = format!("presence-race-{round}");
        let mut a = Client::connect(&c, 0).await;
        let mut b = Client::connect(&c, 1).await;
        let (ra, rb) = tokio::join!(a.presence(&ch, "a"), b.presence(&ch, "b"));
        // Each ends up knowing both: in its subscription_succeeded, or by a member_added
        // after it (never before it).
        for (mut client, reply, other) in [(a, ra, "b"), (b, rb, "a")] {
            assert_eq!(
                reply["event"], "pusher_internal:subscription_succeeded",
                "{reply}"
            );
            let ids = reply["data"]["presence"]["ids"].as_array().unwrap().clone();
            if !ids.contains(&json!(other)) {
                let added = client.next_event("pusher_internal:member_added").await;
                assert_eq!(added["data"]["user_id"], other, "round {round}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_reach_the_others_within_their_limits() {
    let c = cluster(2).await;
    let mut a = Client::connect(&c, 0).await;
    let mut b = Client::connect(&c, 1).await;
    for client in [&mut a, &mut b] {
        let auth = client.auth("private-chat");
        assert_eq!(
            client.subscribe("private-chat", Some(auth), None).await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    a.send("client-typing", json!({"who": "a"}), Some("private-chat"))
        .await;
    assert_eq!(
        b.next().await,
        json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "a"}})
    );
    a.quiet().await; // not to the sender

    // Not on public channels, not on a channel the sender is not in.
    assert_eq!(
        a.subscribe("open", None, None).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    a.send("client-x", json!(1), Some("open")).await;
    assert_eq!(a.next().await["event"], "pusher:error");
    a.send("client-x", json!(1), Some("private-other")).await;
    assert_eq!(a.next().await["event"], "pusher:error");

    // On presence channels they carry the sender's user id.
    let ch = "presence-team";
    a.presence(ch, "ann").await;
    b.presence(ch, "ben").await;
    a.next_event("pusher_internal:member_added").await;
    a.send("client-wave", json!("hi"), Some(ch)).await;
    let got = b.next().await;
    assert_eq!(got["event"], "client-wave");
    assert_eq!(got["user_id"], "ann");

    // Over the app's rate (3 a second here): error 4301, the connection stays.
    let mut codes = Vec::new();
    for _ in 0..6 {
        a.send("client-spam", json!(1), Some("private-chat")).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout_at(deadline, a.ws.next()).await
    {
        codes.push(decoded(&t)["data"]["code"].clone());
    }
    assert!(codes.contains(&json!(4301)), "{codes:?}");
    a.send("pusher:ping", json!({}), None).await;
    assert_eq!(a.next_event("pusher:pong").await["event"], "pusher:pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_user_gets_its_channel_and_the_app_can_disconnect_it() {
    let c = cluster(1).await;
    let mut a = Client::connect(&c, 0).await;
    let user_data = json!({"id": "alice", "name": "Alice"}).to_string();
    let bad = format!("{KEY}:{}", app().sign("0.0::user::x"));
    a.send(
        "pusher:signin",
        json!({"auth": bad, "user_data": user_data}),
        None,
    )
    .await;
    assert_eq!(a.next().await["event"], "pusher:error");

    let auth = format!(
        "{KEY}:{}",
        app().sign(&format!("{}::user::{user_data}", a.socket_id))
    );
    a.send(
        "pusher:signin",
        json!({"auth": auth, "user_data": user_data}),
        None,
    )
    .await;
    let ok = a.next().await;
    assert_eq!(ok["event"], "pusher:signin_success");
    assert_eq!(ok["data"]["user_data"], user_data);
    let ok = a.subscribe("#server-to-user-alice", None, None).await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let r = c
        .http_publish(
            "pusher-1001:#alice",
            json!({"event": "note", "data": "for you"}),
        )
        .await;
    assert!(r.status().is_success());
    assert_eq!(
        a.next().await,
        json!({"event": "note", "channel": "#server-to-user-alice", "data": "for you"})
    );

    // terminate_connections reaches it through the control channel: 4009, no reconnect.
    let r = reqwest::Client::new()
        .post(c.api_url("/api/disconnect"))
        .bearer_auth(support::API_KEY)
        .json(&json!({"user": "pusher-1001:alice", "code": 4009, "reason": "bye", "reconnect": false}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (before, code) = a.closed().await;
    assert_eq!(code, 4009);
    assert_eq!(before.last().unwrap()["data"]["code"], 4009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_counts_pusher_connections_and_refusals() {
    let c = cluster(1).await;
    let mut a = Client::connect(&c, 0).await;
    let mut refused = Client {
        ws: Client::raw(&c, 0, "/app/nope?protocol=7").await,
        socket_id: String::new(),
    };
    assert_eq!(refused.closed().await.1, 4001);
    a.send("pusher:ping", json!({}), None).await;
    a.next().await;
    let text = reqwest::get(format!("http://{}/metrics", c.metrics[0]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert!(
        value("chorus_gateway_pusher_connections ").unwrap() >= 1.0,
        "{text}"
    );
    assert!(value("chorus_gateway_pusher_refusals_total{reason=\"unknown_app\"}").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_channel_gives_its_last_event_first_or_a_cache_miss() {
    let c = cluster(2).await;
    let mut a = Client::connect(&c, 0).await;
    // Nothing published yet: subscription_succeeded, then pusher:cache_miss.
    assert_eq!(
        a.subscribe("cache-status", None, None).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(
        a.next().await,
        json!({"event": "pusher:cache_miss", "channel": "cache-status", "data": {}})
    );
    publish(&c, "cache-status", "status", r#"{"v":1}"#).await;
    publish(&c, "cache-status", "status", r#"{"v":2}"#).await;
    for v in [1, 2] {
        assert_eq!(a.next().await["data"], json!({ "v": v }));
    }
    // A later subscriber, on a gateway that already delivers the channel or not: the last
    // event right after its success, and nothing older.
    let mut last = 2;
    for gateway in [0, 1] {
        let mut b = Client::connect(&c, gateway).await;
        let ok = b.subscribe("cache-status", None, None).await;
        assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
        assert_eq!(
            b.next().await,
            json!({"event": "status", "channel": "cache-status", "data": {"v": last}})
        );
        last += 1;
        publish(&c, "cache-status", "status", &format!("{{\"v\":{last}}}")).await;
        assert_eq!(b.next().await["data"], json!({ "v": last }));
        assert_eq!(a.next().await["data"], json!({ "v": last }));
        b.quiet().await;
    }
    // A private cache channel: the same, after its signature.
    let mut b = Client::connect(&c, 1).await;
    publish(&c, "private-cache-x", "state", "\"on\"").await;
    let auth = b.auth("private-cache-x");
    assert_eq!(
        b.subscribe("private-cache-x", Some(auth), None).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(
        b.next().await,
        json!({"event": "state", "channel": "private-cache-x", "data": "on"})
    );
}
