//! Fuzz target for the entries `SledStore` decodes on read: a store is filled through its
//! API, then damaged behind its back (values and keys flipped, cut, spliced, replaced by
//! encodings of the wrong type or by varints claiming huge lengths; garbage entries added;
//! the journal head set to `u64::MAX`), and every read and write of the `Store` contract is
//! called on it. Checks: no call panics (damaged entries are typed errors), what the calls
//! allocate stays bounded, and an undamaged store reads back what was written. Modes: see
//! `fuzz_support` (in im-service's tests); `cargo xtask fuzz --minutes N` runs it longer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../im-service/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use fuzz_support::model::{conversation, id, message, outgoing, text, time};
use fuzz_support::mutate::{self, Mutation};
use fuzz_support::{check_bounded, fuzz, measure};
use im_arch::SledStore;
use im_arch::{ConversationState, OutboxItem, SCHEMA_VERSION, SendStatus, Store, SyncCursor};
use im_service::codec::encode;
use im_service::{ClientMsgId, Message, Origin, Seq, ServerMsgId};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

/// Cases in `cargo test` (each opens a temporary sled store).
const CASES: u32 = 500;

/// The trees of the store (see the table in `sled_store.rs`).
const TREES: [&str; 8] = [
    "messages",
    "by_server_id",
    "cursors",
    "outbox",
    "outbox_ids",
    "conversations",
    "journal",
    "meta",
];

/// What is written through the API before the damage.
#[derive(Debug, Clone)]
struct Seeded {
    messages: Vec<Message>,
    outbox: Vec<OutboxItem>,
    states: Vec<ConversationState>,
    cursors: Vec<(im_service::ConversationId, SyncCursor)>,
    sync_mark: im_service::Timestamp,
}

fn seeded() -> impl Strategy<Value = Seeded> {
    let item = (any::<u64>(), outgoing(), any::<u32>(), 0u8..3, text()).prop_map(
        |(position, message, attempts, status, why)| OutboxItem {
            position,
            message,
            attempts,
            status: match status {
                0 => SendStatus::Sending,
                1 => SendStatus::Sent {
                    server_id: ServerMsgId::new(&why),
                    seq: Some(Seq(u64::from(attempts))),
                },
                _ => SendStatus::Failed {
                    reason: why,
                    recoverable: attempts % 2 == 0,
                },
            },
        },
    );
    let state = (
        conversation(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of((text(), time())),
        proptest::option::of((time(), id())),
    )
        .prop_map(|(id, pinned, muted, draft, read)| ConversationState {
            id,
            pinned,
            muted,
            draft,
            read_up_to: read.map(|(t, i)| (t, ServerMsgId::new(i))),
        });
    let cursor =
        (conversation(), proptest::option::of(any::<u64>()), time()).prop_map(|(c, seq, time)| {
            (
                c,
                SyncCursor {
                    seq: seq.map(Seq),
                    time,
                },
            )
        });
    (
        proptest::collection::vec(message(), 1..6),
        proptest::collection::vec(item, 0..3),
        proptest::collection::vec(state, 0..3),
        proptest::collection::vec(cursor, 0..3),
        time(),
    )
        .prop_map(|(messages, outbox, states, cursors, sync_mark)| Seeded {
            messages,
            outbox,
            states,
            cursors,
            sync_mark,
        })
}

/// One change behind the store's back.
#[derive(Debug, Clone)]
enum Damage {
    /// Damage the value of an existing entry.
    Value(Index, Index, Vec<Mutation>),
    /// Move an existing entry to a damaged key.
    Key(Index, Index, Vec<Mutation>),
    /// Add an entry of garbage.
    Garbage(Index, Vec<u8>, Vec<u8>),
    /// Put a hostile value under a key the store reads by name.
    Named(Index, Hostile),
}

/// Values that decode as something else, or claim too much.
#[derive(Debug, Clone)]
enum Hostile {
    MaxU64,
    WrongType,
    Claim(u64),
    Empty,
    Bytes(Vec<u8>),
}

impl Hostile {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Hostile::MaxU64 => encode(&u64::MAX).unwrap(),
            Hostile::WrongType => encode(&("not", "this", 7u8)).unwrap(),
            Hostile::Claim(n) => {
                let mut b = vec![im_service::codec::FORMAT_VERSION];
                b.extend(mutate::varint(*n));
                b.extend_from_slice(b"abc");
                b
            }
            Hostile::Empty => Vec::new(),
            Hostile::Bytes(b) => b.clone(),
        }
    }
}

