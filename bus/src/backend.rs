//! The one signature both bus implementations answer to. The facade ([`crate::Bus`]) checks
//! channel names and idempotency keys and picks each channel's namespace rules; a backend only
//! stores, numbers and delivers. Redis answers over the network, the in-memory bus at once,
//! but both answer here in the same shape, so the facade calls each operation one way.

use std::future::Future;

use crate::control::{ControlOp, ControlReplies};
use crate::memory::MemoryBus;
use crate::namespaces::{NamespaceRules, Namespaces};
use crate::redis::RedisBus;
use crate::{BusError, History, HistoryQuery, Member, NodeInfo, Position, Publish, Published};

pub(crate) trait Backend: Send + Sync {
    /// Publishes one checked message under its channel's rules.
    fn publish(
        &self,
        msg: Publish,
        rules: &NamespaceRules,
    ) -> impl Future<Output = Result<Published, BusError>> + Send;

    /// Publishes every `Ok` message (in order per channel); an `Err` keeps its place and its
    /// error. One result per message.
    fn publish_many(
        &self,
        msgs: Vec<Result<Publish, BusError>>,
        namespaces: &Namespaces,
    ) -> impl Future<Output = Vec<Result<Published, BusError>>> + Send;

    /// A channel's current position (offset 0 and no epoch for one never published).
    fn position(&self, channel: &str) -> impl Future<Output = Result<Position, BusError>> + Send;

    /// Part of a channel's history with its position, read in one step, within the query's
    /// byte bound.
    fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> impl Future<Output = Result<History, BusError>> + Send;

    /// The live gateway nodes.
    fn nodes(&self) -> impl Future<Output = Result<Vec<NodeInfo>, BusError>> + Send;

    /// Sends a command to every gateway and collects the answers.
    fn control(
        &self,
        op: &ControlOp,
    ) -> impl Future<Output = Result<ControlReplies, BusError>> + Send;

    /// A channel's presence entries on live nodes.
    fn presence(&self, channel: &str)
    -> impl Future<Output = Result<Vec<Member>, BusError>> + Send;

    /// Whether publishing works now.
    fn check(&self) -> impl Future<Output = Result<(), BusError>> + Send;
}

impl Backend for RedisBus {
    async fn publish(&self, msg: Publish, rules: &NamespaceRules) -> Result<Published, BusError> {
        RedisBus::publish(self, msg, rules).await
    }

    async fn publish_many(
        &self,
        msgs: Vec<Result<Publish, BusError>>,
        namespaces: &Namespaces,
    ) -> Vec<Result<Published, BusError>> {
        RedisBus::publish_many(self, msgs, namespaces).await
    }

    async fn position(&self, channel: &str) -> Result<Position, BusError> {
        RedisBus::position(self, channel).await
    }

    async fn history(&self, channel: &str, query: &HistoryQuery) -> Result<History, BusError> {
        RedisBus::history(self, channel, query).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BusError> {
        RedisBus::nodes(self).await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<Member>, BusError> {
        RedisBus::presence(self, channel).await
    }

    async fn control(&self, op: &ControlOp) -> Result<ControlReplies, BusError> {
        RedisBus::control(self, op).await
    }

    async fn check(&self) -> Result<(), BusError> {
        RedisBus::check(self).await
    }
}

impl Backend for MemoryBus {
    async fn publish(&self, msg: Publish, rules: &NamespaceRules) -> Result<Published, BusError> {
        MemoryBus::publish(self, msg, rules)
    }

    async fn publish_many(
        &self,
        msgs: Vec<Result<Publish, BusError>>,
        namespaces: &Namespaces,
    ) -> Vec<Result<Published, BusError>> {
        msgs.into_iter()
            .map(|msg| {
                let msg = msg?;
                let rules = namespaces.rules(&msg.channel);
                MemoryBus::publish(self, msg, rules)
            })
            .collect()
    }

    async fn position(&self, channel: &str) -> Result<Position, BusError> {
        Ok(MemoryBus::position(self, channel))
    }

    async fn history(&self, channel: &str, query: &HistoryQuery) -> Result<History, BusError> {
        Ok(MemoryBus::history(self, channel, query))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BusError> {
        Ok(MemoryBus::nodes(self))
    }

    async fn presence(&self, channel: &str) -> Result<Vec<Member>, BusError> {
        Ok(MemoryBus::presence(self, channel))
    }

    async fn control(&self, op: &ControlOp) -> Result<ControlReplies, BusError> {
        Ok(MemoryBus::control(self, op))
    }

    async fn check(&self) -> Result<(), BusError> {
        Ok(())
    }
}
