//! A guard in front of the WebSocket library that checks every client frame header as its
//! bytes arrive, before the library acts on the frame.
//!
//! fastwebsockets 0.10 accepts unmasked client frames, answers a Close frame longer than 125
//! bytes with an echo and accepts oversized Pong frames; it answers a Ping itself before the
//! gateway sees it. So the gateway does not trust it with the frame rules: [`Guarded`] wraps
//! the upgraded socket, follows the byte stream frame by frame (header, then skip the
//! payload) and fails the read with a [`Violation`] carrying the RFC 6455 close code as soon
//! as a header breaks a rule:
//!
//! - a client frame that is not masked, has a reserved bit set or a reserved opcode: 1002;
//! - a control frame (close, ping, pong) that is fragmented or longer than 125 bytes: 1002;
//! - a 64-bit length with its top bit set: 1002;
//! - a frame longer than the gateway's maximum message size: 1009, before any of it is read.
//!
//! It never buffers or allocates: it only counts bytes passing through.

use std::pin::Pin;
use std::task::{Context, Poll};

use chorus_protocol::codes::close;
use fastwebsockets::{Role, WebSocket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A frame that broke the rules, with the close code to answer it with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct Violation {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

/// The close code and reason for a read error, if the guard caused it.
pub(crate) fn violation_of(e: &std::io::Error) -> Option<&Violation> {
    e.get_ref()?.downcast_ref::<Violation>()
}

#[derive(Debug)]
enum State {
    /// Reading a header: the bytes so far.
    Header { buf: [u8; 14], have: usize },
    /// Skipping a payload: bytes left.
    Payload { left: u64 },
}

/// The client frame rules, applied to a byte stream.
#[derive(Debug)]
pub(crate) struct FrameRules {
    max_payload: u64,
    state: State,
    failed: Option<Violation>,
}

impl FrameRules {
    pub(crate) fn new(max_payload: usize) -> Self {
        Self {
            max_payload: max_payload as u64,
            state: State::Header {
                buf: [0; 14],
                have: 0,
            },
            failed: None,
        }
    }

    /// Follows `bytes`, the next bytes from the client. Once a rule is broken, every later call
    /// reports the same violation.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        if let Some(v) = &self.failed {
            return Err(v.clone());
        }
        while !bytes.is_empty() {
            match &mut self.state {
                State::Payload { left } => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                }
                State::Header { buf, have } => {
                    buf[*have] = bytes[0];
                    *have += 1;
                    bytes = &bytes[1..];
                    match check_header(&buf[..*have], self.max_payload) {
                        Ok(None) => {}
                        Ok(Some(0)) => {
                            self.state = State::Header {
                                buf: [0; 14],
                                have: 0,
                            }
                        }
                        Ok(Some(len)) => self.state = State::Payload { left: len },
                        Err(v) => {
                            self.failed = Some(v.clone());
                            return Err(v);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn protocol(reason: &'static str) -> Violation {
    Violation {
        code: close::PROTOCOL_ERROR,
        reason,
    }
}

/// Checks a (partial) header. `Ok(None)`: more bytes needed; `Ok(Some(len))`: the header is
/// complete and the payload is `len` bytes.
fn check_header(h: &[u8], max_payload: u64) -> Result<Option<u64>, Violation> {
    if h.len() == 1 {
        if h[0] & 0x70 != 0 {
            return Err(protocol("reserved bits set"));
        }
        let opcode = h[0] & 0x0f;
        if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
            return Err(protocol("reserved opcode"));
        }
        if opcode >= 8 && h[0] & 0x80 == 0 {
            return Err(protocol("fragmented control frame"));
        }
        return Ok(None);
    }
    if h.len() == 2 {
        if h[1] & 0x80 == 0 {
            return Err(protocol("client frame not masked"));
        }
        if h[0] & 0x0f >= 8 && h[1] & 0x7f > 125 {
            return Err(protocol("control frame longer than 125 bytes"));
        }
    }
    let (ext, short) = match h[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    // The length is checked as soon as it is known, before the masking key arrives.
    if h.len() < 2 + ext {
        return Ok(None);
    }
    let len = match short {
        Some(n) => n,
        None if ext == 2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        None => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[2..10]);
            u64::from_be_bytes(b)
        }
    };
    if len >> 63 != 0 {
        return Err(protocol("frame length has its top bit set"));
    }
    if len > max_payload {
        return Err(Violation {
            code: close::MESSAGE_TOO_BIG,
            reason: "message too big",
        });
    }
    if h.len() < 2 + ext + 4 {
        return Ok(None);
    }
    Ok(Some(len))
}

/// A socket whose incoming bytes pass the client frame rules.
pub(crate) struct Guarded<S> {
    inner: S,
    rules: FrameRules,
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(v) = &this.rules.failed {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                v.clone(),
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                match this.rules.feed(new) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(v) => {
                        // The offending bytes never reach the library.
                        buf.set_filled(before);
                        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, v)))
                    }
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Puts the guard between a freshly upgraded WebSocket and its socket.
pub(crate) fn wrap<S>(ws: WebSocket<S>, max_payload: usize) -> WebSocket<Guarded<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocket::after_handshake(
        Guarded {
            inner: ws.into_inner(),
            rules: FrameRules::new(max_payload),
        },
        Role::Server,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![first];
        let m = if masked { 0x80 } else { 0 };
        if len < 126 {
            f.push(m | len as u8);
        } else if len < 65536 {
            f.push(m | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    fn code(bytes: &[u8], max: usize) -> Option<u16> {
        FrameRules::new(max).feed(bytes).err().map(|v| v.code)
    }

    #[test]
    fn well_formed_frames_pass_in_any_split() {
        let mut stream = frame(0x81, 5, true);
        stream.extend(frame(0x02, 300, true));
        stream.extend(frame(0x80, 70000, true));
        stream.extend(frame(0x89, 125, true));
        stream.extend(frame(0x88, 2, true));
        assert_eq!(code(&stream, 1 << 20), None);
        // Byte by byte gives the same answer.
        let mut rules = FrameRules::new(1 << 20);
        for b in &stream {
            rules.feed(std::slice::from_ref(b)).unwrap();
        }
    }

    #[test]
    fn each_broken_rule_gets_its_close_code() {
        let max = 1 << 16;
        assert_eq!(code(&frame(0x81, 5, false), max), Some(1002), "unmasked");
        assert_eq!(code(&frame(0xC1, 5, true), max), Some(1002), "rsv1");
        assert_eq!(code(&frame(0x83, 5, true), max), Some(1002), "opcode 3");
        assert_eq!(code(&frame(0x8B, 5, true), max), Some(1002), "opcode 11");
        assert_eq!(
            code(&frame(0x09, 5, true), max),
            Some(1002),
            "fragmented ping"
        );
        assert_eq!(code(&frame(0x88, 126, true), max), Some(1002), "long close");
        assert_eq!(code(&frame(0x8A, 200, true), max), Some(1002), "long pong");
        assert_eq!(
            code(&frame(0x82, max + 1, true), max),
            Some(1009),
            "too big"
        );
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&(4u64 << 30).to_be_bytes());
        assert_eq!(code(&huge, max), Some(1009), "4 GiB header");
        let mut top = vec![0x82, 0xFF];
        top.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(code(&top, max), Some(1002), "top bit");
    }

    #[test]
    fn a_violation_sticks() {
        let mut rules = FrameRules::new(100);
        assert!(rules.feed(&frame(0x81, 1, false)).is_err());
        assert!(rules.feed(&frame(0x81, 1, true)).is_err());
    }
}
