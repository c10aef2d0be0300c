//! Pusher apps: what the gateway's Pusher protocol (`/app/{key}`) and broker-api's Pusher HTTP
//! API (`/apps/{id}/…`) share — the apps (id, key, secret, features, limits, webhook), how a
//! Pusher channel maps onto a Chorus channel, the signatures, and the form a Pusher event
//! takes on the bus.
//!
//! Apps come from a TOML file (`--pusher-apps`) and, for a single app, from flags or the
//! environment (`--pusher-app-id`/`-key`/`-secret`):
//!
//! ```toml
//! [[app]]
//! id = "1001"
//! key = "app-key"
//! secret = "app-secret"
//! client_events = true          # client-* events on private and presence channels
//! user_authentication = true    # pusher:signin and the user's server-to-user channel
//! webhook_url = "http://backend:3000/pusher/webhooks"
//! webhook_events = ["channel_occupied", "channel_vacated"]   # empty or absent: all
//! max_connections = 10000
//! ```
//!
//! Every app is a Chorus namespace of its own, `pusher-<id>`: the Pusher channel `private-a`
//! of app `1001` is the Chorus channel `pusher-1001:private-a`, so Pusher channels get the
//! same ordering, history and cross-gateway delivery as any other, and apps never see each
//! other's channels. A user's server-to-user channel `#server-to-user-<id>` is the
//! user-limited channel `pusher-1001:#<id>`.
//!
//! On the bus a Pusher event is a publication whose data is the JSON object
//! `{"event": name, "data": string}` ([`Event`]), so a native Chorus client subscribed to the
//! same channel sees the event too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

use crate::namespaces::{NamespaceRules, Namespaces};

/// Prefix of every app's namespace.
pub const NAMESPACE_PREFIX: &str = "pusher-";
/// Longest Pusher channel name (the protocol's limit).
pub const MAX_CHANNEL_NAME: usize = 164;
pub use chorus_protocol::pusher::USER_CHANNEL_PREFIX;

/// Where the Pusher apps come from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PusherConfig {
    /// TOML file of Pusher apps (`[[app]]` with id, key, secret, features, webhook, limits).
    /// Without apps the Pusher protocol and HTTP API are off.
    #[arg(long = "pusher-apps", env = "CHORUS_PUSHER_APPS", value_name = "FILE")]
    pub apps_file: Option<PathBuf>,
    /// One Pusher app's id, added to the file's apps (with `--pusher-app-key` and
    /// `--pusher-app-secret`; client events and user authentication on).
    #[arg(long = "pusher-app-id", env = "CHORUS_PUSHER_APP_ID", requires_all = ["app_key", "app_secret"])]
    pub app_id: Option<String>,
    /// That app's key (what pusher-js is given).
    #[arg(
        long = "pusher-app-key",
        env = "CHORUS_PUSHER_APP_KEY",
        requires = "app_id"
    )]
    pub app_key: Option<String>,
    /// That app's secret (what signs subscriptions and HTTP API calls).
    #[arg(
        long = "pusher-app-secret",
        env = "CHORUS_PUSHER_APP_SECRET",
        requires = "app_id"
    )]
    pub app_secret: Option<String>,
}

/// Why the Pusher apps could not be loaded.
#[derive(Debug, Error)]
pub enum AppsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Bad(String),
}

/// One Pusher app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app id of the HTTP API's paths (`/apps/{id}/…`): 1-56 bytes of a-z, 0-9, `_`, `-`.
    pub id: String,
    /// The key clients connect with (`/app/{key}`) and that signs HTTP API calls.
    pub key: String,
    /// The secret of the signatures.
    pub secret: String,
    /// Whether clients may trigger `client-*` events on private and presence channels.
    #[serde(default = "yes")]
    pub client_events: bool,
    /// Whether clients may sign in (`pusher:signin`) and get their server-to-user channel.
    #[serde(default = "yes")]
    pub user_authentication: bool,
    /// Where webhooks are POSTed; none when absent.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Which webhook events are sent; every kind when empty.
    #[serde(default)]
    pub webhook_events: Vec<String>,
    /// Pusher connections of this app per gateway (past it: error 4004 "over quota").
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Largest event data, in bytes, from a client or the HTTP API (past it: 413 / error).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Channels one HTTP event may name.
    #[serde(default = "default_max_event_channels")]
    pub max_event_channels: usize,
    /// Events in one HTTP batch.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// Client events one connection may send per second (the protocol's limit is 10).
    #[serde(default = "default_client_event_rate")]
    pub client_event_rate: u32,
    /// Presence members one presence channel may hold (the protocol's limit is 100).
    #[serde(default = "default_max_presence_members")]
    pub max_presence_members: u32,
}

