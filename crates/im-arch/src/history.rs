//! History windows: recent (≤ 7 days), middle (7–30 days) and old (> 30 days), each served
//! by a configured source. A range no source can serve comes back as an explicit gap.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use im_service::{
    ConversationId, HistoryPage, HistoryQuery, HistoryRange, Message, PageCursor, ServiceError,
    Timestamp, Vendor,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The three history windows of the design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HistoryWindow {
    /// The last 7 days.
    Recent,
    /// From 30 to 7 days ago.
    Middle,
    /// Older than 30 days.
    Old,
}

impl HistoryWindow {
    /// All windows, newest first.
    pub const ALL: [HistoryWindow; 3] = [
        HistoryWindow::Recent,
        HistoryWindow::Middle,
        HistoryWindow::Old,
    ];

    /// The window's time range `[from, to)` as of `now`.
    pub fn range(self, now: Timestamp) -> (Timestamp, Timestamp) {
        match self {
            HistoryWindow::Recent => (now.minus(7 * DAY), now.plus(Duration::from_secs(1))),
            HistoryWindow::Middle => (now.minus(30 * DAY), now.minus(7 * DAY)),
            HistoryWindow::Old => (Timestamp::from_millis(0), now.minus(30 * DAY)),
        }
    }
}

/// Somewhere old messages can be read from: the vendor for recent windows, the company's
/// archive for old ones.
#[async_trait]
pub trait HistorySource: Send + Sync {
    /// A name for diagnostics.
    fn name(&self) -> &str;

    /// One page of `conversation` in `[from, to)`, newest first.
    async fn page(
        &self,
        conversation: &ConversationId,
        from: Timestamp,
        to: Timestamp,
        cursor: Option<PageCursor>,
        limit: u32,
    ) -> Result<HistoryPage, ServiceError>;
}

/// The vendor itself as a history source (time-range queries).
pub struct VendorHistory(pub Arc<dyn Vendor>);

#[async_trait]
impl HistorySource for VendorHistory {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn page(
        &self,
        conversation: &ConversationId,
        from: Timestamp,
        to: Timestamp,
        cursor: Option<PageCursor>,
        limit: u32,
    ) -> Result<HistoryPage, ServiceError> {
        let query = HistoryQuery::latest(conversation.clone(), limit)
            .range(HistoryRange::Time { from, to })
            .after_cursor(cursor);
        self.0.pull_history(&query).await
    }
}

/// A part of a requested range that no configured source could serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryGap {
    /// Inclusive start.
    pub from: Timestamp,
    /// Exclusive end.
    pub to: Timestamp,
    /// Why (no source configured, beyond the source's retention …).
    pub reason: String,
}

/// The answer to a history request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryResult {
    /// Messages, newest first.
    pub messages: Vec<Message>,
    /// Ranges that could not be served. Empty + no messages means "really nothing there".
    pub gaps: Vec<HistoryGap>,
    /// Cursor for the next (older) page from the same source.
    pub next: Option<PageCursor>,
}

impl HistoryGap {
    /// The part of `[from, to)` before a source's retention `horizon`, if any: what the
    /// source cannot serve.
    pub fn before_horizon(
        source: &str,
        horizon: Option<Timestamp>,
        from: Timestamp,
        to: Timestamp,
    ) -> Option<Self> {
        let horizon = horizon.filter(|h| *h > from)?;
        Some(HistoryGap {
            from,
            to: horizon.min(to),
            reason: format!("{source} keeps history only from {horizon:?}"),
        })
    }
}
