//! Property tests: the decoders that read untrusted bytes — client commands in JSON and
//! protobuf, and bus envelopes — return a value or a typed error for every input, never panic.

use chorus_protocol::codes::ErrorCode;
use chorus_protocol::envelope::decode_envelope;
use chorus_protocol::wire::{self, Format};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// JSON objects shaped like commands: an id of any JSON type and one or more command keys
/// holding arbitrary bodies.
fn command_like() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("connect"),
        Just("subscribe"),
        Just("unsubscribe"),
        Just("publish"),
        Just("ping"),
        Just("history"),
        Just("refresh"),
        Just("other"),
    ];
    (
        json_value(),
        prop::collection::vec((key, json_value()), 1..3),
    )
        .prop_map(|(id, bodies)| {
            let mut obj = Map::new();
            obj.insert("id".into(), id);
            for (k, v) in bodies {
                obj.insert(k.into(), v);
            }
            Value::Object(obj)
        })
}

fn typed(code: u32) -> bool {
    code == ErrorCode::BadRequest.code() || code == ErrorCode::UnknownCommand.code()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn json_commands_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = wire::decode_command(Format::Json, &bytes) {
            prop_assert!(typed(e.error.code), "{e:?}");
        }
    }

    #[test]
    fn json_commands_from_arbitrary_json(v in json_value()) {
        let text = v.to_string();
        if let Err(e) = wire::decode_command(Format::Json, text.as_bytes()) {
            prop_assert!(typed(e.error.code), "{e:?}");
        }
    }

    #[test]
    fn json_commands_from_command_shaped_json(v in command_like()) {
        let text = v.to_string();
        match wire::decode_command(Format::Json, text.as_bytes()) {
            Ok(cmd) => {
                prop_assert!(cmd.id != 0);
                prop_assert!(cmd.body.is_some());
                // What decodes, encodes and decodes to the same command.
                let again = wire::decode_command(Format::Json, &wire::encode_command(Format::Json, &cmd));
                prop_assert_eq!(again.ok(), Some(cmd));
            }
            Err(e) => prop_assert!(typed(e.error.code), "{e:?}"),
        }
    }

    #[test]
    fn protobuf_commands_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        match wire::decode_command(Format::Protobuf, &bytes) {
            Ok(cmd) => {
                prop_assert!(cmd.id != 0);
                prop_assert!(cmd.body.is_some());
            }
            Err(e) => prop_assert!(typed(e.error.code), "{e:?}"),
        }
    }

    #[test]
    fn server_frames_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        // Clients' decoder (used by tests and SDKs): an error is a string, never a panic.
        let _ = wire::decode_frame(Format::Json, &bytes);
        let _ = wire::decode_frame(Format::Protobuf, &bytes);
    }

    #[test]
    fn bus_envelopes_from_arbitrary_bytes(
        channel in "[a-z:]{1,20}",
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Ok(env) = decode_envelope(&channel, &bytes) {
            prop_assert_eq!(env.channel, channel);
            prop_assert!(env.offset != 0 && !env.epoch.is_empty());
        }
    }
}

#[test]
fn refresh_round_trips_in_json() {
    use chorus_protocol::client::{self, command, reply};
    let cmd = wire::decode_command(Format::Json, br#"{"id":4,"refresh":{"token":"t"}}"#).unwrap();
    assert_eq!(
        cmd.body,
        Some(command::Body::Refresh(client::RefreshRequest {
            token: "t".into()
        }))
    );
    let e = wire::decode_command(Format::Json, br#"{"id":4,"refresh":{}}"#).unwrap_err();
    assert_eq!((e.id, e.error.code), (4, ErrorCode::BadRequest.code()));
    let frame = wire::reply(client::Reply {
        id: 4,
        error: None,
        result: Some(reply::Result::Refresh(client::RefreshResult {
            expires_at: 99,
        })),
    });
    let text = wire::encode_frame(Format::Json, &frame);
    assert_eq!(&text[..], br#"{"id":4,"refresh":{"expires_at":99}}"#);
    assert_eq!(wire::decode_frame(Format::Json, &text).unwrap(), frame);
}