/// Keys the store reads by name: (tree, key).
fn named_keys() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("journal", vec![0x02]),
        ("cursors", b"\xffin_flight".to_vec()),
        ("meta", b"sync_mark".to_vec()),
        ("journal", b"\x01sub".to_vec()),
        ("journal", {
            let mut k = vec![0x00];
            k.extend_from_slice(&1u64.to_be_bytes());
            k
        }),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    let hostile = prop_oneof![
        Just(Hostile::MaxU64),
        Just(Hostile::WrongType),
        mutate::claim().prop_map(Hostile::Claim),
        Just(Hostile::Empty),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Hostile::Bytes),
    ];
    let mutations = || proptest::collection::vec(mutate::mutation(), 1..3);
    prop_oneof![
        4 => (any::<Index>(), any::<Index>(), mutations())
            .prop_map(|(t, e, m)| Damage::Value(t, e, m)),
        2 => (any::<Index>(), any::<Index>(), mutations())
            .prop_map(|(t, e, m)| Damage::Key(t, e, m)),
        1 => (
            any::<Index>(),
            proptest::collection::vec(any::<u8>(), 0..24),
            proptest::collection::vec(any::<u8>(), 0..24)
        )
            .prop_map(|(t, k, v)| Damage::Garbage(t, k, v)),
        3 => (any::<Index>(), hostile).prop_map(|(k, h)| Damage::Named(k, h)),
    ]
}

fn apply(db: &sled::Db, damage: &Damage) {
    match damage {
        Damage::Value(t, e, m) | Damage::Key(t, e, m) => {
            let tree = db.open_tree(TREES[t.index(TREES.len())]).unwrap();
            let entries: Vec<_> = tree.iter().map(Result::unwrap).collect();
            if entries.is_empty() {
                return;
            }
            let (k, v) = &entries[e.index(entries.len())];
            if matches!(damage, Damage::Value(..)) {
                tree.insert(k, mutate::apply(v.to_vec(), &[], m)).unwrap();
            } else {
                tree.remove(k).unwrap();
                tree.insert(mutate::apply(k.to_vec(), &[], m), v.clone())
                    .unwrap();
            }
        }
        Damage::Garbage(t, k, v) => {
            let tree = db.open_tree(TREES[t.index(TREES.len())]).unwrap();
            tree.insert(k.as_slice(), v.as_slice()).unwrap();
        }
        Damage::Named(k, h) => {
            let keys = named_keys();
            let (tree, key) = &keys[k.index(keys.len())];
            db.open_tree(tree)
                .unwrap()
                .insert(key.as_slice(), h.bytes())
                .unwrap();
        }
    }
}

/// Bytes stored in all trees (keys and values): what the reads may decode.
fn stored_bytes(db: &sled::Db) -> usize {
    TREES
        .iter()
        .map(|t| {
            db.open_tree(t)
                .unwrap()
                .iter()
                .map(|e| e.map_or(0, |(k, v)| k.len() + v.len()))
                .sum::<usize>()
        })
        .sum()
}

/// Every call of the contract, results kept only when the store was not damaged.
async fn exercise(store: &SledStore, s: &Seeded) -> Vec<String> {
    let mut seen = Vec::new();
    for m in &s.messages {
        seen.push(format!("{:?}", store.message(&m.server_id).await));
        seen.push(format!("{:?}", store.latest(&m.conversation, 20).await));
        seen.push(format!(
            "{:?}",
            store.page_before(&m.conversation, Some(m), 5).await
        ));
        seen.push(format!(
            "{:?}",
            store.page_after(&m.conversation, m, 5).await
        ));
        seen.push(format!("{:?}", store.cursor(&m.conversation).await));
    }
    seen.push(format!("{:?}", store.cursors().await));
    seen.push(format!("{:?}", store.in_flight().await));
    seen.push(format!("{:?}", store.sync_mark().await));
    seen.push(format!("{:?}", store.journal_head().await));
    seen.push(format!("{:?}", store.journal_after(0, 100).await));
    seen.push(format!("{:?}", store.subscriptions().await));
    seen.push(format!("{:?}", store.outbox().await));
    seen.push(format!("{:?}", store.conversation_states().await));
    // Writes over damaged entries.
    let ids: Vec<ServerMsgId> = s.messages.iter().map(|m| m.server_id.clone()).collect();
    seen.push(format!("{:?}", store.put_messages(&s.messages).await));
    seen.push(format!("{:?}", store.begin_delivery(&ids).await));
    let journal: Vec<(ServerMsgId, Origin)> =
        ids.iter().map(|i| (i.clone(), Origin::Online)).collect();
    seen.push(format!(
        "{:?}",
        store.commit_delivery(&s.cursors, &journal).await
    ));
    seen.push(format!("{:?}", store.set_subscription("sub", 1).await));
    seen.push(format!("{:?}", store.remove_subscription("other").await));
    for item in &s.outbox {
        seen.push(format!("{:?}", store.put_outbox(item).await));
        seen.push(format!(
            "{:?}",
            store.remove_outbox(&ClientMsgId::new("x")).await
        ));
    }
    for state in &s.states {
        seen.push(format!("{:?}", store.put_conversation_state(state).await));
    }
    seen
}

