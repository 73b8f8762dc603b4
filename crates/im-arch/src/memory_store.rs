//! The in-memory store: [`MemoryStore`], and the model it keeps ([`MemoryState`]), which
//! [`LogStore`](crate::LogStore) also keeps and rebuilds from its log. Every write is one
//! synchronous method of the model, a pure function of the state and its arguments, so
//! replaying the same calls in the same order (the log) rebuilds the same state.

use std::collections::{BTreeMap, HashMap};

use im_service::{
    ChangeCursor, ClientMsgId, ConversationId, Message, MessageChange, Origin, ReadReceipt, Seq,
    ServerMsgId, Timestamp, UserId,
};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::error::ArchError;
use crate::store::{
    ChangeOutcome, ConversationState, DurableEvent, MessageRevision, OutboxItem, Store, SyncCursor,
    apply_pending, push_pending, receipt_is_newer,
};

/// Order of messages inside a conversation: server time, then sequence, then id.
pub(crate) type OrderKey = (Timestamp, Option<Seq>, ServerMsgId);

pub(crate) fn order_key(m: &Message) -> OrderKey {
    (m.server_time, m.seq, m.server_id.clone())
}

/// Everything a client store keeps. Fields are crate-visible so that the log store's
/// snapshot can write and read them entry by entry.
#[derive(Default)]
pub(crate) struct MemoryState {
    /// Each conversation's messages in timeline order (the stored, possibly changed, copy).
    pub(crate) by_conversation: HashMap<ConversationId, BTreeMap<OrderKey, Message>>,
    /// Where a stored message is: its conversation and its key there (so a lookup by id
    /// is two hash/tree probes, whatever the number of conversations).
    pub(crate) by_id: HashMap<ServerMsgId, (ConversationId, OrderKey)>,
    pub(crate) cursors: HashMap<ConversationId, SyncCursor>,
    pub(crate) in_flight: Vec<ServerMsgId>,
    pub(crate) outbox: HashMap<ClientMsgId, OutboxItem>,
    pub(crate) conversation_states: HashMap<ConversationId, ConversationState>,
    /// Delivery journal: position → (message id, origin).
    pub(crate) journal: BTreeMap<u64, (ServerMsgId, Origin)>,
    pub(crate) journal_head: u64,
    pub(crate) subscriptions: HashMap<String, u64>,
    pub(crate) sync_mark: Option<Timestamp>,
    pub(crate) revisions: HashMap<ServerMsgId, MessageRevision>,
    pub(crate) pending: HashMap<ServerMsgId, Vec<MessageChange>>,
    pub(crate) change_cursor: Option<ChangeCursor>,
    pub(crate) receipts: HashMap<(ConversationId, UserId), ReadReceipt>,
}

impl MemoryState {
    /// Drops journal entries every subscription has acknowledged (all without any).
    fn trim_journal(&mut self) {
        let keep_after = self
            .subscriptions
            .values()
            .copied()
            .min()
            .unwrap_or(self.journal_head);
        self.journal = self.journal.split_off(&(keep_after + 1));
    }

    /// Puts a message that is known to be new (a snapshot being read, or `put_messages`).
    pub(crate) fn insert_message(&mut self, stored: Message) {
        let key = order_key(&stored);
        self.by_id.insert(
            stored.server_id.clone(),
            (stored.conversation.clone(), key.clone()),
        );
        self.by_conversation
            .entry(stored.conversation.clone())
            .or_default()
            .insert(key, stored);
    }

    pub(crate) fn commit_delivery(
        &mut self,
        cursors: &[(ConversationId, SyncCursor)],
        journal: &[(ServerMsgId, Origin)],
    ) -> u64 {
        for (c, cur) in cursors {
            self.cursors.insert(c.clone(), *cur);
        }
        self.in_flight.clear();
        for entry in journal {
            self.journal_head += 1;
            self.journal.insert(self.journal_head, entry.clone());
        }
        self.journal_head
    }

