//! The load generator's side of the client protocol, without allocation: WebSocket framing
//! (client frames masked, server frames not) and a protobuf walker that finds the few fields
//! the generator needs in a server frame (a reply's id and subscribe position, recovery outcome
//! and recovered publications; a publication's channel, offset, epoch and data) by borrowing
//! from the read buffer.

use bytes::{BufMut, BytesMut};
use chorus_protocol::client::{self, command};
use prost::Message;

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;
/// RSV1: a server frame compressed with permessage-deflate.
pub const COMPRESSED: u8 = 0x40;

thread_local! {
    static INFLATER: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(false));
}

/// Inflates one permessage-deflate message (no context takeover: each on its own) into `out`.
pub fn inflate(data: &[u8], out: &mut Vec<u8>) -> Result<(), flate2::DecompressError> {
    const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
    INFLATER.with(|cell| {
        let mut d = cell.borrow_mut();
        d.reset(false);
        out.clear();
        for input in [data, &TAIL[..]] {
            let start = d.total_in();
            while ((d.total_in() - start) as usize) < input.len() {
                if out.len() == out.capacity() {
                    out.reserve(out.capacity().max(4096));
                }
                let used = (d.total_in() - start) as usize;
                let before = (d.total_in(), d.total_out());
                d.decompress_vec(&input[used..], out, flate2::FlushDecompress::Sync)?;
                if (d.total_in(), d.total_out()) == before && out.len() < out.capacity() {
                    break;
                }
            }
        }
        Ok(())
    })
}

/// One complete frame at the start of `buf`: (opcode, payload range, frame length).
pub fn parse_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at): (usize, usize) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if masked {
        at += 4; // servers never mask; the ceiling server reads client frames with `unmask`
    }
    let end = at.checked_add(len)?;
    if buf.len() < end {
        return None;
    }
    Some((opcode, at..end, end))
}

/// Appends a frame header for a payload of `len` bytes; `mask` adds an all-zero masking key
/// (a valid masked client frame whose payload needs no transformation).
pub fn put_header(out: &mut BytesMut, opcode: u8, len: usize, mask: bool) {
    out.put_u8(0x80 | opcode);
    let m = if mask { 0x80 } else { 0 };
    if len < 126 {
        out.put_u8(m | len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(m | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(m | 127);
        out.put_u64(len as u64);
    }
    if mask {
        out.put_u32(0);
    }
}

/// A masked client frame.
pub fn client_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    put_header(out, opcode, payload.len(), true);
    out.put_slice(payload);
}

/// A client frame's payload with its mask applied (for the ceiling server).
pub fn unmask(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (op, range, end) = parse_frame(buf)?;
    let mut payload = buf[range.clone()].to_vec();
    if buf[1] & 0x80 != 0 {
        let key = &buf[range.start - 4..range.start];
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Some((op, payload, end))
}

/// The protobuf `connect` command.
pub fn connect_command(id: u32) -> Vec<u8> {
    client::Command {
        id,
        body: Some(command::Body::Connect(client::ConnectRequest::default())),
    }
    .encode_to_vec()
}

/// The protobuf `subscribe` command; `recover` asks for the publications after that
/// (offset, epoch) position.
pub fn subscribe_command(id: u32, channel: &str, recover: Option<(u64, &[u8])>) -> Vec<u8> {
    let (offset, epoch) = recover.unwrap_or((0, &[]));
    client::Command {
        id,
        body: Some(command::Body::Subscribe(client::SubscribeRequest {
            channel: channel.to_owned(),
            recover: recover.is_some(),
            offset,
            epoch: String::from_utf8_lossy(epoch).into_owned(),
            no_join_leave: false,
        })),
    }
    .encode_to_vec()
}

/// What a server frame says, as far as the generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Server<'a> {
    Reply {
        id: u32,
        error: bool,
        /// A subscribe reply's position: offset and epoch.
        offset: u64,
        epoch: &'a [u8],
        /// A subscribe reply's `recovered` (meaningful when the subscribe asked to recover).
        recovered: bool,
        /// A subscribe reply's recovered publications, in offset order.
        publications: Recovered<'a>,
    },
    Publication {
        channel: &'a [u8],
        offset: u64,
        epoch: &'a [u8],
        data: &'a [u8],
    },
    Disconnect {
        code: u32,
    },
    Other,
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7F) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Walks the fields of one message: (field number, varint value or 0, bytes or empty).
fn fields<'a>(buf: &'a [u8], mut f: impl FnMut(u32, u64, &'a [u8])) -> Option<()> {
    let mut at = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => f(field, varint(buf, &mut at)?, &[]),
            2 => {
                let len = varint(buf, &mut at)? as usize;
                let end = at.checked_add(len)?;
                f(field, 0, buf.get(at..end)?);
                at = end;
            }
            1 => at += 8,
            5 => at += 4,
            _ => return None,
        }
    }
    Some(())
}

