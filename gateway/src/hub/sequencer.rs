//! A channel's sequencer: where the channel's delivery stands, and what to do with the next
//! envelope that arrives for it.
//!
//! Each channel remembers the epoch and offset of the last publication it delivered. A live
//! envelope with the next offset is delivered; an older one is a duplicate and dropped; a
//! newer one means publications went missing (a pub/sub link that broke, a message Redis
//! dropped), so the channel stops delivering and keeps what arrives in a bounded *backlog*
//! until the gap is read from history. A new epoch means Redis lost the channel's state.
//!
//! The sequencer decides and keeps; it never delivers. That is the channel's job
//! (`channel.rs`), which is why this file can be tested on its own, envelope by envelope.
//!
//! **Two bounds on the backlog.** One channel keeps at most [`MAX_CHANNEL_BACKLOG_BYTES`],
//! dropping its oldest first (the hole they leave is read from history like any other). The
//! whole node keeps at most its [`BacklogBudget`]: after a pub/sub reconnect every busy
//! channel catches up at once, and without a node-wide bound their backlogs together could
//! grow with the number of channels. A channel that finds the budget spent cannot buffer; its
//! caller gives up on it (its subscribers are told to recover) rather than grow memory.
//!
//! **Generations.** Every catch-up request carries the channel's generation, and every event
//! that makes an earlier read stale — the link lost, the channel resubscribed, a new gap —
//! moves it on. A read that returns after its generation passed is ignored: it may have been
//! made before the pub/sub reconnect and miss what was published during the outage.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chorus_bus::{Envelope, Position};

/// Most bytes of publications one channel keeps while it waits for history.
pub(crate) const MAX_CHANNEL_BACKLOG_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// No position known yet: the first subscriber's position read will set it.
    Unsynced,
    Live,
    /// Waiting for history to fill a gap (or for the link to come back, then history).
    CatchingUp,
}

/// What an envelope is to a live channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The next offset: deliver it.
    Next,
    /// At or below the last delivered offset: drop it.
    Duplicate,
    /// Past the next offset: something is missing.
    Gap,
    /// Of another epoch than the channel's.
    EpochChanged,
}

/// The node-wide bound on bytes held in catch-up backlogs, shared by every channel's
/// sequencer.
#[derive(Debug)]
pub(crate) struct BacklogBudget {
    used: AtomicUsize,
    max: usize,
}

impl BacklogBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes `bytes` from the budget, or nothing when that would pass its bound.
    fn take(&self, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .is_ok();
        if taken {
            crate::metrics::backlog(bytes as i64);
        }
        taken
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            crate::metrics::backlog(-(bytes as i64));
        }
    }

    /// Bytes held in backlogs now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The node's backlog budget is spent: this channel cannot keep what arrives.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BacklogFull;

/// Publications kept while the channel cannot deliver, accounted against the node's budget
/// for as long as they are kept (dropping the backlog gives its bytes back).
#[derive(Debug)]
struct Backlog {
    items: VecDeque<Envelope>,
    bytes: usize,
    budget: Arc<BacklogBudget>,
}

impl Backlog {
    fn push(&mut self, env: Envelope) -> Result<(), BacklogFull> {
        let size = env.data.len();
        // The channel's own bound first: its oldest make room, and their hole is read from
        // history with the rest.
        while self.bytes + size > MAX_CHANNEL_BACKLOG_BYTES {
            match self.items.pop_front() {
                Some(old) => self.release(old.data.len()),
                None => break,
            }
        }
        if !self.budget.take(size) {
            return Err(BacklogFull);
        }
        self.bytes += size;
        self.items.push_back(env);
        Ok(())
    }

    fn release(&mut self, bytes: usize) {
        self.bytes -= bytes;
        self.budget.release(bytes);
    }

