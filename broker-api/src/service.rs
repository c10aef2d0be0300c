//! The service layer: every API operation once, whatever the protocol. The HTTP handlers and
//! the gRPC service only translate to and from their wire forms and call in here, so limits,
//! validation, timeouts and error mapping cannot drift apart between the two.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_bus::control::{
    ControlOp, ControlReplies, MAX_CHANNELS_LIMIT, MAX_COUNTED_CHANNELS, MAX_REASON_LEN,
    MAX_USER_LEN,
};
use chorus_bus::{
    Bus, BusError, DEFAULT_HISTORY_PAGE_BYTES, History, HistoryQuery, Member, NodeInfo, Position,
    PresenceStats, Publish, Published,
};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::config::BrokerConfig;
use crate::error::{ApiError, ErrorCode};

/// The outcome of a broadcast for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOutcome {
    pub channel: String,
    pub result: Result<Published, ApiError>,
}

/// The API operations over the bus. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    max_data: usize,
    max_broadcast: usize,
    request_timeout: Duration,
    /// One permit per publication in flight to the bus (`--api-max-inflight`).
    inflight: Arc<Semaphore>,
    max_inflight: usize,
    queue_wait: Duration,
}

/// One publication of a batch or a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishItem {
    pub channel: String,
    pub data: Bytes,
    pub idempotency_key: Option<String>,
    /// A connection not to deliver it to (a Pusher `socket_id`); empty for none.
    pub exclude_client: String,
}

/// How a publish waits for room under `--api-max-inflight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Waits up to `--api-queue-wait`, then fails as overloaded (requests).
    Bounded,
    /// Waits as long as it takes (streams: the producer is pushed back by flow control).
    Wait,
}