    pub(crate) fn set_sync_mark(&mut self, mark: Timestamp) {
        self.sync_mark = Some(mark);
    }

    pub(crate) fn journal_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DurableEvent>, ArchError> {
        let mut out = Vec::new();
        for (&position, (id, origin)) in self.journal.range(after.saturating_add(1)..) {
            if out.len() >= limit {
                break;
            }
            if self.revisions.get(id).is_some_and(|r| r.deleted) {
                // Deleted for me after it was delivered: a durable reader no longer gets it.
                continue;
            }
            let message = self.message(id).ok_or_else(|| ArchError::CorruptEntry {
                tree: "journal".into(),
                key: position.to_string(),
                reason: format!("names message {id}, which is not stored"),
            })?;
            out.push(DurableEvent {
                position,
                message,
                origin: *origin,
            });
        }
        Ok(out)
    }

    pub(crate) fn subscriptions(&self) -> Vec<(String, u64)> {
        let mut subs: Vec<(String, u64)> = self
            .subscriptions
            .iter()
            .map(|(n, p)| (n.clone(), *p))
            .collect();
        subs.sort();
        subs
    }

    pub(crate) fn set_subscription(&mut self, name: &str, position: u64) {
        self.subscriptions.insert(name.to_string(), position);
        self.trim_journal();
    }

    pub(crate) fn remove_subscription(&mut self, name: &str) {
        self.subscriptions.remove(name);
        self.trim_journal();
    }

    pub(crate) fn put_messages(&mut self, messages: &[Message]) -> Vec<bool> {
        messages
            .iter()
            .map(|m| {
                let deleted = self.revisions.get(&m.server_id).is_some_and(|r| r.deleted);
                if deleted || self.by_id.contains_key(&m.server_id) {
                    return false;
                }
                // Changes that arrived before their message apply now, in the same write.
                let stored = match self.pending.remove(&m.server_id) {
                    Some(pending) => {
                        let (stored, rev) = apply_pending(m, &pending);
                        self.revisions.insert(m.server_id.clone(), rev);
                        stored
                    }
                    None => Some(m.clone()),
                };
                match stored {
                    Some(stored) => {
                        self.insert_message(stored);
                        true
                    }
                    // Deleted for me before it arrived: known (not new), never shown.
                    None => false,
                }
            })
            .collect()
    }

    pub(crate) fn message(&self, id: &ServerMsgId) -> Option<Message> {
        let (conversation, key) = self.by_id.get(id)?;
        self.by_conversation.get(conversation)?.get(key).cloned()
    }

