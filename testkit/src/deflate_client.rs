//! A WebSocket client framed by hand over a plain TCP socket: for frames the rules forbid
//! (written as raw bytes), and for permessage-deflate (RFC 7692) when it offers the
//! extension — tungstenite has no compression, so the gateway's compressed frames are read,
//! and compressed client messages written, here with flate2.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// One server message as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// RSV1 was set: the payload arrived compressed (and is inflated here).
    pub compressed: bool,
    /// The bytes on the wire (compressed ones as sent).
    pub wire_len: usize,
    pub text: bool,
    pub payload: Bytes,
}

pub struct DeflateWs {
    stream: TcpStream,
    /// The `Sec-WebSocket-Extensions` the server answered with, if any.
    pub extension: Option<String>,
}

impl DeflateWs {
    /// Opens `path` (e.g. `/ws?format=json`) offering `offer` as `Sec-WebSocket-Extensions`
    /// (none when `None`).
    pub async fn open(addr: SocketAddr, path: &str, offer: Option<&str>) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        let extension = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        // The response head, byte by byte so that no frame byte is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = tokio::time::timeout(WAIT, stream.read_u8())
                .await
                .context("upgrade response in time")??;
            head.push(b);
        }
        let head = String::from_utf8(head)?;
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {head}");
        }
        let extension = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        Ok(Self { stream, extension })
    }

    /// Sends a text message, compressed (RSV1) when `compress`.
    pub async fn send_text(&mut self, text: &str, compress: bool) -> anyhow::Result<()> {
        let (first, payload) = if compress {
            (0x80 | 0x40 | 0x1, deflate(text.as_bytes()))
        } else {
            (0x80 | 0x1, text.as_bytes().to_vec())
        };
        self.send_raw(&crate::raw_frame(first, &payload, Some([7, 1, 3, 9])))
            .await
    }

    /// Writes bytes as they are (frames the rules may forbid).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next data message (pings answered, pongs skipped), within five seconds; an error
    /// naming the close code when the server closes.
    pub async fn next(&mut self) -> anyhow::Result<Received> {
        tokio::time::timeout(WAIT, self.read_message())
            .await
            .context("no message within the wait")?
    }

    /// Reads until the server's close frame and returns its code (1005 without one).
    pub async fn close_code(&mut self) -> anyhow::Result<u16> {
        loop {
            match self.next().await {
                Ok(_) => {}
                Err(e) => {
                    let text = e.to_string();
                    if let Some(code) = text.strip_prefix("closed with ") {
                        return Ok(code.parse()?);
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn read_message(&mut self) -> anyhow::Result<Received> {
        let mut message: Option<(bool, bool, Vec<u8>)> = None;
        loop {
            let b0 = self.stream.read_u8().await?;
            let b1 = self.stream.read_u8().await?;
            let len = match b1 & 0x7f {
                126 => u64::from(self.stream.read_u16().await?),
                127 => self.stream.read_u64().await?,
                n => u64::from(n),
            };
            let mut payload = vec![0; usize::try_from(len)?];
            self.stream.read_exact(&mut payload).await?;
            let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
            match opcode {
                0x8 => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    bail!("closed with {code}");
                }
                0x9 => {
                    let pong = crate::raw_frame(0x8A, &payload, Some([1, 2, 3, 4]));
                    self.stream.write_all(&pong).await?;
                }
                0xA => {}
                0x1 | 0x2 => message = Some((opcode == 0x1, rsv1, payload)),
                0x0 => match &mut message {
                    Some((_, _, buf)) => buf.extend_from_slice(&payload),
                    None => bail!("a continuation frame without a message"),
                },
                other => bail!("unexpected opcode {other}"),
            }
            if fin
                && opcode != 0x9
                && opcode != 0xA
                && let Some((text, compressed, wire)) = message.take()
            {
                let payload = if compressed {
                    inflate(&wire)?
                } else {
                    wire.clone()
                };
                return Ok(Received {
                    compressed,
                    wire_len: wire.len(),
                    text,
                    payload: Bytes::from(payload),
                });
            }
        }
    }
}

/// `data` compressed as one permessage-deflate message (no context takeover), without the
/// trailing `00 00 ff ff`.
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    loop {
        let consumed = c.total_in() as usize;
        c.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .expect("deflate");
        if c.total_in() as usize == data.len() && out.ends_with(&TAIL) {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    out.truncate(out.len() - TAIL.len());
    out
}

/// Inflates one permessage-deflate message.
pub fn inflate(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    while (d.total_in() as usize) < input.len() {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let before = d.total_in();
        let consumed = before as usize;
        d.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|e| anyhow!("inflate: {e}"))?;
        if d.total_in() == before && out.len() < out.capacity() {
            bail!("inflate made no progress");
        }
    }
    Ok(out)
}
