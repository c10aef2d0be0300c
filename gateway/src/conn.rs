//! A connection's handle: how the hub and the session reach one client's socket.
//!
//! Everything bound for the client goes through one bounded queue to one writer task, so the
//! reader, the hub and the heartbeat never write to the socket themselves and never wait on it.
//! The queue is bounded twice — in frames and in bytes — and a client whose queue overflows is
//! closed as a slow consumer rather than allowed to grow the gateway's memory. Closing has its
//! own path that bypasses the queue, so a full queue can always be closed.
//!
//! The queue is a `VecDeque` under a lock with a [`Notify`], not a channel: an idle
//! connection's queue holds no allocation at all (a channel allocates its first block of
//! slots up front, ~1.6 KB per connection), and the writer takes everything queued in one
//! lock, which is what it writes in one vectored write anyway.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use chorus_protocol::client::{self, push};
use chorus_protocol::codes::close;
use chorus_protocol::wire::{self, Format};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio_util::sync::CancellationToken;

use crate::deflate::{self, Deflate};

/// One item for the writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A data frame in the connection's format (text for JSON, binary for protobuf).
    Data(Bytes),
    /// A publication push (a data frame) and when it was published (ms since the Unix
    /// epoch), for the delivery-latency metric.
    Publication(Bytes, i64),
    /// A publication push compressed with permessage-deflate (sent with RSV1), and when it was
    /// published.
    Compressed(Bytes, i64),
    /// A pong answering the client's ping.
    Pong(Bytes),
    /// The echo of the client's close frame; the writer sends it and stops.
    CloseEcho(Bytes),
    /// A client message sent back as is, text (true) or binary, compressed (true) or not
    /// (`--conformance-echo` only).
    Echo(bool, bool, Bytes),
}

impl Outgoing {
    pub(crate) fn cost(&self) -> usize {
        match self {
            Outgoing::Data(b)
            | Outgoing::Publication(b, _)
            | Outgoing::Compressed(b, _)
            | Outgoing::Pong(b)
            | Outgoing::CloseEcho(b)
            | Outgoing::Echo(_, _, b) => b.len(),
        }
    }
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum QueueFull {
    Overflow,
    Closed,
}

pub(crate) struct Conn {
    /// Cluster-unique client id (`<node>-<n>`).
    pub(crate) client: String,
    pub(crate) format: Format,
    /// permessage-deflate, when the client negotiated it.
    pub(crate) deflate: Option<Deflate>,
    /// Counts the connection in `chorus_gateway_deflate_connections` while it lives.
    _deflating: Option<deflate::Counted>,
    queue: Mutex<Queue>,
    /// Wakes the writer when the queue turns non-empty.
    queue_ready: Notify,
    queued_bytes: AtomicUsize,
    max_frames: usize,
    max_bytes: usize,
    close_frame: Mutex<Option<(u16, String)>>,
    /// Cancelled when the connection is ending, for whatever reason (the session waits on it).
    pub(crate) closing: CancellationToken,
    /// The same, for the writer: a flag it checks each time it wakes, cheaper than the
    /// token's future on a path taken once per delivery.
    ending: AtomicBool,
    /// Someone waits in [`Conn::room_for`]: the writer wakes it when it takes items off the
    /// queue. A flag, so that the writer's common path pays one relaxed load, not a notify.
    room_wanted: AtomicBool,
    room: Notify,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    /// The writer is gone: nothing queued will be written.
    closed: bool,
    /// The session has more commands in hand: their replies go out together, in one write,
    /// once it has run them (see [`Conn::cork`]).
    corked: bool,
}

/// The writer's end of a connection's queue; dropping it closes the queue.
pub(crate) struct ConnQueue {
    conn: Arc<Conn>,
}

impl Conn {
    pub(crate) fn new(
        client: String,
        format: Format,
        max_frames: usize,
        max_bytes: usize,
    ) -> (Arc<Self>, ConnQueue) {
        Self::with_deflate(client, format, None, max_frames, max_bytes)
    }

