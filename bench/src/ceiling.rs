//! The ceiling: a minimal in-process fan-out server — no Redis, no protocol logic beyond
//! answering `connect` and `subscribe` with canned replies. A publication is framed once and
//! every connection's queue gets the same `Bytes`; each connection's writer sends what is
//! queued in one vectored write. Its deliveries per second, with the same client code and on
//! the same machine, is the most this load generator can observe: Chorus's figures are
//! reported as a ratio to it. It speaks both of Chorus's forms — protobuf (binary frames) and,
//! to a client that asks with `?format=json`, JSON (text frames) — so a JSON run has a JSON
//! ceiling beside it.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use chorus_protocol::client::{self, command, push, reply};
use chorus_protocol::wire::{self as cwire, Format};
use parking_lot::Mutex;
use prost::Message;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::wire;

/// Frames a connection may have queued before the publisher waits for it.
const QUEUE: usize = 4096;

/// A subscribed connection: the form it speaks and its queue.
type Subscriber = (Format, mpsc::Sender<Bytes>);

#[derive(Clone, Default)]
pub struct Ceiling {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
}

/// A server frame of `format` (binary for protobuf, text for JSON), header included.
fn framed(format: Format, frame: &client::ServerFrame) -> Bytes {
    let payload = cwire::encode_frame(format, frame);
    let op = if format == Format::Json {
        wire::OP_TEXT
    } else {
        wire::OP_BINARY
    };
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    wire::put_header(&mut out, op, payload.len(), false);
    out.extend_from_slice(&payload);
    out.freeze()
}

impl Ceiling {
    /// Listens on `n` loopback ports (one per "gateway") and serves until the runtime ends.
    pub async fn start(n: usize) -> std::io::Result<(Self, Vec<SocketAddr>)> {
        let ceiling = Self::default();
        let mut addrs = Vec::new();
        for _ in 0..n.max(1) {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            let c = ceiling.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(c.clone().serve(stream));
                }
            });
        }
        Ok((ceiling, addrs))
    }

    /// Publishes one message to every subscriber: framed once, shared by all. Waits for a
    /// subscriber whose queue is full (the ceiling measures throughput, it never drops).
    pub async fn publish(&self, seq: u64, data: Bytes) {
        let push = cwire::push(push::Body::Publication(client::Publication {
            channel: "ceiling".into(),
            offset: seq + 1,
            epoch: "ceiling".into(),
            data,
        }));
        // Framed once per form, shared by every subscriber of that form.
        let (mut binary, mut text) = (None, None);
        let subs: Vec<_> = self.subscribers.lock().clone();
        for (format, tx) in subs {
            let cached = if format == Format::Json {
                &mut text
            } else {
                &mut binary
            };
            let frame = cached.get_or_insert_with(|| framed(format, &push)).clone();
            let _ = tx.send(frame).await;
        }
    }

    async fn serve(self, mut stream: TcpStream) {
        let mut buf = BytesMut::with_capacity(4096);
        // The upgrade.
        let (key, format) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.advance(end + 4);
                let key = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| value.trim().to_owned())
                });
                let request_line = head.lines().next().unwrap_or("");
                let format = if request_line.contains("format=json") {
                    Format::Json
                } else {
                    Format::Protobuf
                };
                break (key, format);
            }
            match stream.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        };
        let Some(key) = key else { return };
        let mut sha = Sha1::new();
        sha.update(key.as_bytes());
        sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        // Writer: everything queued, in one vectored write.
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                if write_all_vectored(&mut wr, &batch).await.is_err() {
                    return;
                }
                batch.clear();
            }
        });
        // Reader: canned replies to connect and subscribe; after the first subscribe the
        // connection receives every publication.
        let mut subscribed = false;
        loop {
            while let Some((op, payload, end)) = wire::unmask(&buf) {
                buf.advance(end);
                match op {
                    wire::OP_BINARY | wire::OP_TEXT => {
                        let cmd = match format {
                            Format::Json => cwire::decode_command(format, &payload).ok(),
                            _ => client::Command::decode(payload.as_slice()).ok(),
                        };
                        let Some(cmd) = cmd else {
                            return;
                        };
                        let result = match cmd.body {
                            Some(command::Body::Connect(_)) => {
                                reply::Result::Connect(client::ConnectResult::default())
                            }
                            Some(command::Body::Subscribe(_)) => {
                                reply::Result::Subscribe(client::SubscribeResult::default())
                            }
                            _ => reply::Result::Ping(client::PingResult {}),
                        };
                        let is_sub = matches!(result, reply::Result::Subscribe(_));
                        let reply = cwire::reply(client::Reply {
                            id: cmd.id,
                            error: None,
                            result: Some(result),
                        });
                        if tx.send(framed(format, &reply)).await.is_err() {
                            return;
                        }
                        if is_sub && !subscribed {
                            subscribed = true;
                            self.subscribers.lock().push((format, tx.clone()));
                        }
                    }
                    wire::OP_CLOSE => return,
                    _ => {}
                }
            }
            match rd.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }
}

/// Writes every buffer, as few `writev` calls as the socket allows.
pub async fn write_all_vectored<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &[Bytes],
) -> std::io::Result<()> {
    let (mut i, mut off) = (0, 0);
    while i < bufs.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&bufs[i][off..]))
            .chain(bufs[i + 1..].iter().take(1023).map(|b| IoSlice::new(b)))
            .collect();
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
