//! Subscribing: holding the subscriber in the hub while the bus confirms the channel, reading
//! its position or recovering what it missed, and making it live with no seam. A recovery
//! larger than one reply is paged: the reply carries the first page, the rest follows as
//! publications at the client's pace (`Conn::room_for`), then the live ones held meanwhile.

use bytes::Bytes;
use chorus_bus::{BusError, Member, Position, Recovery};
use chorus_protocol::client::{self, reply};
use chorus_protocol::codes::{ErrorCode, close};
use chorus_protocol::wire::{self, Format};

use super::{Session, bounded, bus_error, publication, valid_channel};
use crate::conn::Outgoing;
use crate::hub::ActivateError;

/// Reads of a subscriber's position (or recovery) before its subscribe gives up, when the
/// channel keeps moving past it with holes (see `ActivateError::Behind`).
const MAX_POSITION_READS: u32 = 3;

impl Session {
    /// Subscribes, answering through the hub so that the reply comes before any publication
    /// after it (see the hub's "subscribing without a seam"). Returns `Ok(None)` once replied.
    pub(super) async fn subscribe(
        &mut self,
        id: u32,
        req: client::SubscribeRequest,
    ) -> Result<Option<reply::Result>, client::Error> {
        valid_channel(&req.channel)?;
        self.sec
            .may_subscribe(self.node.bus.namespaces(), &req.channel)?;
        if req.recover {
            self.sec.may_read_history()?;
        }
        self.subscribe_as(Answer::Reply(id), req).await
    }

    /// Subscribes on the server's word (the server API, the token's `subs` claim, the
    /// personal channel): no permission check, and a `subscribe` push instead of a reply,
    /// recovering from `from` when the connect asked for it. A failure is only logged: there
    /// is no command to answer.
    pub(super) async fn server_subscribe(
        &mut self,
        channel: String,
        from: Option<client::StreamPosition>,
    ) {
        if let Err(e) = valid_channel(&channel) {
            tracing::debug!(client = %self.conn.client, channel, error = %e.message,
                "server subscribe to an invalid channel");
            return;
        }
        if self.channels.contains(&channel) {
            return;
        }
        let req = match from {
            Some(from) => client::SubscribeRequest {
                channel: channel.clone(),
                recover: true,
                offset: from.offset,
                epoch: from.epoch,
                ..Default::default()
            },
            None => client::SubscribeRequest {
                channel: channel.clone(),
                ..Default::default()
            },
        };
        if let Err(e) = self.subscribe_as(Answer::Push, req).await {
            tracing::info!(client = %self.conn.client, channel, code = e.code, error = %e.message,
                "server subscribe failed");
        }
    }

    async fn subscribe_as(
        &mut self,
        answer: Answer,
        req: client::SubscribeRequest,
    ) -> Result<Option<reply::Result>, client::Error> {
        let ch = req.channel.clone();
        if self.channels.contains(&ch) {
            return Err(ErrorCode::AlreadySubscribed.with(format!("already subscribed to {ch}")));
        }
        let limit = self.node.config.max_channels_per_connection;
        if self.channels.len() >= limit {
            return Err(
                ErrorCode::LimitExceeded.with(format!("at most {limit} channels per connection"))
            );
        }
        self.join_presence(&ch).await?;
        let result = self.subscribe_joined(answer, ch.clone(), req).await;
        if result.is_err() {
            self.leave_presence(&ch);
        }
        result
    }

    /// Adds the connection to the channel's presence, where the namespace keeps it, before it
    /// is subscribed: once the reply is out, every reader sees the entry.
    async fn join_presence(&mut self, ch: &str) -> Result<(), client::Error> {
        let node = self.node.clone();
        let rules = node.bus.namespaces().rules(ch);
        if !rules.presence {
            return Ok(());
        }
        let identity = &self.sec.identity;
        let member = Member {
            client: self.conn.client.clone(),
            user: identity.user.clone(),
            info: identity.info.clone().unwrap_or_default(),
        };
        // Recorded before the write: whatever ends this session from now on lets it go.
        self.presence.insert(ch.to_owned());
        if let Err(e) = bounded(node.bus_timeout, node.link.join(ch, member, rules)).await {
            self.leave_presence(ch);
            return Err(bus_error(e));
        }
        Ok(())
    }

