//! The conversation API behind `ImClient`'s conversation methods: the list's pages and
//! total unread, mark-read (with the vendor's read receipt), pinned, muted and drafts, the
//! list's upkeep per delivered message, and its rebuild from the store at start.
//!
//! Every user setting is durable when its call returns (saved and flushed); a failing
//! store is reported on the bus, not fatal (the row is already shown). The list itself
//! ([`ConversationList`]) lives in `conversation_list`, a leaf the shared state holds.

use std::collections::HashMap;

use im_service::{Capability, ConversationId, Message, MessageChange, ReadReceipt, ServerMsgId};

use crate::conversation_list::{ConversationList, ConversationSummary};
use crate::error::ArchError;
use crate::events::ClientEvent;
use crate::shared::Shared;
use crate::store::ConversationState;

/// Rows `offset..offset + limit` of the conversation list, pinned first, newest first.
pub(crate) fn page(shared: &Shared, offset: usize, limit: usize) -> Vec<ConversationSummary> {
    shared.conversations.lock().page(offset, limit)
}

/// Unread messages over all conversations that are not muted.
pub(crate) fn total_unread(shared: &Shared) -> u64 {
    shared.conversations.lock().total_unread()
}

/// Marks a conversation read, and tells the vendor where it supports read receipts.
pub(crate) async fn mark_read(
    shared: &Shared,
    conversation: &ConversationId,
) -> Result<(), ArchError> {
    let (row, last, state) = {
        let mut list = shared.conversations.lock();
        let (row, last) = list.mark_read(conversation);
        (row, last, list.state(conversation))
    };
    if let Some(state) = state {
        persist_state(shared, &state).await;
        flush_state(shared).await;
    }
    shared
        .distributor
        .publish(ClientEvent::ConversationChanged(row))
        .await;
    if let Some(last) = last.filter(|_| {
        shared
            .vendor
            .capabilities()
            .supports(Capability::ReadReceipts)
    }) {
        let sent = shared
            .retry("mark_read", || {
                shared.vendor.mark_read(conversation, &last.server_id)
            })
            .await;
        match sent {
            Ok(()) => {
                shared.pending_receipts.lock().remove(conversation);
            }
            // The read is durable here and the app has its row: a receipt the vendor cannot
            // take now (no session, connection lost, retries spent) goes out when the
            // client is next online, instead of telling the app its read failed.
            Err(e @ ArchError::Permanent { .. }) if !matches!(&e, ArchError::Permanent { error, .. } if error.needs_login()) =>
            {
                return Err(e);
            }
            Err(e) => {
                tracing::debug!(error = %e, "read receipt deferred until online");
                shared
                    .pending_receipts
                    .lock()
                    .insert(conversation.clone(), last.server_id.clone());
            }
        }
    }
    Ok(())
}

/// Sends the read receipts deferred while the session was away (newest read per
/// conversation); one that fails again stays for the next time.
pub(crate) async fn send_pending_receipts(shared: &Shared) {
    let pending: Vec<(ConversationId, ServerMsgId)> =
        shared.pending_receipts.lock().drain().collect();
    for (conversation, up_to) in pending {
        if let Err(e) = shared.vendor.mark_read(&conversation, &up_to).await {
            if e.is_retryable() || e.needs_login() {
                shared
                    .pending_receipts
                    .lock()
                    .entry(conversation)
                    .or_insert(up_to);
            } else {
                tracing::debug!(error = %e, "deferred read receipt refused; dropped");
            }
        }
    }
}

/// Pins or unpins a conversation.
pub(crate) async fn set_pinned(shared: &Shared, conversation: &ConversationId, pinned: bool) {
    update_row(shared, |list| list.set_pinned(conversation, pinned)).await;
}

/// Mutes or unmutes a conversation.
pub(crate) async fn set_muted(shared: &Shared, conversation: &ConversationId, muted: bool) {
    update_row(shared, |list| list.set_muted(conversation, muted)).await;
}

/// Saves (`Some`) or clears (`None`) a conversation's draft, edited now.
pub(crate) async fn set_draft(
    shared: &Shared,
    conversation: &ConversationId,
    draft: Option<String>,
) {
    let now = shared.clock.now();
    update_row(shared, |list| list.set_draft(conversation, draft, now)).await;
}

