//! The gateway's WebSocket frame reader: client frames off the socket, checked against the
//! RFC 6455 rules as their bytes arrive, unmasked, and handed to the session one by one.
//!
//! Why not the WebSocket library's reader: it keeps a fixed 8 KiB read buffer for every
//! connection, which was half of an idle connection's memory, and it accepts unmasked client
//! frames, oversized pongs and over-long close frames. This reader holds bytes only while a
//! frame is incomplete: an idle connection has no read buffer at all. It is also cancel-safe
//! (a frame half-read stays in the reader), so the session can race it against its deadlines.
//!
//! The rules, checked on each header before its payload is read:
//!
//! - a client frame that is not masked, has a reserved bit set or a reserved opcode: 1002;
//! - a control frame (close, ping, pong) that is fragmented or longer than 125 bytes: 1002;
//! - a 64-bit length with its top bit set: 1002;
//! - a frame longer than the gateway's maximum message size: 1009, before any of it is read.
//!
//! Reassembling fragmented messages and the rules between frames are the `message_reader`'s.

use bytes::{Buf, Bytes, BytesMut};
use chorus_protocol::codes::close;
use tokio::net::tcp::OwnedReadHalf;

/// A frame that broke the rules, with the close code to answer it with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct Violation {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("frame violation: {0}")]
    Violation(#[from] Violation),
    /// The peer closed the socket, or it failed: there is no one to send a close frame to.
    #[error("connection lost: {0}")]
    Lost(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

/// One client frame, unmasked.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) fin: bool,
    /// RSV1: the first frame of a message compressed with permessage-deflate.
    pub(crate) compressed: bool,
    pub(crate) opcode: OpCode,
    pub(crate) payload: Bytes,
}

/// A checked frame header.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    compressed: bool,
    opcode: OpCode,
    /// Header bytes, masking key included.
    size: usize,
    len: u64,
    mask: [u8; 4],
}

/// Smallest read: several small commands arrive in one.
const READ_MIN: usize = 2048;
/// Largest single growth of the buffer: a frame's bytes are allocated as they arrive, not
/// all at once because a header announced them.
const READ_MAX: usize = 64 << 10;

pub(crate) struct FrameReader {
    /// Bytes received and not yet handed out; no allocation while empty.
    buf: BytesMut,
    max_payload: u64,
    /// Bytes the frame at the front needs in all, once its header is known.
    want: usize,
    /// permessage-deflate was negotiated: RSV1 may mark a compressed message.
    compressed_allowed: bool,
}

impl FrameReader {
    /// A reader of frames up to `max_payload` bytes; `already` holds bytes that arrived with
    /// the upgrade request.
    pub(crate) fn new(max_payload: usize, already: Bytes) -> Self {
        Self {
            buf: BytesMut::from(&already[..]),
            max_payload: max_payload as u64,
            want: 0,
            compressed_allowed: false,
        }
    }

    /// Accepts RSV1 on a message's first frame (permessage-deflate was negotiated).
    pub(crate) fn allow_compressed(&mut self) {
        self.compressed_allowed = true;
    }

