//! What only the log store has (the conformance suite in `store_conformance.rs` covers the
//! `Store` contract): a store reopened after a crash is exactly its state as of the last
//! flush, through compactions (a property test against `MemoryStore`); a torn tail is cut
//! and writing goes on after it; damage elsewhere loses only the damaged writes and is
//! reported; a newer schema and a second handle are refused with typed errors. The SIGKILL test of a real process is the crash harness
//! (`cargo xtask crash`, `im-crash-client`, which runs on this store by default).

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use im_arch::{
    ArchError, ConversationState, DurableEvent, LogStore, LogStoreOptions, MemoryStore,
    MessageRevision, OutboxItem, SCHEMA_VERSION, SendStatus, Store, SyncCursor,
};
use im_service::{
    ChangeCursor, ChangeKind, ClientMsgId, Content, ConversationId, Message, MessageChange, Origin,
    OutgoingMessage, ReadReceipt, Seq, ServerMsgId, Timestamp, UserId,
};
use proptest::prelude::*;

const CONVERSATIONS: usize = 3;
const MESSAGES: usize = 12;

fn conversation(c: usize) -> ConversationId {
    ConversationId::direct(&UserId::new("me"), &UserId::new(format!("peer{c}")))
}

/// Message `i` (of [`MESSAGES`]): conversation `i % 3`, time `i`.
fn message(i: usize) -> Message {
    Message {
        server_id: ServerMsgId::new(format!("m{i}")),
        client_id: ClientMsgId::new(format!("c{i}")),
        conversation: conversation(i % CONVERSATIONS),
        sender: UserId::new(format!("peer{}", i % CONVERSATIONS)),
        seq: Some(Seq(i as u64 + 1)),
        server_time: Timestamp::from_millis(1_000 + i as i64),
        client_time: Timestamp::from_millis(990 + i as i64),
        content: Content::text(format!("text {i}")),
    }
}

fn outbox_item(id: usize, position: u64, attempts: u32) -> OutboxItem {
    OutboxItem {
        position,
        message: OutgoingMessage {
            client_id: ClientMsgId::new(format!("out{id}")),
            conversation: conversation(id % CONVERSATIONS),
            content: Content::text(format!("send {id}")),
            client_time: Timestamp::from_millis(5_000),
        },
        status: SendStatus::Sending,
        attempts,
    }
}

/// One write of the property test, over a small domain so that writes collide.
#[derive(Debug, Clone)]
enum Write {
    Put(Vec<usize>),
    Change {
        target: usize,
        kind: u8,
        revision: u32,
    },
    Commit {
        cursors: Vec<(usize, u64)>,
        journal: Vec<usize>,
    },
    Subscribe(u8, u64),
    Unsubscribe(u8),
    Begin(Vec<usize>),
    /// Outbox item `i` (its position is `i`: positions are unique, as the send queue's are).
    PutOutbox(usize, u32),
    RemoveOutbox(usize),
    SyncMark(i64),
    Receipt(usize, u8, usize),
    ChangeCursor(u8),
    State(usize, bool),
    Flush,
}

fn write_strategy() -> impl Strategy<Value = Write> {
    let id = 0..MESSAGES;
    prop_oneof![
        4 => prop::collection::vec(id.clone(), 1..4).prop_map(Write::Put),
        2 => (id.clone(), 0u8..3, 1u32..5).prop_map(|(target, kind, revision)| Write::Change { target, kind, revision }),
        2 => (prop::collection::vec((0..CONVERSATIONS, 0u64..20), 0..3), prop::collection::vec(id.clone(), 0..3))
            .prop_map(|(cursors, journal)| Write::Commit { cursors, journal }),
        1 => (0u8..3, 0u64..8).prop_map(|(n, p)| Write::Subscribe(n, p)),
        1 => (0u8..3).prop_map(Write::Unsubscribe),
        1 => prop::collection::vec(id.clone(), 0..3).prop_map(Write::Begin),
        2 => (0usize..4, 0u32..3).prop_map(|(i, a)| Write::PutOutbox(i, a)),
        1 => (0usize..4).prop_map(Write::RemoveOutbox),
        1 => (0i64..100).prop_map(Write::SyncMark),
        1 => (0..CONVERSATIONS, 0u8..2, id).prop_map(|(c, r, u)| Write::Receipt(c, r, u)),
        1 => any::<u8>().prop_map(Write::ChangeCursor),
        1 => (0..CONVERSATIONS, any::<bool>()).prop_map(|(c, p)| Write::State(c, p)),
        3 => Just(Write::Flush),
    ]
}

