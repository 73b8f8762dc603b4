//! The message lifecycle behind `ImClient::{recall, edit, delete_for_me}`, and the one path
//! by which message changes and read receipts reach the store, the conversation list and
//! the app, whether they come live (`VendorEvent::MessageChanged` / `ReadReceipt`), from
//! the change feed in the sync pass ([`pull_changes`]) or from this client's own call.
//!
//! Rules:
//! * durable before announced: a batch of changes and receipts is applied to the store and
//!   flushed before any of it is published, and the feed's cursor is saved only after that
//!   (a crash re-pulls, never skips);
//! * idempotent: the store applies a change only when its revision is newer
//!   ([`Store::apply_change`](crate::Store::apply_change)), keeps a peer's read position
//!   only when it moves forward, and only what changed is announced, so a change seen live
//!   and again from the feed is announced once;
//! * a change to a message not stored yet is kept by the store and applied when the
//!   message arrives (it is delivered in its changed state; nothing is announced before);
//! * my own reads on another device move the conversation's read position forward only
//!   (unread never below zero) and announce the row; peers' reads announce
//!   [`ClientEvent::ReadBy`].

use im_service::{ConversationId, MessageChange, ReadReceipt, ServerMsgId, ServiceError};

use crate::conversations;
use crate::error::ArchError;
use crate::events::ClientEvent;
use crate::shared::Shared;
use crate::store::ChangeOutcome;

/// Upper bound of change feed pulls in one sync pass: a vendor that keeps answering
/// `left > 0` cannot hold the client offline forever.
const MAX_FEED_PULLS: usize = 10_000;

/// Maps a vendor's refusal of a change to its typed error.
fn refused(e: ArchError) -> ArchError {
    match e {
        ArchError::Permanent {
            op,
            error: ServiceError::ChangeRefused(refusal),
        } => ArchError::ChangeRefused { op, refusal },
        e => e,
    }
}

/// Recalls my message `target` for everyone; the change is durable here when this returns.
pub(crate) async fn recall(
    shared: &Shared,
    conversation: &ConversationId,
    target: &ServerMsgId,
) -> Result<MessageChange, ArchError> {
    let change = shared
        .retry("recall", || shared.vendor.recall(conversation, target))
        .await
        .map_err(refused)?;
    apply(shared, std::slice::from_ref(&change), &[]).await?;
    Ok(change)
}

/// Replaces the content of `target`; durable here when this returns.
pub(crate) async fn edit(
    shared: &Shared,
    conversation: &ConversationId,
    target: &ServerMsgId,
    content: &im_service::Content,
) -> Result<MessageChange, ArchError> {
    let change = shared
        .retry("edit", || shared.vendor.edit(conversation, target, content))
        .await
        .map_err(refused)?;
    apply(shared, std::slice::from_ref(&change), &[]).await?;
    Ok(change)
}

/// Deletes `target` for me on all my devices; gone from the local timeline when this
/// returns.
pub(crate) async fn delete_for_me(
    shared: &Shared,
    conversation: &ConversationId,
    target: &ServerMsgId,
) -> Result<MessageChange, ArchError> {
    let change = shared
        .retry("delete_for_me", || {
            shared.vendor.delete_for_me(conversation, target)
        })
        .await
        .map_err(refused)?;
    apply(shared, std::slice::from_ref(&change), &[]).await?;
    Ok(change)
}

/// The change feed in the sync pass: pulls from the saved cursor (from the feed's current
/// end on a fresh store) until the vendor says nothing is left, applying each batch
/// durably before its cursor is saved. Returns how many changes and receipts were applied.
pub(crate) async fn pull_changes(shared: &Shared) -> Result<usize, ArchError> {
    let mut cursor = shared.store.change_cursor().await?;
    let mut applied = 0;
    for _ in 0..MAX_FEED_PULLS {
        let since = cursor.clone();
        let pulled = shared
            .retry("pull_changes", || {
                shared
                    .vendor
                    .pull_changes(since.clone(), shared.config.offline_batch)
            })
            .await;
        let batch = match pulled {
            Ok(batch) => batch,
            // Declared but not served (a wrapper that forwards the capabilities of the
            // vendor it wraps but not this call): no feed, not a failed sync.
            Err(ArchError::Permanent {
                error: ServiceError::Unsupported(_),
                ..
            }) => {
                tracing::warn!("the vendor declares a change feed but does not serve it");
                return Ok(applied);
            }
            Err(e) => return Err(e),
        };
        applied += apply(shared, &batch.changes, &batch.receipts).await?;
        // After the batch is durable: a crash before this line pulls it again (idempotent).
        shared.store.set_change_cursor(&batch.next).await?;
        let empty = batch.changes.is_empty() && batch.receipts.is_empty();
        cursor = Some(batch.next);
        if batch.left == 0 || empty {
            break;
        }
    }
    Ok(applied)
}

/// Applies changes and read receipts: store, flush, then announce what changed. Returns
/// how many changed something.
pub(crate) async fn apply(
    shared: &Shared,
    changes: &[MessageChange],
    receipts: &[ReadReceipt],
) -> Result<usize, ArchError> {
    if changes.is_empty() && receipts.is_empty() {
        return Ok(0);
    }
    let mut applied = Vec::new();
    for change in changes {
        match shared.store.apply_change(change).await? {
            ChangeOutcome::Applied { message, .. } => applied.push((change, message)),
            ChangeOutcome::Pending => {
                tracing::debug!(target_id = %change.target, "change to a message not stored yet: kept");
            }
            ChangeOutcome::Stale => {}
        }
    }
    let me = shared.credentials.lock().user.clone();
    let mut rows = Vec::new();
    let mut seen = Vec::new();
    for receipt in receipts {
        if receipt.reader == me {
            // Saved (not flushed): the flush below covers it.
            if let Some(row) = conversations::on_read_elsewhere(shared, receipt).await? {
                rows.push(row);
            }
        } else if shared.store.put_read_receipt(receipt).await? {
            seen.push(receipt);
        }
    }
    let count = applied.len() + rows.len() + seen.len();
    if count == 0 {
        return Ok(0);
    }
    // Durable before anything is announced (and before the feed's cursor moves).
    shared.store.flush().await?;
    for (change, message) in applied {
        if let Some(row) = conversations::on_changed(shared, change, message.as_ref()).await? {
            shared
                .distributor
                .publish(ClientEvent::ConversationChanged(row))
                .await;
        }
        shared
            .distributor
            .publish(ClientEvent::MessageChanged {
                change: change.clone(),
                message,
            })
            .await;
    }
    for row in rows {
        shared
            .distributor
            .publish(ClientEvent::ConversationChanged(row))
            .await;
    }
    for receipt in seen {
        shared
            .distributor
            .publish(ClientEvent::ReadBy {
                conversation: receipt.conversation.clone(),
                reader: receipt.reader.clone(),
                up_to: receipt.up_to.clone(),
            })
            .await;
    }
    Ok(count)
}
