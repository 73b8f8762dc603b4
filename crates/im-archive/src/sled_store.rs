//! [`SledArchive`]: the embedded default store, one sled tree with six key spaces.
//!
//! * `m` + conversation + time + id → message in its current state (the codec of
//!   `im-service`): a conversation's messages are contiguous and ordered by (time, id), so
//!   a page is one reverse range scan;
//! * `i` + vendor + `\0` + vendor id → message key: dedup of redelivered callbacks;
//! * `r` + vendor (u16 length + bytes) + target id (u16 length + bytes) + revision (u32
//!   big-endian) → [`MessageChange`] (codec): the change log, one message's changes
//!   contiguous in revision order, pending ones included (see `store.rs`);
//! * `o` + vendor + `\0` + vendor id → the message as first archived, written only when a
//!   change replaced its content (until then `m` holds it);
//! * `c` + conversation → (): conversations known;
//! * `u` + user + `\0` + conversation → (): memberships learnt from messages;
//! * `#count` → the number of messages; `#schema` → the key layout's version.
//!
//! A message key is `m`, the conversation's text after its length (u16 big-endian), the
//! server time as 10 base-128 digits of the sign-flipped `i64`, and the server id, all
//! written by [`im_service::ordered_key`]. Base 128 since schema 2 (tree `archive.v2`):
//! schema 1 (tree `archive`) wrote the time as 8 big-endian bytes, and sled 0.34's reverse
//! iterator panics ("tree traversal") when keys have four `0xff` bytes where it guesses a
//! node's predecessor, as big-endian time −1 (`7f ff ff ff ff ff ff ff`) does; paging
//! thousands of messages around time 0 found it (`tests/sled_layout.rs`). Digits stay below
//! `0x80` and UTF-8 never has `0xff`, so no key has such a run. Opening a schema 1 archive
//! rewrites it into the new tree in one atomic batch, then drops the old tree; an older
//! build opening a migrated directory finds its tree gone (an empty archive), never a
//! misread one.
//!
//! The `r` and `o` spaces came with message changes (issue 20) without a schema bump: a
//! schema 2 store without them is a store without changes, and an older build reading one
//! with them sees every message's current state and ignores the log.
//!
//! A call's entries go in one atomic batch, and a message's key is a function of the message,
//! so even a batch replayed after a crash lands on the same keys: stored once.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use im_service::codec;
use im_service::lock_wait;
use im_service::ordered_key::{self, KeyReader};
use im_service::{ConversationId, Message, MessageChange, ServerMsgId, UserId};

use crate::error::ArchiveError;
use crate::store::{
    ArchiveStore, ChangeStored, PageQuery, Position, Stored, StoredPage, apply_log, finish_page,
    members_of, outcome, wrong_conversation,
};

/// The sled-backed archive store.
#[derive(Debug, Clone)]
pub struct SledArchive {
    db: sled::Db,
    tree: sled::Tree,
    /// Serialises writers: the dedup check and the count update are read-then-write.
    write: std::sync::Arc<parking_lot::Mutex<()>>,
    /// Group commit of flushes (see [`Durability`]).
    durability: std::sync::Arc<Durability>,
}

/// Flushes are serialised and coalesced. Serialised because sled 0.34's `flush_async`
/// deadlocks when called concurrently (spacejam/sled#1308: found here by the
/// `archive_ingest` benchmark with 16 callbacks in flight); coalesced because one flush
/// makes every write applied before it durable, so a caller whose writes an earlier flush
/// already covered returns at once instead of queueing another fsync.
#[derive(Debug, Default)]
struct Durability {
    /// Batches applied so far (bumped after each `apply_batch`).
    written: AtomicU64,
    /// How many of them a completed flush covers. This async mutex is the flush gate and is
    /// deliberately held across the flush's `.await` (the one lock in the crate that is):
    /// it only ever guards this counter and the flush itself.
    flushed: tokio::sync::Mutex<u64>,
}

