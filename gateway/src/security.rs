//! The gateway's security state and the checks sessions call: token authentication, channel
//! permissions, connection slots, the command rate and the session deadlines (connect timeout,
//! token expiry). The rules themselves live in [`crate::auth`], [`crate::permissions`],
//! [`crate::limits`] and [`crate::frame_reader`]; docs/security.md describes them for operators.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_bus::namespaces::Namespaces;
use chorus_protocol::client;
use chorus_protocol::codes::{ErrorCode, close};
use tokio::time::Instant;

use crate::auth::{Identity, KeyConfigError, TokenError, TokenVerifier};
use crate::clock::after;
use crate::config::GatewayConfig;
use crate::limits::{ConnectionSlots, RateLimiter, UserSlot, Verdict};
use crate::permissions;

/// Node-wide security state, built once from the configuration.
pub(crate) struct Security {
    verifier: Option<TokenVerifier>,
    allow_anonymous: bool,
    pub(crate) slots: Arc<ConnectionSlots>,
    pub(crate) allowed_origins: Vec<String>,
    connect_timeout: Duration,
    command_rate: u32,
    command_burst: u32,
    history_rate: u32,
    history_burst: u32,
}

impl Security {
    pub(crate) fn from_config(config: &GatewayConfig) -> Result<Self, KeyConfigError> {
        let verifier = TokenVerifier::load(&config.key_sources())?;
        if verifier.is_none() {
            tracing::warn!(
                "no token keys configured: every connection is anonymous (set --token-hmac-secret, --token-rsa-public-key, --token-ecdsa-public-key or --token-jwks)"
            );
        }
        Ok(Self {
            // Without keys nobody can authenticate, so anonymous is the only way in.
            allow_anonymous: config.allow_anonymous || verifier.is_none(),
            verifier,
            slots: ConnectionSlots::new(config.max_connections, config.max_connections_per_user),
            allowed_origins: config.allowed_origins.clone(),
            connect_timeout: config.connect_timeout,
            command_rate: config.command_rate,
            command_burst: config.command_burst,
            history_rate: config.history_rate,
            history_burst: config.history_burst,
        })
    }

    /// The identity a `connect` or `refresh` token gives.
    pub(crate) fn authenticate(&self, token: &str) -> Result<Identity, client::Error> {
        if token.is_empty() {
            return if self.allow_anonymous {
                Ok(Identity::anonymous())
            } else {
                Err(ErrorCode::Unauthorized.with("a token is required"))
            };
        }
        let Some(verifier) = &self.verifier else {
            return Err(ErrorCode::Unauthorized.with(TokenError::NoKeys.to_string()));
        };
        match verifier.verify(token) {
            Ok(id) if id.is_anonymous() && !self.allow_anonymous => Err(ErrorCode::Unauthorized
                .with("the token names no user (sub) and anonymous connections are not allowed")),
            Ok(id) => Ok(id),
            Err(TokenError::Expired) => Err(ErrorCode::TokenExpired.with("token expired")),
            Err(e) => Err(ErrorCode::Unauthorized.with(e.to_string())),
        }
    }

    /// A new session's security state.
    pub(crate) fn session(&self) -> SessionSecurity {
        SessionSecurity {
            identity: Identity::anonymous(),
            user_slot: None,
            limiter: RateLimiter::new(self.command_rate, self.command_burst),
            history_reads: RateLimiter::new(self.history_rate, self.history_burst),
            connect_deadline: after(self.connect_timeout),
            expires: None,
        }
    }
}

/// One session's security state.
pub(crate) struct SessionSecurity {
    pub(crate) identity: Identity,
    user_slot: Option<UserSlot>,
    limiter: RateLimiter,
    /// History reads (history commands, recovering subscribes): the costly commands, with a
    /// rate of their own inside the command rate.
    history_reads: RateLimiter,
    connect_deadline: Instant,
    expires: Option<Instant>,
}

/// What ends a session at a deadline.
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

impl SessionSecurity {
    /// Checks one command against the rate limit.
    pub(crate) fn rate(&mut self) -> Verdict {
        self.limiter.check()
    }

    /// Checks one history read against its rate: refused reads get error 114, and the
    /// connection stays (a client that keeps going is closed by the command rate).
    pub(crate) fn may_read_history(&mut self) -> Result<(), client::Error> {
        match self.history_reads.check() {
            Verdict::Allow => Ok(()),
            Verdict::Refuse | Verdict::Close => Err(ErrorCode::RateLimited
                .with("too many history reads (history, recovering subscribes): slow down")),
        }
    }

    /// The next deadline: `connect` not sent in time, or the token expiring.
    pub(crate) fn deadline(&self, connected: bool) -> Option<Deadline> {
        if !connected {
            return Some(Deadline {
                at: self.connect_deadline,
                code: close::CONNECT_TIMEOUT,
                reason: "no connect command in time",
            });
        }
        self.expires.map(|at| Deadline {
            at,
            code: close::TOKEN_EXPIRED,
            reason: "token expired",
        })
    }

    /// Takes on the identity of a successful `connect`, within the per-user connection limit.
    pub(crate) fn connect(
        &mut self,
        security: &Security,
        id: Identity,
    ) -> Result<(), client::Error> {
        let Some(slot) = security.slots.user(&id.user) else {
            tracing::info!(user = %id.user, "connection refused: too many connections for the user");
            return Err(
                ErrorCode::LimitExceeded.with("too many connections for this user on this gateway")
            );
        };
        self.user_slot = slot;
        self.expires = id.expires_at.map(expiry_instant);
        self.identity = id;
        Ok(())
    }

    /// Takes on a `refresh` token's identity: same user, new expiry and grants.
    pub(crate) fn refresh(&mut self, id: Identity) -> Result<client::RefreshResult, client::Error> {
        if id.user != self.identity.user {
            return Err(ErrorCode::Unauthorized.with("the token is for another user"));
        }
        self.expires = id.expires_at.map(expiry_instant);
        let result = client::RefreshResult {
            expires_at: id.expires_at.unwrap_or(0),
        };
        self.identity = id;
        Ok(result)
    }

    /// Whether this connection may subscribe to (or read the history of) `channel`, under
    /// the bus's namespace rules.
    pub(crate) fn may_subscribe(
        &self,
        ns: &Namespaces,
        channel: &str,
    ) -> Result<(), client::Error> {
        permissions::may_subscribe(ns, &self.identity, channel)
    }

    /// Whether this connection may publish to `channel`.
    pub(crate) fn may_publish(&self, ns: &Namespaces, channel: &str) -> Result<(), client::Error> {
        permissions::may_publish(ns, &self.identity, channel)
    }
}

/// The moment a token with `exp` (seconds since the Unix epoch) expires, on the tokio clock.
/// Saturating: issuers write `exp = u64::MAX` for "never", which no clock can add.
fn expiry_instant(exp: u64) -> Instant {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    after(Duration::from_secs(exp).saturating_sub(now_unix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_too_far_for_the_clock_is_a_century_away_not_a_panic() {
        let never = expiry_instant(u64::MAX);
        assert!(never > Instant::now() + Duration::from_secs(50 * 365 * 24 * 3600));
        let past = expiry_instant(1);
        assert!(past <= Instant::now());
    }
}
