//! The HTTP/JSON face of the API (`/api/...`) and the probes (`/healthz`, `/readyz`).
//!
//! Handlers only translate JSON to service calls and back; every JSON failure, including
//! axum's own extractor rejections and unknown routes, answers in the one error shape
//! `{"error":{"code":"…","message":"…"}}` so clients need a single error path.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chorus_bus::Published;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::service::{Broker, disconnect_op, subscribe_op};

/// `/api/...` routes (authentication and the body limit are layered on by the caller).
pub fn api_routes() -> Router<Broker> {
    Router::new()
        .route("/api/publish", post(publish))
        .route("/api/publish_batch", post(publish_batch))
        .route("/api/broadcast", post(broadcast))
        .route("/api/nodes", get(nodes))
        .route("/api/history", post(history))
        .route("/api/presence", post(presence))
        .route("/api/presence_stats", post(presence_stats))
        .route("/api/disconnect", post(disconnect))
        .route("/api/subscribe", post(subscribe))
        .route("/api/unsubscribe", post(unsubscribe))
        .route("/api/channels", post(channels))
        .route("/api/openapi.json", get(crate::openapi::document))
}

/// `/healthz`, `/readyz` and `/metrics`: no API key, so load balancers, orchestrators and
/// Prometheus can reach them (keep the API port off the public internet, or filter
/// `/metrics` at the edge).
pub fn probe_routes() -> Router<Broker> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// A JSON body whose rejections answer in the API's error shape instead of axum's plain text.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(rejection_to_error(&rejection)),
        }
    }
}

fn rejection_to_error(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::bad_request("expected a JSON body with `Content-Type: application/json`")
        }
        JsonRejection::BytesRejection(_) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large("request body is over the limit (--api-max-body)")
        }
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request(format!("invalid JSON: {}", rejection.body_text()))
        }
        _ => ApiError::bad_request(rejection.body_text()),
    }
}

/// Deserializes a present field as `Some`, even when it is JSON `null`, so that
/// `"data": null` publishes `null` rather than counting as a missing `data`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Message data in JSON: `data` (any JSON value, published as its exact JSON text) or
/// `b64data` (base64, published as the decoded bytes). Exactly one of them.
///
/// (The request structs repeat the two fields rather than `#[serde(flatten)]` this one:
/// `RawValue` cannot be read through flatten's buffering.)
struct DataFields {
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
}

impl DataFields {
    fn into_bytes(self, max_data: usize) -> Result<Bytes, ApiError> {
        match (self.data, self.b64data) {
            (Some(raw), None) => Ok(Bytes::from(String::from(Box::<str>::from(raw)))),
            (None, Some(b64)) => {
                // A cheap bound before decoding: base64 takes 4 characters per 3 bytes.
                if b64.len() / 4 * 3 > max_data + 3 {
                    return Err(ApiError::too_large(format!(
                        "data is about {} bytes, the limit is {max_data} bytes (--api-max-data)",
                        b64.len() / 4 * 3
                    )));
                }
                BASE64
                    .decode(b64.as_bytes())
                    .map(Bytes::from)
                    .map_err(|e| ApiError::bad_request(format!("b64data is not valid base64: {e}")))
            }
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "give either data or b64data, not both",
            )),
            (None, None) => Err(ApiError::bad_request(
                "missing data: give data (any JSON value) or b64data (base64 bytes)",
            )),
        }
    }
}

