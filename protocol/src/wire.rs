//! One entry point for both wire formats, so nothing else in Chorus branches on the format
//! more than once.
//!
//! A connection picks its [`Format`] at the WebSocket upgrade: JSON (text frames) by default,
//! protobuf (binary frames) when it asks for the `chorus-protobuf` subprotocol or passes
//! `?format=protobuf`.

use bytes::Bytes;
use prost::Message;

use crate::client::{self, push, server_frame};
use crate::codes::ErrorCode;
use crate::json;

/// The WebSocket subprotocol a protobuf client asks for.
pub const PROTOBUF_SUBPROTOCOL: &str = "chorus-protobuf";
/// The WebSocket subprotocol a JSON client may ask for (JSON is also the default).
pub const JSON_SUBPROTOCOL: &str = "chorus-json";

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON in WebSocket text frames.
    Json,
    /// Protobuf in WebSocket binary frames.
    Protobuf,
    /// The Pusher protocol (JSON text frames): a gateway's `/app/{key}` connections. Only
    /// server frames are encoded in it ([`crate::pusher::encode_frame`]); its sessions read
    /// Pusher messages themselves.
    Pusher,
}

impl Format {
    /// Every format, in a fixed order (index with [`Format::index`]).
    pub const ALL: [Format; 3] = [Format::Json, Format::Protobuf, Format::Pusher];

    /// The forms of Chorus's own protocol, which clients choose between at `/ws`.
    pub const CHORUS: [Format; 2] = [Format::Json, Format::Protobuf];

    /// A small dense index, for per-format caches of encoded frames.
    pub fn index(self) -> usize {
        match self {
            Format::Json => 0,
            Format::Protobuf => 1,
            Format::Pusher => 2,
        }
    }

    /// Whether frames of this format are WebSocket text frames (else binary).
    pub fn is_text(self) -> bool {
        self != Format::Protobuf
    }
}

/// A command that could not be decoded: the reply to send, addressed to `id` when the id
/// could be recovered (0 otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub id: u32,
    pub error: client::Error,
}

/// Decodes one command from one frame's payload.
pub fn decode_command(format: Format, bytes: &[u8]) -> Result<client::Command, DecodeError> {
    match format {
        Format::Json => json::decode_command(bytes),
        Format::Pusher => Err(DecodeError {
            id: 0,
            error: ErrorCode::BadRequest.with("a Pusher connection sends Pusher messages"),
        }),
        Format::Protobuf => {
            let cmd = client::Command::decode(bytes).map_err(|e| DecodeError {
                id: 0,
                error: ErrorCode::BadRequest.with(format!("invalid protobuf command: {e}")),
            })?;
            if cmd.id == 0 {
                return Err(DecodeError {
                    id: 0,
                    error: ErrorCode::BadRequest.with("command needs a non-zero id"),
                });
            }
            if cmd.body.is_none() {
                return Err(DecodeError {
                    id: cmd.id,
                    error: ErrorCode::UnknownCommand.with("unknown command"),
                });
            }
            Ok(cmd)
        }
    }
}

/// Encodes one command (used by clients and tests).
pub fn encode_command(format: Format, cmd: &client::Command) -> Bytes {
    match format {
        Format::Json | Format::Pusher => json::encode_command(cmd),
        Format::Protobuf => Bytes::from(cmd.encode_to_vec()),
    }
}

/// Encodes one server frame.
pub fn encode_frame(format: Format, frame: &client::ServerFrame) -> Bytes {
    match format {
        Format::Json => json::encode_frame(frame),
        Format::Protobuf => Bytes::from(frame.encode_to_vec()),
        Format::Pusher => crate::pusher::encode_frame(frame),
    }
}

/// Decodes one server frame (used by clients and tests).
pub fn decode_frame(format: Format, bytes: &[u8]) -> Result<client::ServerFrame, String> {
    match format {
        Format::Json => json::decode_frame(bytes).map_err(|e| e.to_string()),
        Format::Protobuf => client::ServerFrame::decode(bytes).map_err(|e| e.to_string()),
        Format::Pusher => Err("Pusher messages are not Chorus frames".into()),
    }
}

/// A reply frame.
pub fn reply(reply: client::Reply) -> client::ServerFrame {
    client::ServerFrame {
        frame: Some(server_frame::Frame::Reply(reply)),
    }
}

