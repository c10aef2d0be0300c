//! The JSON form of the client protocol, carried in WebSocket text frames.
//!
//! A command is an object with an `id` and exactly one key naming the command:
//! `{"id":1,"subscribe":{"channel":"news"}}`. A reply echoes the id and carries either the
//! command's result under the same key or an `error`: `{"id":1,"subscribe":{"epoch":"…","offset":0}}`,
//! `{"id":1,"error":{"code":102,"message":"…"}}`. Pushes carry no id: `{"pub":{…}}`,
//! `{"disconnect":{…}}`.
//!
//! Message data is JSON in JSON frames: a publication whose data is valid JSON is embedded as
//! is under `data`. Data that is not JSON (published in binary by a protobuf client or the
//! gRPC API) is sent as base64 under `b64data` instead, so a JSON client never receives a frame
//! it cannot parse.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::client::{self, command, push, reply, server_frame};
use crate::codes::ErrorCode;
use crate::wire::DecodeError;

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    connect: Option<ConnectBody>,
    #[serde(default)]
    subscribe: Option<SubscribeBody>,
    #[serde(default)]
    unsubscribe: Option<ChannelBody>,
    #[serde(default, borrow)]
    publish: Option<PublishBody<'a>>,
    #[serde(default)]
    ping: Option<Map<String, Value>>,
    #[serde(default)]
    history: Option<HistoryBody>,
    #[serde(default)]
    refresh: Option<RefreshBody>,
    #[serde(default)]
    presence: Option<ChannelBody>,
    #[serde(default)]
    presence_stats: Option<ChannelBody>,
}

#[derive(Deserialize)]
struct RefreshBody {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    channel: String,
    #[serde(default)]
    recover: bool,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
    #[serde(default = "yes")]
    join_leave: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryBody {
    channel: String,
    #[serde(default)]
    since: Option<PositionBody>,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionBody {
    offset: u64,
    #[serde(default)]
    epoch: String,
}

#[derive(Deserialize)]
struct ConnectBody {
    #[serde(default)]
    token: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    recover: std::collections::HashMap<String, PositionBody>,
}

#[derive(Deserialize)]
struct ChannelBody {
    channel: String,
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    echo: bool,
}

/// Decodes one JSON command.
pub fn decode_command(bytes: &[u8]) -> Result<client::Command, DecodeError> {
    // The id is recovered first, on its own, so that even a command whose body is malformed
    // gets an error reply the client can match to its request.
    let raw: RawCommand<'_> = match serde_json::from_slice(bytes) {
        Ok(raw) => raw,
        Err(e) => {
            return Err(DecodeError {
                id: id_of_malformed(bytes),
                error: ErrorCode::BadRequest.with(format!("invalid JSON command: {e}")),
            });
        }
    };
    let id = match raw.id {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    }
    .filter(|id| *id != 0);
    let Some(id) = id else {
        return Err(DecodeError {
            id: 0,
            error: ErrorCode::BadRequest
                .with("command needs an \"id\": an integer from 1 to 4294967295"),
        });
    };
    let mut bodies = Vec::with_capacity(1);
    if let Some(c) = raw.connect {
        bodies.push(command::Body::Connect(client::ConnectRequest {
            token: c.token,
            name: c.name,
            recover: c
                .recover
                .into_iter()
                .map(|(channel, p)| {
                    let position = client::StreamPosition {
                        offset: p.offset,
                        epoch: p.epoch,
                    };
                    (channel, position)
                })
                .collect(),
        }));
    }
    if let Some(s) = raw.subscribe {
        bodies.push(command::Body::Subscribe(client::SubscribeRequest {
            channel: s.channel,
            recover: s.recover,
            offset: s.offset,
            epoch: s.epoch,
            no_join_leave: !s.join_leave,
        }));
    }
    if let Some(u) = raw.unsubscribe {
        bodies.push(command::Body::Unsubscribe(client::UnsubscribeRequest {
            channel: u.channel,
        }));
    }
    if let Some(p) = raw.publish {
        bodies.push(command::Body::Publish(client::PublishRequest {
            channel: p.channel,
            data: Bytes::copy_from_slice(p.data.get().as_bytes()),
            echo: p.echo,
        }));
    }
    if raw.ping.is_some() {
        bodies.push(command::Body::Ping(client::PingRequest {}));
    }
    if let Some(h) = raw.history {
        bodies.push(command::Body::History(client::HistoryRequest {
            channel: h.channel,
            since: h.since.map(|p| client::StreamPosition {
                offset: p.offset,
                epoch: p.epoch,
            }),
            limit: h.limit,
            reverse: h.reverse,
        }));
    }
    if let Some(r) = raw.refresh {
        bodies.push(command::Body::Refresh(client::RefreshRequest {
            token: r.token,
        }));
    }
    if let Some(p) = raw.presence {
        bodies.push(command::Body::Presence(client::PresenceRequest {
            channel: p.channel,
        }));
    }
    if let Some(p) = raw.presence_stats {
        bodies.push(command::Body::PresenceStats(client::PresenceStatsRequest {
            channel: p.channel,
        }));
    }
    match bodies.len() {
        1 => Ok(client::Command {
            id,
            body: bodies.pop(),
        }),
        0 => Err(DecodeError {
            id,
            error: ErrorCode::UnknownCommand.with(
                "unknown command: expected one of connect, subscribe, unsubscribe, publish, ping, history, refresh, presence, presence_stats",
            ),
        }),
        _ => Err(DecodeError {
            id,
            error: ErrorCode::BadRequest.with("a command must name exactly one method"),
        }),
    }
}

fn id_of_malformed(bytes: &[u8]) -> u32 {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u32,
    }
    serde_json::from_slice::<IdOnly>(bytes).map_or(0, |c| c.id)
}