    /// A connection that negotiated permessage-deflate (`deflate`), or not.
    pub(crate) fn with_deflate(
        client: String,
        format: Format,
        deflate: Option<Deflate>,
        max_frames: usize,
        max_bytes: usize,
    ) -> (Arc<Self>, ConnQueue) {
        let conn = Arc::new(Self {
            client,
            format,
            deflate,
            _deflating: deflate.map(|_| deflate::Counted::new()),
            queue: Mutex::new(Queue::default()),
            queue_ready: Notify::new(),
            queued_bytes: AtomicUsize::new(0),
            max_frames: max_frames.max(1),
            max_bytes,
            close_frame: Mutex::new(None),
            closing: CancellationToken::new(),
            ending: AtomicBool::new(false),
            room_wanted: AtomicBool::new(false),
            room: Notify::new(),
        });
        let queue = ConnQueue { conn: conn.clone() };
        (conn, queue)
    }

    /// Queues an item without waiting, or says why not. The one place items enter the queue.
    fn try_push(&self, item: Outgoing) -> Result<usize, QueueFull> {
        let cost = item.cost();
        let before = self.queued_bytes.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.max_bytes && before > 0 {
            self.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
            return Err(QueueFull::Overflow);
        }
        let mut queue = self.queue.lock();
        let refused = if queue.closed {
            Some(QueueFull::Closed)
        } else if queue.items.len() >= self.max_frames {
            Some(QueueFull::Overflow)
        } else {
            None
        };
        if let Some(refused) = refused {
            drop(queue);
            self.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
            return Err(refused);
        }
        let wake = queue.items.is_empty() && !queue.corked;
        queue.items.push_back(item);
        drop(queue);
        // Only the push that makes the queue non-empty wakes the writer: later ones find it
        // awake or about to take them with the first.
        if wake {
            self.queue_ready.notify_one();
        }
        Ok(cost)
    }

    /// Queues an item without waiting; a client that cannot keep up is closed as a slow
    /// consumer. Returns the bytes queued (0 when nothing was), which the caller adds to the
    /// process's bytes-queued gauge: the hub does so once per publication, not once per
    /// subscriber. Everything else uses [`Conn::send`].
    pub(crate) fn push(&self, item: Outgoing) -> usize {
        match self.try_push(item) {
            Ok(cost) => cost,
            Err(QueueFull::Overflow) => {
                self.close(
                    close::SLOW_CONSUMER,
                    "slow consumer: the client did not read fast enough",
                );
                0
            }
            Err(QueueFull::Closed) => 0,
        }
    }

    /// [`Conn::push`], counted in the bytes-queued gauge.
    pub(crate) fn send(&self, item: Outgoing) {
        let queued = self.push(item);
        crate::metrics::queued(queued as i64);
    }

    /// Tells the client why it is being disconnected (a `disconnect` push with `reconnect:
    /// true`), then closes with the same code and reason.
    pub(crate) fn disconnect(&self, code: u16, reason: &str) {
        self.disconnect_with(code, reason, true);
    }

    /// Like [`Conn::disconnect`], saying whether the client should come back.
    pub(crate) fn disconnect_with(&self, code: u16, reason: &str, reconnect: bool) {
        let frame = wire::push(push::Body::Disconnect(client::Disconnect {
            code: u32::from(code),
            reason: reason.to_owned(),
            reconnect,
        }));
        self.send(Outgoing::Data(wire::encode_frame(self.format, &frame)));
        self.close(code, reason);
    }

    /// Holds the writer's wake-up while the session runs commands that arrived together, so
    /// that their replies leave in one write instead of one each (a connect and a subscribe
    /// sent back to back: one segment for both answers). Bounded by the session: it uncorks
    /// before it waits for the client.
    pub(crate) fn cork(&self) {
        self.queue.lock().corked = true;
    }

    /// Ends [`Conn::cork`]: wakes the writer if anything was queued meanwhile.
    pub(crate) fn uncork(&self) {
        let wake = {
            let mut queue = self.queue.lock();
            let wake = queue.corked && !queue.items.is_empty();
            queue.corked = false;
            wake
        };
        if wake {
            self.queue_ready.notify_one();
        }
    }

