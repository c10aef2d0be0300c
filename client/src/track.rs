//! Per-channel position tracking: which publication comes next, and what to do with one that
//! does not.

use crate::event::Position;

/// What to do with a publication, given the channel's last delivered position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The next one: deliver it and advance.
    Next,
    /// At or before the last delivered offset of the same epoch: drop it.
    Duplicate,
    /// Offsets were skipped, or the epoch changed: recover.
    Gap,
}

/// Judges a publication at `offset` of `epoch` against the last delivered position.
///
/// A position with an empty epoch and offset 0 is a channel that had never been published to
/// when the client subscribed: its first publication (offset 1, whatever its epoch) is next.
pub(crate) fn judge(last: &Position, offset: u64, epoch: &str) -> Verdict {
    if last.epoch == epoch || (last.epoch.is_empty() && last.offset == 0) {
        match offset {
            o if o <= last.offset && last.epoch == epoch => Verdict::Duplicate,
            o if o == last.offset + 1 => Verdict::Next,
            _ => Verdict::Gap,
        }
    } else {
        Verdict::Gap
    }
}

/// Advances `last` to a publication judged [`Verdict::Next`]; allocates only when the epoch
/// changes (the first publication of a never-published channel).
pub(crate) fn advance(last: &mut Position, offset: u64, epoch: &str) {
    last.offset = offset;
    if last.epoch != epoch {
        last.epoch = epoch.to_owned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_duplicate_and_gap_in_one_epoch() {
        let last = Position::new(5, "e");
        assert_eq!(judge(&last, 6, "e"), Verdict::Next);
        assert_eq!(judge(&last, 5, "e"), Verdict::Duplicate);
        assert_eq!(judge(&last, 1, "e"), Verdict::Duplicate);
        assert_eq!(judge(&last, 7, "e"), Verdict::Gap);
    }

    #[test]
    fn another_epoch_is_a_gap() {
        let last = Position::new(5, "e");
        assert_eq!(judge(&last, 1, "f"), Verdict::Gap);
        assert_eq!(judge(&last, 6, "f"), Verdict::Gap);
    }

    #[test]
    fn a_never_published_channel_takes_offset_one_of_any_epoch() {
        let mut last = Position::default();
        assert_eq!(judge(&last, 1, "e"), Verdict::Next);
        assert_eq!(judge(&last, 2, "e"), Verdict::Gap);
        advance(&mut last, 1, "e");
        assert_eq!(last, Position::new(1, "e"));
        assert_eq!(judge(&last, 1, "e"), Verdict::Duplicate);
        assert_eq!(judge(&last, 2, "e"), Verdict::Next);
    }
}
