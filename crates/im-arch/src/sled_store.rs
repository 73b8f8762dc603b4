//! The persistent [`Store`]: an embedded [sled](https://docs.rs/sled/0.34) database.
//!
//! Every value is encoded with the workspace codec (`im_service::codec`); keys are built so
//! that the reads the client does are range scans:
//!
//! | tree           | key                                                            | value                  |
//! |----------------|----------------------------------------------------------------|------------------------|
//! | `messages`     | conversation prefix · server time · seq · server id (below)    | `Message`              |
//! | `by_server_id` | server id (UTF-8 bytes)                                        | the `messages` key     |
//! | `cursors`      | codec encoding of the conversation id                          | `SyncCursor`           |
//! | `cursors`      | `0xff` `in_flight` (never a codec encoding: those start with 1) | `Vec<ServerMsgId>`     |
//! | `outbox`       | position (u64 big-endian) · client id (UTF-8 bytes)            | `OutboxItem`           |
//! | `outbox_ids`   | client id (UTF-8 bytes)                                        | position (`u64`)       |
//! | `journal`      | `0x00` · position (u64 big-endian)                             | `(ServerMsgId, Origin)`|
//! | `journal`      | `0x01` · subscription name (UTF-8)                              | acknowledged position (`u64`) |
//! | `journal`      | `0x02` (the head)                                              | last position given out (`u64`) |
//! | `meta`         | `schema_version`                                               | `u32`                  |
//! | `meta`         | `sync_mark`                                                    | `Timestamp`            |
//! | `meta`         | `change_cursor`                                                | `ChangeCursor`         |
//! | `revisions`    | server id (UTF-8 bytes)                                        | `MessageRevision`      |
//! | `pending_changes` | server id (UTF-8 bytes)                                     | `Vec<MessageChange>`   |
//! | `receipts`     | conversation prefix (as in `messages`) · reader id (UTF-8)     | `ReadReceipt`          |
//!
//! A `messages` key is:
//! * the conversation prefix: the length of the conversation id's codec encoding (u32
//!   big-endian) followed by that encoding, so no conversation's prefix is a prefix of
//!   another's;
//! * the server time, an `i64` with its sign bit flipped (so unsigned order is numeric
//!   order, negative times included), written big-endian as 10 base-128 digits (one per
//!   byte, each `0x00..=0x7f`);
//! * the sequence: `0x00` + 10 zero digits for none, `0x01` + the `u64` as 10 base-128 digits
//!   otherwise (none sorts first, as `Option` does);
//! * the server id's bytes (UTF-8, which never contains `0xff`).
//!
//! The components are written by [`im_service::ordered_key`], whose property test checks
//! that byte order is value order and that keys decode back.
//!
//! Why base-128 and not plain big-endian bytes: sled 0.34's reverse iterator steps to the
//! previous node by guessing a predecessor of the node's low key (last byte − 1, then four
//! `0xff`); when real keys have four `0xff` bytes at that point (time −1 is `7f ff ff ff ff
//! ff ff ff` in plain big-endian) the guess skips a node and `next_back` panics ("tree
//! traversal"). The proptest in `tests/store_conformance.rs` found this. With digits below
//! `0x80` and UTF-8 ids, no key of this tree has a run of four `0xff` bytes (the
//! conversation prefix, made of a length and a codec encoding, has at most three).
//!
//! Byte order of the keys of one conversation is therefore exactly the order of
//! [`MemoryStore`](crate::store::MemoryStore) (server time, then sequence, then id), and a
//! timeline page ([`Store::page_before`]) is one reverse range scan that stops after `limit`
//! entries.
//!
//! sled calls are blocking but short (an in-memory page cache in front of a log): they are
//! made directly from the async methods, without `spawn_blocking`.
//!
//! The hot paths write with plain `insert`/`remove`, not with sled batches or transactions
//! (issue 22). In sled 0.34 every `apply_batch` and transaction rolls the log buffer, which
//! is written and synced (`pwrite` + `sync_file_range`) on sled's threads, and takes sled's
//! process-wide concurrency lock in write mode, so it waits for every flush of every sled
//! database in the process; a plain write only appends to the in-memory log buffer. The
//! writes that have to be durable are made so by [`Store::flush`] (a group commit shared by
//! concurrent callers), as the contract says. A method written with plain writes orders
//! them so that every prefix a crash can keep is a state its readers handle (said at each:
//! `put_outbox`, `remove_outbox`, `put_messages`, `commit_delivery` without journal
//! entries). Batches and transactions remain where several entries must be one atomic step:
//! an outbox item that moves, a delivery with journal entries, message changes, read
//! receipts, subscription positions.
//!
//! Durability (the contract in [`crate::store`]): sled applies each batch or transaction
//! atomically to its log and recovers a prefix of that log after a crash; a write is durable
//! once [`Store::flush`] has written the log out (`fsync`). `flush` is a group commit:
//! callers that arrive while a flush runs wait for the next one, which covers all of them,
//! and a caller whose writes an already started flush covers returns when it ends. The
//! blocking flush runs off the runtime's threads, and never through sled's `flush_async`
//! (concurrent calls of it deadlock in sled 0.34, spacejam/sled#1308).
//!
//! The `journal` tree was added without a schema change: an older build ignores it. So were
//! the message lifecycle's trees (`revisions`, `pending_changes`, `receipts`) and the
//! `change_cursor` key: no existing key or value changed, a store of schema 1 opens as it
//! is, and an older build ignores them (it would show a changed message's stored state,
//! and a message deleted for me stays deleted: it is no longer in `messages`).
//!
//! A change is applied in one transaction over `messages`, `by_server_id`, `revisions`
//! and `pending_changes`. `put_messages` applies the pending changes of a message arriving
//! after them: it stores the changed message (messages, then index, as always) and then
//! writes its revision record and drops its pending changes; a crash in between leaves the
//! changes pending, applied again (idempotently) by the next redelivery of a change.

