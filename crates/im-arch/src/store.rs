//! Local persistence behind a trait, with an in-memory twin. Sync persists every message
//! before it is distributed or acknowledged, and keeps a per-conversation cursor of what has
//! been delivered in order, and the delivery journal that durable subscriptions read.
//!
//! # Durability contract
//!
//! Every write method is atomic (all of its call or none of it) and applied in call order,
//! with two exceptions a crash may split, in an order the sync engine handles (a crash
//! between them and the next write leaves the same kind of state): [`Store::put_messages`]
//! may keep some messages of a batch (each message whole, never an index entry without its
//! message) and [`Store::commit_delivery`] without journal entries may keep some cursors
//! without the end of the in-flight record (that delivery is then repeated once).
//! A write is *durable* — it survives the process being killed (SIGKILL) — once a
//! [`Store::flush`] that started after the write returned has itself returned. A crash
//! loses at most a suffix of the writes not yet flushed, never an earlier write while
//! keeping a later one. The client relies on exactly this: it flushes before it confirms
//! anything to the app (`send()` returning, a durable subscription's acknowledgement) or to
//! the vendor (an offline acknowledgement), and it orders writes so that any prefix of them
//! is a consistent state (messages before the cursors and journal entries that name them).
//! [`MemoryStore`](crate::MemoryStore) keeps nothing across a crash: its `flush` returns at once.

use async_trait::async_trait;
use im_service::{
    ChangeCursor, ChangeKind, ClientMsgId, ConversationId, Message, MessageChange, Origin,
    OutgoingMessage, ReadReceipt, Seq, ServerMsgId, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::error::ArchError;

/// Version of the persisted layout. A store written by a newer version refuses to open.
/// The golden fixtures of every stored value (`tests/fixtures/*.v{codec}-schema{this}.bin`)
/// carry it in their names: a change of a stored value's bytes needs a new version.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a queued send stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendStatus {
    /// Stored locally, not yet acknowledged by the vendor.
    Sending,
    /// Acknowledged by the vendor.
    Sent {
        /// The vendor's id.
        server_id: ServerMsgId,
        /// Its sequence, if the vendor has them.
        seq: Option<Seq>,
    },
    /// Not sent; `recoverable` items can be retried with `resend`.
    Failed {
        /// Why.
        reason: String,
        /// Whether a later retry can succeed.
        recoverable: bool,
    },
}

/// One message of the persistent send queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// Enqueue order; sends of a conversation go out in this order.
    pub position: u64,
    /// The message, with the client id reused on every attempt.
    pub message: OutgoingMessage,
    /// Where it stands.
    pub status: SendStatus,
    /// Attempts made so far.
    pub attempts: u32,
}

/// What the user set on a conversation, kept across restarts (the rest of a list row is
/// derived from stored messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationState {
    /// The conversation.
    pub id: ConversationId,
    /// Pinned rows sort first.
    pub pinned: bool,
    /// Muted rows do not count towards the total unread.
    pub muted: bool,
    /// Unsent text and when it was edited.
    pub draft: Option<(String, Timestamp)>,
    /// Everything at or before this (server time, id) is read.
    pub read_up_to: Option<(Timestamp, ServerMsgId)>,
}

/// How far a conversation has been delivered, in order, to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncCursor {
    /// Highest sequence delivered with no hole below it (vendors with sequences).
    pub seq: Option<Seq>,
    /// Server time of the newest delivered message (catch-up for vendors without sequences).
    pub time: Timestamp,
}

/// One entry of the delivery journal as a durable subscription reads it: a message the
/// client delivered to the app, with its position in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableEvent {
    /// Position in the journal: 1, 2, 3 … in delivery order, never reused.
    pub position: u64,
    /// The message.
    pub message: Message,
    /// How it reached the client.
    pub origin: Origin,
}

/// What the local store knows of a message's changes (recall, edit, delete for me): the
/// highest revision applied, so a change is applied once and only when newer
/// ([`MessageChange::revision`]), and what a UI needs to show "edited".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageRevision {
    /// The highest revision applied (0: none; a message pulled in its current state starts
    /// at 0 too, its content already changed).
    pub revision: u32,
    /// When the latest edit applied was made (`None`: never edited here).
    pub edited_at: Option<Timestamp>,
    /// Deleted for me: the message is gone from timeline pages and lookups, and stays gone
    /// (a later change or a redelivery of it does not bring it back).
    pub deleted: bool,
}

impl MessageRevision {
    /// This record after `change` was applied.
    pub(crate) fn after(self, change: &MessageChange) -> Self {
        Self {
            revision: change.revision,
            edited_at: match change.kind {
                ChangeKind::Edited(_) => Some(change.at),
                _ => self.edited_at,
            },
            deleted: self.deleted || matches!(change.kind, ChangeKind::DeletedForMe),
        }
    }
}

