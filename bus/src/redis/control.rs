//! The control channel on Redis: a request is one PUBLISH on `keys::control()`, which every
//! gateway's subscriber connection listens to; PUBLISH says how many gateways received it,
//! and each answers by pushing its reply onto the request's own list, which the caller pops
//! until every gateway answered or the time is up.

use std::time::Duration;

use tokio::time::Instant;

use super::RedisBus;
use super::connect::redis_error;
use crate::control::{ControlOp, ControlReplies, ControlReply, ControlRequest};
use crate::{BusError, keys};

/// How long a reply list outlives its request (a gateway answering late leaves nothing
/// behind for long).
pub(crate) const REPLY_TTL: Duration = Duration::from_secs(10);

impl RedisBus {
    pub(crate) async fn control(&self, op: &ControlOp) -> Result<ControlReplies, BusError> {
        let reply_to = keys::control_reply(&uuid::Uuid::new_v4().simple().to_string());
        let request = ControlRequest {
            op: op.clone(),
            reply_to: reply_to.clone(),
        };
        let text = serde_json::to_string(&request)
            .map_err(|e| BusError::BadRequest(format!("control request: {e}")))?;
        // Replies are awaited within three quarters of the timeout, so that the whole call
        // (bounded by the timeout) answers with what arrived rather than failing.
        let deadline = Instant::now() + self.config.redis_timeout * 3 / 4;
        self.with_blocking_conn("a control request", async |conn| {
            // On a cluster the control channel is a sharded one: SPUBLISH counts the
            // gateways subscribed on its shard, which is every gateway (plain PUBLISH would
            // count only those connected to the node that took it).
            let publish = if self.on_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            };
            let reached: usize = redis::cmd(publish)
                .arg(keys::control())
                .arg(&text)
                .query_async(conn)
                .await
                .map_err(|e| redis_error(&e))?;
            let mut replies = Vec::with_capacity(reached);
            while replies.len() < reached {
                let left = deadline.saturating_duration_since(Instant::now());
                if left < Duration::from_millis(1) {
                    break;
                }
                let popped: Option<(String, String)> = redis::cmd("BLPOP")
                    .arg(&reply_to)
                    .arg(left.as_secs_f64())
                    .query_async(conn)
                    .await
                    .map_err(|e| redis_error(&e))?;
                let Some((_, reply)) = popped else {
                    break;
                };
                match serde_json::from_str::<ControlReply>(&reply) {
                    Ok(reply) => replies.push(reply),
                    Err(e) => tracing::warn!(error = %e, "an unreadable control reply"),
                }
            }
            let _: Result<(), _> = redis::cmd("DEL").arg(&reply_to).exec_async(conn).await;
            if replies.len() < reached {
                tracing::warn!(
                    reached,
                    answered = replies.len(),
                    "not every gateway answered a control request in time"
                );
            }
            Ok(ControlReplies { replies, reached })
        })
        .await
    }

    /// Pushes a gateway's answer to a control request.
    pub(crate) async fn control_answer(&self, reply_to: &str, reply: &str) {
        let pushed = self
            .with_conn("a control reply", async |conn| {
                redis::pipe()
                    .cmd("RPUSH")
                    .arg(reply_to)
                    .arg(reply)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(reply_to)
                    .arg(REPLY_TTL.as_millis() as u64)
                    .ignore()
                    .exec_async(conn)
                    .await
                    .map_err(|e| redis_error(&e))
            })
            .await;
        if let Err(e) = pushed {
            tracing::warn!(error = %e, "answering a control request failed");
        }
    }
}