/// Reads a protobuf `Publication`.
fn publication(buf: &[u8]) -> Server<'_> {
    let (mut channel, mut offset, mut epoch, mut data): (&[u8], u64, &[u8], &[u8]) =
        (&[], 0, &[], &[]);
    let _ = fields(buf, |f, v, b| match f {
        1 => channel = b,
        2 => offset = v,
        3 => epoch = b,
        4 => data = b,
        _ => {}
    });
    Server::Publication {
        channel,
        offset,
        epoch,
        data,
    }
}

/// The publications a subscribe reply recovered (its `SubscribeResult`, read on demand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered<'a>(&'a [u8]);

impl<'a> Recovered<'a> {
    /// Calls `f` with each recovered publication (a [`Server::Publication`]), in order.
    pub fn for_each(&self, mut f: impl FnMut(Server<'a>)) {
        let _ = fields(self.0, |field, _, b| {
            if field == 4 {
                f(publication(b));
            }
        });
    }
}

/// Reads a protobuf `ServerFrame`.
pub fn read_server(buf: &[u8]) -> Option<Server<'_>> {
    let mut out = Server::Other;
    fields(buf, |field, _, bytes| match field {
        1 => {
            let (mut id, mut error, mut offset, mut epoch) = (0, false, 0, &[][..]);
            let (mut recovered, mut publications) = (false, Recovered(&[]));
            let _ = fields(bytes, |f, v, b| match f {
                1 => id = v as u32,
                2 => error = true,
                4 => {
                    publications = Recovered(b);
                    let _ = fields(b, |f, v, b| match f {
                        1 => epoch = b,
                        2 => offset = v,
                        3 => recovered = v != 0,
                        _ => {}
                    });
                }
                _ => {}
            });
            out = Server::Reply {
                id,
                error,
                offset,
                epoch,
                recovered,
                publications,
            };
        }
        2 => {
            let _ = fields(bytes, |f, _, b| match f {
                1 => out = publication(b),
                2 => {
                    let mut code = 0;
                    let _ = fields(b, |f, v, _| {
                        if f == 1 {
                            code = v as u32;
                        }
                    });
                    out = Server::Disconnect { code };
                }
                _ => {}
            });
        }
        _ => {}
    })?;
    Some(out)
}

/// The JSON commands of the native JSON form (`?format=json`).
pub fn connect_json(id: u32) -> Vec<u8> {
    format!("{{\"id\":{id},\"connect\":{{}}}}").into_bytes()
}

/// A JSON `subscribe`; `recover` asks for the publications after that (offset, epoch).
pub fn subscribe_json(id: u32, channel: &str, recover: Option<(u64, &[u8])>) -> Vec<u8> {
    match recover {
        Some((offset, epoch)) => format!(
            "{{\"id\":{id},\"subscribe\":{{\"channel\":\"{channel}\",\"recover\":true,\"offset\":{offset},\"epoch\":\"{}\"}}}}",
            String::from_utf8_lossy(epoch)
        ),
        None => format!("{{\"id\":{id},\"subscribe\":{{\"channel\":\"{channel}\"}}}}"),
    }
    .into_bytes()
}