/// A push frame.
pub fn push(body: push::Body) -> client::ServerFrame {
    client::ServerFrame {
        frame: Some(server_frame::Frame::Push(client::Push { body: Some(body) })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{command, reply};

    fn publication(data: &[u8]) -> client::ServerFrame {
        push(push::Body::Publication(client::Publication {
            channel: "chat:room".into(),
            offset: 7,
            epoch: "e1".into(),
            data: Bytes::copy_from_slice(data),
        }))
    }

    #[test]
    fn json_command_round_trips_and_keeps_raw_data() {
        let cmd = json::decode_command(
            br#"{"id":3,"publish":{"channel":"chat:x","data":{"text":"hi"}}}"#,
        )
        .expect("valid command");
        assert_eq!(cmd.id, 3);
        let Some(command::Body::Publish(p)) = &cmd.body else {
            panic!("not a publish: {cmd:?}")
        };
        assert_eq!(&p.data[..], br#"{"text":"hi"}"#);
        assert!(!p.echo);
        let again = decode_command(Format::Json, &encode_command(Format::Json, &cmd));
        assert_eq!(again, Ok(cmd));
    }

    #[test]
    fn json_publish_data_is_encoded_byte_for_byte() {
        // Spacing, key order and a number beyond f64's precision survive the encoding.
        let data = br#"{ "z": 1,  "a": 12345678901234567890123 }"#;
        let cmd = client::Command {
            id: 7,
            body: Some(command::Body::Publish(client::PublishRequest {
                channel: "chat:x".into(),
                data: Bytes::from_static(data),
                echo: true,
            })),
        };
        let text = encode_command(Format::Json, &cmd);
        let needle = std::str::from_utf8(data).unwrap();
        assert!(
            std::str::from_utf8(&text).unwrap().contains(needle),
            "{text:?}"
        );
        assert_eq!(decode_command(Format::Json, &text), Ok(cmd));
    }

    #[test]
    fn json_errors_name_the_problem_and_keep_the_id() {
        let e = decode_command(Format::Json, b"{not json").unwrap_err();
        assert_eq!((e.id, e.error.code), (0, ErrorCode::BadRequest.code()));
        let e = decode_command(Format::Json, br#"{"id":9,"frobnicate":{}}"#).unwrap_err();
        assert_eq!((e.id, e.error.code), (9, ErrorCode::UnknownCommand.code()));
        let e = decode_command(Format::Json, br#"{"id":4,"subscribe":{}}"#).unwrap_err();
        assert_eq!((e.id, e.error.code), (4, ErrorCode::BadRequest.code()));
        let e = decode_command(Format::Json, br#"{"subscribe":{"channel":"a"}}"#).unwrap_err();
        assert_eq!((e.id, e.error.code), (0, ErrorCode::BadRequest.code()));
        let e = decode_command(
            Format::Json,
            br#"{"id":2,"ping":{},"subscribe":{"channel":"a"}}"#,
        )
        .unwrap_err();
        assert_eq!((e.id, e.error.code), (2, ErrorCode::BadRequest.code()));
    }

    #[test]
    fn protobuf_errors_are_typed() {
        let e = decode_command(Format::Protobuf, &[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::BadRequest.code());
        let no_body = client::Command { id: 5, body: None }.encode_to_vec();
        let e = decode_command(Format::Protobuf, &no_body).unwrap_err();
        assert_eq!((e.id, e.error.code), (5, ErrorCode::UnknownCommand.code()));
    }

    #[test]
    fn publication_is_the_same_in_both_formats() {
        for data in [&br#"{"n":1}"#[..], &[0u8, 159, 146, 150][..]] {
            let frame = publication(data);
            for format in Format::CHORUS {
                let bytes = encode_frame(format, &frame);
                let back = decode_frame(format, &bytes).expect("decodes");
                assert_eq!(back, frame, "{format:?}");
            }
        }
    }

    #[test]
    fn json_publication_embeds_json_data_and_base64s_binary() {
        let text = encode_frame(Format::Json, &publication(br#"{"n":1}"#));
        assert_eq!(
            &text[..],
            br#"{"pub":{"channel":"chat:room","offset":7,"epoch":"e1","data":{"n":1}}}"#
        );
        let bin = encode_frame(Format::Json, &publication(&[0, 1]));
        assert!(
            std::str::from_utf8(&bin)
                .unwrap()
                .contains(r#""b64data":"AAE=""#)
        );
    }

    #[test]
    fn json_publication_data_is_passed_through_byte_for_byte() {
        let raw = br#"{ "z": 1, "a": 12345678901234567890123, "x": 0.10000000000000000001 }"#;
        let text = encode_frame(Format::Json, &publication(raw));
        let text = std::str::from_utf8(&text).unwrap();
        assert!(text.contains(std::str::from_utf8(raw).unwrap()), "{text}");
    }

    #[test]
    fn json_reply_carries_id_and_result_or_error() {
        let ok = reply(client::Reply {
            id: 1,
            error: None,
            result: Some(reply::Result::Publish(client::PublishResult {
                offset: 2,
                epoch: "e".into(),
            })),
        });
        assert_eq!(
            &encode_frame(Format::Json, &ok)[..],
            br#"{"id":1,"publish":{"offset":2,"epoch":"e"}}"#
        );
        let err = reply(client::Reply {
            id: 2,
            error: Some(ErrorCode::BadChannel.with("nope")),
            result: None,
        });
        assert_eq!(
            &encode_frame(Format::Json, &err)[..],
            br#"{"id":2,"error":{"code":102,"message":"nope"}}"#
        );
    }

    #[test]
    fn presence_frames_round_trip_in_both_formats() {
        let member = client::ClientInfo {
            client: "gw-1-7".into(),
            user: "alice".into(),
            info: Bytes::from_static(br#"{"name":"Alice"}"#),
        };
        let frames = [
            push(push::Body::Join(client::Join {
                channel: "chat:room".into(),
                info: Some(member.clone()),
            })),
            push(push::Body::Leave(client::Leave {
                channel: "chat:room".into(),
                info: Some(member.clone()),
            })),
            push(push::Body::Subscribe(client::Subscribed {
                channel: "news".into(),
                offset: 4,
                epoch: "e".into(),
                ..Default::default()
            })),
            push(push::Body::Subscribe(client::Subscribed {
                channel: "news".into(),
                offset: 6,
                epoch: "e".into(),
                was_recovering: true,
                recovered: true,
                publications: vec![client::Publication {
                    channel: "news".into(),
                    offset: 5,
                    epoch: "e".into(),
                    data: Bytes::from_static(br#"{"n":5}"#),
                }],
            })),
            push(push::Body::Subscribe(client::Subscribed {
                channel: "news".into(),
                offset: 9,
                epoch: "f".into(),
                was_recovering: true,
                recovered: false,
                publications: Vec::new(),
            })),
            push(push::Body::Unsubscribe(client::Unsubscribed {
                channel: "news".into(),
                reason: "server".into(),
            })),
            reply(client::Reply {
                id: 3,
                error: None,
                result: Some(reply::Result::Presence(client::PresenceResult {
                    clients: vec![member.clone()],
                })),
            }),
            reply(client::Reply {
                id: 4,
                error: None,
                result: Some(reply::Result::PresenceStats(client::PresenceStatsResult {
                    num_clients: 2,
                    num_users: 1,
                })),
            }),
        ];
        for frame in frames {
            for format in Format::CHORUS {
                let bytes = encode_frame(format, &frame);
                assert_eq!(
                    decode_frame(format, &bytes).as_ref(),
                    Ok(&frame),
                    "{format:?}"
                );
            }
        }
        let join = encode_frame(
            Format::Json,
            &push(push::Body::Join(client::Join {
                channel: "chat:room".into(),
                info: Some(member),
            })),
        );
        let join: serde_json::Value = serde_json::from_slice(&join).unwrap();
        assert_eq!(
            join,
            serde_json::json!({"join": {"channel": "chat:room", "client": "gw-1-7",
                "user": "alice", "info": {"name": "Alice"}}})
        );
    }

    #[test]
    fn presence_commands_and_the_join_leave_option_round_trip() {
        for text in [
            &br#"{"id":1,"presence":{"channel":"chat:a"}}"#[..],
            br#"{"id":2,"presence_stats":{"channel":"chat:a"}}"#,
            br#"{"id":3,"subscribe":{"channel":"chat:a","join_leave":false}}"#,
        ] {
            let cmd = decode_command(Format::Json, text).expect("valid");
            let again = decode_command(Format::Json, &encode_command(Format::Json, &cmd));
            assert_eq!(again, Ok(cmd));
        }
        let Ok(client::Command {
            body: Some(command::Body::Subscribe(s)),
            ..
        }) = decode_command(Format::Json, br#"{"id":3,"subscribe":{"channel":"a"}}"#)
        else {
            panic!("not a subscribe")
        };
        assert!(!s.no_join_leave, "join/leave pushes are on unless refused");
    }

    #[test]
    fn connect_with_positions_to_recover_round_trips_and_a_bad_position_is_refused() {
        let text =
            br#"{"id":1,"connect":{"token":"t","recover":{"user:#al":{"offset":4,"epoch":"e"}}}}"#;
        let cmd = decode_command(Format::Json, text).expect("valid");
        let Some(command::Body::Connect(c)) = &cmd.body else {
            panic!("not a connect")
        };
        assert_eq!(
            c.recover.get("user:#al"),
            Some(&client::StreamPosition {
                offset: 4,
                epoch: "e".into()
            })
        );
        for format in Format::CHORUS {
            let again = decode_command(format, &encode_command(format, &cmd));
            assert_eq!(again.as_ref(), Ok(&cmd), "{format:?}");
        }
        let bad = decode_command(
            Format::Json,
            br#"{"id":2,"connect":{"recover":{"a":{"epoch":"e"}}}}"#,
        )
        .expect_err("a position needs its offset");
        assert_eq!((bad.id, bad.error.code), (2, ErrorCode::BadRequest as u32));
    }
}
