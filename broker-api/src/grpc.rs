//! The gRPC face of the API (`chorus.api.v1.ChorusApi`): translates protobuf messages to
//! service calls and back, so gRPC behaves exactly like the HTTP/JSON routes.

use chorus_protocol::api::{self, broadcast_result::Outcome, chorus_api_server::ChorusApi};
use tonic::{Request, Response, Status};

use crate::service::Broker;

/// The `ChorusApi` implementation over the service layer.
pub struct GrpcApi {
    broker: Broker,
}

impl GrpcApi {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl ChorusApi for GrpcApi {
    async fn publish(
        &self,
        request: Request<api::PublishRequest>,
    ) -> Result<Response<api::PublishResponse>, Status> {
        let req = request.into_inner();
        let published = self.broker.publish(req.channel, req.data).await?;
        Ok(Response::new(api::PublishResponse {
            offset: published.offset,
            epoch: published.epoch,
            duplicate: false,
        }))
    }

    async fn broadcast(
        &self,
        request: Request<api::BroadcastRequest>,
    ) -> Result<Response<api::BroadcastResponse>, Status> {
        let req = request.into_inner();
        let outcomes = self.broker.broadcast(req.channels, req.data).await?;
        let results = outcomes
            .into_iter()
            .map(|o| api::BroadcastResult {
                channel: o.channel,
                outcome: Some(match o.result {
                    Ok(p) => Outcome::Published(api::PublishResponse {
                        offset: p.offset,
                        epoch: p.epoch,
                        duplicate: false,
                    }),
                    Err(e) => Outcome::Error(e.to_proto()),
                }),
            })
            .collect();
        Ok(Response::new(api::BroadcastResponse { results }))
    }

    async fn nodes(
        &self,
        _request: Request<api::NodesRequest>,
    ) -> Result<Response<api::NodesResponse>, Status> {
        let nodes = self
            .broker
            .nodes()
            .await?
            .into_iter()
            .map(|n| api::Node {
                id: n.id,
                address: n.address,
                connections: n.connections,
                started_at_ms: n.started_at_ms,
            })
            .collect();
        Ok(Response::new(api::NodesResponse { nodes }))
    }

    async fn history(
        &self,
        _request: Request<api::HistoryRequest>,
    ) -> Result<Response<api::HistoryResponse>, Status> {
        Err(Status::unimplemented("history is not available yet"))
    }
}
