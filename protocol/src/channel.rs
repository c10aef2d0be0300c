//! Channel-name rules, the single place that decides whether a name is valid.
//!
//! A channel is `name` or `namespace:name`. Names are 1–255 bytes of ASCII letters, digits and
//! `_ - . : @ # , = /`. The namespace (the part before the first `:`) is 1–64 bytes of lowercase
//! letters, digits, `_` and `-`. Braces are never allowed: every Redis key of a channel wraps the
//! channel in a `{...}` hash tag, and a brace inside the name would break that tag.

use thiserror::Error;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name contains {0:?}, allowed are ASCII letters, digits and _-.:@#,=/")]
    BadChar(char),
    #[error("channel namespace must be 1-{MAX_NAMESPACE_LEN} bytes of a-z, 0-9, _ and -")]
    BadNamespace,
    #[error("channel name after the namespace is empty")]
    EmptyName,
}

/// Checks a channel name against the rules above.
pub fn validate(channel: &str) -> Result<(), ChannelError> {
    if channel.is_empty() {
        return Err(ChannelError::Empty);
    }
    if channel.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    if let Some(c) = channel.chars().find(|c| !is_channel_char(*c)) {
        return Err(ChannelError::BadChar(c));
    }
    if let Some((ns, name)) = channel.split_once(':') {
        let ns_ok = !ns.is_empty()
            && ns.len() <= MAX_NAMESPACE_LEN
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ns_ok {
            return Err(ChannelError::BadNamespace);
        }
        if name.is_empty() {
            return Err(ChannelError::EmptyName);
        }
    }
    Ok(())
}

/// The namespace of a (valid) channel; `""` is the default namespace.
pub fn namespace(channel: &str) -> &str {
    channel.split_once(':').map_or("", |(ns, _)| ns)
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '#' | ',' | '=' | '/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_namespaced_names() {
        for ok in [
            "news",
            "chat:room-1",
            "a",
            "feed:user#42,43",
            "ns:a:b",
            "x.y/z@q=1",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate(&"a".repeat(MAX_CHANNEL_LEN)), Ok(()));
    }

    #[test]
    fn refuses_bad_names_with_the_reason() {
        assert_eq!(validate(""), Err(ChannelError::Empty));
        assert_eq!(
            validate(&"a".repeat(MAX_CHANNEL_LEN + 1)),
            Err(ChannelError::TooLong)
        );
        assert_eq!(validate("a{b}"), Err(ChannelError::BadChar('{')));
        assert_eq!(validate("has space"), Err(ChannelError::BadChar(' ')));
        assert_eq!(validate("é"), Err(ChannelError::BadChar('é')));
        assert_eq!(validate(":x"), Err(ChannelError::BadNamespace));
        assert_eq!(validate("Chat:x"), Err(ChannelError::BadNamespace));
        assert_eq!(validate("chat:"), Err(ChannelError::EmptyName));
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(namespace("chat:room:1"), "chat");
        assert_eq!(namespace("news"), "");
    }
}