/// Applies `w` to `store` (a flush is not a write: the caller handles it).
async fn apply(store: &impl Store, w: &Write) {
    match w {
        Write::Put(ids) => {
            let batch: Vec<Message> = ids.iter().map(|i| message(*i)).collect();
            store.put_messages(&batch).await.unwrap();
        }
        Write::Change {
            target,
            kind,
            revision,
        } => {
            let m = message(*target);
            let kind = match kind {
                0 => ChangeKind::Edited(Content::text(format!("edit {revision}"))),
                1 => ChangeKind::Recalled,
                _ => ChangeKind::DeletedForMe,
            };
            let change = MessageChange {
                conversation: m.conversation.clone(),
                target: m.server_id.clone(),
                kind,
                by: m.sender.clone(),
                at: Timestamp::from_millis(2_000 + i64::from(*revision)),
                revision: *revision,
            };
            store.apply_change(&change).await.unwrap();
        }
        Write::Commit { cursors, journal } => {
            let cursors: Vec<(ConversationId, SyncCursor)> = cursors
                .iter()
                .map(|(c, s)| {
                    (
                        conversation(*c),
                        SyncCursor {
                            seq: Some(Seq(*s)),
                            time: Timestamp::from_millis(*s as i64),
                        },
                    )
                })
                .collect();
            // The journal only names messages the store holds (as the sync engine does).
            let mut entries = Vec::new();
            for i in journal {
                let id = message(*i).server_id;
                if store.message(&id).await.unwrap().is_some() {
                    entries.push((id, Origin::Online));
                }
            }
            store.commit_delivery(&cursors, &entries).await.unwrap();
        }
        Write::Subscribe(n, p) => {
            let head = store.journal_head().await.unwrap();
            store
                .set_subscription(&format!("sub{n}"), (*p).min(head))
                .await
                .unwrap();
        }
        Write::Unsubscribe(n) => store.remove_subscription(&format!("sub{n}")).await.unwrap(),
        Write::Begin(ids) => {
            let ids: Vec<ServerMsgId> = ids.iter().map(|i| message(*i).server_id).collect();
            store.begin_delivery(&ids).await.unwrap();
        }
        Write::PutOutbox(i, a) => store
            .put_outbox(&outbox_item(*i, *i as u64, *a))
            .await
            .unwrap(),
        Write::RemoveOutbox(i) => store
            .remove_outbox(&ClientMsgId::new(format!("out{i}")))
            .await
            .unwrap(),
        Write::SyncMark(t) => store
            .set_sync_mark(Timestamp::from_millis(*t))
            .await
            .unwrap(),
        Write::Receipt(c, r, u) => {
            let m = message(*u);
            let receipt = ReadReceipt {
                conversation: conversation(*c),
                reader: UserId::new(format!("reader{r}")),
                up_to: m.server_id,
                up_to_time: m.server_time,
                at: Timestamp::from_millis(3_000),
            };
            store.put_read_receipt(&receipt).await.unwrap();
        }
        Write::ChangeCursor(b) => store
            .set_change_cursor(&ChangeCursor(vec![*b]))
            .await
            .unwrap(),
        Write::State(c, pinned) => store
            .put_conversation_state(&ConversationState {
                id: conversation(*c),
                pinned: *pinned,
                muted: false,
                draft: Some(("draft".into(), Timestamp::from_millis(7))),
                read_up_to: None,
            })
            .await
            .unwrap(),
        Write::Flush => {}
    }
}

/// Everything a store shows through the `Store` trait, in a comparable form.
#[derive(Debug, PartialEq)]
struct View {
    timelines: Vec<Vec<Message>>,
    lookups: Vec<Option<Message>>,
    revisions: Vec<Option<MessageRevision>>,
    cursors: Vec<(ConversationId, SyncCursor)>,
    in_flight: Vec<ServerMsgId>,
    journal_head: u64,
    journal: Vec<DurableEvent>,
    subscriptions: Vec<(String, u64)>,
    outbox: Vec<OutboxItem>,
    sync_mark: Option<Timestamp>,
    change_cursor: Option<ChangeCursor>,
    receipts: Vec<Vec<ReadReceipt>>,
    states: Vec<ConversationState>,
}

