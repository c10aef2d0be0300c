//! The generator's client: one task per connection, protobuf frames, no allocation per
//! message. It connects (optionally from a given source address, so that many connections do
//! not run out of ephemeral ports), upgrades, sends `connect` and its `subscribe`s, reports
//! when subscribed, then counts what arrives: per channel the offsets (duplicates, gaps, new
//! ones) and, per read, the latency of each publication from the send time in its data.
//!
//! Like a real client, it reconnects when the gateway closes the connection for a reason a
//! client recovers from (3000 shutdown, 3001 idle, 3002 slow consumer, 3003 insufficient
//! state, 1001, 1011) or the socket drops, while the run is not stopping: to the same gateway,
//! after a short backoff with jitter, a bounded number of attempts per disconnect. It then
//! subscribes each channel again with `recover` from the last offset and epoch it has; the
//! publications a reply recovers are counted like live ones (latency, offset checks). A
//! channel that could not be recovered (`recovered: false`) continues from the gateway's
//! current position: its gap is never received, so the run counts it as lost.
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
    /// Connections re-established (connected and every channel subscribed again).
    pub reconnects: AtomicU64,
    /// Subscriptions that recovered what they missed (`recovered: true`).
    pub recovered: AtomicU64,
    /// Subscriptions that asked to recover and could not (`recovered: false`).
    pub not_recovered: AtomicU64,
    /// Clients that stopped for good before the run ended: a close code not to reconnect
    /// after, or every reconnection attempt failed.
    pub gave_up: AtomicU64,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub ready_changed: Notify,
    /// Bytes read from the sockets after the upgrade.
    pub wire_bytes: AtomicU64,
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
            reconnects: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            not_recovered: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            ready_changed: Notify::new(),
            wire_bytes: AtomicU64::new(0),
            latency: Mutex::new(Histogram::default()),
            handshake: Mutex::new(Histogram::default()),
            subscribed: Mutex::new(Histogram::default()),
        })
    }

    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

/// The protocol a client speaks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Chorus's protobuf form (binary frames): the lean default.
    Protobuf,
    /// Chorus's JSON form (text frames), as browsers and most client libraries use it.
    Json,
    /// The Pusher protocol (`/app/{key}`), as pusher-js speaks it; public channels.
    Pusher { key: String },
}

impl Protocol {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Protobuf => "protobuf",
            Self::Json => "json",
            Self::Pusher { .. } => "pusher",
        }
    }
}

#[derive(Clone)]
pub struct Spec {
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    pub channels: Vec<String>,
    pub protocol: Arc<Protocol>,
    /// Offer permessage-deflate.
    pub deflate: bool,
}

/// What one client saw of each of its channels: new offsets received.
pub type Received = Vec<u64>;

const FLUSH: usize = 512;
/// Reconnection attempts after one disconnect before the client gives up.
pub const RECONNECT_ATTEMPTS: u32 = 8;
/// The first reconnection backoff; it doubles per attempt up to [`BACKOFF_MAX`], ±50 % jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Whether a client reconnects after the connection ended with this close code (`None`: the
/// socket dropped without a close frame).
pub fn reconnects_after(code: Option<u16>) -> bool {
    matches!(
        code,
        None | Some(1001 | 1006 | 1011 | 3000 | 3001 | 3002 | 3003)
    )
}

fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(rand::random_range(0.5..1.5))
}

/// One client's view of its channels: positions, counts and latencies not yet added to
/// [`Stats`].
struct Tracker {
    protocol: Arc<Protocol>,
    names: Vec<Vec<u8>>,
    /// Per channel: the last offset received and the epoch it belongs to.
    last: Vec<u64>,
    epoch: Vec<Vec<u8>>,
    received: Received,
    delivered: u64,
    reported: u64,
    dups: u64,
    gaps: u64,
    latencies: Vec<u32>,
    /// While (re)subscribing: replies answered, whether the subscribes recover, a failed one.
    answered: usize,
    recovering: bool,
    refused: Option<u32>,
}

/// How reading a connection ended.
enum End {
    Stopped,
    /// The connection ended: the close frame's code, `None` when the socket dropped.
    Closed(Option<u16>),
}