/// One publication: `data` (any JSON value) or `b64data` (base64 bytes), exactly one.
#[derive(Deserialize, ToSchema)]
pub(crate) struct PublishRequest {
    channel: String,
    /// Any JSON value, published as its exact JSON text.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<serde_json::Value>)]
    data: Option<Box<RawValue>>,
    /// Base64 bytes, published as the decoded bytes.
    #[serde(default)]
    b64data: Option<String>,
    /// A retry with the same key within the idempotency window publishes nothing and
    /// answers the first offset with `duplicate: true`.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Where the publication went: its offset in the channel's epoch.
#[derive(Serialize, ToSchema)]
pub(crate) struct PublishResponse {
    offset: u64,
    epoch: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

impl From<Published> for PublishResponse {
    fn from(p: Published) -> Self {
        Self {
            offset: p.offset,
            epoch: p.epoch,
            duplicate: p.duplicate,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryRequest {
    channel: String,
    #[serde(default)]
    since: Option<SinceBody>,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    reverse: bool,
}

/// A position: an offset of an epoch.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SinceBody {
    offset: u64,
    #[serde(default)]
    epoch: String,
}

/// One publication of a history answer: JSON data embedded as is, other data as base64.
#[derive(Serialize, ToSchema)]
pub(crate) struct HistoryPublication<'a> {
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
    published_at_ms: i64,
}

/// Publications and the channel's current position; `more` when the answer stopped at its
/// byte bound before `limit`.
#[derive(Serialize, ToSchema)]
pub(crate) struct HistoryResponse<'a> {
    publications: Vec<HistoryPublication<'a>>,
    offset: u64,
    epoch: &'a str,
    more: bool,
}

/// A channel's history and current position.
#[utoipa::path(post, path = "/api/history", request_body = HistoryRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = HistoryResponse),
        (status = 400, body = ErrorBody, description = "bad_request, bad_channel"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 409, body = ErrorBody, description = "position_lost: `since` is of another epoch"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn history(
    State(broker): State<Broker>,
    ApiJson(req): ApiJson<HistoryRequest>,
) -> Result<Response, ApiError> {
    let since = req.since.map(|s| chorus_bus::Position {
        offset: s.offset,
        epoch: s.epoch,
    });
    let history = broker
        .history(&req.channel, since, req.limit, req.reverse)
        .await?;
    let publications = history
        .publications
        .iter()
        .map(|p| {
            let data = std::str::from_utf8(&p.data)
                .ok()
                .and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
            HistoryPublication {
                offset: p.offset,
                b64data: data.is_none().then(|| BASE64.encode(&p.data)),
                data,
                published_at_ms: p.published_at_ms,
            }
        })
        .collect();
    let body = HistoryResponse {
        publications,
        offset: history.position.offset,
        epoch: &history.position.epoch,
        more: history.more,
    };
    Ok(Json(body).into_response())
}

/// Names the channel a query is about.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelRequest {
    channel: String,
}

/// One subscribed connection.
#[derive(Serialize, ToSchema)]
pub(crate) struct PresenceClient<'a> {
    client: &'a str,
    user: &'a str,
    /// The connection token's `info` claim, as it was given; absent when the token has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    info: Option<&'a RawValue>,
}

/// Every connection subscribed to the channel, across all gateways, in no particular order.
#[derive(Serialize, ToSchema)]
pub(crate) struct PresenceResponse<'a> {
    clients: Vec<PresenceClient<'a>>,
}

/// Who is subscribed to a channel whose namespace keeps presence: one entry per connection,
/// at most the namespace's `presence_max_clients`.
#[utoipa::path(post, path = "/api/presence", request_body = ChannelRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = PresenceResponse),
        (status = 400, body = ErrorBody, description = "bad_request (presence is not kept for the channel's namespace, unknown namespace), bad_channel"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn presence(
    State(broker): State<Broker>,
    ApiJson(req): ApiJson<ChannelRequest>,
) -> Result<Response, ApiError> {
    let members = broker.presence(&req.channel).await?;
    let clients = members
        .iter()
        .map(|m| PresenceClient {
            client: &m.client,
            user: &m.user,
            info: std::str::from_utf8(&m.info)
                .ok()
                .and_then(|text| serde_json::from_str::<&RawValue>(text).ok()),
        })
        .collect();
    Ok(Json(PresenceResponse { clients }).into_response())
}

/// How many connections, and distinct users among them, are subscribed.
#[derive(Serialize, ToSchema)]
pub(crate) struct PresenceStatsResponse {
    num_clients: u32,
    num_users: u32,
}

/// How many connections and distinct users are subscribed to a presence channel.
#[utoipa::path(post, path = "/api/presence_stats", request_body = ChannelRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = PresenceStatsResponse),
        (status = 400, body = ErrorBody, description = "bad_request (presence is not kept for the channel's namespace, unknown namespace), bad_channel"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn presence_stats(
    State(broker): State<Broker>,
    ApiJson(req): ApiJson<ChannelRequest>,
) -> Result<Json<PresenceStatsResponse>, ApiError> {
    let stats = broker.presence_stats(&req.channel).await?;
    Ok(Json(PresenceStatsResponse {
        num_clients: stats.clients,
        num_users: stats.users,
    }))
}

/// Close a user's connections (or one of them) on every gateway.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisconnectRequest {
    user: String,
    /// Only this connection; absent: all of the user's.
    #[serde(default)]
    client: String,
    /// WebSocket close code, 3000-4999 (default 4000).
    #[serde(default)]
    code: u32,
    /// At most 120 bytes (default "disconnected by the server").
    #[serde(default)]
    reason: String,
    /// Whether clients should come back (default false).
    #[serde(default)]
    reconnect: bool,
}

/// Put a user's live connections (or one of them) into a channel, or take them out.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserSubscribeRequest {
    user: String,
    /// Only this connection; absent: all of the user's.
    #[serde(default)]
    client: String,
    channel: String,
}