    /// The next frame. Cancel-safe: bytes read stay in the reader.
    pub(crate) async fn next(&mut self, socket: &OwnedReadHalf) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            self.fill(socket).await?;
        }
    }

    async fn fill(&mut self, socket: &OwnedReadHalf) -> Result<(), ReadError> {
        loop {
            socket.readable().await?;
            let missing = self.want.saturating_sub(self.buf.len());
            self.buf.reserve(missing.clamp(READ_MIN, READ_MAX));
            match socket.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    return Err(ReadError::Lost(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.release_if_empty();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether a whole frame (or a broken one) is already buffered: the next [`FrameReader::next`]
    /// will not wait for the client.
    pub(crate) fn has_frame(&self) -> bool {
        match header(&self.buf, self.max_payload, self.compressed_allowed) {
            Ok(Some(h)) => self.buf.len() >= h.size + h.len as usize,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Cuts the frame at the front of the buffer, if it is all there.
    fn parse(&mut self) -> Result<Option<Frame>, Violation> {
        let Some(h) = header(&self.buf, self.max_payload, self.compressed_allowed)? else {
            return Ok(None);
        };
        // The length is at most max_payload, which is a usize.
        let total = h.size + h.len as usize;
        if self.buf.len() < total {
            self.want = total;
            return Ok(None);
        }
        self.want = 0;
        let mut frame = self.buf.split_to(total);
        frame.advance(h.size);
        unmask(&mut frame, h.mask);
        self.release_if_empty();
        Ok(Some(Frame {
            fin: h.fin,
            compressed: h.compressed,
            opcode: h.opcode,
            payload: frame.freeze(),
        }))
    }

    /// An idle connection keeps no buffer.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    #[cfg(test)]
    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

fn protocol(reason: &'static str) -> Violation {
    Violation {
        code: close::PROTOCOL_ERROR,
        reason,
    }
}

/// Checks the header at the front of `h` as far as it has arrived. `Ok(None)`: more bytes
/// needed. Each rule is applied as soon as the bytes it needs are there.
fn header(
    h: &[u8],
    max_payload: u64,
    compressed_allowed: bool,
) -> Result<Option<Header>, Violation> {
    let Some(&b0) = h.first() else {
        return Ok(None);
    };
    let compressed = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (compressed && !compressed_allowed) {
        return Err(protocol("reserved bits set"));
    }
    let opcode = match b0 & 0x0f {
        0 => OpCode::Continuation,
        1 => OpCode::Text,
        2 => OpCode::Binary,
        8 => OpCode::Close,
        9 => OpCode::Ping,
        10 => OpCode::Pong,
        _ => return Err(protocol("reserved opcode")),
    };
    let fin = b0 & 0x80 != 0;
    let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    if compressed && (control || opcode == OpCode::Continuation) {
        // RFC 7692 §6: only a message's first frame says it is compressed.
        return Err(protocol("RSV1 on a control or continuation frame"));
    }
    if control && !fin {
        return Err(protocol("fragmented control frame"));
    }
    let Some(&b1) = h.get(1) else {
        return Ok(None);
    };
    if b1 & 0x80 == 0 {
        return Err(protocol("client frame not masked"));
    }
    if control && b1 & 0x7f > 125 {
        return Err(protocol("control frame longer than 125 bytes"));
    }
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    // The length is checked as soon as it is known, before the masking key arrives.
    if h.len() < 2 + ext {
        return Ok(None);
    }
    let len = match ext {
        0 => u64::from(b1 & 0x7f),
        2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        _ => {
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
    let size = 2 + ext + 4;
    if h.len() < size {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&h[2 + ext..size]);
    Ok(Some(Header {
        fin,
        compressed,
        opcode,
        size,
        len,
        mask,
    }))
}

/// Whether a close frame's code may be sent by an endpoint (RFC 6455 7.4, and the IANA
/// registry's 1012–1014 are not in use by clients: Autobahn 7.9 counts them invalid).
pub(crate) fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_testkit::raw_frame;

    /// A frame of `len` bytes of `x`, masked or not.
    fn frame(first: u8, len: usize, masked: bool) -> Vec<u8> {
        raw_frame(first, &vec![b'x'; len], masked.then_some([1, 2, 3, 4]))
    }

    fn code(bytes: &[u8], max: usize) -> Option<u16> {
        let mut r = FrameReader::new(max, Bytes::new());
        r.feed(bytes);
        loop {
            match r.parse() {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(v) => return Some(v.code),
            }
        }
    }

    #[test]
    fn well_formed_frames_come_out_whole_and_unmasked_in_any_split() {
        let mut stream = frame(0x81, 5, true);
        stream.extend(frame(0x02, 300, true));
        stream.extend(frame(0x80, 70000, true));
        stream.extend(frame(0x89, 125, true));
        stream.extend(frame(0x88, 2, true));
        let expected = [
            (true, OpCode::Text, 5),
            (false, OpCode::Binary, 300),
            (true, OpCode::Continuation, 70000),
            (true, OpCode::Ping, 125),
            (true, OpCode::Close, 2),
        ];
        for step in [stream.len(), 1, 7, 1000] {
            let mut r = FrameReader::new(1 << 20, Bytes::new());
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                r.feed(chunk);
                while let Some(f) = r.parse().unwrap() {
                    assert!(f.payload.iter().all(|&b| b == b'x'), "unmasked");
                    got.push((f.fin, f.opcode, f.payload.len()));
                }
            }
            assert_eq!(got, expected, "fed {step} bytes at a time");
            assert_eq!(r.buf.capacity(), 0, "nothing kept once every frame is out");
        }
    }

    #[test]
    fn bytes_that_came_with_the_upgrade_are_read_first() {
        let mut r = FrameReader::new(100, Bytes::from(frame(0x82, 3, true)));
        let f = r.parse().unwrap().unwrap();
        assert_eq!((f.opcode, &f.payload[..]), (OpCode::Binary, &b"xxx"[..]));
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
        assert_eq!(code(&huge, max), Some(1009), "4 GiB header, nothing read");
        let mut top = vec![0x82, 0xFF];
        top.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(code(&top, max), Some(1002), "top bit");
        assert_eq!(code(&frame(0x82, max, true), max), None, "the limit itself");
    }

    #[test]
    fn a_violation_is_found_from_the_first_bytes_that_show_it() {
        assert_eq!(code(&[0x83], 100), Some(1002));
        assert_eq!(code(&[0x81, 0x05], 100), Some(1002));
        assert_eq!(code(&[0x82, 0xFE, 0x10, 0x00], 100), Some(1009));
    }

    /// The frames read (fin, opcode, payload), then the close code of a violation if one
    /// stopped the reader.
    type Outcome = (Vec<(bool, OpCode, Vec<u8>)>, Option<u16>);

    /// Everything the reader makes of `bytes` fed in chunks of the given sizes.
    fn read_all(bytes: &[u8], chunks: &[usize], max: usize) -> Outcome {
        let mut r = FrameReader::new(max, Bytes::new());
        let mut frames = Vec::new();
        let mut rest = bytes;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            r.feed(&rest[..n]);
            rest = &rest[n..];
            loop {
                match r.parse() {
                    Ok(Some(f)) => frames.push((f.fin, f.opcode, f.payload.to_vec())),
                    Ok(None) => break,
                    Err(v) => return (frames, Some(v.code)),
                }
            }
        }
        (frames, None)
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_in_any_chunks_read_alike_and_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            chunks in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let whole = read_all(&bytes, &[bytes.len().max(1)], 256);
            let split = read_all(&bytes, &chunks, 256);
            proptest::prop_assert_eq!(whole, split);
        }

        #[test]
        fn well_formed_frames_come_back_as_sent(
            payloads in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..6),
            mask in proptest::prelude::any::<[u8; 4]>(),
            chunks in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let stream: Vec<u8> = payloads
                .iter()
                .flat_map(|p| raw_frame(0x82, p, Some(mask)))
                .collect();
            let (frames, violation) = read_all(&stream, &chunks, 1 << 16);
            proptest::prop_assert_eq!(violation, None);
            let got: Vec<Vec<u8>> = frames.into_iter().map(|(_, _, p)| p).collect();
            proptest::prop_assert_eq!(got, payloads);
        }
    }

    #[test]
    fn close_codes_follow_rfc_6455() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(close_code_allowed(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!close_code_allowed(bad), "{bad}");
        }
    }
}
