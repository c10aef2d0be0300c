//! The gRPC face of the API (`chorus.api.v1.ChorusApi`): translates protobuf messages to
//! service calls and back, so gRPC behaves exactly like the HTTP/JSON routes.

use std::pin::Pin;

use chorus_bus::control::ControlReplies;
use chorus_bus::{Position, Published};
use chorus_protocol::api::{self, broadcast_result::Outcome, chorus_api_server::ChorusApi};
use futures::{FutureExt as _, Stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ApiError;
use crate::service::{Admission, Broker, PublishItem, disconnect_op, subscribe_op};

/// Most publications of one stream sent to Redis as one pipeline.
const STREAM_BATCH: usize = 256;

fn item(req: api::PublishRequest) -> PublishItem {
    PublishItem {
        channel: req.channel,
        data: req.data,
        idempotency_key: Some(req.idempotency_key).filter(|k| !k.is_empty()),
        exclude_client: String::new(),
    }
}

fn stream_result(r: Result<Published, ApiError>) -> api::PublishStreamResult {
    use api::publish_stream_result::Outcome;
    api::PublishStreamResult {
        outcome: Some(match r {
            Ok(p) => Outcome::Published(api::PublishResponse {
                offset: p.offset,
                epoch: p.epoch,
                duplicate: p.duplicate,
            }),
            Err(e) => {
                crate::metrics::error(e.code);
                Outcome::Error(e.to_proto())
            }
        }),
    }
}

/// Reads a publish stream: whatever arrived while the previous pipeline was at Redis goes as
/// the next pipeline (at most [`STREAM_BATCH`]); one pipeline in flight per stream, so a
/// stream's publications keep their order. While a pipeline is out the stream is not read,
/// and HTTP/2 flow control pushes back on the producer.
async fn run_stream(
    broker: Broker,
    mut input: Streaming<api::PublishRequest>,
    tx: mpsc::Sender<Result<api::PublishStreamResult, Status>>,
) {
    let mut batch = Vec::with_capacity(STREAM_BATCH);
    loop {
        let first = tokio::select! {
            first = input.message() => first,
            () = tx.closed() => return,
        };
        let mut ended = match first {
            Ok(Some(req)) => {
                batch.push(item(req));
                false
            }
            Ok(None) => return,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        // `message` is cancel-safe: taking what is already there loses nothing.
        while batch.len() < STREAM_BATCH {
            match input.message().now_or_never() {
                Some(Ok(Some(req))) => batch.push(item(req)),
                Some(Ok(None)) => {
                    ended = true;
                    break;
                }
                Some(Err(status)) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                None => break,
            }
        }
        let n = batch.len();
        match broker
            .publish_batch(std::mem::take(&mut batch), Admission::Wait)
            .await
        {
            Ok(results) => {
                for r in results {
                    if tx.send(Ok(stream_result(r))).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                for _ in 0..n {
                    if tx.send(Ok(stream_result(Err(e.clone())))).await.is_err() {
                        return;
                    }
                }
            }
        }
        if ended {
            return;
        }
    }
}

/// The `ChorusApi` implementation over the service layer.
pub struct GrpcApi {
    broker: Broker,
}

impl GrpcApi {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<api::PublishStreamResult, Status>> + Send>>;

#[tonic::async_trait]
impl ChorusApi for GrpcApi {
    type PublishStreamStream = ResultStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<api::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BATCH * 2);
        tokio::spawn(run_stream(self.broker.clone(), request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn publish_batch(
        &self,
        request: Request<api::PublishBatchRequest>,
    ) -> Result<Response<api::PublishBatchResponse>, Status> {
        let items = request
            .into_inner()
            .publications
            .into_iter()
            .map(item)
            .collect();
        let results = self.broker.publish_batch(items, Admission::Bounded).await?;
        Ok(Response::new(api::PublishBatchResponse {
            results: results.into_iter().map(stream_result).collect(),
        }))
    }
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

    async fn presence(
        &self,
        request: Request<api::PresenceRequest>,
    ) -> Result<Response<api::PresenceResponse>, Status> {
        let members = self.broker.presence(&request.into_inner().channel).await?;
        let clients = members
            .into_iter()
            .map(|m| api::PresenceClient {
                client: m.client,
                user: m.user,
                info: m.info,
            })
            .collect();
        Ok(Response::new(api::PresenceResponse { clients }))
    }

    async fn presence_stats(
        &self,
        request: Request<api::PresenceStatsRequest>,
    ) -> Result<Response<api::PresenceStatsResponse>, Status> {
        let stats = self
            .broker
            .presence_stats(&request.into_inner().channel)
            .await?;
        Ok(Response::new(api::PresenceStatsResponse {
            num_clients: stats.clients,
            num_users: stats.users,
        }))
    }

    async fn disconnect(
        &self,
        request: Request<api::DisconnectRequest>,
    ) -> Result<Response<api::UserCommandResponse>, Status> {
        let r = request.into_inner();
        let op = disconnect_op(r.user, r.client, r.code, r.reason, r.reconnect)?;
        Ok(Response::new(user_command_response(
            self.broker.user_command(op).await?,
        )))
    }

    async fn subscribe(
        &self,
        request: Request<api::UserSubscribeRequest>,
    ) -> Result<Response<api::UserCommandResponse>, Status> {
        let r = request.into_inner();
        let op = subscribe_op(r.user, r.client, r.channel, false);
        Ok(Response::new(user_command_response(
            self.broker.user_command(op).await?,
        )))
    }

    async fn unsubscribe(
        &self,
        request: Request<api::UserSubscribeRequest>,
    ) -> Result<Response<api::UserCommandResponse>, Status> {
        let r = request.into_inner();
        let op = subscribe_op(r.user, r.client, r.channel, true);
        Ok(Response::new(user_command_response(
            self.broker.user_command(op).await?,
        )))
    }

    async fn channels(
        &self,
        request: Request<api::ChannelsRequest>,
    ) -> Result<Response<api::ChannelsResponse>, Status> {
        let r = request.into_inner();
        let (channels, truncated) = self.broker.channels(&r.pattern, r.limit as usize).await?;
        Ok(Response::new(api::ChannelsResponse {
            channels: channels
                .into_iter()
                .map(|(channel, subscribers)| api::ChannelInfo {
                    channel,
                    subscribers,
                })
                .collect(),
            truncated,
        }))
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
            more: history.more,
        }))
    }
}

fn user_command_response(replies: ControlReplies) -> api::UserCommandResponse {
    api::UserCommandResponse {
        connections: replies.connections(),
        nodes: u32::try_from(replies.reached).unwrap_or(u32::MAX),
        answered: u32::try_from(replies.replies.len()).unwrap_or(u32::MAX),
    }
}
