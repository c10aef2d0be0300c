//! The HTTP side of the gateway: accepting TCP connections, routing `/ws` (and the Pusher
//! protocol's `/app/{key}`), `/healthz`,
//! `/readyz`, the JavaScript client at `/sdk/` and the demo page, and handing upgraded
//! WebSockets to sessions; and, on a listener of its own (loopback by default), `/metrics`, so
//! that the client port never serves the node's internals.
//!
//! Connections are served by hyper's HTTP/1 server with upgrades enabled and a timer, so the
//! header-read timeout applies (a client that never finishes its request is dropped). Upgraded
//! connections leave hyper's bookkeeping, so the node tracks them itself to wait for them on
//! shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chorus_protocol::wire::{Format, JSON_SUBPROTOCOL, PROTOBUF_SUBPROTOCOL};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::node::Node;
use crate::{limits, session};

/// How long shutdown waits, after the drain window, for sessions to send their close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

const DEMO_PAGE: &str = include_str!("../assets/demo.html");

/// The JavaScript client (`sdk/js`), served at `/sdk/` so that a page loads it with no build
/// step: `import { Client } from "/sdk/index.js"`. Embedded, so the binary is all it takes.
const SDK_JS: &str = include_str!("../../sdk/js/index.js");
const SDK_TYPES: &str = include_str!("../../sdk/js/index.d.ts");

type Body = Full<Bytes>;

