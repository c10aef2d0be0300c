//! The gRPC face of the API (`chorus.api.v1.ChorusApi`): translates protobuf messages to
//! service calls and back, so gRPC behaves exactly like the HTTP/JSON routes.

use chorus_bus::Position;
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
        let key = Some(req.idempotency_key).filter(|k| !k.is_empty());
        let published = self.broker.publish(req.channel, req.data, key).await?;
        Ok(Response::new(api::PublishResponse {
            offset: published.offset,
            epoch: published.epoch,
            duplicate: published.duplicate,
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
        request: Request<api::HistoryRequest>,
    ) -> Result<Response<api::HistoryResponse>, Status> {
        let req = request.into_inner();
        let since = (req.since_offset > 0 || !req.since_epoch.is_empty()).then_some(Position {
            offset: req.since_offset,
            epoch: req.since_epoch,
        });
        let history = self
            .broker
            .history(&req.channel, since, req.limit as usize, req.reverse)
            .await?;
        Ok(Response::new(api::HistoryResponse {
            publications: history
                .publications
                .into_iter()
                .map(|p| api::HistoryPublication {
                    offset: p.offset,
                    data: p.data,
                    published_at_ms: p.published_at_ms,
                })
                .collect(),
            offset: history.position.offset,
            epoch: history.position.epoch,
        }))
    }
}