impl Tracker {
    fn new(channels: &[String], protocol: Arc<Protocol>) -> Self {
        let n = channels.len();
        Self {
            protocol,
            names: channels.iter().map(|c| c.as_bytes().to_vec()).collect(),
            last: vec![0; n],
            epoch: vec![Vec::new(); n],
            received: vec![0; n],
            delivered: 0,
            reported: 0,
            dups: 0,
            gaps: 0,
            latencies: Vec::with_capacity(FLUSH),
            answered: 0,
            recovering: false,
            refused: None,
        }
    }

    fn index(&self, channel: &[u8]) -> usize {
        if self.names.len() == 1 {
            0
        } else {
            self.names.iter().position(|n| n == channel).unwrap_or(0)
        }
    }

    /// A publication of channel `i`, live or recovered.
    fn publication(&mut self, i: usize, offset: u64, epoch: &[u8], data: &[u8], now: u64) {
        self.delivered += 1;
        let last = &mut self.last[i];
        if offset <= *last {
            self.dups += 1;
        } else {
            self.gaps += offset - *last - 1;
            *last = offset;
            self.received[i] += 1;
        }
        if self.epoch[i] != epoch {
            self.epoch[i] = epoch.to_vec();
        }
        let payload = match *self.protocol {
            Protocol::Pusher { .. } => wire::read_payload_text(data),
            _ => wire::read_payload(data),
        };
        if let Some((_, sent)) = payload {
            self.latencies
                .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
        }
    }

    /// A reply while (re)subscribing: id 1 answers `connect`, id 2 + i subscribes channel i.
    fn reply(&mut self, stats: &Stats, reply: Server<'_>, now: u64) {
        let Server::Reply {
            id,
            error,
            offset,
            epoch,
            recovered,
            publications,
        } = reply
        else {
            return;
        };
        let Some(i) = (id as usize)
            .checked_sub(2)
            .filter(|i| *i < self.names.len())
        else {
            if id == 1 {
                self.answered += 1;
                if error {
                    self.refused = Some(id);
                }
            }
            return;
        };
        self.answered += 1;
        if error {
            self.refused = Some(id);
            return;
        }
        if !self.recovering {
            self.last[i] = offset;
            self.epoch[i] = epoch.to_vec();
            return;
        }
        let counter = if recovered {
            &stats.recovered
        } else {
            &stats.not_recovered
        };
        counter.fetch_add(1, Ordering::Relaxed);
        publications.for_each(|p| {
            if let Server::Publication {
                offset,
                epoch,
                data,
                ..
            } = p
            {
                self.publication(i, offset, epoch, data, now);
            }
        });
        // Live publications continue after the reply's position. A new epoch is a new life of
        // the channel (its offsets start over); otherwise what lies between the last offset
        // received and that position was not recovered: never received, so counted as lost.
        if !epoch.is_empty() && !self.epoch[i].is_empty() && self.epoch[i] != epoch {
            self.last[i] = offset;
        } else if offset > self.last[i] {
            self.gaps += offset - self.last[i];
            self.last[i] = offset;
        }
        if !epoch.is_empty() {
            self.epoch[i] = epoch.to_vec();
        }
    }

    /// Handles every complete frame in `buf`: publications, replies, pings (their pongs go to
    /// `pong`). Returns the close code (`Some(None)`: a close without one) once a close frame
    /// came.
    fn frames(
        &mut self,
        stats: &Stats,
        buf: &mut BytesMut,
        pong: &mut BytesMut,
    ) -> Option<Option<u16>> {
        let now = stats.now_us();
        let mut closed = None;
        let mut inflated = Vec::new();
        while let Some((op, range, end)) = wire::parse_frame(buf) {
            let payload = if buf[0] & wire::COMPRESSED != 0 {
                if wire::inflate(&buf[range], &mut inflated).is_err() {
                    return Some(None);
                }
                &inflated[..]
            } else {
                &buf[range]
            };
            match op {
                wire::OP_BINARY => match wire::read_server(payload) {
                    Some(Server::Publication {
                        channel,
                        offset,
                        epoch,
                        data,
                    }) => {
                        let i = self.index(channel);
                        self.publication(i, offset, epoch, data, now);
                    }
                    Some(reply @ Server::Reply { .. }) => self.reply(stats, reply, now),
                    _ => {}
                },
                wire::OP_TEXT => self.text(stats, payload, pong, now),
                wire::OP_PING => {
                    wire::client_frame(pong, wire::OP_PONG, payload);
                }
                wire::OP_CLOSE => closed = Some(wire::close_code(payload)),
                _ => {}
            }
            buf.advance(end);
            if closed.is_some() {
                break;
            }
        }
        closed
    }

