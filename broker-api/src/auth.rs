//! API-key authentication, shared by the HTTP routes and the gRPC service so both accept
//! exactly the same credentials: `Authorization: Bearer <key>` (HTTP header or gRPC metadata
//! `authorization`), checked against every configured key in constant time so response
//! timing does not reveal how much of a guess was right.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use crate::error::{ApiError, ErrorCode};

/// The configured API keys. Cheap to clone.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Arc<[Vec<u8>]>,
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        Self {
            keys: keys.into_iter().map(String::into_bytes).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `key` is one of the configured keys. Every key is compared, without stopping
    /// at the first match; each comparison is constant-time for keys of equal length (only the
    /// length of a key can leak, never its content).
    pub fn contains(&self, key: &[u8]) -> bool {
        let mut found = Choice::from(0);
        for k in self.keys.iter() {
            found |= k.as_slice().ct_eq(key);
        }
        found.into()
    }

    /// Checks an `Authorization` value (`Bearer <key>`; the scheme is case-insensitive).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(value) = authorization else {
            return Err(unauthorized(
                "missing API key: send `Authorization: Bearer <key>`",
            ));
        };
        let key = bearer_token(value)
            .ok_or_else(|| unauthorized("malformed Authorization: expected `Bearer <key>`"))?;
        if self.contains(key) {
            Ok(())
        } else {
            Err(unauthorized("invalid API key"))
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// The token of a `Bearer <token>` credential.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// axum middleware: lets a request through only with a valid API key.
pub async fn require_api_key(State(keys): State<ApiKeys>, req: Request, next: Next) -> Response {
    let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    match keys.check(header) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// tonic interceptor: fails a call UNAUTHENTICATED unless its metadata holds a valid API key.
#[derive(Clone)]
pub struct GrpcAuth(pub ApiKeys);

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = req.metadata().get("authorization").map(|v| v.as_bytes());
        self.0.check(value).map_err(|e| e.to_status())?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(["first-key".to_owned(), "second-key".to_owned()])
    }

    #[test]
    fn any_configured_key_is_accepted() {
        assert!(keys().check(Some(b"Bearer first-key")).is_ok());
        assert!(keys().check(Some(b"Bearer second-key")).is_ok());
        assert!(keys().check(Some(b"bearer  second-key ")).is_ok());
    }

    #[test]
    fn missing_malformed_or_wrong_keys_are_refused() {
        for value in [
            None,
            Some(&b"first-key"[..]),
            Some(b"Basic first-key"),
            Some(b"Bearer "),
            Some(b"Bearer first-ke"),
            Some(b"Bearer first-keyy"),
            Some(b"Bearer third-key"),
        ] {
            let err = keys().check(value).unwrap_err();
            assert_eq!(err.code, ErrorCode::Unauthorized, "{value:?}");
        }
    }
}
