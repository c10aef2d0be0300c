//! Errors, named once and rendered for both protocols, so an HTTP caller and a gRPC caller of
//! the same operation learn the same thing: one [`ErrorCode`] decides the snake_case `code`
//! of the JSON body, the HTTP status and the gRPC status code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chorus_bus::BusError;
use serde::Serialize;
use thiserror::Error;
use utoipa::ToSchema;

/// The gRPC metadata key that carries the [`ErrorCode`] name of a failed call, so a gRPC
/// client can tell e.g. `too_large` from `bad_channel` (both INVALID_ARGUMENT).
pub const GRPC_ERROR_CODE_KEY: &str = "chorus-error-code";

/// Every JSON error answer: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// One of the error names (`bad_request`, `bad_channel`, `too_large`, `unauthorized`,
    /// `not_found`, `method_not_allowed`, `unavailable`, `position_lost`, `overloaded`,
    /// `limit_exceeded`, `internal`).
    pub code: String,
    pub message: String,
}

/// What went wrong with a request, as callers branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request could not be parsed or misses a field (HTTP 400, gRPC INVALID_ARGUMENT).
    BadRequest,
    /// A channel name breaks the channel-name rules (HTTP 400, gRPC INVALID_ARGUMENT).
    BadChannel,
    /// The data, the body or the channel list is over its limit (HTTP 413, gRPC
    /// INVALID_ARGUMENT).
    TooLarge,
    /// The API key is missing or wrong (HTTP 401, gRPC UNAUTHENTICATED).
    Unauthorized,
    /// No such HTTP route (HTTP 404, gRPC UNIMPLEMENTED).
    NotFound,
    /// The route exists but not for this HTTP method (HTTP 405).
    MethodNotAllowed,
    /// The bus (Redis) is unreachable or too slow; retry later (HTTP 503, gRPC UNAVAILABLE).
    Unavailable,
    /// A history read `since` a position of an epoch that is no longer the channel's: the
    /// publications after it are gone (HTTP 409, gRPC FAILED_PRECONDITION).
    PositionLost,
    /// Something failed inside broker-api or the bus (HTTP 500, gRPC INTERNAL).
    Internal,
    /// Too many publications in flight: broker-api pushes back rather than queue (HTTP 429
    /// with `Retry-After`, gRPC RESOURCE_EXHAUSTED). Retry after a short pause.
    Overloaded,
    /// The bus is at one of its bounds (the single-process in-memory bus's channels or
    /// idempotency keys): nothing was published (HTTP 429, gRPC RESOURCE_EXHAUSTED). Unlike
    /// `Overloaded` this is not a momentary queue: retry once old channels or keys expired,
    /// or raise the bound.
    LimitExceeded,
    /// A user-level command found none of the user's connections on any gateway (HTTP 404,
    /// gRPC NOT_FOUND).
    NotConnected,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::BadChannel,
        ErrorCode::TooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unavailable,
        ErrorCode::PositionLost,
        ErrorCode::Internal,
        ErrorCode::Overloaded,
        ErrorCode::LimitExceeded,
        ErrorCode::NotConnected,
    ];

    /// The code of a [`ErrorCode::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.name() == name)
    }

    /// The snake_case name used in JSON bodies and gRPC `ApiError.code`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::PositionLost => "position_lost",
            ErrorCode::Internal => "internal",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::NotConnected => "not_connected",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::BadChannel => StatusCode::BAD_REQUEST,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound | ErrorCode::NotConnected => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::PositionLost => StatusCode::CONFLICT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            // A bound of the server's resources is used up. Not 503: that is `unavailable`
            // (the bus unreachable), which load balancers and readiness read as "down"; the
            // server is up and serves every channel it holds.
            ErrorCode::Overloaded | ErrorCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::BadChannel
            | ErrorCode::TooLarge
            | ErrorCode::MethodNotAllowed => tonic::Code::InvalidArgument,
            ErrorCode::Unauthorized => tonic::Code::Unauthenticated,
            ErrorCode::NotFound => tonic::Code::Unimplemented,
            ErrorCode::NotConnected => tonic::Code::NotFound,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::PositionLost => tonic::Code::FailedPrecondition,
            ErrorCode::Internal => tonic::Code::Internal,
            ErrorCode::Overloaded | ErrorCode::LimitExceeded => tonic::Code::ResourceExhausted,
        }
    }
}