/// Encodes one command as JSON (used by clients and tests).
pub fn encode_command(cmd: &client::Command) -> Bytes {
    let mut obj = Map::new();
    obj.insert("id".into(), json!(cmd.id));
    let (key, body) = match &cmd.body {
        Some(command::Body::Connect(c)) => {
            let mut body = json!({"token": c.token, "name": c.name});
            if !c.recover.is_empty() {
                let recover: Map<String, Value> = c
                    .recover
                    .iter()
                    .map(|(ch, p)| (ch.clone(), json!({"offset": p.offset, "epoch": p.epoch})))
                    .collect();
                body["recover"] = Value::Object(recover);
            }
            ("connect", body)
        }
        Some(command::Body::Subscribe(s)) => {
            let mut body = json!({"channel": s.channel});
            if s.recover {
                body["recover"] = json!(true);
                body["offset"] = json!(s.offset);
                body["epoch"] = json!(s.epoch);
            }
            if s.no_join_leave {
                body["join_leave"] = json!(false);
            }
            ("subscribe", body)
        }
        Some(command::Body::Presence(p)) => ("presence", json!({"channel": p.channel})),
        Some(command::Body::PresenceStats(p)) => ("presence_stats", json!({"channel": p.channel})),
        Some(command::Body::History(h)) => {
            let mut body = json!({"channel": h.channel, "limit": h.limit, "reverse": h.reverse});
            if let Some(p) = &h.since {
                body["since"] = json!({"offset": p.offset, "epoch": p.epoch});
            }
            ("history", body)
        }
        Some(command::Body::Unsubscribe(u)) => ("unsubscribe", json!({"channel": u.channel})),
        Some(command::Body::Refresh(r)) => ("refresh", json!({"token": r.token})),
        Some(command::Body::Publish(p)) => return encode_publish(cmd.id, p),
        Some(command::Body::Ping(_)) | None => ("ping", json!({})),
    };
    obj.insert(key.into(), body);
    Bytes::from(Value::Object(obj).to_string())
}

/// A publish command, serialised directly so that JSON data goes out byte for byte as given
/// (through a `Value` it would be re-formatted, and big numbers rounded). A JSON command can
/// only carry JSON data: bytes that are not JSON go out as `null` (the Rust client refuses
/// them before they get here; protobuf connections carry any bytes).
fn encode_publish(id: u32, p: &client::PublishRequest) -> Bytes {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
        data: &'a RawValue,
        echo: bool,
    }
    #[derive(Serialize)]
    struct Publish<'a> {
        id: u32,
        publish: Body<'a>,
    }
    let null = RawValue::NULL;
    let data = std::str::from_utf8(&p.data)
        .ok()
        .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
        .unwrap_or(null);
    let cmd = Publish {
        id,
        publish: Body {
            channel: &p.channel,
            data,
            echo: p.echo,
        },
    };
    // Plain strings, integers and an already-valid RawValue cannot fail to serialise.
    Bytes::from(serde_json::to_vec(&cmd).unwrap_or_default())
}

