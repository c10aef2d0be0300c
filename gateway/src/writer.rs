//! The one task per connection that writes to the socket.
//!
//! It drains the connection's queue in batches, sends the gateway's heartbeat pings, and
//! sends the close frame when the connection is closed for a reason (idle, slow consumer,
//! protocol error, shutdown). Nothing else writes to the socket, so nothing else can block on
//! a slow client.
//!
//! Why it frames by hand instead of using the WebSocket library's writer: the library writes
//! each frame with its own `write` call. Here everything queued is taken at once and sent in
//! one vectored write: frame headers and small payloads are copied into one buffer, larger
//! payloads (the shared `Bytes` of a publication) are referenced in place — a server frame is
//! never masked, so a payload needs no transformation.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::MissedTickBehavior;

use chorus_protocol::codes::close::SLOW_CONSUMER;

use crate::conn::{Conn, ConnQueue, Outgoing};

/// Most queued items written in one go.
const BATCH: usize = 256;
/// Queue slots the writer keeps between batches; more are freed once written.
const SPARE: usize = 8;
/// Payloads up to this size are copied next to their header; larger ones are sent in place.
const COPY_MAX: usize = 512;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// RSV1 beside the opcode: a message compressed with permessage-deflate.
const COMPRESSED: u8 = 0x40;

/// A batch of frames being put together for one vectored write.
#[derive(Default)]
struct Frames {
    /// Headers and small payloads not yet cut into `parts`.
    buf: BytesMut,
    parts: Vec<Bytes>,
}

