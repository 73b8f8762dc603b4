//! The archive's HTTP contract: what `im-archive` serves and `im-arch`'s `ArchiveHistory`
//! reads, defined once here (the lowest layer both depend on) so server and client cannot
//! drift apart. Types only (serde, no HTTP library): each side brings its own.
//!
//! | route | request | answer |
//! |---|---|---|
//! | `POST` [`CALLBACK_ROUTE`] | a signed `message.stored` or `message.changed` callback (`webhook` feature) | [`CallbackOutcome`] |
//! | `GET` [`HISTORY_PATH`] | [`HistoryParams`] as the query string, bearer token | [`HistoryPage`], newest first, each message in its current state |
//! | `GET` [`CONVERSATIONS_PATH`] | bearer token | the caller's conversation ids (`["d:alice|bob", …]`) |
//! | `GET` [`HEALTH_PATH`], [`READY_PATH`] | — | liveness; readiness (503 while shutting down) |
//!
//! History returns each message as it is now: an edit's content, a recalled message as
//! [`Content::Recalled`](crate::Content::Recalled) (as every vendor's history pull does), so
//! the page's JSON gained no field and older clients read it as before. A delete-for-me is
//! not applied: the company archive keeps every message for every member.
//!
//! Every refusal has the body [`ErrorBody`] (`{"error": "…"}`) and one of these statuses:
//! 400 (bad parameter, cursor or page size), 401 (bad or missing token, refused callback
//! signature), 403 (not a member), 404 (unknown vendor or conversation), 413 (body too
//! large), 5xx (storage). What a client makes of each is [`history_failure`].
//!
//! ```
//! use im_service::archive_api::{HistoryParams, DEFAULT_MAX_PAGE};
//! use im_service::{ConversationId, Timestamp, UserId};
//!
//! let c = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
//! let q = HistoryParams::new(&c, Timestamp::from_millis(0), Timestamp::from_millis(10), None, 20);
//! assert_eq!(q.conversation()?, c);
//! assert_eq!(q.limit, Some(20));
//! assert!(20 <= DEFAULT_MAX_PAGE);
//! # Ok::<(), im_service::ParseConversationError>(())
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ServiceError;
use crate::model::{ConversationId, ParseConversationError, Timestamp};
use crate::vendor::{HistoryPage, PageCursor};

/// Route of the vendors' signed callbacks, in axum's syntax (`{vendor}`: the vendor's name,
/// which selects the callback secret). [`callback_path`] fills it in.
pub const CALLBACK_ROUTE: &str = "/v1/callbacks/{vendor}";

/// Path of a history page (query: [`HistoryParams`]; answer: [`HistoryPage`] as JSON).
pub const HISTORY_PATH: &str = "/v1/history";

/// Path of the caller's conversation list (answer: a JSON array of conversation ids).
pub const CONVERSATIONS_PATH: &str = "/v1/conversations";

/// Liveness: 200 `ok` while the process serves.
pub const HEALTH_PATH: &str = "/healthz";

/// Readiness: 200, or 503 once shutdown has begun.
pub const READY_PATH: &str = "/readyz";

/// Page size when the query names none (or the archive's largest page, if smaller).
pub const DEFAULT_PAGE: u32 = 50;

/// The archive's default largest page; larger `limit`s are refused with 400, so a client
/// cuts its requests to it.
pub const DEFAULT_MAX_PAGE: u32 = 200;

/// The wait a client assumes when a 429 names none in `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The callback path of `vendor` ([`CALLBACK_ROUTE`] filled in). `vendor` goes in verbatim:
/// vendor names are plain identifiers (`reference`, `xmpp`).
pub fn callback_path(vendor: &str) -> String {
    CALLBACK_ROUTE.replace("{vendor}", vendor)
}

/// The query string of `GET /v1/history`. Field order is the order on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryParams {
    /// The conversation, in its text form ([`ConversationId`]'s `Display`).
    pub conversation: String,
    /// Inclusive lower bound of server time, unix milliseconds (default: the beginning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// Exclusive upper bound of server time, unix milliseconds (default: the end of time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    /// Most messages in the page (default [`DEFAULT_PAGE`]; at most the archive's largest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The previous page's [`HistoryPage::next`]: only older messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl HistoryParams {
    /// A query for messages of `conversation` with server time in `from..to`, older than
    /// `cursor` if given, at most `limit` of them.
    pub fn new(
        conversation: &ConversationId,
        from: Timestamp,
        to: Timestamp,
        cursor: Option<PageCursor>,
        limit: u32,
    ) -> Self {
        Self {
            conversation: conversation.to_string(),
            from: Some(from.as_millis()),
            to: Some(to.as_millis()),
            limit: Some(limit),
            cursor: cursor.map(|c| c.0),
        }
    }

    /// The conversation asked for.
    pub fn conversation(&self) -> Result<ConversationId, ParseConversationError> {
        self.conversation.parse()
    }

    /// The time range asked for, the defaults filled in: `(from, to)`, `to` exclusive.
    pub fn time_range(&self) -> (Timestamp, Timestamp) {
        (
            Timestamp::from_millis(self.from.unwrap_or(i64::MIN)),
            Timestamp::from_millis(self.to.unwrap_or(i64::MAX)),
        )
    }

    /// The cursor, if any.
    pub fn page_cursor(&self) -> Option<PageCursor> {
        self.cursor.clone().map(PageCursor)
    }
}

