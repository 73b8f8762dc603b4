//! Fault injection for the reference vendor: what can go wrong on the wire, set at start
//! (CLI flags) or at any time through the server handle, deterministic under a seed.

use std::time::Duration;

/// Wire-level faults applied to every connection (each connection draws from its own
/// random generator seeded by the server seed and its connection number, so a run with
/// the same seed and traffic fails the same way).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Close each connection abruptly after it has sent this many frames.
    pub drop_after_frames: Option<u64>,
    /// Probability (0–1) that any outgoing frame is replaced by an abrupt close.
    pub drop_probability: f64,
    /// Delay before each outgoing frame.
    pub frame_delay: Option<Duration>,
    /// Probability (0–1) that a pushed message is sent twice.
    pub duplicate_push_probability: f64,
    /// Swap each pair of consecutive pushes (the first is held until the second is sent,
    /// or until `reorder_window` passes, so nothing is lost).
    pub reorder_pushes: bool,
    /// How long a held push waits for a partner before it is sent anyway.
    pub reorder_window: Duration,
    /// Do not answer heartbeats (pings get no response).
    pub ignore_heartbeats: bool,
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self {
            reorder_window: Duration::from_millis(50),
            ..Self::default()
        }
    }
}