    /// A text frame: Chorus's JSON form, or Pusher's.
    fn text(&mut self, stats: &Stats, frame: &[u8], pong: &mut BytesMut, now: u64) {
        if !matches!(*self.protocol, Protocol::Pusher { .. }) {
            match wire::read_json(frame) {
                Some(Server::Publication {
                    channel,
                    offset,
                    epoch,
                    data,
                }) => {
                    let i = self.index(channel);
                    self.publication(i, offset, epoch, data, now);
                }
                Some(reply @ Server::Reply { .. }) => self.reply(stats, reply, now),
                _ => {}
            }
            return;
        }
        // Pusher: the connection's welcome answers "connect" (id 1), a channel's
        // subscription_succeeded its subscribe (id 2 + i). Events carry no offset: each is
        // counted as the channel's next.
        let reply = |id: u32, error: bool| Server::Reply {
            id,
            error,
            offset: 0,
            epoch: &[],
            recovered: false,
            publications: wire::Recovered::default(),
        };
        match wire::read_pusher(frame) {
            wire::PusherFrame::Established => self.reply(stats, reply(1, false), now),
            wire::PusherFrame::Subscribed { channel } => {
                let i = self.index(channel) as u32;
                self.reply(stats, reply(2 + i, false), now);
            }
            wire::PusherFrame::Error => self.reply(stats, reply(1, true), now),
            wire::PusherFrame::Ping => wire::client_frame(pong, wire::OP_TEXT, wire::PUSHER_PONG),
            wire::PusherFrame::Event { channel, data } => {
                let i = self.index(channel);
                let next = self.last[i] + 1;
                self.publication(i, next, &[], data, now);
            }
            wire::PusherFrame::Other => {}
        }
    }

    /// Adds deliveries (always) and latencies (in batches, or all with `all`) to `stats`.
    fn flush(&mut self, stats: &Stats, all: bool) {
        if self.delivered != self.reported {
            stats
                .delivered
                .fetch_add(self.delivered - self.reported, Ordering::Relaxed);
            self.reported = self.delivered;
        }
        if self.latencies.len() >= FLUSH || (all && !self.latencies.is_empty()) {
            stats.latency.lock().record_all(&self.latencies);
            self.latencies.clear();
        }
    }

    fn finish(mut self, stats: &Stats) -> Received {
        self.flush(stats, true);
        stats.duplicates.fetch_add(self.dups, Ordering::Relaxed);
        stats.gaps.fetch_add(self.gaps, Ordering::Relaxed);
        self.received
    }
}

