//! The default durable [`Store`]: the in-memory model (the state [`MemoryStore`](crate::MemoryStore) keeps) in
//! front of an append-only log of the writes made to it, compacted now and then into a
//! snapshot. Issue 22 measured why: on sled 0.34 the client reached 0.14× the bare adapter's
//! throughput at light load, the process's CPU going to sled's page cache, its epoch-based
//! reclamation, its locks and its flusher threads, not to the disk (an `fdatasync` here takes
//! 0.17 ms); this store spends one encode and one `memcpy` per write and one `write(2)` per
//! group of writes.
//!
//! # Files (one directory per client)
//!
//! | file          | what                                                               |
//! |---------------|--------------------------------------------------------------------|
//! | `LOCK`        | held with `flock` while a handle is open: one handle per directory |
//! | `log.<N>`     | the writes made since snapshot `N`, in the order they were made    |
//! | `snapshot`    | the whole state at the start of `log.<N>` (absent: `N` is 0)       |
//!
//! Both files are sequences of records: a length (`u32` little-endian), a checksum (`u32`
//! little-endian: the CRC-32 of the store's salt, a random `u64` chosen when the store is
//! created, followed by the body) and the body, a [`codec`] encoding. The first record of each
//! file is a header (a magic string, [`SCHEMA_VERSION`], the generation `N`, the salt); a
//! log's other records are [`Op`]s, one per write method call; a snapshot's are [`Part`]s,
//! one per stored entry, ending with [`Part::End`].
//!
//! # Durability (the contract in [`crate::store`])
//!
//! A write is applied to the in-memory state and its record appended to an in-memory buffer,
//! under one lock, so the log's order is the order in which writes were applied. Every write
//! is one record, so it is atomic (stronger than the contract asks of `put_messages` and
//! `commit_delivery`). [`Store::flush`] is a group commit: it writes the buffer out with one
//! `write(2)` (under a second lock that keeps the file's writes in order); a caller whose
//! writes another flush is writing waits for that one and returns. Once `write(2)` returns,
//! the bytes are the kernel's: they survive the process being killed (SIGKILL), which is what
//! the contract means by durable. [`LogStoreOptions::fsync`] adds an `fdatasync` to each flush
//! (on a blocking thread) for a machine that may lose power. The buffer is also written once
//! it holds [`WRITE_THROUGH`] bytes, so a burst without flushes does not grow it without bound.
//!
//! A crash can cut the last `write(2)` short (the kernel checks for a fatal signal between
//! pages) or, without `fsync`, lose a tail of it with the machine: on open, the log is
//! replayed up to the first record that does not read and after which no whole record
//! follows, and the file is truncated there (a warning says how many bytes went). What is
//! cut is a suffix of writes that no flush had confirmed.
//!
//! # Damage (failure class 9)
//!
//! A record that does not read with a whole record after it is damage (a bad disk sector, a
//! stray write), not a crash: the open skips to the next whole record, so only the damaged
//! write is lost and the confirmed writes after it (a pending send among them) are kept; a
//! damaged snapshot entry likewise. Each range is logged at error level and listed by
//! [`LogStore::damage`]; a copy of each damaged file is kept as `damaged.<name>.<N>` and the
//! store is rewritten whole (a snapshot and a new log), so the damage is not read twice.
//! What was lost comes back from the server with the next sync (messages, changes, cursors
//! restart from what the store still has). The salt is what makes the search for the next
//! record safe: a message's text can hold bytes framed like a record, but not with a
//! checksum over a salt its sender never saw, so a torn or damaged record's content is never
//! read as a write.
//!
//! # Compaction
//!
//! When the log is larger than [`LogStoreOptions::compact_min_bytes`] and than twice the last
//! snapshot, the flush that notices it writes a snapshot of the state as it is at the end of
//! the log (encoded under the state lock: writers wait for that, the one pause this store
//! has), starts `log.<N+1>`, writes `snapshot.tmp`, syncs it, renames it to `snapshot`, syncs
//! the directory and removes the older logs. A crash anywhere in between leaves either the old
//! snapshot and every log since it, or the new snapshot and its log: both replay to the same
//! state.
//!
//! # Memory
//!
//! The whole store is in memory, as in [`MemoryStore`](crate::MemoryStore) (about the size of the messages it
//! keeps, plus their index). A client that must keep millions of messages locally and
//! cannot afford that memory uses [`SledStore`](crate::SledStore), which pages from disk.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use im_service::codec;
use im_service::lock_wait;
use im_service::{
    ChangeCursor, ClientMsgId, ConversationId, Message, MessageChange, Origin, ReadReceipt,
    ServerMsgId, Timestamp,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ArchError;
use crate::memory_store::MemoryState;
use crate::store::{
    ChangeOutcome, ConversationState, DurableEvent, MessageRevision, OutboxItem, SCHEMA_VERSION,
    Store, SyncCursor,
};

/// First field of every file's header record.
const MAGIC: &str = "im-layers log store";
const LOCK_FILE: &str = "LOCK";
const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
const LOG_PREFIX: &str = "log.";
/// Buffered bytes beyond which a write goes to the file without waiting for a flush.
pub const WRITE_THROUGH: usize = 1 << 20;
/// Bytes of a record's frame before its body: length and CRC-32.
const FRAME_HEADER: usize = 8;

/// How a [`LogStore`] is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStoreOptions {
    /// `fdatasync` after each flush's write, so confirmed writes survive a power loss too,
    /// not only the process being killed. Off by default: the contract asks for the latter.
    pub fsync: bool,
    /// The log is compacted into a snapshot once it is larger than this and than twice the
    /// last snapshot.
    pub compact_min_bytes: u64,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        Self {
            fsync: false,
            compact_min_bytes: 64 << 20,
        }
    }
}

/// The header record of a log or a snapshot: magic, schema version, generation, and the
/// store's salt (a random number chosen when the store is created, the same in every file).
type Header<'a> = (Cow<'a, str>, u32, u64, u64);

