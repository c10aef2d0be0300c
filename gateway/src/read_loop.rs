//! The loop every client session runs, whatever its protocol (Chorus's in `session/`,
//! Pusher's in `pusher/`): wait for the client's next message, a server command, the gateway's
//! drain turn, a deadline or the connection closing — whichever comes first — and hand a
//! message or command to the session. Closing rules (idle timeout, frame violations, the close
//! handshake, ping) are the same for every protocol, so they live here once.

use std::sync::Arc;

use chorus_protocol::codes::close;
use tokio::net::tcp::OwnedReadHalf;

use crate::conn::{Conn, Outgoing};
use crate::frame_reader::ReadError;
use crate::message_reader::{Message, MessageReader};
use crate::node::Node;
use crate::security::Deadline;
use crate::sessions::{Control, ControlQueue};

/// What a protocol's session gives the read loop.
pub(crate) trait Session {
    /// The close reason sent in the session's drain turn.
    const SHUTDOWN_REASON: &'static str;
    /// The close reason when the client sent nothing (not even a pong) for `idle_timeout`.
    const IDLE_REASON: &'static str;

    fn node(&self) -> &Arc<Node>;
    fn conn(&self) -> &Arc<Conn>;
    /// Server commands for this connection (`sessions.rs`).
    fn control_queue(&self) -> &Arc<ControlQueue>;

    /// The next moment the session must close by, if any; asked again every turn.
    fn deadline(&self) -> Option<Deadline> {
        None
    }

    /// A server command; false when it ends the session.
    async fn on_control(&mut self, control: Control) -> bool;

    /// A whole data message from the client. Box what it runs: the loop's future, and so
    /// every idle connection's task, holds this future's state inline.
    async fn on_message(&mut self, text: bool, payload: &[u8]);
}

/// Runs `session` until its connection closes or is lost.
pub(crate) async fn run<S: Session>(
    session: &mut S,
    reader: &mut MessageReader,
    socket: &OwnedReadHalf,
) {
    let node = session.node().clone();
    let conn = session.conn().clone();
    let controls = session.control_queue().clone();
    let idle_timeout = node.config.idle_timeout;
    // This session's moment in the drain window, fixed once so that re-entering the select
    // below does not move it.
    let drain_fraction: f64 = rand::random();
    loop {
        if !reader.has_frame() {
            conn.uncork();
        }
        let deadline = session.deadline();
        let deadline_passed = async {
            match &deadline {
                Some(d) => tokio::time::sleep_until(d.at).await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            biased;
            _ = conn.closing.cancelled() => return,
            _ = deadline_passed => {
                if let Some(d) = deadline {
                    tracing::debug!(client = %conn.client, code = d.code, "closing at a deadline: {}", d.reason);
                    if d.code == close::TOKEN_EXPIRED {
                        conn.disconnect(d.code, d.reason);
                    } else {
                        conn.close(d.code, d.reason);
                    }
                }
                return;
            }
            _ = async {
                node.shutdown.cancelled().await;
                tokio::time::sleep_until(node.drain_turn(drain_fraction)).await;
            } => {
                conn.disconnect(close::SHUTDOWN, S::SHUTDOWN_REASON);
                return;
            }
            control = controls.recv() => {
                if session.on_control(control).await {
                    continue;
                }
                return;
            }
            read = tokio::time::timeout(idle_timeout, reader.next(socket)) => read,
        };
        // Messages that arrived together are answered together (see `Conn::cork`): the
        // writer is held while more are in hand, and woken (top of the loop) before the
        // session waits for the client again.
        if reader.has_frame() {
            conn.cork();
        }
        let message = match read {
            Err(_) => {
                conn.close(close::IDLE_TIMEOUT, S::IDLE_REASON);
                return;
            }
            Ok(Err(ReadError::Violation(v))) => {
                tracing::debug!(client = %conn.client, code = v.code, "closing on a frame violation: {}", v.reason);
                conn.close(v.code, v.reason);
                return;
            }
            Ok(Err(ReadError::Lost(e))) => {
                tracing::debug!(client = %conn.client, error = %e, "connection lost");
                conn.abandon();
                return;
            }
            Ok(Ok(message)) => message,
        };
        match message {
            Message::Close(payload) => {
                conn.send(Outgoing::CloseEcho(payload));
                return;
            }
            Message::Ping(payload) => conn.send(Outgoing::Pong(payload)),
            Message::Pong => {}
            Message::Data { text, payload } => session.on_message(text, &payload).await,
        }
    }
}