impl Frames {
    fn header(&mut self, opcode: u8, len: usize) {
        self.buf.reserve(10);
        self.buf.put_u8(0x80 | opcode);
        if len < 126 {
            self.buf.put_u8(len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            self.buf.put_u8(126);
            self.buf.put_u16(len);
        } else {
            self.buf.put_u8(127);
            self.buf.put_u64(len as u64);
        }
    }

    fn frame(&mut self, opcode: u8, payload: Bytes) {
        self.header(opcode, payload.len());
        if payload.len() <= COPY_MAX {
            self.buf.extend_from_slice(&payload);
        } else {
            self.cut();
            self.parts.push(payload);
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        // A close payload is at most 125 bytes: the code and up to 123 bytes of reason.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.header(OP_CLOSE, 2 + end);
        self.buf.put_u16(code);
        self.buf.extend_from_slice(&reason.as_bytes()[..end]);
    }

    fn cut(&mut self) {
        if !self.buf.is_empty() {
            self.parts.push(self.buf.split().freeze());
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.parts.is_empty()
    }

    /// Writes everything, in as few `writev` calls as the socket allows.
    async fn write<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.cut();
        let result = write_all_vectored(w, &self.parts).await;
        self.parts.clear();
        result?;
        w.flush().await
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &[Bytes],
) -> std::io::Result<()> {
    let (mut i, mut off) = (0, 0);
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len().min(64));
    while i < bufs.len() {
        slices.clear();
        slices.push(IoSlice::new(&bufs[i][off..]));
        slices.extend(bufs[i + 1..].iter().take(63).map(|b| IoSlice::new(b)));
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while i < bufs.len() && n >= bufs[i].len() - off {
            n -= bufs[i].len() - off;
            i += 1;
            off = 0;
        }
        off += n;
    }
    Ok(())
}

pub(crate) async fn run<W>(mut ws: W, conn: Arc<Conn>, queue: ConnQueue, ping_interval: Duration)
where
    W: AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval_at(crate::clock::after(ping_interval), ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Grown on demand (an idle connection keeps little of it: memory per connection matters).
    let mut batch = VecDeque::new();
    let mut frames = Frames::default();
    // Publish times of the batch's publications, recorded once the batch is on the socket.
    let mut published_at = Vec::new();
    let delivery = crate::metrics::Delivery::new();
    let data_opcode = if conn.format.is_text() {
        OP_TEXT
    } else {
        OP_BINARY
    };
    // One wake-up future for the whole life of the writer, renewed when it fires: waiting
    // costs no allocation or lock beyond the `Notify`'s own.
    let ready = conn.queue_ready();
    tokio::pin!(ready);
    let result: std::io::Result<()> = async {
        loop {
            if conn.is_ending() {
                let close = conn.take_close_frame();
                // What is already queued goes out first: a disconnect push before a close
                // frame, the echo of the client's own close. Not for a slow consumer, whose
                // queue is the problem.
                if close
                    .as_ref()
                    .is_none_or(|(code, _)| *code != SLOW_CONSUMER)
                {
                    let mut cost = 0;
                    while let Some(item) = queue.try_recv() {
                        cost += item.cost();
                        match item {
                            Outgoing::Data(bytes) | Outgoing::Publication(bytes, _) => {
                                frames.frame(data_opcode, bytes);
                            }
                            Outgoing::Compressed(bytes, _) => {
                                frames.frame(data_opcode | COMPRESSED, bytes);
                            }
                            Outgoing::Pong(_) => {}
                            Outgoing::Echo(text, compressed, bytes) => {
                                frames.frame(echo_opcode(text, compressed), bytes);
                            }
                            Outgoing::CloseEcho(bytes) => {
                                frames.frame(OP_CLOSE, bytes);
                                conn.dequeued_bytes(cost);
                                return frames.write(&mut ws).await;
                            }
                        }
                    }
                    conn.dequeued_bytes(cost);
                }
                if let Some((code, reason)) = close {
                    frames.close(code, &reason);
                }
                return frames.write(&mut ws).await;
            }
            if queue.try_recv_many(&mut batch, BATCH) == 0 {
                tokio::select! {
                    biased;
                    _ = ready.as_mut() => ready.set(conn.queue_ready()),
                    _ = ping.tick() => {
                        frames.header(OP_PING, 0);
                        frames.write(&mut ws).await?;
                    }
                }
                continue;
            }
            let mut cost = 0;
            let mut echo = false;
            for item in batch.drain(..) {
                cost += item.cost();
                match item {
                    Outgoing::Data(bytes) => frames.frame(data_opcode, bytes),
                    Outgoing::Publication(bytes, at) => {
                        frames.frame(data_opcode, bytes);
                        published_at.push(at);
                    }
                    Outgoing::Compressed(bytes, at) => {
                        frames.frame(data_opcode | COMPRESSED, bytes);
                        published_at.push(at);
                    }
                    Outgoing::Pong(bytes) => frames.frame(OP_PONG, bytes),
                    Outgoing::Echo(text, compressed, bytes) => {
                        frames.frame(echo_opcode(text, compressed), bytes);
                    }
                    Outgoing::CloseEcho(bytes) => {
                        frames.frame(OP_CLOSE, bytes);
                        echo = true;
                        break;
                    }
                }
            }
            batch.clear();
            if batch.capacity() > SPARE {
                // After a burst, an idle connection should not keep the burst's buffer.
                batch = VecDeque::new();
            }
            conn.dequeued_bytes(cost);
            frames.write(&mut ws).await?;
            if echo {
                conn.abandon();
                return Ok(());
            }
            if !published_at.is_empty() {
                // One clock read per batch, after the batch is written.
                delivery.record(chorus_bus::now_ms(), &published_at);
                published_at.clear();
            }
        }
    }
    .await;
    debug_assert!(frames.is_empty() || result.is_err());
    if let Err(e) = result {
        tracing::debug!(client = %conn.client, error = %e, "write failed; dropping connection");
    }
    // Whatever ended the writer ends the connection.
    conn.abandon();
}

fn echo_opcode(text: bool, compressed: bool) -> u8 {
    let opcode = if text { OP_TEXT } else { OP_BINARY };
    if compressed {
        opcode | COMPRESSED
    } else {
        opcode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: &mut Frames) -> Vec<u8> {
        f.cut();
        f.parts.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn frames_are_framed_like_rfc_6455_servers_frame_them() {
        let mut f = Frames::default();
        f.frame(OP_BINARY, Bytes::from_static(b"hi"));
        let big = Bytes::from(vec![7u8; 600]);
        f.frame(OP_TEXT, big.clone());
        f.close(1000, "bye");
        let out = written(&mut f);
        assert_eq!(&out[..4], &[0x82, 2, b'h', b'i']);
        assert_eq!(&out[4..8], &[0x81, 126, 0x02, 0x58]);
        assert_eq!(&out[8..608], &big[..]);
        assert_eq!(&out[608..], &[0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);
        assert_eq!(f.parts.len(), 3, "the large payload is sent in place");
    }

    #[test]
    fn close_reasons_are_cut_to_fit_a_control_frame() {
        let mut f = Frames::default();
        f.close(3002, &"é".repeat(100));
        let out = written(&mut f);
        assert!(out.len() - 2 <= 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[tokio::test]
    async fn vectored_writes_survive_short_writes() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let bufs: Vec<Bytes> = (0..20u8)
            .map(|i| Bytes::from(vec![i; i as usize + 1]))
            .collect();
        let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
                .await
                .unwrap();
            got
        });
        write_all_vectored(&mut a, &bufs).await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), expected);
    }
}
