//! broker-api: how backend applications publish into Chorus.
//!
//! It accepts publish requests over HTTP/JSON and gRPC, checks the API key and the limits,
//! and publishes on the [`chorus_bus::Bus`]. It keeps no state of its own: a publish is
//! acknowledged only once the bus (Redis) assigned the message its offset.
//!
//! # One port, two protocols
//! One axum router serves everything on `--api-listen`: the JSON routes, the probes, and the
//! tonic `chorus.api.v1.ChorusApi` service, whose tonic `Routes` are converted into an axum
//! router and merged in. The listener speaks HTTP/1.1 and HTTP/2 (h2c, prior knowledge), so a
//! gRPC client connects to the same `http://host:8001` as a JSON client.
//!
//! # How a request flows
//! 1. [`server`]: the router picks the route. `/api/...` and every gRPC call go through
//!    [`auth`] first (`Authorization: Bearer <key>`, header or gRPC metadata), compared in
//!    constant time against every configured key. The body is limited to `--api-max-body`.
//! 2. [`http`] or [`grpc`] turns the wire form into a call on [`service::Broker`], the one
//!    service layer both protocols share: the same validation, limits (`--api-max-data`,
//!    `--api-max-broadcast`), overall request timeout and error mapping.
//! 3. The broker calls [`chorus_bus::Bus`]; its result, or an [`error::ApiError`], goes back
//!    through the same protocol module into JSON or protobuf.
//!
//! # HTTP/JSON contract
//! Every `/api/` route needs `Authorization: Bearer <key>`.
//!
//! - `POST /api/publish` with `{"channel":"news","data":<any JSON value>}`, or with
//!   `"b64data":"<base64>"` instead of `data` for binary payloads (exactly one of the two),
//!   answers 200 `{"offset":1,"epoch":"…"}`. The published payload is the exact JSON text of
//!   `data` (not reformatted), or the decoded `b64data` bytes.
//! - `POST /api/broadcast` with `{"channels":["a","b"],"data":…}` (or `b64data`) answers 200
//!   `{"results":[{"channel":"a","offset":1,"epoch":"…"},{"channel":"b","error":{"code":"bad_channel","message":"…"}}]}`:
//!   one result per channel, in request order. At least one channel, at most
//!   `--api-max-broadcast` (default 1000). If the bus failed *every* channel as unavailable,
//!   the whole request answers 503 `unavailable` instead.
//! - `GET /api/nodes` answers 200
//!   `{"nodes":[{"id":"…","address":"…","connections":2,"started_at_ms":…}]}`.
//! - `GET /healthz` answers 200 while the process is up; `GET /readyz` answers 200 when the
//!   bus is reachable and 503 with the error body otherwise. Neither needs a key.
//! - `GET /admin` serves the admin page ([`admin`]): static HTML that asks for the API key and
//!   shows nodes, channels, a channel's history and presence, and a publish form, all through
//!   the routes above.
//!
//! Errors always have the body `{"error":{"code":"<name>","message":"<human>"}}`:
//!
//! | code | HTTP | gRPC | when |
//! |---|---|---|---|
//! | `bad_request` | 400 | INVALID_ARGUMENT | invalid JSON, missing or mistyped field, not JSON content type, both or neither of `data`/`b64data`, bad base64, empty `channels` |
//! | `bad_channel` | 400 | INVALID_ARGUMENT | a channel name breaks the channel-name rules |
//! | `too_large` | 413 | INVALID_ARGUMENT | data over `--api-max-data`, body over `--api-max-body`, too many broadcast channels |
//! | `unauthorized` | 401 | UNAUTHENTICATED | missing, malformed or unknown API key |
//! | `not_found` | 404 | UNIMPLEMENTED | no such route |
//! | `method_not_allowed` | 405 | — | known route, wrong method |
//! | `unavailable` | 503 | UNAVAILABLE | the bus (Redis) is unreachable or did not answer within the request timeout |
//! | `internal` | 500 | INTERNAL | anything else |
//!
//! # gRPC contract
//! `chorus.api.v1.ChorusApi` (`protocol/proto/chorus/api.proto`): `Publish`, `Broadcast`
//! (per-channel `BroadcastResult.outcome`: `published`, or `error` with the code names above),
//! `Nodes`. Every call needs `authorization: Bearer <key>` metadata. Failed calls carry the
//! code name in the `chorus-error-code` response metadata as well. Messages over
//! `--api-max-body` fail OUT_OF_RANGE (tonic's decoding limit).
//!
//! # Timeouts
//! The bus gives up on a Redis operation after `--redis-timeout`. On top of that every
//! request's bus work runs under `--api-request-timeout` (default: the Redis timeout plus
//! one second; see [`BrokerConfig::with_bus_timeout`]), so no request can hang. A request that
//! times out may still have been published.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod grpc;
mod health;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod pusher;
pub mod server;
pub mod service;
pub mod webhooks;

pub use cli::Cli;
pub use config::BrokerConfig;
pub use error::{ApiError, BrokerError, ErrorCode};
pub use server::{router, serve};
pub use service::Broker;