use std::ops::Bound;
use std::path::Path;

use async_trait::async_trait;
use im_service::codec::{decode, encode};
use im_service::lock_wait;
use im_service::ordered_key::{self, KeyReader};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use im_service::{
    ChangeCursor, ClientMsgId, ConversationId, Message, MessageChange, Origin, ReadReceipt,
    ServerMsgId,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::error::ArchError;
use crate::store::{
    ChangeOutcome, ConversationState, DurableEvent, MessageRevision, OutboxItem, SCHEMA_VERSION,
    Store, SyncCursor, apply_pending, push_pending, receipt_is_newer,
};

const MESSAGES: &str = "messages";
const BY_SERVER_ID: &str = "by_server_id";
const CURSORS: &str = "cursors";
const OUTBOX: &str = "outbox";
const OUTBOX_IDS: &str = "outbox_ids";
const META: &str = "meta";
const CONVERSATIONS: &str = "conversations";
const JOURNAL: &str = "journal";
const REVISIONS: &str = "revisions";
const PENDING: &str = "pending_changes";
const RECEIPTS: &str = "receipts";
const CHANGE_CURSOR_KEY: &[u8] = b"change_cursor";
/// Key prefixes of the journal tree: entries, subscriptions, the head.
const JOURNAL_ENTRY: u8 = 0x00;
const JOURNAL_SUBSCRIPTION: u8 = 0x01;
const JOURNAL_HEAD: &[u8] = &[0x02];
const SCHEMA_KEY: &[u8] = b"schema_version";
const SYNC_MARK_KEY: &[u8] = b"sync_mark";
/// The in-flight delivery record lives in the cursors tree so that saving cursors clears it
/// in the same atomic batch. Codec encodings (the other keys) start with the format version.
const IN_FLIGHT_KEY: &[u8] = b"\xffin_flight";

/// The sled-backed [`Store`]: what a client keeps across restarts.
///
/// One directory can be opened by one `SledStore` at a time (sled locks it). Give each
/// client (user, device) its own directory; `crates/im-arch/examples/quickstart.rs` runs this
/// against the reference vendor over TCP.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use im_arch::{ImClient, SledStore};
/// use im_service::memory::MemoryVendor;
/// use im_service::{Content, ConversationId, UserId};
///
/// let dir = tempfile::tempdir()?;
/// let vendor = MemoryVendor::default();
/// let alice = vendor.register_user(&UserId::new("alice"));
/// vendor.register_user(&UserId::new("bob"));
/// let store = SledStore::open(dir.path().join("alice"))?;
/// let client = ImClient::builder(Arc::new(vendor.client()), alice)
///     .store(Arc::new(store))
///     .build();
/// client.login().await?;
/// let to_bob = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
/// // On disk (flushed) when `send` returns: a crash now does not lose it.
/// client.send(to_bob, Content::text("hello")).await?;
/// client.logout().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct SledStore {
    db: sled::Db,
    messages: sled::Tree,
    by_server_id: sled::Tree,
    cursors: sled::Tree,
    outbox: sled::Tree,
    outbox_ids: sled::Tree,
    /// Conversation id → what the user set on it.
    conversations: sled::Tree,
    /// The delivery journal and the durable subscriptions' positions.
    journal: sled::Tree,
    /// The schema version, the sync mark and the change feed's cursor.
    meta: sled::Tree,
    /// Server id → [`MessageRevision`] of every changed message.
    revisions: sled::Tree,
    /// Server id → changes that arrived before their message.
    pending: sled::Tree,
    /// Conversation prefix · reader → a peer's newest [`ReadReceipt`].
    receipts: sled::Tree,
    /// Serialises `put_messages`, whose dedup check and write are two steps.
    write: Mutex<()>,
    /// Serialises the outbox's writes, each a lookup of the client id and then writes.
    outbox_lock: Mutex<()>,
    /// Group commit: how many flushes have begun (each takes the next number).
    flushes_begun: AtomicU64,
    /// Group commit: the number of the last flush that completed. Held while flushing, so
    /// flushes run one at a time.
    flushed: tokio::sync::Mutex<u64>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No entry counts: sled's `len` scans the whole tree.
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// Opens `config` (in directory `dir`, if not temporary), waiting (at most 2 s) for the
/// directory's lock: a store dropped just before is released only when sled's background
/// flusher notices, up to its flush interval later, and a quick restart must not fail for
/// that.
///
/// Also repairs what sled 0.34 leaves when a process is killed while it writes a snapshot
/// (it does at open and now and then): a partial `snap.<lsn>.generating` file, which the
/// next open reads as the newest snapshot and refuses with "Read corrupted data at file
/// offset None", for good. Such a file is incomplete by definition (sled renames it when
/// it is whole) and the log it summarises is intact, so it is removed and the open retried
/// (found by the crash harness; reproduced by killing a process during open: 231 of 400).
fn open_waiting_for_lock(config: &sled::Config, dir: Option<&Path>) -> Result<sled::Db, ArchError> {
    let mut repaired = false;
    lock_wait::retry_while(
        std::time::Duration::from_secs(2),
        || match config.open() {
            Err(sled::Error::Corruption { .. }) if !repaired && dir.is_some() => {
                repaired = true;
                let removed = dir.map_or(0, remove_partial_snapshots);
                tracing::warn!(
                    removed,
                    "sled store reported corruption on open; removed partial snapshots \
                     left by a killed process, opening again"
                );
                config.open()
            }
            other => other,
        },
        |e| matches!(e, sled::Error::Io(e) if lock_wait::is_lock_contention(e)),
    )
    .map_err(store_err)
}

/// Removes the `snap.*.generating` files in `dir` (snapshots a killed process did not
/// finish); returns how many.
fn remove_partial_snapshots(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("snap.") && name.ends_with(".generating")
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// Fails with [`ArchError::SchemaTooNew`] if a newer build wrote it, and with
    /// [`ArchError::Store`] if it has an older layout (no migration exists yet); in both
    /// cases the recorded schema version is left as it is.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, ArchError> {
        let path = path.as_ref();
        Self::with_config(sled::Config::new().path(path), Some(path))
    }

    /// A store in a temporary directory, deleted when the store is dropped: demos and tests.
    pub fn temporary() -> Result<SledStore, ArchError> {
        Self::with_config(sled::Config::new().temporary(true), None)
    }

    fn with_config(config: sled::Config, dir: Option<&Path>) -> Result<SledStore, ArchError> {
        let db = open_waiting_for_lock(&config, dir)?;
        // The schema is checked before any other tree is created, so a refused store is
        // left exactly as it was found.
        let meta = db.open_tree(META).map_err(store_err)?;
        match meta.get(SCHEMA_KEY).map_err(store_err)? {
            None => {
                meta.insert(SCHEMA_KEY, encode_value(&SCHEMA_VERSION)?)
                    .map_err(store_err)?;
            }
            Some(raw) => {
                let found: u32 = decode_value(META, SCHEMA_KEY, &raw)?;
                if found > SCHEMA_VERSION {
                    return Err(ArchError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                if found < SCHEMA_VERSION {
                    return Err(ArchError::Store(format!(
                        "store schema version {found} is older than {SCHEMA_VERSION} and no \
                         migration exists; the store was left unchanged"
                    )));
                }
            }
        }
        let tree = |name: &str| db.open_tree(name).map_err(store_err);
        Ok(SledStore {
            messages: tree(MESSAGES)?,
            by_server_id: tree(BY_SERVER_ID)?,
            cursors: tree(CURSORS)?,
            outbox: tree(OUTBOX)?,
            outbox_ids: tree(OUTBOX_IDS)?,
            conversations: tree(CONVERSATIONS)?,
            journal: tree(JOURNAL)?,
            revisions: tree(REVISIONS)?,
            pending: tree(PENDING)?,
            receipts: tree(RECEIPTS)?,
            meta,
            db,
            write: Mutex::new(()),
            outbox_lock: Mutex::new(()),
            flushes_begun: AtomicU64::new(0),
            flushed: tokio::sync::Mutex::new(0),
        })
    }

    /// Fuzzing and corruption tests only, not part of the API: the underlying sled
    /// database, to write garbage behind the store's back (`tests/fuzz_store.rs`).
    #[doc(hidden)]
    pub fn raw_db(&self) -> &sled::Db {
        &self.db
    }

    /// A stored message by id (the body of [`Store::message`], for other methods too).
    fn message_now(&self, id: &ServerMsgId) -> Result<Option<Message>, ArchError> {
        let id = id.as_str().as_bytes();
        let Some(raw) = self.by_server_id.get(id).map_err(store_err)? else {
            return Ok(None);
        };
        let key: Vec<u8> = decode_value(BY_SERVER_ID, id, &raw)?;
        match self.messages.get(&key).map_err(store_err)? {
            Some(value) => decode_value(MESSAGES, &key, &value).map(Some),
            None => Err(corrupt(
                BY_SERVER_ID,
                id,
                "index entry points to a missing message",
            )),
        }
    }

    /// A message's revision record (the body of [`Store::revision`]).
    fn revision_now(&self, id: &ServerMsgId) -> Result<Option<MessageRevision>, ArchError> {
        let id = id.as_str().as_bytes();
        match self.revisions.get(id).map_err(store_err)? {
            Some(raw) => decode_value(REVISIONS, id, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// Sets (`Some`) or removes (`None`) a subscription's position and drops, in the same
    /// batch, the journal entries every remaining subscription has acknowledged.
    async fn update_subscriptions(
        &self,
        name: &str,
        position: Option<u64>,
    ) -> Result<(), ArchError> {
        let mut key = vec![JOURNAL_SUBSCRIPTION];
        key.extend_from_slice(name.as_bytes());
        let mut positions: Vec<u64> = self
            .subscriptions()
            .await?
            .into_iter()
            .filter(|(n, _)| n != name)
            .map(|(_, p)| p)
            .collect();
        let mut batch = sled::Batch::default();
        match position {
            Some(p) => {
                batch.insert(key, encode_value(&p)?);
                positions.push(p);
            }
            None => batch.remove(key),
        }
        // Without subscriptions the journal is not needed: all of it goes.
        let keep_after = match positions.iter().min() {
            Some(&min) => min,
            None => self.journal_head().await?,
        };
        let upto = journal_entry_key(keep_after.saturating_add(1));
        for entry in self.journal.range(vec![JOURNAL_ENTRY]..upto) {
            let (k, _) = entry.map_err(store_err)?;
            batch.remove(k);
        }
        self.journal.apply_batch(batch).map_err(store_err)
    }

    /// Decodes the `messages` entries of a scan, stopping after `limit`.
    fn collect_messages(
        &self,
        iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        iter.take(limit)
            .map(|entry| {
                let (key, value) = entry.map_err(store_err)?;
                decode_value(MESSAGES, &key, &value)
            })
            .collect()
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // sled flushes on its own when the last handle goes; flushing here makes the point
        // explicit and reports a failure instead of losing it. Never panics.
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "sled store: flush on drop failed");
        }
    }
}

#[async_trait]
impl Store for SledStore {
    async fn flush(&self) -> Result<(), ArchError> {
        // Flushes that begin after this point cover every write that returned before it.
        let arrival = self.flushes_begun.load(Ordering::SeqCst);
        let mut flushed = self.flushed.lock().await;
        if *flushed > arrival {
            // A flush that began after we arrived has completed meanwhile.
            return Ok(());
        }
        let number = self.flushes_begun.fetch_add(1, Ordering::SeqCst) + 1;
        let db = self.db.clone();
        // Blocks on fsync: off the runtime's threads. The gate above is held across this
        // await on purpose (it is what serialises flushes); nothing else takes it.
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| ArchError::Store(format!("flush task: {e}")))?
            .map_err(store_err)?;
        *flushed = number;
        Ok(())
    }

    async fn commit_delivery(
        &self,
        cursors: &[(ConversationId, SyncCursor)],
        journal: &[(ServerMsgId, Origin)],
    ) -> Result<u64, ArchError> {
        let mut cursor_entries = Vec::with_capacity(cursors.len());
        for (conversation, cursor) in cursors {
            cursor_entries.push((encode_value(conversation)?, encode_value(cursor)?));
        }
        if journal.is_empty() {
            // No journal (no durable subscription): plain writes, no batch (see the module
            // doc). The cursors first, then the end of the in-flight record: a crash that
            // keeps only some of them repeats the delivery of what the record names once
            // (as a crash before this write does), and a cursor that did not move means
            // a redelivery after the restart, as when the crash takes the whole unflushed
            // write.
            for (k, v) in cursor_entries {
                self.cursors.insert(k, v).map_err(store_err)?;
            }
            self.cursors.remove(IN_FLIGHT_KEY).map_err(store_err)?;
            return self.journal_head().await;
        }
        let mut entries = Vec::with_capacity(journal.len());
        for entry in journal {
            entries.push(encode_value(entry)?);
        }
        // Cursors, the in-flight record and the journal in one atomic step: after a crash a
        // delivery is either wholly recorded (and not repeated) or not at all (and repeated).
        let result = (&self.cursors, &self.journal).transaction(|(cur, jour)| {
            for (k, v) in &cursor_entries {
                cur.insert(k.as_slice(), v.as_slice())?;
            }
            cur.remove(IN_FLIGHT_KEY)?;
            let mut head = match jour.get(JOURNAL_HEAD)? {
                Some(raw) => decode_value::<u64>(JOURNAL, JOURNAL_HEAD, &raw)
                    .map_err(ConflictableTransactionError::Abort)?,
                None => 0,
            };
            for value in &entries {
                // Checked: a damaged head of `u64::MAX` made this overflow, a panic in debug
                // builds (found by the fuzz target `sled_store_entries`); no position is left
                // after it, so the entry is reported corrupt.
                head = head.checked_add(1).ok_or_else(|| {
                    ConflictableTransactionError::Abort(corrupt(
                        JOURNAL,
                        JOURNAL_HEAD,
                        "the journal head is at u64::MAX: no position left",
                    ))
                })?;
                jour.insert(journal_entry_key(head).as_slice(), value.as_slice())?;
            }
            let encoded = encode_value(&head).map_err(ConflictableTransactionError::Abort)?;
            jour.insert(JOURNAL_HEAD, encoded)?;
            Ok(head)
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => store_err(e),
        })
    }

    async fn sync_mark(&self) -> Result<Option<im_service::Timestamp>, ArchError> {
        match self.meta.get(SYNC_MARK_KEY).map_err(store_err)? {
            Some(raw) => decode_value(META, SYNC_MARK_KEY, &raw).map(Some),
            None => Ok(None),
        }
    }

    async fn set_sync_mark(&self, mark: im_service::Timestamp) -> Result<(), ArchError> {
        self.meta
            .insert(SYNC_MARK_KEY, encode_value(&mark)?)
            .map(|_| ())
            .map_err(store_err)
    }

    async fn journal_head(&self) -> Result<u64, ArchError> {
        match self.journal.get(JOURNAL_HEAD).map_err(store_err)? {
            Some(raw) => decode_value(JOURNAL, JOURNAL_HEAD, &raw),
            None => Ok(0),
        }
    }

    async fn journal_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DurableEvent>, ArchError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let range = journal_entry_key(from)..vec![JOURNAL_SUBSCRIPTION];
        let mut out = Vec::new();
        for entry in self.journal.range(range) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry.map_err(store_err)?;
            let (id, origin): (ServerMsgId, Origin) = decode_value(JOURNAL, &key, &value)?;
            let position = journal_position(&key)
                .ok_or_else(|| corrupt(JOURNAL, &key, "malformed journal key"))?;
            if self.revision_now(&id)?.is_some_and(|r| r.deleted) {
                // Deleted for me after it was delivered: a durable reader no longer gets it.
                continue;
            }
            let message = self.message_now(&id)?.ok_or_else(|| {
                corrupt(
                    JOURNAL,
                    &key,
                    &format!("names message {id}, which is not stored"),
                )
            })?;
            out.push(DurableEvent {
                position,
                message,
                origin,
            });
        }
        Ok(out)
    }

    async fn subscriptions(&self) -> Result<Vec<(String, u64)>, ArchError> {
        self.journal
            .scan_prefix([JOURNAL_SUBSCRIPTION])
            .map(|entry| {
                let (key, value) = entry.map_err(store_err)?;
                let name = String::from_utf8_lossy(&key[1..]).into_owned();
                Ok((name, decode_value(JOURNAL, &key, &value)?))
            })
            .collect()
    }

    async fn set_subscription(&self, name: &str, position: u64) -> Result<(), ArchError> {
        self.update_subscriptions(name, Some(position)).await
    }

    async fn remove_subscription(&self, name: &str) -> Result<(), ArchError> {
        self.update_subscriptions(name, None).await
    }

    async fn put_messages(&self, messages: &[Message]) -> Result<Vec<bool>, ArchError> {
        let _guard = self.write.lock();
        let mut fresh = Vec::with_capacity(messages.len());
        let mut seen_in_batch = std::collections::HashSet::with_capacity(messages.len());
        // A pulled page is mostly a few conversations: encode each prefix once.
        let mut prefixes: std::collections::HashMap<&ConversationId, Vec<u8>> =
            std::collections::HashMap::new();
        let mut message_entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut index_entries: Vec<(&[u8], Vec<u8>)> = Vec::new();
        // Revision records of messages whose pending changes apply now.
        let mut applied: Vec<(&[u8], MessageRevision)> = Vec::new();
        for m in messages {
            let id = m.server_id.as_str().as_bytes();
            let mut is_new = seen_in_batch.insert(id)
                && !self.by_server_id.contains_key(id).map_err(store_err)?
                && !self.revision_now(&m.server_id)?.is_some_and(|r| r.deleted);
            let mut changed = None;
            if is_new && let Some(raw) = self.pending.get(id).map_err(store_err)? {
                let pending: Vec<MessageChange> = decode_value(PENDING, id, &raw)?;
                let (stored, rev) = apply_pending(m, &pending);
                applied.push((id, rev));
                // Deleted for me before it arrived: known, never stored or shown.
                is_new = stored.is_some();
                changed = stored;
            }
            fresh.push(is_new);
            if is_new {
                let value = encode_value(changed.as_ref().unwrap_or(m))?;
                let prefix = match prefixes.entry(&m.conversation) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(conversation_prefix(&m.conversation)?)
                    }
                };
                let mut key = Vec::with_capacity(prefix.len() + ORDER_LEN + id.len());
                key.extend_from_slice(prefix);
                push_order(&mut key, m);
                index_entries.push((id, encode_value(&key)?));
                message_entries.push((key, value));
            }
        }
        // Plain writes, no batches (see the module doc): messages first, then their index
        // entries. sled recovers a prefix of its log after a crash, so an index entry never
        // points to a missing message. A message without its index is invisible to dedup,
        // so the vendor's redelivery writes it again under the same key: idempotent,
        // nothing duplicated. Messages kept without their delivery are the state a crash
        // between this and `commit_delivery` leaves anyway (the sync engine repeats such a
        // delivery once).
        for (key, value) in message_entries {
            self.messages.insert(key, value).map_err(store_err)?;
        }
        for (id, key) in index_entries {
            self.by_server_id.insert(id, key).map_err(store_err)?;
        }
        if !applied.is_empty() {
            // After the messages (see the module doc): a crash before this keeps the changes
            // pending.
            let mut entries = Vec::with_capacity(applied.len());
            for (id, rev) in &applied {
                entries.push((*id, encode_value(rev)?));
            }
            let result = (&self.revisions, &self.pending).transaction(|(revs, pend)| {
                for (id, rev) in &entries {
                    revs.insert(*id, rev.as_slice())?;
                    pend.remove(*id)?;
                }
                Ok(())
            });
            tx_result(result)?;
        }
        Ok(fresh)
    }

    async fn message(&self, id: &ServerMsgId) -> Result<Option<Message>, ArchError> {
        self.message_now(id)
    }

    async fn latest(
        &self,
        conversation: &ConversationId,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        self.page_before(conversation, None, limit).await
    }

    async fn cursor(&self, conversation: &ConversationId) -> Result<Option<SyncCursor>, ArchError> {
        let key = encode_value(conversation)?;
        match self.cursors.get(&key).map_err(store_err)? {
            Some(raw) => decode_value(CURSORS, &key, &raw).map(Some),
            None => Ok(None),
        }
    }

    async fn begin_delivery(&self, ids: &[ServerMsgId]) -> Result<(), ArchError> {
        let earlier: std::collections::HashSet<ServerMsgId> =
            self.in_flight().await?.into_iter().collect();
        let mut fresh = Vec::with_capacity(ids.len());
        for id in ids {
            if earlier.contains(id)
                || !self
                    .by_server_id
                    .contains_key(id.as_str().as_bytes())
                    .map_err(store_err)?
            {
                fresh.push(id.clone());
            }
        }
        self.cursors
            .insert(IN_FLIGHT_KEY, encode_value(&fresh)?)
            .map(|_| ())
            .map_err(store_err)
    }

    async fn in_flight(&self) -> Result<Vec<ServerMsgId>, ArchError> {
        match self.cursors.get(IN_FLIGHT_KEY).map_err(store_err)? {
            Some(raw) => decode_value(CURSORS, IN_FLIGHT_KEY, &raw),
            None => Ok(Vec::new()),
        }
    }

    async fn cursors(&self) -> Result<Vec<(ConversationId, SyncCursor)>, ArchError> {
        self.cursors
            .iter()
            .filter(|entry| !matches!(entry, Ok((key, _)) if key == IN_FLIGHT_KEY))
            .map(|entry| {
                let (key, value) = entry.map_err(store_err)?;
                Ok((
                    decode_value(CURSORS, &key, &key)?,
                    decode_value(CURSORS, &key, &value)?,
                ))
            })
            .collect()
    }

    async fn page_before(
        &self,
        conversation: &ConversationId,
        before: Option<&Message>,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = conversation_prefix(conversation)?;
        match before {
            None => self.collect_messages(self.messages.scan_prefix(&prefix).rev(), limit),
            Some(m) => {
                // Same conversation prefix, `before`'s position in it: everything strictly
                // below, newest first.
                let mut upper = prefix.clone();
                push_order(&mut upper, m);
                let range = (Bound::Included(prefix), Bound::Excluded(upper));
                self.collect_messages(self.messages.range::<Vec<u8>, _>(range).rev(), limit)
            }
        }
    }

    async fn page_after(
        &self,
        conversation: &ConversationId,
        after: &Message,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = conversation_prefix(conversation)?;
        let mut lower = prefix.clone();
        push_order(&mut lower, after);
        let range = (Bound::Excluded(lower), Bound::Unbounded);
        // Forward from `after` until the key leaves this conversation's prefix.
        let within = self
            .messages
            .range::<Vec<u8>, _>(range)
            .take_while(|r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)));
        self.collect_messages(within, limit)
    }

    async fn put_outbox(&self, item: &OutboxItem) -> Result<(), ArchError> {
        let id = item.message.client_id.as_str().as_bytes();
        let key = outbox_key(item.position, id);
        let value = encode_value(item)?;
        let position = encode_value(&item.position)?;
        // The id's lookup and the writes are one step for this process.
        let _guard = self.outbox_lock.lock();
        let old: Option<u64> = match self.outbox_ids.get(id).map_err(store_err)? {
            Some(raw) => Some(decode_value(OUTBOX_IDS, id, &raw)?),
            None => None,
        };
        if old.is_some_and(|old| old != item.position) {
            // A replacement that moves the item (rare): one transaction over both trees,
            // so the old entry goes in the same atomic step.
            let result = (&self.outbox, &self.outbox_ids).transaction(|(outbox, ids)| {
                if let Some(raw) = ids.get(id)? {
                    let old: u64 = decode_value(OUTBOX_IDS, id, &raw)
                        .map_err(ConflictableTransactionError::Abort)?;
                    if old != item.position {
                        outbox.remove(outbox_key(old, id))?;
                    }
                }
                outbox.insert(key.as_slice(), value.as_slice())?;
                ids.insert(id, position.as_slice())?;
                Ok(())
            });
            return tx_result(result);
        }
        // A new item or one replaced in place (every send, every status change): plain
        // writes, no batch (see the module doc: a batch writes and syncs sled's log on its
        // own; `send` makes this durable with the flush that follows, shared with the
        // concurrent sends). Any prefix of them is consistent: the id first (an id without
        // its entry is invisible: `outbox` lists entries, `remove_outbox` removes what is
        // there), then the entry.
        if old.is_none() {
            self.outbox_ids
                .insert(id, position.as_slice())
                .map_err(store_err)?;
        }
        self.outbox
            .insert(key.as_slice(), value.as_slice())
            .map(|_| ())
            .map_err(store_err)
    }

    async fn remove_outbox(&self, id: &ClientMsgId) -> Result<(), ArchError> {
        let id = id.as_str().as_bytes();
        let _guard = self.outbox_lock.lock();
        let Some(raw) = self.outbox_ids.get(id).map_err(store_err)? else {
            return Ok(());
        };
        let position: u64 = decode_value(OUTBOX_IDS, id, &raw)?;
        // Plain writes (see `put_outbox`): the entry first, then the id, so a crash between
        // leaves an id without its entry, which nothing sees.
        self.outbox
            .remove(outbox_key(position, id))
            .map_err(store_err)?;
        self.outbox_ids.remove(id).map(|_| ()).map_err(store_err)
    }

    async fn outbox(&self) -> Result<Vec<OutboxItem>, ArchError> {
        self.outbox
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(store_err)?;
                decode_value(OUTBOX, &key, &value)
            })
            .collect()
    }

    async fn put_conversation_state(&self, state: &ConversationState) -> Result<(), ArchError> {
        self.conversations
            .insert(encode_value(&state.id)?, encode_value(state)?)
            .map(|_| ())
            .map_err(store_err)
    }

    async fn apply_change(&self, change: &MessageChange) -> Result<ChangeOutcome, ArchError> {
        // Serialised with `put_messages`, whose pending check and write are two steps.
        let _guard = self.write.lock();
        let id = change.target.as_str().as_bytes();
        let result = (
            &self.messages,
            &self.by_server_id,
            &self.revisions,
            &self.pending,
        )
            .transaction(|(msgs, index, revs, pend)| {
                let abort = ConflictableTransactionError::Abort;
                let rev: MessageRevision = match revs.get(id)? {
                    Some(raw) => decode_value(REVISIONS, id, &raw).map_err(abort)?,
                    None => MessageRevision::default(),
                };
                if rev.deleted || change.revision <= rev.revision {
                    return Ok(ChangeOutcome::Stale);
                }
                let Some(raw_key) = index.get(id)? else {
                    let mut pending: Vec<MessageChange> = match pend.get(id)? {
                        Some(raw) => decode_value(PENDING, id, &raw).map_err(abort)?,
                        None => Vec::new(),
                    };
                    push_pending(&mut pending, change);
                    pend.insert(id, encode_value(&pending).map_err(abort)?)?;
                    return Ok(ChangeOutcome::Pending);
                };
                let key: Vec<u8> = decode_value(BY_SERVER_ID, id, &raw_key).map_err(abort)?;
                let Some(raw) = msgs.get(key.as_slice())? else {
                    return Err(abort(corrupt(
                        BY_SERVER_ID,
                        id,
                        "index entry points to a missing message",
                    )));
                };
                let old: Message = decode_value(MESSAGES, &key, &raw).map_err(abort)?;
                let message = change.apply(&old);
                match &message {
                    Some(m) => {
                        msgs.insert(key.as_slice(), encode_value(m).map_err(abort)?)?;
                    }
                    None => {
                        msgs.remove(key.as_slice())?;
                        index.remove(id)?;
                    }
                }
                let revision = rev.after(change);
                revs.insert(id, encode_value(&revision).map_err(abort)?)?;
                Ok(ChangeOutcome::Applied { message, revision })
            });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => store_err(e),
        })
    }

    async fn revision(&self, id: &ServerMsgId) -> Result<Option<MessageRevision>, ArchError> {
        self.revision_now(id)
    }

    async fn change_cursor(&self) -> Result<Option<ChangeCursor>, ArchError> {
        match self.meta.get(CHANGE_CURSOR_KEY).map_err(store_err)? {
            Some(raw) => decode_value(META, CHANGE_CURSOR_KEY, &raw).map(Some),
            None => Ok(None),
        }
    }

    async fn set_change_cursor(&self, cursor: &ChangeCursor) -> Result<(), ArchError> {
        self.meta
            .insert(CHANGE_CURSOR_KEY, encode_value(cursor)?)
            .map(|_| ())
            .map_err(store_err)
    }

    async fn put_read_receipt(&self, receipt: &ReadReceipt) -> Result<bool, ArchError> {
        let mut key = conversation_prefix(&receipt.conversation)?;
        key.extend_from_slice(receipt.reader.as_str().as_bytes());
        let value = encode_value(receipt)?;
        // Compare and set in one transaction: concurrent receipts keep the newest.
        let result = self.receipts.transaction(|tree| {
            let old: Option<ReadReceipt> = match tree.get(key.as_slice())? {
                Some(raw) => Some(
                    decode_value(RECEIPTS, &key, &raw)
                        .map_err(ConflictableTransactionError::Abort)?,
                ),
                None => None,
            };
            if !receipt_is_newer(old.as_ref(), receipt) {
                return Ok(false);
            }
            tree.insert(key.as_slice(), value.as_slice())?;
            Ok(true)
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => store_err(e),
        })
    }

    async fn read_receipts(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<ReadReceipt>, ArchError> {
        let prefix = conversation_prefix(conversation)?;
        self.receipts
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry.map_err(store_err)?;
                decode_value(RECEIPTS, &key, &value)
            })
            .collect()
    }

    async fn conversation_states(&self) -> Result<Vec<ConversationState>, ArchError> {
        self.conversations
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(store_err)?;
                decode_value(CONVERSATIONS, &key, &value)
            })
            .collect()
    }
}

