//! The generator's client: one task per connection, protobuf frames, no allocation per
//! message. It connects (optionally from a given source address, so that many connections do
//! not run out of ephemeral ports), upgrades, sends `connect` and its `subscribe`s, reports
//! when subscribed, then counts what arrives: per channel the offsets (duplicates, gaps, new
//! ones) and, per read, the latency of each publication from the send time in its data.
//!
//! The same code reads from Chorus gateways and from the in-process ceiling server, so the
//! ratio between the two measures Chorus, not the client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};

use crate::hist::Histogram;
use crate::wire::{self, Server};

/// Counters every client adds to (per read, not per message).
pub struct Stats {
    /// The clock every send time and latency is measured on.
    pub base: Instant,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    /// Offsets skipped over (seen as a jump in a channel's offsets).
    pub gaps: AtomicU64,
    pub disconnects: AtomicU64,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub ready_changed: Notify,
    /// Publish → receive, µs.
    pub latency: Mutex<Histogram>,
    /// TCP connect → WebSocket upgrade answered, µs.
    pub handshake: Mutex<Histogram>,
    /// TCP connect → subscribe answered, µs.
    pub subscribed: Mutex<Histogram>,
}

impl Stats {
    pub fn new(base: Instant) -> Arc<Self> {
        Arc::new(Self {
            base,
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            ready_changed: Notify::new(),
            latency: Mutex::new(Histogram::default()),
            handshake: Mutex::new(Histogram::default()),
            subscribed: Mutex::new(Histogram::default()),
        })
    }

    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

#[derive(Clone)]
pub struct Spec {
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    pub channels: Vec<String>,
}

/// What one client saw of each of its channels: new offsets received.
pub type Received = Vec<u64>;

const FLUSH: usize = 512;

/// Runs one client until `stop` turns true. Returns the new offsets received per channel, or
/// `None` when it never got subscribed.
pub async fn run(
    spec: Spec,
    stats: Arc<Stats>,
    connect_limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Option<Received> {
    let permit = connect_limit.acquire_owned().await.ok()?;
    let started = Instant::now();
    let setup = async {
        let mut stream = dial(&spec).await?;
        let mut buf = BytesMut::with_capacity(8 << 10);
        handshake(&mut stream, &mut buf, spec.addr).await?;
        let upgraded = started.elapsed();
        let mut out = BytesMut::new();
        wire::client_frame(&mut out, wire::OP_BINARY, &wire::connect_command(1));
        for (i, ch) in spec.channels.iter().enumerate() {
            let cmd = wire::subscribe_command(2 + i as u32, ch);
            wire::client_frame(&mut out, wire::OP_BINARY, &cmd);
        }
        stream.write_all(&out).await?;
        let mut last = vec![0u64; spec.channels.len()];
        let mut answered = 0;
        while answered < spec.channels.len() + 1 {
            while let Some((op, range, end)) = wire::parse_frame(&buf) {
                if op == wire::OP_BINARY
                    && let Some(Server::Reply { id, error, offset }) =
                        wire::read_server(&buf[range])
                {
                    anyhow::ensure!(!error, "command {id} answered with an error");
                    if id >= 2
                        && let Some(l) = last.get_mut(id as usize - 2)
                    {
                        *l = offset;
                    }
                    answered += 1;
                }
                buf.advance(end);
            }
            if answered < spec.channels.len() + 1 && stream.read_buf(&mut buf).await? == 0 {
                anyhow::bail!("closed before subscribing");
            }
        }
        Ok::<_, anyhow::Error>((stream, buf, last, upgraded))
    };
    let (mut stream, mut buf, mut last, upgraded) = match setup.await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "client setup failed");
            stats.failed.fetch_add(1, Ordering::Relaxed);
            stats.ready_changed.notify_waiters();
            return None;
        }
    };
    stats.handshake.lock().record(upgraded.as_micros() as u64);
    stats
        .subscribed
        .lock()
        .record(started.elapsed().as_micros() as u64);
    drop(permit);
    stats.ready.fetch_add(1, Ordering::Relaxed);
    stats.ready_changed.notify_waiters();

    let mut received = vec![0u64; spec.channels.len()];
    let mut latencies: Vec<u32> = Vec::with_capacity(FLUSH);
    let names: Vec<&[u8]> = spec.channels.iter().map(|c| c.as_bytes()).collect();
    let (mut delivered, mut dups, mut gaps) = (0u64, 0u64, 0u64);
    let mut pong = BytesMut::new();
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 << 10);
        }
        let n = tokio::select! {
            biased;
            n = stream.read_buf(&mut buf) => n,
            _ = stop.changed() => break,
        };
        match n {
            Ok(0) | Err(_) => {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Ok(_) => {}
        }
        let now = stats.now_us();
        let before = delivered;
        let mut closed = false;
        while let Some((op, range, end)) = wire::parse_frame(&buf) {
            match op {
                wire::OP_BINARY => {
                    if let Some(Server::Publication {
                        channel,
                        offset,
                        data,
                    }) = wire::read_server(&buf[range.clone()])
                    {
                        let i = if names.len() == 1 {
                            0
                        } else {
                            names.iter().position(|n| *n == channel).unwrap_or(0)
                        };
                        delivered += 1;
                        if offset <= last[i] {
                            dups += 1;
                        } else {
                            gaps += offset - last[i] - 1;
                            last[i] = offset;
                            received[i] += 1;
                        }
                        if let Some((_, sent)) = wire::read_payload(data) {
                            latencies.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                        }
                    }
                }
                wire::OP_PING => {
                    pong.clear();
                    wire::client_frame(&mut pong, wire::OP_PONG, &buf[range.clone()]);
                }
                wire::OP_CLOSE => closed = true,
                _ => {}
            }
            buf.advance(end);
        }
        if !pong.is_empty() {
            let _ = stream.write_all(&pong).await;
            pong.clear();
        }
        if delivered != before {
            stats
                .delivered
                .fetch_add(delivered - before, Ordering::Relaxed);
        }
        if latencies.len() >= FLUSH {
            stats.latency.lock().record_all(&latencies);
            latencies.clear();
        }
        if closed {
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    stats.latency.lock().record_all(&latencies);
    stats.duplicates.fetch_add(dups, Ordering::Relaxed);
    stats.gaps.fetch_add(gaps, Ordering::Relaxed);
    Some(received)
}

async fn dial(spec: &Spec) -> std::io::Result<TcpStream> {
    let socket = match spec.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = spec.source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(spec.addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn handshake(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let request = format!(
        "GET /ws?format=protobuf HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = &buf[..end];
            anyhow::ensure!(
                head.starts_with(b"HTTP/1.1 101"),
                "upgrade refused: {}",
                String::from_utf8_lossy(head).lines().next().unwrap_or("")
            );
            buf.advance(end + 4);
            return Ok(());
        }
        anyhow::ensure!(stream.read_buf(buf).await? > 0, "closed during the upgrade");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