pub(crate) async fn accept_loop(listener: TcpListener, node: Arc<Node>) {
    let tracker = TaskTracker::new();
    // Accepting goes on through the drain window, so probes keep answering (`/readyz`: 503)
    // while new WebSockets are refused; sessions leave one by one at their turn.
    let drained = async {
        node.shutdown.cancelled().await;
        tokio::time::sleep_until(node.drain_end()).await;
    };
    tokio::pin!(drained);
    loop {
        let accepted = tokio::select! {
            _ = &mut drained => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(serve_http(stream, node.clone(), tracker.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace; leaving them");
    }
}

async fn serve_http(stream: TcpStream, node: Arc<Node>, tracker: TaskTracker) {
    let service = {
        let node = node.clone();
        service_fn(move |req| {
            let response = route(req, &node, &tracker);
            std::future::ready(Ok::<_, Infallible>(response))
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(node.config.header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        }
        _ = async {
            node.shutdown.cancelled().await;
            tokio::time::sleep_until(node.drain_end()).await;
        } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Serves `GET /metrics` on its own listener until `shutdown`.
pub(crate) async fn metrics_loop(listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| {
                let response = match (req.method(), req.uri().path()) {
                    (&Method::GET, "/metrics") => metrics_page(),
                    _ => text(StatusCode::NOT_FOUND, "not found\n"),
                };
                std::future::ready(Ok::<_, Infallible>(response))
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn metrics_page() -> Response<Body> {
    match crate::metrics::render() {
        Some(body) => {
            let mut resp = text(StatusCode::OK, &body);
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(chorus_runtime::metrics::CONTENT_TYPE),
            );
            resp
        }
        None => text(StatusCode::NOT_FOUND, "metrics are not enabled\n"),
    }
}

fn route(req: Request<Incoming>, node: &Arc<Node>, tracker: &TaskTracker) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(req, node, tracker, Protocol::Chorus),
        (&Method::GET, path) if path.starts_with("/app/") => {
            upgrade(req, node, tracker, Protocol::Pusher)
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if node.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if node.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n")
            } else {
                let why = node.link.not_ready();
                let why = why.as_deref().unwrap_or("bus link down");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                )
            }
        }
        (&Method::GET, "/sdk/index.js") => sdk_file(SDK_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/sdk/index.d.ts") => {
            sdk_file(SDK_TYPES, "application/typescript; charset=utf-8")
        }
        (&Method::GET, "/") if node.config.demo_page => {
            let mut resp = Response::new(Body::from(DEMO_PAGE));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A file of the JavaScript client. Any origin may load it (`Access-Control-Allow-Origin: *`):
/// module scripts are fetched with CORS, and a page served from elsewhere (or a file opened
/// from disk) imports the client from the gateway it talks to. It is public code, so sharing
/// it exposes nothing. `no-cache` makes browsers revalidate, so a gateway upgrade brings the
/// matching client.
fn sdk_file(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp
}

/// Which protocol an upgrade asks for.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// Chorus's own, at `/ws`.
    Chorus,
    /// Pusher's, at `/app/{key}` (`crate::pusher`).
    Pusher,
}

/// The session an upgraded connection runs.
enum Start {
    Chorus(Format),
    Pusher(crate::pusher::Start),
}

fn upgrade(
    mut req: Request<Incoming>,
    node: &Arc<Node>,
    tracker: &TaskTracker,
    protocol: Protocol,
) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "expected a WebSocket upgrade\n",
        );
    }
    if node.shutdown.is_cancelled() {
        crate::metrics::upgrade_refused("draining");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: connect to another gateway\n",
        );
    }
    let origin = req
        .headers()
        .get(hyper::header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if !limits::origin_allowed(&node.security.allowed_origins, origin) {
        tracing::info!(origin = ?origin, "upgrade refused: origin not allowed");
        crate::metrics::upgrade_refused("origin");
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let Some(slot) = node.security.slots.connection() else {
        tracing::warn!(
            max = node.config.max_connections,
            "upgrade refused: connection limit reached"
        );
        crate::metrics::upgrade_refused("connection_limit");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached\n",
        );
    };
    let (start, subprotocol) = match protocol {
        Protocol::Chorus => match negotiate(&req) {
            Ok((format, subprotocol)) => (Start::Chorus(format), subprotocol),
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        },
        Protocol::Pusher => (
            Start::Pusher(crate::pusher::Start::of(
                node,
                req.uri().path(),
                req.uri().query(),
            )),
            None,
        ),
    };
    let deflate = if node.config.permessage_deflate {
        let offers = req.headers().get_all(SEC_WEBSOCKET_EXTENSIONS);
        crate::deflate::negotiate(offers.iter().filter_map(|v| v.to_str().ok()))
    } else {
        None
    };
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("bad WebSocket upgrade: {e}\n"),
            );
        }
    };
    crate::metrics::connection_accepted();
    let node = node.clone();
    let (deflate, extension) = deflate.unzip();
    tracker.spawn(async move {
        let _slot = slot;
        match fut.await {
            // The session frames by hand on the bare TCP socket (see `frame_reader` and
            // `writer`); hyper hands it back with any bytes it read past the request.
            Ok(ws) => match ws
                .into_inner()
                .into_inner()
                .downcast::<TokioIo<TcpStream>>()
            {
                Ok(parts) => {
                    let (socket, already) = (parts.io.into_inner(), parts.read_buf);
                    match start {
                        Start::Chorus(format) => {
                            session::run(node, socket, already, format, deflate).await;
                        }
                        Start::Pusher(start) => {
                            crate::pusher::run(node, socket, already, start, deflate).await;
                        }
                    }
                }
                Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
            },
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let (mut parts, _) = response.into_parts();
    if let Some(p) = subprotocol {
        parts
            .headers
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    if let Some(value) = extension.and_then(|e| HeaderValue::from_str(&e).ok()) {
        parts.headers.insert(SEC_WEBSOCKET_EXTENSIONS, value);
    }
    Response::from_parts(parts, Body::default())
}

/// The connection's wire format: `?format=`, else the first Chorus subprotocol the client
/// offers, else JSON; the two must not disagree. Returns the subprotocol to confirm, if the client offered one.
fn negotiate<B>(req: &Request<B>) -> Result<(Format, Option<&'static str>), String> {
    let offered: Vec<&str> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let subprotocol = offered.iter().find_map(|p| {
        [PROTOBUF_SUBPROTOCOL, JSON_SUBPROTOCOL]
            .into_iter()
            .find(|s| s == p)
    });
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("format="));
    let format = match query {
        Some("json") => Format::Json,
        Some("protobuf") => Format::Protobuf,
        Some(other) => return Err(format!("unknown format {other:?}: use json or protobuf\n")),
        None if subprotocol == Some(PROTOBUF_SUBPROTOCOL) => Format::Protobuf,
        None => Format::Json,
    };
    // A client that offers only the other format's subprotocol would see its handshake
    // fail in the browser; say why instead.
    if let Some(p) = subprotocol
        && (p == PROTOBUF_SUBPROTOCOL) != (format == Format::Protobuf)
    {
        return Err(format!("?format= and the {p} subprotocol disagree\n"));
    }
    Ok((format, subprotocol))
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, protocols: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(p) = protocols {
            b = b.header(SEC_WEBSOCKET_PROTOCOL, p);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn format_comes_from_query_then_subprotocol_then_defaults_to_json() {
        assert_eq!(negotiate(&req("/ws", None)), Ok((Format::Json, None)));
        assert_eq!(
            negotiate(&req("/ws?format=protobuf", None)),
            Ok((Format::Protobuf, None))
        );
        assert_eq!(
            negotiate(&req("/ws", Some("other, chorus-protobuf"))),
            Ok((Format::Protobuf, Some(PROTOBUF_SUBPROTOCOL)))
        );
        assert_eq!(
            negotiate(&req("/ws", Some("chorus-json"))),
            Ok((Format::Json, Some(JSON_SUBPROTOCOL)))
        );
        assert!(negotiate(&req("/ws?format=json", Some("chorus-protobuf"))).is_err());
        assert!(negotiate(&req("/ws?format=xml", None)).is_err());
    }
}
