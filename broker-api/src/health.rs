//! The gRPC conventions tools expect of a service: `grpc.health.v1.Health` (what a Kubernetes
//! `grpc:` probe and load balancers ask) and server reflection (what `grpcurl list` and
//! `describe` read instead of a `.proto` file).
//!
//! Health says what `/readyz` says: SERVING while the bus can publish, NOT_SERVING otherwise,
//! for the whole server (`""`) and for `chorus.api.v1.ChorusApi`. A probe must not cost a
//! Redis round trip each, so a task checks the bus every [`CHECK_EVERY`] and the health
//! service answers from what it last saw. It needs no API key, like `/readyz`; reflection does
//! (it describes the API to whoever asks).

use std::time::Duration;

use chorus_protocol::api::chorus_api_server::ChorusApiServer;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_reflection::server::{v1, v1alpha};

use crate::error::BrokerError;
use crate::grpc::GrpcApi;
use crate::service::Broker;

/// How often the health status is brought up to date with the bus.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The health service, kept up to date by a task until `shutdown`, when it turns NOT_SERVING.
pub(crate) fn serve(broker: Broker, shutdown: CancellationToken) -> HealthServer<impl Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let status = if shutdown.is_cancelled() {
                ServingStatus::NotServing
            } else if broker.ready().await.is_ok() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if last != Some(status) {
                tracing::info!(?status, "gRPC health");
                for service in ["", <ChorusApiServer<GrpcApi> as NamedService>::NAME] {
                    reporter.set_service_status(service, status).await;
                }
                last = Some(status);
            }
            if shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
    });
    service
}

/// Server reflection over every Chorus service and the health service, in both protocol
/// versions tools use (`v1`, and `v1alpha` for older ones).
pub(crate) fn reflection() -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    BrokerError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chorus_protocol::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let bad = |e: tonic_reflection::server::Error| BrokerError::Reflection(e.to_string());
    Ok((
        builder().build_v1().map_err(bad)?,
        builder().build_v1alpha().map_err(bad)?,
    ))
}
