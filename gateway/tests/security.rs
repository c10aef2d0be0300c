//! Connection tokens, channel namespaces and per-connection limits: each rule allows what it
//! should and refuses what it should, with the exact error or close code.

mod support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_bus::namespaces::Namespaces;
use chorus_gateway::GatewayConfig;
use chorus_gateway::config::Secret;
use chorus_protocol::client::{self, command, push, reply, server_frame};
use chorus_protocol::codes::{ErrorCode, close};
use chorus_protocol::wire::Format;
use chorus_testkit::WsClient;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::MemoryGateway;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-only-hmac-secret-0123456789abcdef";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("token signs")
}

fn hmac_token(alg: Algorithm, claims: &Value) -> String {
    sign(
        alg,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        claims,
    )
}

fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture(name)).unwrap()).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&std::fs::read(fixture("test-only-ec-private.pem")).unwrap()).unwrap()
}

fn hmac_config() -> GatewayConfig {
    GatewayConfig {
        token_hmac_secret: Some(Secret(SECRET.into())),
        ..GatewayConfig::default()
    }
}

fn code(reply: &client::Reply) -> u32 {
    reply.error.as_ref().map_or(0, |e| e.code)
}

fn message(reply: &client::Reply) -> String {
    reply
        .error
        .as_ref()
        .map_or(String::new(), |e| e.message.clone())
}

async fn open(gw: &MemoryGateway) -> WsClient {
    WsClient::open(&gw.ws(), Format::Json).await.expect("opens")
}

async fn connect_with(c: &mut WsClient, token: &str) -> client::Reply {
    c.request(command::Body::Connect(client::ConnectRequest {
        token: token.into(),
        ..Default::default()
    }))
    .await
    .expect("a reply")
}

/// Opens a connection and connects with `token`; fails unless it worked.
async fn connected(gw: &MemoryGateway, token: &str) -> WsClient {
    let mut c = open(gw).await;
    let reply = connect_with(&mut c, token).await;
    assert_eq!(code(&reply), 0, "connect failed: {reply:?}");
    c
}

async fn subscribe(c: &mut WsClient, ch: &str) -> client::Reply {
    c.request(command::Body::Subscribe(client::SubscribeRequest {
        channel: ch.into(),
        ..Default::default()
    }))
    .await
    .expect("a reply")
}

async fn publish(c: &mut WsClient, ch: &str) -> client::Reply {
    c.request(command::Body::Publish(client::PublishRequest {
        channel: ch.into(),
        data: bytes::Bytes::from_static(b"1"),
        echo: false,
    }))
    .await
    .expect("a reply")
}

async fn refresh(c: &mut WsClient, token: &str) -> client::Reply {
    c.request(command::Body::Refresh(client::RefreshRequest {
        token: token.into(),
    }))
    .await
    .expect("a reply")
}

/// The connection is `user`: it may read the channel limited to that user.
async fn assert_is_user(c: &mut WsClient, user: &str) {
    let reply = subscribe(c, &format!("inbox#{user}")).await;
    assert_eq!(code(&reply), 0, "{user}: {reply:?}");
}

// ---- tokens ----

#[tokio::test]
async fn hmac_tokens_of_each_size_connect_as_their_user() {
    let gw = MemoryGateway::start(hmac_config()).await;
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = hmac_token(alg, &json!({"sub": "alice", "exp": now() + 600}));
        let mut c = connected(&gw, &token).await;
        assert_is_user(&mut c, "alice").await;
        let reply = subscribe(&mut c, "inbox#bob").await;
        assert_eq!(code(&reply), ErrorCode::PermissionDenied.code(), "{alg:?}");
    }
}