impl Broker {
    pub fn new(bus: Bus, config: &BrokerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                bus,
                max_data: config.max_data,
                max_broadcast: config.max_broadcast,
                request_timeout: config.effective_request_timeout(),
                inflight: Arc::new(Semaphore::new(config.max_inflight.max(1))),
                max_inflight: config.max_inflight.max(1),
                queue_wait: config.queue_wait,
            }),
        }
    }

    /// The largest data a publish may carry, in bytes.
    /// The bus this broker publishes on.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    pub fn max_data(&self) -> usize {
        self.inner.max_data
    }

    /// Publishes `data` on `channel`; answers once the bus assigned the offset. With an
    /// idempotency key, a retry within the window answers the first offset and publishes
    /// nothing.
    #[tracing::instrument(name = "broker_api.publish", skip_all, fields(channel = %channel))]
    pub async fn publish(
        &self,
        channel: String,
        data: Bytes,
        idempotency_key: Option<String>,
    ) -> Result<Published, ApiError> {
        self.check_data_size(data.len())?;
        let publish = Publish {
            channel,
            data,
            exclude_client: String::new(),
            idempotency_key: idempotency_key.filter(|k| !k.is_empty()),
        };
        let _permit = self.admit(1, Admission::Bounded).await?;
        let started = Instant::now();
        let published = self.within_deadline(self.inner.bus.publish(publish)).await;
        let ok = matches!(published, Ok(Ok(_)));
        crate::metrics::published("publish", started, usize::from(ok));
        published?.map_err(|e| logged(e.into()))
    }

    /// Publishes many publications in one pipeline to the bus: one result per item, in order
    /// (a bad item fails only its own result). The batch is admitted whole under
    /// `--api-max-inflight`; publications to one channel keep their order.
    pub async fn publish_batch(
        &self,
        items: Vec<PublishItem>,
        admission: Admission,
    ) -> Result<Vec<Result<Published, ApiError>>, ApiError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let limit = self.inner.max_broadcast.min(self.inner.max_inflight);
        if items.len() > limit {
            return Err(ApiError::too_large(format!(
                "the batch has {} publications, the limit is {limit}",
                items.len()
            )));
        }
        let mut results: Vec<Option<Result<Published, ApiError>>> = Vec::with_capacity(items.len());
        let mut msgs = Vec::with_capacity(items.len());
        for item in items {
            match self.check_data_size(item.data.len()) {
                Ok(()) => {
                    msgs.push(Publish {
                        channel: item.channel,
                        data: item.data,
                        exclude_client: item.exclude_client,
                        idempotency_key: item.idempotency_key.filter(|k| !k.is_empty()),
                    });
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !msgs.is_empty() {
            let _permit = self.admit(msgs.len(), admission).await?;
            let started = Instant::now();
            let published = self
                .within_deadline(self.inner.bus.publish_many(msgs))
                .await?;
            let ok = published.iter().filter(|r| r.is_ok()).count();
            crate::metrics::published("batch", started, ok);
            let mut published = published.into_iter();
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                *slot = Some(
                    published
                        .next()
                        .unwrap_or_else(|| Err(BusError::Protocol("missing result".into())))
                        .map_err(|e| logged(e.into())),
                );
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ApiError::new(ErrorCode::Internal, "no result"))))
            .collect())
    }

    /// Room for `n` publications in flight, or `Overloaded` when a bounded wait ran out.
    async fn admit(
        &self,
        n: usize,
        admission: Admission,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        let n = u32::try_from(n.min(self.inner.max_inflight)).unwrap_or(u32::MAX);
        if let Ok(permit) = self.inner.inflight.try_acquire_many(n) {
            return Ok(permit);
        }
        let acquire = self.inner.inflight.acquire_many(n);
        let wait = match admission {
            Admission::Bounded => self.inner.queue_wait,
            Admission::Wait => self.inner.request_timeout,
        };
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "overloaded: {} publications in flight (--api-max-inflight); retry shortly",
                    self.inner.max_inflight
                ),
            )),
        }
    }

    /// Publishes `data` on every channel of `channels`: one outcome per channel, in request
    /// order. A bad channel name fails only its own entry (it never reaches the bus). When the
    /// bus failed every channel as unavailable, the whole request fails as unavailable, so a
    /// caller sees "Redis down" the same way for every operation.
    pub async fn broadcast(
        &self,
        channels: Vec<String>,
        data: Bytes,
    ) -> Result<Vec<ChannelOutcome>, ApiError> {
        if channels.is_empty() {
            return Err(ApiError::bad_request(
                "channels is empty: name at least one channel",
            ));
        }
        if channels.len() > self.inner.max_broadcast {
            return Err(ApiError::too_large(format!(
                "broadcast names {} channels, the limit is {}",
                channels.len(),
                self.inner.max_broadcast
            )));
        }
        self.check_data_size(data.len())?;

        // Bad names fail on their own and never reach the bus.
        let checked: Vec<(String, Option<ApiError>)> = channels
            .into_iter()
            .map(|channel| {
                let bad = chorus_protocol::channel::validate(&channel)
                    .err()
                    .map(|e| ApiError::from(BusError::from(e)));
                (channel, bad)
            })
            .collect();
        let valid: Vec<String> = checked
            .iter()
            .filter(|(_, bad)| bad.is_none())
            .map(|(channel, _)| channel.clone())
            .collect();
        let results = if valid.is_empty() {
            Vec::new()
        } else {
            let _permit = self.admit(valid.len(), Admission::Bounded).await?;
            let started = Instant::now();
            let results = self
                .within_deadline(self.inner.bus.broadcast(&valid, data))
                .await;
            let ok = results
                .as_ref()
                .map_or(0, |r| r.iter().filter(|r| r.is_ok()).count());
            crate::metrics::published("broadcast", started, ok);
            results?
        };
        if results.len() != valid.len() {
            return Err(logged(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "the bus answered {} results for {} channels",
                    results.len(),
                    valid.len()
                ),
            )));
        }
        let unavailable = results
            .iter()
            .find_map(|r| match r {
                Err(BusError::Unavailable(reason)) => Some(reason.clone()),
                _ => None,
            })
            .filter(|_| {
                results
                    .iter()
                    .all(|r| matches!(r, Err(BusError::Unavailable(_))))
            });
        if let Some(reason) = unavailable {
            return Err(logged(ApiError::from(BusError::Unavailable(reason))));
        }
        let mut results = results.into_iter();
        Ok(checked
            .into_iter()
            .map(|(channel, bad)| {
                let result = match bad {
                    Some(e) => Err(e),
                    // Same length as `valid`, checked above.
                    None => results
                        .next()
                        .unwrap_or_else(|| Err(BusError::Protocol("missing result".into())))
                        .map_err(ApiError::from),
                };
                ChannelOutcome { channel, result }
            })
            .collect())
    }

    /// A channel's history: the publications after `since` (which must be of the channel's
    /// current epoch), or the oldest (or, `reverse`, newest) kept; at most `limit`
    /// (0 or more than [`chorus_bus::MAX_HISTORY_PAGE`] mean the maximum).
    pub async fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: usize,
        reverse: bool,
    ) -> Result<History, ApiError> {
        let query = HistoryQuery::page(
            since.as_ref().map(|p| p.offset),
            limit,
            reverse,
            DEFAULT_HISTORY_PAGE_BYTES,
        );
        let history = self
            .within_deadline(self.inner.bus.history(channel, &query))
            .await?
            .map_err(|e| logged(e.into()))?;
        if let Some(since) = since
            && !since.same_epoch_as(&history.position)
        {
            return Err(ApiError::new(
                ErrorCode::PositionLost,
                format!(
                    "epoch {:?} is not the channel's current epoch {:?}: read again without since",
                    since.epoch, history.position.epoch
                ),
            ));
        }
        Ok(history)
    }

    /// Who is subscribed to a presence channel, across every gateway.
    pub async fn presence(&self, channel: &str) -> Result<Vec<Member>, ApiError> {
        let members = self
            .within_deadline(self.inner.bus.presence(channel))
            .await?;
        members.map_err(|e| logged(e.into()))
    }

    /// How many connections and distinct users are subscribed to a presence channel.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ApiError> {
        Ok(PresenceStats::of(&self.presence(channel).await?))
    }

    /// Applies a user-level command on every gateway. `not_connected` when none of the user's
    /// connections took it (every gateway answered and none had one).
    pub async fn user_command(&self, op: ControlOp) -> Result<ControlReplies, ApiError> {
        check_user_command(&op)?;
        let (user, client) = match &op {
            ControlOp::Disconnect { user, client, .. }
            | ControlOp::Subscribe { user, client, .. }
            | ControlOp::Unsubscribe { user, client, .. } => (user.clone(), client.clone()),
            ControlOp::Channels { .. } | ControlOp::Subscribers { .. } => (String::new(), None),
        };
        let replies = self
            .within_deadline(self.inner.bus.control(&op))
            .await?
            .map_err(|e| logged(e.into()))?;
        if replies.connections() == 0 && replies.replies.len() == replies.reached {
            let who = match client {
                Some(client) => format!("user {user:?} has no connection {client:?}"),
                None => format!("user {user:?} has no connection"),
            };
            return Err(ApiError::new(ErrorCode::NotConnected, who));
        }
        Ok(replies)
    }

    /// The channels with subscribers across the cluster, matching `pattern`, at most `limit`
    /// (0: [`DEFAULT_CHANNELS_LIMIT`]); and whether more matched.
    pub async fn channels(
        &self,
        pattern: &str,
        limit: usize,
    ) -> Result<(Vec<(String, u64)>, bool), ApiError> {
        let limit = match limit {
            0 => DEFAULT_CHANNELS_LIMIT,
            n if n > MAX_CHANNELS_LIMIT => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("limit is at most {MAX_CHANNELS_LIMIT}"),
                ));
            }
            n => n,
        };
        if pattern.len() > chorus_protocol::channel::MAX_CHANNEL_LEN {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "the pattern is longer than a channel name may be",
            ));
        }
        let pattern = if pattern.is_empty() { "*" } else { pattern };
        let op = ControlOp::Channels {
            pattern: pattern.to_owned(),
            limit,
        };
        let replies = self
            .within_deadline(self.inner.bus.control(&op))
            .await?
            .map_err(|e| logged(e.into()))?;
        Ok(replies.channels(limit))
    }

    /// Subscribers of each of `channels` across the cluster, in one round trip (at most
    /// [`MAX_COUNTED_CHANNELS`] names).
    pub async fn subscribers(
        &self,
        channels: Vec<String>,
    ) -> Result<HashMap<String, u64>, ApiError> {
        if channels.len() > MAX_COUNTED_CHANNELS {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("at most {MAX_COUNTED_CHANNELS} channels are counted at once"),
            ));
        }
        if channels.is_empty() {
            return Ok(HashMap::new());
        }
        let op = ControlOp::Subscribers { channels };
        let replies = self
            .within_deadline(self.inner.bus.control(&op))
            .await?
            .map_err(|e| logged(e.into()))?;
        Ok(replies.subscribers())
    }

    /// The live gateway nodes with their connection counts.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ApiError> {
        let nodes = self.within_deadline(self.inner.bus.nodes()).await?;
        nodes.map_err(|e| logged(e.into()))
    }

    /// Whether the bus can publish now (for `/readyz`).
    pub async fn ready(&self) -> Result<(), ApiError> {
        let checked = self.within_deadline(self.inner.bus.check()).await?;
        checked.map_err(ApiError::from)
    }

    fn check_data_size(&self, len: usize) -> Result<(), ApiError> {
        if len > self.inner.max_data {
            return Err(ApiError::too_large(format!(
                "data is {len} bytes, the limit is {} bytes (--api-max-data)",
                self.inner.max_data
            )));
        }
        Ok(())
    }

    /// Runs one bus operation under the request timeout, so a request never hangs even if
    /// the bus's own timeout fails to fire.
    async fn within_deadline<T>(&self, op: impl Future<Output = T>) -> Result<T, ApiError> {
        let limit = self.inner.request_timeout;
        tokio::time::timeout(limit, op).await.map_err(|_| {
            logged(ApiError::unavailable(format!(
                "the bus did not answer within {limit:?}"
            )))
        })
    }
}

