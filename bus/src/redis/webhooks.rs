//! The webhook queue on Redis: a stream (`keys::webhooks`) that gateways and Lua scripts
//! append Pusher webhook events to, once per event, and that broker-api instances read
//! through one consumer group, so each event is handed to exactly one of them.
//!
//! Why a consumer group: with several broker-api replicas, each entry goes to one reader;
//! a reader acknowledges (and deletes) entries once their delivery ended. Entries a crashed
//! reader had taken stay pending and are claimed by another after [`CLAIM_IDLE`]. The stream
//! is trimmed to [`WEBHOOK_QUEUE_MAX`] entries, so a backlog with no reader is bounded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::RedisBus;
use super::cluster::Conn;
use super::connect::redis_error;
use crate::pusher::{WEBHOOK_QUEUE_MAX, WebhookEvent, WebhookRecord};
use crate::{BusError, keys};

/// The XADD that appends one event of `app` to the queue, trimmed to its bound.
fn queue_command(app: &str, event: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(keys::webhooks())
        .arg("MAXLEN")
        .arg("~")
        .arg(WEBHOOK_QUEUE_MAX)
        .arg("*")
        .arg("a")
        .arg(app)
        .arg("e")
        .arg(event);
    cmd
}

/// How long an entry may stay taken by a reader before another reader claims it.
pub(crate) const CLAIM_IDLE: Duration = Duration::from_secs(60);

impl RedisBus {
    /// Appends one event of `app` to the queue.
    pub(crate) async fn queue_webhook(&self, app: &str, event: &str) -> Result<(), BusError> {
        self.with_conn("queueing a webhook", async |conn| {
            queue_command(app, event)
                .exec_async(conn)
                .await
                .map_err(|e| redis_error(&e))
        })
        .await
    }

    /// Gives a webhook-queueing script (`join.lua`, `leave.lua`, `occupancy.lua`) the stream
    /// as its second key, except on a cluster: the stream lives on another shard than the
    /// channel's keys, so the script answers 2 when an event is due and
    /// [`RedisBus::queue_due_webhook`] queues it.
    pub(crate) fn webhook_stream(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        if !self.on_cluster() {
            invocation.key(keys::webhooks());
        }
    }

    /// Queues the event a script left due (its reply was 2). On a cluster this is a second
    /// step, so a failure here loses that one event: it is logged, and the change the script
    /// made stands.
    pub(crate) async fn queue_due_webhook(
        &self,
        conn: &mut Conn<'_>,
        reply: i64,
        app: &str,
        event: &str,
    ) {
        if reply != 2 {
            return;
        }
        if let Err(e) = queue_command(app, event).exec_async(conn).await {
            tracing::warn!(app, error = %e, "queueing a webhook event failed; it is lost");
        }
    }

    /// Up to `count` events for `consumer`: first any a crashed reader left taken for
    /// [`CLAIM_IDLE`], else new ones, waiting at most `block` for some to arrive.
    pub(crate) async fn read_webhooks(
        &self,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<WebhookRecord>, BusError> {
        // The wait must end within the operation's deadline.
        let block = block.min(self.config.redis_timeout / 2);
        self.with_blocking_conn("reading webhooks", async |conn| {
            if !self.webhook_group_ready.load(Ordering::Acquire) {
                create_group(conn).await?;
                self.webhook_group_ready.store(true, Ordering::Release);
            }
            let claimed: Result<StreamAutoClaimReply, _> = redis::cmd("XAUTOCLAIM")
                .arg(keys::webhooks())
                .arg(keys::WEBHOOK_GROUP)
                .arg(consumer)
                .arg(CLAIM_IDLE.as_millis() as u64)
                .arg("0")
                .arg("COUNT")
                .arg(count)
                .query_async(conn)
                .await;
            let claimed = match claimed {
                Ok(reply) => reply.claimed,
                Err(e) => return Err(self.lost_group(e)),
            };
            if !claimed.is_empty() {
                return drop_unreadable(conn, records(claimed)).await;
            }
            let read: Result<Option<StreamReadReply>, _> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(keys::WEBHOOK_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(block.as_millis().max(1) as u64)
                .arg("STREAMS")
                .arg(keys::webhooks())
                .arg(">")
                .query_async(conn)
                .await;
            match read {
                Ok(reply) => {
                    let entries = reply
                        .into_iter()
                        .flat_map(|r| r.keys)
                        .flat_map(|k| k.ids)
                        .collect();
                    drop_unreadable(conn, records(entries)).await
                }
                Err(e) => Err(self.lost_group(e)),
            }
        })
        .await
    }

    /// Ends the given entries: acknowledged and deleted.
    pub(crate) async fn ack_webhooks(&self, ids: &[String]) -> Result<(), BusError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.with_conn("acknowledging webhooks", async |conn| ack(conn, ids).await)
            .await
    }
}

async fn ack(conn: &mut Conn<'_>, ids: &[String]) -> Result<(), BusError> {
    redis::pipe()
        .cmd("XACK")
        .arg(keys::webhooks())
        .arg(keys::WEBHOOK_GROUP)
        .arg(ids)
        .ignore()
        .cmd("XDEL")
        .arg(keys::webhooks())
        .arg(ids)
        .ignore()
        .exec_async(conn)
        .await
        .map_err(|e| redis_error(&e))
}

/// Ends the entries that do not read as webhook events (nothing could ever deliver them).
async fn drop_unreadable(
    conn: &mut Conn<'_>,
    (good, bad): (Vec<WebhookRecord>, Vec<String>),
) -> Result<Vec<WebhookRecord>, BusError> {
    if !bad.is_empty() {
        tracing::warn!(
            entries = bad.len(),
            "dropping unreadable webhook queue entries"
        );
        ack(conn, &bad).await?;
    }
    Ok(good)
}

/// Creates the consumer group (and the stream) unless it exists.
async fn create_group(conn: &mut Conn<'_>) -> Result<(), BusError> {
    let created: Result<Value, _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys::webhooks())
        .arg(keys::WEBHOOK_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(redis_error(&e)),
    }
}

impl RedisBus {
    /// A read failed; when Redis lost the group (a restart without persistence), it is
    /// created again on the next read.
    fn lost_group(&self, e: redis::RedisError) -> BusError {
        if e.code() == Some("NOGROUP") {
            self.webhook_group_ready.store(false, Ordering::Release);
        }
        redis_error(&e)
    }
}

/// The records of stream entries, and the ids of entries that do not read as one.
fn records(ids: Vec<StreamId>) -> (Vec<WebhookRecord>, Vec<String>) {
    let mut good = Vec::with_capacity(ids.len());
    let mut bad = Vec::new();
    for entry in ids {
        let text = |field: &str| match entry.map.get(field) {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            Some(Value::SimpleString(s)) => Some(s.clone()),
            _ => None,
        };
        let app = text("a");
        let event = text("e").and_then(|e| serde_json::from_str::<WebhookEvent>(&e).ok());
        match (app, event) {
            (Some(app), Some(event)) => good.push(WebhookRecord {
                id: entry.id,
                app,
                event,
            }),
            _ => bad.push(entry.id),
        }
    }
    (good, bad)
}
