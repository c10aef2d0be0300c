//! The load generator's side of the client protocol, without allocation: WebSocket framing
//! (client frames masked, server frames not) and a protobuf walker that finds the few fields
//! the generator needs in a server frame (a reply's id and subscribe offset, a publication's
//! channel, offset and data) by borrowing from the read buffer.

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

/// The protobuf `subscribe` command.
pub fn subscribe_command(id: u32, channel: &str) -> Vec<u8> {
    client::Command {
        id,
        body: Some(command::Body::Subscribe(client::SubscribeRequest {
            channel: channel.to_owned(),
            ..Default::default()
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
        /// A subscribe reply's offset.
        offset: u64,
    },
    Publication {
        channel: &'a [u8],
        offset: u64,
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

/// Reads a protobuf `ServerFrame`.
pub fn read_server(buf: &[u8]) -> Option<Server<'_>> {
    let mut out = Server::Other;
    fields(buf, |field, _, bytes| match field {
        1 => {
            let (mut id, mut error, mut offset) = (0, false, 0);
            let _ = fields(bytes, |f, v, b| match f {
                1 => id = v as u32,
                2 => error = true,
                4 => {
                    let _ = fields(b, |f, v, _| {
                        if f == 2 {
                            offset = v;
                        }
                    });
                }
                _ => {}
            });
            out = Server::Reply { id, error, offset };
        }
        2 => {
            let _ = fields(bytes, |f, _, b| match f {
                1 => {
                    let (mut channel, mut offset, mut data): (&[u8], u64, &[u8]) = (&[], 0, &[]);
                    let _ = fields(b, |f, v, b| match f {
                        1 => channel = b,
                        2 => offset = v,
                        4 => data = b,
                        _ => {}
                    });
                    out = Server::Publication {
                        channel,
                        offset,
                        data,
                    };
                }
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
        assert_eq!(
            read_server(&reply),
            Some(Server::Reply {
                id: 3,
                error: false,
                offset: 9
            })
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
