//! The one retry policy used by login, pulls, acks, sends and reconnect: bounded attempts,
//! exponential backoff with jitter, a total deadline, and the vendor's error classification
//! (permanent errors are never retried; rate limits wait at least `retry_after`).

use std::future::Future;
use std::time::Duration;

use im_service::{ErrorClass, ExponentialBackoff, ServiceError};
use tokio::time::Instant;

use crate::error::ArchError;

/// How a delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]` (AWS "full jitter"): spreads a crowd of clients best.
    Full,
    /// Exactly the ceiling (deterministic; for tests and single clients).
    None,
}

/// Exponential backoff: the ceiling doubles per attempt from `base` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling.
    pub max: Duration,
    /// Randomisation.
    pub jitter: Jitter,
}

impl Backoff {
    /// The arithmetic, in its one home: [`im_service::ExponentialBackoff`].
    fn exponential(&self) -> ExponentialBackoff {
        ExponentialBackoff::new(self.base, self.max)
    }

    /// The ceiling before retry number `attempt` (1-based): `base` doubled per retry, at
    /// most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.exponential().ceiling(attempt)
    }

    /// The delay before retry number `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        match self.jitter {
            Jitter::None => self.ceiling(attempt),
            Jitter::Full => self.exponential().full_jitter(attempt, &mut rand::rng()),
        }
    }
}

/// Attempts, backoff and deadline of one retried operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first (at least 1; default 4 = first try + 3 retries).
    pub max_attempts: u32,
    /// Delays between attempts.
    pub backoff: Backoff,
    /// No new attempt starts after this much time since the first.
    pub deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff: Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(5),
                jitter: Jitter::Full,
            },
            deadline: Some(Duration::from_secs(30)),
        }
    }
}

/// One failed attempt, as reported to observers before the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryAttempt {
    /// The operation.
    pub op: &'static str,
    /// Which attempt failed (1-based).
    pub attempt: u32,
    /// Why.
    pub error: ServiceError,
    /// Wait before the next attempt; `None` when this was the last.
    pub next_in: Option<Duration>,
}