#[tokio::test]
async fn rsa_and_ecdsa_public_keys_verify_their_tokens_and_nothing_else() {
    let config = GatewayConfig {
        token_rsa_public_key: Some(fixture("test-only-rsa-public.pem")),
        token_ecdsa_public_key: Some(fixture("test-only-ec-public.pem")),
        ..GatewayConfig::default()
    };
    let gw = MemoryGateway::start(config).await;
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let rs = sign(
        Algorithm::RS256,
        &rsa_key("test-only-rsa-private.pem"),
        None,
        &claims,
    );
    assert_is_user(&mut connected(&gw, &rs).await, "alice").await;
    let es = sign(Algorithm::ES256, &ec_key(), None, &claims);
    assert_is_user(&mut connected(&gw, &es).await, "alice").await;

    // Signed by a key the gateway does not know.
    let other = sign(
        Algorithm::RS256,
        &rsa_key("test-only-rsa2-private.pem"),
        None,
        &claims,
    );
    let reply = connect_with(&mut open(&gw).await, &other).await;
    assert_eq!(code(&reply), ErrorCode::Unauthorized.code());
    assert_eq!(message(&reply), "invalid token: signature does not verify");

    // Algorithm confusion: HS256 "signed" with the RSA public key as the secret.
    let public_pem = std::fs::read(fixture("test-only-rsa-public.pem")).unwrap();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        None,
        &claims,
    );
    let reply = connect_with(&mut open(&gw).await, &confused).await;
    assert_eq!(code(&reply), ErrorCode::Unauthorized.code());
    assert_eq!(
        message(&reply),
        "invalid token: no configured key for algorithm HS256"
    );

    // A tampered payload.
    let mut parts: Vec<String> = rs.split('.').map(str::to_owned).collect();
    parts[1] = hmac_token(Algorithm::HS256, &json!({"sub": "mallory"}))
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    let reply = connect_with(&mut open(&gw).await, &parts.join(".")).await;
    assert_eq!(code(&reply), ErrorCode::Unauthorized.code());
}

#[tokio::test]
async fn unsigned_and_malformed_tokens_are_refused() {
    let gw = MemoryGateway::start(hmac_config()).await;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(br#"{"sub":"alice"}"#)
    );
    for bad in [none.as_str(), "not-a-token", "a.b.c", "...."] {
        let reply = connect_with(&mut open(&gw).await, bad).await;
        assert_eq!(code(&reply), ErrorCode::Unauthorized.code(), "{bad}");
        assert!(
            message(&reply).starts_with("invalid token: "),
            "{bad}: {reply:?}"
        );
    }
}

