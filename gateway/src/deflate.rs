//! permessage-deflate (RFC 7692): negotiation, and compressing and inflating one message.
//!
//! Chorus compresses each publication **once per wire format per gateway** and shares the
//! compressed frame between every subscriber that negotiated the extension. That needs every
//! message compressed on its own, so the server always answers with `server_no_context_takeover`
//! (no window carried from one message to the next). It also answers with
//! `client_no_context_takeover`, so a client's messages can be inflated on their own as well and
//! no connection keeps an inflate window (32 KiB) for its whole life: compressors and inflaters
//! are per thread, reset for each message. Small messages are not worth it and stay
//! uncompressed (`--compression-min-bytes`); a message's RSV1 bit says which it is, per message.
//!
//! Inflating is bounded: a client message that would inflate past `--max-message-size` is
//! refused with 1009 as soon as the bound is passed, so a small "zip bomb" costs at most the
//! bound in memory and time.

use std::cell::RefCell;

use bytes::Bytes;
use chorus_protocol::codes::close;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame_reader::Violation;

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";
/// The window a publication shared by every subscriber is compressed with.
pub(crate) const SHARED_WINDOW_BITS: u8 = 15;
/// The empty stored block every compressed message ends with, removed on the wire (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// The largest window the server may compress with (`server_max_window_bits`, 9–15).
    pub(crate) window_bits: u8,
}

impl Deflate {
    /// Whether this connection can take the compressed frames shared by every subscriber.
    pub(crate) fn shares(self) -> bool {
        self.window_bits == SHARED_WINDOW_BITS
    }
}

/// Counts a connection in `chorus_gateway_deflate_connections` while it lives.
pub(crate) struct Counted;

impl Counted {
    pub(crate) fn new() -> Self {
        crate::metrics::deflate_connections(1);
        Self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        crate::metrics::deflate_connections(-1);
    }
}

/// Picks the first `permessage-deflate` offer of the request's `Sec-WebSocket-Extensions`
/// values that Chorus can accept, and the response header value that accepts it. Offers with
/// unknown, repeated or invalid parameters are declined (RFC 7692 §5), as is
/// `server_max_window_bits=8`, which raw DEFLATE cannot honour.
pub(crate) fn negotiate<'a>(values: impl Iterator<Item = &'a str>) -> Option<(Deflate, String)> {
    values
        .flat_map(|v| v.split(','))
        .filter_map(|offer| accept(offer.trim()))
        .next()
}

fn accept(offer: &str) -> Option<(Deflate, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen = Vec::new();
    let mut window_bits = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => {
                window_bits = Some(window(v).filter(|b| *b >= 9)?);
            }
            // The client's own window: any size inflates with a 15-bit window.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    let mut response = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = window_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    let window_bits = window_bits.unwrap_or(SHARED_WINDOW_BITS);
    Some((Deflate { window_bits }, response))
}