/// One write, as the log keeps it: a [`Store`] write method and its arguments. Replayed in
/// order through the same [`MemoryState`] methods, the records rebuild the state.
/// Borrowed when written, owned when read. Variants are only ever added at the end
/// (bincode encodes the variant's index).
#[derive(Serialize, Deserialize)]
enum Op<'a> {
    PutMessages(Cow<'a, [Message]>),
    CommitDelivery(
        Cow<'a, [(ConversationId, SyncCursor)]>,
        Cow<'a, [(ServerMsgId, Origin)]>,
    ),
    SetSyncMark(Timestamp),
    SetSubscription(Cow<'a, str>, u64),
    RemoveSubscription(Cow<'a, str>),
    BeginDelivery(Cow<'a, [ServerMsgId]>),
    PutOutbox(Cow<'a, OutboxItem>),
    RemoveOutbox(Cow<'a, ClientMsgId>),
    PutConversationState(Cow<'a, ConversationState>),
    ApplyChange(Cow<'a, MessageChange>),
    SetChangeCursor(Cow<'a, ChangeCursor>),
    PutReadReceipt(Cow<'a, ReadReceipt>),
}

impl Op<'_> {
    /// Applies the write to `state`, as the store did when it was made.
    fn apply(&self, state: &mut MemoryState) -> Result<(), ArchError> {
        match self {
            Op::PutMessages(m) => {
                state.put_messages(m);
            }
            Op::CommitDelivery(c, j) => {
                state.commit_delivery(c, j);
            }
            Op::SetSyncMark(t) => state.set_sync_mark(*t),
            Op::SetSubscription(n, p) => state.set_subscription(n, *p),
            Op::RemoveSubscription(n) => state.remove_subscription(n),
            Op::BeginDelivery(ids) => state.begin_delivery(ids),
            Op::PutOutbox(item) => state.put_outbox(item),
            Op::RemoveOutbox(id) => state.remove_outbox(id),
            Op::PutConversationState(s) => state.put_conversation_state(s),
            Op::ApplyChange(c) => {
                state.apply_change(c)?;
            }
            Op::SetChangeCursor(c) => state.set_change_cursor(c),
            Op::PutReadReceipt(r) => {
                state.put_read_receipt(r);
            }
        }
        Ok(())
    }
}

/// One entry of a snapshot. The messages' index, conversation map and order keys are
/// derived from the messages when it is read.
#[derive(Serialize, Deserialize)]
enum Part<'a> {
    Message(Cow<'a, Message>),
    Cursor(Cow<'a, ConversationId>, SyncCursor),
    Outbox(Cow<'a, OutboxItem>),
    ConversationState(Cow<'a, ConversationState>),
    Journal(u64, Cow<'a, ServerMsgId>, Origin),
    Subscription(Cow<'a, str>, u64),
    Revision(Cow<'a, ServerMsgId>, MessageRevision),
    Pending(Cow<'a, ServerMsgId>, Cow<'a, [MessageChange]>),
    Receipt(Cow<'a, ReadReceipt>),
    /// The last record: the state's single values, and the proof that the snapshot is whole.
    End {
        in_flight: Cow<'a, [ServerMsgId]>,
        journal_head: u64,
        sync_mark: Option<Timestamp>,
        change_cursor: Option<Cow<'a, ChangeCursor>>,
    },
}

/// Appends `value` to `out` as one record: length, checksum, body. The checksum is the
/// CRC-32 of the store's `salt` followed by the body: a record is recognised only by a
/// reader that knows the salt (see [`read_all`] for why).
fn frame<T: Serialize + ?Sized>(value: &T, salt: u64, out: &mut Vec<u8>) -> Result<(), ArchError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    if let Err(e) = codec::encode_into(value, out) {
        out.truncate(start);
        return Err(ArchError::Store(format!(
            "log store: cannot encode a record: {e}"
        )));
    }
    let body = &out[start + FRAME_HEADER..];
    // The codec caps an encoding at 16 MiB, so the length fits in a u32.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = checksum(salt, body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn checksum(salt: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// The record at the start of `bytes`: its value and its length, or why it is not one.
fn parse_record<T: DeserializeOwned>(bytes: &[u8], salt: u64) -> Result<(T, usize), &'static str> {
    let header = bytes
        .get(..FRAME_HEADER)
        .ok_or("a record cut short in its header")?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let end = FRAME_HEADER.saturating_add(len);
    let body = bytes
        .get(FRAME_HEADER..end)
        .ok_or("a record cut short in its body")?;
    if checksum(salt, body) != crc {
        return Err("a record whose checksum does not match");
    }
    let value = codec::decode(body).map_err(|_| "a record that does not decode")?;
    Ok((value, end))
}

/// A range of a file that an open skipped: the writes (or snapshot entries) in it are lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDamage {
    /// The file (a `log.<N>` or the `snapshot`; moved aside as `damaged.*` after the open).
    pub file: PathBuf,
    /// Where the skipped bytes start.
    pub offset: u64,
    /// How many bytes were skipped.
    pub len: u64,
    /// What was wrong at `offset`.
    pub reason: String,
}

/// What [`read_all`] found besides the records it handed on.
struct Reading {
    /// End of the last whole record: where a torn tail starts.
    end: usize,
    /// Ranges skipped in the middle: damage.
    damage: Vec<(usize, usize, String)>,
    /// Bytes after `end` that are no record (a write a crash cut short), and why.
    tail: Option<&'static str>,
}

/// Reads the records of `bytes` from `start`, handing each to `f` with its offset. Where a
/// record does not read (or `f` refuses it), reading goes on at the next offset where a
/// whole record with this `salt` starts: what lies between is damage, and the records after
/// it (later confirmed writes) are kept. When no record follows, the rest is a tail, what a
/// write cut by a crash leaves. The salt is what makes the search safe: a message's text may
/// hold bytes framed like a record, but not with a checksum over a salt it never saw, so a
/// torn or damaged record's content is never taken for a write.
fn read_all<T: DeserializeOwned>(
    bytes: &[u8],
    start: usize,
    salt: u64,
    mut f: impl FnMut(T, usize) -> Result<(), String>,
) -> Reading {
    let mut pos = start;
    let mut damage = Vec::new();
    while pos < bytes.len() {
        let why = match parse_record::<T>(&bytes[pos..], salt) {
            Ok((value, len)) => match f(value, pos) {
                Ok(()) => {
                    pos += len;
                    continue;
                }
                Err(why) => {
                    // A record that reads but does not apply: skip it whole.
                    damage.push((pos, len, why));
                    pos += len;
                    continue;
                }
            },
            Err(why) => why,
        };
        match (pos + 1..bytes.len()).find(|&q| parse_record::<T>(&bytes[q..], salt).is_ok()) {
            Some(next) => {
                damage.push((pos, next - pos, why.to_string()));
                pos = next;
            }
            None => {
                return Reading {
                    end: pos,
                    damage,
                    tail: Some(why),
                };
            }
        }
    }
    Reading {
        end: pos,
        damage,
        tail: None,
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ArchError {
    ArchError::Store(format!("log store: {what} {}: {e}", path.display()))
}

fn corrupt(file: &Path, offset: usize, reason: &str) -> ArchError {
    ArchError::CorruptEntry {
        tree: file.display().to_string(),
        key: format!("offset {offset}"),
        reason: reason.to_string(),
    }
}

/// Reads and checks a file's header record: the magic, then the schema version (a newer one
/// is refused, as an older one for which no migration exists). Returns the generation, the
/// store's salt and where the records start.
fn read_header(file: &Path, bytes: &[u8]) -> Result<(u64, u64, usize), ArchError> {
    let Ok(((magic, schema, generation, salt), len)) = parse_record::<Header<'static>>(bytes, 0)
    else {
        return Err(corrupt(file, 0, "no whole header record"));
    };
    if magic != MAGIC {
        return Err(corrupt(file, 0, "not a log store file"));
    }
    if schema > SCHEMA_VERSION {
        return Err(ArchError::SchemaTooNew {
            found: schema,
            supported: SCHEMA_VERSION,
        });
    }
    if schema < SCHEMA_VERSION {
        return Err(ArchError::Store(format!(
            "store schema version {schema} is older than {SCHEMA_VERSION} and no migration \
             exists; the store was left unchanged"
        )));
    }
    Ok((generation, salt, len))
}

/// A file's header record (framed with salt 0: it is always at offset 0, never searched for).
fn header_record(generation: u64, salt: u64) -> Result<Vec<u8>, ArchError> {
    let mut out = Vec::new();
    let header: Header<'_> = (Cow::Borrowed(MAGIC), SCHEMA_VERSION, generation, salt);
    frame(&header, 0, &mut out)?;
    Ok(out)
}

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{LOG_PREFIX}{generation}"))
}

/// The generations of the `log.<N>` files in `dir`, in order.
fn log_generations(dir: &Path) -> Result<Vec<u64>, ArchError> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| io_err("cannot list", dir, e))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(LOG_PREFIX)?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// What reading a snapshot gave: its generation, the store's salt, the ranges skipped.
struct SnapshotRead {
    generation: u64,
    salt: u64,
    damage: Vec<LogDamage>,
}

/// Reads the snapshot into `state`. Damaged entries are skipped (see [`read_all`]); a
/// snapshot whose end record is lost keeps what it has, with the single values at their
/// safe defaults (no sync mark and no change cursor: the next sync pulls from the server
/// again; the journal head after its last entry).
fn load_snapshot(
    path: &Path,
    bytes: &[u8],
    state: &mut MemoryState,
) -> Result<SnapshotRead, ArchError> {
    let (generation, salt, start) = read_header(path, bytes)?;
    let mut whole = false;
    let reading = read_all::<Part<'static>>(bytes, start, salt, |part, _| {
        if whole {
            return Err("an entry after the end record".into());
        }
        match part {
            Part::Message(m) => state.insert_message(m.into_owned()),
            Part::Cursor(c, cur) => {
                state.cursors.insert(c.into_owned(), cur);
            }
            Part::Outbox(item) => state.put_outbox(&item),
            Part::ConversationState(s) => state.put_conversation_state(&s),
            Part::Journal(position, id, origin) => {
                state.journal.insert(position, (id.into_owned(), origin));
            }
            Part::Subscription(name, position) => {
                state.subscriptions.insert(name.into_owned(), position);
            }
            Part::Revision(id, rev) => {
                state.revisions.insert(id.into_owned(), rev);
            }
            Part::Pending(id, changes) => {
                state.pending.insert(id.into_owned(), changes.into_owned());
            }
            Part::Receipt(r) => {
                state.put_read_receipt(&r);
            }
            Part::End {
                in_flight,
                journal_head,
                sync_mark,
                change_cursor,
            } => {
                state.in_flight = in_flight.into_owned();
                state.journal_head = journal_head;
                state.sync_mark = sync_mark;
                state.change_cursor = change_cursor.map(Cow::into_owned);
                whole = true;
            }
        }
        Ok(())
    });
    let mut damage = to_damage(path, reading.damage);
    if let Some(why) = reading.tail {
        // A snapshot is written whole before it is renamed: a tail is damage too.
        damage.push(LogDamage {
            file: path.to_path_buf(),
            offset: reading.end as u64,
            len: (bytes.len() - reading.end) as u64,
            reason: why.to_string(),
        });
    }
    if !whole {
        state.journal_head = state.journal.keys().next_back().copied().unwrap_or(0);
        if damage.is_empty() {
            damage.push(LogDamage {
                file: path.to_path_buf(),
                offset: bytes.len() as u64,
                len: 0,
                reason: "no end record".into(),
            });
        }
    }
    Ok(SnapshotRead {
        generation,
        salt,
        damage,
    })
}

fn to_damage(path: &Path, ranges: Vec<(usize, usize, String)>) -> Vec<LogDamage> {
    ranges
        .into_iter()
        .map(|(offset, len, reason)| LogDamage {
            file: path.to_path_buf(),
            offset: offset as u64,
            len: len as u64,
            reason,
        })
        .collect()
}

/// The whole state as snapshot records, headed for generation `generation`.
fn encode_snapshot(state: &MemoryState, generation: u64, salt: u64) -> Result<Vec<u8>, ArchError> {
    let mut out = header_record(generation, salt)?;
    for messages in state.by_conversation.values() {
        for m in messages.values() {
            frame(&Part::Message(Cow::Borrowed(m)), salt, &mut out)?;
        }
    }
    for (c, cur) in &state.cursors {
        frame(&Part::Cursor(Cow::Borrowed(c), *cur), salt, &mut out)?;
    }
    for item in state.outbox.values() {
        frame(&Part::Outbox(Cow::Borrowed(item)), salt, &mut out)?;
    }
    for s in state.conversation_states.values() {
        frame(&Part::ConversationState(Cow::Borrowed(s)), salt, &mut out)?;
    }
    for (position, (id, origin)) in &state.journal {
        frame(
            &Part::Journal(*position, Cow::Borrowed(id), *origin),
            salt,
            &mut out,
        )?;
    }
    for (name, position) in &state.subscriptions {
        frame(
            &Part::Subscription(Cow::Borrowed(name), *position),
            salt,
            &mut out,
        )?;
    }
    for (id, rev) in &state.revisions {
        frame(&Part::Revision(Cow::Borrowed(id), *rev), salt, &mut out)?;
    }
    for (id, changes) in &state.pending {
        frame(
            &Part::Pending(Cow::Borrowed(id), Cow::Borrowed(changes)),
            salt,
            &mut out,
        )?;
    }
    for r in state.receipts.values() {
        frame(&Part::Receipt(Cow::Borrowed(r)), salt, &mut out)?;
    }
    frame(
        &Part::End {
            in_flight: Cow::Borrowed(&state.in_flight),
            journal_head: state.journal_head,
            sync_mark: state.sync_mark,
            change_cursor: state.change_cursor.as_ref().map(Cow::Borrowed),
        },
        salt,
        &mut out,
    )?;
    Ok(out)
}

/// Syncs a directory, so a rename or a removal in it survives a power loss.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What the state lock guards: the state and the records not yet written.
struct Inner {
    state: MemoryState,
    /// Records of writes applied to `state` and not yet handed to the file, in order.
    pending: Vec<u8>,
    /// Bytes of records appended since the store was opened (a log sequence number).
    appended: u64,
    /// Why the log can no longer be written: the state has writes the file may lack, so
    /// every later write and flush is refused with this.
    failed: Option<String>,
}

/// What the file lock guards: the log being appended to.
struct Writer {
    file: Arc<File>,
    /// `Inner::appended` as of the last completed write: everything before it is the kernel's.
    written: u64,
    /// Current length of the log file.
    log_len: u64,
    /// The log's generation (its file is `log.<generation>`).
    generation: u64,
    /// Length of the last snapshot (0: none), for the compaction threshold.
    snapshot_len: u64,
}

/// The durable [`Store`] the client uses by default: [`MemoryStore`](crate::MemoryStore)'s state kept durable by
/// an append-only log (the module documentation describes the files and the guarantees).
///
/// One directory can be opened by one `LogStore` at a time (a `flock` on its `LOCK` file);
/// give each client (user, device) its own.
///
/// ```
/// use std::sync::Arc;
/// use im_arch::{LogStore, Store};
///
/// # let dir = std::env::temp_dir().join(format!("log-store-doc-{}", std::process::id()));
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let store = LogStore::open(&dir)?;
/// store.set_sync_mark(im_service::Timestamp::from_millis(42)).await?;
/// store.flush().await?; // in the kernel's hands: survives the process being killed
/// drop(store);
/// let again = LogStore::open(&dir)?;
/// assert_eq!(again.sync_mark().await?, Some(im_service::Timestamp::from_millis(42)));
/// # drop(again);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LogStore {
    inner: Mutex<Inner>,
    /// Held while the file is written (a tokio lock: a flush waits for another's write).
    writer: tokio::sync::Mutex<Writer>,
    dir: PathBuf,
    options: LogStoreOptions,
    /// The store's salt, in every record's checksum (see [`read_all`]).
    salt: u64,
    /// What the open skipped (see [`LogStore::damage`]).
    damage: Vec<LogDamage>,
    /// Holds the directory's `flock` for as long as the store is open.
    _lock: File,
    /// Remove the directory on drop ([`LogStore::temporary`]).
    temporary: bool,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (or creates) the store in directory `path`, with the default options.
    ///
    /// Blocking (it reads the snapshot and replays the log): call it before the runtime
    /// or from `spawn_blocking`, as one would open any embedded database. Waits up to 2 s
    /// for a handle closing in another process to release the directory. Fails with
    /// [`ArchError::SchemaTooNew`] if a newer build wrote it and with
    /// [`ArchError::CorruptEntry`] if a snapshot or an older log is damaged (a log's torn
    /// tail is repaired, as the module documentation says).
    pub fn open(path: impl AsRef<Path>) -> Result<LogStore, ArchError> {
        Self::open_with(path, LogStoreOptions::default())
    }

    /// A store in a fresh directory under the system's temporary directory, removed when
    /// the store is dropped: demos and tests.
    pub fn temporary() -> Result<LogStore, ArchError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("im-log-store-{}-{n}-{nanos}", std::process::id()));
        let mut store = Self::open_with(&dir, LogStoreOptions::default())?;
        store.temporary = true;
        Ok(store)
    }

    /// Opens (or creates) the store in directory `path` with `options`.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: LogStoreOptions,
    ) -> Result<LogStore, ArchError> {
        let dir = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("cannot open", &lock_path, e))?;
        lock_wait::retry_while(
            std::time::Duration::from_secs(2),
            || lock.try_lock(),
            |e| matches!(e, std::fs::TryLockError::WouldBlock),
        )
        .map_err(|e| ArchError::Store(format!("log store {}: {e}", dir.display())))?;

        let mut state = MemoryState::default();
        let mut damage = Vec::new();
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let (generation, mut salt, snapshot_len) = match std::fs::read(&snapshot_path) {
            Ok(bytes) => {
                let read = load_snapshot(&snapshot_path, &bytes, &mut state)?;
                damage.extend(read.damage);
                (read.generation, Some(read.salt), bytes.len() as u64)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None, 0),
            Err(e) => return Err(io_err("cannot read", &snapshot_path, e)),
        };
        // A snapshot a crash did not finish is not the snapshot: its log is still there.
        let _ = std::fs::remove_file(dir.join(SNAPSHOT_TMP));
        let mut live = Vec::new();
        for g in log_generations(&dir)? {
            if g < generation {
                // Already in the snapshot (a compaction a crash interrupted after its rename).
                let path = log_path(&dir, g);
                std::fs::remove_file(&path).map_err(|e| io_err("cannot remove", &path, e))?;
            } else {
                live.push(g);
            }
        }
        let mut writer = None;
        for (i, &g) in live.iter().enumerate() {
            let last = i + 1 == live.len();
            let replayed = replay(&dir, g, last, &mut state, salt, snapshot_len)?;
            salt = salt.or(Some(replayed.salt));
            damage.extend(replayed.damage);
            writer = replayed.writer;
        }
        let salt = salt.unwrap_or_else(rand::random);
        let writer = if damage.is_empty() {
            match writer {
                Some(w) => w,
                None => create_log(&dir, generation, salt, snapshot_len)?,
            }
        } else {
            for d in &damage {
                tracing::error!(
                    file = %d.file.display(),
                    offset = d.offset,
                    len = d.len,
                    reason = %d.reason,
                    "log store: skipped a damaged range (its writes are lost; the rest is kept)"
                );
            }
            drop(writer);
            let next = live.last().copied().unwrap_or(generation).max(generation) + 1;
            rewrite_after_damage(&dir, &state, next, salt, &damage)?
        };
        Ok(LogStore {
            inner: Mutex::new(Inner {
                state,
                pending: Vec::new(),
                appended: 0,
                failed: None,
            }),
            writer: tokio::sync::Mutex::new(writer),
            dir,
            options,
            salt,
            damage,
            _lock: lock,
            temporary: false,
        })
    }

    /// What the open skipped as damaged, each range's writes lost (empty for a healthy
    /// store, and after a crash, whose torn tail is not damage). Each range was logged at
    /// error level; the damaged files are kept as `damaged.*` beside the store. What was
    /// lost comes back as a store losing it would come back: messages and changes with the
    /// next sync from the server; an outbox item or a user setting in it is gone.
    pub fn damage(&self) -> &[LogDamage] {
        &self.damage
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Tests only, not part of the API: closes the store as a crash would, keeping only
    /// what flushes (and write-throughs) gave the kernel; the buffered records are dropped.
    /// (A real crash test kills a process; this lets a property test check, in process,
    /// that a reopened store is the state as of its last flush.)
    #[doc(hidden)]
    pub fn close_as_if_killed(mut self) {
        self.inner.get_mut().pending.clear();
    }

    /// Applies one write: encodes its record into the buffer, applies it to the state (the
    /// record is taken back if that fails), all under the state lock so the log's order is
    /// the state's. Returns the result and whether the buffer is due to be written.
    fn write<R>(
        &self,
        op: &Op<'_>,
        apply: impl FnOnce(&mut MemoryState) -> Result<R, ArchError>,
    ) -> Result<(R, bool), ArchError> {
        let mut inner = self.inner.lock();
        if let Some(why) = &inner.failed {
            return Err(ArchError::Store(why.clone()));
        }
        let start = inner.pending.len();
        frame(op, self.salt, &mut inner.pending)?;
        match apply(&mut inner.state) {
            Ok(out) => {
                let added = inner.pending.len() - start;
                inner.appended += added as u64;
                Ok((out, inner.pending.len() >= WRITE_THROUGH))
            }
            Err(e) => {
                inner.pending.truncate(start);
                Err(e)
            }
        }
    }

    /// [`LogStore::write`], then the buffer's write-through when it is due.
    async fn mutate<R>(
        &self,
        op: Op<'_>,
        apply: impl FnOnce(&mut MemoryState) -> Result<R, ArchError>,
    ) -> Result<R, ArchError> {
        let (out, due) = self.write(&op, apply)?;
        if due {
            self.write_out().await?;
        }
        Ok(out)
    }

    fn read<R>(&self, f: impl FnOnce(&MemoryState) -> R) -> R {
        f(&self.inner.lock().state)
    }

    /// Marks the log as unwritable (see `Inner::failed`) and returns the error.
    fn fail(&self, why: String) -> ArchError {
        tracing::error!(dir = %self.dir.display(), error = %why, "log store: write failed; refusing further writes");
        self.inner.lock().failed = Some(why.clone());
        ArchError::Store(why)
    }

    /// Writes out every record appended before this call (the group commit of
    /// [`Store::flush`]), then compacts if the log has grown enough.
    async fn write_out(&self) -> Result<(), ArchError> {
        let target = self.inner.lock().appended;
        let mut w = self.writer.lock().await;
        if w.written < target {
            let (buf, upto) = {
                let mut inner = self.inner.lock();
                (std::mem::take(&mut inner.pending), inner.appended)
            };
            let file = Arc::clone(&w.file);
            let result = if self.options.fsync {
                let buf_len = buf.len();
                tokio::task::spawn_blocking(move || {
                    (&*file).write_all(&buf)?;
                    file.sync_data()
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                .map(|()| buf_len)
            } else {
                // One write(2) of the group's bytes into the page cache: as short as the
                // sled calls made from runtime threads, and made once per group.
                (&*file).write_all(&buf).map(|()| buf.len())
            };
            match result {
                Ok(len) => {
                    w.written = upto;
                    w.log_len += len as u64;
                }
                Err(e) => {
                    return Err(self.fail(format!(
                        "log store: cannot write {}: {e}",
                        log_path(&self.dir, w.generation).display()
                    )));
                }
            }
        }
        if let Some(why) = &self.inner.lock().failed {
            return Err(ArchError::Store(why.clone()));
        }
        if w.log_len > self.options.compact_min_bytes.max(2 * w.snapshot_len) {
            self.compact(&mut w).await?;
        }
        Ok(())
    }

    /// Writes a snapshot of the state at the end of the log and starts the next log (the
    /// module documentation's "Compaction"). Called with the file lock held.
    async fn compact(&self, w: &mut Writer) -> Result<(), ArchError> {
        let next = w.generation + 1;
        let (snapshot, rest, upto) = {
            let mut inner = self.inner.lock();
            let snapshot = encode_snapshot(&inner.state, next, self.salt)?;
            (snapshot, std::mem::take(&mut inner.pending), inner.appended)
        };
        let dir = self.dir.clone();
        let old = Arc::clone(&w.file);
        let old_generation = w.generation;
        let fsync = self.options.fsync;
        let salt = self.salt;
        let snapshot_len = snapshot.len() as u64;
        let switched = tokio::task::spawn_blocking(move || -> Result<Writer, ArchError> {
            // The records before the snapshot's point end the old log.
            let old_path = log_path(&dir, old_generation);
            (&*old)
                .write_all(&rest)
                .and_then(|()| if fsync { old.sync_data() } else { Ok(()) })
                .map_err(|e| io_err("cannot write", &old_path, e))?;
            let writer = create_log(&dir, next, salt, snapshot_len)?;
            let tmp = dir.join(SNAPSHOT_TMP);
            let written = File::create(&tmp)
                .and_then(|mut f| {
                    f.write_all(&snapshot)?;
                    f.sync_all()
                })
                .and_then(|()| std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE)))
                .and_then(|()| sync_dir(&dir));
            match written {
                Ok(()) => {
                    for g in log_generations(&dir)?.into_iter().filter(|g| *g < next) {
                        let path = log_path(&dir, g);
                        std::fs::remove_file(&path)
                            .map_err(|e| io_err("cannot remove", &path, e))?;
                    }
                }
                Err(e) => {
                    // The old snapshot and every log since it are intact, and the new log
                    // follows them: the store stays correct, only larger.
                    tracing::warn!(dir = %dir.display(), error = %e, "log store: snapshot not written; the logs are kept");
                }
            }
            Ok(writer)
        })
        .await
        .map_err(|e| ArchError::Store(format!("log store: compaction task: {e}")))?;
        match switched {
            Ok(mut writer) => {
                writer.written = upto;
                *w = writer;
                Ok(())
            }
            Err(e) => Err(self.fail(e.to_string())),
        }
    }
}

/// Creates `log.<generation>` with its header (replacing a file a crash left without one).
fn create_log(
    dir: &Path,
    generation: u64,
    salt: u64,
    snapshot_len: u64,
) -> Result<Writer, ArchError> {
    let path = log_path(dir, generation);
    let header = header_record(generation, salt)?;
    let mut file = File::create(&path).map_err(|e| io_err("cannot create", &path, e))?;
    file.write_all(&header)
        .and_then(|()| file.sync_all())
        .and_then(|()| sync_dir(dir))
        .map_err(|e| io_err("cannot write", &path, e))?;
    Ok(Writer {
        file: Arc::new(file),
        written: 0,
        log_len: header.len() as u64,
        generation,
        snapshot_len,
    })
}

/// What replaying one log gave.
struct Replayed {
    /// The log, open for appending (the last log only).
    writer: Option<Writer>,
    /// The salt its header names.
    salt: u64,
    /// Ranges skipped.
    damage: Vec<LogDamage>,
}

/// Replays `log.<generation>` into `state`, skipping damage (see [`read_all`]). The last
/// log's torn tail is cut off, and a last log without a whole header (a crash while it was
/// created) is started again with `salt` (a new one if none is known yet).
fn replay(
    dir: &Path,
    generation: u64,
    last: bool,
    state: &mut MemoryState,
    salt: Option<u64>,
    snapshot_len: u64,
) -> Result<Replayed, ArchError> {
    let path = log_path(dir, generation);
    let bytes = std::fs::read(&path).map_err(|e| io_err("cannot read", &path, e))?;
    let (found, salt, start) = match read_header(&path, &bytes) {
        Ok(header) => header,
        Err(ArchError::CorruptEntry { .. }) if last && bytes.len() < 64 => {
            let salt = salt.unwrap_or_else(rand::random);
            return Ok(Replayed {
                writer: Some(create_log(dir, generation, salt, snapshot_len)?),
                salt,
                damage: Vec::new(),
            });
        }
        Err(e) => return Err(e),
    };
    if found != generation {
        return Err(corrupt(&path, 0, "its header names another generation"));
    }
    let reading = read_all::<Op<'static>>(&bytes, start, salt, |op, _| {
        op.apply(state)
            .map_err(|e| format!("a write that does not replay: {e}"))
    });
    let mut damage = to_damage(&path, reading.damage);
    if let Some(why) = reading.tail {
        if last {
            tracing::warn!(
                file = %path.display(),
                dropped_bytes = bytes.len() - reading.end,
                reason = why,
                "log store: cut the log's torn tail (writes a crash interrupted, never confirmed)"
            );
        } else {
            // Only the last log is ever appended to when a crash strikes.
            damage.push(LogDamage {
                file: path.clone(),
                offset: reading.end as u64,
                len: (bytes.len() - reading.end) as u64,
                reason: why.to_string(),
            });
        }
    }
    if !last {
        return Ok(Replayed {
            writer: None,
            salt,
            damage,
        });
    }
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| io_err("cannot open", &path, e))?;
    if reading.end < bytes.len() && damage.is_empty() {
        file.set_len(reading.end as u64)
            .map_err(|e| io_err("cannot truncate", &path, e))?;
    }
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| io_err("cannot open", &path, e))?;
    Ok(Replayed {
        writer: Some(Writer {
            file: Arc::new(file),
            written: 0,
            log_len: reading.end as u64,
            generation,
            snapshot_len,
        }),
        salt,
        damage,
    })
}

/// After an open skipped damage: keeps a copy of each damaged file (`damaged.<name>.<next>`),
/// writes the state as read as the snapshot of generation `next` with a new log, and
/// removes the older logs, so the store is whole again and the damage is not read twice.
/// Each step is crash-safe as a compaction is: until the new snapshot's rename, the old
/// snapshot and logs are all there and an open salvages them again.
fn rewrite_after_damage(
    dir: &Path,
    state: &MemoryState,
    next: u64,
    salt: u64,
    damage: &[LogDamage],
) -> Result<Writer, ArchError> {
    let mut files: Vec<&PathBuf> = damage.iter().map(|d| &d.file).collect();
    files.dedup();
    for file in files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let aside = dir.join(format!("damaged.{name}.{next}"));
        std::fs::copy(file, &aside).map_err(|e| io_err("cannot keep a copy of", file, e))?;
    }
    let snapshot = encode_snapshot(state, next, salt)?;
    let writer = create_log(dir, next, salt, snapshot.len() as u64)?;
    let tmp = dir.join(SNAPSHOT_TMP);
    File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&snapshot)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE)))
        .and_then(|()| sync_dir(dir))
        .map_err(|e| io_err("cannot write the snapshot in", dir, e))?;
    for g in log_generations(dir)?.into_iter().filter(|g| *g < next) {
        let path = log_path(dir, g);
        std::fs::remove_file(&path).map_err(|e| io_err("cannot remove", &path, e))?;
    }
    Ok(writer)
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // A polite close writes what is buffered (a crash would lose it, as the contract
        // allows); the lock is free unless a flush was cancelled mid-way.
        if let Ok(w) = self.writer.try_lock() {
            let inner = self.inner.get_mut();
            if inner.failed.is_none()
                && !inner.pending.is_empty()
                && let Err(e) = (&*w.file).write_all(&inner.pending)
            {
                tracing::warn!(dir = %self.dir.display(), error = %e, "log store: write on drop failed");
            }
        }
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[async_trait]
impl Store for LogStore {
    async fn flush(&self) -> Result<(), ArchError> {
        self.write_out().await
    }

