//! One WebSocket connection to a gateway, from opening it to knowing how it ended.
//!
//! A [`Connection`] holds the socket and what is only true while it lasts: the commands in
//! flight (their ids start afresh on every connection), whether `connect` succeeded, and
//! what tells a dead connection from a quiet one. The task makes a new one per attempt and
//! drops it when the connection ends; nothing in it survives a reconnect.
//!
//! **Liveness.** The gateway pings every `ping_interval` (given in the `connect` reply) and
//! the WebSocket library answers with pongs, so a live connection is never silent for long.
//! Any message counts as a sign of life; silence longer than `2 × ping_interval + margin`
//! means the connection is dead even though TCP has not noticed (a NAT dropped it, the
//! gateway's host vanished). A `disconnect` push announces a close: the close frame that
//! follows carries the authoritative code, so the connection waits briefly for it and falls
//! back to the push's code and reason if it never comes.
//!
//! **Wake-ups.** Everything with a deadline (replies, silence, the close after a push, a
//! subscribe to retry) lowers [`Connection::wake`], and the task's one timer sleeps until
//! then; on waking it checks them all and sets the next wake-up.
//!
//! **Frames.** Commands are encoded in the connection's format (JSON text or protobuf
//! binary frames). Protobuf frames are decoded straight from the message's buffer, so
//! publication data shares it; undecodable frames are logged and skipped rather than taken
//! for a dead connection.
//!
//! **Endpoints.** After a failed attempt or a lost connection the client moves on to the
//! next configured URL ([`Endpoints`]), so a dead or draining gateway's clients go elsewhere.

use std::time::Duration;

use chorus_protocol::client::{self, command};
use chorus_protocol::wire::{self, Format, PROTOBUF_SUBPROTOCOL};
use futures::SinkExt;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::ClientBuilder;
use crate::pending::{InFlight, Pending};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long the client waits for the gateway's close after a `disconnect` push.
const CLOSE_AFTER_DISCONNECT: Duration = Duration::from_secs(1);
/// How long the client waits to put its own close frame on the wire.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// How a connection ended.
pub(crate) enum End {
    /// Closed by the application (or nobody is left to use the client): stop.
    Closed,
    Lost {
        code: Option<u16>,
        reason: String,
        reconnect: bool,
    },
}

/// A `disconnect` push, and when to stop waiting for the close that follows it.
struct Announced {
    push: client::Disconnect,
    close_by: Instant,
}

/// What a WebSocket message from the gateway amounts to.
pub(crate) enum Incoming {
    Frame(client::ServerFrame),
    /// A close frame (1005 when it carried no code).
    Close {
        code: u16,
        reason: String,
    },
    /// Pings, pongs and undecodable frames: nothing to act on.
    Nothing,
}

/// One connection to a gateway.
pub(crate) struct Connection {
    pub(crate) ws: Ws,
    format: Format,
    pub(crate) in_flight: InFlight,
    /// Whether `connect` succeeded.
    pub(crate) connected: bool,
    /// When the gateway last sent anything.
    pub(crate) last_rx: Instant,
    /// Silence after which the connection counts as dead (from the ping interval).
    silence: Option<Duration>,
    disconnect: Option<Announced>,
    /// The earliest deadline the timer must wake for.
    pub(crate) wake: Instant,
}

/// A wake-up time far enough away to mean "nothing due".
pub(crate) fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