    /// Drops the connection's presence entry in the background (a subscribe that failed).
    fn leave_presence(&mut self, ch: &str) {
        if self.presence.remove(ch) {
            self.node.link.left(ch, &self.conn.client);
        }
    }

    async fn subscribe_joined(
        &mut self,
        answer: Answer,
        ch: String,
        req: client::SubscribeRequest,
    ) -> Result<Option<reply::Result>, client::Error> {
        let join_leave = !req.no_join_leave;
        let node = &self.node;
        let since = req.recover.then_some(Position {
            offset: req.offset,
            epoch: req.epoch,
        });
        let format = self.conn.format;
        if since.is_none()
            && node.hub.subscribe_live(&ch, &self.conn, join_leave, |pos| {
                answer.frame(format, &ch, position_result(pos))
            })
        {
            self.channels.insert(ch);
            return Ok(None);
        }
        let ready = node.hub.hold(&node.link, &ch, &self.conn, join_leave);
        self.channels.insert(ch.clone());
        if let Err(e) = ready.wait(node.bus_timeout).await {
            self.leave(&ch);
            return Err(bus_error(e));
        }
        let mut reads = 0;
        loop {
            reads += 1;
            let start = match &since {
                Some(since) => self.first_page(&ch, since).await,
                None => bounded(node.bus_timeout, node.bus.position(&ch))
                    .await
                    .map(|pos| (position_result(pos), false)),
            };
            let (result, more) = match start {
                Ok(start) => start,
                Err(e) => {
                    self.leave(&ch);
                    return Err(bus_error(e));
                }
            };
            let position = Position {
                offset: result.offset,
                epoch: result.epoch.clone(),
            };
            let reply = answer.frame(self.conn.format, &ch, result);
            if more {
                // Paged: the reply goes now, the rest of the recovery follows it as
                // publications, then the live ones held meanwhile.
                self.conn.send(Outgoing::Data(reply));
                self.send_pages(&ch, position).await;
                return Ok(None);
            }
            let error = match node.hub.activate(&ch, &self.conn, &position, Some(reply)) {
                Ok(()) => return Ok(None),
                // The channel moved past this position with a hole this subscriber's held
                // publications do not fill: read again, now at least as far as the channel.
                Err(ActivateError::Behind) if reads < MAX_POSITION_READS => continue,
                Err(e) => activate_error(&e),
            };
            self.leave(&ch);
            return Err(error);
        }
    }

    /// Undoes a subscribe that failed half-way.
    fn leave(&mut self, ch: &str) {
        self.channels.remove(ch);
        self.node.hub.unsubscribe(&self.node.link, ch, &self.conn);
    }

    /// Bytes of publications one reply may carry: half the client's queue, so that a reply
    /// always fits beside what is already queued.
    pub(super) fn reply_budget(&self) -> usize {
        self.node.config.queue_max_bytes / 2
    }

    /// The first (often the only) part of a recovering subscribe's answer, and whether more
    /// publications follow it. Recovered: the publications after `since`, as many as one reply
    /// holds. Not recovered because the channel's epoch changed (Redis lost the channel) while
    /// history still holds the new epoch from its first offset: `recovered: false`, with the
    /// new epoch's publications from its start, so that the client misses only what Redis
    /// lost. Otherwise `recovered: false` at the channel's current position.
    async fn first_page(
        &self,
        ch: &str,
        since: &Position,
    ) -> Result<(client::SubscribeResult, bool), BusError> {
        let node = &self.node;
        let budget = self.reply_budget();
        let recovery = bounded(node.bus_timeout, node.bus.recover(ch, since, budget)).await?;
        if recovery.recovered {
            let more = recovery.more;
            return Ok((recovered_result(recovery, true), more));
        }
        if since.same_epoch_as(&recovery.position) || recovery.position.offset == 0 {
            return Ok((recovered_result(recovery, false), false));
        }
        let epoch_start = Position {
            offset: 0,
            epoch: recovery.position.epoch.clone(),
        };
        let from_start =
            bounded(node.bus_timeout, node.bus.recover(ch, &epoch_start, budget)).await?;
        // Judged against the new epoch: a channel that changed epoch again meanwhile is not
        // recovered here.
        if from_start.recovered {
            let more = from_start.more;
            tracing::debug!(client = %self.conn.client, channel = ch,
                "epoch changed; delivering the new epoch from its start");
            return Ok((recovered_result(from_start, false), more));
        }
        Ok((recovered_result(recovery, false), false))
    }