/// A failed request: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}: {message}", code.name())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// The JSON error body: `{"error":{"code":"…","message":"…"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(self.to_body()).unwrap_or_default()
    }

    /// The error as the JSON API answers it.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.name().to_owned(),
                message: self.message.clone(),
            },
        }
    }

    /// The gRPC status, with the code name in [`GRPC_ERROR_CODE_KEY`] metadata. Counted in
    /// the metrics only when it answers a call ([`count_errors`]), however often converted.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code.grpc_code(), self.message.clone());
        if let Ok(value) = self.code.name().parse() {
            status.metadata_mut().insert(GRPC_ERROR_CODE_KEY, value);
        }
        status
    }

    /// The gRPC `ApiError` message used inside a broadcast result.
    pub fn to_proto(&self) -> chorus_protocol::api::ApiError {
        chorus_protocol::api::ApiError {
            code: self.code.name().into(),
            message: self.message.clone(),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        let code = match &e {
            BusError::BadChannel(_) => ErrorCode::BadChannel,
            BusError::BadRequest(_) => ErrorCode::BadRequest,
            BusError::Unavailable(_) => ErrorCode::Unavailable,
            BusError::LimitExceeded(_) => ErrorCode::LimitExceeded,
            BusError::Config(_) | BusError::Protocol(_) => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

impl IntoResponse for ApiError {
    /// The JSON error response; it carries its [`ErrorCode`] as an extension, for
    /// [`count_errors`].
    fn into_response(self) -> Response {
        let mut response = (self.code.http_status(), Json(self.body())).into_response();
        response.extensions_mut().insert(self.code);
        if self.code == ErrorCode::Overloaded {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// Counts each failed call once, as it is answered: an HTTP error response carries its
/// [`ErrorCode`] as an extension, a gRPC error its name in [`GRPC_ERROR_CODE_KEY`]. Building
/// an error, or converting it to either protocol, counts nothing.
pub async fn count_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let code = response
        .extensions()
        .get::<ErrorCode>()
        .copied()
        .or_else(|| {
            let name = response.headers().get(GRPC_ERROR_CODE_KEY)?.to_str().ok()?;
            ErrorCode::from_name(name)
        });
    if let Some(code) = code {
        crate::metrics::error(code);
    }
    response
}

/// Why [`crate::serve`] could not run.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// No API key is configured; broker-api refuses to serve an unauthenticated API.
    #[error(
        "no API key configured: set --api-key or CHORUS_API_KEYS (comma-separated) so backend \
         applications can authenticate"
    )]
    NoApiKey,
    /// The listener or the server failed.
    #[error("broker-api server failed: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC reflection service could not be built from the embedded descriptors.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_protocol::channel::ChannelError;

    #[test]
    fn bus_errors_map_to_http_and_grpc_codes() {
        let cases = [
            (
                BusError::BadChannel(ChannelError::Empty),
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument,
                "bad_channel",
            ),
            (
                BusError::Unavailable("down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                "unavailable",
            ),
            (
                BusError::LimitExceeded("at most 2 channels".into()),
                StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::ResourceExhausted,
                "limit_exceeded",
            ),
            (
                BusError::Protocol("odd".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                tonic::Code::Internal,
                "internal",
            ),
        ];
        for (bus, http, grpc, name) in cases {
            let e = ApiError::from(bus);
            assert_eq!(e.code.http_status(), http);
            assert_eq!(e.to_status().code(), grpc);
            assert_eq!(e.code.name(), name);
            assert_eq!(
                e.to_status().metadata().get(GRPC_ERROR_CODE_KEY).unwrap(),
                name
            );
        }
    }

    #[test]
    fn every_code_is_found_by_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.name()), Some(code));
        }
        assert_eq!(ErrorCode::from_name("nonsense"), None);
    }

    #[test]
    fn unavailable_keeps_the_bus_reason() {
        let e = ApiError::from(BusError::Unavailable("connection refused".into()));
        assert!(e.message.contains("connection refused"), "{}", e.message);
    }
}
