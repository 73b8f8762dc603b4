//! Store benchmark: ingest of pulled pages (200 messages a page, 10,000 messages) through
//! `SledStore::put_messages` and `LogStore::put_messages` (each page flushed) against raw
//! `sled::Tree::apply_batch` in the same run, and a timeline page of 50 from a conversation
//! of 100,000 messages (newest end and middle) on both stores against a raw reverse scan of
//! 50 entries of a sled tree of the same size.
//!
//! Two ingest baselines, both pre-encoded outside the measurement:
//! * `baseline_raw_sled_same_entries`: exactly the entries the store writes (read back from
//!   a store that ingested the same pages), one `apply_batch` per tree per page. The ratio
//!   to it is the store's own cost: encoding, key building, the dedup lookup, the lock.
//! * `reference_raw_sled_one_entry_per_message`: one entry per message, the least any
//!   store could write; it cannot be found by id, so the store's second entry (the id
//!   index) costs what a second sled insert costs (about half, measured).

// A benchmark binary: a panic is how it reports a broken invariant, and criterion macros
// generate undocumented items.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use im_arch::{LogStore, SledStore, Store};
use im_service::{
    ClientMsgId, Content, ConversationId, Message, Seq, ServerMsgId, Timestamp, UserId, codec,
};
use tokio::runtime::Runtime;

const PAGE: usize = 200;
const INGEST_TOTAL: usize = 10_000;
const CONVERSATIONS: usize = 20;
const TIMELINE_TOTAL: usize = 100_000;
const TIMELINE_PAGE: usize = 50;

fn message(conversation: &ConversationId, i: usize) -> Message {
    let sender = UserId::new(format!("user{}", i % 7));
    Message {
        server_id: ServerMsgId::new(format!("m:{i:08}")),
        client_id: ClientMsgId::new(format!("c:{i:08}")),
        conversation: conversation.clone(),
        sender,
        seq: Some(Seq(i as u64 + 1)),
        server_time: Timestamp::from_millis(1_764_000_000_000 + i as i64 * 10),
        client_time: Timestamp::from_millis(1_764_000_000_000 + i as i64 * 10 - 3),
        content: Content::text("x".repeat(100)),
    }
}

/// The pulled pages: `INGEST_TOTAL` messages over `CONVERSATIONS` groups, `PAGE` a page.
fn pulled_pages() -> Vec<Vec<Message>> {
    let conversations: Vec<ConversationId> = (0..CONVERSATIONS)
        .map(|c| ConversationId::group(format!("group-{c}")))
        .collect();
    let all: Vec<Message> = (0..INGEST_TOTAL)
        .map(|i| message(&conversations[i % CONVERSATIONS], i))
        .collect();
    all.chunks(PAGE).map(<[Message]>::to_vec).collect()
}

/// Per page, per message: (index key, messages key, index value, messages value), exactly as
/// a `SledStore` writes them: ingested into a real store, then read back with raw sled.
type Entries = Vec<Vec<(Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>)>>;

fn store_entries(pages: &[Vec<Message>]) -> Entries {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        rt.block_on(async {
            for page in pages {
                store.put_messages(page).await.unwrap();
            }
        });
    }
    let db = sled::open(dir.path()).unwrap();
    let messages = db.open_tree("messages").unwrap();
    let index = db.open_tree("by_server_id").unwrap();
    pages
        .iter()
        .map(|page| {
            page.iter()
                .map(|m| {
                    let id = m.server_id.as_str().as_bytes().to_vec();
                    let index_value = index.get(&id).unwrap().unwrap().to_vec();
                    let key: Vec<u8> = codec::decode(&index_value).unwrap();
                    let value = messages.get(&key).unwrap().unwrap().to_vec();
                    (id, key, index_value, value)
                })
                .collect()
        })
        .collect()
}