    async fn put_messages(&self, messages: &[Message]) -> Result<Vec<bool>, ArchError> {
        self.mutate(Op::PutMessages(Cow::Borrowed(messages)), |s| {
            Ok(s.put_messages(messages))
        })
        .await
    }

    async fn message(&self, id: &ServerMsgId) -> Result<Option<Message>, ArchError> {
        Ok(self.read(|s| s.message(id)))
    }

    async fn latest(
        &self,
        conversation: &ConversationId,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        Ok(self.read(|s| s.latest(conversation, limit)))
    }

    async fn cursor(&self, conversation: &ConversationId) -> Result<Option<SyncCursor>, ArchError> {
        Ok(self.read(|s| s.cursors.get(conversation).copied()))
    }

    async fn commit_delivery(
        &self,
        cursors: &[(ConversationId, SyncCursor)],
        journal: &[(ServerMsgId, Origin)],
    ) -> Result<u64, ArchError> {
        self.mutate(
            Op::CommitDelivery(Cow::Borrowed(cursors), Cow::Borrowed(journal)),
            |s| Ok(s.commit_delivery(cursors, journal)),
        )
        .await
    }

    async fn journal_head(&self) -> Result<u64, ArchError> {
        Ok(self.read(|s| s.journal_head))
    }

    async fn journal_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DurableEvent>, ArchError> {
        self.read(|s| s.journal_after(after, limit))
    }

