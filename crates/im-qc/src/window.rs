//! Sliding windows over time slots: a ring of slots of fixed length; a query merges the
//! slots that fall inside the window. Time is `tokio::time::Instant`, so paused-time tests
//! drive windows deterministically.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// What a slot accumulates.
pub(crate) trait Slot: Default + Clone {
    /// Adds `other` into `self`.
    fn merge(&mut self, other: &Self);
}

/// A ring of slots covering at most `span`.
#[derive(Debug, Clone)]
pub(crate) struct SlotRing<S> {
    slot: Duration,
    span: Duration,
    /// (slot start, data), oldest first.
    slots: VecDeque<(Instant, S)>,
}

impl<S: Slot> SlotRing<S> {
    /// Slots of length `slot`, keeping `span` of history.
    pub(crate) fn new(slot: Duration, span: Duration) -> Self {
        Self {
            slot: slot.max(Duration::from_millis(1)),
            span,
            slots: VecDeque::new(),
        }
    }

    /// The slot for `now`, created (and old slots dropped) as needed.
    pub(crate) fn at(&mut self, now: Instant) -> &mut S {
        let fresh = match self.slots.back() {
            Some((start, _)) => now.duration_since(*start) >= self.slot,
            None => true,
        };
        if fresh {
            self.slots.push_back((now, S::default()));
            while let Some((start, _)) = self.slots.front() {
                if now.duration_since(*start) > self.span + self.slot {
                    self.slots.pop_front();
                } else {
                    break;
                }
            }
        }
        // A slot was pushed above if there was none.
        match self.slots.back_mut() {
            Some((_, s)) => s,
            None => unreachable!("a slot was just pushed"),
        }
    }

    /// Everything recorded in the last `window` before `now` (slot granularity).
    pub(crate) fn window(&self, now: Instant, window: Duration) -> S {
        let mut out = S::default();
        for (start, s) in self.slots.iter().rev() {
            if now.duration_since(*start) > window {
                break;
            }
            out.merge(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Clone, Debug, PartialEq)]
    struct Count(u64);
    impl Slot for Count {
        fn merge(&mut self, other: &Self) {
            self.0 += other.0;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn windows_see_only_their_span() {
        let mut ring: SlotRing<Count> =
            SlotRing::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..120 {
            ring.at(Instant::now()).0 += 1;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let now = Instant::now();
        assert_eq!(ring.window(now, Duration::from_secs(10)), Count(10));
        assert_eq!(ring.window(now, Duration::from_secs(60)), Count(60));
        // Older than the span (plus a slot or two of slack) is gone: memory stays bounded.
        assert_eq!(ring.window(now, Duration::from_secs(3600)).0, 62);
    }
}
