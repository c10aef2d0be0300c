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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s.into_bytes()
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