    /// The bound on bytes queued for this client.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The writer took items of `bytes` in all off the queue.
    pub(crate) fn dequeued_bytes(&self, bytes: usize) {
        if bytes > 0 {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            crate::metrics::queued(-(bytes as i64));
            if self.room_wanted.load(Ordering::Relaxed) {
                self.room.notify_waiters();
            }
        }
    }

    /// Waits until `bytes` more fit in the queue's byte bound — or the queue is empty, so that
    /// one item larger than the bound still goes — and says whether they do (false: the
    /// connection is ending). For sending a large answer in parts at the client's pace.
    pub(crate) async fn room_for(&self, bytes: usize) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            self.room_wanted.store(true, Ordering::Relaxed);
            let queued = self.queued_bytes.load(Ordering::Relaxed);
            if self.is_ending() {
                return false;
            }
            if queued == 0 || queued + bytes <= self.max_bytes {
                self.room_wanted.store(false, Ordering::Relaxed);
                return true;
            }
            tokio::select! {
                () = &mut room => {}
                () = self.closing.cancelled() => return false,
            }
        }
    }

    /// The writer took an item off the queue.
    #[cfg(test)]
    pub(crate) fn dequeued(&self, item: &Outgoing) {
        self.dequeued_bytes(item.cost());
    }

    /// Bytes currently queued.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Closes the connection with a close frame; the first reason given wins. Returns whether
    /// this call's reason is the one that will be sent.
    pub(crate) fn close(&self, code: u16, reason: &str) -> bool {
        {
            let mut frame = self.close_frame.lock();
            if frame.is_some() || self.is_ending() {
                return false;
            }
            // A pusher-js client decides by the code whether and when to reconnect.
            let sent = match self.format {
                Format::Pusher => chorus_protocol::pusher::close_code(code),
                _ => code,
            };
            *frame = Some((sent, reason.to_owned()));
        }
        self.end();
        crate::metrics::closed(code);
        // Counted here, where every slow-consumer close passes (the queue's overflow, and the
        // hub's held publications outgrowing the queue bound), not at one of its callers.
        if code == close::SLOW_CONSUMER {
            crate::metrics::slow_consumer();
        }
        true
    }

    /// Ends the connection without a close frame (the socket is already gone).
    pub(crate) fn abandon(&self) {
        self.end();
    }

    fn end(&self) {
        self.ending.store(true, Ordering::Release);
        self.closing.cancel();
        self.queue_ready.notify_one();
    }

    /// Whether the connection is ending (closed, abandoned, or its writer gone).
    pub(crate) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// Completes when an item is queued or the connection starts ending (after the last wait
    /// if that happened meanwhile): the writer's wake-up.
    pub(crate) fn queue_ready(&self) -> Notified<'_> {
        self.queue_ready.notified()
    }

    /// The close frame to send, if one was asked for.
    pub(crate) fn take_close_frame(&self) -> Option<(u16, String)> {
        self.close_frame.lock().take()
    }
}

impl ConnQueue {
    /// Moves up to `max` queued items into `out` without waiting.
    pub(crate) fn try_recv_many(&self, out: &mut VecDeque<Outgoing>, max: usize) -> usize {
        let mut queue = self.conn.queue.lock();
        let n = queue.items.len().min(max);
        if n == queue.items.len() && out.is_empty() {
            // Everything: swap buffers, keeping the writer's spare capacity for the next push.
            std::mem::swap(&mut queue.items, out);
        } else {
            out.extend(queue.items.drain(..n));
        }
        n
    }

    /// Takes one queued item without waiting.
    pub(crate) fn try_recv(&self) -> Option<Outgoing> {
        self.conn.queue.lock().items.pop_front()
    }
}

impl Drop for ConnQueue {
    /// The writer is gone: nothing more is accepted, and what is queued is dropped (and leaves
    /// the bytes-queued metric).
    fn drop(&mut self) {
        let dropped = {
            let mut queue = self.conn.queue.lock();
            queue.closed = true;
            std::mem::take(&mut queue.items)
        };
        let cost = dropped.iter().map(Outgoing::cost).sum();
        self.conn.dequeued_bytes(cost);
    }
}