#[tokio::test]
async fn jwks_keys_are_picked_by_kid() {
    let rsa = rsa_key("test-only-rsa-private.pem");
    let ec = ec_key();
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("ec-1".into());
    let set = JwkSet {
        keys: vec![rsa_jwk, ec_jwk],
    };
    let dir = std::env::temp_dir().join(format!("chorus-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    std::fs::write(&path, serde_json::to_vec(&set).unwrap()).unwrap();

    let gw = MemoryGateway::start(GatewayConfig {
        token_jwks: Some(path),
        ..GatewayConfig::default()
    })
    .await;
    let claims = json!({"sub": "bob", "exp": now() + 600});
    let t = sign(Algorithm::RS256, &rsa, Some("rsa-1"), &claims);
    assert_is_user(&mut connected(&gw, &t).await, "bob").await;
    let t = sign(Algorithm::ES256, &ec, Some("ec-1"), &claims);
    assert_is_user(&mut connected(&gw, &t).await, "bob").await;
    // A kid the set does not hold, signed by a key the set does not hold.
    let t = sign(
        Algorithm::RS256,
        &rsa_key("test-only-rsa2-private.pem"),
        Some("rsa-2"),
        &claims,
    );
    let reply = connect_with(&mut open(&gw).await, &t).await;
    assert_eq!(code(&reply), ErrorCode::Unauthorized.code());
    // An HMAC token: the set has no HMAC key.
    let reply = connect_with(&mut open(&gw).await, &hmac_token(Algorithm::HS256, &claims)).await;
    assert_eq!(code(&reply), ErrorCode::Unauthorized.code());
}

#[tokio::test]
async fn audience_and_issuer_are_required_when_configured() {
    let gw = MemoryGateway::start(GatewayConfig {
        token_audience: Some("chorus".into()),
        token_issuer: Some("https://auth.example.com".into()),
        ..hmac_config()
    })
    .await;
    let good = json!({"sub": "a", "aud": "chorus", "iss": "https://auth.example.com"});
    connected(&gw, &hmac_token(Algorithm::HS256, &good)).await;
    for bad in [
        json!({"sub": "a", "iss": "https://auth.example.com"}),
        json!({"sub": "a", "aud": "other", "iss": "https://auth.example.com"}),
        json!({"sub": "a", "aud": "chorus", "iss": "https://evil.example.com"}),
    ] {
        let reply = connect_with(&mut open(&gw).await, &hmac_token(Algorithm::HS256, &bad)).await;
        assert_eq!(code(&reply), ErrorCode::Unauthorized.code(), "{bad}");
    }
}

#[tokio::test]
async fn anonymous_connections_only_where_allowed() {
    // Keys configured: a token is required.
    let gw = MemoryGateway::start(hmac_config()).await;
    let reply = connect_with(&mut open(&gw).await, "").await;
    assert_eq!(code(&reply), ErrorCode::Unauthorized.code());
    assert_eq!(message(&reply), "a token is required");
    let no_sub = hmac_token(Algorithm::HS256, &json!({"exp": now() + 600}));
    let reply = connect_with(&mut open(&gw).await, &no_sub).await;
    assert_eq!(code(&reply), ErrorCode::Unauthorized.code());
    // A refused connect leaves the connection unconnected.
    let mut c = open(&gw).await;
    connect_with(&mut c, "").await;
    let reply = subscribe(&mut c, "news").await;
    assert_eq!(code(&reply), ErrorCode::NotConnected.code());

    // Keys configured and --allow-anonymous.
    let gw = MemoryGateway::start(GatewayConfig {
        allow_anonymous: true,
        ..hmac_config()
    })
    .await;
    connected(&gw, "").await;
    connected(&gw, &no_sub).await;

    // No keys: every connection is anonymous, and a token cannot be checked.
    let gw = MemoryGateway::start(GatewayConfig::default()).await;
    let mut c = connected(&gw, "").await;
    assert_eq!(
        code(&subscribe(&mut c, "inbox#alice").await),
        ErrorCode::PermissionDenied.code()
    );
    let token = hmac_token(Algorithm::HS256, &json!({"sub": "alice"}));
    let reply = connect_with(&mut open(&gw).await, &token).await;
    assert_eq!(code(&reply), ErrorCode::Unauthorized.code());
    assert_eq!(
        message(&reply),
        "this gateway does not accept tokens: no token keys are configured"
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_with_token_expired() {
    let gw = MemoryGateway::start(hmac_config()).await;
    let token = hmac_token(Algorithm::HS256, &json!({"sub": "a", "exp": now() - 10}));
    let reply = connect_with(&mut open(&gw).await, &token).await;
    assert_eq!(code(&reply), ErrorCode::TokenExpired.code());
}

#[tokio::test]
async fn the_connection_closes_with_3004_when_its_token_expires() {
    let gw = MemoryGateway::start(hmac_config()).await;
    let token = hmac_token(Algorithm::HS256, &json!({"sub": "a", "exp": now() + 1}));
    let mut c = connected(&gw, &token).await;
    match c.next_frame().await.unwrap().frame {
        Some(server_frame::Frame::Push(client::Push {
            body: Some(push::Body::Disconnect(d)),
        })) => {
            assert_eq!(d.code, u32::from(close::TOKEN_EXPIRED));
            assert!(d.reconnect);
        }
        other => panic!("expected a disconnect push, got {other:?}"),
    }
    assert_eq!(c.closed().await.unwrap().code, close::TOKEN_EXPIRED);
}

/// `exp` at the end of time (what some issuers write for "never") and fractional NumericDates
/// are tokens like any other: the session keeps answering, through a refresh too.
#[tokio::test]
async fn a_token_that_never_expires_or_has_fractional_dates_keeps_its_session() {
    let gw = MemoryGateway::start(hmac_config()).await;
    let never = hmac_token(
        Algorithm::HS256,
        &json!({"sub": "a", "exp": u64::MAX, "channels": ["x:*"]}),
    );
    let mut c = connected(&gw, &never).await;
    assert_eq!(code(&subscribe(&mut c, "x:1").await), 0);
    let reply = refresh(&mut c, &never).await;
    assert_eq!(code(&reply), 0, "{reply:?}");
    c.ok(command::Body::Ping(client::PingRequest {}))
        .await
        .expect("the session still answers after refresh");

    let fractional = hmac_token(
        Algorithm::HS256,
        &json!({"sub": "b", "exp": now() as f64 + 600.5, "nbf": now() as f64 - 0.5}),
    );
    let mut c = connected(&gw, &fractional).await;
    c.ok(command::Body::Ping(client::PingRequest {}))
        .await
        .expect("answers");
    let not_yet = hmac_token(
        Algorithm::HS256,
        &json!({"sub": "b", "nbf": now() as f64 + 600.5}),
    );
    let mut c = open(&gw).await;
    let refused = connect_with(&mut c, &not_yet).await;
    assert_eq!(
        code(&refused),
        ErrorCode::Unauthorized.code(),
        "{refused:?}"
    );
}

#[tokio::test]
async fn refresh_with_a_new_token_keeps_the_connection_open() {
    let gw = MemoryGateway::start(hmac_config()).await;
    let short = hmac_token(Algorithm::HS256, &json!({"sub": "a", "exp": now() + 2}));
    let mut c = connected(&gw, &short).await;
    let exp = now() + 3600;
    let long = hmac_token(
        Algorithm::HS256,
        &json!({"sub": "a", "exp": exp, "channels": ["x:*"]}),
    );
    let reply = refresh(&mut c, &long).await;
    match reply.result {
        Some(reply::Result::Refresh(r)) => assert_eq!(r.expires_at, exp),
        other => panic!("expected a refresh result, got {other:?}"),
    }
    // Past the first token's expiry (whole seconds, so up to 3 s away) the connection still
    // answers, and the new token's grants apply.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    c.ok(command::Body::Ping(client::PingRequest {}))
        .await
        .expect("still open after the first token's expiry");
}

#[tokio::test]
async fn refresh_is_refused_for_another_user_an_expired_token_or_before_connect() {
    let gw = MemoryGateway::start(hmac_config()).await;
    let mut c = open(&gw).await;
    let token = hmac_token(Algorithm::HS256, &json!({"sub": "a", "exp": now() + 600}));
    assert_eq!(
        code(&refresh(&mut c, &token).await),
        ErrorCode::NotConnected.code()
    );
    assert_eq!(code(&connect_with(&mut c, &token).await), 0);
    let other = hmac_token(Algorithm::HS256, &json!({"sub": "b", "exp": now() + 600}));
    let reply = refresh(&mut c, &other).await;
    assert_eq!(code(&reply), ErrorCode::Unauthorized.code());
    assert_eq!(message(&reply), "the token is for another user");
    let expired = hmac_token(Algorithm::HS256, &json!({"sub": "a", "exp": now() - 5}));
    assert_eq!(
        code(&refresh(&mut c, &expired).await),
        ErrorCode::TokenExpired.code()
    );
    assert_eq!(
        code(&refresh(&mut c, "garbage").await),
        ErrorCode::Unauthorized.code()
    );
    // Still connected as "a".
    assert_is_user(&mut c, "a").await;
}

#[tokio::test]
async fn connections_per_user_are_limited_with_106_then_3006() {
    let gw = MemoryGateway::start(GatewayConfig {
        max_connections_per_user: 2,
        ..hmac_config()
    })
    .await;
    let alice = hmac_token(Algorithm::HS256, &json!({"sub": "alice"}));
    let _a1 = connected(&gw, &alice).await;
    let a2 = connected(&gw, &alice).await;
    let mut a3 = open(&gw).await;
    let reply = connect_with(&mut a3, &alice).await;
    assert_eq!(code(&reply), ErrorCode::LimitExceeded.code());
    assert_eq!(a3.closed().await.unwrap().code, close::CONNECTION_LIMIT);
    // Another user is not affected; a closed connection frees its slot.
    connected(&gw, &hmac_token(Algorithm::HS256, &json!({"sub": "bob"}))).await;
    drop(a2);
    chorus_testkit::eventually(Duration::from_secs(5), "alice's slot is freed", || async {
        let mut c = open(&gw).await;
        code(&connect_with(&mut c, &alice).await) == 0
    })
    .await
    .unwrap();
}

// ---- namespaces ----

const NAMESPACES: &str = r#"
[default]
anonymous_subscribe = true

[namespace.chat]
client_publish = true

[namespace.private]
require_grant = true
client_publish = true
"#;

/// A gateway with the namespaces file above, allowing anonymous connections.
async fn namespaced() -> MemoryGateway {
    let config = GatewayConfig {
        allow_anonymous: true,
        ..hmac_config()
    };
    let bus = chorus_bus::Bus::memory().with_namespaces(Namespaces::parse(NAMESPACES).unwrap());
    MemoryGateway::start_with_bus(config, bus).await
}

#[tokio::test]
async fn namespace_rules_decide_subscribe_with_the_exact_error() {
    let gw = namespaced().await;
    let mut anon = connected(&gw, "").await;
    assert_eq!(code(&subscribe(&mut anon, "news").await), 0);
    let reply = subscribe(&mut anon, "chat:lobby").await;
    assert_eq!(code(&reply), ErrorCode::PermissionDenied.code());
    assert_eq!(
        message(&reply),
        "anonymous connections may not subscribe to namespace chat"
    );
    let reply = subscribe(&mut anon, "games:1").await;
    assert_eq!(code(&reply), ErrorCode::BadChannel.code());
    assert_eq!(message(&reply), "unknown namespace \"games\"");

    let token = hmac_token(
        Algorithm::HS256,
        &json!({"sub": "u1", "channels": ["private:team-*"]}),
    );
    let mut user = connected(&gw, &token).await;
    assert_eq!(code(&subscribe(&mut user, "chat:lobby").await), 0);
    assert_eq!(code(&subscribe(&mut user, "private:team-red").await), 0);
    let reply = subscribe(&mut user, "private:board").await;
    assert_eq!(code(&reply), ErrorCode::PermissionDenied.code());
    assert_eq!(message(&reply), "the token does not grant private:board");
}

#[tokio::test]
async fn user_limited_channels_are_readable_only_by_their_users() {
    let gw = namespaced().await;
    let alice = hmac_token(Algorithm::HS256, &json!({"sub": "alice"}));
    let carol = hmac_token(
        Algorithm::HS256,
        &json!({"sub": "carol", "channels": ["*"]}),
    );
    let mut a = connected(&gw, &alice).await;
    assert_eq!(code(&subscribe(&mut a, "private:dm#alice,bob").await), 0);
    let mut c = connected(&gw, &carol).await;
    let reply = subscribe(&mut c, "private:dm#alice,bob").await;
    assert_eq!(code(&reply), ErrorCode::PermissionDenied.code());
    assert_eq!(
        message(&reply),
        "private:dm#alice,bob is readable only by its users"
    );
    let mut anon = connected(&gw, "").await;
    assert_eq!(
        code(&subscribe(&mut anon, "news#alice").await),
        ErrorCode::PermissionDenied.code()
    );
}

#[tokio::test]
async fn client_publish_follows_the_namespace_and_the_publish_claim() {
    let gw = namespaced().await;
    let token = hmac_token(Algorithm::HS256, &json!({"sub": "u1", "publish": ["news"]}));
    let mut user = connected(&gw, &token).await;
    assert_eq!(code(&publish(&mut user, "chat:lobby").await), 0);
    assert_eq!(
        code(&publish(&mut user, "news").await),
        0,
        "granted by publish"
    );
    let reply = publish(&mut user, "private:board").await;
    assert_eq!(
        code(&reply),
        ErrorCode::PermissionDenied.code(),
        "may not read it"
    );
    let mut anon = connected(&gw, "").await;
    let reply = publish(&mut anon, "news").await;
    assert_eq!(code(&reply), ErrorCode::PermissionDenied.code());
    assert_eq!(
        message(&reply),
        "clients may not publish to channels without a namespace"
    );
    assert_eq!(
        code(&publish(&mut anon, "games:1").await),
        ErrorCode::BadChannel.code()
    );
}

// ---- limits ----

/// A gateway with this command rate and burst, and a connection to it.
async fn rate_limited(rate: u32, burst: u32) -> (MemoryGateway, WsClient) {
    let gw = MemoryGateway::start(GatewayConfig {
        command_rate: rate,
        command_burst: burst,
        ..GatewayConfig::default()
    })
    .await;
    let c = open(&gw).await;
    (gw, c)
}

#[tokio::test]
async fn commands_over_the_rate_get_114_and_a_client_that_keeps_going_is_closed_with_3007() {
    let (_gw, mut c) = rate_limited(1, 3).await;
    c.ok(command::Body::Connect(client::ConnectRequest::default()))
        .await
        .unwrap();
    for _ in 0..2 {
        c.ok(command::Body::Ping(client::PingRequest {}))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        let reply = c
            .request(command::Body::Ping(client::PingRequest {}))
            .await
            .unwrap();
        assert_eq!(code(&reply), ErrorCode::RateLimited.code());
    }
    c.send_raw(bytes::Bytes::from_static(br#"{"id":99,"ping":{}}"#))
        .await
        .unwrap();
    assert_eq!(c.closed().await.unwrap().code, close::RATE_LIMITED);
}

/// Frames of the wrong type cost an error reply each: they count against the command rate
/// like commands, and a client that keeps sending them is closed.
#[tokio::test]
async fn frames_of_the_wrong_type_count_against_the_command_rate() {
    let (_gw, mut c) = rate_limited(1, 3).await;
    let mut wrong = async || {
        c.send_message(tungstenite::Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        match c.next_frame().await {
            Ok(client::ServerFrame {
                frame: Some(server_frame::Frame::Reply(r)),
            }) => Some(code(&r)),
            _ => None,
        }
    };
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(wrong().await);
    }
    let wrong_type = Some(ErrorCode::WrongFrameType.code());
    let limited = Some(ErrorCode::RateLimited.code());
    assert_eq!(
        codes,
        [
            wrong_type, wrong_type, wrong_type, limited, limited, limited
        ]
    );
    c.send_message(tungstenite::Message::Binary(vec![1].into()))
        .await
        .unwrap();
    assert_eq!(c.closed().await.unwrap().code, close::RATE_LIMITED);
}

#[tokio::test]
async fn a_connection_that_does_not_send_connect_in_time_is_closed_with_3005() {
    let gw = MemoryGateway::start(GatewayConfig {
        connect_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    })
    .await;
    let mut late = open(&gw).await;
    let mut prompt = open(&gw).await;
    prompt
        .ok(command::Body::Connect(client::ConnectRequest::default()))
        .await
        .unwrap();
    assert_eq!(late.closed().await.unwrap().code, close::CONNECT_TIMEOUT);
    prompt
        .ok(command::Body::Ping(client::PingRequest {}))
        .await
        .expect("a connected client is not affected");
}

async fn upgrade_status(url: &str, origin: Option<&str>) -> u16 {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_ws, resp)) => resp.status().as_u16(),
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected upgrade error: {e}"),
    }
}

#[tokio::test]
async fn origins_outside_the_allow_list_get_403() {
    let gw = MemoryGateway::start(GatewayConfig {
        allowed_origins: vec![
            "https://app.example.com".into(),
            "https://*.example.org".into(),
        ],
        ..GatewayConfig::default()
    })
    .await;
    assert_eq!(
        upgrade_status(&gw.ws(), Some("https://app.example.com")).await,
        101
    );
    assert_eq!(
        upgrade_status(&gw.ws(), Some("https://x.example.org")).await,
        101
    );
    assert_eq!(upgrade_status(&gw.ws(), None).await, 101);
    assert_eq!(
        upgrade_status(&gw.ws(), Some("https://evil.example.net")).await,
        403
    );
    assert_eq!(
        upgrade_status(&gw.ws(), Some("https://app.example.com.evil.net")).await,
        403
    );
}

#[tokio::test]
async fn upgrades_past_the_connection_limit_get_503() {
    let gw = MemoryGateway::start(GatewayConfig {
        max_connections: 2,
        ..GatewayConfig::default()
    })
    .await;
    let first = open(&gw).await;
    let _second = open(&gw).await;
    assert_eq!(upgrade_status(&gw.ws(), None).await, 503);
    drop(first);
    chorus_testkit::eventually(Duration::from_secs(5), "a slot is freed", || async {
        upgrade_status(&gw.ws(), None).await == 101
    })
    .await
    .unwrap();
}