async fn view(store: &impl Store) -> View {
    let mut timelines = Vec::new();
    let mut receipts = Vec::new();
    for c in 0..CONVERSATIONS {
        timelines.push(store.latest(&conversation(c), 100).await.unwrap());
        receipts.push(store.read_receipts(&conversation(c)).await.unwrap());
    }
    let mut lookups = Vec::new();
    let mut revisions = Vec::new();
    for i in 0..MESSAGES {
        let id = message(i).server_id;
        lookups.push(store.message(&id).await.unwrap());
        revisions.push(store.revision(&id).await.unwrap());
    }
    let mut cursors = store.cursors().await.unwrap();
    cursors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut states = store.conversation_states().await.unwrap();
    states.sort_by(|a, b| a.id.cmp(&b.id));
    View {
        timelines,
        lookups,
        revisions,
        cursors,
        in_flight: store.in_flight().await.unwrap(),
        journal_head: store.journal_head().await.unwrap(),
        journal: store.journal_after(0, 1_000).await.unwrap(),
        subscriptions: store.subscriptions().await.unwrap(),
        outbox: store.outbox().await.unwrap(),
        sync_mark: store.sync_mark().await.unwrap(),
        change_cursor: store.change_cursor().await.unwrap(),
        receipts,
        states,
    }
}

/// Options that compact at nearly every flush, so the property test crosses snapshots.
fn compacting() -> LogStoreOptions {
    LogStoreOptions {
        compact_min_bytes: 512,
        ..LogStoreOptions::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Crash equivalence: whatever the writes, flushes and compactions, a store closed as a
    /// crash would close it reopens as exactly the state of its last flush (the reference
    /// being `MemoryStore` given the same writes), and a second session on it does too.
    #[test]
    fn a_reopened_store_is_its_state_at_the_last_flush(
        sessions in prop::collection::vec(prop::collection::vec(write_strategy(), 0..40), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            // Every write up to the last flush, over all sessions: what must survive.
            let mut confirmed: Vec<Write> = Vec::new();
            for writes in sessions.iter().chain(std::iter::once(&Vec::new())) {
                // The reference: a memory store given exactly the confirmed writes.
                let reference = MemoryStore::new();
                for w in &confirmed {
                    apply(&reference, w).await;
                }
                let store = LogStore::open_with(dir.path(), compacting()).unwrap();
                assert_eq!(
                    view(&store).await,
                    view(&reference).await,
                    "after the crash: exactly the state at the last flush"
                );
                let mut unconfirmed = Vec::new();
                for w in writes {
                    if let Write::Flush = w {
                        store.flush().await.unwrap();
                        confirmed.append(&mut unconfirmed);
                    } else {
                        apply(&store, w).await;
                        apply(&reference, w).await;
                        unconfirmed.push(w.clone());
                    }
                }
                assert_eq!(view(&store).await, view(&reference).await, "the store shows what the reference shows");
                store.close_as_if_killed();
            }
        });
    }
}

/// The newest `log.<N>` file of a store directory.
fn newest_log(dir: &Path) -> PathBuf {
    let mut logs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_prefix("log.")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    logs.sort();
    logs.pop().expect("a log file").1
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_writes_after_it_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path()).unwrap();
        store.put_messages(&[message(0), message(1)]).await.unwrap();
        store.flush().await.unwrap();
        store.close_as_if_killed();
    }
    // What a write(2) cut by SIGKILL leaves: a record's header promising more than follows.
    let log = newest_log(dir.path());
    let whole = std::fs::metadata(&log).unwrap().len();
    append(&log, &[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]);
    {
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            store.latest(&conversation(0), 10).await.unwrap(),
            vec![message(0)],
            "what was flushed before the torn write is there"
        );
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            whole,
            "the torn tail was cut off"
        );
        store.put_messages(&[message(3)]).await.unwrap();
        store.flush().await.unwrap();
        store.close_as_if_killed();
    }
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        store.latest(&conversation(0), 10).await.unwrap(),
        vec![message(3), message(0)],
        "a write made after the repair survives the next crash (it is not behind garbage)"
    );
}

