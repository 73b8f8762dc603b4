//! Waiting for a lock another handle still holds: retry an operation (typically opening an
//! embedded database) while its error says "locked", until it succeeds, fails for another
//! reason, or a deadline passes.
//!
//! Why this exists: sled (used by `im-arch`'s and `im-archive`'s stores) releases a
//! directory's file lock only when the last background thread of a dropped handle ends,
//! up to a flush interval later, so a store reopened right after a restart finds the
//! directory locked for a moment. The helper is generic (a closure and a classifier) so this
//! crate does not depend on sled; [`is_lock_contention`] recognises the I/O error sled wraps.
//!
//! ```
//! use std::time::Duration;
//! use im_service::lock_wait::retry_while;
//!
//! let mut tries = 0;
//! let opened: Result<&str, &str> = retry_while(
//!     Duration::from_secs(2),
//!     || {
//!         tries += 1;
//!         if tries < 3 { Err("locked") } else { Ok("open") }
//!     },
//!     |e| *e == "locked",
//! );
//! assert_eq!(opened, Ok("open"));
//! ```

use std::time::{Duration, Instant};

/// Pause between two attempts.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `attempt` until it succeeds, fails with an error `busy` does not accept, or
/// `timeout` has passed since the first call (then the last error is returned).
///
/// Blocking: it sleeps the calling thread between attempts, like the blocking opens it is
/// for. Call it from synchronous code or `spawn_blocking`, never on a runtime thread.
pub fn retry_while<T, E>(
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T, E>,
    mut busy: impl FnMut(&E) -> bool,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Err(e) if busy(&e) && Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
            other => return other,
        }
    }
}

/// Whether an I/O error means "another handle holds the lock": `WouldBlock` (the OS error
/// of a non-blocking `flock`), or a message saying so (sled wraps the OS error in
/// "could not acquire lock on …").
pub fn is_lock_contention(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_errors_are_returned_at_once() {
        let mut calls = 0;
        let r: Result<(), &str> = retry_while(
            Duration::from_secs(5),
            || {
                calls += 1;
                Err("corrupt")
            },
            |e| *e == "locked",
        );
        assert_eq!((r, calls), (Err("corrupt"), 1));
    }

    #[test]
    fn a_lock_held_past_the_deadline_gives_the_last_error() {
        let started = Instant::now();
        let r: Result<(), &str> = retry_while(
            Duration::from_millis(60),
            || Err("locked"),
            |e| *e == "locked",
        );
        assert_eq!(r, Err("locked"));
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn lock_contention_is_recognised_in_both_forms() {
        use std::io::{Error, ErrorKind};
        assert!(is_lock_contention(&Error::from(ErrorKind::WouldBlock)));
        assert!(is_lock_contention(&Error::other(
            "could not acquire lock on \"/tmp/x/db\": Os { code: 11 }"
        )));
        assert!(!is_lock_contention(&Error::from(ErrorKind::NotFound)));
    }
}