fn yes() -> bool {
    true
}
fn default_max_connections() -> u32 {
    100_000
}
fn default_max_event_bytes() -> usize {
    10 * 1024
}
fn default_max_event_channels() -> usize {
    100
}
fn default_max_batch_events() -> usize {
    10
}
fn default_client_event_rate() -> u32 {
    10
}
fn default_max_presence_members() -> u32 {
    100
}

/// The kinds of webhook event an app may ask for.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

impl App {
    /// An app with the given credentials and the default features and limits.
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        Self {
            id: id.to_owned(),
            key: key.to_owned(),
            secret: secret.to_owned(),
            client_events: true,
            user_authentication: true,
            webhook_url: None,
            webhook_events: Vec::new(),
            max_connections: default_max_connections(),
            max_event_bytes: default_max_event_bytes(),
            max_event_channels: default_max_event_channels(),
            max_batch_events: default_max_batch_events(),
            client_event_rate: default_client_event_rate(),
            max_presence_members: default_max_presence_members(),
        }
    }

    /// The Chorus namespace of this app's channels.
    pub fn namespace(&self) -> String {
        format!("{NAMESPACE_PREFIX}{}", self.id)
    }

    /// The Chorus channel of the Pusher channel `name`, or why `name` is not a Pusher channel
    /// Chorus can carry.
    pub fn chorus_channel(&self, name: &str) -> Result<String, ChannelNameError> {
        if let Some(user) = name.strip_prefix(USER_CHANNEL_PREFIX) {
            // A user id reads as one user of a user-limited channel: no `,` (a list) or `#`.
            if user.contains(',') {
                return Err(ChannelNameError::Invalid);
            }
            check_name(user)?;
            return Ok(format!("{NAMESPACE_PREFIX}{}:#{user}", self.id));
        }
        if name.contains('#') {
            return Err(ChannelNameError::Reserved);
        }
        check_name(name)?;
        Ok(format!("{NAMESPACE_PREFIX}{}:{name}", self.id))
    }

    /// The Pusher name of one of this app's Chorus channels; `None` for another namespace's.
    pub fn pusher_channel<'c>(&self, chorus: &'c str) -> Option<std::borrow::Cow<'c, str>> {
        let rest = chorus.strip_prefix(NAMESPACE_PREFIX)?;
        let rest = rest.strip_prefix(self.id.as_str())?.strip_prefix(':')?;
        Some(match rest.strip_prefix('#') {
            Some(user) => format!("{USER_CHANNEL_PREFIX}{user}").into(),
            None => rest.into(),
        })
    }

    /// The user name under which a signed-in Pusher connection of this app is registered at
    /// its gateway, so that user-level commands (`terminate_connections`, the control
    /// channel's disconnect) reach exactly this app's connections of that user.
    pub fn control_user(&self, user_id: &str) -> String {
        format!("{NAMESPACE_PREFIX}{}:{user_id}", self.id)
    }

    /// `HMAC-SHA256(secret, message)` in lower-case hex: the signature of subscriptions
    /// (`socket_id:channel[:channel_data]`), sign-ins, HTTP API calls and webhooks.
    pub fn sign(&self, message: &str) -> String {
        sign(&self.secret, message)
    }

    /// Whether `signature` is this app's signature of `message` (compared in constant time).
    pub fn verify(&self, message: &str, signature: &str) -> bool {
        let Ok(given) = hex::decode(signature) else {
            return false;
        };
        let mut mac = mac(&self.secret);
        mac.update(message.as_bytes());
        mac.verify_slice(&given).is_ok()
    }

    /// Whether the app wants webhooks of this kind.
    pub fn wants_webhook(&self, kind: &str) -> bool {
        self.webhook_url.is_some()
            && (self.webhook_events.is_empty() || self.webhook_events.iter().any(|k| k == kind))
    }

    fn check(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty()
            && self.id.len()
                <= chorus_protocol::channel::MAX_NAMESPACE_LEN - NAMESPACE_PREFIX.len()
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(format!(
                "app id {:?}: 1-56 bytes of a-z, 0-9, _ and -",
                self.id
            ));
        }
        if self.key.is_empty() || self.key.contains('/') || self.key.contains('?') {
            return Err(format!(
                "app {}: the key must be non-empty, without / or ?",
                self.id
            ));
        }
        if self.secret.len() < 8 {
            return Err(format!(
                "app {}: the secret must be at least 8 bytes",
                self.id
            ));
        }
        if let Some(kind) = self
            .webhook_events
            .iter()
            .find(|k| !WEBHOOK_EVENTS.contains(&k.as_str()))
        {
            return Err(format!(
                "app {}: unknown webhook event {kind:?} (known: {})",
                self.id,
                WEBHOOK_EVENTS.join(", ")
            ));
        }
        if let Some(url) = &self.webhook_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "app {}: webhook_url must be http:// or https://",
                self.id
            ));
        }
        if self.max_event_channels == 0 || self.max_batch_events == 0 || self.max_event_bytes == 0 {
            return Err(format!("app {}: limits must be at least 1", self.id));
        }
        Ok(())
    }
}

