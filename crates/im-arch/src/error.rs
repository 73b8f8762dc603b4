//! The architecture layer's error type.

use im_service::{ChangeRefusal, ClientMsgId, ErrorClass, KickReason, ServiceError, UserId};

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
        /// ([`SCHEMA_VERSION`](crate::SCHEMA_VERSION)).
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
    /// The vendor refused the credentials (wrong token or password). Log in again with
    /// other credentials.
    #[error("login refused: {0}")]
    AuthFailed(String),
    /// The vendor does not know the user.
    #[error("unknown user {0}")]
    UnknownUser(UserId),
    /// The vendor closed the session (another login took over, the account was removed …);
    /// the client does not reconnect by itself. `login()` again to take over.
    #[error("kicked: {0:?}")]
    Kicked(KickReason),
    /// The token expired and no fresh one could be had (no token provider, or it failed);
    /// `login()` again after the app renewed the credentials.
    #[error("token expired")]
    TokenExpired,
    /// The client was logged out (by [`ImClient::logout`](crate::ImClient::logout)) while the
    /// call waited.
    #[error("logged out")]
    LoggedOut,
    /// No queued message has this client id (already sent, or cancelled).
    #[error("no queued message {0}")]
    NotQueued(ClientMsgId),
    /// The call's arguments are not acceptable (a bad subscription name, an
    /// acknowledgement of an event not handed out yet …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A local facility the client needs could not be set up (e.g. an HTTP client).
    #[error("client unavailable: {0}")]
    Unavailable(String),
    /// The client's background task has stopped.
    #[error("client stopped")]
    Stopped,
    /// The vendor refused to recall, edit or delete a message (its window passed, not the
    /// sender, already recalled, unknown message): nothing changed, retrying cannot help.
    #[error("{op}: change refused: {refusal}")]
    ChangeRefused {
        /// The operation (`recall`, `edit`, `delete_for_me`).
        op: &'static str,
        /// Why, as the vendor said.
        refusal: ChangeRefusal,
    },
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
            | ArchError::AuthFailed(_)
            | ArchError::UnknownUser(_)
            | ArchError::Kicked(_)
            | ArchError::TokenExpired
            | ArchError::LoggedOut
            | ArchError::NotQueued(_)
            | ArchError::InvalidArgument(_)
            | ArchError::Stopped
            | ArchError::SchemaTooNew { .. }
            | ArchError::CorruptEntry { .. }
            | ArchError::ChangeRefused { .. } => false,
            ArchError::GaveUp { last, .. } => last.class() != ErrorClass::Permanent,
            ArchError::Store(_) | ArchError::Unavailable(_) => true,
        }
    }
}
