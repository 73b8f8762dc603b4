//! Storage of the archive: the [`ArchiveStore`] trait (so a server database can replace the
//! embedded default later), page queries and cursors, and [`MemoryArchive`], the in-memory
//! twin every test can use. The sled implementation is in `sled_store.rs`; both run the
//! same conformance suite (`tests/store_conformance.rs`).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use async_trait::async_trait;
use im_service::{ConversationId, Message, PageCursor, ServerMsgId, Timestamp, UserId};
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
    fn store(&self, vendor: &str, messages: &[Message]) -> Result<Vec<Stored>, ArchiveError>;

    /// Makes everything stored so far survive a crash.
    async fn flush(&self) -> Result<(), ArchiveError>;

    /// One page, newest first.
    fn page(&self, query: &PageQuery) -> Result<StoredPage, ArchiveError>;

    /// Whether anything of `conversation` is stored.
    fn knows(&self, conversation: &ConversationId) -> Result<bool, ArchiveError>;

    /// Whether stored messages make `user` a member of `conversation` (see [`members_of`]).
    fn is_known_member(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<bool, ArchiveError>;

    /// The conversations stored messages make `user` a member of, sorted.
    fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, ArchiveError>;

    /// Messages stored.
    fn len(&self) -> Result<u64, ArchiveError>;

    /// Whether nothing is stored.
    fn is_empty(&self) -> Result<bool, ArchiveError> {
        Ok(self.len()? == 0)
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
    /// (vendor, vendor message id) seen.
    ids: HashSet<(String, ServerMsgId)>,
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
    fn store(&self, vendor: &str, messages: &[Message]) -> Result<Vec<Stored>, ArchiveError> {
        let mut st = self.state();
        Ok(messages
            .iter()
            .map(|m| {
                if !st.ids.insert((vendor.to_owned(), m.server_id.clone())) {
                    return Stored::Duplicate;
                }
                st.messages
                    .entry(m.conversation.clone())
                    .or_default()
                    .insert(Position::of(m), m.clone());
                for u in members_of(m) {
                    st.members.insert((u, m.conversation.clone()));
                }
                st.count += 1;
                Stored::New
            })
            .collect())
    }

    async fn flush(&self) -> Result<(), ArchiveError> {
        Ok(())
    }

    fn page(&self, q: &PageQuery) -> Result<StoredPage, ArchiveError> {
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

    fn knows(&self, conversation: &ConversationId) -> Result<bool, ArchiveError> {
        Ok(self.state().messages.contains_key(conversation))
    }

    fn is_known_member(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<bool, ArchiveError> {
        Ok(self
            .state()
            .members
            .contains(&(user.clone(), conversation.clone())))
    }

    fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, ArchiveError> {
        Ok(self
            .state()
            .members
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, c)| c.clone())
            .collect())
    }

    fn len(&self) -> Result<u64, ArchiveError> {
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
