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
    /// The local store was written by a newer build with a layout this build cannot read.
    /// Nothing was changed on disk; upgrade the build (or point it at another directory).
    #[error("store schema version {found} is newer than the supported {supported}")]
    SchemaTooNew {
        /// The version recorded in the store.
        found: u32,
        /// The newest version this build reads
        /// ([`SCHEMA_VERSION`](crate::store::SCHEMA_VERSION)).
        supported: u32,
    },
    /// One stored entry cannot be read (its bytes do not decode). Only operations that touch
    /// this entry fail; the rest of the store stays usable.
    #[error("corrupt entry in tree {tree:?} at key {key}: {reason}")]
    CorruptEntry {
        /// The tree (table) holding the entry.
        tree: String,
        /// Its key, as text when printable, hex otherwise.
        key: String,
        /// Why it could not be read.
        reason: String,
    },
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
            ArchError::Permanent { .. }
            | ArchError::Stopped
            | ArchError::SchemaTooNew { .. }
            | ArchError::CorruptEntry { .. } => false,
            ArchError::GaveUp { last, .. } => last.class() != ErrorClass::Permanent,
            ArchError::Store(_) | ArchError::Unavailable(_) => true,
        }
    }
}