/// What a user-level command reached.
#[derive(Serialize, ToSchema)]
pub(crate) struct UserCommandResponse {
    /// Connections the command reached, across every gateway.
    connections: u64,
    /// Gateways that received the command.
    nodes: usize,
    /// Gateways that answered in time (fewer than `nodes`: some may have applied it unseen).
    answered: usize,
}

impl From<chorus_bus::control::ControlReplies> for UserCommandResponse {
    fn from(r: chorus_bus::control::ControlReplies) -> Self {
        Self {
            connections: r.connections(),
            nodes: r.reached,
            answered: r.replies.len(),
        }
    }
}

/// Closes every connection of a user (or one of them) on every gateway, with a code, a
/// reason and whether to reconnect.
#[utoipa::path(post, path = "/api/disconnect", request_body = DisconnectRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = UserCommandResponse),
        (status = 400, body = ErrorBody, description = "bad_request"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 404, body = ErrorBody, description = "not_connected: the user has no connection"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn disconnect(
    State(broker): State<Broker>,
    ApiJson(r): ApiJson<DisconnectRequest>,
) -> Result<Json<UserCommandResponse>, ApiError> {
    let op = disconnect_op(r.user, r.client, r.code, r.reason, r.reconnect)?;
    Ok(Json(broker.user_command(op).await?.into()))
}

/// Subscribes a user's live connections (or one of them) to a channel: each receives a
/// `subscribe` push with the channel's position, then its publications.
#[utoipa::path(post, path = "/api/subscribe", request_body = UserSubscribeRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = UserCommandResponse),
        (status = 400, body = ErrorBody, description = "bad_request, bad_channel"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 404, body = ErrorBody, description = "not_connected: the user has no connection"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn subscribe(
    State(broker): State<Broker>,
    ApiJson(r): ApiJson<UserSubscribeRequest>,
) -> Result<Json<UserCommandResponse>, ApiError> {
    let op = subscribe_op(r.user, r.client, r.channel, false);
    Ok(Json(broker.user_command(op).await?.into()))
}

/// Takes a user's live connections (or one of them) out of a channel: each receives an
/// `unsubscribe` push.
#[utoipa::path(post, path = "/api/unsubscribe", request_body = UserSubscribeRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = UserCommandResponse),
        (status = 400, body = ErrorBody, description = "bad_request, bad_channel"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 404, body = ErrorBody, description = "not_connected: the user has no connection"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn unsubscribe(
    State(broker): State<Broker>,
    ApiJson(r): ApiJson<UserSubscribeRequest>,
) -> Result<Json<UserCommandResponse>, ApiError> {
    let op = subscribe_op(r.user, r.client, r.channel, true);
    Ok(Json(broker.user_command(op).await?.into()))
}

/// Which channels to list.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelsRequest {
    /// Only names matching this pattern (`*` matches any run of characters); absent: all.
    #[serde(default)]
    pattern: String,
    /// At most this many (default 1000, at most 10000).
    #[serde(default)]
    limit: usize,
}

/// A channel with subscribers, and how many across the cluster.
#[derive(Serialize, ToSchema)]
pub(crate) struct ChannelInfo {
    channel: String,
    subscribers: u64,
}

/// The channels with subscribers, sorted by name.
#[derive(Serialize, ToSchema)]
pub(crate) struct ChannelsResponse {
    channels: Vec<ChannelInfo>,
    /// More channels matched than `limit`.
    truncated: bool,
}

/// The channels with at least one subscriber across the cluster, with subscriber counts.
#[utoipa::path(post, path = "/api/channels", request_body = ChannelsRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = ChannelsResponse),
        (status = 400, body = ErrorBody, description = "bad_request"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn channels(
    State(broker): State<Broker>,
    ApiJson(r): ApiJson<ChannelsRequest>,
) -> Result<Json<ChannelsResponse>, ApiError> {
    let (channels, truncated) = broker.channels(&r.pattern, r.limit).await?;
    Ok(Json(ChannelsResponse {
        channels: channels
            .into_iter()
            .map(|(channel, subscribers)| ChannelInfo {
                channel,
                subscribers,
            })
            .collect(),
        truncated,
    }))
}

/// Publishes one message to one channel.
#[utoipa::path(post, path = "/api/publish", request_body = PublishRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = PublishResponse),
        (status = 400, body = ErrorBody, description = "bad_request, bad_channel"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 413, body = ErrorBody, description = "too_large"),
        (status = 429, body = ErrorBody, description = "overloaded (Retry-After), limit_exceeded"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn publish(
    State(broker): State<Broker>,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<Json<PublishResponse>, ApiError> {
    let data = DataFields {
        data: req.data,
        b64data: req.b64data,
    }
    .into_bytes(broker.max_data())?;
    let published = broker
        .publish(req.channel, data, req.idempotency_key)
        .await?;
    Ok(Json(published.into()))
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct PublishBatchRequest {
    publications: Vec<PublishRequest>,
}

/// One result per publication of a batch, in order: where it went, or why it failed.
#[derive(Serialize, ToSchema)]
pub(crate) struct BatchResponse {
    results: Vec<PublishOutcome>,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum PublishOutcome {
    Published(PublishResponse),
    Failed(ErrorBody),
}

impl From<Result<Published, ApiError>> for PublishOutcome {
    fn from(result: Result<Published, ApiError>) -> Self {
        match result {
            Ok(p) => Self::Published(p.into()),
            Err(e) => Self::Failed(e.to_body()),
        }
    }
}

/// Publishes many messages in one pipeline; each fails or succeeds on its own.
#[utoipa::path(post, path = "/api/publish_batch", request_body = PublishBatchRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = BatchResponse),
        (status = 400, body = ErrorBody, description = "bad_request"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 413, body = ErrorBody, description = "too_large: too many publications"),
        (status = 429, body = ErrorBody, description = "overloaded (Retry-After)"),
    ))]
pub(crate) async fn publish_batch(
    State(broker): State<Broker>,
    ApiJson(req): ApiJson<PublishBatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    // Data that does not convert fails its own entry only.
    let mut items = Vec::with_capacity(req.publications.len());
    let mut bad: Vec<Option<ApiError>> = Vec::with_capacity(req.publications.len());
    for p in req.publications {
        let data = DataFields {
            data: p.data,
            b64data: p.b64data,
        }
        .into_bytes(broker.max_data());
        match data {
            Ok(data) => {
                items.push(crate::service::PublishItem {
                    channel: p.channel,
                    data,
                    idempotency_key: p.idempotency_key,
                    exclude_client: String::new(),
                });
                bad.push(None);
            }
            Err(e) => bad.push(Some(e)),
        }
    }
    let mut published = broker
        .publish_batch(items, crate::service::Admission::Bounded)
        .await?
        .into_iter();
    let results: Vec<_> = bad
        .into_iter()
        .map(|bad| {
            let result = match bad {
                Some(e) => Err(e),
                None => published
                    .next()
                    .unwrap_or_else(|| Err(ApiError::new(ErrorCode::Internal, "no result"))),
            };
            PublishOutcome::from(result)
        })
        .collect();
    Ok(Json(BatchResponse { results }))
}

/// The same data to many channels.
#[derive(Deserialize, ToSchema)]
pub(crate) struct BroadcastRequest {
    channels: Vec<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<serde_json::Value>)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
}

/// One result per channel, in order.
#[derive(Serialize, ToSchema)]
pub(crate) struct BroadcastResponse {
    results: Vec<ChannelOutcome>,
}

/// A channel's result: its offset and epoch, or its error.
#[derive(Serialize, ToSchema)]
pub(crate) struct ChannelOutcome {
    channel: String,
    #[serde(flatten)]
    outcome: PublishOutcome,
}

/// Publishes one message to many channels.
#[utoipa::path(post, path = "/api/broadcast", request_body = BroadcastRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = BroadcastResponse),
        (status = 400, body = ErrorBody, description = "bad_request"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 413, body = ErrorBody, description = "too_large"),
        (status = 429, body = ErrorBody, description = "overloaded (Retry-After)"),
    ))]
