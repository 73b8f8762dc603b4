//! Clocks: the wall clock a vendor stamps messages with, and a manual twin tests can shift.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::Timestamp;

/// Source of wall-clock time (milliseconds since the Unix epoch).
///
/// Vendors stamp messages, expire tokens and cut history by this clock. It is a trait so a
/// test can put messages 10 or 40 days into the past without waiting.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            // A clock set before 1970 is a misconfigured machine; treat it as the epoch.
            .unwrap_or(0);
        Timestamp::from_millis(ms)
    }
}

/// This machine's time now: what the XMPP and Matrix adapters stamp locally.
#[cfg(any(feature = "xmpp", feature = "matrix"))]
pub(crate) fn now() -> Timestamp {
    SystemClock.now()
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use im_service::{Clock, ManualClock, Timestamp};
///
/// let clock = ManualClock::new(Timestamp::from_millis(1_000));
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now(), Timestamp::from_millis(3_000));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    /// Current time in milliseconds; shared between clones so a test and a vendor agree.
    millis: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            millis: Arc::new(AtomicI64::new(start.as_millis())),
        }
    }

    /// A clock standing at the current system time (a realistic starting point for demos).
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.millis
            .fetch_add(crate::model::duration_millis(by), Ordering::SeqCst);
    }

    /// Sets the clock to an absolute time (may move it backwards, to model a skewed client).
    pub fn set(&self, to: Timestamp) {
        self.millis.store(to.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

/// The system clock plus an adjustable offset: time flows normally, and a test or an
/// operator can shift it (to put stored messages 10 or 40 days in the past). Clones share
/// the offset.
#[derive(Debug, Clone, Default)]
pub struct ShiftedClock {
    /// Offset added to the system time, in milliseconds.
    offset: Arc<AtomicI64>,
}

impl ShiftedClock {
    /// A clock showing the system time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`, from now on.
    pub fn shift(&self, by: Duration) {
        self.offset
            .fetch_add(crate::model::duration_millis(by), Ordering::SeqCst);
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> Timestamp {
        let now = SystemClock.now().as_millis();
        Timestamp::from_millis(now.saturating_add(self.offset.load(Ordering::SeqCst)))
    }
}