/// Encodes one server frame (a reply or a push) as JSON.
pub fn encode_frame(frame: &client::ServerFrame) -> Bytes {
    let value = match &frame.frame {
        Some(server_frame::Frame::Reply(r)) => {
            if let Some(text) = reply_with_publications(r) {
                return text;
            }
            reply_value(r)
        }
        Some(server_frame::Frame::Push(p)) => match &p.body {
            Some(push::Body::Publication(p)) => return encode_publication(p),
            Some(push::Body::Disconnect(d)) => disconnect_value(d),
            Some(push::Body::Join(j)) => json!({"join": member_value(&j.channel, j.info.as_ref())}),
            Some(push::Body::Leave(l)) => {
                json!({"leave": member_value(&l.channel, l.info.as_ref())})
            }
            Some(push::Body::Subscribe(s)) => return encode_subscribed(s),
            Some(push::Body::Unsubscribe(u)) => json!({"unsubscribe": {
                "channel": u.channel, "reason": u.reason}}),
            None => json!({}),
        },
        None => json!({}),
    };
    Bytes::from(value.to_string())
}

fn reply_value(r: &client::Reply) -> Value {
    let mut obj = Map::new();
    obj.insert("id".into(), json!(r.id));
    if let Some(e) = &r.error {
        obj.insert(
            "error".into(),
            json!({"code": e.code, "message": e.message}),
        );
    }
    let result = match &r.result {
        Some(reply::Result::Connect(c)) => Some((
            "connect",
            json!({"client": c.client, "node": c.node, "version": c.version, "ping_interval": c.ping_interval}),
        )),
        Some(reply::Result::Subscribe(s)) => {
            Some(("subscribe", json!({"offset": s.offset, "epoch": s.epoch})))
        }
        Some(reply::Result::History(h)) => Some((
            "history",
            json!({"publications": [], "offset": h.offset, "epoch": h.epoch, "more": h.more}),
        )),
        Some(reply::Result::Unsubscribe(_)) => Some(("unsubscribe", json!({}))),
        Some(reply::Result::Publish(p)) => {
            Some(("publish", json!({"offset": p.offset, "epoch": p.epoch})))
        }
        Some(reply::Result::Ping(_)) => Some(("ping", json!({}))),
        Some(reply::Result::Refresh(r)) => Some(("refresh", json!({"expires_at": r.expires_at}))),
        Some(reply::Result::Presence(p)) => Some((
            "presence",
            json!({"clients": p.clients.iter().map(client_info_value).collect::<Vec<_>>()}),
        )),
        Some(reply::Result::PresenceStats(s)) => Some((
            "presence_stats",
            json!({"num_clients": s.num_clients, "num_users": s.num_users}),
        )),
        None => None,
    };
    if let Some((key, v)) = result {
        obj.insert(key.into(), v);
    }
    Value::Object(obj)
}

/// A presence entry as JSON: the token's `info` embedded as the JSON it is, left out when the
/// token has none.
fn client_info_value(c: &client::ClientInfo) -> Value {
    let mut obj = Map::new();
    obj.insert("client".into(), json!(c.client));
    obj.insert("user".into(), json!(c.user));
    if let Ok(info) = serde_json::from_slice::<Value>(&c.info) {
        obj.insert("info".into(), info);
    }
    Value::Object(obj)
}

/// A join or leave push's body: the channel and the entry's fields side by side.
fn member_value(channel: &str, info: Option<&client::ClientInfo>) -> Value {
    let mut v = info.map_or_else(|| json!({}), client_info_value);
    v["channel"] = json!(channel);
    v
}

fn disconnect_value(d: &client::Disconnect) -> Value {
    json!({"disconnect": {"code": d.code, "reason": d.reason, "reconnect": d.reconnect}})
}

/// A publication as JSON: data embedded as is when it is JSON, else base64 under `b64data`.
/// Serialised directly (not through [`Value`]) because this is the fan-out path, and because
/// JSON data must reach clients exactly as published: same number precision, same key order,
/// same whitespace.
#[derive(Serialize)]
struct Pub<'a> {
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
}

impl<'a> Pub<'a> {
    fn of(p: &'a client::Publication) -> Self {
        let data = std::str::from_utf8(&p.data)
            .ok()
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
        Pub {
            channel: &p.channel,
            offset: p.offset,
            epoch: &p.epoch,
            b64data: data.is_none().then(|| BASE64.encode(&p.data)),
            data,
        }
    }
}