pub(crate) async fn broadcast(
    State(broker): State<Broker>,
    ApiJson(req): ApiJson<BroadcastRequest>,
) -> Result<Json<BroadcastResponse>, ApiError> {
    let data = DataFields {
        data: req.data,
        b64data: req.b64data,
    }
    .into_bytes(broker.max_data())?;
    let outcomes = broker.broadcast(req.channels, data).await?;
    let results: Vec<_> = outcomes
        .into_iter()
        .map(|o| ChannelOutcome {
            channel: o.channel,
            outcome: o.result.into(),
        })
        .collect();
    Ok(Json(BroadcastResponse { results }))
}

/// The live gateway nodes.
#[derive(Serialize, ToSchema)]
pub(crate) struct NodesResponse {
    nodes: Vec<NodeJson>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct NodeJson {
    /// The node's id, as clients see it in `connect`'s `node`.
    id: String,
    /// Where clients reach it.
    address: String,
    /// Its open client connections.
    connections: u64,
    started_at_ms: i64,
}

/// The live gateway nodes and their connection counts.
#[utoipa::path(get, path = "/api/nodes",
    security(("api_key" = [])),
    responses(
        (status = 200, body = NodesResponse),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 503, body = ErrorBody, description = "unavailable"),
    ))]
pub(crate) async fn nodes(State(broker): State<Broker>) -> Result<Json<NodesResponse>, ApiError> {
    let nodes = broker
        .nodes()
        .await?
        .into_iter()
        .map(|n| NodeJson {
            id: n.id,
            address: n.address,
            connections: n.connections,
            started_at_ms: n.started_at_ms,
        })
        .collect();
    Ok(Json(NodesResponse { nodes }))
}

