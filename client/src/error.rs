//! The error type of the client's handle methods.

use std::time::Duration;

use chorus_protocol::codes::ErrorCode;

/// Why a [`Client`](crate::Client) call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The gateway answered with an error (codes in `chorus_protocol::codes::ErrorCode`).
    #[error("the gateway refused: {code} {message}")]
    Server { code: u32, message: String },
    /// The connection was lost after the command was sent and before its reply: the command
    /// may or may not have taken effect (a publish may have been stored).
    #[error("the connection was lost before the reply")]
    Disconnected,
    /// No reply (or, while disconnected, no connection) within the command timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The client was closed (or its background task ended).
    #[error("the client is closed")]
    Closed,
    /// `subscribe` on a channel this client already subscribes to.
    #[error("already subscribed to {0}")]
    AlreadySubscribed(String),
    /// The channel was unsubscribed before its subscription became live.
    #[error("unsubscribed from {0} before the subscription became live")]
    Unsubscribed(String),
    /// Data a JSON connection cannot carry: JSON clients publish JSON text.
    #[error("a JSON connection publishes JSON values; this data is not valid JSON")]
    NotJson,
    /// Too many requests (1,024) wait for a connection already; retry once
    /// connected.
    #[error("{0} requests already wait for a connection")]
    TooManyWaiting(usize),
    /// The URL is not a `ws://` or `wss://` URL.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
}

impl Error {
    /// The gateway's error code, for [`Error::Server`].
    pub fn code(&self) -> Option<u32> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn server(e: chorus_protocol::client::Error) -> Self {
        Error::Server {
            code: e.code,
            message: e.message,
        }
    }
}

/// Whether a refused subscribe is worth retrying (with backoff) rather than final.
pub(crate) fn subscribe_retryable(code: u32) -> bool {
    code == ErrorCode::Unavailable.code()
        || code == ErrorCode::Internal.code()
        || code == ErrorCode::AlreadySubscribed.code()
}

/// Whether a refused `connect` means "do not try again" (bad credentials).
pub(crate) fn connect_fatal(code: u32) -> bool {
    code == ErrorCode::Unauthorized.code() || code == ErrorCode::PermissionDenied.code()
}
