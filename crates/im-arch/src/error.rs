//! The architecture layer's error type.

use im_service::{ErrorClass, ServiceError};

/// Every way an `im-arch` operation can fail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArchError {
    /// The vendor refused with an error retrying cannot fix.
    #[error("{op}: {error}")]
    Permanent {
        /// The operation (`login`, `pull_offline`, …).
        op: &'static str,
        /// The vendor's answer.
        error: ServiceError,
    },
    /// Every allowed attempt failed (or the deadline passed) with retryable errors.
    #[error("{op}: gave up after {attempts} attempt(s): {last}")]
    GaveUp {
        /// The operation.
        op: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last error seen.
        last: ServiceError,
    },
    /// The local store failed.
    #[error("store: {0}")]
    Store(String),
    /// The client is not in a state that allows this (e.g. logged out, kicked).
    #[error("client unavailable: {0}")]
    Unavailable(String),
    /// The client's background task has stopped.
    #[error("client stopped")]
    Stopped,
}

impl ArchError {
    /// The vendor error underneath, if any.
    pub fn service_error(&self) -> Option<&ServiceError> {
        match self {
            ArchError::Permanent { error, .. } => Some(error),
            ArchError::GaveUp { last, .. } => Some(last),
            _ => None,
        }
    }

    /// Whether trying the whole operation again later can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            ArchError::Permanent { .. } | ArchError::Stopped => false,
            ArchError::GaveUp { last, .. } => last.class() != ErrorClass::Permanent,
            ArchError::Store(_) | ArchError::Unavailable(_) => true,
        }
    }
}
