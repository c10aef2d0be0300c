//! `pusher:subscribe` and `pusher:unsubscribe`.
//!
//! A subscription checks the channel's name and kind and, for private and presence channels,
//! the app's signature; a presence subscription writes the member's presence entry first.
//! Then it goes through the hub exactly like a Chorus subscription — held until the bus
//! confirmed the channel, made live at the position read then — so the first publication it
//! receives comes after its `pusher_internal:subscription_succeeded` and none is lost or
//! repeated. A presence subscription reads the members after the bus confirmed the channel:
//! its `subscription_succeeded` lists them, and every join or leave after that reaches it as
//! `member_added` / `member_removed` (the hub's member view, `hub/members.rs`), so two members
//! subscribing at the same moment on two gateways each learn of the other.

use bytes::Bytes;
use chorus_bus::pusher::ChannelKind;
use chorus_bus::{ChannelReady, HistoryQuery, Member, Position};
use chorus_protocol::pusher as wire;

use super::{PusherSession, messages, own_user_channel};
use crate::hub::{ActivateError, MemberView};
use crate::session::bounded;

/// `pusher_internal:subscription_succeeded` on `channel` with `data`.
fn succeeded(channel: &str, data: &str) -> Bytes {
    wire::message(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        data,
        None,
    )
}

/// Reads of a subscriber's position before its subscribe gives up (see
/// `ActivateError::Behind`).
const MAX_POSITION_READS: u32 = 3;

impl PusherSession {
    pub(super) async fn subscribe(&mut self, req: messages::Subscribe) {
        let name = req.channel;
        if self.channels.contains_key(&name) {
            // pusher-js subscribes again after a reconnect only; an echo of success is harmless.
            return;
        }
        let kind = ChannelKind::of(&name);
        let chorus = match self.app.chorus_channel(&name) {
            Ok(c) => c,
            Err(e) => return self.subscription_error(&name, "InvalidChannel", &e.to_string(), 400),
        };
        let limit = self.node.config.max_channels_per_connection;
        if self.channels.len() >= limit {
            return self.subscription_error(
                &name,
                "LimitReached",
                &format!("At most {limit} channels per connection"),
                400,
            );
        }
        let mut member = None;
        let checked = match kind {
            ChannelKind::Public => Ok(()),
            ChannelKind::User if own_user_channel(self.user.as_deref(), &name) => Ok(()),
            ChannelKind::User => Err("Sign in as this user to receive its channel".to_owned()),
            ChannelKind::Private | ChannelKind::PrivateEncrypted => messages::check_auth(
                &self.app,
                req.auth.as_deref(),
                &format!("{}:{name}", self.conn.client),
            ),
            ChannelKind::Presence => {
                let data = req.channel_data.unwrap_or_default();
                if data.len() > messages::MAX_USER_DATA {
                    Err("channel_data is too large".to_owned())
                } else {
                    messages::check_auth(
                        &self.app,
                        req.auth.as_deref(),
                        &format!("{}:{name}:{data}", self.conn.client),
                    )
                    .and_then(|()| messages::ChannelData::parse(&data))
                    .map(|d| member = Some(d))
                }
            }
        };
        if let Err(e) = checked {
            crate::metrics::pusher_refused("auth");
            return self.subscription_error(&name, "AuthError", &e, 401);
        }
        let result = match member {
            Some(data) => self.subscribe_presence(&name, &chorus, data).await,
            None => self.subscribe_plain(&name, &chorus).await,
        };
        if let Err(e) = result {
            self.subscription_error(&name, "SubscriptionError", &e, 503);
        }
    }

    pub(super) async fn unsubscribe(&mut self, name: &str) {
        let Some(chorus) = self.channels.remove(name) else {
            return;
        };
        self.node
            .hub
            .unsubscribe(&self.node.link, &chorus, &self.conn);
        if self.presence.remove(&chorus).is_some() {
            let node = &self.node;
            if bounded(
                node.bus_timeout,
                node.link.leave(&chorus, &self.conn.client),
            )
            .await
            .is_err()
            {
                node.link.left(&chorus, &self.conn.client);
            }
        }
    }

    /// A channel without members: at once when the channel is live here, else through the
    /// bus.
    async fn subscribe_plain(&mut self, name: &str, chorus: &str) -> Result<(), String> {
        let node = self.node.clone();
        // A cache channel's last event must come between the reply and what follows it: the
        // way through the bus reads it with the position.
        if !ChannelKind::is_cache(name)
            && node
                .hub
                .subscribe_live(chorus, &self.conn, false, |_| succeeded(name, "{}"))
        {
            self.channels.insert(name.to_owned(), chorus.to_owned());
            return Ok(());
        }
        let ready = node.hub.hold(&node.link, chorus, &self.conn, false);
        self.activate_held(name, chorus, ready, false).await
    }