    /// Sends the rest of a paged recovery after its reply (which ended at `after`): each page
    /// as publications once the client's queue has room for it, then makes the subscriber
    /// live. The reply has told the client it is subscribed, so a failure now cannot be an
    /// error reply: the connection is closed with 3003 and the client recovers again from
    /// what it received.
    async fn send_pages(&mut self, ch: &str, mut after: Position) {
        let node = self.node.clone();
        let budget = self.reply_budget();
        let mut behind = 0;
        let failure = loop {
            let recovery =
                match bounded(node.bus_timeout, node.bus.recover(ch, &after, budget)).await {
                    Ok(r) if r.recovered => r,
                    Ok(_) => break "history moved past the recovery while it was sent".to_owned(),
                    Err(e) => break format!("reading history failed while recovering: {e}"),
                };
            let frames: Vec<Bytes> = recovery
                .publications
                .into_iter()
                .map(|env| {
                    after.offset = env.offset;
                    let push = wire::push(client::push::Body::Publication(publication(env)));
                    wire::encode_frame(self.conn.format, &push)
                })
                .collect();
            let bytes = frames.iter().map(Bytes::len).sum();
            if !self.conn.room_for(bytes).await {
                self.leave(ch);
                self.leave_presence(ch);
                return;
            }
            for frame in frames {
                self.conn.send(Outgoing::Data(frame));
            }
            if recovery.more {
                continue;
            }
            match node.hub.activate(ch, &self.conn, &after, None) {
                Ok(()) => return,
                Err(ActivateError::Behind) if behind < MAX_POSITION_READS => behind += 1,
                Err(e) => break activate_error(&e).message,
            }
        };
        tracing::info!(client = %self.conn.client, channel = ch, why = %failure,
            "paged recovery failed; closing for the client to recover again");
        self.leave(ch);
        self.leave_presence(ch);
        self.conn.disconnect(close::INSUFFICIENT_STATE, &failure);
    }
}

/// How a subscription is announced to its client.
#[derive(Debug, Clone, Copy)]
pub(super) enum Answer {
    /// The reply to the client's `subscribe` command with this id.
    Reply(u32),
    /// A `subscribe` push: the server subscribed the connection.
    Push,
}

impl Answer {
    /// The subscribe reply or push for `result`, encoded for the connection.
    fn frame(self, format: Format, channel: &str, result: client::SubscribeResult) -> Bytes {
        let frame = match self {
            Answer::Reply(id) => wire::reply(client::Reply {
                id,
                error: None,
                result: Some(reply::Result::Subscribe(result)),
            }),
            Answer::Push => wire::push(client::push::Body::Subscribe(client::Subscribed {
                channel: channel.to_owned(),
                offset: result.offset,
                epoch: result.epoch,
                was_recovering: result.was_recovering,
                recovered: result.recovered,
                publications: result.publications,
            })),
        };
        wire::encode_frame(format, &frame)
    }
}

/// The result of a plain subscribe (no recovery) at `position`.
fn position_result(position: Position) -> client::SubscribeResult {
    client::SubscribeResult {
        epoch: position.epoch,
        offset: position.offset,
        ..Default::default()
    }
}

/// A recovering subscribe's result: with publications, the reply's position is the last of
/// them (what follows continues from there); without, the channel's current position.
fn recovered_result(recovery: Recovery, recovered: bool) -> client::SubscribeResult {
    let (offset, epoch) = match recovery.publications.last() {
        Some(last) => (last.offset, last.epoch.clone()),
        None => (recovery.position.offset, recovery.position.epoch),
    };
    client::SubscribeResult {
        epoch,
        offset,
        recovered,
        publications: recovery.publications.into_iter().map(publication).collect(),
        was_recovering: true,
    }
}

/// Why a held subscriber could not be made live, for the client.
fn activate_error(e: &ActivateError) -> client::Error {
    match e {
        ActivateError::Behind => {
            ErrorCode::Unavailable.with("the channel moved on while subscribing; subscribe again")
        }
        ActivateError::EpochChanged => ErrorCode::Unavailable
            .with("the channel started a new epoch meanwhile; subscribe again"),
        ActivateError::Gone => ErrorCode::Internal.with("subscription vanished"),
    }
}
