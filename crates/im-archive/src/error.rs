//! The archive's error type, and the HTTP status each error answers with.

use axum::http::StatusCode;
use im_service::webhook::WebhookError;

/// Every way an archive operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A callback failed verification (signature, timestamp, headers, body).
    #[error("callback refused: {0}")]
    Callback(#[from] WebhookError),
    /// A callback names a vendor this archive has no secret for.
    #[error("unknown vendor {0:?}")]
    UnknownVendor(String),
    /// A request without a valid bearer token.
    #[error("missing or unknown bearer token")]
    Unauthorized,
    /// The user does not belong to the conversation.
    #[error("{user} is not a member of {conversation}")]
    Forbidden {
        /// Who asked.
        user: String,
        /// What they asked for.
        conversation: String,
    },
    /// The archive holds nothing of this conversation.
    #[error("unknown conversation {0}")]
    UnknownConversation(String),
    /// A request parameter is invalid (bad conversation id, page too large, bad cursor …).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The database is away for now (restarting, unreachable, or every pooled connection
    /// busy past the wait): answered 503 with `Retry-After`, so the vendor's dispatcher
    /// retries and the archive is ready again by itself when the database is back.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored entry does not decode.
    #[error("corrupt entry {key}: {reason}")]
    Corrupt {
        /// The entry's key, hex.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not bind or serve.
    #[error("http: {0}")]
    Io(#[from] std::io::Error),
}

impl ArchiveError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ArchiveError::Callback(WebhookError::MalformedBody(_)) => StatusCode::BAD_REQUEST,
            ArchiveError::Callback(_) | ArchiveError::Unauthorized => StatusCode::UNAUTHORIZED,
            ArchiveError::UnknownVendor(_) | ArchiveError::UnknownConversation(_) => {
                StatusCode::NOT_FOUND
            }
            ArchiveError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ArchiveError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ArchiveError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ArchiveError::Storage(_) | ArchiveError::Corrupt { .. } | ArchiveError::Io(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Whether the caller may succeed by trying again later (the vendor's dispatcher
    /// retries any non-2xx; a client's history source maps this to a transient error).
    pub fn is_retryable(&self) -> bool {
        self.status().is_server_error()
    }
}

impl From<sled::Error> for ArchiveError {
    fn from(e: sled::Error) -> Self {
        ArchiveError::Storage(e.to_string())
    }
}