    async fn subscriptions(&self) -> Result<Vec<(String, u64)>, ArchError> {
        Ok(self.read(MemoryState::subscriptions))
    }

    async fn set_subscription(&self, name: &str, position: u64) -> Result<(), ArchError> {
        self.mutate(Op::SetSubscription(Cow::Borrowed(name), position), |s| {
            s.set_subscription(name, position);
            Ok(())
        })
        .await
    }

    async fn remove_subscription(&self, name: &str) -> Result<(), ArchError> {
        self.mutate(Op::RemoveSubscription(Cow::Borrowed(name)), |s| {
            s.remove_subscription(name);
            Ok(())
        })
        .await
    }

    async fn begin_delivery(&self, ids: &[ServerMsgId]) -> Result<(), ArchError> {
        self.mutate(Op::BeginDelivery(Cow::Borrowed(ids)), |s| {
            s.begin_delivery(ids);
            Ok(())
        })
        .await
    }

    async fn in_flight(&self) -> Result<Vec<ServerMsgId>, ArchError> {
        Ok(self.read(|s| s.in_flight.clone()))
    }

    async fn cursors(&self) -> Result<Vec<(ConversationId, SyncCursor)>, ArchError> {
        Ok(self.read(MemoryState::cursors))
    }

    async fn sync_mark(&self) -> Result<Option<Timestamp>, ArchError> {
        Ok(self.read(|s| s.sync_mark))
    }

