//! A WebSocket client that speaks Chorus's client protocol, for tests.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use chorus_protocol::client::{self, command, push, server_frame};
use chorus_protocol::wire::{self, Format};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one expected frame before failing.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    format: Format,
    next_id: u32,
    /// Pushes that arrived while waiting for a reply, in arrival order.
    pushes: VecDeque<client::Push>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl WsClient {
    /// Opens a WebSocket to `url` (e.g. `ws://127.0.0.1:PORT/ws`); protobuf clients add
    /// `?format=protobuf`.
    pub async fn open(url: &str, format: Format) -> anyhow::Result<Self> {
        let url = with_format(url, format);
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            ws,
            format,
            next_id: 1,
            pushes: VecDeque::new(),
        })
    }

    /// Opens a connection whose socket receive buffer is as small as the OS allows, so that a
    /// client that stops reading backs up into the gateway quickly (for slow-consumer tests).
    pub async fn open_slow_reader(url: &str, format: Format) -> anyhow::Result<Self> {
        let url = with_format(url, format);
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| anyhow!("expected a ws:// URL, got {url}"))?;
        let addr: std::net::SocketAddr = authority.parse().context("ws URL needs an ip:port")?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let stream = socket.connect(addr).await.context("connecting")?;
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream))
            .await
            .context("WebSocket handshake")?;
        let mut c = Self {
            ws,
            format,
            next_id: 1,
            pushes: VecDeque::new(),
        };
        c.ok(command::Body::Connect(client::ConnectRequest::default()))
            .await?;
        Ok(c)
    }

    /// Reads publications until the connection ends; returns how many arrived. Fails if the
    /// connection is still open after the wait.
    pub async fn drain_until_closed(&mut self) -> anyhow::Result<usize> {
        let mut publications = self.pushes.len();
        self.pushes.clear();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("connection still open after the wait")?;
            match msg {
                Some(Ok(Message::Binary(_) | Message::Text(_))) => publications += 1,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(publications),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Opens and sends `connect`; returns the connect result.
    pub async fn connect(
        url: &str,
        format: Format,
    ) -> anyhow::Result<(Self, client::ConnectResult)> {
        Self::connect_with(url, format, "").await
    }

    /// Opens and sends `connect` with `token`.
    pub async fn connect_with(
        url: &str,
        format: Format,
        token: &str,
    ) -> anyhow::Result<(Self, client::ConnectResult)> {
        let mut c = Self::open(url, format).await?;
        let reply = c
            .request(command::Body::Connect(client::ConnectRequest {
                token: token.into(),
                ..Default::default()
            }))
            .await?;
        match reply.result {
            Some(client::reply::Result::Connect(r)) => Ok((c, r)),
            _ => bail!("connect failed: {reply:?}"),
        }
    }

    /// Sends a command and waits for the reply with its id (pushes meanwhile are kept).
    pub async fn request(&mut self, body: command::Body) -> anyhow::Result<client::Reply> {
        let id = self.next_id;
        self.next_id += 1;
        let cmd = client::Command {
            id,
            body: Some(body),
        };
        self.send_raw(wire::encode_command(self.format, &cmd))
            .await?;
        self.reply_to(id).await
    }

    /// Sends a command; fails unless the reply has no error.
    pub async fn ok(&mut self, body: command::Body) -> anyhow::Result<client::Reply> {
        let reply = self.request(body).await?;
        if let Some(e) = &reply.error {
            bail!("command failed: {} {}", e.code, e.message);
        }
        Ok(reply)
    }

    pub async fn subscribe(&mut self, channel: &str) -> anyhow::Result<client::Reply> {
        self.ok(command::Body::Subscribe(client::SubscribeRequest {
            channel: channel.into(),
            ..Default::default()
        }))
        .await
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> anyhow::Result<client::Reply> {
        self.ok(command::Body::Unsubscribe(client::UnsubscribeRequest {
            channel: channel.into(),
        }))
        .await
    }

    pub async fn publish(
        &mut self,
        channel: &str,
        data: &[u8],
    ) -> anyhow::Result<client::PublishResult> {
        let reply = self
            .ok(command::Body::Publish(client::PublishRequest {
                channel: channel.into(),
                data: Bytes::copy_from_slice(data),
                echo: false,
            }))
            .await?;
        match reply.result {
            Some(client::reply::Result::Publish(p)) => Ok(p),
            _ => bail!("publish reply without result: {reply:?}"),
        }
    }

    /// Sends a frame in the connection's format (text for JSON, binary for protobuf).
    pub async fn send_raw(&mut self, payload: Bytes) -> anyhow::Result<()> {
        let msg = match self.format {
            Format::Json | Format::Pusher => Message::Text(
                String::from_utf8(payload.to_vec())
                    .map_err(|_| anyhow!("JSON command is not UTF-8"))?
                    .into(),
            ),
            Format::Protobuf => Message::Binary(payload),
        };
        self.send_message(msg).await
    }

    /// Sends any WebSocket message as is.
    pub async fn send_message(&mut self, msg: Message) -> anyhow::Result<()> {
        self.ws.send(msg).await.context("sending a frame")
    }

    /// The next publication (queued pushes first), within [`WAIT`]. Join and leave pushes
    /// on the way are skipped: tests of them read [`WsClient::next_push`].
    pub async fn next_publication(&mut self) -> anyhow::Result<client::Publication> {
        loop {
            match self.next_push().await? {
                push::Body::Publication(p) => return Ok(p),
                push::Body::Join(_) | push::Body::Leave(_) => {}
                other => bail!("expected a publication, got {other:?}"),
            }
        }
    }

    /// The next push of any kind (queued ones first), within [`WAIT`].
    pub async fn next_push(&mut self) -> anyhow::Result<push::Body> {
        let push = match self.pushes.pop_front() {
            Some(p) => p,
            None => match self.next_frame().await?.frame {
                Some(server_frame::Frame::Push(p)) => p,
                other => bail!("expected a push, got {other:?}"),
            },
        };
        push.body.ok_or_else(|| anyhow!("a push without a body"))
    }

    /// The next server frame, within [`WAIT`]. Fails if the connection closes.
    pub async fn next_frame(&mut self) -> anyhow::Result<client::ServerFrame> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("no frame within the wait")?
                .ok_or_else(|| anyhow!("connection ended"))?
                .context("reading a frame")?;
            let bytes = match msg {
                Message::Text(t) if self.format == Format::Json => {
                    Bytes::from(t.as_bytes().to_vec())
                }
                Message::Binary(b) if self.format == Format::Protobuf => b,
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(c) => bail!("connection closed: {c:?}"),
                other => bail!("unexpected frame kind for {:?}: {other:?}", self.format),
            };
            return wire::decode_frame(self.format, &bytes)
                .map_err(|e| anyhow!("bad server frame: {e}"));
        }
    }

    /// Reads until the server has sent `n` WebSocket pings (answered automatically), failing
    /// on any other frame or a close.
    pub async fn wait_pings(&mut self, n: usize) -> anyhow::Result<()> {
        let mut seen = 0;
        while seen < n {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("no ping within the wait")?
                .ok_or_else(|| anyhow!("connection ended"))?
                .context("reading a frame")?;
            match msg {
                Message::Ping(_) => seen += 1,
                other => bail!("expected a ping, got {other:?}"),
            }
        }
        Ok(())
    }

    /// Waits for the server to close the connection and returns its close code and reason.
    /// Frames before the close are skipped.
    pub async fn closed(&mut self) -> anyhow::Result<Closed> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("the server did not close within the wait")?;
            match msg {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Ok(Closed {
                        code: code.into(),
                        reason: reason.to_string(),
                    });
                }
                Some(Ok(Message::Close(None))) => {
                    return Ok(Closed {
                        code: 1005,
                        reason: String::new(),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("connection failed instead of closing: {e}"),
                None => bail!("connection ended without a close frame"),
            }
        }
    }

    async fn reply_to(&mut self, id: u32) -> anyhow::Result<client::Reply> {
        loop {
            match self.next_frame().await?.frame {
                Some(server_frame::Frame::Reply(r)) if r.id == id => return Ok(r),
                Some(server_frame::Frame::Reply(r)) => bail!("reply to another id: {r:?}"),
                Some(server_frame::Frame::Push(p)) => self.pushes.push_back(p),
                None => bail!("empty server frame"),
            }
        }
    }
}

/// The URL a client of `format` connects to: protobuf asks with `?format=protobuf`.
fn with_format(url: &str, format: Format) -> String {
    match format {
        Format::Json | Format::Pusher => url.to_owned(),
        Format::Protobuf => format!("{url}?format=protobuf"),
    }
}