fn bench_ingest(c: &mut Criterion, rt: &Runtime) {
    let pages = pulled_pages();
    // The baseline's data, encoded once outside the measurement: (server id, codec bytes).
    let encoded: Vec<Vec<(Vec<u8>, Vec<u8>)>> = pages
        .iter()
        .map(|page| {
            page.iter()
                .map(|m| {
                    (
                        m.server_id.as_str().as_bytes().to_vec(),
                        codec::encode(m).unwrap(),
                    )
                })
                .collect()
        })
        .collect();

    let same_entries = store_entries(&pages);

    let mut group = c.benchmark_group("store_ingest_10000_messages_in_pages_of_200");
    group.throughput(Throughput::Elements(INGEST_TOTAL as u64));
    group.sample_size(20);
    group.bench_function("baseline_raw_sled_same_entries", |b| {
        b.iter_batched(
            || {
                let db = sled::Config::new().temporary(true).open().unwrap();
                let messages = db.open_tree("messages").unwrap();
                let index = db.open_tree("by_server_id").unwrap();
                (db, messages, index)
            },
            |(db, messages, index)| {
                for page in &same_entries {
                    let mut message_batch = sled::Batch::default();
                    let mut index_batch = sled::Batch::default();
                    for (id, key, index_value, value) in page {
                        message_batch.insert(key.as_slice(), value.as_slice());
                        index_batch.insert(id.as_slice(), index_value.as_slice());
                    }
                    messages.apply_batch(message_batch).unwrap();
                    index.apply_batch(index_batch).unwrap();
                }
                (db, messages, index)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("reference_raw_sled_one_entry_per_message", |b| {
        b.iter_batched(
            || {
                let db = sled::Config::new().temporary(true).open().unwrap();
                let tree = db.open_tree("messages").unwrap();
                (db, tree)
            },
            |(db, tree)| {
                for page in &encoded {
                    let mut batch = sled::Batch::default();
                    for (k, v) in page {
                        batch.insert(k.as_slice(), v.as_slice());
                    }
                    tree.apply_batch(batch).unwrap();
                }
                (db, tree)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("sled_store_put_messages", |b| {
        b.iter_batched(
            || SledStore::temporary().unwrap(),
            |store| {
                rt.block_on(async {
                    for page in &pages {
                        let fresh = store.put_messages(page).await.unwrap();
                        assert!(fresh.iter().all(|&n| n));
                    }
                });
                store
            },
            BatchSize::PerIteration,
        )
    });
    // The default durable store, each page flushed (what the sync engine does before it
    // acknowledges), on the real disk like the sled rows.
    group.bench_function("log_store_put_messages_flushed", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = LogStore::open(dir.path()).unwrap();
                (dir, store)
            },
            |(dir, store)| {
                rt.block_on(async {
                    for page in &pages {
                        let fresh = store.put_messages(page).await.unwrap();
                        assert!(fresh.iter().all(|&n| n));
                        store.flush().await.unwrap();
                    }
                });
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn bench_timeline(c: &mut Criterion, rt: &Runtime) {
    let conversation = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let all: Vec<Message> = (0..TIMELINE_TOTAL)
        .map(|i| message(&conversation, i))
        .collect();
    let store = SledStore::temporary().unwrap();
    rt.block_on(async {
        for page in all.chunks(1_000) {
            store.put_messages(page).await.unwrap();
        }
    });
    let middle = &all[TIMELINE_TOTAL / 2];

    // Baseline: a raw tree of the same size, big-endian index keys, same value bytes.
    let db = sled::Config::new().temporary(true).open().unwrap();
    let raw = db.open_tree("raw").unwrap();
    for chunk in all.chunks(1_000) {
        let mut batch = sled::Batch::default();
        for m in chunk {
            let i = m.seq.unwrap().0;
            batch.insert(&i.to_be_bytes()[..], codec::encode(m).unwrap());
        }
        raw.apply_batch(batch).unwrap();
    }
    let raw_middle = middle.seq.unwrap().0.to_be_bytes();

    let mut group = c.benchmark_group("timeline_page_of_50_in_100000_messages");
    group.throughput(Throughput::Elements(TIMELINE_PAGE as u64));
    group.bench_function("baseline_raw_sled_reverse_scan_newest", |b| {
        b.iter(|| {
            raw.iter()
                .rev()
                .take(TIMELINE_PAGE)
                .map(|e| e.unwrap().1.len())
                .sum::<usize>()
        })
    });
    group.bench_function("baseline_raw_sled_reverse_scan_middle", |b| {
        b.iter(|| {
            raw.range(..&raw_middle[..])
                .rev()
                .take(TIMELINE_PAGE)
                .map(|e| e.unwrap().1.len())
                .sum::<usize>()
        })
    });
    group.bench_function("sled_store_page_before_newest", |b| {
        b.iter(|| {
            let page = rt
                .block_on(store.page_before(black_box(&conversation), None, TIMELINE_PAGE))
                .unwrap();
            assert_eq!(page.len(), TIMELINE_PAGE);
            page
        })
    });
    let log_dir = tempfile::tempdir().unwrap();
    let log = LogStore::open(log_dir.path()).unwrap();
    rt.block_on(async {
        for page in all.chunks(1_000) {
            log.put_messages(page).await.unwrap();
        }
        log.flush().await.unwrap();
    });
    for (name, before) in [("newest", None), ("middle", Some(middle))] {
        group.bench_function(format!("log_store_page_before_{name}"), |b| {
            b.iter(|| {
                let page = rt
                    .block_on(log.page_before(black_box(&conversation), before, TIMELINE_PAGE))
                    .unwrap();
                assert_eq!(page.len(), TIMELINE_PAGE);
                page
            })
        });
    }
    group.bench_function("sled_store_page_before_middle", |b| {
        b.iter(|| {
            let page = rt
                .block_on(store.page_before(black_box(&conversation), Some(middle), TIMELINE_PAGE))
                .unwrap();
            assert_eq!(page.len(), TIMELINE_PAGE);
            page
        })
    });
    group.finish();

    // What the log store pays for being in memory: reading 100,000 messages back at open
    // (replaying the log), against sled's open of a store of the same messages.
    drop(log);
    let sled_dir = tempfile::tempdir().unwrap();
    {
        let sled = SledStore::open(sled_dir.path()).unwrap();
        rt.block_on(async {
            for page in all.chunks(1_000) {
                sled.put_messages(page).await.unwrap();
            }
            sled.flush().await.unwrap();
        });
    }
    let mut group = c.benchmark_group("open_a_store_of_100000_messages");
    group.sample_size(10);
    group.bench_function("baseline_sled_store_open", |b| {
        b.iter(|| SledStore::open(sled_dir.path()).unwrap())
    });
    group.bench_function("log_store_open_replaying_the_log", |b| {
        b.iter(|| LogStore::open(log_dir.path()).unwrap())
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    // put_messages never awaits anything but sled calls: a current-thread runtime is enough.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    bench_ingest(c, &rt);
    bench_timeline(c, &rt);
}

criterion_group!(benches, bench);
criterion_main!(benches);