/// What [`Store::apply_change`] did with a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Applied: the message as it now is (`None`: deleted for me), and its revision record.
    Applied {
        /// The message after the change; `None` when it was deleted for me.
        message: Option<Message>,
        /// The message's revision record after the change.
        revision: MessageRevision,
    },
    /// Not newer than what the store holds (a duplicate or a reordered older change), or
    /// its message is deleted for me: nothing changed.
    Stale,
    /// The message is not stored yet: the change is kept and applied when it arrives
    /// ([`Store::put_messages`]).
    Pending,
}

/// How many pending changes the store keeps per message it does not hold yet (the newest
/// revisions win): a change feed that names a message the client never gets must not grow
/// the store without bound.
pub const MAX_PENDING_PER_MESSAGE: usize = 8;

/// Applies the pending `changes` (any order) to a message arriving now, in revision order.
/// Returns what to store (`None`: deleted for me) and the revision record.
pub(crate) fn apply_pending(
    message: &Message,
    changes: &[MessageChange],
) -> (Option<Message>, MessageRevision) {
    let mut sorted: Vec<&MessageChange> = changes.iter().collect();
    sorted.sort_by_key(|c| c.revision);
    let mut current = Some(message.clone());
    let mut rev = MessageRevision::default();
    for change in sorted {
        if change.revision <= rev.revision || rev.deleted {
            continue;
        }
        current = current.and_then(|m| change.apply(&m));
        rev = rev.after(change);
    }
    (current, rev)
}

/// Adds `change` to the pending changes of its message, keeping the newest
/// [`MAX_PENDING_PER_MESSAGE`] revisions, one per revision.
pub(crate) fn push_pending(pending: &mut Vec<MessageChange>, change: &MessageChange) {
    if pending.iter().any(|c| c.revision == change.revision) {
        return;
    }
    pending.push(change.clone());
    pending.sort_by_key(|c| std::cmp::Reverse(c.revision));
    pending.truncate(MAX_PENDING_PER_MESSAGE);
}

