//! Publishing and history: one Lua script per channel publish, so that assigning the offset,
//! appending to the channel's history and sending the envelope are one atomic step inside
//! Redis; and one script that reads a channel's position with its history, so that the two
//! always agree.
//!
//! Why a script: two publishers racing on a channel must not both see offset N, and every
//! gateway must receive publications in offset order. Inside a script the HINCRBY and the
//! PUBLISH cannot interleave with another publisher's, so pub/sub order is offset order.
//!
//! Why the script edits protobuf: the publisher cannot know the offset (nor, for a channel
//! Redis lost, the epoch) before the script runs, yet gateways should decode one message. The
//! publisher encodes the envelope without offset and epoch; the script appends field 1
//! (varint offset) and field 2 (the epoch string). Protobuf merges concatenated encodings of
//! a message, so the appended fields are what every gateway decodes — no re-encoding in Lua.
//!
//! Why the caller proposes the epoch: Lua in Redis has no good randomness, so the publisher
//! sends a fresh candidate with every call; it is stored only when the channel has none (a new
//! channel, or one whose metadata Redis lost — which is exactly when the epoch must change).
//!
//! History is a stream per channel whose entry ids are the offsets (`<offset>-0`), so "after
//! offset N" is a plain XRANGE from `N+1-0`. It is trimmed to exactly the namespace's size
//! (plain `MAXLEN`: one entry dropped per append once full) and expires with its TTL; the position (meta hash) lives
//! longer, so a client that missed nothing still recovers after the history expired. When the
//! meta hash is gone the next publish starts a new epoch and deletes any older history.
//!
//! Idempotency: with a key, the script first looks for `idem:{channel}:key`; if present it
//! returns the stored offset and publishes nothing. The key is written in the same atomic
//! step as the publish, so two racing retries cannot both publish.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use redis::{Pipeline, Script, ServerErrorKind, Value};

use super::RedisBus;
use super::cluster::Conn;
use super::connect::redis_error;
use crate::namespaces::{NamespaceRules, Namespaces};
use crate::{
    BusError, Envelope, History, HistoryQuery, Position, Publish, Published, keys, new_epoch,
    now_ms,
};

/// KEYS[1] = the channel's meta hash, KEYS[2] = its history stream, KEYS[3] = the
/// idempotency key (KEYS[1] again when there is none).
/// ARGV[1] = the pub/sub channel, ARGV[2] = a candidate epoch, ARGV[3] = the envelope encoded
/// without offset and epoch, ARGV[4] = history size, ARGV[5] = history TTL (ms), ARGV[6] =
/// position TTL (ms), ARGV[7] = idempotency window (ms; 0 when there is no key).
/// Returns `{offset, epoch, duplicate}`.
pub(crate) const PUBLISH_LUA: &str = include_str!("lua/publish.lua");

/// KEYS[1] = the channel's meta hash, KEYS[2] = its history stream.
/// ARGV[1] = read after this offset ('' = from the oldest), ARGV[2] = at most this many (0 =
/// no bound but the bytes), ARGV[3] = '1' for newest first, ARGV[4] = at most this many bytes
/// of entries (but always one).
/// Returns `{epoch, offset, more, envelope...}`, position and entries from one atomic step;
/// `more` is '1' when the byte bound stopped the read before the count did.
pub(crate) const HISTORY_LUA: &str = include_str!("lua/history.lua");

pub(crate) fn publish_script(on_cluster: bool) -> Script {
    if on_cluster {
        Script::new(&super::cluster::sharded_script(PUBLISH_LUA))
    } else {
        Script::new(PUBLISH_LUA)
    }
}

pub(crate) fn history_script() -> Script {
    Script::new(HISTORY_LUA)
}