/// Logs server-side failures (client mistakes are not worth a log line).
fn logged(e: ApiError) -> ApiError {
    match e.code {
        ErrorCode::Unavailable => warn!(error = %e.message, "bus unavailable"),
        ErrorCode::Internal => tracing::error!(error = %e.message, "internal error"),
        _ => {}
    }
    e
}

/// Most channels a `channels` answer lists when the request names no limit.
pub const DEFAULT_CHANNELS_LIMIT: usize = 1000;

/// The fields of a user-level command, checked before it goes to every gateway.
fn check_user_command(op: &ControlOp) -> Result<(), ApiError> {
    let bad = |message: String| Err(ApiError::new(ErrorCode::BadRequest, message));
    let (user, client) = match op {
        ControlOp::Disconnect {
            user,
            client,
            code,
            reason,
            ..
        } => {
            if !(3000..=4999).contains(code) {
                return bad(format!("code {code} is not a 3000-4999 close code"));
            }
            if reason.len() > MAX_REASON_LEN {
                return bad(format!("the reason is longer than {MAX_REASON_LEN} bytes"));
            }
            (user, client)
        }
        ControlOp::Subscribe {
            user,
            client,
            channel,
        }
        | ControlOp::Unsubscribe {
            user,
            client,
            channel,
        } => {
            chorus_protocol::channel::validate(channel)
                .map_err(|e| ApiError::new(ErrorCode::BadChannel, e.to_string()))?;
            (user, client)
        }
        ControlOp::Channels { .. } | ControlOp::Subscribers { .. } => return Ok(()),
    };
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return bad(format!("user must be 1-{MAX_USER_LEN} bytes"));
    }
    if client
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > MAX_USER_LEN)
    {
        return bad(format!("client must be 1-{MAX_USER_LEN} bytes when given"));
    }
    Ok(())
}

