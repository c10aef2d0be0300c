//! The Pusher HTTP API under `/apps/{app_id}/…`, so that the official Pusher server
//! libraries (Node, PHP, Python, Ruby, Go, …) publish to Chorus unmodified.
//!
//! Requests are authenticated by Pusher's signature instead of the API key: `auth_key` (the
//! app's key), `auth_timestamp` (within [`MAX_CLOCK_SKEW`] of now), `auth_version=1.0`,
//! `body_md5` (hex MD5 of the body, when there is one) and `auth_signature`, the app's
//! HMAC-SHA256 of `METHOD\npath\nquery` where the query is every other parameter, keys
//! lower-cased, sorted, `key=value` joined by `&` with values not URL-escaped.
//!
//! Events become publications on the app's Chorus channels (`chorus_bus::pusher`) through the
//! same service layer as `/api/publish_batch`: one pipeline to Redis, the `socket_id` as the
//! connection not to deliver to. Channel queries read the gateways' subscriber counts over
//! the control channel and presence from the bus. Errors keep broker-api's JSON body and
//! status codes, which are the ones the libraries act on (400, 401, 404, 413, 503).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use chorus_bus::pusher::{App, ChannelKind, Event};
use md5::Digest as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::service::{Admission, Broker, PublishItem, disconnect_op};

/// How far a request's `auth_timestamp` may be from now, in seconds.
pub const MAX_CLOCK_SKEW: i64 = 600;
/// Longest event name.
const MAX_EVENT_NAME: usize = 200;
/// Most channels a channel list answers with.
const MAX_CHANNELS_LISTED: usize = 10_000;

/// The Pusher routes; they check their own signatures.
pub fn routes() -> Router<Broker> {
    Router::new()
        .route("/apps/{app_id}/events", post(events))
        .route("/apps/{app_id}/batch_events", post(batch_events))
        .route("/apps/{app_id}/channels", get(channels))
        .route("/apps/{app_id}/channels/{channel}", get(channel))
        .route("/apps/{app_id}/channels/{channel}/users", get(users))
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(terminate),
        )
}

/// Checks a request's signature; returns its app and its query parameters.
fn verify(
    broker: &Broker,
    app_id: &str,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<(Arc<App>, BTreeMap<String, String>), ApiError> {
    let app = broker
        .bus()
        .pusher_apps()
        .by_id(app_id)
        .cloned()
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("unknown app {app_id:?}")))?;
    let unauthorized = |why: String| ApiError::new(ErrorCode::Unauthorized, why);
    let mut params = BTreeMap::new();
    let mut signature = None;
    for pair in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        if key == "auth_signature" {
            signature = Some(value);
        } else {
            params.insert(key.to_ascii_lowercase(), value);
        }
    }
    if params.get("auth_key") != Some(&app.key) {
        return Err(unauthorized("auth_key is not this app's key".into()));
    }
    if params.get("auth_version").map(String::as_str) != Some("1.0") {
        return Err(unauthorized("auth_version must be 1.0".into()));
    }
    let timestamp: i64 = params
        .get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| unauthorized("auth_timestamp is missing".into()))?;
    let now = chorus_bus::now_ms() / 1000;
    if (now - timestamp).abs() > MAX_CLOCK_SKEW {
        return Err(unauthorized(format!(
            "auth_timestamp is {}s from the server's time; at most {MAX_CLOCK_SKEW}s allowed",
            now - timestamp
        )));
    }
    if !body.is_empty() {
        let md5 = hex::encode(md5::Md5::digest(body));
        if params.get("body_md5") != Some(&md5) {
            return Err(unauthorized("body_md5 is not the MD5 of the body".into()));
        }
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let path = percent_encoding::percent_decode_str(uri.path()).decode_utf8_lossy();
    let signed = format!("{}\n{path}\n{}", method.as_str(), query.join("&"));
    match signature {
        Some(sig) if app.verify(&signed, &sig) => Ok((app, params)),
        _ => Err(unauthorized(format!(
            "Invalid signature: you should have sent HmacSHA256Hex({signed:?}, your_secret)"
        ))),
    }
}

/// The body of `POST /apps/{app_id}/events` (for the OpenAPI description; the handler reads
/// the same fields without copying `data`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct PusherEvent {
    /// The event name, 1-200 bytes.
    name: String,
    /// The event's data: a string (usually JSON text), relayed as it is; other JSON is relayed
    /// as its text.
    #[schema(value_type = Object)]
    data: Value,
    /// One channel; or `channels`.
    channel: Option<String>,
    /// Up to the app's `max_event_channels` (100).
    channels: Option<Vec<String>>,
    /// A connection (`\d+.\d+`) not to deliver the event to.
    socket_id: Option<String>,
    /// `subscription_count` and/or `user_count` (presence channels), comma-separated.
    info: Option<String>,
}