impl Drop for Conn {
    /// What is still queued will never be written: it leaves the bytes-queued metric.
    fn drop(&mut self) {
        crate::metrics::queued(-(self.queued_bytes.load(Ordering::Relaxed) as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(bytes: &'static [u8]) -> Outgoing {
        Outgoing::Data(Bytes::from_static(bytes))
    }

    #[test]
    fn queue_is_bounded_in_bytes_and_overflow_closes_as_slow_consumer() {
        let (conn, q) = Conn::new("c".into(), Format::Json, 100, 10);
        conn.send(data(b"123456"));
        assert_eq!(conn.queued_bytes(), 6);
        conn.send(data(b"123456"));
        assert!(conn.closing.is_cancelled());
        assert_eq!(
            conn.take_close_frame().map(|(c, _)| c),
            Some(close::SLOW_CONSUMER)
        );
        let item = q.try_recv().unwrap();
        conn.dequeued(&item);
        assert_eq!(conn.queued_bytes(), 0);
    }

    #[test]
    fn queue_is_bounded_in_frames() {
        let (conn, _q) = Conn::new("c".into(), Format::Json, 2, 1 << 20);
        assert_eq!(conn.try_push(data(b"a")), Ok(1));
        assert_eq!(conn.try_push(data(b"b")), Ok(1));
        assert_eq!(conn.try_push(data(b"c")), Err(QueueFull::Overflow));
        assert_eq!(conn.queued_bytes(), 2);
    }

    #[test]
    fn a_single_frame_larger_than_the_byte_bound_still_goes_to_an_empty_queue() {
        let (conn, _q) = Conn::new("c".into(), Format::Json, 8, 4);
        assert_eq!(conn.try_push(data(b"123456")), Ok(6));
    }

    async fn writer_woken(conn: &Conn) -> bool {
        // A zero timeout still polls the wake-up once.
        tokio::time::timeout(std::time::Duration::ZERO, conn.queue_ready())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_corked_queue_wakes_its_writer_once_uncorked() {
        let (conn, q) = Conn::new("c".into(), Format::Json, 8, 64);
        conn.cork();
        conn.send(data(b"connect reply"));
        conn.send(data(b"subscribe reply"));
        assert!(!writer_woken(&conn).await, "held while corked");
        conn.uncork();
        assert!(writer_woken(&conn).await);
        assert!(q.try_recv().is_some() && q.try_recv().is_some());
        conn.uncork();
        assert!(
            !writer_woken(&conn).await,
            "nothing queued, nothing to wake for"
        );
        conn.send(data(b"live"));
        assert!(writer_woken(&conn).await, "uncorked pushes wake at once");
    }

    #[tokio::test]
    async fn room_for_waits_until_the_writer_takes_enough_off_the_queue() {
        let (conn, q) = Conn::new("c".into(), Format::Json, 8, 10);
        conn.send(data(b"123456"));
        let waiting = tokio::spawn({
            let conn = conn.clone();
            async move { conn.room_for(6).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "6 + 6 bytes do not fit in 10");
        let item = q.try_recv().unwrap();
        conn.dequeued(&item);
        assert!(
            waiting.await.unwrap(),
            "room once the writer took the first"
        );
        conn.send(data(b"123456"));
        let ending = tokio::spawn({
            let conn = conn.clone();
            async move { conn.room_for(6).await }
        });
        conn.close(close::SHUTDOWN, "bye");
        assert!(!ending.await.unwrap(), "a closing connection has no room");
    }

    #[test]
    fn first_close_reason_wins() {
        let (conn, _q) = Conn::new("c".into(), Format::Json, 8, 64);
        conn.close(close::IDLE_TIMEOUT, "idle");
        conn.close(close::SLOW_CONSUMER, "slow");
        assert_eq!(
            conn.take_close_frame(),
            Some((close::IDLE_TIMEOUT, "idle".into()))
        );
    }
}