#[tokio::test]
async fn damage_in_the_log_loses_only_the_damaged_write_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path()).unwrap();
        store.put_messages(&[message(0)]).await.unwrap();
        store.flush().await.unwrap();
        store.put_messages(&[message(3)]).await.unwrap();
        store.put_outbox(&outbox_item(1, 1, 0)).await.unwrap();
        store.flush().await.unwrap();
        store.close_as_if_killed();
    }
    let log = newest_log(dir.path());
    let mut bytes = std::fs::read(&log).unwrap();
    // A flipped bit inside message 0's text (the first write): confirmed writes follow it,
    // so cutting the log there would lose them.
    let at = bytes
        .windows(6)
        .position(|w| w == b"text 0")
        .expect("message 0's text is in the log");
    bytes[at] ^= 0x10;
    std::fs::write(&log, &bytes).unwrap();

    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        store.damage().len(),
        1,
        "one damaged range: {:?}",
        store.damage()
    );
    let damage = &store.damage()[0];
    assert_eq!(damage.file, log, "the damage names the file");
    assert!(damage.offset as usize <= at && at < (damage.offset + damage.len) as usize);
    assert_eq!(
        store.message(&message(0).server_id).await.unwrap(),
        None,
        "the damaged write is lost (the next sync brings the message back from the server)"
    );
    assert_eq!(
        store.message(&message(3).server_id).await.unwrap(),
        Some(message(3)),
        "the confirmed writes after the damage are kept"
    );
    assert_eq!(
        store.outbox().await.unwrap(),
        vec![outbox_item(1, 1, 0)],
        "the pending send after the damage survives"
    );
    let kept: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("damaged."))
        .collect();
    assert_eq!(kept.len(), 1, "a copy of the damaged log is kept: {kept:?}");
    drop(store);
    let again = LogStore::open(dir.path()).unwrap();
    assert!(again.damage().is_empty(), "the store was rewritten whole");
    assert_eq!(again.outbox().await.unwrap(), vec![outbox_item(1, 1, 0)]);
}

#[tokio::test]
async fn a_damaged_snapshot_keeps_what_it_can_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open_with(dir.path(), compacting()).unwrap();
        for i in 0..MESSAGES {
            store.put_messages(&[message(i)]).await.unwrap();
            store.flush().await.unwrap();
        }
        store
            .set_sync_mark(Timestamp::from_millis(77))
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let snapshot = dir.path().join("snapshot");
    let mut bytes = std::fs::read(&snapshot).expect("compaction wrote a snapshot");
    let at = bytes
        .windows(6)
        .position(|w| w == b"text 5")
        .expect("message 5 is in the snapshot");
    bytes[at] ^= 0x01;
    std::fs::write(&snapshot, &bytes).unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.damage().len(), 1, "{:?}", store.damage());
    assert_eq!(store.damage()[0].file, snapshot);
    for i in 0..MESSAGES {
        let found = store.message(&message(i).server_id).await.unwrap();
        assert_eq!(
            found.is_some(),
            i != 5,
            "message {i}: only the damaged entry is lost"
        );
    }
}

/// A log file's header record with another schema version, framed as the store frames it
/// (length, CRC-32 of salt 0 and the body, the body).
fn with_schema(header_record: &[u8], schema: u32) -> Vec<u8> {
    let (magic, _, generation, salt): (String, u32, u64, u64) =
        im_service::codec::decode(&header_record[8..]).expect("a header record");
    let body = im_service::codec::encode(&(magic, schema, generation, salt)).unwrap();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&0u64.to_le_bytes());
    crc.update(&body);
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    drop(LogStore::open(dir.path()).unwrap());
    let log = newest_log(dir.path());
    let header = std::fs::read(&log).unwrap();
    assert_eq!(
        with_schema(&header, SCHEMA_VERSION),
        header,
        "a new store's log is its header (this test frames it as the store does)"
    );
    std::fs::write(&log, with_schema(&header, SCHEMA_VERSION + 1)).unwrap();
    match LogStore::open(dir.path()) {
        Err(ArchError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&log).unwrap(),
        with_schema(&header, SCHEMA_VERSION + 1),
        "left unchanged"
    );
}

#[tokio::test]
async fn one_handle_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = LogStore::open(dir.path()).unwrap();
    let second = tokio::task::spawn_blocking({
        let path = dir.path().to_path_buf();
        move || LogStore::open(path)
    })
    .await
    .unwrap();
    assert!(
        matches!(second, Err(ArchError::Store(_))),
        "a second handle is refused while the first is open"
    );
    drop(first);
    assert!(
        LogStore::open(dir.path()).is_ok(),
        "and accepted once it is closed"
    );
}