/// The body of `POST /apps/{app_id}/batch_events`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct PusherBatch {
    /// Up to the app's `max_batch_events` (10) events, each with one `channel`.
    batch: Vec<PusherEvent>,
}

/// The query parameters every Pusher request is signed with (for the OpenAPI description;
/// [`verify`] reads them from the raw query, which the signature covers).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct PusherAuth {
    /// The app's key.
    auth_key: String,
    /// Seconds since the Unix epoch, within 600 s of the server's.
    auth_timestamp: i64,
    /// `1.0`.
    auth_version: String,
    /// Hex MD5 of the body, when there is one.
    body_md5: Option<String>,
    /// HMAC-SHA256 (hex) of `METHOD\npath\nsorted query`, with the app's secret.
    auth_signature: String,
}

#[derive(Deserialize)]
struct EventRequest<'a> {
    name: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

#[derive(Deserialize)]
struct BatchRequest<'a> {
    #[serde(borrow)]
    batch: Vec<EventRequest<'a>>,
}

fn json_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// An event's data as the string Pusher relays: a string as it is, other JSON as its text.
fn data_string(data: &RawValue) -> String {
    serde_json::from_str::<String>(data.get()).unwrap_or_else(|_| data.get().to_owned())
}

/// The publications of one event, checked against the app's limits.
fn event_items(
    app: &App,
    req: EventRequest<'_>,
) -> Result<(Vec<PublishItem>, Vec<String>), ApiError> {
    if req.name.is_empty() || req.name.len() > MAX_EVENT_NAME {
        return Err(ApiError::bad_request(format!(
            "the event name must be 1-{MAX_EVENT_NAME} bytes"
        )));
    }
    let data = data_string(req.data);
    if data.len() > app.max_event_bytes {
        return Err(ApiError::too_large(format!(
            "the event data is {} bytes, the limit is {}",
            data.len(),
            app.max_event_bytes
        )));
    }
    let channels: Vec<String> = match (req.channel, req.channels) {
        (Some(c), None) => vec![c],
        (None, Some(cs)) => cs,
        _ => {
            return Err(ApiError::bad_request("give either channel or channels"));
        }
    };
    if channels.is_empty() || channels.len() > app.max_event_channels {
        return Err(ApiError::bad_request(format!(
            "an event goes to 1-{} channels",
            app.max_event_channels
        )));
    }
    let exclude = match req.socket_id {
        Some(id) if valid_socket_id(&id) => id,
        Some(id) => return Err(ApiError::bad_request(format!("invalid socket_id {id:?}"))),
        None => String::new(),
    };
    let payload = Event {
        event: req.name,
        data,
        user_id: None,
    }
    .to_bytes();
    let mut items = Vec::with_capacity(channels.len());
    for name in &channels {
        items.push(PublishItem {
            channel: chorus_channel(app, name)?,
            data: payload.clone(),
            idempotency_key: None,
            exclude_client: exclude.clone(),
        });
    }
    Ok((items, channels))
}

/// The Chorus channel behind a Pusher channel name, or the 400 a bad name earns.
fn chorus_channel(app: &App, name: &str) -> Result<String, ApiError> {
    app.chorus_channel(name)
        .map_err(|e| ApiError::new(ErrorCode::BadChannel, format!("{name:?}: {e}")))
}