    async fn set_sync_mark(&self, mark: Timestamp) -> Result<(), ArchError> {
        self.mutate(Op::SetSyncMark(mark), |s| {
            s.set_sync_mark(mark);
            Ok(())
        })
        .await
    }

    async fn page_before(
        &self,
        conversation: &ConversationId,
        before: Option<&Message>,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        Ok(self.read(|s| s.page_before(conversation, before, limit)))
    }

    async fn page_after(
        &self,
        conversation: &ConversationId,
        after: &Message,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        Ok(self.read(|s| s.page_after(conversation, after, limit)))
    }

    async fn put_outbox(&self, item: &OutboxItem) -> Result<(), ArchError> {
        self.mutate(Op::PutOutbox(Cow::Borrowed(item)), |s| {
            s.put_outbox(item);
            Ok(())
        })
        .await
    }

    async fn remove_outbox(&self, id: &ClientMsgId) -> Result<(), ArchError> {
        self.mutate(Op::RemoveOutbox(Cow::Borrowed(id)), |s| {
            s.remove_outbox(id);
            Ok(())
        })
        .await
    }

    async fn outbox(&self) -> Result<Vec<OutboxItem>, ArchError> {
        Ok(self.read(MemoryState::outbox))
    }

    async fn put_conversation_state(&self, state: &ConversationState) -> Result<(), ArchError> {
        self.mutate(Op::PutConversationState(Cow::Borrowed(state)), |s| {
            s.put_conversation_state(state);
            Ok(())
        })
        .await
    }

