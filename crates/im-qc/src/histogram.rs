//! A fixed-size latency histogram with logarithmic buckets: constant memory, O(1) record,
//! mergeable across time slots, quantiles within one bucket (≈ 12%) of the exact value.

use std::time::Duration;

/// Buckets per decade: upper bounds grow by 10^(1/20) ≈ 1.122 per bucket.
const PER_DECADE: usize = 20;
/// Decades covered from 1 µs: up to 1,000 s.
const DECADES: usize = 9;
/// Buckets, plus one for everything above the last bound.
const BUCKETS: usize = PER_DECADE * DECADES + 1;

/// Latency histogram from 1 µs to 1,000 s.
#[derive(Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Box<[u32; BUCKETS]>,
    total: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            total: 0,
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("total", &self.total)
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .finish()
    }
}

/// Upper bounds of the buckets in nanoseconds, computed once: a sample's bucket is a binary
/// search (no floating-point logarithm per sample).
fn bounds() -> &'static [u64; BUCKETS] {
    static BOUNDS: std::sync::OnceLock<[u64; BUCKETS]> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| {
        let mut b = [u64::MAX; BUCKETS];
        for (i, slot) in b.iter_mut().enumerate().take(BUCKETS - 1) {
            *slot = (10f64.powf(i as f64 / PER_DECADE as f64) * 1e3).round() as u64;
        }
        b
    })
}

fn bucket_of(d: Duration) -> usize {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    bounds()
        .partition_point(|&bound| bound < nanos)
        .min(BUCKETS - 1)
}

/// Upper bound of bucket `i`.
fn upper_bound(i: usize) -> Duration {
    Duration::from_secs_f64(10f64.powf(i as f64 / PER_DECADE as f64) / 1e6)
}

impl LatencyHistogram {
    /// Records one sample.
    pub(crate) fn record(&mut self, d: Duration) {
        let b = bucket_of(d);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total += 1;
    }

    /// Adds another histogram's samples.
    pub(crate) fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = LatencyHistogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).unwrap().as_secs_f64() * 1e3;
        let p99 = h.quantile(0.99).unwrap().as_secs_f64() * 1e3;
        assert!((50.0..=50.0 * 1.13).contains(&p50), "{p50}");
        assert!((99.0..=99.0 * 1.13).contains(&p99), "{p99}");
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }

    proptest! {
        #[test]
        fn a_quantile_is_within_one_bucket_above_the_exact_value(
            mut samples in proptest::collection::vec(1u64..10_000_000, 1..200),
            q in 0.01f64..1.0,
        ) {
            let mut h = LatencyHistogram::default();
            for &s in &samples {
                h.record(Duration::from_micros(s));
            }
            samples.sort_unstable();
            let rank = ((q * samples.len() as f64).ceil() as usize).max(1);
            let exact = samples[rank - 1] as f64;
            let got = h.quantile(q).unwrap().as_secs_f64() * 1e6;
            prop_assert!(got >= exact * 0.999 && got <= exact * 1.123, "exact {exact} got {got}");
        }

        #[test]
        fn merging_is_recording_both(a in proptest::collection::vec(1u64..1_000_000, 0..50),
                                     b in proptest::collection::vec(1u64..1_000_000, 0..50)) {
            let (mut ha, mut hb, mut both) =
                (LatencyHistogram::default(), LatencyHistogram::default(), LatencyHistogram::default());
            for &s in &a { ha.record(Duration::from_micros(s)); both.record(Duration::from_micros(s)); }
            for &s in &b { hb.record(Duration::from_micros(s)); both.record(Duration::from_micros(s)); }
            ha.merge(&hb);
            prop_assert_eq!(ha, both);
        }
    }
}