/// Why a Pusher channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelNameError {
    #[error("channel names are 1-164 characters of a-z, A-Z, 0-9, _ - = @ , .")]
    Invalid,
    #[error("# in a channel name is reserved (#server-to-user-<id> channels)")]
    Reserved,
}

/// Pusher's channel-name rules, less `;` (which Chorus channel names cannot carry).
fn check_name(name: &str) -> Result<(), ChannelNameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(ChannelNameError::Invalid)
    }
}

/// What a Pusher channel's name says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    /// `private-…`: subscribing needs the app's signature.
    Private,
    /// `private-encrypted-…`: like private; the server relays what it cannot read.
    PrivateEncrypted,
    /// `presence-…`: signed with the member's `channel_data`; members are tracked.
    Presence,
    /// `#server-to-user-…`: only the signed-in user.
    User,
}

impl ChannelKind {
    pub fn of(name: &str) -> Self {
        if name.starts_with("private-encrypted-") {
            Self::PrivateEncrypted
        } else if name.starts_with("private-") {
            Self::Private
        } else if name.starts_with("presence-") {
            Self::Presence
        } else if name.starts_with(USER_CHANNEL_PREFIX) {
            Self::User
        } else {
            Self::Public
        }
    }

    /// Whether the channel is a cache channel (`cache-…`, `private-cache-…`,
    /// `private-encrypted-cache-…`, `presence-cache-…`): a subscriber gets its last event
    /// right after subscribing, or `pusher:cache_miss`.
    pub fn is_cache(name: &str) -> bool {
        [
            "cache-",
            "private-cache-",
            "private-encrypted-cache-",
            "presence-cache-",
        ]
        .iter()
        .any(|p| name.starts_with(p))
    }

    /// Whether subscribing needs a signature.
    pub fn needs_auth(self) -> bool {
        !matches!(self, Self::Public)
    }

    /// Whether clients may send `client-*` events on it.
    pub fn takes_client_events(self) -> bool {
        matches!(
            self,
            Self::Private | Self::PrivateEncrypted | Self::Presence
        )
    }
}

pub use chorus_protocol::pusher::Event;

/// A webhook event (Pusher's names and fields), produced once per event in the cluster and
/// POSTed in batches to the app's `webhook_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum WebhookEvent {
    ChannelOccupied {
        channel: String,
    },
    ChannelVacated {
        channel: String,
    },
    MemberAdded {
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        channel: String,
        user_id: String,
    },
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
}

impl WebhookEvent {
    /// The kind, as `webhook_events` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ChannelOccupied { .. } => "channel_occupied",
            Self::ChannelVacated { .. } => "channel_vacated",
            Self::MemberAdded { .. } => "member_added",
            Self::MemberRemoved { .. } => "member_removed",
            Self::ClientEvent { .. } => "client_event",
        }
    }
}

/// A webhook event of one app, as the webhook queue holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// The queue's id of the record (a Redis stream id), to acknowledge it by.
    pub id: String,
    pub app: String,
    pub event: WebhookEvent,
}

/// Most webhook events the queue holds; past it the oldest go (counted when noticed by a
/// reader as a gap it cannot know the size of, so the bound is generous).
pub const WEBHOOK_QUEUE_MAX: usize = 100_000;

