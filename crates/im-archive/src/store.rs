//! Storage of the archive: the [`ArchiveStore`] trait (so a server database can replace the
//! embedded default later), page queries and cursors, and [`MemoryArchive`], the in-memory
//! twin every test can use. The sled implementation is in `sled_store.rs`; both run the
//! same conformance suite (`tests/store_conformance.rs`).
//!
//! # Message changes (issue 20)
//!
//! A vendor's `message.changed` callbacks ([`MessageChange`]) reach the store through
//! [`ArchiveStore::change`]. The rules every store keeps:
//!
//! * **Current state in history.** A page returns each message as it is now: an edit's
//!   content, a recalled message as [`Content::Recalled`](im_service::Content::Recalled)
//!   (by [`MessageChange::apply`]). Its position (time, id) never changes.
//! * **Idempotent by revision, in any order.** Every change is recorded once per (vendor,
//!   target, revision): a redelivery is [`ChangeStored::Duplicate`]. The history shows the
//!   message as first archived with every recorded change applied in revision order
//!   ([`apply_log`]), whatever order they came in. An older change that comes late and
//!   changes nothing (a newer edit or recall supersedes it) is answered `Duplicate` too.
//!   Why the whole log rather than "apply only when newer": the archive ignores
//!   delete-for-me, so an edit that comes after a newer delete-for-me must still show (a
//!   receiver keeping only its newest revision would drop it; the property test
//!   `changes_converge_whatever_the_delivery_order` found that).
//! * **Changes may come before their message.** Callbacks race (a message callback given up
//!   and redelivered later, several dispatchers), so a change for a message not archived yet
//!   is kept ([`ChangeStored::Pending`]) and applied, with any others, in revision order
//!   when the message arrives. Refusing it with a retryable status instead would block an
//!   in-order dispatcher behind a message that may never come (one given up for good).
//! * **The company archive keeps everything.** A delete-for-me hides a message on one
//!   user's devices only; the archive records it (its revision counts) but keeps serving
//!   the message to every member. The message as first archived is kept as well
//!   ([`ArchiveStore::original`]) when a change replaces its content, and the change log
//!   ([`ArchiveStore::changes_of`]), so an edit or a recall never destroys what was said.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use im_service::{
    ConversationId, Message, MessageChange, PageCursor, ServerMsgId, Timestamp, UserId,
};
use parking_lot::{Mutex, MutexGuard};

use crate::error::ArchiveError;

/// Where a message sits in its conversation's order: server time, then server id (ties
/// between messages of the same millisecond are broken by id, the same way everywhere).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The vendor's server time.
    pub time: Timestamp,
    /// The vendor's message id.
    pub id: ServerMsgId,
}

impl Position {
    /// The position of `m`.
    pub fn of(m: &Message) -> Self {
        Self {
            time: m.server_time,
            id: m.server_id.clone(),
        }
    }

    /// As an opaque cursor: `"<millis>:<id>"`.
    pub fn cursor(&self) -> PageCursor {
        PageCursor(format!("{}:{}", self.time.as_millis(), self.id))
    }

    /// Reads a cursor made by [`Position::cursor`].
    pub fn parse(cursor: &PageCursor) -> Result<Self, ArchiveError> {
        let bad = || ArchiveError::BadRequest(format!("bad cursor {:?}", cursor.0));
        let (time, id) = cursor.0.split_once(':').ok_or_else(bad)?;
        let time: i64 = time.parse().map_err(|_| bad())?;
        if id.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            time: Timestamp::from_millis(time),
            id: ServerMsgId::new(id),
        })
    }
}

/// One page of one conversation, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    /// The conversation.
    pub conversation: ConversationId,
    /// Inclusive lower bound of server time.
    pub from: Timestamp,
    /// Exclusive upper bound of server time.
    pub to: Timestamp,
    /// Only messages strictly older than this (the previous page's cursor).
    pub before: Option<Position>,
    /// Most messages returned (at least 1).
    pub limit: usize,
}

impl PageQuery {
    /// Whether `p` falls in the query's range.
    pub fn contains(&self, p: &Position) -> bool {
        p.time >= self.from && p.time < self.to && self.before.as_ref().is_none_or(|b| p < b)
    }
}

/// A page read from a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPage {
    /// Newest first.
    pub messages: Vec<Message>,
    /// Where the next (older) page starts; `None` when the range is exhausted.
    pub next: Option<Position>,
}

/// What storing one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// It was new and is stored now.
    New,
    /// The same vendor message id was stored before; nothing changed.
    Duplicate,
}

/// What recording one change did (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeStored {
    /// Recorded and applied: the message's history shows it now (a delete-for-me is
    /// recorded and leaves the company's history as it is).
    Applied,
    /// Recorded; the message is not archived yet, and the change is applied when it is.
    Pending,
    /// This revision was recorded before, or it is older than a recorded change that
    /// supersedes it: the history did not change.
    Duplicate,
}