/// A probe's answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct ProbeStatus {
    status: &'static str,
}

/// Alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = ProbeStatus)))]
pub(crate) async fn healthz() -> Json<ProbeStatus> {
    Json(ProbeStatus { status: "ok" })
}

/// Ready: the bus can publish.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = ProbeStatus),
    (status = 503, body = ErrorBody, description = "unavailable"),
))]
pub(crate) async fn readyz(State(broker): State<Broker>) -> Response {
    match broker.ready().await {
        Ok(()) => Json(ProbeStatus { status: "ready" }).into_response(),
        // Rendered here rather than as an `ApiError` response: a failing probe is not a failed
        // API request, and must not count in the error metric.
        Err(e) => (e.code.http_status(), Json(e.body())).into_response(),
    }
}

/// The process's metrics in the Prometheus text format.
async fn metrics() -> Response {
    match chorus_runtime::metrics::render() {
        Some(body) => (
            [(CONTENT_TYPE, chorus_runtime::metrics::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

/// Unknown paths: a JSON 404 for HTTP callers, UNIMPLEMENTED for gRPC callers (whose unknown
/// services land here too).
pub async fn not_found(req: Request) -> Response {
    let is_grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        let status = tonic::Status::unimplemented(format!("no gRPC method {}", req.uri().path()));
        return status.into_http();
    }
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}

/// Known paths with the wrong method.
pub async fn method_not_allowed(req: Request) -> Response {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response()
}