/// Close code of a server disconnect that names none.
pub const DEFAULT_DISCONNECT_CODE: u16 = 4000;
/// Reason of a server disconnect that gives none.
pub const DEFAULT_DISCONNECT_REASON: &str = "disconnected by the server";

/// A disconnect command from the API's fields: code 0 and an empty reason take the defaults;
/// an empty client means every connection of the user.
pub fn disconnect_op(
    user: String,
    client: String,
    code: u32,
    reason: String,
    reconnect: bool,
) -> Result<ControlOp, ApiError> {
    let code = match code {
        0 => DEFAULT_DISCONNECT_CODE,
        n => u16::try_from(n).map_err(|_| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("code {n} is not a 3000-4999 close code"),
            )
        })?,
    };
    Ok(ControlOp::Disconnect {
        user,
        client: (!client.is_empty()).then_some(client),
        code,
        reason: if reason.is_empty() {
            DEFAULT_DISCONNECT_REASON.to_owned()
        } else {
            reason
        },
        reconnect,
    })
}

/// A subscribe (or, `unsubscribe`, an unsubscribe) command from the API's fields.
pub fn subscribe_op(user: String, client: String, channel: String, unsubscribe: bool) -> ControlOp {
    let client = (!client.is_empty()).then_some(client);
    if unsubscribe {
        ControlOp::Unsubscribe {
            user,
            client,
            channel,
        }
    } else {
        ControlOp::Subscribe {
            user,
            client,
            channel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(config: BrokerConfig) -> Broker {
        Broker::new(Bus::memory(), &config)
    }

    #[tokio::test]
    async fn broadcast_keeps_request_order_around_bad_channels() {
        let b = broker(BrokerConfig::default());
        let out = b
            .broadcast(
                vec!["a".into(), "bad{x}".into(), "a".into(), "c".into()],
                Bytes::from_static(b"1"),
            )
            .await
            .unwrap();
        let summary: Vec<_> = out
            .iter()
            .map(|o| {
                (
                    o.channel.as_str(),
                    o.result.as_ref().map(|p| p.offset).map_err(|e| e.code),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a", Ok(1)),
                ("bad{x}", Err(ErrorCode::BadChannel)),
                ("a", Ok(2)),
                ("c", Ok(1)),
            ]
        );
    }

    #[tokio::test]
    async fn broadcast_limits_are_enforced_before_publishing() {
        let b = broker(BrokerConfig {
            max_broadcast: 2,
            ..BrokerConfig::default()
        });
        let err = b.broadcast(vec![], Bytes::new()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        let err = b
            .broadcast(vec!["a".into(), "b".into(), "c".into()], Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(err.message.contains("limit is 2"), "{}", err.message);
    }

    #[tokio::test]
    async fn data_over_the_limit_is_refused_naming_the_limit() {
        let b = broker(BrokerConfig {
            max_data: 4,
            ..BrokerConfig::default()
        });
        assert!(
            b.publish("a".into(), Bytes::from_static(b"1234"), None)
                .await
                .is_ok()
        );
        let err = b
            .publish("a".into(), Bytes::from_static(b"12345"), None)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(err.message.contains("limit is 4 bytes"), "{}", err.message);
    }
}