/// A Pusher `pusher:subscribe` to a public channel.
pub fn subscribe_pusher(channel: &str) -> Vec<u8> {
    format!("{{\"event\":\"pusher:subscribe\",\"data\":{{\"channel\":\"{channel}\"}}}}")
        .into_bytes()
}

/// The answer to a Pusher server's `pusher:ping`.
pub const PUSHER_PONG: &[u8] = b"{\"event\":\"pusher:pong\",\"data\":{}}";

/// The bytes after `"key":` in a JSON text (the first occurrence), found by scanning: the
/// generator's frames are Chorus's or Pusher's own, whose keys never appear inside values
/// that precede them.
fn after<'a>(buf: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = buf.windows(key.len()).position(|w| w == key)?;
    Some(&buf[at + key.len()..])
}

/// The string value after `key` (`"channel":"` …), without unescaping.
fn string_after<'a>(buf: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let rest = after(buf, key)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

fn number_after(buf: &[u8], key: &[u8]) -> Option<u64> {
    let rest = after(buf, key)?;
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    digits(&rest[..end])
}

/// Reads a native JSON server frame: a `pub` push or a reply. A reply's recovered
/// publications are not read (the JSON mode counts a recovery's gap as lost).
pub fn read_json(buf: &[u8]) -> Option<Server<'_>> {
    if buf.starts_with(b"{\"pub\":") {
        return Some(Server::Publication {
            channel: string_after(buf, b"\"channel\":\"")?,
            offset: number_after(buf, b"\"offset\":")?,
            epoch: string_after(buf, b"\"epoch\":\"").unwrap_or_default(),
            data: after(buf, b"\"data\":")?,
        });
    }
    if buf.starts_with(b"{\"id\":") {
        let id = number_after(buf, b"\"id\":")? as u32;
        let error = after(buf, b"\"error\":").is_some();
        return Some(Server::Reply {
            id,
            error,
            offset: number_after(buf, b"\"offset\":").unwrap_or(0),
            epoch: string_after(buf, b"\"epoch\":\"").unwrap_or_default(),
            recovered: after(buf, b"\"recovered\":true").is_some(),
            publications: Recovered(&[]),
        });
    }
    Some(Server::Other)
}

/// What a Pusher server frame says.
#[derive(Debug, PartialEq, Eq)]
pub enum PusherFrame<'a> {
    Established,
    Subscribed { channel: &'a [u8] },
    Error,
    Ping,
    Event { channel: &'a [u8], data: &'a [u8] },
    Other,
}

/// Reads a Pusher server frame (`{"event":…,"channel":…,"data":…}`).
pub fn read_pusher(buf: &[u8]) -> PusherFrame<'_> {
    let Some(event) = string_after(buf, b"\"event\":\"") else {
        return PusherFrame::Other;
    };
    match event {
        b"pusher:connection_established" => PusherFrame::Established,
        b"pusher_internal:subscription_succeeded" => match string_after(buf, b"\"channel\":\"") {
            Some(channel) => PusherFrame::Subscribed { channel },
            None => PusherFrame::Other,
        },
        b"pusher:error" | b"pusher:subscription_error" => PusherFrame::Error,
        b"pusher:ping" => PusherFrame::Ping,
        e if e.starts_with(b"pusher") => PusherFrame::Other,
        _ => match (
            string_after(buf, b"\"channel\":\""),
            string_after(buf, b"\"data\":\""),
        ) {
            (Some(channel), Some(data)) => PusherFrame::Event { channel, data },
            _ => PusherFrame::Other,
        },
    }
}

/// Message data for the Pusher mode: a Pusher event's data is a string, so the generator
/// sends text without quotes (nothing to escape), sequence number and send time at fixed
/// offsets, padded to the wanted size.
pub fn payload_text(seq: u64, sent_us: u64, size: usize) -> Vec<u8> {
    let mut s = format!("s={seq:020};t={sent_us:020};p=");
    let pad = size.max(DATA_MIN).saturating_sub(s.len());
    filler(&mut s, seq, pad);
    s.into_bytes()
}

/// The (sequence number, send time in µs) of [`payload_text`] data.
pub fn read_payload_text(data: &[u8]) -> Option<(u64, u64)> {
    Some((digits(data.get(2..22)?)?, digits(data.get(25..45)?)?))
}

