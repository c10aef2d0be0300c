//! Reconnect and retry delays: exponential growth with random jitter.

use std::time::Duration;

/// How long to wait before the next attempt after `n` failed ones.
///
/// The nominal delay is `d = min(max, min × factorⁿ)`; the actual delay is drawn uniformly
/// from `[(1 − jitter) × d, d]`. Jitter matters: when a gateway drains thousands of clients
/// at once, it spreads their reconnects instead of having them all arrive together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Nominal delay of the first attempt.
    pub min: Duration,
    /// Largest nominal delay.
    pub max: Duration,
    /// Growth per failed attempt (values below 1 are taken as 1).
    pub factor: f64,
    /// Fraction of the nominal delay that is random, from 0 (none) to 1.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 100 ms doubling up to 5 s, with 50 % jitter.
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
            factor: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The nominal (jitter-free) delay after `attempt` failed attempts.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let min = self.min.as_secs_f64();
        let max = self.max.as_secs_f64().max(min);
        let grown = min * self.factor.max(1.0).powi(attempt.min(64) as i32);
        Duration::from_secs_f64(grown.min(max))
    }

    /// The delay to wait after `attempt` failed attempts, with jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.nominal(attempt).as_secs_f64();
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(d * (1.0 - jitter * rand::random::<f64>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_max() {
        let b = Backoff::default();
        assert_eq!(b.nominal(0), Duration::from_millis(100));
        assert_eq!(b.nominal(1), Duration::from_millis(200));
        assert_eq!(b.nominal(5), Duration::from_millis(3200));
        assert_eq!(b.nominal(6), Duration::from_secs(5));
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = Backoff::default();
        for attempt in 0..10 {
            let nominal = b.nominal(attempt);
            for _ in 0..100 {
                let d = b.delay(attempt);
                assert!(d <= nominal && d >= nominal / 2, "{d:?} vs {nominal:?}");
            }
        }
        let none = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(none.delay(3), none.nominal(3));
    }
}