    fn take(&mut self) -> VecDeque<Envelope> {
        let bytes = std::mem::take(&mut self.bytes);
        self.budget.release(bytes);
        std::mem::take(&mut self.items)
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[derive(Debug)]
pub(crate) struct Sequencer {
    pub(crate) state: State,
    pub(crate) epoch: String,
    /// Offset of the last publication delivered.
    pub(crate) last: u64,
    /// Moves on whenever a catch-up read in flight may have become stale.
    generation: u64,
    backlog: Backlog,
}

impl Sequencer {
    pub(crate) fn new(budget: Arc<BacklogBudget>) -> Self {
        Self {
            state: State::Unsynced,
            epoch: String::new(),
            last: 0,
            generation: 0,
            backlog: Backlog {
                items: VecDeque::new(),
                bytes: 0,
                budget,
            },
        }
    }

    /// Starts over unsynced, as after a loss (the backlog's bytes go back to the budget).
    pub(crate) fn reset(&mut self) {
        *self = Self::new(self.backlog.budget.clone());
    }

    /// Synced to a channel that had no publication yet: the first one brings the epoch.
    pub(crate) fn knows_nothing(&self) -> bool {
        self.epoch.is_empty() && self.last == 0
    }

    pub(crate) fn position(&self) -> Position {
        Position {
            offset: self.last,
            epoch: self.epoch.clone(),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Stops delivering until a catch-up read of a new generation fills the gap; any read
    /// already in flight is stale from now on.
    pub(crate) fn start_catch_up(&mut self) {
        self.state = State::CatchingUp;
        self.generation += 1;
    }

    /// Whether a catch-up read made from `since` in `generation` still applies.
    pub(crate) fn expects(&self, since: &Position, generation: u64) -> bool {
        self.state == State::CatchingUp
            && self.generation == generation
            && self.last == since.offset
            && self.epoch == since.epoch
    }

    pub(crate) fn classify(&mut self, env: &Envelope) -> Step {
        // A channel that was empty when synced takes the epoch of its first publication.
        if self.knows_nothing() {
            self.epoch.clone_from(&env.epoch);
        }
        if env.epoch != self.epoch {
            Step::EpochChanged
        } else if env.offset <= self.last {
            Step::Duplicate
        } else if env.offset == self.last + 1 {
            Step::Next
        } else {
            Step::Gap
        }
    }

    /// Keeps an envelope for later (the channel cannot deliver now).
    pub(crate) fn hold(&mut self, env: Envelope) -> Result<(), BacklogFull> {
        self.backlog.push(env)
    }

    /// The envelopes kept, in arrival order, at or below `position` in its epoch.
    pub(crate) fn backlog_covered_by(&self, position: &Position) -> Vec<Envelope> {
        self.backlog
            .items
            .iter()
            .filter(|env| {
                env.presence.is_none()
                    && env.epoch == position.epoch
                    && env.offset <= position.offset
            })
            .cloned()
            .collect()
    }

    pub(crate) fn take_backlog(&mut self) -> VecDeque<Envelope> {
        self.backlog.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn env(offset: u64, epoch: &str, size: usize) -> Envelope {
        Envelope {
            offset,
            epoch: epoch.into(),
            data: Bytes::from(vec![b'x'; size]),
            ..Envelope::default()
        }
    }

    fn live_at(last: u64, budget: &Arc<BacklogBudget>) -> Sequencer {
        let mut seq = Sequencer::new(budget.clone());
        seq.state = State::Live;
        seq.epoch = "e".into();
        seq.last = last;
        seq
    }

    #[test]
    fn classifies_next_duplicate_gap_and_epoch_change() {
        let budget = BacklogBudget::new(1 << 20);
        let mut seq = live_at(4, &budget);
        assert_eq!(seq.classify(&env(5, "e", 1)), Step::Next);
        assert_eq!(seq.classify(&env(4, "e", 1)), Step::Duplicate);
        assert_eq!(seq.classify(&env(1, "e", 1)), Step::Duplicate);
        assert_eq!(seq.classify(&env(7, "e", 1)), Step::Gap);
        assert_eq!(seq.classify(&env(5, "other", 1)), Step::EpochChanged);
    }

    #[test]
    fn a_channel_synced_empty_takes_the_epoch_of_its_first_publication() {
        let budget = BacklogBudget::new(1 << 20);
        let mut seq = Sequencer::new(budget);
        seq.state = State::Live;
        assert!(seq.knows_nothing());
        assert_eq!(seq.classify(&env(1, "fresh", 1)), Step::Next);
        assert_eq!(seq.epoch, "fresh");
        assert_eq!(seq.classify(&env(1, "another", 1)), Step::EpochChanged);
    }

    #[test]
    fn a_channel_backlog_drops_its_oldest_past_its_own_bound() {
        let budget = BacklogBudget::new(usize::MAX);
        let mut seq = live_at(0, &budget);
        let size = MAX_CHANNEL_BACKLOG_BYTES / 4;
        for offset in 1..=6 {
            seq.hold(env(offset, "e", size)).unwrap();
        }
        let kept: Vec<u64> = seq.take_backlog().iter().map(|e| e.offset).collect();
        assert_eq!(kept, vec![3, 4, 5, 6], "the oldest two made room");
        assert_eq!(budget.used(), 0, "taking the backlog gives its bytes back");
    }

    #[test]
    fn the_node_budget_bounds_every_backlog_together_and_comes_back_when_they_go() {
        let budget = BacklogBudget::new(1000);
        let mut a = live_at(0, &budget);
        let mut b = live_at(0, &budget);
        a.hold(env(1, "e", 600)).unwrap();
        assert_eq!(b.hold(env(1, "e", 600)), Err(BacklogFull));
        b.hold(env(1, "e", 400)).unwrap();
        assert_eq!(budget.used(), 1000);
        a.reset();
        assert_eq!(budget.used(), 400, "a reset gives the channel's bytes back");
        drop(b);
        assert_eq!(budget.used(), 0, "so does a channel that goes away");
    }

    #[test]
    fn a_read_of_an_older_generation_no_longer_applies() {
        let budget = BacklogBudget::new(1 << 20);
        let mut seq = live_at(3, &budget);
        seq.start_catch_up();
        let (since, generation) = (seq.position(), seq.generation());
        assert!(seq.expects(&since, generation));
        // The link broke and came back while that read was in flight.
        seq.start_catch_up();
        assert!(!seq.expects(&since, generation));
        assert!(seq.expects(&since, seq.generation()));
    }

    #[test]
    fn the_backlog_covered_by_a_position_is_what_it_reaches_in_its_epoch() {
        let budget = BacklogBudget::new(1 << 20);
        let mut seq = Sequencer::new(budget);
        for (offset, epoch) in [(2, "e"), (3, "e"), (4, "e"), (1, "other")] {
            seq.hold(env(offset, epoch, 1)).unwrap();
        }
        let pos = Position {
            offset: 3,
            epoch: "e".into(),
        };
        let covered: Vec<u64> = seq
            .backlog_covered_by(&pos)
            .iter()
            .map(|e| e.offset)
            .collect();
        assert_eq!(covered, vec![2, 3]);
    }
}
