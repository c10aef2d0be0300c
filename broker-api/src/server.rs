//! Puts the pieces on one port: the JSON routes, the probes and the gRPC service in one axum
//! router, served over HTTP/1.1 and HTTP/2 (h2c) by the same listener, with graceful shutdown.

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use chorus_bus::Bus;
use chorus_protocol::api::chorus_api_server::ChorusApiServer;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tracing::{debug, info, warn};

use crate::auth::{ApiKeys, GrpcAuth, require_api_key};
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::grpc::GrpcApi;
use crate::http;
use crate::service::Broker;

/// How long shutdown waits, beyond the request timeout, for open connections to finish
/// before giving up on them.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive: a silent h2c peer is pinged this often and dropped when it does not
/// answer within the same time.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);

/// The whole API as one router: `/api/...` (API key, body limit), `/healthz`, `/readyz`, the
/// admin page at `/admin` (static; its calls carry the key),
/// and under their gRPC paths the `ChorusApi` service (API key, decoding limit), the standard
/// `grpc.health.v1.Health` (no key, like `/readyz`: SERVING only while the bus can publish,
/// kept by a task that ends with `shutdown`) and server reflection (API key).
///
/// Fails with [`BrokerError::NoApiKey`] when no usable key is configured.
pub fn router(
    bus: Bus,
    config: &BrokerConfig,
    shutdown: &CancellationToken,
) -> Result<Router, BrokerError> {
    crate::metrics::init();
    let keys = ApiKeys::new(config.usable_keys());
    if keys.is_empty() {
        return Err(BrokerError::NoApiKey);
    }
    let broker = Broker::new(bus, config);

    let api = http::api_routes()
        .route_layer(middleware::from_fn_with_state(
            keys.clone(),
            require_api_key,
        ))
        .layer(DefaultBodyLimit::max(config.max_body));
    let json = api
        .merge(http::probe_routes())
        .merge(crate::admin::routes())
        // Authenticated by the Pusher signature, not the API key.
        .merge(crate::pusher::routes().layer(DefaultBodyLimit::max(config.max_body)))
        .method_not_allowed_fallback(http::method_not_allowed)
        .with_state(broker.clone());

    let health = crate::health::serve(broker.clone(), shutdown.clone());
    let grpc_service = InterceptedService::new(
        ChorusApiServer::new(GrpcApi::new(broker)).max_decoding_message_size(config.max_body),
        GrpcAuth(keys.clone()),
    );
    let (reflection_v1, reflection_v1alpha) = crate::health::reflection()?;
    let grpc = Routes::new(grpc_service)
        .add_service(health)
        .add_service(InterceptedService::new(
            reflection_v1,
            GrpcAuth(keys.clone()),
        ))
        .add_service(InterceptedService::new(reflection_v1alpha, GrpcAuth(keys)))
        .into_axum_router();

    // tonic's router brings a gRPC "unimplemented" fallback; the last fallback set wins, and
    // ours answers gRPC callers in gRPC and everyone else in JSON.
    Ok(json
        .merge(grpc)
        .fallback(http::not_found)
        .layer(middleware::from_fn(crate::error::count_errors)))
}

/// Serves the API on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// in-flight requests finish (for at most the request timeout plus a few seconds) and returns.
///
/// Refuses to start without an API key ([`BrokerError::NoApiKey`]).
pub async fn serve(
    listener: TcpListener,
    bus: Bus,
    config: BrokerConfig,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let app = router(bus.clone(), &config, &shutdown)?;
    crate::webhooks::spawn(bus, shutdown.clone());
    let addr = listener.local_addr()?;
    if config.max_data.saturating_mul(4) / 3 > config.max_body {
        warn!(
            max_data = config.max_data,
            max_body = config.max_body,
            "--api-max-data is above what fits in --api-max-body as base64"
        );
    }
    info!(
        %addr,
        request_timeout = ?config.effective_request_timeout(),
        "broker-api listening: HTTP/JSON under /api/, gRPC chorus.api.v1.ChorusApi with health and reflection, same port"
    );

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(HTTP2_KEEPALIVE))
        .keep_alive_timeout(HTTP2_KEEPALIVE);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let header_timeout = config.header_timeout;
        tokio::spawn(async move {
            // A client that sends nothing at all is dropped after the header timeout too
            // (hyper's own timeout starts once it knows the HTTP version).
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, tcp.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => {
                    debug!("dropped a connection that sent nothing within the header timeout");
                    return;
                }
            }
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    info!(%addr, "broker-api shutting down: finishing in-flight requests");
    let drain = config.effective_request_timeout() + DRAIN_MARGIN;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            ?drain,
            "broker-api: connections still open after the drain time; closing"
        );
    }
    info!(%addr, "broker-api stopped");
    Ok(())
}
