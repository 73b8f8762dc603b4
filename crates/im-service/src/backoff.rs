//! Capped exponential backoff with full jitter: the one home of the delay arithmetic that
//! every retrying loop of the workspace uses (the client's retry policy and reconnects in
//! `im-arch`, the reference vendor's callback dispatcher).
//!
//! The ceiling before retry `attempt` (1-based) is `min(cap, base · 2^(attempt − 1))`,
//! computed without overflow for any attempt number and any durations. A "full jitter"
//! delay (AWS's name) is drawn uniformly from `[0, ceiling]`, from a random number
//! generator the caller supplies, so tests can pass a seeded one.
//!
//! ```
//! use std::time::Duration;
//! use im_service::ExponentialBackoff;
//!
//! let backoff = ExponentialBackoff::new(Duration::from_millis(200), Duration::from_secs(5));
//! assert_eq!(backoff.ceiling(1), Duration::from_millis(200));
//! assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
//! assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(5));
//! let delay = backoff.full_jitter(3, &mut rand::rng());
//! assert!(delay <= Duration::from_millis(800));
//! ```

use std::time::Duration;

use rand::Rng;

/// Nanoseconds per second, for splitting a nanosecond count back into a [`Duration`].
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// An exponentially growing, capped delay ceiling: `base` before the first retry, doubled
/// per retry, never above `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExponentialBackoff {
    /// Ceiling before the first retry (attempt 1).
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
}

impl ExponentialBackoff {
    /// A backoff starting at `base` and capped at `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The ceiling before retry number `attempt` (1-based; 0 counts as 1):
    /// `min(cap, base · 2^(attempt − 1))`. Never overflows: a product past the cap (or past
    /// what a `u128` of nanoseconds holds) is the cap.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1);
        let base = self.base.as_nanos();
        let cap = self.cap.as_nanos();
        if base == 0 {
            return Duration::ZERO;
        }
        // 2^doublings is `None` from 2^128 on; the product is `None` once it overflows. With
        // a base of at least 1 ns both are far past any cap a `Duration` can hold: the cap.
        let raw = 1u128
            .checked_shl(doublings)
            .and_then(|factor| base.checked_mul(factor));
        from_nanos(raw.map_or(cap, |r| r.min(cap)))
    }

    /// A delay before retry number `attempt` drawn uniformly from `[0, ceiling(attempt)]`.
    pub fn full_jitter<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        full_jitter(self.ceiling(attempt), rng)
    }
}

/// A delay drawn uniformly from `[0, ceiling]` (nanosecond resolution) with `rng`.
pub fn full_jitter<R: Rng + ?Sized>(ceiling: Duration, rng: &mut R) -> Duration {
    from_nanos(rng.random_range(0..=ceiling.as_nanos()))
}

/// The duration of `nanos` nanoseconds. Callers pass at most the nanoseconds of an
/// existing `Duration`, whose whole seconds fit in a `u64`; larger counts saturate.
fn from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits in a u32.
    let sub = (nanos % NANOS_PER_SEC) as u32;
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_ceiling_doubles_from_base_up_to_the_cap() {
        let b = ExponentialBackoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let ceilings: Vec<Duration> = (1..=7).map(|a| b.ceiling(a)).collect();
        assert_eq!(
            ceilings,
            [200, 400, 800, 1600, 3200, 5000, 5000].map(Duration::from_millis),
            "ceilings per attempt"
        );
        assert_eq!(b.ceiling(0), b.ceiling(1), "attempt 0 counts as the first");
    }

    #[test]
    fn extreme_inputs_neither_overflow_nor_pass_the_cap() {
        let huge = ExponentialBackoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.ceiling(u32::MAX), Duration::MAX);
        let b = ExponentialBackoff::new(Duration::from_nanos(1), Duration::from_secs(3600));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(3600));
        assert_eq!(b.ceiling(128), Duration::from_secs(3600), "2^127 ns");
        assert_eq!(b.ceiling(129), Duration::from_secs(3600), "2^128 overflows");
        let zero = ExponentialBackoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(zero.ceiling(u32::MAX), Duration::ZERO);
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(zero.full_jitter(3, &mut rng), Duration::ZERO);
        assert!(huge.full_jitter(u32::MAX, &mut rng) <= Duration::MAX);
    }

    /// Full jitter covers the whole window: 1,000 seeded draws reach both tenths at the
    /// edges of `[0, ceiling]`, with a mean near the middle.
    #[test]
    fn full_jitter_spreads_over_the_window() {
        let mut rng = StdRng::seed_from_u64(2026);
        let ceiling = Duration::from_secs(60);
        let draws: Vec<f64> = (0..1000)
            .map(|_| full_jitter(ceiling, &mut rng).as_secs_f64())
            .collect();
        let low = draws.iter().filter(|&&d| d < 6.0).count();
        let high = draws.iter().filter(|&&d| d > 54.0).count();
        let mean = draws.iter().sum::<f64>() / 1000.0;
        assert!(low >= 40 && high >= 40, "no spread: {low} low, {high} high");
        assert!((mean - 30.0).abs() < 6.0, "mean {mean} s, not uniform");
    }

    proptest! {
        /// Any base, cap and attempt: the ceiling never exceeds the cap (and does not
        /// panic on overflow), it never shrinks from one attempt to the next, and a draw
        /// is always within `[0, ceiling]`.
        #[test]
        fn a_draw_stays_within_a_capped_ceiling(
            base_ns in any::<u64>(),
            base_s in prop_oneof![Just(0u64), any::<u64>(), 0u64..100],
            cap_ns in any::<u64>(),
            cap_s in prop_oneof![Just(0u64), any::<u64>(), 0u64..100_000],
            attempt in prop_oneof![any::<u32>(), 0u32..200, Just(u32::MAX)],
            seed in any::<u64>(),
        ) {
            let b = ExponentialBackoff::new(
                Duration::new(base_s, (base_ns % 1_000_000_000) as u32),
                Duration::new(cap_s, (cap_ns % 1_000_000_000) as u32),
            );
            let ceiling = b.ceiling(attempt);
            prop_assert!(ceiling <= b.cap, "ceiling {ceiling:?} above cap {:?}", b.cap);
            prop_assert!(b.ceiling(attempt.saturating_add(1)) >= ceiling, "ceiling shrank");
            let mut rng = StdRng::seed_from_u64(seed);
            let delay = b.full_jitter(attempt, &mut rng);
            prop_assert!(delay <= ceiling, "draw {delay:?} above ceiling {ceiling:?}");
        }
    }
}
