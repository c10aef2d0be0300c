//! Connection tokens: JWTs that say who a connection is and what it may do.
//!
//! A client sends its token in `connect` (and a new one in `refresh`). The gateway checks the
//! signature against the keys from its configuration — an HMAC secret (HS256/384/512), an RSA
//! public key in PEM (RS256/384/512), an ECDSA public key in PEM (ES256/384), or a JWKS
//! document read from a file (keys picked by `kid`) — and reads these claims:
//!
//! | claim | |
//! |---|---|
//! | `sub` | the user; empty or missing means anonymous |
//! | `exp` | expiry (seconds since the Unix epoch); the connection is closed (3004) at that time unless refreshed. Optional. |
//! | `nbf`, `aud`, `iss` | checked when present (`aud`/`iss` against `--token-audience`/`--token-issuer`, which then also require them) |
//! | `channels` | channels, or `*` patterns, the connection may subscribe to |
//! | `publish` | channels, or `*` patterns, the connection may publish to |
//! | `info` | any JSON value, kept with the connection for presence |
//! | `subs` | channels the server subscribes the connection to as it connects (`subscribe` pushes follow the connect reply) |
//!
//! The algorithm in the token's header must be one its key is for: an RSA public key can never
//! be used as an HMAC secret, and `none` is never accepted. Keys embedded in a token's header
//! (`jwk`, `jku`) are never used.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

/// Most entries a token's `channels` or `publish` claim may hold.
pub const MAX_GRANTS: usize = 256;
/// Longest single entry (channel or pattern) in `channels` or `publish`, in bytes.
pub const MAX_GRANT_LEN: usize = 255;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Anything else: bad shape, bad signature, unknown key, wrong algorithm, bad claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The gateway has no keys to check tokens with.
    #[error("this gateway does not accept tokens: no token keys are configured")]
    NoKeys,
}

/// Why the token keys in the configuration could not be loaded.
#[derive(Debug, Error)]
pub enum KeyConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

/// Who a connection is and what its token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user (`sub`); empty for an anonymous connection.
    pub user: String,
    /// The token's `info` claim as JSON text, if any.
    pub info: Option<Bytes>,
    /// Channels or patterns the connection may subscribe to.
    pub subscribe: Vec<String>,
    /// Channels or patterns the connection may publish to.
    pub publish: Vec<String>,
    /// Channels the server subscribes the connection to as it connects (the `subs` claim).
    pub subs: Vec<String>,
    /// When the token expires (seconds since the Unix epoch), if it does.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// An anonymous connection: no user, no grants, no expiry.
    pub fn anonymous() -> Self {
        Self::default()
    }

    pub fn is_anonymous(&self) -> bool {
        self.user.is_empty()
    }

    /// Whether the token's `channels` claim grants subscribing to `channel`.
    pub fn grants_subscribe(&self, channel: &str) -> bool {
        self.subscribe.iter().any(|p| glob_match(p, channel))
    }

    /// Whether the token's `publish` claim grants publishing to `channel`.
    pub fn grants_publish(&self, channel: &str) -> bool {
        self.publish.iter().any(|p| glob_match(p, channel))
    }
}

/// Where token keys come from; the gateway's flags fill this in.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    pub hmac_secret: Option<String>,
    pub rsa_public_key: Option<PathBuf>,
    pub ecdsa_public_key: Option<PathBuf>,
    pub jwks: Option<PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Checks tokens against the configured keys.
pub struct TokenVerifier {
    keys: Vec<VerifyKey>,
    audience: Option<String>,
    issuer: Option<String>,
}

/// Fewest bytes of an HMAC secret, from a flag or a JWKS: 256 bits.
const MIN_HMAC_SECRET: usize = 32;
const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: [Algorithm; 3] = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
const ECDSA: [Algorithm; 2] = [Algorithm::ES256, Algorithm::ES384];