    pub(crate) fn latest(&self, conversation: &ConversationId, limit: usize) -> Vec<Message> {
        self.by_conversation
            .get(conversation)
            .map(|c| c.values().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn begin_delivery(&mut self, ids: &[ServerMsgId]) {
        let earlier = std::mem::take(&mut self.in_flight);
        self.in_flight = ids
            .iter()
            .filter(|id| !self.by_id.contains_key(*id) || earlier.contains(id))
            .cloned()
            .collect();
    }

    pub(crate) fn cursors(&self) -> Vec<(ConversationId, SyncCursor)> {
        self.cursors
            .iter()
            .map(|(c, cur)| (c.clone(), *cur))
            .collect()
    }

    pub(crate) fn page_before(
        &self,
        conversation: &ConversationId,
        before: Option<&Message>,
        limit: usize,
    ) -> Vec<Message> {
        let Some(conv) = self.by_conversation.get(conversation) else {
            return Vec::new();
        };
        match before {
            Some(m) => conv
                .range(..order_key(m))
                .rev()
                .take(limit)
                .map(|(_, m)| m.clone())
                .collect(),
            None => conv.values().rev().take(limit).cloned().collect(),
        }
    }

    pub(crate) fn page_after(
        &self,
        conversation: &ConversationId,
        after: &Message,
        limit: usize,
    ) -> Vec<Message> {
        let Some(conv) = self.by_conversation.get(conversation) else {
            return Vec::new();
        };
        let lower = (
            std::ops::Bound::Excluded(order_key(after)),
            std::ops::Bound::Unbounded,
        );
        conv.range(lower)
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect()
    }

    pub(crate) fn put_outbox(&mut self, item: &OutboxItem) {
        self.outbox
            .insert(item.message.client_id.clone(), item.clone());
    }

    pub(crate) fn remove_outbox(&mut self, id: &ClientMsgId) {
        self.outbox.remove(id);
    }

    pub(crate) fn outbox(&self) -> Vec<OutboxItem> {
        let mut items: Vec<OutboxItem> = self.outbox.values().cloned().collect();
        items.sort_by_key(|i| i.position);
        items
    }

    pub(crate) fn put_conversation_state(&mut self, state: &ConversationState) {
        self.conversation_states
            .insert(state.id.clone(), state.clone());
    }

    pub(crate) fn conversation_states(&self) -> Vec<ConversationState> {
        self.conversation_states.values().cloned().collect()
    }

    pub(crate) fn apply_change(
        &mut self,
        change: &MessageChange,
    ) -> Result<ChangeOutcome, ArchError> {
        let rev = self
            .revisions
            .get(&change.target)
            .copied()
            .unwrap_or_default();
        if rev.deleted || change.revision <= rev.revision {
            return Ok(ChangeOutcome::Stale);
        }
        let Some((conversation, key)) = self.by_id.get(&change.target).cloned() else {
            push_pending(
                self.pending.entry(change.target.clone()).or_default(),
                change,
            );
            return Ok(ChangeOutcome::Pending);
        };
        let Some(conv) = self.by_conversation.get_mut(&conversation) else {
            return Err(ArchError::Store(format!(
                "message {} is indexed but not stored in {conversation}",
                change.target
            )));
        };
        let Some(old) = conv.get(&key) else {
            return Err(ArchError::Store(format!(
                "message {} is indexed but not stored",
                change.target
            )));
        };
        let message = change.apply(old);
        match &message {
            Some(m) => {
                conv.insert(key, m.clone());
            }
            None => {
                conv.remove(&key);
                self.by_id.remove(&change.target);
            }
        }
        let revision = rev.after(change);
        self.revisions.insert(change.target.clone(), revision);
        Ok(ChangeOutcome::Applied { message, revision })
    }

    pub(crate) fn set_change_cursor(&mut self, cursor: &ChangeCursor) {
        self.change_cursor = Some(cursor.clone());
    }

    pub(crate) fn put_read_receipt(&mut self, receipt: &ReadReceipt) -> bool {
        let key = (receipt.conversation.clone(), receipt.reader.clone());
        if !receipt_is_newer(self.receipts.get(&key), receipt) {
            return false;
        }
        self.receipts.insert(key, receipt.clone());
        true
    }

    pub(crate) fn read_receipts(&self, conversation: &ConversationId) -> Vec<ReadReceipt> {
        let mut out: Vec<ReadReceipt> = self
            .receipts
            .iter()
            .filter(|((c, _), _)| c == conversation)
            .map(|(_, r)| r.clone())
            .collect();
        out.sort_by(|a, b| a.reader.cmp(&b.reader));
        out
    }
}

/// The in-memory [`Store`]: tests, and clients that keep nothing across restarts.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn flush(&self) -> Result<(), ArchError> {
        // Nothing of an in-memory store survives a crash; there is nothing to wait for.
        Ok(())
    }

    async fn commit_delivery(
        &self,
        cursors: &[(ConversationId, SyncCursor)],
        journal: &[(ServerMsgId, Origin)],
    ) -> Result<u64, ArchError> {
        Ok(self.state.lock().commit_delivery(cursors, journal))
    }

    async fn journal_head(&self) -> Result<u64, ArchError> {
        Ok(self.state.lock().journal_head)
    }

    async fn sync_mark(&self) -> Result<Option<Timestamp>, ArchError> {
        Ok(self.state.lock().sync_mark)
    }