/// Applies `log` (one message's changes, in revision order) to `message` as first archived:
/// its current state. A change naming another conversation than the message is skipped (a
/// vendor bug, logged), never applied to a stranger's message.
pub fn apply_log(message: &Message, log: &[MessageChange]) -> Message {
    let mut current = message.clone();
    for change in log {
        if change.conversation != message.conversation {
            tracing::warn!(
                target_id = %change.target,
                "a kept change names another conversation than its message; skipped"
            );
            continue;
        }
        if let Some(next) = change.apply(&current) {
            current = next;
        }
    }
    current
}

/// The answer to a newly recorded change of an archived message: `Duplicate` when it is
/// older than a change recorded before and changed nothing (superseded), else `Applied`.
pub(crate) fn outcome(changed: bool, newest: Option<u32>, revision: u32) -> ChangeStored {
    if !changed && newest.is_some_and(|n| n > revision) {
        ChangeStored::Duplicate
    } else {
        ChangeStored::Applied
    }
}

/// The refusal of a change naming another conversation than the archived message.
pub(crate) fn wrong_conversation(change: &MessageChange, message: &Message) -> ArchiveError {
    ArchiveError::BadRequest(format!(
        "change of {} names conversation {}, the message is in {}",
        change.target, change.conversation, message.conversation
    ))
}

/// The users a message makes known as members of its conversation: both sides of a direct
/// conversation, the sender of a group message.
pub fn members_of(m: &Message) -> Vec<UserId> {
    match &m.conversation {
        ConversationId::Direct { low, high } => vec![low.clone(), high.clone()],
        ConversationId::Group(_) => vec![m.sender.clone()],
    }
}

/// The archive's storage. Writes are idempotent per (vendor, vendor message id); reads
/// are newest first. Implementations must make [`ArchiveStore::flush`] durable: the
/// server acknowledges a callback only after it.
#[async_trait]
pub trait ArchiveStore: Send + Sync + 'static {
    /// Stores each message of `vendor` not stored before, atomically per call.
    async fn store(&self, vendor: &str, messages: &[Message]) -> Result<Vec<Stored>, ArchiveError>;

    /// Records `change` of a message of `vendor` once and, when the message is archived,
    /// shows the message with its whole change log applied in revision order (see the
    /// module doc), atomically. A change naming another conversation than
    /// its archived message is refused ([`ArchiveError::BadRequest`]) and nothing is kept.
    async fn change(
        &self,
        vendor: &str,
        change: &MessageChange,
    ) -> Result<ChangeStored, ArchiveError>;

    /// The changes recorded for `vendor`'s message `target`, in revision order (applied,
    /// superseded or pending alike).
    async fn changes_of(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Vec<MessageChange>, ArchiveError>;

    /// `vendor`'s message `target` as it was first archived, before any change (`None` if it
    /// is not archived).
    async fn original(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Option<Message>, ArchiveError>;

    /// Makes everything stored so far survive a crash.
    async fn flush(&self) -> Result<(), ArchiveError>;

    /// One page, newest first.
    async fn page(&self, query: &PageQuery) -> Result<StoredPage, ArchiveError>;

    /// Whether anything of `conversation` is stored.
    async fn knows(&self, conversation: &ConversationId) -> Result<bool, ArchiveError>;

    /// Whether stored messages make `user` a member of `conversation` (see [`members_of`]).
    async fn is_known_member(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<bool, ArchiveError>;

    /// The conversations stored messages make `user` a member of, sorted.
    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, ArchiveError>;

    /// Messages stored.
    async fn len(&self) -> Result<u64, ArchiveError>;

    /// Whether nothing is stored.
    async fn is_empty(&self) -> Result<bool, ArchiveError> {
        Ok(self.len().await? == 0)
    }

    /// Whether the store can serve now (`/readyz`): an embedded store always can; a
    /// database behind a network answers whether it is reachable.
    async fn ready(&self) -> Result<(), ArchiveError> {
        Ok(())
    }
}

/// In-memory twin of the sled store: same semantics, nothing survives a restart.
#[derive(Debug, Default)]
pub struct MemoryArchive {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    /// Per conversation, by position.
    messages: BTreeMap<ConversationId, BTreeMap<Position, Message>>,
    /// (vendor, vendor message id) seen → the message as first archived.
    ids: HashMap<(String, ServerMsgId), Message>,
    /// (vendor, target) → its changes by revision (applied, superseded or pending).
    changes: HashMap<(String, ServerMsgId), BTreeMap<u32, MessageChange>>,
    /// (user, conversation) memberships learnt from messages.
    members: BTreeSet<(UserId, ConversationId)>,
    count: u64,
}

impl MemoryArchive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        // parking_lot: no poisoning; every update completes under the lock.
        self.state.lock()
    }
}