impl TokenVerifier {
    /// Loads every configured key. `Ok(None)` when none is configured.
    pub fn load(sources: &KeySources) -> Result<Option<Self>, KeyConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &sources.hmac_secret {
            if secret.len() < MIN_HMAC_SECRET {
                return Err(KeyConfigError::Invalid {
                    what: "--token-hmac-secret".into(),
                    message: "use at least 32 bytes (256 bits) of secret".into(),
                });
            }
            keys.push(VerifyKey {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                algorithms: HMAC.to_vec(),
            });
        }
        if let Some(path) = &sources.rsa_public_key {
            let pem = read(path)?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| invalid(path, e))?;
            keys.push(VerifyKey {
                kid: None,
                key,
                algorithms: RSA.to_vec(),
            });
        }
        if let Some(path) = &sources.ecdsa_public_key {
            let pem = read(path)?;
            let key = DecodingKey::from_ec_pem(&pem).map_err(|e| invalid(path, e))?;
            keys.push(VerifyKey {
                kid: None,
                key,
                algorithms: ECDSA.to_vec(),
            });
        }
        if let Some(path) = &sources.jwks {
            let text = read(path)?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| invalid(path, e))?;
            for jwk in &set.keys {
                let family = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => &RSA[..],
                    AlgorithmParameters::EllipticCurve(_) => &ECDSA[..],
                    AlgorithmParameters::OctetKey(octets) => {
                        // The same floor as --token-hmac-secret: a short shared secret can be
                        // guessed offline from any token signed with it.
                        let len = URL_SAFE_NO_PAD
                            .decode(octets.value.trim_end_matches('='))
                            .map_err(|e| invalid(path, e))?
                            .len();
                        if len < MIN_HMAC_SECRET {
                            return Err(KeyConfigError::Invalid {
                                what: path.display().to_string(),
                                message: format!(
                                    "the oct key {:?} has {len} bytes: use at least {MIN_HMAC_SECRET} (256 bits)",
                                    jwk.common.key_id.as_deref().unwrap_or("")
                                ),
                            });
                        }
                        &HMAC[..]
                    }
                    // Ed25519 and unknown key types: not among the supported algorithms.
                    _ => continue,
                };
                let algorithms = match jwk
                    .common
                    .key_algorithm
                    .and_then(|a| Algorithm::try_from(a).ok())
                {
                    Some(alg) if family.contains(&alg) => vec![alg],
                    Some(_) => continue,
                    None => family.to_vec(),
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(path, e))?;
                keys.push(VerifyKey {
                    kid: jwk.common.key_id.clone(),
                    key,
                    algorithms,
                });
            }
            if keys.is_empty() {
                return Err(KeyConfigError::Invalid {
                    what: path.display().to_string(),
                    message: "the JWKS holds no usable RSA, EC or HMAC key".into(),
                });
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            keys,
            audience: sources.audience.clone(),
            issuer: sources.issuer.clone(),
        }))
    }

    /// Checks a token and returns the identity it carries.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        // A `kid` the configuration knows picks that key; otherwise every key for the algorithm
        // is tried.
        let for_alg = || {
            self.keys
                .iter()
                .filter(|k| k.algorithms.contains(&header.alg))
        };
        let by_kid: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => for_alg()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect(),
            None => Vec::new(),
        };
        let candidates: Vec<&VerifyKey> = if by_kid.is_empty() {
            for_alg().collect()
        } else {
            by_kid
        };
        if candidates.is_empty() {
            return Err(TokenError::Invalid(format!(
                "no configured key for algorithm {:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let mut last = TokenError::Invalid("signature does not verify".into());
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return data.claims.into_identity(),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::InvalidSignature => {
                            TokenError::Invalid("signature does not verify".into())
                        }
                        _ => TokenError::Invalid(e.to_string()),
                    }
                }
            }
        }
        Err(last)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyConfigError> {
    std::fs::read(path).map_err(|source| KeyConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> KeyConfigError {
    KeyConfigError::Invalid {
        what: path.display().to_string(),
        message: e.to_string(),
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    subs: Vec<String>,
}

/// An RFC 7519 NumericDate: seconds since the Unix epoch, which may have a fraction (some
/// issuers write `1767225600.5`). Kept in whole seconds, rounded down: the connection closes
/// at most a second early, never late. Values past `u64` (as a float) are refused.
fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(value) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(whole) = value.as_u64() {
        return Ok(Some(whole));
    }
    match value.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f.floor() as u64)),
        _ => Err(serde::de::Error::custom(
            "exp must be a non-negative number of seconds",
        )),
    }
}

