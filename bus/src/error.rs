//! What can go wrong on the bus, in terms callers can map to an HTTP status, a gRPC code or a
//! client error code.

use chorus_protocol::channel::ChannelError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BusError {
    /// The channel name breaks the channel-name rules.
    #[error("invalid channel: {0}")]
    BadChannel(#[from] ChannelError),
    /// The request is malformed in a way the bus checks (e.g. a bad idempotency key).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Redis could not be reached or did not answer in time. Retrying later may succeed.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The configuration is unusable (e.g. a malformed Redis URL).
    #[error("bus misconfigured: {0}")]
    Config(String),
    /// A bound of the bus was reached (the in-memory bus's channels or idempotency keys):
    /// this publish is refused, nothing was published. Retrying later may succeed once old
    /// channels or keys expire.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// Redis answered something the bus did not expect.
    #[error("unexpected reply from the bus: {0}")]
    Protocol(String),
}