/// The JSON text of a publication push.
fn encode_publication(p: &client::Publication) -> Bytes {
    #[derive(Serialize)]
    struct Push<'a> {
        #[serde(rename = "pub")]
        publication: Pub<'a>,
    }
    let push = Push {
        publication: Pub::of(p),
    };
    // Serialising plain strings, integers and an already-valid RawValue cannot fail.
    Bytes::from(serde_json::to_vec(&push).unwrap_or_default())
}

/// The JSON text of a `subscribe` push; with the recovery's outcome and publications when the
/// connect asked to recover the channel.
fn encode_subscribed(s: &client::Subscribed) -> Bytes {
    #[derive(Serialize)]
    struct SubscribedJson<'a> {
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        publications: Vec<Pub<'a>>,
    }
    #[derive(Serialize)]
    struct Push<'a> {
        subscribe: SubscribedJson<'a>,
    }
    let push = Push {
        subscribe: SubscribedJson {
            channel: &s.channel,
            offset: s.offset,
            epoch: &s.epoch,
            recovered: s.was_recovering.then_some(s.recovered),
            publications: s.publications.iter().map(Pub::of).collect(),
        },
    };
    // Plain strings, integers, booleans and already-valid RawValues cannot fail.
    Bytes::from(serde_json::to_vec(&push).unwrap_or_default())
}

/// Replies that carry publications (subscribe with recovery, history), serialised directly
/// for the same reason as [`encode_publication`]. `None` for every other reply.
fn reply_with_publications(r: &client::Reply) -> Option<Bytes> {
    #[derive(Serialize)]
    struct SubscribeJson<'a> {
        offset: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        publications: Vec<Pub<'a>>,
    }
    #[derive(Serialize)]
    struct HistoryJson<'a> {
        publications: Vec<Pub<'a>>,
        offset: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    }
    #[derive(Serialize)]
    struct Reply<T> {
        id: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        subscribe: Option<T>,
        #[serde(skip_serializing_if = "Option::is_none")]
        history: Option<T>,
    }
    if r.error.is_some() {
        return None;
    }
    let text = match &r.result {
        Some(reply::Result::Subscribe(s)) if s.was_recovering => serde_json::to_vec(&Reply {
            id: r.id,
            subscribe: Some(SubscribeJson {
                offset: s.offset,
                epoch: &s.epoch,
                recovered: Some(s.recovered),
                publications: s.publications.iter().map(Pub::of).collect(),
            }),
            history: None,
        }),
        Some(reply::Result::History(h)) => serde_json::to_vec(&Reply {
            id: r.id,
            subscribe: None,
            history: Some(HistoryJson {
                publications: h.publications.iter().map(Pub::of).collect(),
                offset: h.offset,
                epoch: &h.epoch,
                more: h.more,
            }),
        }),
        _ => return None,
    };
    text.ok().map(Bytes::from)
}

