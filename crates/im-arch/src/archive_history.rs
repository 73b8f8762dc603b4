//! [`ArchiveHistory`]: a [`HistorySource`] that reads the company's own archive (the
//! `im-archive` service's `GET /v1/history`), so the `Middle` and `Old` history windows
//! reach past the vendor's retention.
//!
//! It speaks the archive's HTTP API and nothing else: `im-arch` does not depend on the
//! archive crate (a client never links the backend), only on the contract both share,
//! [`im_service::archive_api`] (path, query, error body, status meanings; the page is the
//! vendor-neutral [`HistoryPage`] as JSON).

use std::time::Duration;

use async_trait::async_trait;
use im_service::archive_api::{self, ErrorBody, HISTORY_PATH, HistoryParams};
use im_service::{ConversationId, HistoryPage, PageCursor, ServiceError, Timestamp, Token};

use crate::error::ArchError;
use crate::history::HistorySource;

/// The archive's largest page (its default `max_page`); larger requests are cut to it
/// instead of being refused.
pub use im_service::archive_api::DEFAULT_MAX_PAGE;

/// Reads history from an `im-archive` service with the user's bearer token.
///
/// Answers map onto the contract's errors so the client's retry policy treats them like
/// any vendor call, as [`archive_api::history_failure`] says: 401 →
/// [`ServiceError::AuthFailed`], 403 → [`ServiceError::NotMember`], 400 →
/// [`ServiceError::InvalidRequest`] (all permanent); 429 → [`ServiceError::RateLimited`];
/// 5xx → [`ServiceError::Server`]; and here: unreachable → [`ServiceError::Unavailable`],
/// no answer in time → [`ServiceError::Timeout`] (all retried). A 404 (the archive holds
/// nothing of the conversation) is an empty page.
///
/// ```no_run
/// # fn wire(vendor: std::sync::Arc<dyn im_service::Vendor>, me: im_service::Credentials)
/// #     -> Result<(), im_arch::ArchError> {
/// use std::sync::Arc;
/// use im_arch::{ArchiveHistory, HistoryWindow, ImClient};
/// use im_service::Token;
/// let archive = ArchiveHistory::new("http://127.0.0.1:8090", Token::new("archive token"))?;
/// let client = ImClient::builder(vendor, me)
///     .history_source(HistoryWindow::Old, Some(Arc::new(archive)))
///     .build();
/// # Ok(()) }
/// ```
pub struct ArchiveHistory {
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// The user's archive token (redacted in `Debug`).
    token: Token,
    /// Connection pool; proxies from the environment are ignored (the archive is ours).
    http: reqwest::Client,
    /// Limit of one request, connecting included.
    timeout: Duration,
    /// Largest page asked for.
    max_page: u32,
}

impl std::fmt::Debug for ArchiveHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveHistory")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("max_page", &self.max_page)
            .finish_non_exhaustive()
    }
}

impl ArchiveHistory {
    /// A source reading `base_url` (e.g. `http://127.0.0.1:8090`) as the token's user, with
    /// a 10 s request timeout.
    pub fn new(base_url: impl Into<String>, token: Token) -> Result<Self, ArchError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| ArchError::Unavailable(format!("archive http client: {e}")))?;
        Ok(Self {
            base: base_url.into().trim_end_matches('/').to_owned(),
            token,
            http,
            timeout: Duration::from_secs(10),
            max_page: DEFAULT_MAX_PAGE,
        })
    }

    /// Sets the time limit of one request.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the largest page asked for (match the archive's `max_page`).
    pub fn max_page(mut self, max_page: u32) -> Self {
        self.max_page = max_page.max(1);
        self
    }

    fn transport_error(&self, e: &reqwest::Error) -> ServiceError {
        if e.is_timeout() {
            ServiceError::Timeout(self.timeout)
        } else if e.is_connect() {
            ServiceError::Unavailable(format!("archive unreachable: {e}"))
        } else {
            ServiceError::ConnectionLost(format!("archive: {e}"))
        }
    }
}

/// The `error` field of the archive's error bodies, or the raw text.
fn reason(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect())
}

#[async_trait]
impl HistorySource for ArchiveHistory {
    fn name(&self) -> &str {
        "archive"
    }

    async fn page(
        &self,
        conversation: &ConversationId,
        from: Timestamp,
        to: Timestamp,
        cursor: Option<PageCursor>,
        limit: u32,
    ) -> Result<HistoryPage, ServiceError> {
        let query = HistoryParams::new(
            conversation,
            from,
            to,
            cursor,
            limit.clamp(1, self.max_page),
        );
        let response = self
            .http
            .get(format!("{}{HISTORY_PATH}", self.base))
            .query(&query)
            .bearer_auth(self.token.expose())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        match status.as_u16() {
            200 => serde_json::from_slice(&body)
                .map_err(|e| ServiceError::Protocol(format!("archive page: {e}"))),
            code => archive_api::history_failure(code, reason(&body), retry_after, conversation),
        }
    }
}
