//! Channel namespaces: the per-namespace rules every service applies to a channel.
//!
//! A channel `chat:room` belongs to namespace `chat`; a channel without a `:` belongs to the
//! default namespace. The rules come from a TOML file (`--namespaces`), shared by broker-api
//! and every gateway so they agree on them:
//!
//! ```toml
//! [default]                 # channels without a namespace
//! history_size = 100
//! history_ttl = "5m"
//!
//! [namespace.chat]          # channels `chat:…`
//! history_size = 1000
//! history_ttl = "1h"
//! history_meta_ttl = "7d"
//! ```
//!
//! A field a section leaves out takes its built-in default (below), not the `[default]`
//! section's value: each section reads on its own.
//!
//! Permissions (see docs/security.md): `anonymous_subscribe`, `require_grant`,
//! `client_publish` and `presence` default to `false` in a file, the safe side. Once a file is
//! given, a channel whose namespace the file does not name is refused ("unknown namespace",
//! [`Namespaces::lookup`]). Without a file the built-in rules keep a development setup open:
//! every namespace exists, anonymous users may subscribe anywhere and clients may publish in
//! `chat:` ([`Namespaces::builtin`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use chorus_runtime::units::parse_duration;

/// Built-in number of publications kept per channel.
pub const DEFAULT_HISTORY_SIZE: u32 = 100;
/// Built-in time a channel's history outlives its last publication.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);
/// Built-in time a channel's position (epoch and offset) outlives its last publication.
pub const DEFAULT_HISTORY_META_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest history a namespace may keep per channel: recovery replays at most this many.
pub const MAX_HISTORY_SIZE: u32 = 100_000;

/// Where to read the namespace rules from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NamespacesConfig {
    /// TOML file with the channel namespaces and their rules (history, permissions). Without
    /// it, every channel gets the built-in defaults.
    #[arg(long = "namespaces", env = "CHORUS_NAMESPACES", value_name = "FILE")]
    pub namespaces_file: Option<PathBuf>,
}

impl NamespacesConfig {
    /// Loads the configured file, or the built-in defaults when there is none.
    pub fn load(&self) -> Result<Namespaces, NamespacesError> {
        match &self.namespaces_file {
            Some(path) => Namespaces::load(path),
            None => Ok(Namespaces::default()),
        }
    }
}

/// Why a namespaces file was refused.
#[derive(Debug, Error)]
pub enum NamespacesError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The rules of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceRules {
    /// Publications kept per channel for history and recovery; 0 keeps none (then a
    /// subscriber that lost its link is told `recovered: false`).
    pub history_size: u32,
    /// How long a channel's history and position outlive its last publication. After that the
    /// channel starts over with a new epoch.
    #[serde(deserialize_with = "duration")]
    pub history_ttl: Duration,
    /// How long a channel's position (epoch and top offset) outlives its last publication.
    /// Longer than `history_ttl`, so that a client that missed nothing recovers even after
    /// the history itself expired; once it is gone the channel starts a new epoch.
    #[serde(deserialize_with = "duration")]
    pub history_meta_ttl: Duration,
    /// Whether anonymous connections (no token, or a token with an empty `sub`) may subscribe.
    pub anonymous_subscribe: bool,
    /// Whether subscribing needs the connection's token to grant the channel (its `channels`
    /// claim names the channel or a pattern matching it). User-limited channels
    /// (`…#alice,bob`) are readable by the users they name either way.
    pub require_grant: bool,
    /// Whether clients may publish over their WebSocket to channels they may subscribe to.
    /// A token's `publish` claim allows publishing to the channels it grants either way.
    pub client_publish: bool,
    /// Whether presence (who is subscribed, with each token's `info`) is kept for the channels.
    pub presence: bool,
    /// Whether subscribers receive `join` and `leave` pushes as connections come and go
    /// (needs `presence`: joins and leaves are announced when presence entries change).
    pub join_leave: bool,
    /// Most presence entries (subscribed connections) one channel may hold; a subscribe past
    /// it is refused with `limit_exceeded`. Bounds every presence answer too.
    pub presence_max_clients: u32,
    /// Whether every authenticated connection is subscribed, as it connects, to its user's
    /// personal channel in this namespace: `<namespace>:#<user>` (a user-limited channel only
    /// that user may read). Only for named namespaces.
    pub personal_channel: bool,
}