/// The status code of a close frame's payload (none when it carries none).
pub fn close_code(payload: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]))
}

/// Message data as the generator publishes it: fixed-width JSON (numbers as zero-padded
/// strings) so that the receiver reads the sequence number and send time at fixed offsets,
/// padded to the wanted size.
pub const DATA_MIN: usize = 62;

pub fn payload(seq: u64, sent_us: u64, size: usize) -> Vec<u8> {
    let mut s = format!("{{\"s\":\"{seq:020}\",\"t\":\"{sent_us:020}\",\"p\":\"");
    let pad = size.max(DATA_MIN).saturating_sub(s.len() + 2);
    filler(&mut s, seq, pad);
    s.push_str("\"}");
    s.into_bytes()
}

/// Words for padding: text that compresses like chat messages do (about 2–3× with DEFLATE),
/// not like a run of one letter (which would flatter compression).
const WORDS: [&str; 32] = [
    "the", "message", "arrived", "from", "server", "channel", "user", "sent", "update", "price",
    "score", "room", "online", "status", "changed", "new", "order", "value", "time", "window",
    "alpha", "bravo", "charlie", "delta", "echo", "hello", "world", "again", "later", "quick",
    "brown", "fox",
];

/// Appends exactly `n` bytes of words chosen by a small generator seeded with `seq`.
fn filler(s: &mut String, seq: u64, n: usize) {
    let end = s.len() + n;
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while s.len() < end {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = WORDS[(x % WORDS.len() as u64) as usize];
        let room = end - s.len();
        s.push_str(&word[..word.len().min(room)]);
        if s.len() < end {
            s.push(' ');
        }
    }
}