/// What the client keeps locally. The module documentation states the durability contract
/// every implementation keeps.
///
/// The message lifecycle (issue 20) added [`Store::apply_change`] and the methods after it
/// with default bodies, so that a store written before it still compiles and works without
/// the lifecycle: it refuses changes with [`ArchError::Store`] (announced as
/// [`ClientEvent::StoreFailed`](crate::ClientEvent::StoreFailed), never faked), keeps no
/// change cursor (each sync pass starts at the feed's end: what changed while away shows
/// only in messages pulled in their current state) and no peers' receipts (no "seen").
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Returns once every write that returned before this call is durable (survives the
    /// process being killed). Concurrent callers share one flush (group commit).
    async fn flush(&self) -> Result<(), ArchError>;

    /// Persists a batch in one write; returns, per message, whether it was new (by server id).
    async fn put_messages(&self, messages: &[Message]) -> Result<Vec<bool>, ArchError>;

    /// A message by its vendor id.
    async fn message(&self, id: &ServerMsgId) -> Result<Option<Message>, ArchError>;

    /// The newest `limit` messages of a conversation, newest first.
    async fn latest(
        &self,
        conversation: &ConversationId,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError>;

    /// The delivery cursor of a conversation.
    async fn cursor(&self, conversation: &ConversationId) -> Result<Option<SyncCursor>, ArchError>;

    /// Saves delivery cursors and, in the same write, ends the in-flight delivery (see
    /// [`Store::begin_delivery`]).
    async fn set_cursors(&self, cursors: &[(ConversationId, SyncCursor)]) -> Result<(), ArchError> {
        self.commit_delivery(cursors, &[]).await.map(|_| ())
    }

    /// Records a delivery in one atomic write: saves `cursors`, appends `journal` (messages
    /// already stored, in delivery order) to the delivery journal at the next positions,
    /// and ends the in-flight delivery (see [`Store::begin_delivery`]). Returns the
    /// journal's head (the last position given out; 0 while it is empty).
    async fn commit_delivery(
        &self,
        cursors: &[(ConversationId, SyncCursor)],
        journal: &[(ServerMsgId, Origin)],
    ) -> Result<u64, ArchError>;

    /// The last journal position given out (0 if none ever was).
    async fn journal_head(&self) -> Result<u64, ArchError>;

    /// Up to `limit` journal entries after position `after`, in position order, with their
    /// messages.
    async fn journal_after(&self, after: u64, limit: usize)
    -> Result<Vec<DurableEvent>, ArchError>;

    /// Every registered durable subscription and its acknowledged position.
    async fn subscriptions(&self) -> Result<Vec<(String, u64)>, ArchError>;

    /// Registers or moves durable subscription `name` to `position` and, in the same write,
    /// drops the journal entries every subscription has acknowledged.
    async fn set_subscription(&self, name: &str, position: u64) -> Result<(), ArchError>;

    /// Forgets durable subscription `name` (and the journal entries only it held).
    async fn remove_subscription(&self, name: &str) -> Result<(), ArchError>;

    /// Records, before they are stored, the ids of messages about to be delivered that the
    /// store does not hold yet, and those the earlier record names (a delivery a crash
    /// interrupted, being repeated); other ids already stored are duplicates, delivered
    /// before, and are left out. Replaces the earlier record. [`Store::set_cursors`] clears it once
    /// they are delivered. After a crash the record names messages that may be stored yet
    /// never delivered: a vendor without sequence numbers cannot tell the client, and the
    /// store alone would take them for duplicates.
    async fn begin_delivery(&self, ids: &[ServerMsgId]) -> Result<(), ArchError>;

    /// The ids recorded by [`Store::begin_delivery`] and not cleared since.
    async fn in_flight(&self) -> Result<Vec<ServerMsgId>, ArchError>;

    /// Every saved cursor.
    async fn cursors(&self) -> Result<Vec<(ConversationId, SyncCursor)>, ArchError>;

    /// The server time from which the last *completed* sync pass left nothing behind: the
    /// catch-up after a restart asks the vendor for everything since. Unlike the cursors, it
    /// does not move while a pass is under way (a pass killed after delivering newer
    /// offline messages must not hide an older one the vendor counts as delivered).
    async fn sync_mark(&self) -> Result<Option<Timestamp>, ArchError>;

    /// Saves the sync mark (see [`Store::sync_mark`]).
    async fn set_sync_mark(&self, mark: Timestamp) -> Result<(), ArchError>;

    /// Up to `limit` messages of a conversation strictly older than `before` (all when
    /// `None`), newest first: the timeline page a chat screen scrolls through.
    async fn page_before(
        &self,
        conversation: &ConversationId,
        before: Option<&Message>,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError>;

    /// Up to `limit` messages of a conversation strictly newer than `after`, oldest first:
    /// paging forward from a position (e.g. after jumping to a search hit).
    async fn page_after(
        &self,
        conversation: &ConversationId,
        after: &Message,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError>;

    /// Inserts or replaces an outbox item (keyed by its client id).
    async fn put_outbox(&self, item: &OutboxItem) -> Result<(), ArchError>;

    /// Removes an outbox item.
    async fn remove_outbox(&self, id: &ClientMsgId) -> Result<(), ArchError>;

    /// Every outbox item, in enqueue order.
    async fn outbox(&self) -> Result<Vec<OutboxItem>, ArchError>;

    /// Saves what the user set on a conversation.
    async fn put_conversation_state(&self, state: &ConversationState) -> Result<(), ArchError>;

    /// Every saved conversation state.
    async fn conversation_states(&self) -> Result<Vec<ConversationState>, ArchError>;

    /// Applies a message change in one atomic write, idempotently: only when its revision is
    /// newer than the message's ([`MessageRevision`]); the stored message becomes
    /// [`MessageChange::apply`]'s result (a deleted-for-me message leaves the timeline and
    /// lookups, keeping only its revision record, so a redelivery is not stored again).
    /// A change to a message not stored yet is kept (at most [`MAX_PENDING_PER_MESSAGE`] per
    /// message) and applied by [`Store::put_messages`] when the message arrives.
    async fn apply_change(&self, change: &MessageChange) -> Result<ChangeOutcome, ArchError> {
        let _ = change;
        Err(ArchError::Store(
            "this store does not keep message changes".into(),
        ))
    }

    /// The revision record of a message (`None`: never changed here).
    async fn revision(&self, id: &ServerMsgId) -> Result<Option<MessageRevision>, ArchError> {
        let _ = id;
        Ok(None)
    }

    /// Where the change feed continues ([`im_service::Vendor::pull_changes`]); `None` before
    /// the first pull.
    async fn change_cursor(&self) -> Result<Option<ChangeCursor>, ArchError> {
        Ok(None)
    }

    /// Saves the change feed's cursor (see [`Store::change_cursor`]).
    async fn set_change_cursor(&self, cursor: &ChangeCursor) -> Result<(), ArchError> {
        // Default: not kept (see the trait's documentation).
        let _ = cursor;
        Ok(())
    }

    /// Saves a peer's read position if it is newer (by `up_to_time`, then id) than the one
    /// kept for that reader and conversation; returns whether it was.
    async fn put_read_receipt(&self, receipt: &ReadReceipt) -> Result<bool, ArchError> {
        // Default: not kept, so never newer (see the trait's documentation).
        let _ = receipt;
        Ok(false)
    }

    /// The newest read position of each peer of a conversation (for "seen").
    async fn read_receipts(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<ReadReceipt>, ArchError> {
        let _ = conversation;
        Ok(Vec::new())
    }
}

/// Whether receipt `new` is further than `old` (by time of the message read, then its id).
pub(crate) fn receipt_is_newer(old: Option<&ReadReceipt>, new: &ReadReceipt) -> bool {
    old.is_none_or(|o| (new.up_to_time, &new.up_to) > (o.up_to_time, &o.up_to))
}