/// Every configured Pusher app, by id and by key.
#[derive(Debug, Clone, Default)]
pub struct Apps {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

impl Apps {
    /// Loads the apps the configuration names (none: an empty set, Pusher off).
    pub fn load(config: &PusherConfig) -> Result<Self, AppsError> {
        let mut apps = match &config.apps_file {
            Some(path) => Self::read(path)?,
            None => Vec::new(),
        };
        if let (Some(id), Some(key), Some(secret)) =
            (&config.app_id, &config.app_key, &config.app_secret)
        {
            apps.push(App::new(id, key, secret));
        }
        Self::from_apps(apps).map_err(AppsError::Bad)
    }

    fn read(path: &Path) -> Result<Vec<App>, AppsError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            app: Vec<App>,
        }
        let text = std::fs::read_to_string(path).map_err(|source| AppsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: File = toml::from_str(&text).map_err(|e| AppsError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(file.app)
    }

    /// Checks and indexes `apps`: ids and keys must be unique.
    pub fn from_apps(apps: Vec<App>) -> Result<Self, String> {
        let mut out = Self::default();
        for app in apps {
            app.check()?;
            let app = Arc::new(app);
            if out.by_id.insert(app.id.clone(), app.clone()).is_some() {
                return Err(format!("two apps have the id {:?}", app.id));
            }
            if out.by_key.insert(app.key.clone(), app.clone()).is_some() {
                return Err(format!("two apps have the key {:?}", app.key));
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.by_id.values()
    }

    /// The app whose namespace holds `chorus_channel`.
    pub fn of_channel(&self, chorus_channel: &str) -> Option<&Arc<App>> {
        let ns = chorus_protocol::channel::namespace(chorus_channel);
        self.by_id.get(ns.strip_prefix(NAMESPACE_PREFIX)?)
    }

    /// The app of `chorus_channel` when it wants webhooks of `kind`, with the channel's
    /// Pusher name.
    pub fn webhook_target(&self, chorus_channel: &str, kind: &str) -> Option<(&Arc<App>, String)> {
        let app = self.of_channel(chorus_channel)?;
        if !app.wants_webhook(kind) {
            return None;
        }
        Some((app, app.pusher_channel(chorus_channel)?.into_owned()))
    }

    /// Whether any app wants occupancy webhooks (so gateways must track occupancy).
    pub fn want_occupancy(&self) -> bool {
        self.iter()
            .any(|a| a.wants_webhook("channel_occupied") || a.wants_webhook("channel_vacated"))
    }

    /// Gives every app its namespace, unless the namespaces file sets one: presence and
    /// join/leave on (presence channels are built on them), a short history (pusher-js has
    /// no recovery; history serves the HTTP API and native clients), permissions closed
    /// (Pusher connections are authorized by the app's signatures, not by Chorus tokens).
    pub fn add_namespaces(&self, namespaces: &mut Namespaces) {
        for app in self.iter() {
            namespaces
                .named
                .entry(app.namespace())
                .or_insert_with(|| NamespaceRules {
                    history_size: 100,
                    history_ttl: Duration::from_secs(300),
                    presence: true,
                    join_leave: true,
                    presence_max_clients: app.max_presence_members.max(1) * 64,
                    ..NamespaceRules::default()
                });
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str) -> HmacSha256 {
    // HMAC takes a key of any length.
    HmacSha256::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!())
}

/// `HMAC-SHA256(secret, message)` in lower-case hex.
pub fn sign(secret: &str, message: &str) -> String {
    let mut mac = mac(secret);
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        App::new("1001", "key-1", "secret-of-app-1")
    }

    #[test]
    fn pusher_channels_map_into_the_apps_namespace_and_back() {
        let app = app();
        for (pusher, chorus) in [
            ("my-channel", "pusher-1001:my-channel"),
            ("private-a.b", "pusher-1001:private-a.b"),
            ("presence-room=1@x,y", "pusher-1001:presence-room=1@x,y"),
            ("#server-to-user-alice", "pusher-1001:#alice"),
        ] {
            let mapped = app.chorus_channel(pusher).unwrap();
            assert_eq!(mapped, chorus);
            assert_eq!(chorus_protocol::channel::validate(&mapped), Ok(()));
            assert_eq!(app.pusher_channel(&mapped).as_deref(), Some(pusher));
        }
        assert_eq!(app.pusher_channel("pusher-1002:x"), None);
        assert_eq!(app.pusher_channel("pusher-10011:x"), None);
        assert_eq!(app.pusher_channel("news"), None);
        for bad in [
            "",
            "a;b",
            "a b",
            "#other",
            "a#b",
            "#server-to-user-a,b",
            "#server-to-user-",
            "x".repeat(165).as_str(),
            "a:b",
            "é",
        ] {
            assert!(app.chorus_channel(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn signatures_match_pushers_documented_example() {
        // From Pusher's authentication docs: key 278d425bdf160c739803, secret
        // 7ad3773142a6692b25b8, socket 1234.1234, channel private-foobar.
        let app = App::new("1", "278d425bdf160c739803", "7ad3773142a6692b25b8");
        let sig = app.sign("1234.1234:private-foobar");
        assert_eq!(
            sig,
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(app.verify("1234.1234:private-foobar", &sig));
        assert!(!app.verify("1234.1235:private-foobar", &sig));
        assert!(!app.verify("1234.1234:private-foobar", "zz"));
    }

    #[test]
    fn apps_load_from_a_file_and_the_environment_with_unique_ids_and_keys() {
        let dir = std::env::temp_dir().join(format!("chorus-apps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("apps.toml");
        std::fs::write(
            &path,
            "[[app]]\nid = \"1\"\nkey = \"k1\"\nsecret = \"s1-secret\"\nclient_events = false\nwebhook_url = \"http://127.0.0.1:1/h\"\nwebhook_events = [\"member_added\"]\n",
        )
        .unwrap();
        let config = PusherConfig {
            apps_file: Some(path.clone()),
            app_id: Some("2".into()),
            app_key: Some("k2".into()),
            app_secret: Some("s2-secret".into()),
        };
        let apps = Apps::load(&config).unwrap();
        let one = apps.by_key("k1").unwrap();
        assert!(!one.client_events);
        assert!(one.wants_webhook("member_added"));
        assert!(!one.wants_webhook("channel_vacated"));
        assert!(apps.by_id("2").unwrap().client_events);
        assert_eq!(
            apps.of_channel("pusher-2:x").map(|a| a.key.as_str()),
            Some("k2")
        );

        let mut namespaces = Namespaces::builtin();
        apps.add_namespaces(&mut namespaces);
        assert!(namespaces.lookup("pusher-1:presence-x").unwrap().presence);

        let dup = PusherConfig {
            app_id: Some("1".into()),
            ..config.clone()
        };
        assert!(
            Apps::load(&dup)
                .unwrap_err()
                .to_string()
                .contains("two apps have the id")
        );
        std::fs::write(&path, "[[app]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s-secret\"\nwebhook_events = [\"nope\"]\n").unwrap();
        let err = Apps::load(&PusherConfig {
            apps_file: Some(path.clone()),
            ..PusherConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown webhook event"), "{err}");
        std::fs::write(&path, "[[app]]\nid = \"1\"\nkey = \"k\"\n").unwrap();
        let err = Apps::load(&PusherConfig {
            apps_file: Some(path.clone()),
            ..PusherConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn events_travel_as_json_and_other_data_reads_as_a_message_event() {
        let event = Event {
            event: "greet".into(),
            data: "{\"hi\":1}".into(),
            user_id: None,
        };
        assert_eq!(Event::from_publication(&event.to_bytes()), event);
        let other = Event::from_publication(b"{\"n\":1}");
        assert_eq!(
            (other.event.as_str(), other.data.as_str()),
            ("message", "{\"n\":1}")
        );
    }

    #[test]
    fn kinds_follow_the_name_prefix() {
        assert_eq!(
            ChannelKind::of("private-encrypted-x"),
            ChannelKind::PrivateEncrypted
        );
        assert_eq!(ChannelKind::of("private-x"), ChannelKind::Private);
        assert_eq!(ChannelKind::of("presence-x"), ChannelKind::Presence);
        assert_eq!(ChannelKind::of("#server-to-user-1"), ChannelKind::User);
        assert_eq!(ChannelKind::of("x"), ChannelKind::Public);
        assert!(!ChannelKind::Public.takes_client_events());
        for cache in [
            "cache-a",
            "private-cache-a",
            "private-encrypted-cache-a",
            "presence-cache-a",
        ] {
            assert!(ChannelKind::is_cache(cache), "{cache}");
        }
        assert!(!ChannelKind::is_cache("private-a-cache-b"));
        assert_eq!(ChannelKind::of("presence-cache-a"), ChannelKind::Presence);
    }
}
