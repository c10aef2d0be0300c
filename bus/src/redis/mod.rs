//! The Redis bus: publishing through one Lua script per channel, one RESP3 pub/sub
//! connection per gateway node, and the node registry under short leases.

use std::sync::Arc;

use bytes::Bytes;

use crate::wanted::Wanted;
use crate::{
    BusConfig, BusError, BusSink, ChannelReady, ConnectionInfo, NodeInfo, Position, Publish,
    Published,
};

pub struct RedisBus {}

impl RedisBus {
    pub(crate) fn new(_config: &BusConfig) -> Result<Self, BusError> {
        todo!()
    }

    pub(crate) async fn publish(&self, _msg: Publish) -> Result<Published, BusError> {
        todo!()
    }

    pub(crate) async fn broadcast(
        &self,
        _channels: &[String],
        _data: Bytes,
    ) -> Vec<Result<Published, BusError>> {
        todo!()
    }

    pub(crate) async fn position(&self, _channel: &str) -> Result<Position, BusError> {
        todo!()
    }

    pub(crate) async fn nodes(&self) -> Result<Vec<NodeInfo>, BusError> {
        todo!()
    }

    pub(crate) async fn check(&self) -> Result<(), BusError> {
        todo!()
    }

    pub(crate) fn attach(self: &Arc<Self>, _node: NodeInfo, _sink: Arc<dyn BusSink>) -> RedisLink {
        todo!()
    }
}

pub struct RedisLink {
    wanted: Arc<Wanted>,
}

impl RedisLink {
    pub(crate) fn want(&self, channel: &str) -> ChannelReady {
        self.wanted.want(channel, false)
    }

    pub(crate) fn unwant(&self, channel: &str) {
        self.wanted.unwant(channel)
    }

    pub(crate) fn is_ready(&self) -> bool {
        todo!()
    }

    pub(crate) fn connection_opened(&self, _conn: ConnectionInfo) {
        todo!()
    }

    pub(crate) fn connection_closed(&self, _client: &str) {
        todo!()
    }

    pub(crate) async fn detach(&self) {
        todo!()
    }
}
