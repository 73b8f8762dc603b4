//! What keeps strangers from wearing a server down by failing: a token bucket of failures
//! per key in a bounded table ([`FailureThrottle`]), and the rate limit on the warning lines
//! refusals leave in the log ([`WarnLimit`]).
//!
//! Shared by every server of the workspace that authenticates strangers: the reference
//! vendor (failed logins per account and per peer) and the quality-control metrics server
//! (failed bearer tokens per peer). Both run on tokio's clock, so tests move them with
//! `tokio::time::pause`/`advance`.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How many failures a key may have: `burst` at once, then one more every `refill` (a
/// token bucket). A key over it is refused without its credentials being checked, until
/// the bucket has refilled enough for one more attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureBudget {
    /// Failures allowed back to back.
    pub burst: u32,
    /// Time that gives back one failure.
    pub refill: Duration,
}

/// One table of failure buckets, kept as the instant each key's bucket is full again
/// (GCRA: "theoretical arrival time"); a key absent or at an instant past is full. At most
/// `max` keys are remembered: past it the records that have fully refilled (they carry
/// nothing) go first, then the one closest to refilled, so a stranger spraying keys costs
/// bounded memory.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
/// use std::time::Duration;
/// use im_service::throttle::{FailureBudget, FailureThrottle};
/// use tokio::time::Instant;
///
/// let budget = FailureBudget { burst: 2, refill: Duration::from_secs(1) };
/// let mut t = FailureThrottle::new(budget, 1_000);
/// t.fail(&"10.0.0.1", Instant::now());
/// t.fail(&"10.0.0.1", Instant::now());
/// assert_eq!(t.check(&"10.0.0.1", Instant::now()), Err(Duration::from_secs(1)));
/// assert_eq!(t.check(&"10.0.0.2", Instant::now()), Ok(()));
/// # });
/// ```
#[derive(Debug)]
pub struct FailureThrottle<K> {
    budget: FailureBudget,
    full_at: HashMap<K, Instant>,
    max: usize,
}

impl<K: Hash + Eq + Clone> FailureThrottle<K> {
    /// A table allowing `budget` per key, remembering at most `max` keys (at least one).
    pub fn new(budget: FailureBudget, max: usize) -> Self {
        Self {
            budget,
            full_at: HashMap::new(),
            max: max.max(1),
        }
    }

    /// `Err(wait)` if one more failure would overdraw `key`'s bucket.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let Some(full_at) = self.full_at.get(key) else {
            return Ok(());
        };
        let span = self.budget.refill * self.budget.burst.max(1);
        let after = (*full_at).max(now) + self.budget.refill;
        match (after - now).checked_sub(span) {
            Some(wait) if !wait.is_zero() => Err(wait),
            _ => Ok(()),
        }
    }

    /// Takes one failure from `key`'s bucket.
    pub fn fail(&mut self, key: &K, now: Instant) {
        if !self.full_at.contains_key(key) && self.full_at.len() >= self.max {
            self.full_at.retain(|_, at| *at > now);
            if self.full_at.len() >= self.max
                && let Some(oldest) = self
                    .full_at
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
            {
                self.full_at.remove(&oldest);
            }
        }
        let at = self.full_at.entry(key.clone()).or_insert(now);
        *at = (*at).max(now) + self.budget.refill;
    }

    /// Forgets `key` (a success starts it afresh).
    pub fn clear(&mut self, key: &K) {
        self.full_at.remove(key);
    }

    /// Keys remembered now (for tests of the bound).
    pub fn len(&self) -> usize {
        self.full_at.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.full_at.is_empty()
    }
}

/// Rate limit of refusal warnings: at most `per_second` lines a second; the next line
/// printed says how many were suppressed meanwhile, so a flood shows as a few lines with
/// counts, not a million lines.
#[derive(Debug)]
pub struct WarnLimit {
    per_second: u32,
    state: Mutex<WarnWindow>,
}

#[derive(Debug)]
struct WarnWindow {
    start: Option<Instant>,
    printed: u32,
    suppressed: u64,
}

impl WarnLimit {
    /// At most `per_second` lines a second.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            state: Mutex::new(WarnWindow {
                start: None,
                printed: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(suppressed since the last line)` if a line may be printed now.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.state.lock();
        if w.start.is_none_or(|s| now >= s + Duration::from_secs(1)) {
            w.start = Some(now);
            w.printed = 0;
        }
        if w.printed < self.per_second {
            w.printed += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_key_gets_its_burst_then_one_failure_per_refill() {
        let mut t = FailureThrottle::new(
            FailureBudget {
                burst: 3,
                refill: Duration::from_secs(10),
            },
            100,
        );
        for i in 0..3 {
            assert_eq!(
                t.check(&1, Instant::now()),
                Ok(()),
                "failure {i} is within the burst"
            );
            t.fail(&1, Instant::now());
        }
        assert_eq!(t.check(&1, Instant::now()), Err(Duration::from_secs(10)));
        assert_eq!(
            t.check(&2, Instant::now()),
            Ok(()),
            "another key is untouched"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            t.check(&1, Instant::now()),
            Ok(()),
            "one more after a refill"
        );
        t.fail(&1, Instant::now());
        assert_eq!(t.check(&1, Instant::now()), Err(Duration::from_secs(10)));
        t.clear(&1);
        assert_eq!(
            t.check(&1, Instant::now()),
            Ok(()),
            "a success clears the key"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_stays_bounded() {
        let mut t = FailureThrottle::new(
            FailureBudget {
                burst: 5,
                refill: Duration::from_secs(5),
            },
            50,
        );
        for i in 0..10_000u32 {
            t.fail(&i, Instant::now());
        }
        assert!(t.len() <= 50, "{} keys remembered", t.len());
    }

    #[tokio::test(start_paused = true)]
    async fn warnings_are_rate_limited_and_count_what_they_suppressed() {
        let w = WarnLimit::new(3);
        assert_eq!(
            (0..10).filter_map(|_| w.allow()).collect::<Vec<_>>(),
            [0, 0, 0]
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(w.allow(), Some(7), "the next line reports the 7 suppressed");
        assert_eq!(w.allow(), Some(0));
    }
}