/// Decodes one JSON server frame (used by clients and tests). Publication data comes back as
/// the JSON text of `data`, or the decoded bytes of `b64data`.
pub fn decode_frame(bytes: &[u8]) -> Result<client::ServerFrame, serde_json::Error> {
    let v: Value = serde_json::from_slice(bytes)?;
    let bad = |what: &str| <serde_json::Error as serde::de::Error>::custom(what);
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let u64_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let publication_of = |p: &Value| -> Result<client::Publication, serde_json::Error> {
        let data = match (p.get("data"), p.get("b64data").and_then(Value::as_str)) {
            (Some(d), _) => Bytes::from(d.to_string()),
            (None, Some(b)) => Bytes::from(BASE64.decode(b).map_err(|_| bad("bad b64data"))?),
            (None, None) => Bytes::new(),
        };
        Ok(client::Publication {
            channel: str_of(p, "channel"),
            offset: u64_of(p, "offset"),
            epoch: str_of(p, "epoch"),
            data,
        })
    };
    let publications_of = |v: &Value| -> Result<Vec<client::Publication>, serde_json::Error> {
        v.get("publications")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(publication_of)
            .collect()
    };
    if let Some(p) = v.get("pub") {
        return Ok(push_frame(push::Body::Publication(publication_of(p)?)));
    }
    if let Some(d) = v.get("disconnect") {
        let disconnect = client::Disconnect {
            code: u32::try_from(u64_of(d, "code")).map_err(|_| bad("bad code"))?,
            reason: str_of(d, "reason"),
            reconnect: d.get("reconnect").and_then(Value::as_bool).unwrap_or(false),
        };
        return Ok(push_frame(push::Body::Disconnect(disconnect)));
    }
    let client_info_of = |c: &Value| client::ClientInfo {
        client: str_of(c, "client"),
        user: str_of(c, "user"),
        info: c
            .get("info")
            .map_or_else(Bytes::new, |i| Bytes::from(i.to_string())),
    };
    if let Some(j) = v.get("join") {
        return Ok(push_frame(push::Body::Join(client::Join {
            channel: str_of(j, "channel"),
            info: Some(client_info_of(j)),
        })));
    }
    if let Some(l) = v.get("leave") {
        return Ok(push_frame(push::Body::Leave(client::Leave {
            channel: str_of(l, "channel"),
            info: Some(client_info_of(l)),
        })));
    }
    if v.get("id").is_none() {
        if let Some(s) = v.get("subscribe") {
            let recovered = s.get("recovered").and_then(Value::as_bool);
            return Ok(push_frame(push::Body::Subscribe(client::Subscribed {
                channel: str_of(s, "channel"),
                offset: u64_of(s, "offset"),
                epoch: str_of(s, "epoch"),
                was_recovering: recovered.is_some(),
                recovered: recovered.unwrap_or(false),
                publications: publications_of(s)?,
            })));
        }
        if let Some(u) = v.get("unsubscribe") {
            return Ok(push_frame(push::Body::Unsubscribe(client::Unsubscribed {
                channel: str_of(u, "channel"),
                reason: str_of(u, "reason"),
            })));
        }
    }
    let id = u32::try_from(u64_of(&v, "id")).map_err(|_| bad("bad id"))?;
    let error = v.get("error").map(|e| client::Error {
        code: u32::try_from(u64_of(e, "code")).unwrap_or(0),
        message: str_of(e, "message"),
    });
    let result = if let Some(c) = v.get("connect") {
        Some(reply::Result::Connect(client::ConnectResult {
            client: str_of(c, "client"),
            node: str_of(c, "node"),
            version: str_of(c, "version"),
            ping_interval: u32::try_from(u64_of(c, "ping_interval")).unwrap_or(0),
        }))
    } else if let Some(s) = v.get("subscribe") {
        let recovered = s.get("recovered").and_then(Value::as_bool);
        Some(reply::Result::Subscribe(client::SubscribeResult {
            epoch: str_of(s, "epoch"),
            offset: u64_of(s, "offset"),
            recovered: recovered.unwrap_or(false),
            was_recovering: recovered.is_some(),
            publications: publications_of(s)?,
        }))
    } else if v.get("unsubscribe").is_some() {
        Some(reply::Result::Unsubscribe(client::UnsubscribeResult {}))
    } else if let Some(p) = v.get("publish") {
        Some(reply::Result::Publish(client::PublishResult {
            offset: u64_of(p, "offset"),
            epoch: str_of(p, "epoch"),
        }))
    } else if v.get("ping").is_some() {
        Some(reply::Result::Ping(client::PingResult {}))
    } else if let Some(r) = v.get("refresh") {
        Some(reply::Result::Refresh(client::RefreshResult {
            expires_at: u64_of(r, "expires_at"),
        }))
    } else if let Some(p) = v.get("presence") {
        Some(reply::Result::Presence(client::PresenceResult {
            clients: p
                .get("clients")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(client_info_of)
                .collect(),
        }))
    } else if let Some(s) = v.get("presence_stats") {
        Some(reply::Result::PresenceStats(client::PresenceStatsResult {
            num_clients: u32::try_from(u64_of(s, "num_clients")).unwrap_or(u32::MAX),
            num_users: u32::try_from(u64_of(s, "num_users")).unwrap_or(u32::MAX),
        }))
    } else if let Some(h) = v.get("history") {
        Some(reply::Result::History(client::HistoryResult {
            publications: publications_of(h)?,
            offset: u64_of(h, "offset"),
            epoch: str_of(h, "epoch"),
            more: h.get("more").and_then(Value::as_bool).unwrap_or(false),
        }))
    } else {
        None
    };
    Ok(client::ServerFrame {
        frame: Some(server_frame::Frame::Reply(client::Reply {
            id,
            error,
            result,
        })),
    })
}

fn push_frame(body: push::Body) -> client::ServerFrame {
    client::ServerFrame {
        frame: Some(server_frame::Frame::Push(client::Push { body: Some(body) })),
    }
}