/// Built-in bound on presence entries per channel.
pub const DEFAULT_PRESENCE_MAX_CLIENTS: u32 = 1000;
/// Largest `presence_max_clients` a namespace may set.
pub const MAX_PRESENCE_MAX_CLIENTS: u32 = 100_000;

impl Default for NamespaceRules {
    fn default() -> Self {
        Self {
            history_size: DEFAULT_HISTORY_SIZE,
            history_ttl: DEFAULT_HISTORY_TTL,
            history_meta_ttl: DEFAULT_HISTORY_META_TTL,
            anonymous_subscribe: false,
            require_grant: false,
            client_publish: false,
            presence: false,
            join_leave: false,
            presence_max_clients: DEFAULT_PRESENCE_MAX_CLIENTS,
            personal_channel: false,
        }
    }
}

/// A channel whose namespace the namespaces file does not name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown namespace {0:?}")]
pub struct UnknownNamespace(pub String);

/// Every namespace's rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Namespaces {
    /// Rules of channels without a namespace.
    pub default: NamespaceRules,
    /// Rules by namespace name.
    #[serde(rename = "namespace")]
    pub named: BTreeMap<String, NamespaceRules>,
    /// Whether a namespace not in `named` is refused ([`Namespaces::lookup`]). True for rules
    /// read from a file, false for the built-in ones.
    #[serde(skip)]
    pub closed: bool,
}

impl Default for Namespaces {
    /// The built-in rules, used when no file is given: see [`Namespaces::builtin`].
    fn default() -> Self {
        Self::builtin()
    }
}