/// The envelope as the publisher sends it to the script: everything but offset and epoch,
/// and the current span's trace context when traces are on.
fn envelope_without_position(channel: &str, data: Bytes, exclude_client: String) -> Vec<u8> {
    let (trace_parent, trace_state) = chorus_runtime::traces::current_context().unwrap_or_default();
    Envelope {
        offset: 0,
        epoch: String::new(),
        channel: channel.to_owned(),
        data,
        published_at_ms: now_ms(),
        exclude_client,
        presence: None,
        trace_parent,
        trace_state,
    }
    .encode_to_vec()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The EVALSHA command for one channel publish (for pipelines, which cannot fall back to
/// EVAL on their own, and for single publishes alike).
fn evalsha(
    script: &Script,
    msg: Publish,
    rules: &NamespaceRules,
    idempotency_window: Duration,
) -> redis::Cmd {
    let meta = keys::meta(&msg.channel);
    let (idem_key, window) = match &msg.idempotency_key {
        Some(key) => (
            keys::idempotency(&msg.channel, key),
            millis(idempotency_window),
        ),
        None => (meta.clone(), 0),
    };
    let envelope = envelope_without_position(&msg.channel, msg.data, msg.exclude_client);
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(3)
        .arg(meta)
        .arg(keys::history(&msg.channel))
        .arg(idem_key)
        .arg(keys::pubsub(&msg.channel))
        .arg(new_epoch())
        .arg(envelope)
        .arg(rules.history_size)
        .arg(millis(rules.history_ttl))
        .arg(millis(rules.history_meta_ttl))
        .arg(window);
    cmd
}

fn published_from(value: Value) -> Result<Published, BusError> {
    let (offset, epoch, duplicate): (u64, String, u8) = redis::from_redis_value(value)
        .map_err(|e| BusError::Protocol(format!("publish script returned {e}")))?;
    Ok(Published {
        offset,
        epoch,
        duplicate: duplicate == 1,
    })
}

fn history_from(value: Value) -> Result<History, BusError> {
    let bad = |what: String| BusError::Protocol(format!("history script returned {what}"));
    let Value::Array(items) = value else {
        return Err(bad(format!("{value:?}")));
    };
    let mut items = items.into_iter();
    let epoch: String = optional_field(items.next()).map_err(|e| bad(e.to_string()))?;
    let offset: u64 = optional_field(items.next()).map_err(|e| bad(e.to_string()))?;
    let more: String = optional_field(items.next()).map_err(|e| bad(e.to_string()))?;
    let publications = items
        .map(|item| {
            let bytes: Vec<u8> = redis::from_redis_value(item).map_err(|e| bad(e.to_string()))?;
            Envelope::decode(bytes.as_slice())
                .map_err(|e| bad(format!("an undecodable entry: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(History {
        publications,
        position: Position { offset, epoch },
        more: more == "1",
    })
}

/// A field of the history script's answer; absent reads as the empty position's.
fn optional_field<T: redis::FromRedisValue + Default>(
    value: Option<Value>,
) -> Result<T, redis::ParsingError> {
    value.map_or_else(|| Ok(T::default()), redis::from_redis_value)
}

fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

impl RedisBus {
    #[tracing::instrument(name = "redis.publish", skip_all, fields(channel = %msg.channel))]
    pub(crate) async fn publish(
        &self,
        msg: Publish,
        rules: &NamespaceRules,
    ) -> Result<Published, BusError> {
        let channel = msg.channel.clone();
        let cmd = evalsha(
            &self.publish_script,
            msg,
            rules,
            self.config.idempotency_window,
        );
        let result = self
            .with_conn("a publish", async |conn| {
                let mut values = self.run_publishes(conn, &[(0, cmd)]).await?;
                values
                    .pop()
                    .unwrap_or_else(|| Err(BusError::Protocol("no reply to a publish".into())))
            })
            .await;
        if let Err(e) = &result {
            tracing::debug!(%channel, error = %e, "publish failed");
        }
        result
    }

    pub(crate) async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<History, BusError> {
        self.with_conn("a history read", async |conn| {
            let value: Value = self
                .history_script
                .key(keys::meta(channel))
                .key(keys::history(channel))
                .arg(query.since.map_or_else(String::new, |o| o.to_string()))
                .arg(query.limit)
                .arg(if query.reverse { "1" } else { "0" })
                .arg(query.max_bytes)
                .invoke_async(conn)
                .await
                .map_err(|e| redis_error(&e))?;
            history_from(value)
        })
        .await
    }

    /// Publishes every valid message in one pipeline; invalid ones keep their error.
    pub(crate) async fn publish_many(
        &self,
        msgs: Vec<Result<Publish, BusError>>,
        namespaces: &Namespaces,
    ) -> Vec<Result<Published, BusError>> {
        let mut results: Vec<Option<Result<Published, BusError>>> = Vec::with_capacity(msgs.len());
        // (index in `msgs`, command) for every valid message.
        let mut pending = Vec::with_capacity(msgs.len());
        for (i, msg) in msgs.into_iter().enumerate() {
            match msg {
                Ok(msg) => {
                    let rules = namespaces.rules(&msg.channel);
                    let cmd = evalsha(
                        &self.publish_script,
                        msg,
                        rules,
                        self.config.idempotency_window,
                    );
                    pending.push((i, cmd));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !pending.is_empty() {
            let outcome = self
                .with_conn("a pipeline of publishes", async |conn| {
                    self.run_publishes(conn, &pending).await
                })
                .await;
            match outcome {
                Ok(values) => {
                    for ((i, _), value) in pending.iter().zip(values) {
                        results[*i] = Some(value);
                    }
                }
                Err(e) => {
                    tracing::warn!(publishes = pending.len(), error = %e, "pipelined publish failed");
                    let reason = e.to_string();
                    for (i, _) in &pending {
                        results[*i] = Some(Err(match &e {
                            BusError::Unavailable(r) => BusError::Unavailable(r.clone()),
                            _ => BusError::Protocol(reason.clone()),
                        }));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BusError::Protocol("no reply for channel".into()))))
            .collect()
    }

    /// Runs the publish commands in one pipeline; if Redis had no copy of the script (a
    /// restart, SCRIPT FLUSH), loads it and runs again only the commands it refused — they
    /// did not execute, so nothing is published twice.
    async fn run_publishes(
        &self,
        conn: &mut Conn<'_>,
        pending: &[(usize, redis::Cmd)],
    ) -> Result<Vec<Result<Published, BusError>>, BusError> {
        let mut pipe = Pipeline::with_capacity(pending.len());
        pipe.ignore_errors();
        for (_, cmd) in pending {
            pipe.add_command(cmd.clone());
        }
        let mut values: Vec<Value> = pipe.query_async(conn).await.map_err(|e| redis_error(&e))?;
        if values.len() != pending.len() {
            return Err(BusError::Protocol(format!(
                "{} replies to {} publishes",
                values.len(),
                pending.len()
            )));
        }
        let refused: Vec<usize> = (0..values.len())
            .filter(|&i| is_noscript(&values[i]))
            .collect();
        if !refused.is_empty() {
            self.publish_script
                .load_async(conn)
                .await
                .map_err(|e| redis_error(&e))?;
            let mut retry = Pipeline::with_capacity(refused.len());
            retry.ignore_errors();
            for &i in &refused {
                retry.add_command(pending[i].1.clone());
            }
            let again: Vec<Value> = retry.query_async(conn).await.map_err(|e| redis_error(&e))?;
            for (&i, value) in refused.iter().zip(again) {
                values[i] = value;
            }
        }
        Ok(values
            .into_iter()
            .map(|value| match value {
                Value::ServerError(e) => Err(redis_error(&e.into())),
                value => published_from(value),
            })
            .collect())
    }

    pub(crate) async fn position(&self, channel: &str) -> Result<Position, BusError> {
        self.with_conn("a position query", async |conn| {
            let (epoch, offset): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                .arg(keys::meta(channel))
                .arg("epoch")
                .arg("offset")
                .query_async(conn)
                .await
                .map_err(|e| redis_error(&e))?;
            Ok(match (epoch, offset) {
                (Some(epoch), offset) => Position {
                    offset: offset.unwrap_or(0),
                    epoch,
                },
                (None, _) => Position::default(),
            })
        })
        .await
    }

    pub(crate) async fn check(&self) -> Result<(), BusError> {
        if self.on_cluster() {
            return self.check_masters().await;
        }
        self.with_conn("PING", async |conn| {
            let _: String = redis::cmd("PING")
                .query_async(conn)
                .await
                .map_err(|e| redis_error(&e))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusConfig;
    use chorus_testkit::RedisServer;
    use std::time::Duration;

    const TEST_WAIT: Duration = Duration::from_secs(5);

    /// Runs the script directly (no gateway) and decodes what it PUBLISHed.
    async fn publish_and_capture(
        server: &RedisServer,
        meta_offset: Option<u64>,
        epoch: &str,
    ) -> (Published, Envelope) {
        let client = redis::Client::open(format!("{}/?protocol=resp3", server.url())).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
        let mut sub = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        sub.subscribe(keys::pubsub("t")).await.unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        if let Some(offset) = meta_offset {
            let _: () = redis::cmd("HSET")
                .arg(keys::meta("t"))
                .arg("offset")
                .arg(offset)
                .arg("epoch")
                .arg(epoch)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let body = envelope_without_position("t", Bytes::from_static(b"payload"), "c9".into());
        let value: Value = publish_script(false)
            .key(keys::meta("t"))
            .key(keys::history("t"))
            .key(keys::meta("t"))
            .arg(keys::pubsub("t"))
            .arg(epoch)
            .arg(body)
            .arg(10)
            .arg(60_000)
            .arg(120_000)
            .arg(0)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let published = published_from(value).unwrap();
        loop {
            let push = tokio::time::timeout(TEST_WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap();
            if push.kind == redis::PushKind::Message {
                let payload: Vec<u8> = redis::from_redis_value(push.data[1].clone()).unwrap();
                return (published, Envelope::decode(payload.as_slice()).unwrap());
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn script_appends_offset_and_epoch_that_prost_decodes() {
        let server = RedisServer::start().unwrap();
        // Offsets around every varint length boundary, up to just below 2^53.
        let cases = [
            0u64,
            126,
            127,
            16_382,
            16_383,
            (1 << 21) - 1,
            (1 << 28) - 1,
            (1 << 35) - 1,
            (1 << 42) - 1,
            (1 << 49) - 1,
            (1 << 53) - 2,
        ];
        for before in cases {
            let (published, envelope) = publish_and_capture(&server, Some(before), "ep0ch").await;
            assert_eq!(published.offset, before + 1);
            assert_eq!(envelope.offset, before + 1, "offset after {before}");
            assert_eq!(envelope.epoch, "ep0ch");
            assert_eq!(envelope.channel, "t");
            assert_eq!(envelope.data, Bytes::from_static(b"payload"));
            assert_eq!(envelope.exclude_client, "c9");
        }
        // A long epoch needs a two-byte length.
        let long_epoch = "e".repeat(300);
        let (published, envelope) = publish_and_capture(&server, Some(5), &long_epoch).await;
        assert_eq!((published.offset, envelope.offset), (6, 6));
        assert_eq!(envelope.epoch, long_epoch);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_channel_takes_the_candidate_epoch_and_keeps_it() {
        let server = RedisServer::start().unwrap();
        let (first, envelope) = publish_and_capture(&server, None, "cand1").await;
        assert_eq!((first.offset, first.epoch.as_str()), (1, "cand1"));
        assert_eq!(envelope.epoch, "cand1");
        let (second, envelope) = publish_and_capture(&server, None, "cand2").await;
        assert_eq!((second.offset, second.epoch.as_str()), (2, "cand1"));
        assert_eq!((envelope.offset, envelope.epoch.as_str()), (2, "cand1"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipeline_of_publishes_loads_the_script_when_redis_has_none() {
        let server = RedisServer::start().unwrap();
        let bus = RedisBus::new(&BusConfig {
            redis_url: server.url(),
            ..BusConfig::default()
        })
        .unwrap();
        server.cli(&["SCRIPT", "FLUSH"]).unwrap();
        let msgs = ["a", "b"]
            .map(|channel| {
                Ok(Publish {
                    channel: channel.into(),
                    data: Bytes::from_static(b"x"),
                    ..Publish::default()
                })
            })
            .into();
        let results = bus.publish_many(msgs, &Namespaces::default()).await;
        assert_eq!(results.len(), 2);
        for r in results {
            assert_eq!(r.unwrap().offset, 1);
        }
    }
}