const MESSAGES: u8 = b'm';
const IDS: u8 = b'i';
const CONVERSATIONS: u8 = b'c';
const USERS: u8 = b'u';
const CHANGES: u8 = b'r';
const ORIGINALS: u8 = b'o';
/// Key of the message count.
const COUNT: &[u8] = b"#count";
/// Key of the schema version (`u32` big-endian).
const SCHEMA_KEY: &[u8] = b"#schema";
/// The key layout this build writes (see the module doc).
const SCHEMA_VERSION: u32 = 2;
/// The tree of schema 2.
const TREE: &str = "archive.v2";
/// The tree of schema 1 (message times big-endian), migrated and dropped on open.
const TREE_V1: &str = "archive";

/// `m` + conversation (u16 length + its text): every key of one conversation shares it.
/// `None` for a name too long for the prefix (`store` refuses those, so nothing has one).
fn conversation_prefix(c: &ConversationId) -> Option<Vec<u8>> {
    let name = c.to_string();
    let mut k = Vec::with_capacity(3 + name.len() + 8 + 16);
    k.push(MESSAGES);
    ordered_key::push_len_prefixed_u16(&mut k, name.as_bytes()).ok()?;
    Some(k)
}

/// Server time as 10 base-128 digits that sort like the signed value (schema 2).
fn push_time(k: &mut Vec<u8>, t: im_service::Timestamp) {
    ordered_key::push_i64_base128(k, t.as_millis());
}

/// A schema 1 message key (time as 8 big-endian bytes) in the schema 2 form.
fn migrate_message_key(old: &[u8]) -> Option<Vec<u8>> {
    let mut r = KeyReader::new(old);
    if r.byte()? != MESSAGES {
        return None;
    }
    let name = r.len_prefixed_u16()?;
    let time = r.i64_be()?;
    let mut k = vec![MESSAGES];
    ordered_key::push_len_prefixed_u16(&mut k, name).ok()?;
    ordered_key::push_i64_base128(&mut k, time);
    ordered_key::push_tail(&mut k, r.tail());
    Some(k)
}

/// Adds every entry of the schema 1 tree to `batch` in the schema 2 form: message keys and
/// the id index's values (which are message keys) rewritten, the rest copied. Returns how
/// many messages it moved.
fn migrate_v1(old: &sled::Tree, batch: &mut sled::Batch) -> Result<u64, ArchiveError> {
    let corrupt = |key: &[u8]| ArchiveError::Corrupt {
        key: key.iter().map(|b| format!("{b:02x}")).collect(),
        reason: "not a schema 1 message key".into(),
    };
    let mut messages = 0;
    for entry in old.iter() {
        let (key, value) = entry?;
        match key.first() {
            Some(&MESSAGES) => {
                batch.insert(
                    migrate_message_key(&key).ok_or_else(|| corrupt(&key))?,
                    value,
                );
                messages += 1;
            }
            Some(&IDS) => {
                batch.insert(
                    key,
                    migrate_message_key(&value).ok_or_else(|| corrupt(&value))?,
                );
            }
            _ => batch.insert(key, value),
        }
    }
    Ok(messages)
}

/// A key in hex, for [`ArchiveError::Corrupt`].
fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The codec encoding of a stored value.
fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ArchiveError> {
    codec::encode(value).map_err(|e| ArchiveError::Storage(e.to_string()))
}

/// Appends the in-conversation order: time, then id.
fn push_position(k: &mut Vec<u8>, p: &Position) {
    push_time(k, p.time);
    ordered_key::push_tail(k, p.id.as_str().as_bytes());
}

fn position_key(c: &ConversationId, p: &Position) -> Option<Vec<u8>> {
    let mut k = conversation_prefix(c)?;
    push_position(&mut k, p);
    Some(k)
}

fn id_key(vendor: &str, id: &ServerMsgId) -> Vec<u8> {
    vendor_id_key(IDS, vendor, id)
}

/// `tag` + vendor + `\0` + vendor id (the `i` and `o` spaces).
fn vendor_id_key(tag: u8, vendor: &str, id: &ServerMsgId) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(vendor.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// `r` + vendor + target: every change of one message shares it. `None` for a vendor name
/// or id too long for the prefix (such a change is refused).
fn change_prefix(vendor: &str, target: &ServerMsgId) -> Option<Vec<u8>> {
    let mut k = vec![CHANGES];
    ordered_key::push_len_prefixed_u16(&mut k, vendor.as_bytes()).ok()?;
    ordered_key::push_len_prefixed_u16(&mut k, target.as_str().as_bytes()).ok()?;
    Some(k)
}

fn tagged(tag: u8, s: &str) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(s.as_bytes());
    k
}