/// Resolves once the run is stopping (or its sender is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs one client until `stop` turns true. Returns the new offsets received per channel, or
/// `None` when it never got subscribed.
pub async fn run(
    spec: Spec,
    stats: Arc<Stats>,
    connect_limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Option<Received> {
    let permit = connect_limit.clone().acquire_owned().await.ok()?;
    let started = Instant::now();
    let mut t = Tracker::new(&spec.channels, spec.protocol.clone());
    let (mut stream, mut buf, upgraded) = match open(&spec, &stats, &mut t, false).await {
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

    loop {
        let code = match read(&mut stream, &mut buf, &stats, &mut t, &mut stop).await {
            End::Stopped => break,
            End::Closed(code) => code,
        };
        stats.disconnects.fetch_add(1, Ordering::Relaxed);
        drop(stream);
        if *stop.borrow() {
            break;
        }
        if !reconnects_after(code) {
            tracing::debug!(?code, "closed; not reconnecting");
            stats.gave_up.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let again = tokio::select! {
            r = reconnect(&spec, &stats, &mut t, &connect_limit) => r,
            _ = stopping(&mut stop) => break,
        };
        match again {
            Some((s, b)) => {
                (stream, buf) = (s, b);
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                stats.gave_up.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    Some(t.finish(&stats))
}

/// Reads and counts until the connection ends or the run stops.
async fn read(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    stats: &Stats,
    t: &mut Tracker,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let mut pong = BytesMut::new();
    loop {
        // Frames already buffered (left after subscribing) first.
        let closed = t.frames(stats, buf, &mut pong);
        if !pong.is_empty() {
            let _ = stream.write_all(&pong).await;
            pong.clear();
        }
        t.flush(stats, false);
        if let Some(code) = closed {
            return End::Closed(code);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 << 10);
        }
        let n = tokio::select! {
            biased;
            n = stream.read_buf(buf) => n,
            _ = stopping(stop) => return End::Stopped,
        };
        match n {
            Ok(0) | Err(_) => return End::Closed(None),
            Ok(n) => {
                stats.wire_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Connects again after a disconnect, with backoff, and resubscribes every channel with
/// recovery. `None` when every attempt failed.
async fn reconnect(
    spec: &Spec,
    stats: &Stats,
    t: &mut Tracker,
    connect_limit: &Arc<Semaphore>,
) -> Option<(TcpStream, BytesMut)> {
    for attempt in 0..RECONNECT_ATTEMPTS {
        tokio::time::sleep(backoff(attempt)).await;
        let Ok(_permit) = connect_limit.acquire().await else {
            return None;
        };
        match open(spec, stats, t, true).await {
            Ok((stream, buf, _)) => return Some((stream, buf)),
            Err(e) => tracing::debug!(error = %e, attempt, "reconnect failed"),
        }
    }
    None
}

/// Dials, upgrades, sends `connect` and a `subscribe` per channel (recovering from the
/// tracker's positions when `recover`), and reads until every command is answered. Returns
/// the stream, what is buffered after the replies, and how long the upgrade took.
async fn open(
    spec: &Spec,
    stats: &Stats,
    t: &mut Tracker,
    recover: bool,
) -> anyhow::Result<(TcpStream, BytesMut, Duration)> {
    let started = Instant::now();
    let mut stream = dial(spec).await?;
    let mut buf = BytesMut::with_capacity(8 << 10);
    handshake(&mut stream, &mut buf, spec).await?;
    let upgraded = started.elapsed();
    let mut out = BytesMut::new();
    match &*spec.protocol {
        Protocol::Protobuf => {
            wire::client_frame(&mut out, wire::OP_BINARY, &wire::connect_command(1));
            for (i, ch) in spec.channels.iter().enumerate() {
                let from = recover.then(|| (t.last[i], t.epoch[i].as_slice()));
                let cmd = wire::subscribe_command(2 + i as u32, ch, from);
                wire::client_frame(&mut out, wire::OP_BINARY, &cmd);
            }
        }
        Protocol::Json => {
            wire::client_frame(&mut out, wire::OP_TEXT, &wire::connect_json(1));
            for (i, ch) in spec.channels.iter().enumerate() {
                let from = recover.then(|| (t.last[i], t.epoch[i].as_slice()));
                let cmd = wire::subscribe_json(2 + i as u32, ch, from);
                wire::client_frame(&mut out, wire::OP_TEXT, &cmd);
            }
        }
        // Pusher has no recovery: a reconnected client just subscribes again.
        Protocol::Pusher { .. } => {
            for ch in &spec.channels {
                wire::client_frame(&mut out, wire::OP_TEXT, &wire::subscribe_pusher(ch));
            }
        }
    }
    stream.write_all(&out).await?;
    (t.answered, t.recovering, t.refused) = (0, recover, None);
    let mut pong = BytesMut::new();
    let result = loop {
        let closed = t.frames(stats, &mut buf, &mut pong);
        if !pong.is_empty() {
            stream.write_all(&pong).await?;
            pong.clear();
        }
        if let Some(id) = t.refused {
            break Err(anyhow::anyhow!("command {id} answered with an error"));
        }
        if t.answered > spec.channels.len() {
            break Ok(());
        }
        if let Some(code) = closed {
            break Err(anyhow::anyhow!("closed ({code:?}) before subscribing"));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            break Err(anyhow::anyhow!("closed before subscribing"));
        }
    };
    t.recovering = false;
    t.flush(stats, false);
    result.map(|()| (stream, buf, upgraded))
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

async fn handshake(stream: &mut TcpStream, buf: &mut BytesMut, spec: &Spec) -> anyhow::Result<()> {
    let addr = spec.addr;
    let extension = if spec.deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let path = match &*spec.protocol {
        Protocol::Protobuf => "/ws?format=protobuf".to_owned(),
        Protocol::Json => "/ws?format=json".to_owned(),
        Protocol::Pusher { key } => format!("/app/{key}?protocol=7&client=chorus-bench&version=1"),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extension}\r\n"
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