/// The answer to a callback (JSON: `"stored"`, `"duplicate"`, `"ignored"`, `"pending"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackOutcome {
    /// Stored now (a message; or a change, applied to its message's history).
    Stored,
    /// Stored before (a redelivery), or a change older than one that supersedes it: the
    /// history did not change.
    Duplicate,
    /// An event this archive does not keep (anything but `message.stored` and
    /// `message.changed`).
    Ignored,
    /// A `message.changed` for a message not archived yet: kept, and applied when the
    /// message's own callback arrives (callbacks may race).
    Pending,
}

/// The body of every refusal: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// What a `GET /v1/history` answer other than 200 means to a client, as the contract's
/// errors so its retry policy treats the archive like any vendor call:
///
/// * 404 (the archive holds nothing of the conversation): an empty page;
/// * 400 → [`ServiceError::InvalidRequest`], 401 → [`ServiceError::AuthFailed`], 403 →
///   [`ServiceError::NotMember`] (all permanent);
/// * 429 → [`ServiceError::RateLimited`] (`retry_after`, or [`DEFAULT_RETRY_AFTER`]);
/// * anything else → [`ServiceError::Server`] with the status as code (retried).
///
/// `reason` is the [`ErrorBody::error`] of the answer (or its raw text).
pub fn history_failure(
    status: u16,
    reason: String,
    retry_after: Option<Duration>,
    conversation: &ConversationId,
) -> Result<HistoryPage, ServiceError> {
    match status {
        404 => Ok(HistoryPage {
            messages: Vec::new(),
            next: None,
            horizon: None,
        }),
        400 => Err(ServiceError::InvalidRequest(reason)),
        401 => Err(ServiceError::AuthFailed(reason)),
        403 => Err(ServiceError::NotMember(conversation.clone())),
        429 => Err(ServiceError::RateLimited {
            retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
        }),
        code => Err(ServiceError::Server {
            code: u32::from(code),
            message: reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupId, UserId};

    #[test]
    fn params_carry_what_the_client_asks_for() {
        let c = ConversationId::Group(GroupId::new("g|1:x"));
        let q = HistoryParams::new(
            &c,
            Timestamp::from_millis(i64::MIN),
            Timestamp::from_millis(-1),
            Some(PageCursor("5:id".into())),
            7,
        );
        assert_eq!(q.conversation(), Ok(c));
        assert_eq!(
            q.time_range(),
            (Timestamp::from_millis(i64::MIN), Timestamp::from_millis(-1))
        );
        assert_eq!(q.page_cursor(), Some(PageCursor("5:id".into())));
        assert_eq!(q.limit, Some(7));
    }

    #[test]
    fn missing_bounds_mean_all_of_time() {
        let q = HistoryParams {
            conversation: "d:a|b".into(),
            from: None,
            to: None,
            limit: None,
            cursor: None,
        };
        assert_eq!(
            q.time_range(),
            (
                Timestamp::from_millis(i64::MIN),
                Timestamp::from_millis(i64::MAX)
            )
        );
        assert_eq!(q.page_cursor(), None);
    }

    #[test]
    fn statuses_map_onto_the_contract_errors() {
        let c = ConversationId::direct(&UserId::new("a"), &UserId::new("b"));
        let f = |status, retry| history_failure(status, "why".into(), retry, &c);
        assert_eq!(f(404, None).map(|p| p.messages.len()), Ok(0));
        assert_eq!(
            f(400, None),
            Err(ServiceError::InvalidRequest("why".into()))
        );
        assert_eq!(f(401, None), Err(ServiceError::AuthFailed("why".into())));
        assert_eq!(f(403, None), Err(ServiceError::NotMember(c.clone())));
        assert_eq!(
            f(429, None),
            Err(ServiceError::RateLimited {
                retry_after: DEFAULT_RETRY_AFTER
            })
        );
        assert_eq!(
            f(429, Some(Duration::from_secs(9))),
            Err(ServiceError::RateLimited {
                retry_after: Duration::from_secs(9)
            })
        );
        assert_eq!(
            f(503, None),
            Err(ServiceError::Server {
                code: 503,
                message: "why".into()
            })
        );
    }

    #[test]
    fn the_callback_path_fills_in_the_vendor() {
        assert_eq!(callback_path("reference"), "/v1/callbacks/reference");
    }
}