fn user_key(u: &UserId, c: &ConversationId) -> Vec<u8> {
    let mut k = tagged(USERS, u.as_str());
    k.push(0);
    k.extend_from_slice(c.to_string().as_bytes());
    k
}

impl SledArchive {
    /// Opens (or creates) the archive in `dir`.
    ///
    /// Waits (at most 2 s) for the directory's lock: an archive dropped just before is
    /// released only when sled's background flusher notices, and a quick restart must not
    /// fail for that.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ArchiveError> {
        let db = lock_wait::retry_while(
            std::time::Duration::from_secs(2),
            || sled::open(dir.as_ref()),
            |e| matches!(e, sled::Error::Io(e) if lock_wait::is_lock_contention(e)),
        )?;
        Self::on(db)
    }

    /// The archive on an open sled database (its tree `archive.v2`), migrating a schema 1
    /// archive (tree `archive`) first; see the module doc.
    ///
    /// Fails with [`ArchiveError::Storage`] if a newer build wrote the store (left as it
    /// is), and with [`ArchiveError::Corrupt`] if an old entry does not decode (nothing is
    /// migrated then).
    pub fn on(db: sled::Db) -> Result<Self, ArchiveError> {
        let has_v1 = db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == TREE_V1.as_bytes());
        let tree = db.open_tree(TREE)?;
        match tree.get(SCHEMA_KEY)? {
            Some(raw) => {
                let found = <[u8; 4]>::try_from(raw.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| ArchiveError::Corrupt {
                        key: "#schema".into(),
                        reason: format!("{} bytes, expected 4", raw.len()),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(ArchiveError::Storage(format!(
                        "archive schema version {found} is newer than this build's \
                         {SCHEMA_VERSION}; the store was left unchanged"
                    )));
                }
            }
            None => {
                // One atomic batch: the migrated entries and the version, or nothing.
                let mut batch = sled::Batch::default();
                if has_v1 {
                    let old = db.open_tree(TREE_V1)?;
                    let migrated = migrate_v1(&old, &mut batch)?;
                    tracing::info!(migrated, "archive store migrated from schema 1 to 2");
                }
                batch.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes());
                tree.apply_batch(batch)?;
                tree.flush()?;
            }
        }
        if has_v1 {
            // Migrated (now, or by an open that stopped before this line).
            db.drop_tree(TREE_V1)?;
        }
        Ok(Self {
            db,
            tree,
            write: Default::default(),
            durability: Default::default(),
        })
    }

    /// The change log of `vendor`'s message `target`, in revision order.
    fn log(&self, vendor: &str, target: &ServerMsgId) -> Result<Vec<MessageChange>, ArchiveError> {
        let Some(prefix) = change_prefix(vendor, target) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix(&prefix) {
            let (k, v) = entry?;
            out.push(Self::decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Messages stored (the count entry), read synchronously: [`ArchiveStore::store`]
    /// reads it under the write lock, which is never held across an await.
    fn count(&self) -> Result<u64, ArchiveError> {
        Ok(match self.tree.get(COUNT)? {
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| ArchiveError::Corrupt {
                    key: "#count".into(),
                    reason: format!("{} bytes, expected 8", v.len()),
                })?;
                u64::from_be_bytes(bytes)
            }
            None => 0,
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, ArchiveError> {
        codec::decode(value).map_err(|e| ArchiveError::Corrupt {
            key: hex(key),
            reason: e.to_string(),
        })
    }
}

#[async_trait]
impl ArchiveStore for SledArchive {
    async fn store(&self, vendor: &str, messages: &[Message]) -> Result<Vec<Stored>, ArchiveError> {
        if let Some(m) = messages
            .iter()
            .find(|m| m.conversation.to_string().len() > usize::from(u16::MAX))
        {
            return Err(ArchiveError::BadRequest(format!(
                "conversation id of {} bytes",
                m.conversation.to_string().len()
            )));
        }
        // Held across no await (this body never awaits).
        let _writer = self.write.lock();
        let mut batch = sled::Batch::default();
        let mut out = Vec::with_capacity(messages.len());
        let mut fresh_ids = std::collections::HashSet::new();
        let mut added = 0u64;
        for m in messages {
            let id = id_key(vendor, &m.server_id);
            if self.tree.contains_key(&id)? || !fresh_ids.insert(id.clone()) {
                out.push(Stored::Duplicate);
                continue;
            }
            // The length was checked above.
            let key = position_key(&m.conversation, &Position::of(m)).ok_or_else(|| {
                ArchiveError::BadRequest("conversation id too long for a key".into())
            })?;
            // Changes that came before the message apply now.
            let log = self.log(vendor, &m.server_id)?;
            let current = apply_log(m, &log);
            if current != *m {
                batch.insert(vendor_id_key(ORIGINALS, vendor, &m.server_id), encode(m)?);
            }
            batch.insert(key.as_slice(), encode(&current)?);
            batch.insert(id, key);
            batch.insert(tagged(CONVERSATIONS, &m.conversation.to_string()), &[]);
            for u in members_of(m) {
                batch.insert(user_key(&u, &m.conversation), &[]);
            }
            added += 1;
            out.push(Stored::New);
        }
        if added > 0 {
            let count = self.count()? + added;
            batch.insert(COUNT, &count.to_be_bytes());
            self.tree.apply_batch(batch)?;
            self.durability.written.fetch_add(1, Ordering::SeqCst);
        }
        Ok(out)
    }

    async fn change(
        &self,
        vendor: &str,
        change: &MessageChange,
    ) -> Result<ChangeStored, ArchiveError> {
        let mut key = change_prefix(vendor, &change.target).ok_or_else(|| {
            ArchiveError::BadRequest("vendor name or message id too long for a key".into())
        })?;
        key.extend_from_slice(&change.revision.to_be_bytes());
        // Held across no await (this body never awaits).
        let _writer = self.write.lock();
        if self.tree.contains_key(&key)? {
            return Ok(ChangeStored::Duplicate);
        }
        // Forward only: sled 0.34's reverse iterator can panic near keys with four 0xff
        // bytes (the module doc), which revision u32::MAX would write.
        let mut log = self.log(vendor, &change.target)?;
        let newest = log.last().map(|c| c.revision);
        let mut batch = sled::Batch::default();
        batch.insert(key, encode(change)?);
        let outcome = match self.tree.get(id_key(vendor, &change.target))? {
            None => ChangeStored::Pending,
            Some(message_key) => {
                let raw = self
                    .tree
                    .get(&message_key)?
                    .ok_or_else(|| ArchiveError::Corrupt {
                        key: hex(&message_key),
                        reason: "the id index names a missing message".into(),
                    })?;
                let current: Message = Self::decode(&message_key, &raw)?;
                if current.conversation != change.conversation {
                    return Err(wrong_conversation(change, &current));
                }
                // The whole log, this change in its place, over the message as first
                // archived (`o`, or `m` while no change replaced its content).
                let original_key = vendor_id_key(ORIGINALS, vendor, &change.target);
                let kept = self.tree.get(&original_key)?;
                let original: Message = match &kept {
                    Some(o) => Self::decode(&original_key, o)?,
                    None => current.clone(),
                };
                let at = log.partition_point(|c| c.revision < change.revision);
                log.insert(at, change.clone());
                let next = apply_log(&original, &log);
                let changed = next != current;
                if changed {
                    if kept.is_none() {
                        batch.insert(original_key, raw);
                    }
                    batch.insert(message_key, encode(&next)?);
                }
                outcome(changed, newest, change.revision)
            }
        };
        self.tree.apply_batch(batch)?;
        self.durability.written.fetch_add(1, Ordering::SeqCst);
        Ok(outcome)
    }

    async fn changes_of(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Vec<MessageChange>, ArchiveError> {
        self.log(vendor, target)
    }

    async fn original(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Option<Message>, ArchiveError> {
        let kept = vendor_id_key(ORIGINALS, vendor, target);
        if let Some(raw) = self.tree.get(&kept)? {
            return Ok(Some(Self::decode(&kept, &raw)?));
        }
        let Some(message_key) = self.tree.get(id_key(vendor, target))? else {
            return Ok(None);
        };
        match self.tree.get(&message_key)? {
            Some(raw) => Ok(Some(Self::decode(&message_key, &raw)?)),
            None => Ok(None),
        }
    }

    async fn flush(&self) -> Result<(), ArchiveError> {
        let mine = self.durability.written.load(Ordering::SeqCst);
        let mut flushed = self.durability.flushed.lock().await;
        if *flushed >= mine {
            return Ok(()); // a flush that began after our writes has completed
        }
        // Everything applied up to here is covered by the flush below.
        let upto = self.durability.written.load(Ordering::SeqCst);
        let db = self.db.clone();
        // `flush` blocks on fsync: off the runtime's threads.
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| ArchiveError::Storage(format!("flush task: {e}")))??;
        *flushed = upto;
        Ok(())
    }

    async fn page(&self, q: &PageQuery) -> Result<StoredPage, ArchiveError> {
        let empty = StoredPage {
            messages: Vec::new(),
            next: None,
        };
        // A name too long for a key was never stored.
        let Some(prefix) = conversation_prefix(&q.conversation) else {
            return Ok(empty);
        };
        let mut lo = prefix.clone();
        push_time(&mut lo, q.from);
        let mut hi = prefix.clone();
        push_time(&mut hi, q.to);
        if let Some(before) = &q.before {
            let mut cursor = prefix;
            push_position(&mut cursor, before);
            if cursor < hi {
                hi = cursor;
            }
        }
        if lo >= hi {
            return Ok(empty);
        }
        let mut hits = Vec::new();
        for entry in self.tree.range(lo..hi).rev().take(q.limit.max(1) + 1) {
            let (k, v) = entry?;
            hits.push(Self::decode(&k, &v)?);
        }
        Ok(finish_page(&mut hits, q.limit))
    }

    async fn knows(&self, conversation: &ConversationId) -> Result<bool, ArchiveError> {
        Ok(self
            .tree
            .contains_key(tagged(CONVERSATIONS, &conversation.to_string()))?)
    }

    async fn is_known_member(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<bool, ArchiveError> {
        Ok(self.tree.contains_key(user_key(user, conversation))?)
    }

    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, ArchiveError> {
        let mut prefix = tagged(USERS, user.as_str());
        prefix.push(0);
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix(&prefix) {
            let (k, _) = entry?;
            let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push(
                name.parse()
                    .map_err(
                        |e: im_service::ParseConversationError| ArchiveError::Corrupt {
                            key: name.clone(),
                            reason: e.to_string(),
                        },
                    )?,
            );
        }
        out.sort();
        Ok(out)
    }

    async fn len(&self) -> Result<u64, ArchiveError> {
        self.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_service::{GroupId, ServerMsgId, Timestamp};

    /// The message key bytes of schema 2, spelled out, and the schema 1 bytes they replace.
    #[test]
    fn message_keys_have_the_schema_2_bytes_and_migrate_from_schema_1() {
        let c = ConversationId::Group(GroupId::new("g"));
        let name = c.to_string();
        let position = |time: i64| Position {
            time: Timestamp::from_millis(time),
            id: ServerMsgId::new("s\u{0}1"),
        };
        let mut prefix = vec![b'm'];
        prefix.extend_from_slice(&(name.len() as u16).to_be_bytes());
        prefix.extend_from_slice(name.as_bytes());
        let key = |time: &[u8]| {
            let mut k = prefix.clone();
            k.extend_from_slice(time);
            k.extend_from_slice(b"s\x001");
            k
        };
        // −1, sign flipped: 0x7fff_ffff_ffff_ffff; 5: 0x8000_0000_0000_0005.
        let v1_minus_one = key(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let v2_minus_one = key(&[0, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f]);
        let v1_five = key(&[0x80, 0, 0, 0, 0, 0, 0, 5]);
        let v2_five = key(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(position_key(&c, &position(-1)), Some(v2_minus_one.clone()));
        assert_eq!(position_key(&c, &position(5)), Some(v2_five.clone()));
        assert_eq!(migrate_message_key(&v1_minus_one), Some(v2_minus_one));
        assert_eq!(migrate_message_key(&v1_five), Some(v2_five));
        assert_eq!(migrate_message_key(b"m\x00\x05d:a|b\x80"), None);
        assert_eq!(migrate_message_key(b"c"), None);
    }
}