/// A window size parameter: 8–15, digits only.
fn window(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

thread_local! {
    /// One compressor per thread and window size, reset for each message.
    static COMPRESSORS: RefCell<Vec<(u8, Compress)>> = const { RefCell::new(Vec::new()) };
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `payload` compressed as one message with a window of `window_bits` (9–15), without the
/// trailing `00 00 ff ff`.
pub(crate) fn compress(payload: &[u8], window_bits: u8) -> Bytes {
    COMPRESSORS.with(|cell| {
        let mut all = cell.borrow_mut();
        let i = match all.iter().position(|(b, _)| *b == window_bits) {
            Some(i) => i,
            None => {
                let c = Compress::new_with_window_bits(Compression::fast(), false, window_bits);
                all.push((window_bits, c));
                all.len() - 1
            }
        };
        let c = &mut all[i].1;
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let consumed = c.total_in() as usize;
            // Only fails on a stream error, which a fresh stream over a slice cannot have.
            let _ = c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync);
            if c.total_in() as usize == payload.len() && out.ends_with(&TAIL) {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        out.truncate(out.len() - TAIL.len());
        Bytes::from(out)
    })
}

/// Inflates one client message, refusing it with 1009 once it passes `max` bytes and with 1007
/// when it is not valid DEFLATE data.
pub(crate) fn inflate(payload: &[u8], max: usize) -> Result<Bytes, Violation> {
    const TOO_BIG: Violation = Violation {
        code: close::MESSAGE_TOO_BIG,
        reason: "message too big once inflated",
    };
    const BAD: Violation = Violation {
        code: close::INVALID_PAYLOAD,
        reason: "invalid compressed data",
    };
    INFLATER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let d = cell.get_or_insert_with(|| Decompress::new_with_window_bits(false, 15));
        d.reset(false);
        let mut out: Vec<u8> = Vec::with_capacity((payload.len() * 2).clamp(64, max.max(64)));
        for input in [payload, &TAIL[..]] {
            let start = d.total_in();
            loop {
                let used = (d.total_in() - start) as usize;
                if used == input.len() {
                    break;
                }
                if out.len() == out.capacity() {
                    if out.len() >= max {
                        return Err(TOO_BIG);
                    }
                    out.reserve((out.capacity()).min(max + 1 - out.len()));
                }
                let before = (d.total_in(), d.total_out());
                match d.decompress_vec(&input[used..], &mut out, FlushDecompress::Sync) {
                    Ok(Status::StreamEnd) if (d.total_in() - start) as usize != input.len() => {
                        // A final block followed by more bytes: not one message.
                        return Err(BAD);
                    }
                    Ok(_) => {}
                    Err(_) => return Err(BAD),
                }
                if out.len() > max {
                    return Err(TOO_BIG);
                }
                if (d.total_in(), d.total_out()) == before && out.len() < out.capacity() {
                    // No progress with room to write: the input ends mid-block.
                    break;
                }
            }
        }
        Ok(Bytes::from(out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str) -> Option<(Deflate, String)> {
        negotiate(std::iter::once(v))
    }

    #[test]
    fn offers_are_accepted_declined_or_skipped_as_rfc_7692_says() {
        let plain = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        let (d, r) = offer("permessage-deflate").unwrap();
        assert_eq!((d.window_bits, r.as_str()), (15, plain));
        // What browsers send.
        let (d, _) = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert!(d.shares());
        let (d, r) = offer("permessage-deflate; server_max_window_bits=10").unwrap();
        assert_eq!(d.window_bits, 10);
        assert!(r.ends_with("; server_max_window_bits=10"), "{r}");
        assert!(!d.shares());
        for declined in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=0x9",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; unknown",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(declined), None, "{declined}");
        }
        // The first acceptable offer wins, across header values and commas.
        let values = [
            "foo, permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=12, permessage-deflate",
        ];
        let (d, _) = negotiate(values.into_iter()).unwrap();
        assert_eq!(d.window_bits, 12);
    }

    #[test]
    fn a_message_round_trips_and_ends_without_the_sync_tail() {
        let text =
            br#"{"channel":"news","data":{"text":"hello hello hello hello hello"}}"#.repeat(40);
        for bits in [9, 12, 15] {
            let packed = compress(&text, bits);
            assert!(
                packed.len() < text.len() / 4,
                "{} of {}",
                packed.len(),
                text.len()
            );
            assert!(!packed.ends_with(&TAIL));
            assert_eq!(&inflate(&packed, text.len()).unwrap()[..], &text[..]);
        }
        assert_eq!(&inflate(&compress(b"", 15), 10).unwrap()[..], b"");
        // Compressed once, the same bytes for everyone: no state carried between messages.
        assert_eq!(compress(&text, 15), compress(&text, 15));
    }

    #[test]
    fn inflating_is_bounded_and_bad_data_is_refused() {
        // 10 MB of zeros compress to a few tens of KB: refused once past the bound, not after.
        let bomb = compress(&vec![0_u8; 10_000_000], 15);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let e = inflate(&bomb, 64 * 1024).unwrap_err();
        assert_eq!(e.code, close::MESSAGE_TOO_BIG);
        assert_eq!(
            inflate(&compress(&[7; 1000], 15), 1000).unwrap().len(),
            1000
        );
        assert_eq!(
            inflate(&compress(&[7; 1001], 15), 1000).unwrap_err().code,
            close::MESSAGE_TOO_BIG
        );
        let e = inflate(&[0xff, 0xff, 0xff, 0xff, 0xff], 1000).unwrap_err();
        assert_eq!(e.code, close::INVALID_PAYLOAD);
    }
}