impl Claims {
    fn into_identity(self) -> Result<Identity, TokenError> {
        for (name, list) in [
            ("channels", &self.channels),
            ("publish", &self.publish),
            ("subs", &self.subs),
        ] {
            if list.len() > MAX_GRANTS {
                return Err(TokenError::Invalid(format!(
                    "claim {name} holds more than {MAX_GRANTS} entries"
                )));
            }
            if list.iter().any(|p| p.is_empty() || p.len() > MAX_GRANT_LEN) {
                return Err(TokenError::Invalid(format!(
                    "claim {name} holds an empty entry or one longer than {MAX_GRANT_LEN} bytes"
                )));
            }
        }
        Ok(Identity {
            user: self.sub,
            info: self
                .info
                .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes())),
            subscribe: self.channels,
            publish: self.publish,
            subs: self.subs,
            expires_at: self.exp,
        })
    }
}

/// Whether `name` matches `pattern`, where `*` in the pattern matches any run of characters
/// (including none, and including `:`) and every other character matches itself.
/// Linear in practice: at most `pattern.len() * name.len()` steps.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_exact_names_and_star_patterns() {
        assert!(glob_match("news", "news"));
        assert!(!glob_match("news", "news2"));
        assert!(glob_match("chat:*", "chat:room"));
        assert!(glob_match("chat:*", "chat:"));
        assert!(!glob_match("chat:*", "chatter:room"));
        assert!(glob_match("*", "anything:at:all"));
        assert!(glob_match("feed:*-live", "feed:abc-live"));
        assert!(!glob_match("feed:*-live", "feed:abc-live2"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn glob_on_a_pathological_pattern_stays_fast() {
        let pattern = format!("{}b", "*a".repeat(100));
        let name = "a".repeat(255);
        let start = std::time::Instant::now();
        assert!(!glob_match(&pattern, &name));
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn a_short_hmac_secret_is_refused() {
        let sources = KeySources {
            hmac_secret: Some("short".into()),
            ..KeySources::default()
        };
        assert!(matches!(
            TokenVerifier::load(&sources),
            Err(KeyConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn a_short_oct_key_in_a_jwks_is_refused_and_a_long_one_loads() {
        let dir = std::env::temp_dir().join(format!("chorus-oct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let load = |bytes: usize| {
            let path = dir.join(format!("jwks-{bytes}.json"));
            let k = URL_SAFE_NO_PAD.encode(vec![7u8; bytes]);
            let set = format!(r#"{{"keys":[{{"kty":"oct","kid":"k{bytes}","k":"{k}"}}]}}"#);
            std::fs::write(&path, set).unwrap();
            TokenVerifier::load(&KeySources {
                jwks: Some(path),
                ..KeySources::default()
            })
        };
        match load(16) {
            Err(KeyConfigError::Invalid { message, .. }) => {
                assert!(message.contains("16 bytes"), "{message}");
            }
            other => panic!("a 16-byte oct key must be refused, got {:?}", other.is_ok()),
        }
        assert!(load(32).unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_keys_means_no_verifier() {
        assert!(
            TokenVerifier::load(&KeySources::default())
                .unwrap()
                .is_none()
        );
    }
}