impl Namespaces {
    /// Reads and checks a TOML namespaces file.
    pub fn load(path: &Path) -> Result<Self, NamespacesError> {
        let text = std::fs::read_to_string(path).map_err(|source| NamespacesError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| NamespacesError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// The rules without a file: every namespace exists with the default namespace's rules
    /// (anonymous subscribe allowed, no client publish), and clients may publish in `chat:`.
    /// A development setup; production gives a file.
    pub fn builtin() -> Self {
        let open = NamespaceRules {
            anonymous_subscribe: true,
            ..NamespaceRules::default()
        };
        let chat = NamespaceRules {
            client_publish: true,
            presence: true,
            join_leave: true,
            ..open.clone()
        };
        Self {
            default: open,
            named: BTreeMap::from([("chat".to_owned(), chat)]),
            closed: false,
        }
    }

    /// Parses and checks the TOML text of a namespaces file.
    pub fn parse(text: &str) -> Result<Self, String> {
        // Fields a file leaves out take the safe defaults, not the built-in open rules.
        #[derive(Default, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct File {
            default: NamespaceRules,
            #[serde(rename = "namespace")]
            named: BTreeMap<String, NamespaceRules>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let parsed = Namespaces {
            default: file.default,
            named: file.named,
            closed: true,
        };
        parsed.check()?;
        Ok(parsed)
    }

    fn check(&self) -> Result<(), String> {
        for name in self.named.keys() {
            if chorus_protocol::channel::validate(&format!("{name}:x")).is_err() || name.is_empty()
            {
                return Err(format!(
                    "namespace {name:?}: names are 1-{} bytes of a-z, 0-9, _ and -",
                    chorus_protocol::channel::MAX_NAMESPACE_LEN
                ));
            }
        }
        let sections = std::iter::once(("default", &self.default))
            .chain(self.named.iter().map(|(n, r)| (n.as_str(), r)));
        for (name, rules) in sections {
            if rules.history_size > MAX_HISTORY_SIZE {
                return Err(format!(
                    "namespace {name:?}: history_size is at most {MAX_HISTORY_SIZE}"
                ));
            }
            if rules.history_size > 0 && rules.history_ttl < Duration::from_secs(1) {
                return Err(format!(
                    "namespace {name:?}: history_ttl must be at least 1s when history is kept"
                ));
            }
            if rules.personal_channel && name == "default" {
                return Err(
                    "[default]: personal_channel needs a named namespace (channels `ns:#user`)"
                        .into(),
                );
            }
            if rules.join_leave && !rules.presence {
                return Err(format!(
                    "namespace {name:?}: join_leave needs presence = true (joins and leaves are announced as presence changes)"
                ));
            }
            if rules.presence_max_clients == 0
                || rules.presence_max_clients > MAX_PRESENCE_MAX_CLIENTS
            {
                return Err(format!(
                    "namespace {name:?}: presence_max_clients is 1-{MAX_PRESENCE_MAX_CLIENTS}"
                ));
            }
            if rules.history_meta_ttl < rules.history_ttl.max(Duration::from_secs(1)) {
                return Err(format!(
                    "namespace {name:?}: history_meta_ttl must be at least history_ttl (and 1s)"
                ));
            }
        }
        Ok(())
    }

    /// The rules of the namespace `channel` belongs to, or why there are none: with a file, a
    /// namespace the file does not name is unknown. Use this to decide whether a client may
    /// use a channel.
    pub fn lookup(&self, channel: &str) -> Result<&NamespaceRules, UnknownNamespace> {
        let ns = chorus_protocol::channel::namespace(channel);
        if ns.is_empty() {
            return Ok(&self.default);
        }
        match self.named.get(ns) {
            Some(rules) => Ok(rules),
            None if self.closed => Err(UnknownNamespace(ns.to_owned())),
            None => Ok(&self.default),
        }
    }

    /// The rules of the namespace `channel` belongs to. A namespace the file does not name
    /// falls back to the default namespace's rules.
    pub fn rules(&self, channel: &str) -> &NamespaceRules {
        let ns = chorus_protocol::channel::namespace(channel);
        if ns.is_empty() {
            return &self.default;
        }
        self.named.get(ns).unwrap_or(&self.default)
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_rules_per_namespace_and_missing_fields_take_the_builtin_defaults() {
        let ns = Namespaces::parse(
            r#"
            [default]
            history_size = 10
            [namespace.chat]
            history_ttl = "1h"
            "#,
        )
        .unwrap();
        assert_eq!(ns.rules("news").history_size, 10);
        assert_eq!(ns.rules("chat:room").history_size, DEFAULT_HISTORY_SIZE);
        assert_eq!(ns.rules("chat:room").history_ttl, Duration::from_secs(3600));
        // Unnamed namespaces read as the default one.
        assert_eq!(ns.rules("other:x").history_size, 10);
    }

    #[test]
    fn no_file_means_builtin_defaults() {
        let ns = NamespacesConfig::default().load().unwrap();
        let rules = ns.rules("a:b");
        assert_eq!(rules.history_size, DEFAULT_HISTORY_SIZE);
        assert_eq!(rules.history_ttl, DEFAULT_HISTORY_TTL);
    }

    #[test]
    fn builtin_rules_are_open_for_development_and_let_clients_publish_in_chat_only() {
        let ns = Namespaces::builtin();
        for ch in ["news", "sports:x", "chat:room"] {
            let rules = ns.lookup(ch).unwrap();
            assert!(rules.anonymous_subscribe, "{ch}");
            assert!(!rules.require_grant, "{ch}");
        }
        assert!(ns.lookup("chat:room").unwrap().client_publish);
        assert!(!ns.lookup("news").unwrap().client_publish);
        assert!(!ns.lookup("sports:x").unwrap().client_publish);
    }

    #[test]
    fn a_file_defaults_permissions_to_closed_and_refuses_unknown_namespaces() {
        let ns = Namespaces::parse(
            r#"
            [namespace.chat]
            anonymous_subscribe = true
            client_publish = true
            presence = true
            [namespace.private]
            require_grant = true
            "#,
        )
        .unwrap();
        let default = ns.lookup("news").unwrap();
        assert!(!default.anonymous_subscribe && !default.client_publish && !default.presence);
        assert!(!default.require_grant);
        let chat = ns.lookup("chat:x").unwrap();
        assert!(chat.anonymous_subscribe && chat.client_publish && chat.presence);
        assert!(ns.lookup("private:x").unwrap().require_grant);
        assert_eq!(ns.lookup("other:x"), Err(UnknownNamespace("other".into())));
        assert_eq!(
            UnknownNamespace("other".into()).to_string(),
            "unknown namespace \"other\""
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            (
                "[default]\nhistory_size = 1000001",
                "history_size is at most",
            ),
            ("[default]\nhistory_ttl = \"soon\"", "invalid duration"),
            (
                "[default]\nhistory_ttl = \"0s\"",
                "history_ttl must be at least 1s",
            ),
            ("[namespace.Chat]\n", "namespace \"Chat\""),
            ("[default]\nhistroy_size = 3", "unknown field"),
        ];
        for (text, reason) in cases {
            let err = Namespaces::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text:?} gave {err:?}");
        }
        let missing = NamespacesConfig {
            namespaces_file: Some("/nonexistent/chorus.toml".into()),
        };
        assert!(matches!(missing.load(), Err(NamespacesError::Read { .. })));
    }
}
