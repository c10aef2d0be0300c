//! Per-connection and per-node limits: the command rate (a token bucket per connection), the
//! connection slots of the node and of each user, and the browser Origin allow-list.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::auth::glob_match;

/// A token bucket: `burst` commands at once, refilled at `rate` per second. A rate of 0
/// turns the limit off.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Commands refused since the last one allowed.
    refused_in_a_row: u32,
}

/// What the limiter says about one command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Refuse this command (error 114).
    Refuse,
    /// The client kept going after a whole burst of refusals: close it (3007).
    Close,
}

impl RateLimiter {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    /// Takes one token for a command.
    pub(crate) fn check(&mut self) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Allow;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_a_row = self.refused_in_a_row.saturating_add(1);
        if f64::from(self.refused_in_a_row) > self.burst {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

/// Counts the node's connections and each user's, with limits. Shared by the node.
pub(crate) struct ConnectionSlots {
    max_total: usize,
    max_per_user: usize,
    total: AtomicUsize,
    per_user: Mutex<HashMap<String, usize>>,
    /// Connections refused for a limit, for logs and metrics.
    pub(crate) refused: AtomicU64,
}

/// One counted connection; frees its slot when dropped.
pub(crate) struct Slot {
    slots: Arc<ConnectionSlots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One user's counted connection; frees the user's slot when dropped.
pub(crate) struct UserSlot {
    slots: Arc<ConnectionSlots>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut map = self.slots.per_user.lock();
        if let Some(n) = map.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

impl ConnectionSlots {
    pub(crate) fn new(max_total: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_user,
            total: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        })
    }

    /// A slot for a new connection, unless the node holds `max_total` already.
    pub(crate) fn connection(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(Slot {
                slots: self.clone(),
            }),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A slot for one more connection of `user`, unless the user holds `max_per_user` on this
    /// node already. Anonymous connections are not counted per user.
    pub(crate) fn user(self: &Arc<Self>, user: &str) -> Option<Option<UserSlot>> {
        if user.is_empty() {
            return Some(None);
        }
        let mut map = self.per_user.lock();
        // Refused before any entry is made: the map holds only users with a connection, so a
        // stream of distinct refused users (with a limit of 0, every user) leaves nothing.
        if map.get(user).copied().unwrap_or(0) >= self.max_per_user {
            drop(map);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *map.entry(user.to_owned()).or_insert(0) += 1;
        Some(Some(UserSlot {
            slots: self.clone(),
            user: user.to_owned(),
        }))
    }
}

/// Whether a browser's `Origin` is allowed by the patterns (`*` wildcards, e.g.
/// `https://*.example.com`). An empty list allows every origin; a request without an `Origin`
/// header (not from a browser) is always allowed.
pub(crate) fn origin_allowed(patterns: &[String], origin: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    patterns.is_empty()
        || patterns
            .iter()
            .any(|p| glob_match(&p.to_ascii_lowercase(), &origin.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate_then_closes_a_client_that_keeps_going() {
        let mut r = RateLimiter::new(10, 5);
        for _ in 0..5 {
            assert_eq!(r.check(), Verdict::Allow);
        }
        for _ in 0..5 {
            assert_eq!(r.check(), Verdict::Refuse);
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(r.check(), Verdict::Allow);
        for _ in 0..5 {
            assert_eq!(r.check(), Verdict::Refuse);
        }
        assert_eq!(r.check(), Verdict::Close);
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let mut r = RateLimiter::new(0, 1);
        for _ in 0..1000 {
            assert_eq!(r.check(), Verdict::Allow);
        }
    }

    #[test]
    fn slots_are_limited_and_freed() {
        let slots = ConnectionSlots::new(2, 1);
        let a = slots.connection().unwrap();
        let _b = slots.connection().unwrap();
        assert!(slots.connection().is_none());
        drop(a);
        assert!(slots.connection().is_some());

        let u = slots.user("alice").unwrap();
        assert!(slots.user("alice").is_none());
        assert!(slots.user("bob").unwrap().is_some());
        assert!(
            slots.user("").unwrap().is_none(),
            "anonymous is not counted"
        );
        drop(u);
        assert!(slots.user("alice").is_some());
        assert_eq!(slots.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn refused_users_leave_no_entry_behind() {
        let slots = ConnectionSlots::new(10, 0);
        for i in 0..1000 {
            assert!(slots.user(&format!("user-{i}")).is_none());
        }
        assert!(slots.per_user.lock().is_empty());
        let slots = ConnectionSlots::new(10, 1);
        let held = slots.user("alice").unwrap();
        assert_eq!(slots.per_user.lock().len(), 1);
        drop(held);
        assert!(
            slots.per_user.lock().is_empty(),
            "the last connection's entry goes"
        );
    }

    #[test]
    fn origins_match_exactly_or_by_pattern() {
        let list = vec![
            "https://app.example.com".to_owned(),
            "https://*.example.org".to_owned(),
        ];
        assert!(origin_allowed(&list, Some("https://app.example.com")));
        assert!(origin_allowed(&list, Some("HTTPS://APP.example.com")));
        assert!(origin_allowed(&list, Some("https://a.example.org")));
        assert!(!origin_allowed(&list, Some("https://evil.com")));
        assert!(!origin_allowed(
            &list,
            Some("https://app.example.com.evil.com")
        ));
        assert!(origin_allowed(&list, None));
        assert!(origin_allowed(&[], Some("https://evil.com")));
    }
}