    async fn set_sync_mark(&self, mark: Timestamp) -> Result<(), ArchError> {
        self.state.lock().set_sync_mark(mark);
        Ok(())
    }

    async fn journal_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DurableEvent>, ArchError> {
        self.state.lock().journal_after(after, limit)
    }

    async fn subscriptions(&self) -> Result<Vec<(String, u64)>, ArchError> {
        Ok(self.state.lock().subscriptions())
    }

    async fn set_subscription(&self, name: &str, position: u64) -> Result<(), ArchError> {
        self.state.lock().set_subscription(name, position);
        Ok(())
    }

    async fn remove_subscription(&self, name: &str) -> Result<(), ArchError> {
        self.state.lock().remove_subscription(name);
        Ok(())
    }

    async fn put_messages(&self, messages: &[Message]) -> Result<Vec<bool>, ArchError> {
        Ok(self.state.lock().put_messages(messages))
    }

    async fn message(&self, id: &ServerMsgId) -> Result<Option<Message>, ArchError> {
        Ok(self.state.lock().message(id))
    }

    async fn latest(
        &self,
        conversation: &ConversationId,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        Ok(self.state.lock().latest(conversation, limit))
    }

    async fn cursor(&self, conversation: &ConversationId) -> Result<Option<SyncCursor>, ArchError> {
        Ok(self.state.lock().cursors.get(conversation).copied())
    }

    async fn begin_delivery(&self, ids: &[ServerMsgId]) -> Result<(), ArchError> {
        self.state.lock().begin_delivery(ids);
        Ok(())
    }

    async fn in_flight(&self) -> Result<Vec<ServerMsgId>, ArchError> {
        Ok(self.state.lock().in_flight.clone())
    }

    async fn cursors(&self) -> Result<Vec<(ConversationId, SyncCursor)>, ArchError> {
        Ok(self.state.lock().cursors())
    }

    async fn page_before(
        &self,
        conversation: &ConversationId,
        before: Option<&Message>,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        Ok(self.state.lock().page_before(conversation, before, limit))
    }

    async fn page_after(
        &self,
        conversation: &ConversationId,
        after: &Message,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        Ok(self.state.lock().page_after(conversation, after, limit))
    }

    async fn put_outbox(&self, item: &OutboxItem) -> Result<(), ArchError> {
        self.state.lock().put_outbox(item);
        Ok(())
    }

    async fn remove_outbox(&self, id: &ClientMsgId) -> Result<(), ArchError> {
        self.state.lock().remove_outbox(id);
        Ok(())
    }

    async fn outbox(&self) -> Result<Vec<OutboxItem>, ArchError> {
        Ok(self.state.lock().outbox())
    }

    async fn put_conversation_state(&self, state: &ConversationState) -> Result<(), ArchError> {
        self.state.lock().put_conversation_state(state);
        Ok(())
    }

    async fn conversation_states(&self) -> Result<Vec<ConversationState>, ArchError> {
        Ok(self.state.lock().conversation_states())
    }

    async fn apply_change(&self, change: &MessageChange) -> Result<ChangeOutcome, ArchError> {
        self.state.lock().apply_change(change)
    }

    async fn revision(&self, id: &ServerMsgId) -> Result<Option<MessageRevision>, ArchError> {
        Ok(self.state.lock().revisions.get(id).copied())
    }

    async fn change_cursor(&self) -> Result<Option<ChangeCursor>, ArchError> {
        Ok(self.state.lock().change_cursor.clone())
    }

    async fn set_change_cursor(&self, cursor: &ChangeCursor) -> Result<(), ArchError> {
        self.state.lock().set_change_cursor(cursor);
        Ok(())
    }

    async fn put_read_receipt(&self, receipt: &ReadReceipt) -> Result<bool, ArchError> {
        Ok(self.state.lock().put_read_receipt(receipt))
    }

    async fn read_receipts(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<ReadReceipt>, ArchError> {
        Ok(self.state.lock().read_receipts(conversation))
    }
}