    async fn conversation_states(&self) -> Result<Vec<ConversationState>, ArchError> {
        Ok(self.read(MemoryState::conversation_states))
    }

    async fn apply_change(&self, change: &MessageChange) -> Result<ChangeOutcome, ArchError> {
        self.mutate(Op::ApplyChange(Cow::Borrowed(change)), |s| {
            s.apply_change(change)
        })
        .await
    }

    async fn revision(&self, id: &ServerMsgId) -> Result<Option<MessageRevision>, ArchError> {
        Ok(self.read(|s| s.revisions.get(id).copied()))
    }

    async fn change_cursor(&self) -> Result<Option<ChangeCursor>, ArchError> {
        Ok(self.read(|s| s.change_cursor.clone()))
    }

    async fn set_change_cursor(&self, cursor: &ChangeCursor) -> Result<(), ArchError> {
        self.mutate(Op::SetChangeCursor(Cow::Borrowed(cursor)), |s| {
            s.set_change_cursor(cursor);
            Ok(())
        })
        .await
    }

    async fn put_read_receipt(&self, receipt: &ReadReceipt) -> Result<bool, ArchError> {
        self.mutate(Op::PutReadReceipt(Cow::Borrowed(receipt)), |s| {
            Ok(s.put_read_receipt(receipt))
        })
        .await
    }