#[async_trait]
impl ArchiveStore for MemoryArchive {
    async fn store(&self, vendor: &str, messages: &[Message]) -> Result<Vec<Stored>, ArchiveError> {
        let mut st = self.state();
        Ok(messages
            .iter()
            .map(|m| {
                let id = (vendor.to_owned(), m.server_id.clone());
                if st.ids.contains_key(&id) {
                    return Stored::Duplicate;
                }
                st.ids.insert(id.clone(), m.clone());
                // Changes that came before the message apply now.
                let log: Vec<MessageChange> = st
                    .changes
                    .get(&id)
                    .map(|l| l.values().cloned().collect())
                    .unwrap_or_default();
                let current = apply_log(m, &log);
                st.messages
                    .entry(m.conversation.clone())
                    .or_default()
                    .insert(Position::of(m), current);
                for u in members_of(m) {
                    st.members.insert((u, m.conversation.clone()));
                }
                st.count += 1;
                Stored::New
            })
            .collect())
    }

    async fn change(
        &self,
        vendor: &str,
        change: &MessageChange,
    ) -> Result<ChangeStored, ArchiveError> {
        let mut st = self.state();
        let id = (vendor.to_owned(), change.target.clone());
        let original = st.ids.get(&id).cloned();
        if let Some(m) = &original
            && m.conversation != change.conversation
        {
            return Err(wrong_conversation(change, m));
        }
        let log = st.changes.entry(id).or_default();
        if log.contains_key(&change.revision) {
            return Ok(ChangeStored::Duplicate);
        }
        let newest = log.keys().next_back().copied();
        log.insert(change.revision, change.clone());
        let Some(m) = original else {
            return Ok(ChangeStored::Pending);
        };
        let next = apply_log(&m, &log.values().cloned().collect::<Vec<_>>());
        let position = Position::of(&m);
        let mut changed = false;
        if let Some(current) = st
            .messages
            .get_mut(&m.conversation)
            .and_then(|c| c.get_mut(&position))
            && *current != next
        {
            *current = next;
            changed = true;
        }
        Ok(outcome(changed, newest, change.revision))
    }

    async fn changes_of(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Vec<MessageChange>, ArchiveError> {
        Ok(self
            .state()
            .changes
            .get(&(vendor.to_owned(), target.clone()))
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn original(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Option<Message>, ArchiveError> {
        Ok(self
            .state()
            .ids
            .get(&(vendor.to_owned(), target.clone()))
            .cloned())
    }

    async fn flush(&self) -> Result<(), ArchiveError> {
        Ok(())
    }

    async fn page(&self, q: &PageQuery) -> Result<StoredPage, ArchiveError> {
        let st = self.state();
        let Some(conv) = st.messages.get(&q.conversation) else {
            return Ok(StoredPage {
                messages: Vec::new(),
                next: None,
            });
        };
        let mut hits = conv
            .iter()
            .rev()
            .filter(|(p, _)| q.contains(p))
            .take(q.limit.max(1) + 1)
            .map(|(_, m)| m.clone())
            .collect::<Vec<_>>();
        Ok(finish_page(&mut hits, q.limit))
    }

    async fn knows(&self, conversation: &ConversationId) -> Result<bool, ArchiveError> {
        Ok(self.state().messages.contains_key(conversation))
    }

    async fn is_known_member(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<bool, ArchiveError> {
        Ok(self
            .state()
            .members
            .contains(&(user.clone(), conversation.clone())))
    }

    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, ArchiveError> {
        Ok(self
            .state()
            .members
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, c)| c.clone())
            .collect())
    }

    async fn len(&self) -> Result<u64, ArchiveError> {
        Ok(self.state().count)
    }
}

/// Cuts a newest-first read of up to `limit + 1` messages to a page: the extra one only
/// tells that there is more.
pub(crate) fn finish_page(hits: &mut Vec<Message>, limit: usize) -> StoredPage {
    let limit = limit.max(1);
    let more = hits.len() > limit;
    hits.truncate(limit);
    StoredPage {
        next: more.then(|| hits.last().map(Position::of)).flatten(),
        messages: std::mem::take(hits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let p = Position {
            time: Timestamp::from_millis(-5),
            id: ServerMsgId::new("a:b"),
        };
        assert_eq!(Position::parse(&p.cursor()).unwrap(), p);
        for bad in ["", "12", "x:y", "12:"] {
            assert!(matches!(
                Position::parse(&PageCursor(bad.into())),
                Err(ArchiveError::BadRequest(_))
            ));
        }
    }
}
