//! The one task per connection that writes to the socket.
//!
//! It drains the connection's queue in batches, sends the gateway's heartbeat pings, and
//! sends the close frame when the connection is closed for a reason (idle, slow consumer,
//! protocol error, shutdown). Nothing else writes to the socket, so nothing else can block on
//! a slow client.

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocketWrite};
use tokio::io::AsyncWrite;
use tokio::time::MissedTickBehavior;

use chorus_protocol::codes::close::SLOW_CONSUMER;

use crate::conn::{Conn, ConnQueue, Outgoing};

const BATCH: usize = 64;

pub(crate) async fn run<W>(
    mut ws: WebSocketWrite<W>,
    conn: Arc<Conn>,
    mut queue: ConnQueue,
    ping_interval: Duration,
) where
    W: AsyncWrite + Unpin,
{
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    // Publish times of the batch's publications, recorded once the batch is on the socket.
    let mut published_at = Vec::with_capacity(BATCH);
    let delivery = crate::metrics::Delivery::new();
    let data_opcode = if conn.format.is_text() {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    let result: Result<(), fastwebsockets::WebSocketError> = async {
        loop {
            tokio::select! {
                biased;
                _ = conn.closing.cancelled() => {
                    let close = conn.take_close_frame();
                    // What is already queued goes out first: a disconnect push before a close
                    // frame, the echo of the client's own close. Not for a slow consumer,
                    // whose queue is the problem.
                    if close.as_ref().is_none_or(|(code, _)| *code != SLOW_CONSUMER) {
                        while let Ok(item) = queue.rx.try_recv() {
                            conn.dequeued(&item);
                            match item {
                                Outgoing::Data(bytes) | Outgoing::Publication(bytes, _) => {
                                    ws.write_frame(Frame::new(true, data_opcode, None, Payload::Borrowed(&bytes))).await?;
                                }
                                Outgoing::Pong(_) => {}
                                Outgoing::Echo(text, bytes) => {
                                    ws.write_frame(Frame::new(true, echo_opcode(text), None, Payload::Borrowed(&bytes))).await?;
                                }
                                Outgoing::CloseEcho(bytes) => {
                                    ws.write_frame(Frame::close_raw(Payload::Borrowed(&bytes))).await?;
                                    ws.flush().await?;
                                    return Ok(());
                                }
                            }
                        }
                    }
                    if let Some((code, reason)) = close {
                        ws.write_frame(Frame::close(code, reason.as_bytes())).await?;
                    }
                    ws.flush().await?;
                    return Ok(());
                }
                n = queue.rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return Ok(());
                    }
                    for item in batch.drain(..) {
                        conn.dequeued(&item);
                        match item {
                            Outgoing::Data(bytes) => {
                                ws.write_frame(Frame::new(true, data_opcode, None, Payload::Borrowed(&bytes))).await?;
                            }
                            Outgoing::Publication(bytes, at) => {
                                ws.write_frame(Frame::new(true, data_opcode, None, Payload::Borrowed(&bytes))).await?;
                                published_at.push(at);
                            }
                            Outgoing::Pong(bytes) => {
                                ws.write_frame(Frame::pong(Payload::Borrowed(&bytes))).await?;
                            }
                            Outgoing::Echo(text, bytes) => {
                                ws.write_frame(Frame::new(true, echo_opcode(text), None, Payload::Borrowed(&bytes))).await?;
                            }
                            Outgoing::CloseEcho(bytes) => {
                                ws.write_frame(Frame::close_raw(Payload::Borrowed(&bytes))).await?;
                                ws.flush().await?;
                                conn.abandon();
                                return Ok(());
                            }
                        }
                    }
                    ws.flush().await?;
                    if !published_at.is_empty() {
                        // One clock read per batch, after the batch is written.
                        delivery.record(chorus_bus::now_ms(), &published_at);
                        published_at.clear();
                    }
                }
                _ = ping.tick() => {
                    ws.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]))).await?;
                    ws.flush().await?;
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(client = %conn.client, error = %e, "write failed; dropping connection");
    }
    // Whatever ended the writer ends the connection.
    conn.abandon();
}

fn echo_opcode(text: bool) -> OpCode {
    if text { OpCode::Text } else { OpCode::Binary }
}
