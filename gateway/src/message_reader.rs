//! Client messages, made of the frames the `frame_reader` checks one by one.
//!
//! The frame reader knows the rules of a single frame. This reader knows the rules between
//! frames and inside control frames: a fragmented message is reassembled with a running size
//! cap (the frame reader's cap is per frame, so endless continuation frames would otherwise
//! grow without bound: 1009); a new message may not start before a fragmented one ends, nor a
//! continuation come without one (1002); a text message must be UTF-8 (1007); a close frame
//! may not carry a one-byte payload or an invalid code (1002) or a reason that is not UTF-8
//! (1007). What it hands the session is therefore always well-formed, and the session only
//! decides what a message means.
//!
//! Cancel-safe like the frame reader: a message half-reassembled stays in the reader.

use bytes::{Bytes, BytesMut};
use chorus_protocol::codes::close;
use tokio::net::tcp::OwnedReadHalf;

use crate::frame_reader::{FrameReader, OpCode, ReadError, Violation, close_code_allowed};

/// One whole client message, or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    /// A data message: text (valid UTF-8) or binary.
    Data {
        text: bool,
        payload: Bytes,
    },
    Ping(Bytes),
    Pong,
    /// A well-formed close frame's payload (empty, or a valid code and a UTF-8 reason), to
    /// be echoed.
    Close(Bytes),
}

pub(crate) struct MessageReader {
    frames: FrameReader,
    /// A fragmented message being reassembled: (is text, is compressed, bytes so far).
    partial: Option<(bool, bool, BytesMut)>,
    max: usize,
}

const fn violation(code: u16, reason: &'static str) -> ReadError {
    ReadError::Violation(Violation { code, reason })
}

impl MessageReader {
    /// A reader of messages up to `max` bytes, reassembled; `already` holds bytes that arrived
    /// with the upgrade request. With `compressed` (permessage-deflate was negotiated) it reads
    /// compressed messages too (RSV1 on their first frame), inflated within the same bound.
    pub(crate) fn new(max: usize, already: Bytes, compressed: bool) -> Self {
        let mut frames = FrameReader::new(max, already);
        if compressed {
            frames.allow_compressed();
        }
        Self {
            frames,
            partial: None,
            max,
        }
    }

    /// Whether a whole frame is already buffered: the next [`MessageReader::next`] may not
    /// wait for the client.
    pub(crate) fn has_frame(&self) -> bool {
        self.frames.has_frame()
    }

    /// The next message or control frame. Cancel-safe.
    pub(crate) async fn next(&mut self, socket: &OwnedReadHalf) -> Result<Message, ReadError> {
        loop {
            let frame = self.frames.next(socket).await?;
            match (frame.opcode, self.partial.as_mut()) {
                (OpCode::Close, _) => return close_frame(frame.payload),
                (OpCode::Ping, _) => return Ok(Message::Ping(frame.payload)),
                (OpCode::Pong, _) => return Ok(Message::Pong),
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return Err(violation(
                        close::PROTOCOL_ERROR,
                        "new message before the fragmented one ended",
                    ));
                }
                (OpCode::Continuation, None) => {
                    return Err(violation(
                        close::PROTOCOL_ERROR,
                        "continuation frame without a message",
                    ));
                }
                (OpCode::Text | OpCode::Binary, None) => {
                    let text = frame.opcode == OpCode::Text;
                    if frame.fin {
                        return data(text, frame.compressed, frame.payload, self.max);
                    }
                    let first = BytesMut::from(&frame.payload[..]);
                    self.partial = Some((text, frame.compressed, first));
                }
                (OpCode::Continuation, Some((_, _, buf))) => {
                    if buf.len() + frame.payload.len() > self.max {
                        return Err(violation(close::MESSAGE_TOO_BIG, "message too big"));
                    }
                    buf.extend_from_slice(&frame.payload);
                    if frame.fin
                        && let Some((text, compressed, buf)) = self.partial.take()
                    {
                        return data(text, compressed, buf.freeze(), self.max);
                    }
                }
            }
        }
    }
}

/// A whole message: inflated when compressed (within `max`), then checked.
fn data(text: bool, compressed: bool, payload: Bytes, max: usize) -> Result<Message, ReadError> {
    let payload = if compressed {
        crate::deflate::inflate(&payload, max)?
    } else {
        payload
    };
    if text && std::str::from_utf8(&payload).is_err() {
        return Err(violation(
            close::INVALID_PAYLOAD,
            "text message is not valid UTF-8",
        ));
    }
    Ok(Message::Data { text, payload })
}

/// A close frame is echoed (RFC 6455 5.5.1) unless it is malformed.
fn close_frame(payload: Bytes) -> Result<Message, ReadError> {
    match payload.len() {
        0 => Ok(Message::Close(payload)),
        1 => Err(violation(
            close::PROTOCOL_ERROR,
            "close frame with a one-byte payload",
        )),
        _ if !close_code_allowed(u16::from_be_bytes([payload[0], payload[1]])) => {
            Err(violation(close::PROTOCOL_ERROR, "invalid close code"))
        }
        _ if std::str::from_utf8(&payload[2..]).is_err() => Err(violation(
            close::INVALID_PAYLOAD,
            "close reason is not valid UTF-8",
        )),
        _ => Ok(Message::Close(payload)),
    }
}