fn digits(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

/// The (sequence number, send time in µs) of generator data.
pub fn read_payload(data: &[u8]) -> Option<(u64, u64)> {
    Some((digits(data.get(6..26)?)?, digits(data.get(33..53)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_protocol::client::push;
    use chorus_protocol::wire::{self, Format};

    #[test]
    fn payloads_round_trip_at_their_size() {
        let p = payload(42, 1_234_567, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(read_payload(&p), Some((42, 1_234_567)));
        assert_eq!(payload(1, 2, 10).len(), DATA_MIN);
        assert!(serde_json::from_slice::<serde_json::Value>(&p).is_ok());
    }

    #[test]
    fn server_frames_are_read_without_decoding() {
        let publication = wire::encode_frame(
            Format::Protobuf,
            &wire::push(push::Body::Publication(client::Publication {
                channel: "ch".into(),
                offset: 7,
                epoch: "e".into(),
                data: bytes::Bytes::from_static(b"hi"),
            })),
        );
        assert_eq!(
            read_server(&publication),
            Some(Server::Publication {
                channel: b"ch",
                offset: 7,
                epoch: b"e",
                data: b"hi"
            })
        );
        let reply = wire::encode_frame(
            Format::Protobuf,
            &wire::reply(client::Reply {
                id: 3,
                error: None,
                result: Some(client::reply::Result::Subscribe(client::SubscribeResult {
                    offset: 9,
                    ..Default::default()
                })),
            }),
        );
        let Some(Server::Reply {
            id: 3,
            error: false,
            offset: 9,
            epoch: b"",
            recovered: false,
            publications,
        }) = read_server(&reply)
        else {
            panic!("not the reply: {:?}", read_server(&reply));
        };
        publications.for_each(|p| panic!("no publication was recovered: {p:?}"));
    }

    #[test]
    fn a_recovering_subscribe_and_its_reply_are_read() {
        let cmd = client::Command::decode(&subscribe_command(4, "ch", Some((5, b"ep")))[..])
            .expect("a command");
        let Some(command::Body::Subscribe(req)) = cmd.body else {
            panic!("not a subscribe: {cmd:?}");
        };
        assert!(req.recover);
        assert_eq!(
            (req.channel.as_str(), req.offset, req.epoch.as_str()),
            ("ch", 5, "ep")
        );
        let recovered = |offset| client::Publication {
            channel: "ch".into(),
            offset,
            epoch: "ep".into(),
            data: bytes::Bytes::from(payload(offset, 11, 70)),
        };
        let reply = wire::encode_frame(
            Format::Protobuf,
            &wire::reply(client::Reply {
                id: 4,
                error: None,
                result: Some(client::reply::Result::Subscribe(client::SubscribeResult {
                    epoch: "ep".into(),
                    offset: 7,
                    recovered: true,
                    publications: vec![recovered(6), recovered(7)],
                    was_recovering: true,
                })),
            }),
        );
        let Some(Server::Reply {
            id: 4,
            error: false,
            offset: 7,
            epoch: b"ep",
            recovered: true,
            publications,
        }) = read_server(&reply)
        else {
            panic!("not the reply: {:?}", read_server(&reply));
        };
        let mut seen = Vec::new();
        publications.for_each(|p| {
            if let Server::Publication {
                channel: b"ch",
                offset,
                epoch: b"ep",
                data,
            } = p
            {
                seen.push((offset, read_payload(data)));
            }
        });
        assert_eq!(seen, [(6, Some((6, 11))), (7, Some((7, 11)))]);
        assert_eq!(close_code(&[0x0B, 0xBA, b'x']), Some(3002));
        assert_eq!(close_code(&[]), None);
    }

    #[test]
    fn json_and_pusher_frames_are_read_by_scanning() {
        let data = payload(5, 77, 80);
        let mut frame = br#"{"pub":{"channel":"ch","offset":42,"epoch":"ep","data":"#.to_vec();
        frame.extend_from_slice(&data);
        frame.extend_from_slice(b"}}");
        let Some(Server::Publication {
            channel: b"ch",
            offset: 42,
            epoch: b"ep",
            data: read,
        }) = read_json(&frame)
        else {
            panic!("not a publication: {:?}", read_json(&frame));
        };
        assert_eq!(read_payload(read), Some((5, 77)));
        let reply = br#"{"id":3,"subscribe":{"offset":9,"epoch":"e"}}"#;
        assert!(matches!(
            read_json(reply),
            Some(Server::Reply {
                id: 3,
                error: false,
                offset: 9,
                epoch: b"e",
                ..
            })
        ));
        let refused = br#"{"id":4,"error":{"code":103,"message":"no"}}"#;
        assert!(matches!(
            read_json(refused),
            Some(Server::Reply {
                id: 4,
                error: true,
                ..
            })
        ));

        let text = payload_text(6, 88, 90);
        assert_eq!(text.len(), 90);
        assert_eq!(read_payload_text(&text), Some((6, 88)));
        let mut event = br#"{"event":"bench","channel":"b-1","data":""#.to_vec();
        event.extend_from_slice(&text);
        event.extend_from_slice(b"\"}");
        let PusherFrame::Event {
            channel: b"b-1",
            data,
        } = read_pusher(&event)
        else {
            panic!("not an event: {:?}", read_pusher(&event));
        };
        assert_eq!(read_payload_text(data), Some((6, 88)));
        let ok =
            br#"{"event":"pusher_internal:subscription_succeeded","channel":"b-1","data":"{}"}"#;
        assert_eq!(read_pusher(ok), PusherFrame::Subscribed { channel: b"b-1" });
        let established =
            br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\"}"}"#;
        assert_eq!(read_pusher(established), PusherFrame::Established);
        assert_eq!(
            read_pusher(br#"{"event":"pusher:ping","data":{}}"#),
            PusherFrame::Ping
        );
    }

    #[test]
    fn frames_parse_across_lengths() {
        for len in [0, 125, 126, 65535, 65536] {
            let mut b = BytesMut::new();
            put_header(&mut b, OP_BINARY, len, false);
            b.resize(b.len() + len, 7);
            let (op, range, end) = parse_frame(&b).unwrap();
            assert_eq!((op, range.len(), end), (OP_BINARY, len, b.len()));
            assert!(parse_frame(&b[..b.len() - 1]).is_none() || len == 0);
        }
    }
}