impl Connection {
    /// Opens a WebSocket to `url` (asking for the protobuf subprotocol when configured).
    pub(crate) async fn open(cfg: &ClientBuilder, url: &str) -> Result<Self, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if cfg.format == Format::Protobuf {
            request.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(PROTOBUF_SUBPROTOCOL),
            );
        }
        // One read buffer per connection, small by default: a process may hold thousands of
        // clients. No write buffer: each command is written out as it is sent.
        let config = WebSocketConfig::default()
            .read_buffer_size(cfg.read_buffer_size)
            .write_buffer_size(0);
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
        Ok(Self {
            ws,
            format: cfg.format,
            in_flight: InFlight::default(),
            connected: false,
            last_rx: Instant::now(),
            silence: None,
            disconnect: None,
            wake: far(),
        })
    }

    pub(crate) fn wake_by(&mut self, at: Instant) {
        self.wake = self.wake.min(at);
    }

    /// Sends a command and remembers it until its reply, due by `deadline`.
    pub(crate) async fn request(
        &mut self,
        pending: Pending,
        deadline: Instant,
        body: command::Body,
    ) -> Result<(), End> {
        let id = self.in_flight.next_id();
        self.expect(id, pending, deadline);
        self.send(id, body).await
    }

    /// Remembers command `id` (already numbered) until its reply.
    pub(crate) fn expect(&mut self, id: u32, pending: Pending, deadline: Instant) {
        self.in_flight.expect(id, pending, deadline);
        self.wake_by(deadline);
    }

    /// Encodes and sends command `id`.
    pub(crate) async fn send(&mut self, id: u32, body: command::Body) -> Result<(), End> {
        let bytes = wire::encode_command(
            self.format,
            &client::Command {
                id,
                body: Some(body),
            },
        );
        let msg = match self.format {
            // A Pusher connection is a gateway's own (its clients are Pusher libraries).
            Format::Json | Format::Pusher => Message::Text(
                Utf8Bytes::try_from(bytes)
                    .map_err(|_| self.lost(None, "a JSON command was not UTF-8".into()))?,
            ),
            Format::Protobuf => Message::Binary(bytes),
        };
        let sent = self.ws.send(msg).await;
        sent.map_err(|e| self.lost(None, format!("sending: {e}")))
    }

    /// Reads what the socket delivered; the connection's end when it is over.
    pub(crate) fn receive(
        &self,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<Incoming, End> {
        let msg = match msg {
            None => return Err(self.lost(None, "connection ended".into())),
            Some(Err(e)) => return Err(self.lost(None, e.to_string())),
            Some(Ok(msg)) => msg,
        };
        let frame = match msg {
            Message::Text(text) => wire::decode_frame(Format::Json, text.as_bytes()),
            // Decoding from `Bytes` lets publication data share the frame's buffer.
            Message::Binary(bytes) => client::ServerFrame::decode(bytes).map_err(|e| e.to_string()),
            Message::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (1005, String::new()),
                };
                return Ok(Incoming::Close { code, reason });
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                return Ok(Incoming::Nothing);
            }
        };
        match frame {
            Ok(frame) => Ok(Incoming::Frame(frame)),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an undecodable frame from the gateway");
                Ok(Incoming::Nothing)
            }
        }
    }

    /// `connect` succeeded; with a ping interval, silence now has a bound.
    pub(crate) fn connected(&mut self, ping_interval: Duration, margin: Duration) {
        self.connected = true;
        if !ping_interval.is_zero() {
            let silence = ping_interval * 2 + margin;
            self.silence = Some(silence);
            self.wake_by(Instant::now() + silence);
        }
    }

    /// The gateway announced a close; wait a little for it.
    pub(crate) fn announced(&mut self, push: client::Disconnect) {
        tracing::debug!(code = push.code, reason = %push.reason, reconnect = push.reconnect, "disconnect push");
        let close_by = Instant::now() + CLOSE_AFTER_DISCONNECT;
        self.wake_by(close_by);
        self.disconnect = Some(Announced { push, close_by });
    }

    /// The liveness checks at `now`: the end of the connection if the announced close never
    /// came or the gateway has been silent too long.
    pub(crate) fn check_liveness(&mut self, now: Instant) -> Result<(), End> {
        if let Some(close_by) = self.disconnect.as_ref().map(|a| a.close_by) {
            if close_by <= now {
                return Err(self.lost(None, String::new()));
            }
            self.wake_by(close_by);
        }
        if let Some(silence) = self.silence {
            let quiet = now.saturating_duration_since(self.last_rx);
            if quiet >= silence {
                return Err(self.lost(None, format!("nothing from the gateway for {quiet:?}")));
            }
            let at = self.last_rx + silence;
            self.wake_by(at);
        }
        Ok(())
    }

    /// The end of this connection, told by what the gateway said before it went.
    pub(crate) fn lost(&self, code: Option<u16>, reason: String) -> End {
        match &self.disconnect {
            Some(Announced { push: d, .. }) => End::Lost {
                code: code.or(u16::try_from(d.code).ok()),
                reason: if reason.is_empty() || code.is_none() {
                    d.reason.clone()
                } else {
                    reason
                },
                reconnect: d.reconnect,
            },
            None => End::Lost {
                code,
                reason,
                reconnect: true,
            },
        }
    }

    /// Closes the WebSocket with 1000, without waiting long for a gateway that does not read.
    pub(crate) async fn close(&mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "closed by the client".into(),
        };
        let _ = tokio::time::timeout(CLOSE_WRITE, self.ws.close(Some(frame))).await;
    }
}

/// Which of the configured URLs the next attempt uses: `url`, then the fallbacks in order,
/// round and round.
#[derive(Default)]
pub(crate) struct Endpoints {
    next: usize,
}

impl Endpoints {
    pub(crate) fn url<'a>(&self, cfg: &'a ClientBuilder) -> &'a str {
        match self.next {
            0 => &cfg.url,
            i => &cfg.fallbacks[(i - 1) % cfg.fallbacks.len()],
        }
    }

    /// Moves on to the next URL (after a failed attempt or a lost connection).
    pub(crate) fn rotate(&mut self, cfg: &ClientBuilder) {
        self.next = (self.next + 1) % (cfg.fallbacks.len() + 1);
    }
}
