//! Message details: a conversation's timeline paged backwards and forwards from the local
//! store; when the store runs out, older pages continue through the history windows (the
//! vendor for recent ones, the archive for old ones), are persisted, and whatever no source
//! can serve is reported as a gap.

use im_service::{ConversationId, Message, ServerMsgId, Timestamp};

use crate::client::ImClient;
use crate::error::ArchError;
use crate::history::{HistoryGap, HistoryWindow};

/// One page of a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePage {
    /// Messages, newest first (backwards pages) or oldest first (forward pages).
    pub messages: Vec<Message>,
    /// Ranges older than the page that no source could serve.
    pub gaps: Vec<HistoryGap>,
}

impl ImClient {
    /// Up to `limit` messages older than `before` (the newest when `None`), newest first.
    pub async fn timeline_before(
        &self,
        conversation: &ConversationId,
        before: Option<&Message>,
        limit: usize,
    ) -> Result<TimelinePage, ArchError> {
        let shared = self.shared();
        let mut messages = shared
            .store
            .page_before(conversation, before, limit)
            .await?;
        let mut gaps = Vec::new();
        if messages.len() >= limit {
            return Ok(TimelinePage { messages, gaps });
        }
        // The store is exhausted: continue from the oldest known point through the windows.
        let mut anchor = messages.last().or(before).map_or_else(
            || shared.clock.now().plus(std::time::Duration::from_secs(1)),
            |m| m.server_time,
        );
        let mut seen: std::collections::HashSet<ServerMsgId> =
            messages.iter().map(|m| m.server_id.clone()).collect();
        let now = shared.clock.now();
        for window in HistoryWindow::ALL {
            let (from, to) = window.range(now);
            if from >= anchor || messages.len() >= limit {
                continue;
            }
            let to = to.min(anchor);
            let Some(source) = shared.sources.get(&window).cloned() else {
                gaps.push(HistoryGap {
                    from,
                    to,
                    reason: format!("no history source for {window:?}"),
                });
                continue;
            };
            let want = u32::try_from(limit - messages.len()).unwrap_or(u32::MAX);
            let page = shared
                .retry("pull_history", || {
                    source.page(conversation, from, to, None, want)
                })
                .await?;
            shared.store.put_messages(&page.messages).await?;
            gaps.extend(
                HistoryGap::before_horizon(source.name(), page.horizon, from, to)
                    .filter(|g| shared.is_real_gap(g)),
            );
            for m in page.messages {
                if seen.insert(m.server_id.clone()) {
                    anchor = anchor.min(m.server_time);
                    messages.push(m);
                }
            }
            if anchor <= Timestamp::from_millis(0) {
                break;
            }
        }
        messages.truncate(limit);
        Ok(TimelinePage { messages, gaps })
    }

    /// Up to `limit` locally stored messages newer than `after`, oldest first.
    pub async fn timeline_after(
        &self,
        conversation: &ConversationId,
        after: &Message,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        self.shared()
            .store
            .page_after(conversation, after, limit)
            .await
    }

    /// A locally stored message by its vendor id.
    pub async fn message(&self, id: &ServerMsgId) -> Result<Option<Message>, ArchError> {
        self.shared().store.message(id).await
    }
}