impl RetryPolicy {
    /// Runs `f` until it succeeds, fails permanently, or attempts/deadline run out.
    /// `on_attempt` sees every failed attempt as it fails, before the wait for the next one
    /// (it is awaited: a UI learns of a retry while it is pending, not after it).
    pub async fn run<T, Fut, Obs>(
        &self,
        op: &'static str,
        mut on_attempt: impl FnMut(RetryAttempt) -> Obs,
        mut f: impl FnMut() -> Fut,
    ) -> Result<T, ArchError>
    where
        Fut: Future<Output = Result<T, ServiceError>>,
        Obs: Future<Output = ()>,
    {
        let started = Instant::now();
        let max = self.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let class = error.class();
            let mut wait = match class {
                ErrorClass::Permanent => None,
                ErrorClass::Transient => Some(self.backoff.delay(attempt)),
                ErrorClass::RateLimited { retry_after } => {
                    Some(self.backoff.delay(attempt).max(retry_after))
                }
            };
            if attempt >= max {
                wait = None;
            }
            if let (Some(w), Some(deadline)) = (wait, self.deadline)
                && started.elapsed() + w > deadline
            {
                wait = None;
            }
            let report = RetryAttempt {
                op,
                attempt,
                error: error.clone(),
                next_in: wait,
            };
            tracing::debug!(op, attempt, error = %error, next_in = ?wait, "attempt failed");
            on_attempt(report).await;
            match (class, wait) {
                (ErrorClass::Permanent, _) => return Err(ArchError::Permanent { op, error }),
                (_, None) => {
                    tracing::warn!(op, attempts = attempt, error = %error, "giving up");
                    return Err(ArchError::GaveUp {
                        op,
                        attempts: attempt,
                        last: error,
                    });
                }
                (_, Some(w)) => tokio::time::sleep(w).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fixed(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(4),
                jitter: Jitter::None,
            },
            deadline: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_growing_delays_then_given_up() {
        let calls = AtomicU32::new(0);
        let mut seen = Vec::new();
        let started = Instant::now();
        let result: Result<(), _> = fixed(4)
            .run(
                "pull",
                |a| {
                    seen.push((a.attempt, a.next_in));
                    async {}
                },
                || {
                    // A runaway loop (attempts never counted up) fails here by name
                    // instead of spinning forever.
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    assert!(n < 100, "runaway retry loop: {n} calls for 4 attempts");
                    async { Err(ServiceError::Timeout(Duration::from_secs(1))) }
                },
            )
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(
            seen,
            [
                (1, Some(Duration::from_secs(1))),
                (2, Some(Duration::from_secs(2))),
                (3, Some(Duration::from_secs(4))),
                (4, None)
            ]
        );
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        assert!(matches!(
            result,
            Err(ArchError::GaveUp {
                op: "pull",
                attempts: 4,
                ..
            })
        ));
    }

    /// A retry that starts exactly at the deadline is still made; only one that would
    /// start after it is not. (Found by cargo-mutants: `>` → `>=` survived.)
    #[tokio::test(start_paused = true)]
    async fn a_retry_that_starts_exactly_at_the_deadline_is_made() {
        let calls = AtomicU32::new(0);
        let at_the_edge = RetryPolicy {
            deadline: Some(Duration::from_secs(1)),
            ..fixed(5)
        };
        let result = at_the_edge
            .run(
                "send",
                |_| async {},
                || {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            Err(ServiceError::Timeout(Duration::from_secs(1)))
                        } else {
                            Ok(n)
                        }
                    }
                },
            )
            .await;
        assert_eq!(result.ok(), Some(1), "the retry at t = deadline ran");
        let past = RetryPolicy {
            deadline: Some(Duration::from_millis(999)),
            ..fixed(5)
        };
        calls.store(0, Ordering::SeqCst);
        let result = past
            .run(
                "send",
                |_| async {},
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err::<u32, _>(ServiceError::Timeout(Duration::from_secs(1))) }
                },
            )
            .await;
        assert!(result.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "no retry past the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fixed(5)
            .run(
                "login",
                |_| async {},
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err(ServiceError::AuthFailed("bad token".into())) }
                },
            )
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(
            result,
            Err(ArchError::Permanent { op: "login", .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_wait_at_least_retry_after_and_success_ends_the_loop() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result = fixed(5)
            .run(
                "send",
                |_| async {},
                || {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            Err(ServiceError::RateLimited {
                                retry_after: Duration::from_secs(30),
                            })
                        } else {
                            Ok(n)
                        }
                    }
                },
            )
            .await;
        assert_eq!(result, Ok(1));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_server_errors_count_as_transient() {
        let calls = AtomicU32::new(0);
        let _ = fixed(3)
            .run::<(), _, _>(
                "send",
                |_| async {},
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async {
                        Err(ServiceError::Server {
                            code: 599,
                            message: "?".into(),
                        })
                    }
                },
            )
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_retrying_early() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy {
            deadline: Some(Duration::from_secs(2)),
            ..fixed(10)
        };
        let result: Result<(), _> = policy
            .run(
                "pull",
                |_| async {},
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err(ServiceError::Unavailable("down".into())) }
                },
            )
            .await;
        // Waits 1 s after the first attempt; a further 2 s wait would pass the deadline.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(matches!(result, Err(ArchError::GaveUp { attempts: 2, .. })));
    }

    #[test]
    fn full_jitter_stays_under_a_capped_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: Jitter::Full,
        };
        for attempt in 1..40 {
            assert!(b.delay(attempt) <= b.ceiling(attempt));
            assert!(b.ceiling(attempt) <= Duration::from_secs(1));
        }
        assert!(b.ceiling(2) > b.ceiling(1));
    }

    /// The defaults the brief requires: sends and pulls are retried at least three times
    /// (four attempts in all) with capped exponential backoff and full jitter, within a
    /// deadline; the client's reconnect backoff is jittered too (failure class 7).
    #[test]
    fn the_default_policy_retries_at_least_three_times_with_full_jitter() {
        let policy = RetryPolicy::default();
        assert!(
            policy.max_attempts >= 4,
            "at least three retries after the first attempt: {policy:?}"
        );
        assert_eq!(
            policy,
            RetryPolicy {
                max_attempts: 4,
                backoff: Backoff {
                    base: Duration::from_millis(200),
                    max: Duration::from_secs(5),
                    jitter: Jitter::Full,
                },
                deadline: Some(Duration::from_secs(30)),
            },
            "the documented default policy"
        );
        // The backoff grows and is capped: 200 ms, 400 ms, 800 ms … 5 s.
        let ceilings: Vec<Duration> = (1..=6).map(|a| policy.backoff.ceiling(a)).collect();
        assert_eq!(
            ceilings,
            [200, 400, 800, 1600, 3200, 5000].map(Duration::from_millis),
            "backoff ceilings"
        );
        // The deadline leaves room for every attempt at the largest delays.
        let waits: Duration = (1..policy.max_attempts)
            .map(|a| policy.backoff.ceiling(a))
            .sum();
        assert!(
            policy.deadline.is_some_and(|d| d > waits),
            "the deadline cuts retries short: {policy:?}"
        );
        // That the client uses this policy, and full jitter for reconnects, is checked by
        // `config::tests` (the config names the policy; the policy names no config).
    }

    /// Failure class 7: a fleet dropped at once must spread its reconnects over the whole
    /// window, not retry at the ceiling together. 1,000 draws of the capped attempt: they
    /// cover the window from near zero to near the cap, roughly uniformly.
    #[test]
    fn full_jitter_spreads_a_fleet_over_the_window() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: Jitter::Full,
        };
        let cap = b.ceiling(10).as_millis() as f64;
        let draws: Vec<f64> = (0..1000).map(|_| b.delay(10).as_millis() as f64).collect();
        let below_tenth = draws.iter().filter(|&&d| d < cap / 10.0).count();
        let above_nine_tenths = draws.iter().filter(|&&d| d > cap * 0.9).count();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        // Uniform on [0, cap]: ~100 in each tenth, mean cap / 2. Bounds far outside chance.
        assert!(
            below_tenth >= 40,
            "{below_tenth} of 1000 in the first tenth: no spread"
        );
        assert!(
            above_nine_tenths >= 40,
            "{above_nine_tenths} of 1000 in the last tenth"
        );
        assert!(
            (mean - cap / 2.0).abs() < cap / 10.0,
            "mean {mean} ms, expected about {} ms: not uniform",
            cap / 2.0
        );
    }
}
