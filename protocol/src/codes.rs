//! Numbers a client sees: error codes in replies and close codes on the WebSocket.
//!
//! Error codes are stable: clients branch on them. docs/protocol.md lists each with its meaning.

use crate::client;

/// Error codes carried in a reply's `error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// Something failed inside the gateway; retrying may help.
    Internal = 100,
    /// The token is missing or invalid.
    Unauthorized = 101,
    /// The channel name breaks the channel-name rules.
    BadChannel = 102,
    /// The connection may not do this on this channel (e.g. publish where clients may not).
    PermissionDenied = 103,
    /// The command is not one the gateway knows.
    UnknownCommand = 104,
    /// The connection is already subscribed to the channel.
    AlreadySubscribed = 105,
    /// A per-connection limit was reached (e.g. channels per connection).
    LimitExceeded = 106,
    /// The command could not be decoded or misses a required field.
    BadRequest = 107,
    /// The bus (Redis) is unreachable; retry later.
    Unavailable = 108,
    /// A command other than `connect` arrived before `connect`.
    NotConnected = 109,
    /// `connect` arrived on a connection that is already connected.
    AlreadyConnected = 110,
    /// A frame of the wrong kind for the connection's format (binary on JSON, text on protobuf).
    WrongFrameType = 111,
    /// A history read `since` a position whose epoch is not the channel's current one: the
    /// publications after it are gone. Start again from the current position.
    UnrecoverablePosition = 112,
    /// The token's `exp` has passed (on `connect` or `refresh`): get a new token.
    TokenExpired = 113,
    /// The connection sends commands faster than its rate limit allows; slow down.
    RateLimited = 114,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        self as u32
    }

    /// An error with this code and a human-readable message.
    pub fn with(self, message: impl Into<String>) -> client::Error {
        client::Error {
            code: self.code(),
            message: message.into(),
        }
    }
}

/// WebSocket close codes the gateway uses. 1xxx are RFC 6455's; 3xxx are Chorus's own.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame held invalid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message or frame exceeded the gateway's maximum message size.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The gateway failed internally.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The gateway is shutting down; reconnect (to any gateway).
    pub const SHUTDOWN: u16 = 3000;
    /// Nothing was received from the client within the idle timeout; reconnect.
    pub const IDLE_TIMEOUT: u16 = 3001;
    /// The client read too slowly and its queue overflowed; reconnect and recover.
    pub const SLOW_CONSUMER: u16 = 3002;
    /// The gateway lost publications of a channel of the client's (its Redis data was lost or
    /// history no longer reached back); reconnect and subscribe with your positions, and
    /// the subscribe results say which channels could not be recovered.
    pub const INSUFFICIENT_STATE: u16 = 3003;
    /// The connection's token expired and no `refresh` with a new one arrived in time;
    /// reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 3004;
    /// No `connect` command arrived within the connect timeout after the upgrade.
    pub const CONNECT_TIMEOUT: u16 = 3005;
    /// The user already has the most connections allowed on this gateway.
    pub const CONNECTION_LIMIT: u16 = 3006;
    /// The client kept sending commands after being told it was over its rate limit.
    pub const RATE_LIMITED: u16 = 3007;
}
