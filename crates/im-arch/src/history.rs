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

#[cfg(test)]
mod tests {
    use super::*;

    /// The vendor as a history source goes by the vendor's name (gap reasons name it).
    #[test]
    fn the_vendor_history_source_is_named_after_the_vendor() {
        let vendor = im_service::memory::MemoryVendor::new(Default::default());
        let client: Arc<dyn im_service::Vendor> = Arc::new(vendor.client());
        let name = client.name().to_string();
        assert!(!name.is_empty());
        assert_eq!(VendorHistory(client).name(), name);
    }

    /// A range that starts exactly at the horizon is servable: no gap (not an empty one).
    /// Found by cargo-mutants (`>` → `>=` survived).
    #[test]
    fn a_range_starting_at_the_horizon_has_no_gap() {
        let (from, to) = (Timestamp::from_millis(1_000), Timestamp::from_millis(5_000));
        assert_eq!(HistoryGap::before_horizon("v", Some(from), from, to), None);
        assert_eq!(HistoryGap::before_horizon("v", None, from, to), None);
        let gap = HistoryGap::before_horizon("v", Some(Timestamp::from_millis(1_001)), from, to)
            .expect("a millisecond before the horizon is a gap");
        assert_eq!((gap.from, gap.to), (from, Timestamp::from_millis(1_001)));
    }

    /// The window a message of age `age` falls in as of `now` (`[from, to)` ranges).
    fn window_of(now: Timestamp, age: Duration) -> Vec<HistoryWindow> {
        let at = now.minus(age);
        HistoryWindow::ALL
            .into_iter()
            .filter(|w| {
                let (from, to) = w.range(now);
                from <= at && at < to
            })
            .collect()
    }

    /// Messages on each side of each window edge land in exactly one window, the right
    /// one: ≤ 7 days is recent, 7–30 days is the middle, older is old.
    #[test]
    fn messages_at_each_window_edge_land_in_the_right_window() {
        let now = Timestamp::from_millis(400 * 24 * 3600 * 1000);
        let ms = Duration::from_millis(1);
        let cases = [
            (Duration::ZERO, HistoryWindow::Recent),
            (7 * DAY - ms, HistoryWindow::Recent),
            (7 * DAY, HistoryWindow::Recent),
            (7 * DAY + ms, HistoryWindow::Middle),
            (30 * DAY - ms, HistoryWindow::Middle),
            (30 * DAY, HistoryWindow::Middle),
            (30 * DAY + ms, HistoryWindow::Old),
            (365 * DAY, HistoryWindow::Old),
        ];
        for (age, want) in cases {
            assert_eq!(
                window_of(now, age),
                [want],
                "a message {age:?} old belongs to exactly {want:?}"
            );
        }
        // The windows tile time without a hole: each ends where the next begins.
        assert_eq!(
            HistoryWindow::Recent.range(now).0,
            HistoryWindow::Middle.range(now).1
        );
        assert_eq!(
            HistoryWindow::Middle.range(now).0,
            HistoryWindow::Old.range(now).1
        );
    }
}