fn store_err(e: sled::Error) -> ArchError {
    ArchError::Store(e.to_string())
}

fn tx_result(result: Result<(), TransactionError<ArchError>>) -> Result<(), ArchError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => store_err(e),
    })
}

fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ArchError> {
    encode(value).map_err(|e| ArchError::Store(format!("cannot encode: {e}")))
}

fn decode_value<T: DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<T, ArchError> {
    decode(bytes).map_err(|e| corrupt(tree, key, &e.to_string()))
}

fn corrupt(tree: &str, key: &[u8], reason: &str) -> ArchError {
    ArchError::CorruptEntry {
        tree: tree.to_string(),
        key: display_key(key),
        reason: reason.to_string(),
    }
}

/// A key as text when it is printable ASCII, as lowercase hex otherwise.
pub(crate) fn display_key(key: &[u8]) -> String {
    if !key.is_empty() && key.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(key).into_owned()
    } else {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Length (u32 big-endian) + codec encoding of the conversation id.
fn conversation_prefix(conversation: &ConversationId) -> Result<Vec<u8>, ArchError> {
    let encoded = encode_value(conversation)?;
    let mut prefix = Vec::with_capacity(4 + encoded.len() + ORDER_LEN + 32);
    ordered_key::push_len_prefixed_u32(&mut prefix, &encoded)
        .map_err(|_| ArchError::Store("conversation id too long for a key".into()))?;
    Ok(prefix)
}

/// Appends the in-conversation order of `m`: time (base 128, sign flipped), sequence (base
/// 128, none first), server id.
fn push_order(key: &mut Vec<u8>, m: &Message) {
    ordered_key::push_i64_base128(key, m.server_time.as_millis());
    ordered_key::push_opt_u64_base128(key, m.seq.map(|s| s.0));
    ordered_key::push_tail(key, m.server_id.as_str().as_bytes());
}

/// Bytes [`push_order`] writes before the server id: time digits, sequence tag and digits.
const ORDER_LEN: usize = ordered_key::BASE128_DIGITS + ordered_key::OPT_U64_BASE128_LEN;

/// The journal key of `position`.
fn journal_entry_key(position: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(JOURNAL_ENTRY);
    ordered_key::push_u64_be(&mut key, position);
    key
}

/// The position of a journal entry key, if it is one.
fn journal_position(key: &[u8]) -> Option<u64> {
    let mut r = KeyReader::new(key);
    if r.byte()? != JOURNAL_ENTRY {
        return None;
    }
    let position = r.u64_be()?;
    r.tail().is_empty().then_some(position)
}

fn outbox_key(position: u64, client_id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + client_id.len());
    ordered_key::push_u64_be(&mut key, position);
    ordered_key::push_tail(&mut key, client_id);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_key_is_text_when_printable_hex_otherwise() {
        assert_eq!(display_key(b"schema_version"), "schema_version");
        assert_eq!(display_key(&[0, 1, 0xff]), "0001ff");
        assert_eq!(display_key(b""), "");
    }

    /// The `messages` key bytes are the ones earlier builds wrote (they are on disk): a
    /// literal, spelled out by component.
    #[test]
    fn message_keys_keep_their_on_disk_bytes() {
        use im_service::{ClientMsgId, Content, Seq, Timestamp, UserId};
        let conversation = ConversationId::direct(&UserId::new("a"), &UserId::new("b"));
        let m = |time: i64, seq: Option<u64>| Message {
            server_id: ServerMsgId::new("s1"),
            client_id: ClientMsgId::new("c1"),
            conversation: conversation.clone(),
            sender: UserId::new("a"),
            seq: seq.map(Seq),
            server_time: Timestamp::from_millis(time),
            client_time: Timestamp::from_millis(0),
            content: Content::text("x"),
        };
        let encoded = encode(&conversation).unwrap();
        let mut prefix = (encoded.len() as u32).to_be_bytes().to_vec();
        prefix.extend_from_slice(&encoded);
        let key = |time: i64, seq: Option<u64>| {
            let mut k = prefix.clone();
            push_order(&mut k, &m(time, seq));
            k
        };
        // Time -1: sign flipped 0x7fff_ffff_ffff_ffff, in base 128: 0 then nine 0x7f.
        let mut expected = prefix.clone();
        expected.push(0x00);
        expected.extend_from_slice(&[0x7f; 9]);
        // Sequence 300 = 2·128 + 44.
        expected.push(0x01);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 2, 44]);
        expected.extend_from_slice(b"s1");
        assert_eq!(key(-1, Some(300)), expected);
        // Time 0: 1 << 63 is digit 1 then nine zeros; no sequence: 0x00 and ten zeros.
        let mut expected = prefix.clone();
        expected.push(0x01);
        expected.extend_from_slice(&[0; 9]);
        expected.extend_from_slice(&[0; 11]);
        expected.extend_from_slice(b"s1");
        assert_eq!(key(0, None), expected);
        assert_eq!(conversation_prefix(&conversation).unwrap(), prefix);
        assert_eq!(journal_entry_key(258), [0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(journal_position(&[0, 0, 0, 0, 0, 0, 0, 1, 2]), Some(258));
        assert_eq!(journal_position(&[0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(outbox_key(1, b"c"), [0, 0, 0, 0, 0, 0, 0, 1, b'c']);
    }
}