/// Changes one row of the conversation list, makes its state durable and announces it.
/// The lock is released before anything is awaited.
async fn update_row(
    shared: &Shared,
    change: impl FnOnce(&mut ConversationList) -> ConversationSummary,
) -> ConversationSummary {
    let (row, state) = {
        let mut list = shared.conversations.lock();
        let row = change(&mut list);
        let state = list.state(&row.id);
        (row, state)
    };
    if let Some(state) = state {
        persist_state(shared, &state).await;
        flush_state(shared).await;
    }
    shared
        .distributor
        .publish(ClientEvent::ConversationChanged(row.clone()))
        .await;
    row
}

/// Updates the list for a delivered message `m` and returns its row (to announce). My own
/// message (from any device) moves my read position: that is saved (not flushed: the
/// delivery's commit follows).
pub(crate) async fn on_delivered(shared: &Shared, m: &Message) -> ConversationSummary {
    let me = shared.credentials.lock().user.clone();
    let (row, state) = {
        let mut list = shared.conversations.lock();
        let row = list.on_message(m);
        let state = if m.sender == me {
            list.state(&m.conversation)
        } else {
            None
        };
        (row, state)
    };
    if let Some(state) = state {
        persist_state(shared, &state).await;
    }
    row
}

/// Updates the list for a changed message (`message`: its state now, `None` when deleted
/// for me) and returns the row to announce, if there is one.
pub(crate) async fn on_changed(
    shared: &Shared,
    change: &MessageChange,
    message: Option<&Message>,
) -> Result<Option<ConversationSummary>, ArchError> {
    // A deleted last message is replaced by the newest one left (read before the lock).
    let newest = match message {
        None => shared
            .store
            .latest(&change.conversation, 1)
            .await?
            .into_iter()
            .next(),
        Some(_) => None,
    };
    Ok(shared
        .conversations
        .lock()
        .on_changed(change, message, newest))
}

/// My other device read `receipt.conversation` up to `receipt.up_to`: moves the read
/// position forward (never back) and saves it (not flushed: the caller flushes before it
/// announces). Returns the row when it moved.
pub(crate) async fn on_read_elsewhere(
    shared: &Shared,
    receipt: &ReadReceipt,
) -> Result<Option<ConversationSummary>, ArchError> {
    // The stored message gives the position its sequence (exact among equal times).
    let (time, seq) = match shared.store.message(&receipt.up_to).await? {
        Some(m) => (m.server_time, m.seq),
        None => (receipt.up_to_time, None),
    };
    let (row, state) = {
        let mut list = shared.conversations.lock();
        let row = list.read_elsewhere(&receipt.conversation, time, seq, &receipt.up_to);
        let state = row.as_ref().and_then(|r| list.state(&r.id));
        (row, state)
    };
    if let Some(state) = state {
        shared.store.put_conversation_state(&state).await?;
    }
    Ok(row)
}

/// Saves a conversation's user state; a failing store is reported, not fatal.
async fn persist_state(shared: &Shared, state: &ConversationState) {
    if let Err(error) = shared.store.put_conversation_state(state).await {
        let what = "cannot save conversation state";
        (shared.report_store_failure("put_conversation_state", what, error)).await;
    }
}

/// Makes what the user just set durable before the call returns; a failing store is
/// reported, not fatal (the row is already shown).
async fn flush_state(shared: &Shared) {
    if let Err(error) = shared.store.flush().await {
        let what = "cannot flush conversation state";
        shared.report_store_failure("flush", what, error).await;
    }
}

/// Rebuilds the conversation list from the store: every conversation with delivered
/// messages or saved state, its newest message and its unread messages.
pub(crate) async fn load(shared: &Shared) -> Result<(), ArchError> {
    /// Unread messages counted per conversation at most (a badge shows "999+" anyway).
    const MAX_UNREAD_SCAN: usize = 10_000;
    let states: HashMap<ConversationId, ConversationState> = shared
        .store
        .conversation_states()
        .await?
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let mut ids: Vec<ConversationId> = shared
        .store
        .cursors()
        .await?
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    ids.extend(states.keys().cloned());
    ids.sort();
    ids.dedup();
    for id in ids {
        let state = states.get(&id);
        let last = shared.store.latest(&id, 1).await?.into_iter().next();
        let read = match state.and_then(|s| s.read_up_to.as_ref()) {
            Some((_, read_id)) => shared.store.message(read_id).await?,
            None => None,
        };
        let after_read = match &read {
            Some(read) => shared.store.page_after(&id, read, MAX_UNREAD_SCAN).await?,
            None => shared.store.page_before(&id, None, MAX_UNREAD_SCAN).await?,
        };
        shared
            .conversations
            .lock()
            .restore(&id, state, last, read.as_ref(), &after_read);
    }
    Ok(())
}
