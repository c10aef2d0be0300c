//! Clock arithmetic that cannot panic: wherever a value from a client (a token's `exp`) or
//! from configuration (a timeout, an interval) meets the clock, it goes through here.
//! `Instant + Duration` panics when the sum passes what the clock can hold; a session task
//! that panics on a client's value is a client taking the gateway's bookkeeping down.

use std::time::Duration;

use tokio::time::Instant;

/// A century: further than any deadline needs to be, near enough for every clock.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `Instant::now() + d`, saturating at a century from now.
pub(crate) fn after(d: Duration) -> Instant {
    at(Instant::now(), d)
}

/// `from + d`, saturating at a century from `from`.
pub(crate) fn at(from: Instant, d: Duration) -> Instant {
    from.checked_add(d.min(CENTURY)).unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_duration_gives_an_instant_at_most_a_century_away() {
        let now = Instant::now();
        assert!(after(Duration::MAX) >= now + CENTURY);
        assert!(after(Duration::MAX) <= Instant::now() + CENTURY);
        assert!(after(Duration::ZERO) >= now);
    }
}