    async fn read_receipts(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<ReadReceipt>, ArchError> {
        Ok(self.read(|s| s.read_receipts(conversation)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u64 = 0x5eed;

    fn records(values: &[u64]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for v in values {
            starts.push(bytes.len());
            frame(v, SALT, &mut bytes).unwrap_or_default();
        }
        (bytes, starts)
    }

    fn read(bytes: &[u8]) -> (Vec<u64>, Reading) {
        let mut out = Vec::new();
        let reading = read_all::<u64>(bytes, 0, SALT, |v, _| {
            out.push(v);
            Ok(())
        });
        (out, reading)
    }

    #[test]
    fn a_torn_tail_ends_reading_and_damage_is_skipped() {
        let (bytes, starts) = records(&[10, 11, 12, 13]);
        let (values, reading) = read(&bytes);
        assert_eq!(
            values,
            vec![10, 11, 12, 13],
            "whole records read back in order"
        );
        assert!(reading.damage.is_empty() && reading.tail.is_none());

        // Cut in the middle of the last record: a tail, where the valid prefix ends.
        let (values, reading) = read(&bytes[..bytes.len() - 1]);
        assert_eq!(values, vec![10, 11, 12]);
        assert_eq!(reading.end, starts[3], "the tail starts at the torn record");
        assert!(reading.tail.is_some() && reading.damage.is_empty());

        // A flipped bit in the second record: skipped as damage, the records after it kept.
        let mut damaged = bytes.clone();
        damaged[starts[1] + FRAME_HEADER + 1] ^= 0x40;
        let (values, reading) = read(&damaged);
        assert_eq!(
            values,
            vec![10, 12, 13],
            "the later records survive damage before them"
        );
        assert_eq!(
            reading
                .damage
                .iter()
                .map(|d| (d.0, d.1))
                .collect::<Vec<_>>(),
            vec![(starts[1], starts[2] - starts[1])],
            "exactly the damaged record is skipped"
        );
        assert!(reading.tail.is_none());

        // A damaged length field (the record looks cut short): still damage, not a tail.
        let mut damaged = bytes.clone();
        damaged[starts[1] + 2] = 0x7f;
        let (values, reading) = read(&damaged);
        assert_eq!(
            values,
            vec![10, 12, 13],
            "a bad length does not cut the log there"
        );
        assert_eq!(reading.damage.len(), 1);
    }

    #[test]
    fn a_record_inside_a_record_is_not_taken_for_one_without_the_salt() {
        // A message whose text holds a framed record: what an attacker could send. Framed
        // with another salt (they do not know this store's), it is never read as a write,
        // even when the record around it is torn and reading searches for the next one.
        let mut forged = Vec::new();
        frame(&99u64, SALT ^ 1, &mut forged).unwrap_or_default();
        let mut bytes = Vec::new();
        frame(&1u64, SALT, &mut bytes).unwrap_or_default();
        let outer_start = bytes.len();
        // The forged bytes, then more text: a tear after them leaves them whole.
        frame(&(&forged, [7u8; 32]), SALT, &mut bytes).unwrap_or_default();
        let torn = &bytes[..bytes.len() - 10];
        let mut seen = Vec::new();
        let reading = read_all::<u64>(torn, 0, SALT, |v, _| {
            seen.push(v);
            Ok(())
        });
        assert_eq!(
            seen,
            vec![1],
            "the forged record inside the torn one is not read"
        );
        assert_eq!(reading.end, outer_start);
        assert!(reading.tail.is_some());
        // With the salt known, the same bytes would have been read: the salt is the guard.
        let found = (outer_start + 1..torn.len())
            .any(|q| parse_record::<u64>(&torn[q..], SALT ^ 1).is_ok());
        assert!(found, "the forged record is in there");
    }
}