fn valid_socket_id(id: &str) -> bool {
    id.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// Publishes the items (one pipeline); fails as a whole when any failed.
async fn publish(broker: &Broker, items: Vec<PublishItem>) -> Result<(), ApiError> {
    for result in broker.publish_batch(items, Admission::Bounded).await? {
        result?;
    }
    Ok(())
}

/// What `info` asks of a channel.
#[derive(Clone, Copy, Default)]
struct Wanted {
    subscription_count: bool,
    user_count: bool,
}

impl Wanted {
    fn of(info: Option<&str>) -> Self {
        let mut w = Self::default();
        for attr in info.unwrap_or_default().split(',').map(str::trim) {
            match attr {
                "subscription_count" => w.subscription_count = true,
                "user_count" => w.user_count = true,
                _ => {}
            }
        }
        w
    }

    fn any(self) -> bool {
        self.subscription_count || self.user_count
    }
}

/// A channel's attributes as `info` asked for them.
async fn channel_info(
    broker: &Broker,
    app: &App,
    name: &str,
    wanted: Wanted,
    subscriptions: u64,
) -> Result<Map<String, Value>, ApiError> {
    let mut info = Map::new();
    let chorus = chorus_channel(app, name)?;
    if wanted.subscription_count {
        info.insert("subscription_count".into(), json!(subscriptions));
    }
    if wanted.user_count {
        if ChannelKind::of(name) != ChannelKind::Presence {
            return Err(ApiError::bad_request(
                "user_count is only for presence channels",
            ));
        }
        let stats = broker.presence_stats(&chorus).await?;
        info.insert("user_count".into(), json!(stats.users));
    }
    Ok(info)
}

/// Subscribers of each named Pusher channel across the gateways, in one round trip (none
/// for no names).
async fn subscription_counts<'a>(
    broker: &Broker,
    app: &App,
    names: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, u64>, ApiError> {
    let chorus = names
        .map(|name| chorus_channel(app, name))
        .collect::<Result<Vec<_>, _>>()?;
    let counts = broker.subscribers(chorus).await?;
    Ok(counts
        .into_iter()
        .filter_map(|(c, n)| Some((app.pusher_channel(&c)?.into_owned(), n)))
        .collect())
}

#[utoipa::path(post, path = "/apps/{app_id}/events", request_body = PusherEvent,
    params(
        PusherAuth,
        ("app_id" = String, Path, description = "the app's id"),
    ),
    responses(
        (status = 200, body = Object, description = "{} or, with info, {\"channels\": {name: {subscription_count, user_count}}}"),
        (status = 400, body = ErrorBody, description = "bad_request, bad_channel"),
        (status = 401, body = ErrorBody, description = "unauthorized: a wrong signature, key, timestamp or body_md5"),
        (status = 404, body = ErrorBody, description = "not_found: unknown app"),
        (status = 413, body = ErrorBody, description = "too_large: the data is over the app's max_event_bytes"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn events(
    State(broker): State<Broker>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (app, _) = verify(&broker, &app_id, &method, &uri, &body)?;
    let req: EventRequest<'_> = json_body(&body)?;
    let wanted = Wanted::of(req.info.as_deref());
    let (items, names) = event_items(&app, req)?;
    publish(&broker, items).await?;
    if !wanted.any() {
        return Ok(Json(json!({})));
    }
    let counted = names.iter().filter(|_| wanted.subscription_count);
    let counts = subscription_counts(&broker, &app, counted.map(String::as_str)).await?;
    let mut channels = Map::new();
    for name in names {
        let n = counts.get(&name).copied().unwrap_or(0);
        let info = channel_info(&broker, &app, &name, wanted, n).await?;
        channels.insert(name, Value::Object(info));
    }
    Ok(Json(json!({ "channels": channels })))
}

#[utoipa::path(post, path = "/apps/{app_id}/batch_events", request_body = PusherBatch,
    params(
        PusherAuth,
        ("app_id" = String, Path, description = "the app's id"),
    ),
    responses(
        (status = 200, body = Object, description = "{} or, with info, {\"batch\": [{subscription_count, user_count}]}"),
        (status = 400, body = ErrorBody, description = "bad_request, bad_channel"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 404, body = ErrorBody, description = "not_found: unknown app"),
        (status = 413, body = ErrorBody, description = "too_large"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn batch_events(
    State(broker): State<Broker>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (app, _) = verify(&broker, &app_id, &method, &uri, &body)?;
    let req: BatchRequest<'_> = json_body(&body)?;
    if req.batch.len() > app.max_batch_events {
        return Err(ApiError::bad_request(format!(
            "a batch holds at most {} events",
            app.max_batch_events
        )));
    }
    let mut items = Vec::new();
    let mut infos = Vec::new();
    for event in req.batch {
        if event.channels.is_some() {
            return Err(ApiError::bad_request("a batch event names one channel"));
        }
        let wanted = Wanted::of(event.info.as_deref());
        let (more, names) = event_items(&app, event)?;
        items.extend(more);
        infos.push((names.into_iter().next().unwrap_or_default(), wanted));
    }
    publish(&broker, items).await?;
    if !infos.iter().any(|(_, w)| w.any()) {
        return Ok(Json(json!({})));
    }
    let counted = infos.iter().filter(|(_, w)| w.subscription_count);
    let counts = subscription_counts(&broker, &app, counted.map(|(name, _)| name.as_str())).await?;
    let mut batch = Vec::with_capacity(infos.len());
    for (name, wanted) in infos {
        let n = counts.get(&name).copied().unwrap_or(0);
        batch.push(Value::Object(
            channel_info(&broker, &app, &name, wanted, n).await?,
        ));
    }
    Ok(Json(json!({ "batch": batch })))
}

#[utoipa::path(get, path = "/apps/{app_id}/channels",
    params(
        PusherAuth,
        ("app_id" = String, Path, description = "the app's id"),
        ("filter_by_prefix" = Option<String>, Query, description = "only channels whose names start with it"),
        ("info" = Option<String>, Query, description = "subscription_count, user_count (with filter_by_prefix=presence-)"),
    ),
    responses(
        (status = 200, body = Object, description = "{\"channels\": {name: {…info}}} for the occupied channels"),
        (status = 400, body = ErrorBody, description = "bad_request"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 404, body = ErrorBody, description = "not_found: unknown app"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn channels(
    State(broker): State<Broker>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let (app, params) = verify(&broker, &app_id, &method, &uri, &[])?;
    let prefix = params.get("filter_by_prefix").map_or("", String::as_str);
    let wanted = Wanted::of(params.get("info").map(String::as_str));
    if wanted.user_count && !prefix.starts_with("presence-") {
        return Err(ApiError::bad_request(
            "info=user_count needs filter_by_prefix=presence-",
        ));
    }
    if prefix.contains('*') {
        return Err(ApiError::bad_request("filter_by_prefix may not contain *"));
    }
    let namespace = app.namespace();
    let (found, _) = broker
        .channels(&format!("{namespace}:{prefix}*"), MAX_CHANNELS_LISTED)
        .await?;
    let mut channels = Map::new();
    for (chorus, subscriptions) in found {
        // The user channels are nobody else's business.
        let Some(name) = app.pusher_channel(&chorus) else {
            continue;
        };
        if ChannelKind::of(&name) == ChannelKind::User {
            continue;
        }
        let info = channel_info(&broker, &app, &name, wanted, subscriptions).await?;
        channels.insert(name.into_owned(), Value::Object(info));
    }
    Ok(Json(json!({ "channels": channels })))
}

#[utoipa::path(get, path = "/apps/{app_id}/channels/{channel}",
    params(
        PusherAuth,
        ("app_id" = String, Path, description = "the app's id"),
        ("channel" = String, Path, description = "the Pusher channel name"),
        ("info" = Option<String>, Query, description = "subscription_count, user_count (presence channels)"),
    ),
    responses(
        (status = 200, body = Object, description = "{\"occupied\": bool, …info}"),
        (status = 400, body = ErrorBody, description = "bad_request, bad_channel"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 404, body = ErrorBody, description = "not_found: unknown app"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn channel(
    State(broker): State<Broker>,
    Path((app_id, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let (app, params) = verify(&broker, &app_id, &method, &uri, &[])?;
    let wanted = Wanted::of(params.get("info").map(String::as_str));
    let counts = subscription_counts(&broker, &app, std::iter::once(name.as_str())).await?;
    let subscriptions = counts.get(&name).copied().unwrap_or(0);
    let mut info = channel_info(&broker, &app, &name, wanted, subscriptions).await?;
    info.insert("occupied".into(), json!(subscriptions > 0));
    Ok(Json(Value::Object(info)))
}

#[utoipa::path(get, path = "/apps/{app_id}/channels/{channel}/users",
    params(
        PusherAuth,
        ("app_id" = String, Path, description = "the app's id"),
        ("channel" = String, Path, description = "a presence channel"),
    ),
    responses(
        (status = 200, body = Object, description = "{\"users\": [{\"id\": …}]}"),
        (status = 400, body = ErrorBody, description = "bad_request: not a presence channel"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 404, body = ErrorBody, description = "not_found: unknown app"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn users(
    State(broker): State<Broker>,
    Path((app_id, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let (app, _) = verify(&broker, &app_id, &method, &uri, &[])?;
    if ChannelKind::of(&name) != ChannelKind::Presence {
        return Err(ApiError::bad_request(
            "users are listed for presence channels only",
        ));
    }
    let chorus = chorus_channel(&app, &name)?;
    let members = broker.presence(&chorus).await?;
    let mut ids: Vec<String> = members.into_iter().map(|m| m.user).collect();
    ids.sort();
    ids.dedup();
    let users: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(Json(json!({ "users": users })))
}

#[utoipa::path(post, path = "/apps/{app_id}/users/{user_id}/terminate_connections",
    params(
        PusherAuth,
        ("app_id" = String, Path, description = "the app's id"),
        ("user_id" = String, Path, description = "the signed-in user's id"),
    ),
    responses(
        (status = 200, body = Object, description = "{}"),
        (status = 400, body = ErrorBody, description = "bad_request"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 404, body = ErrorBody, description = "not_found: unknown app"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn terminate(
    State(broker): State<Broker>,
    Path((app_id, user_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (app, _) = verify(&broker, &app_id, &method, &uri, &body)?;
    let op = disconnect_op(
        app.control_user(&user_id),
        String::new(),
        4009,
        "terminated by the app".into(),
        false,
    )?;
    match broker.user_command(op).await {
        // A user with no connection now is already terminated.
        Ok(_) => Ok(Json(json!({}))),
        Err(e) if e.code == ErrorCode::NotConnected => Ok(Json(json!({}))),
        Err(e) => Err(e),
    }
}
