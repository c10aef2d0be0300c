//! The Pusher protocol's wire forms (version 7): what a pusher-js client receives, encoded
//! from Chorus's server frames, and the form a Pusher event takes as a publication's data.
//!
//! Every Pusher message is a JSON object `{"event", "channel"?, "data"}` in a text frame whose
//! `data` is itself a JSON text in a string. A publication on an app's channel
//! (`pusher-<app>:<name>`) is sent as the event its data names ([`Event`]); the channel is
//! given by its Pusher name ([`pusher_name`]). A `disconnect` push becomes `pusher:error` with
//! the Pusher close code ([`close_code`]) the connection is then closed with.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::client::{self, push, server_frame};
use crate::codes::close;

/// Prefix of a user's server-to-user channel in the Pusher protocol.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// A Pusher event as it travels on the bus: a publication's data, JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event: String,
    pub data: String,
    /// The sender of a client event on a presence channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl Event {
    pub fn to_bytes(&self) -> Bytes {
        // A struct of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// The event a publication's data carries. Data published by other means than the Pusher
    /// API (a native client, `/api/publish`) arrives as event `message` with the data as its
    /// JSON text.
    pub fn from_publication(data: &[u8]) -> Self {
        match serde_json::from_slice::<Event>(data) {
            Ok(event) => event,
            Err(_) => Event {
                event: "message".to_owned(),
                data: String::from_utf8_lossy(data).into_owned(),
                user_id: None,
            },
        }
    }
}

/// The Pusher name of an app's Chorus channel: what follows the namespace, with a user's
/// channel `#<id>` shown as `#server-to-user-<id>`.
pub fn pusher_name(chorus: &str) -> Cow<'_, str> {
    let name = chorus.split_once(':').map_or(chorus, |(_, name)| name);
    match name.strip_prefix('#') {
        Some(user) => format!("{USER_CHANNEL_PREFIX}{user}").into(),
        None => name.into(),
    }
}

/// The Pusher close code for a Chorus close code: 4000–4099 the client must not reconnect,
/// 4100–4199 it reconnects after a back-off, 4200–4299 it reconnects at once.
pub fn close_code(code: u16) -> u16 {
    match code {
        // Already Pusher's, or the WebSocket protocol's own (1002/1007/1009: pusher-js backs off).
        4000..=4299 | 1000..=1015 => code,
        close::SHUTDOWN | close::INSUFFICIENT_STATE => 4200,
        close::IDLE_TIMEOUT => 4201,
        close::SLOW_CONSUMER | close::RATE_LIMITED => 4100,
        close::CONNECTION_LIMIT => 4004,
        _ => 4200,
    }
}

/// One Pusher message: `data` is a JSON text, sent as a string.
pub fn message(event: &str, channel: Option<&str>, data: &str, user_id: Option<&str>) -> Bytes {
    #[derive(Serialize)]
    struct Message<'a> {
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        data: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
    }
    let m = Message {
        event,
        channel,
        data,
        user_id,
    };
    // Strings only: serializing cannot fail.
    serde_json::to_vec(&m).unwrap_or_default().into()
}

/// A `pusher:error` message.
pub fn error(code: Option<u16>, message_text: &str) -> Bytes {
    let data = serde_json::json!({ "code": code, "message": message_text }).to_string();
    message("pusher:error", None, &data, None)
}

/// A publication's event, as a pusher-js client receives it.
pub fn publication(channel: &str, data: &[u8]) -> Bytes {
    let event = Event::from_publication(data);
    message(
        &event.event,
        Some(&pusher_name(channel)),
        &event.data,
        event.user_id.as_deref(),
    )
}

/// Encodes a Chorus server frame for a Pusher connection: a publication as its event, a
/// `disconnect` as `pusher:error`. Nothing else is ever queued for one (its session answers
/// in Pusher's terms itself); anything else reads as an empty object.
pub fn encode_frame(frame: &client::ServerFrame) -> Bytes {
    let push = match &frame.frame {
        Some(server_frame::Frame::Push(push)) => push.body.as_ref(),
        _ => None,
    };
    match push {
        Some(push::Body::Publication(p)) => publication(&p.channel, &p.data),
        Some(push::Body::Disconnect(d)) => {
            let code = u16::try_from(d.code).map_or(4200, close_code);
            error(Some(code), &d.reason)
        }
        _ => Bytes::from_static(b"{}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn publications_become_pusher_events_on_their_pusher_channel() {
        let event = Event {
            event: "greet".into(),
            data: r#"{"hi":1}"#.into(),
            user_id: None,
        };
        let frame = wire::push(push::Body::Publication(client::Publication {
            channel: "pusher-1001:private-a".into(),
            offset: 3,
            epoch: "e".into(),
            data: event.to_bytes(),
        }));
        assert_eq!(
            encode_frame(&frame),
            r#"{"event":"greet","channel":"private-a","data":"{\"hi\":1}"}"#
        );
        assert_eq!(
            publication("pusher-1:#alice", br#"{"n":1}"#),
            r##"{"event":"message","channel":"#server-to-user-alice","data":"{\"n\":1}"}"##
        );
        let from_client = Event {
            user_id: Some("u1".into()),
            ..event
        };
        assert_eq!(
            publication("pusher-1:presence-r", &from_client.to_bytes()),
            r#"{"event":"greet","channel":"presence-r","data":"{\"hi\":1}","user_id":"u1"}"#
        );
    }

    #[test]
    fn disconnects_become_errors_with_pusher_close_codes() {
        let frame = wire::push(push::Body::Disconnect(client::Disconnect {
            code: u32::from(close::SHUTDOWN),
            reason: "bye".into(),
            reconnect: true,
        }));
        assert_eq!(
            encode_frame(&frame),
            r#"{"event":"pusher:error","data":"{\"code\":4200,\"message\":\"bye\"}"}"#
        );
        assert_eq!(close_code(close::SLOW_CONSUMER), 4100);
        assert_eq!(close_code(4009), 4009);
        assert_eq!(close_code(close::MESSAGE_TOO_BIG), 1009);
    }
}