#[test]
fn fuzz_sled_store_entries() {
    fuzz(
        "sled_store_entries",
        CASES,
        (seeded(), proptest::collection::vec(damage(), 0..4)),
        |(s, damage)| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let store = SledStore::temporary().unwrap();
            rt.block_on(async {
                store.put_messages(&s.messages).await.unwrap();
                for item in &s.outbox {
                    store.put_outbox(item).await.unwrap();
                }
                for state in &s.states {
                    store.put_conversation_state(state).await.unwrap();
                }
                let first = [(s.messages[0].server_id.clone(), Origin::Offline)];
                store.commit_delivery(&s.cursors, &first).await.unwrap();
                store.set_subscription("sub", 0).await.unwrap();
                store
                    .begin_delivery(&[ServerMsgId::new("in flight")])
                    .await
                    .unwrap();
                store.set_sync_mark(s.sync_mark).await.unwrap();
            });
            if damage.is_empty() {
                // Round trip: what was written reads back.
                rt.block_on(async {
                    for m in &s.messages {
                        let first = s.messages.iter().find(|o| o.server_id == m.server_id);
                        let read = store.message(&m.server_id).await.unwrap();
                        prop_assert_eq!(read.as_ref(), first);
                    }
                    prop_assert_eq!(store.sync_mark().await.unwrap(), Some(s.sync_mark));
                    prop_assert_eq!(store.journal_head().await.unwrap(), 1);
                    prop_assert_eq!(
                        store.in_flight().await.unwrap(),
                        vec![ServerMsgId::new("in flight")]
                    );
                    Ok::<(), TestCaseError>(())
                })?;
            }
            for d in &damage {
                apply(store.raw_db(), d);
            }
            let size = stored_bytes(store.raw_db());
            let (_seen, footprint) = measure(|| rt.block_on(exercise(&store, &s)));
            check_bounded(
                "reading and writing a damaged store",
                footprint,
                (8 << 20) + 256 * size,
                size,
            )?;
            Ok::<(), TestCaseError>(())
        },
    );
}

/// A store whose schema entry is damaged opens with a typed error or not at all, never a
/// panic (the one entry read at open).
#[test]
fn fuzz_sled_store_schema_entry() {
    fuzz(
        "sled_store_schema_entry",
        24,
        prop_oneof![
            Just(Hostile::MaxU64),
            Just(Hostile::WrongType),
            mutate::claim().prop_map(Hostile::Claim),
            Just(Hostile::Empty),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Hostile::Bytes),
        ],
        |hostile| {
            let dir = tempfile::tempdir().unwrap();
            drop(SledStore::open(dir.path()).unwrap());
            {
                let db = raw_open(dir.path());
                db.open_tree("meta")
                    .unwrap()
                    .insert(b"schema_version", hostile.bytes())
                    .unwrap();
                db.flush().unwrap();
            }
            let (opened, footprint) = measure(|| SledStore::open(dir.path()).map(drop));
            check_bounded("opening a damaged store", footprint, 8 << 20, 16)?;
            if opened.is_ok() {
                prop_assert_eq!(
                    im_service::codec::decode::<u32>(&hostile.bytes()),
                    Ok(SCHEMA_VERSION),
                    "a store opened with a schema entry other than the current version"
                );
            }
            Ok(())
        },
    );
}

/// The raw sled handle, waiting (within a deadline) for the lock a dropped store's
/// background threads may still hold.
fn raw_open(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("raw sled open did not get the lock within 10 s: {e}"),
        }
    }
}
