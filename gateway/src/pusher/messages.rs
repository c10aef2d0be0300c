//! What a Pusher client sends, read into types, and the checks of its signatures.
//!
//! A client message is `{"event": name, "data": …, "channel"?: name}`; `data` is an object
//! for `pusher:*` events and any JSON (often a string holding JSON) for client events.

use serde::Deserialize;
use serde_json::value::RawValue;

use chorus_bus::pusher::App;

/// The largest `channel_data` / `user_data` a signature covers (Pusher limits user info to
/// 1 KB; ids and keys need a little more).
pub(crate) const MAX_USER_DATA: usize = 2048;

#[derive(Debug, Deserialize)]
pub(crate) struct Incoming<'a> {
    #[serde(borrow)]
    pub(crate) event: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Subscribe {
    pub(crate) channel: String,
    #[serde(default)]
    pub(crate) auth: Option<String>,
    #[serde(default)]
    pub(crate) channel_data: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Unsubscribe {
    pub(crate) channel: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Signin {
    pub(crate) auth: String,
    pub(crate) user_data: String,
}

/// A presence member's `channel_data`: `user_id` (a string or a number) and `user_info`.
#[derive(Debug)]
pub(crate) struct ChannelData {
    pub(crate) user_id: String,
    /// `user_info` as JSON text; empty when absent.
    pub(crate) user_info: String,
}

impl ChannelData {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            user_id: serde_json::Value,
            #[serde(borrow, default)]
            user_info: Option<&'a RawValue>,
        }
        let raw: Raw<'_> =
            serde_json::from_str(text).map_err(|e| format!("channel_data is not valid: {e}"))?;
        let user_id = match raw.user_id {
            serde_json::Value::String(s) if !s.is_empty() => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err("channel_data needs a user_id (a string or a number)".into()),
        };
        Ok(Self {
            user_id,
            user_info: raw
                .user_info
                .map(|i| i.get().to_owned())
                .unwrap_or_default(),
        })
    }
}

/// The signed-in user's `user_data`: its `id`.
pub(crate) fn user_id_of(user_data: &str) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Raw {
        id: serde_json::Value,
    }
    let raw: Raw =
        serde_json::from_str(user_data).map_err(|e| format!("user_data is not valid: {e}"))?;
    match raw.id {
        serde_json::Value::String(s) if !s.is_empty() => Ok(s),
        _ => Err("user_data needs an id (a non-empty string)".into()),
    }
}

/// Checks an `auth` value, `<key>:<signature>`, against the app's signature of `signed`.
pub(crate) fn check_auth(app: &App, auth: Option<&str>, signed: &str) -> Result<(), String> {
    let Some(auth) = auth else {
        return Err("this channel needs an auth signature".into());
    };
    let Some((key, signature)) = auth.split_once(':') else {
        return Err("auth must be <key>:<signature>".into());
    };
    if key != app.key {
        return Err("auth was signed for another app key".into());
    }
    if !app.verify(signed, signature) {
        return Err(format!(
            "invalid signature: expected HMAC-SHA256 of {signed:?} with the app's secret"
        ));
    }
    Ok(())
}

/// A client event's data as the string it is relayed as: a string stays as it is, any other
/// JSON value goes as its JSON text (pusher-js parses either back).
pub(crate) fn event_data(data: Option<&RawValue>) -> String {
    match data {
        None => String::new(),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => s,
            Err(_) => raw.get().to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_takes_string_or_number_ids() {
        let d = ChannelData::parse(r#"{"user_id":"u1","user_info":{"name":"A"}}"#).unwrap();
        assert_eq!(
            (d.user_id.as_str(), d.user_info.as_str()),
            ("u1", r#"{"name":"A"}"#)
        );
        let d = ChannelData::parse(r#"{"user_id":42}"#).unwrap();
        assert_eq!((d.user_id.as_str(), d.user_info.as_str()), ("42", ""));
        assert!(ChannelData::parse(r#"{"user_info":{}}"#).is_err());
        assert!(ChannelData::parse(r#"{"user_id":""}"#).is_err());
        assert!(ChannelData::parse("nope").is_err());
        assert_eq!(user_id_of(r#"{"id":"bob","name":"B"}"#).unwrap(), "bob");
        assert!(user_id_of(r#"{"id":7}"#).is_err());
    }

    #[test]
    fn auth_is_the_apps_key_and_signature() {
        let app = App::new("1", "key", "secret-of-one");
        let good = format!("key:{}", app.sign("1.2:private-a"));
        assert_eq!(check_auth(&app, Some(&good), "1.2:private-a"), Ok(()));
        assert!(check_auth(&app, Some(&good), "1.3:private-a").is_err());
        assert!(check_auth(&app, Some("other:abc"), "1.2:private-a").is_err());
        assert!(check_auth(&app, Some("nocolon"), "1.2:private-a").is_err());
        assert!(check_auth(&app, None, "1.2:private-a").is_err());
    }

    #[test]
    fn client_event_data_is_relayed_as_a_string() {
        let raw = |s: &str| serde_json::from_str::<&RawValue>(s).unwrap().to_owned();
        assert_eq!(event_data(Some(&raw(r#""{\"a\":1}""#))), r#"{"a":1}"#);
        assert_eq!(event_data(Some(&raw(r#"{"a":1}"#))), r#"{"a":1}"#);
        assert_eq!(event_data(None), "");
    }
}