    /// A presence channel: the member's entry, then the subscription with the members read
    /// once the bus confirmed the channel.
    async fn subscribe_presence(
        &mut self,
        name: &str,
        chorus: &str,
        data: messages::ChannelData,
    ) -> Result<(), String> {
        let node = self.node.clone();
        let rules = node
            .bus
            .presence_rules(chorus)
            .map_err(|e| e.to_string())?
            .clone();
        let member = Member {
            client: self.conn.client.clone(),
            user: data.user_id.clone(),
            info: data.user_info.into_bytes().into(),
        };
        // Recorded before the write: whatever ends the session from now on removes it.
        self.presence.insert(chorus.to_owned(), data.user_id);
        if let Err(e) = bounded(node.bus_timeout, node.link.join(chorus, member, &rules)).await {
            self.presence.remove(chorus);
            node.link.left(chorus, &self.conn.client);
            return Err(e.to_string());
        }
        let ready = node.hub.hold_presence(&node.link, chorus, &self.conn);
        self.activate_held(name, chorus, ready, true).await
    }

    /// Makes a held subscriber live once the bus confirmed the channel; on failure undoes the
    /// subscription (and the presence entry, if any).
    async fn activate_held(
        &mut self,
        name: &str,
        chorus: &str,
        ready: ChannelReady,
        presence: bool,
    ) -> Result<(), String> {
        self.channels.insert(name.to_owned(), chorus.to_owned());
        let made = self.activate(name, chorus, ready, presence).await;
        if made.is_err() {
            let node = &self.node;
            self.channels.remove(name);
            node.hub.unsubscribe(&node.link, chorus, &self.conn);
            if self.presence.remove(chorus).is_some() {
                node.link.left(chorus, &self.conn.client);
            }
        }
        made
    }

    /// Waits for the bus's confirmation, then reads where the subscriber starts and activates
    /// it there; reads again when the channel moved past that position meanwhile
    /// (`ActivateError::Behind`).
    async fn activate(
        &self,
        name: &str,
        chorus: &str,
        ready: ChannelReady,
        presence: bool,
    ) -> Result<(), String> {
        let node = &self.node;
        ready
            .wait(node.bus_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let cache = ChannelKind::is_cache(name);
        for _ in 0..MAX_POSITION_READS {
            let activated = if presence {
                // The members first: a join or leave after this read reaches the hub (the
                // channel is confirmed) and the view applies it by connection.
                let members = bounded(node.bus_timeout, node.bus.presence(chorus))
                    .await
                    .map_err(|e| e.to_string())?;
                let (position, cached) = self.start(name, chorus, cache).await?;
                let view = MemberView::new(&members);
                if view.user_count() > self.app.max_presence_members as usize {
                    return Err(format!(
                        "The channel has more than {} members",
                        self.app.max_presence_members
                    ));
                }
                let reply = succeeded(name, &view.presence_data());
                node.hub
                    .activate_presence(chorus, &self.conn, &position, view, reply, cached)
            } else {
                let (position, cached) = self.start(name, chorus, cache).await?;
                node.hub
                    .activate_then(chorus, &self.conn, &position, succeeded(name, "{}"), cached)
            };
            match activated {
                Ok(()) => return Ok(()),
                Err(ActivateError::Behind) => continue,
                Err(e) => return Err(format!("{e:?}")),
            }
        }
        Err("the channel kept moving while subscribing".to_owned())
    }

    /// Where a subscription starts: the channel's position and, for a cache channel, the
    /// message that follows `subscription_succeeded` — its last event (read with the position,
    /// so nothing newer can come before it), or `pusher:cache_miss` when history holds none.
    async fn start(
        &self,
        name: &str,
        chorus: &str,
        cache: bool,
    ) -> Result<(Position, Option<Bytes>), String> {
        let node = &self.node;
        if !cache {
            let position = bounded(node.bus_timeout, node.bus.position(chorus))
                .await
                .map_err(|e| e.to_string())?;
            return Ok((position, None));
        }
        let last = HistoryQuery::page(None, 1, true, self.node.config.queue_max_bytes / 2);
        let history = bounded(node.bus_timeout, node.bus.history(chorus, &last))
            .await
            .map_err(|e| e.to_string())?;
        let cached = history
            .publications
            .first()
            .filter(|e| e.offset == history.position.offset)
            .map_or_else(
                || wire::message("pusher:cache_miss", Some(name), "{}", None),
                |e| wire::publication(&e.channel, &e.data),
            );
        Ok((history.position, Some(cached)))
    }

    /// `pusher:subscription_error` on the channel: pusher-js emits it to the app's handlers.
    fn subscription_error(&self, channel: &str, kind: &str, error: &str, status: u16) {
        let data =
            serde_json::json!({ "type": kind, "error": error, "status": status }).to_string();
        self.send(wire::message(
            "pusher:subscription_error",
            Some(channel),
            &data,
            None,
        ));
    }
}
