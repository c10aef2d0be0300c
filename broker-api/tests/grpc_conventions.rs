//! The gRPC conventions tools rely on, over real sockets: `grpc.health.v1.Health` follows the
//! bus like `/readyz` (a real redis-server stopped and started), and server reflection lists
//! and describes the services for whoever holds an API key.

mod common;

use std::time::Duration;

use chorus_bus::{Bus, BusConfig};
use chorus_testkit::{RedisServer, eventually};
use common::{KEY, TestServer, authed, config};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const WITHIN: Duration = Duration::from_secs(10);

async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(server.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn status(health: &mut HealthClient<Channel>, service: &str) -> Option<ServingStatus> {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let response = health.check(request).await.ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

async fn serving_becomes(health: &HealthClient<Channel>, want: ServingStatus) {
    eventually(WITHIN, &format!("health {want:?}"), || {
        let mut health = health.clone();
        async move {
            status(&mut health, "").await == Some(want)
                && status(&mut health, "chorus.api.v1.ChorusApi").await == Some(want)
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_only_while_the_bus_can_publish_and_needs_no_key() {
    let mut redis = RedisServer::start().unwrap();
    let bus_config = BusConfig {
        redis_url: redis.url(),
        redis_timeout: Duration::from_millis(500),
        ..BusConfig::default()
    };
    let server = TestServer::start(
        Bus::redis(&bus_config).unwrap(),
        config().with_bus_timeout(&bus_config),
    )
    .await;
    let health = HealthClient::new(channel(&server).await);
    serving_becomes(&health, ServingStatus::Serving).await;

    tokio::task::block_in_place(|| redis.stop());
    serving_becomes(&health, ServingStatus::NotServing).await;
    tokio::task::block_in_place(|| redis.restart()).unwrap();
    serving_becomes(&health, ServingStatus::Serving).await;

    let unknown = HealthClient::new(channel(&server).await)
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// One reflection request on a fresh stream, with or without the API key.
async fn reflect(
    server: &TestServer,
    key: Option<&str>,
    request: MessageRequest,
) -> Result<MessageResponse, tonic::Status> {
    let mut client = ServerReflectionClient::new(channel(server).await);
    let outbound = futures::stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let call = match key {
        Some(key) => authed(outbound, key),
        None => tonic::Request::new(outbound),
    };
    let mut inbound = client.server_reflection_info(call).await?.into_inner();
    let response = inbound
        .next()
        .await
        .expect("one response")?
        .message_response
        .expect("a message");
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_services_for_a_key_holder() {
    let server = TestServer::start(Bus::memory(), config()).await;
    let listed = reflect(
        &server,
        Some(KEY),
        MessageRequest::ListServices(String::new()),
    )
    .await
    .unwrap();
    let MessageResponse::ListServicesResponse(list) = listed else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in ["chorus.api.v1.ChorusApi", "grpc.health.v1.Health"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }

    let described = reflect(
        &server,
        Some(KEY),
        MessageRequest::FileContainingSymbol("chorus.api.v1.ChorusApi".into()),
    )
    .await
    .unwrap();
    let MessageResponse::FileDescriptorResponse(files) = described else {
        panic!("expected file descriptors, got {described:?}");
    };
    assert!(
        files
            .file_descriptor_proto
            .iter()
            .any(|f| f.windows(b"Publish".len()).any(|w| w == b"Publish")),
        "the descriptor describes the API's methods"
    );

    let refused = reflect(&server, None, MessageRequest::ListServices(String::new()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}
