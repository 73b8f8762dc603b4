//! The service layer's error type, with the retry classification higher layers act on.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::capabilities::Capability;
use crate::codec::CodecError;
use crate::model::{ConversationId, UserId};

/// Why the vendor ended a session on its side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KickReason {
    /// The same user logged in on another connection/device.
    LoggedInElsewhere,
    /// The account was removed or disabled.
    AccountRemoved,
    /// An administrator closed the session.
    Admin(String),
}

impl fmt::Display for KickReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KickReason::LoggedInElsewhere => f.write_str("logged in elsewhere"),
            KickReason::AccountRemoved => f.write_str("account removed"),
            KickReason::Admin(why) => write!(f, "closed by administrator: {why}"),
        }
    }
}

/// What a caller should do about an error. Higher layers decide retries from this alone,
/// never by matching strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again with backoff (timeouts, lost connections, unknown server errors).
    Transient,
    /// Try again, but not before `retry_after`.
    RateLimited {
        /// Minimum wait the vendor asked for.
        retry_after: Duration,
    },
    /// Retrying cannot help (bad credentials, too large, unsupported, kicked).
    Permanent,
}

/// Every way a vendor call can fail.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum ServiceError {
    /// The call needs a logged-in session and there is none.
    #[error("not logged in")]
    NotLoggedIn,
    /// Credentials were rejected.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The session's token is past its expiry; log in again with a fresh token.
    #[error("token expired")]
    TokenExpired,
    /// The vendor closed this session (another login, account removed …).
    #[error("kicked: {0}")]
    Kicked(KickReason),
    /// The user is not known to the vendor.
    #[error("unknown user {0}")]
    UnknownUser(UserId),
    /// The conversation does not exist or the user is not a member.
    #[error("not a member of conversation {0}")]
    NotMember(ConversationId),
    /// The content exceeds the vendor's size limit.
    #[error("message too large: {size} bytes, limit {max}")]
    MessageTooLarge {
        /// Size of the rejected content.
        size: usize,
        /// The vendor's limit.
        max: usize,
    },
    /// The request itself is invalid (bad cursor, zero page size …).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The vendor does not offer this; see [`Capabilities`](crate::Capabilities).
    #[error("not supported by this vendor: {0}")]
    Unsupported(Capability),
    /// Too many requests; wait before retrying.
    #[error("rate limited, retry after {retry_after:?}")]
    RateLimited {
        /// Minimum wait the vendor asked for.
        retry_after: Duration,
    },
    /// No answer in time.
    #[error("vendor did not answer within {0:?}")]
    Timeout(Duration),
    /// The long connection broke.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The vendor is down or refusing service.
    #[error("vendor unavailable: {0}")]
    Unavailable(String),
    /// The vendor answered with an error we do not know. Counted as transient: an unknown
    /// failure must not permanently fail a user's message.
    #[error("vendor error {code}: {message}")]
    Server {
        /// Vendor-specific code.
        code: u32,
        /// Vendor-specific text.
        message: String,
    },
    /// The vendor spoke something we could not parse.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Encoding or decoding failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The vendor refused to recall, edit or delete a message (by its
    /// [`LifecyclePolicy`](crate::LifecyclePolicy), or because the message is unknown).
    /// Appended last, so the encodings of the other variants are unchanged.
    #[error("change refused: {0}")]
    ChangeRefused(crate::lifecycle::ChangeRefusal),
    /// A pipelined send ([`Vendor::send_after`](crate::Vendor::send_after)) was refused
    /// because the send it follows is not stored (refused, or not arrived yet). Nothing was
    /// stored; send it again once that one is settled. Transient, but not for a blind retry:
    /// the client layer re-queues it behind its predecessor instead. Appended last, so the
    /// encodings of the other variants are unchanged.
    #[error("the send {0} this one follows is not stored")]
    PredecessorNotStored(crate::model::ClientMsgId),
}

impl ServiceError {
    /// The retry classification of this error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use im_service::{ErrorClass, ServiceError};
    ///
    /// assert_eq!(ServiceError::Timeout(Duration::from_secs(5)).class(), ErrorClass::Transient);
    /// assert_eq!(ServiceError::TokenExpired.class(), ErrorClass::Permanent);
    /// let unknown = ServiceError::Server { code: 599, message: "?".into() };
    /// assert_eq!(unknown.class(), ErrorClass::Transient);
    /// ```
    pub fn class(&self) -> ErrorClass {
        match self {
            ServiceError::RateLimited { retry_after } => ErrorClass::RateLimited {
                retry_after: *retry_after,
            },
            ServiceError::Timeout(_)
            | ServiceError::ConnectionLost(_)
            | ServiceError::Unavailable(_)
            | ServiceError::Server { .. }
            | ServiceError::PredecessorNotStored(_) => ErrorClass::Transient,
            ServiceError::NotLoggedIn
            | ServiceError::AuthFailed(_)
            | ServiceError::TokenExpired
            | ServiceError::Kicked(_)
            | ServiceError::UnknownUser(_)
            | ServiceError::NotMember(_)
            | ServiceError::MessageTooLarge { .. }
            | ServiceError::InvalidRequest(_)
            | ServiceError::Unsupported(_)
            | ServiceError::Protocol(_)
            | ServiceError::Codec(_)
            | ServiceError::ChangeRefused(_) => ErrorClass::Permanent,
        }
    }

    /// Shorthand for `class() != Permanent`.
    pub fn is_retryable(&self) -> bool {
        self.class() != ErrorClass::Permanent
    }

    /// Whether the session is gone and needs a fresh login (possibly with a new token).
    pub fn needs_login(&self) -> bool {
        matches!(
            self,
            ServiceError::NotLoggedIn | ServiceError::TokenExpired | ServiceError::Kicked(_)
        )
    }
}
