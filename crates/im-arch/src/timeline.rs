//! Message details: a conversation's timeline paged backwards and forwards from the local
//! store; when the store runs out, older pages continue through the history windows (the
//! vendor for recent ones, the archive for old ones), are persisted, and whatever no source
//! can serve is reported as a gap. Also one page of a single history window
//! (`ImClient::history`).
//!
//! Messages are shown in their current state: the store applies edits and recalls in place
//! (a recalled message keeps only [`im_service::Content::Recalled`]) and drops a message
//! deleted for me from its pages, and a page fetched from a history source is returned as
//! the store holds it after storing it (a local change wins over a source's older copy).

use im_service::{ConversationId, Message, PageCursor, ServerMsgId, Timestamp};

use crate::error::ArchError;
use crate::history::{HistoryGap, HistoryResult, HistoryWindow};
use crate::shared::Shared;

/// One page of a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePage {
    /// Messages, newest first (backwards pages) or oldest first (forward pages).
    pub messages: Vec<Message>,
    /// Ranges older than the page that no source could serve.
    pub gaps: Vec<HistoryGap>,
}

/// Up to `limit` messages older than `before` (the newest when `None`), newest first.
pub(crate) async fn page_before(
    shared: &Shared,
    conversation: &ConversationId,
    before: Option<&Message>,
    limit: usize,
) -> Result<TimelinePage, ArchError> {
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
        for m in current_state(shared, page.messages).await? {
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

/// Each of `fetched` (just stored) as the store holds it: a change applied here, or one
/// kept until the message arrived, wins over a source's older copy; a message deleted for
/// me is left out (an archive does not know who deleted what).
async fn current_state(shared: &Shared, fetched: Vec<Message>) -> Result<Vec<Message>, ArchError> {
    let mut out = Vec::with_capacity(fetched.len());
    for m in fetched {
        match shared.store.message(&m.server_id).await? {
            Some(stored) => out.push(stored),
            None if shared
                .store
                .revision(&m.server_id)
                .await?
                .is_some_and(|r| r.deleted) => {}
            // A store that did not keep it (none of ours): the source's copy.
            None => out.push(m),
        }
    }
    Ok(out)
}

/// Up to `limit` locally stored messages newer than `after`, oldest first.
pub(crate) async fn page_after(
    shared: &Shared,
    conversation: &ConversationId,
    after: &Message,
    limit: usize,
) -> Result<Vec<Message>, ArchError> {
    shared.store.page_after(conversation, after, limit).await
}

/// One page of a conversation's history in `window`, persisted locally. Ranges no
/// configured source can serve are returned as gaps.
pub(crate) async fn window_page(
    shared: &Shared,
    conversation: &ConversationId,
    window: HistoryWindow,
    limit: u32,
    cursor: Option<PageCursor>,
) -> Result<HistoryResult, ArchError> {
    let now = shared.clock.now();
    let (from, to) = window.range(now);
    let Some(source) = shared.sources.get(&window).cloned() else {
        return Ok(HistoryResult {
            messages: Vec::new(),
            gaps: vec![HistoryGap {
                from,
                to,
                reason: format!("no history source for {window:?}"),
            }],
            next: None,
        });
    };
    let page = shared
        .retry("pull_history", || {
            source.page(conversation, from, to, cursor.clone(), limit)
        })
        .await?;
    shared.store.put_messages(&page.messages).await?;
    let gaps = HistoryGap::before_horizon(source.name(), page.horizon, from, to)
        .into_iter()
        .filter(|g| shared.is_real_gap(g))
        .collect();
    Ok(HistoryResult {
        messages: current_state(shared, page.messages).await?,
        gaps,
        next: page.next,
    })
}
