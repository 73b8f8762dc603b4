//! Durable writes (issue 16): what "confirmed only once durable" costs, against raw sled
//! with a flush per write or per batch, measured in the same run. Every store lives in a
//! temporary directory on the real disk (`tempfile`, not sled's `temporary`, which is
//! `/dev/shm` on Linux and skips sled's syncs, so every flush would be free).
//!
//! * `durable_send_sequential`, one send at a time, until `send()` returned (its outbox
//!   entry flushed): `imclient_send` (`ImClient::send` on a `SledStore`, never logged in,
//!   so `send()` only queues: the durable enqueue alone, no vendor work) and
//!   `sled_store_put_outbox_flush` (the store alone: `put_outbox` + `Store::flush`), the same
//!   two on the default `LogStore` (`imclient_send_log_store`, `log_store_put_outbox_flush`), against
//!   `baseline_raw_sled_insert_flush_each` (one raw insert of an outbox-sized entry, an
//!   encoded `OutboxItem` of the same content, + `db.flush()`) and
//!   `baseline_raw_sled_outbox_transaction_flush_each` (what `put_outbox` writes, done with
//!   raw sled: one transaction over two trees, + `db.flush()`).
//! * `durable_send_16_concurrent`, sixteen sends at once (sixteen tokio tasks, so that the
//!   store's group commit can share flushes): `imclient_send_16_concurrent` and
//!   `sled_store_16_put_outbox_flush_concurrent`, against sixteen raw insert + flush pairs
//!   and against sixteen raw inserts with one flush (a perfect group commit).
//! * `durable_client_path_64_at_once_8_conversations` (issue 22): one sender and 8
//!   receivers on the reference vendor (TCP, loopback, server in process); a round sends 64
//!   messages at once (8 to each receiver) and ends when the receivers' apps have all 64.
//!   `imclient_log_store` and `imclient_sled_store` (every client an `ImClient` on its own
//!   `LogStore` / `SledStore`) and
//!   `imclient_memory_store`, against `baseline_bare_reference_adapter` (the same sends and
//!   pushes through bare `ReferenceClient`s).
//! * `sync_10000_offline_1000_conversations`: 10,000 messages queued for a user while he is
//!   offline (10 from each of 1,000 senders, one direct conversation each, interleaved so
//!   that each offline batch of 200 spans 200 conversations; queued in process, outside the
//!   measurement), then, measured: build an `ImClient` on a fresh store (a `SledStore` is
//!   opened outside the measurement), subscribe, and `login()` on the reference vendor (TCP
//!   on loopback, server in process) until it has returned (Online) and the reader has all
//!   10,000. `reference_vendor_log_store_durable_reader` (the default store) is the issue's
//!   figure, `reference_vendor_sled_store_durable_reader` the same on sled: a durable
//!   subscription registered before login, read in batches of up to 1,000, each
//!   acknowledged. `..._sled_store_live_reader` reads a live subscription instead (no
//!   journal); `..._memory_store_durable_reader` keeps nothing on disk. Baseline:
//!   `baseline_raw_sled_pages_of_200_flush_each`, raw sled writing exactly the entries the
//!   store writes for the same messages (encoded message + server-id index, read back from a
//!   store), one `apply_batch` per tree per page of 200 and one flush per page. Medians of
//!   every run (time to Online, time to all read) are printed and written as figures, with
//!   the 0.5 s goal.
//!
//! sled switches a process-wide lock into read/write mode at its first transaction, for
//! good; one is run before anything is measured, so every function runs in that mode (as
//! any process using the store does).

// A benchmark binary: a panic is how it reports a broken invariant, and criterion macros
// generate undocumented items.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::{OnceCell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use futures::future::join_all;
use im_arch::{
    ClientEvent, DeliveryPolicy, Filter, ImClient, LogStore, MemoryStore, OutboxItem, SendStatus,
    SledStore, Store,
};
use im_service::memory::{MemoryClient, MemoryVendor};
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{
    ClientMsgId, Content, ConversationId, Message, OutgoingMessage, Seq, ServerMsgId, Timestamp,
    UserId, Vendor, codec,
};
use im_vendor_sim::{ReferenceServer, ServerConfig};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use tokio::runtime::Runtime;

/// Text of every message, sent or received.
const BODY: usize = 100;
/// Sends at once in the concurrent case.
const CONCURRENT: usize = 16;
/// Senders (and conversations) of the offline sync.
const SENDERS: usize = 1_000;
/// Messages each sender queues.
const PER_SENDER: usize = 10;
/// Offline messages per sync.
const TOTAL: usize = SENDERS * PER_SENDER;
/// The vendor's (and the client's) offline batch.
const PAGE: usize = 200;
/// The goal for the whole sync, seconds.
const GOAL_S: f64 = 0.5;

fn body() -> Content {
    Content::text("x".repeat(BODY))
}

/// A raw sled database in a fresh directory on the real disk.
fn raw_db() -> (tempfile::TempDir, sled::Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    (dir, db)
}

fn outbox_key(position: u64, client_id: &ClientMsgId) -> Vec<u8> {
    let mut key = position.to_be_bytes().to_vec();
    key.extend_from_slice(client_id.as_str().as_bytes());
    key
}

/// An outbox entry of the size `send()` writes: an encoded `OutboxItem` of the same content.
fn outbox_value(conversation: &ConversationId) -> Vec<u8> {
    let item = OutboxItem {
        position: 1,
        message: OutgoingMessage::new(conversation.clone(), body(), Timestamp::from_millis(0)),
        status: SendStatus::Sending,
        attempts: 0,
    };
    codec::encode(&item).unwrap()
}

fn bench_send(c: &mut Criterion, rt: &Runtime) {
    let vendor = MemoryVendor::default();
    let alice = vendor.register_user(&UserId::new("alice"));
    let log_alice = alice.clone();
    let bob = vendor.register_user(&UserId::new("bob"));
    let conversation = ConversationId::direct(&alice.user, &bob.user);
    let store_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(store_dir.path()).unwrap());
    // Never logged in: `send()` persists, flushes, announces and returns; nothing goes out.
    let client = Arc::new(
        ImClient::builder(Arc::new(vendor.client()), alice)
            .store(store)
            .build(),
    );

    let (_raw_dir, db) = raw_db();
    let raw = db.open_tree("outbox").unwrap();
    let value = outbox_value(&conversation);
    let ids: Vec<ClientMsgId> = (0..64).map(|_| ClientMsgId::generate()).collect();
    // What `put_outbox` writes, as raw sled does it: one transaction over two trees (the
    // item under its position, the position under the client id).
    let raw_ids = db.open_tree("outbox_ids").unwrap();
    let mut tx_position = 0u64;
    let mut raw_transaction = || {
        tx_position += 1;
        let id = ClientMsgId::generate();
        let key = outbox_key(tx_position, &id);
        let position = codec::encode(&tx_position).unwrap();
        (&raw, &raw_ids)
            .transaction(|(outbox, ids)| {
                ids.get(id.as_str().as_bytes())?;
                outbox.insert(key.as_slice(), value.as_slice())?;
                ids.insert(id.as_str().as_bytes(), position.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .unwrap();
        db.flush().unwrap();
    };
    // The store alone, without the client: `put_outbox` + `Store::flush`.
    let alone_dir = tempfile::tempdir().unwrap();
    let alone = Arc::new(SledStore::open(alone_dir.path()).unwrap());
    let log_alone_dir = tempfile::tempdir().unwrap();
    let log_alone = LogStore::open(log_alone_dir.path()).unwrap();
    let log_client_dir = tempfile::tempdir().unwrap();
    let log_client = {
        let store: Arc<dyn Store> = Arc::new(LogStore::open(log_client_dir.path()).unwrap());
        ImClient::builder(Arc::new(vendor.client()), log_alice.clone())
            .store(store)
            .build()
    };
    let item = || OutboxItem {
        position: 0,
        message: OutgoingMessage::new(conversation.clone(), body(), Timestamp::from_millis(0)),
        status: SendStatus::Sending,
        attempts: 0,
    };
    let mut alone_position = 0u64;
    let mut next_item = || {
        alone_position += 1;
        OutboxItem {
            position: alone_position,
            ..item()
        }
    };

    let mut position = 0u64;
    let mut raw_insert = |flush: bool| {
        position += 1;
        let id = &ids[position as usize % ids.len()];
        raw.insert(outbox_key(position, id), value.as_slice())
            .unwrap();
        if flush {
            db.flush().unwrap();
        }
    };

    // sled's first transaction switches its process-wide concurrency control to read/write
    // mode for good: do it now, so that every function below runs in the same mode.
    raw.transaction(|_| Ok::<_, ConflictableTransactionError<()>>(()))
        .unwrap();

    let mut group = c.benchmark_group("durable_send_sequential");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.bench_function("baseline_raw_sled_insert_flush_each", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                raw_insert(true);
            }
            start.elapsed()
        })
    });
    group.bench_function("baseline_raw_sled_outbox_transaction_flush_each", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                raw_transaction();
            }
            start.elapsed()
        })
    });
    group.bench_function("sled_store_put_outbox_flush", |b| {
        b.iter_custom(|iters| {
            let items: Vec<OutboxItem> = (0..iters).map(|_| next_item()).collect();
            rt.block_on(async {
                let start = Instant::now();
                for item in &items {
                    alone.put_outbox(item).await.unwrap();
                    alone.flush().await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("log_store_put_outbox_flush", |b| {
        b.iter_custom(|iters| {
            let items: Vec<OutboxItem> = (0..iters).map(|_| next_item()).collect();
            rt.block_on(async {
                let start = Instant::now();
                for item in &items {
                    log_alone.put_outbox(item).await.unwrap();
                    log_alone.flush().await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("imclient_send_log_store", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    log_client.send(conversation.clone(), body()).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("imclient_send", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    client.send(conversation.clone(), body()).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("durable_send_16_concurrent");
    group.throughput(Throughput::Elements(CONCURRENT as u64));
    group.sample_size(30);
    group.bench_function("baseline_raw_sled_16_inserts_flush_each", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for _ in 0..CONCURRENT {
                    raw_insert(true);
                }
            }
            start.elapsed()
        })
    });
    group.bench_function("baseline_raw_sled_16_inserts_one_flush", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for _ in 0..CONCURRENT {
                    raw_insert(false);
                }
                db.flush().unwrap();
            }
            start.elapsed()
        })
    });
    group.bench_function("sled_store_16_put_outbox_flush_concurrent", |b| {
        b.iter_custom(|iters| {
            let items: Vec<OutboxItem> = (0..iters as usize * CONCURRENT)
                .map(|_| next_item())
                .collect();
            rt.block_on(async {
                let start = Instant::now();
                for round in items.chunks(CONCURRENT) {
                    let writes = round.iter().cloned().map(|item| {
                        let store = alone.clone();
                        tokio::spawn(async move {
                            store.put_outbox(&item).await?;
                            store.flush().await
                        })
                    });
                    for written in join_all(writes).await {
                        written.unwrap().unwrap();
                    }
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("imclient_send_16_concurrent", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let sends = (0..CONCURRENT).map(|_| {
                        let client = client.clone();
                        let conversation = conversation.clone();
                        tokio::spawn(async move { client.send(conversation, body()).await })
                    });
                    for sent in join_all(sends).await {
                        sent.unwrap().unwrap();
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// The reference vendor over TCP, and 1,000 senders logged in in process (on the server's
/// own storage engine: queueing the offline messages is setup, not measured).
struct SyncFixture {
    server: ReferenceServer,
    vendor: ReferenceVendor,
    senders: Vec<(MemoryClient, UserId)>,
    /// Each sync has its own receiver, so each starts with fresh conversations (sequence 1)
    /// as a fresh store expects.
    next_receiver: usize,
}

impl SyncFixture {
    async fn start() -> Self {
        let config = ServerConfig {
            // Retention sweeps scan every stored message; tens of thousands pile up over
            // the run, and a sweep every second would only add noise.
            sweep_interval: Duration::from_secs(3600),
            ..ServerConfig::default()
        };
        let server = ReferenceServer::start(config).await.unwrap();
        let vendor = ReferenceVendor::discover(server.addr(), ReferenceConfig::default())
            .await
            .unwrap();
        let mut senders = Vec::with_capacity(SENDERS);
        for i in 0..SENDERS {
            let creds = server
                .vendor()
                .register_user(&UserId::new(format!("sender{i:04}")));
            let client = server.vendor().client();
            client.login(&creds).await.unwrap();
            senders.push((client, creds.user));
        }
        Self {
            server,
            vendor,
            senders,
            next_receiver: 0,
        }
    }

    /// A new receiver with `TOTAL` messages waiting in his offline queue, interleaved over
    /// the senders (each page of 200 spans 200 conversations).
    async fn queue_offline(&mut self) -> im_service::Credentials {
        self.next_receiver += 1;
        let receiver = self
            .server
            .vendor()
            .register_user(&UserId::new(format!("receiver{}", self.next_receiver)));
        let now = self.server.vendor().now();
        for _ in 0..PER_SENDER {
            for (client, user) in &self.senders {
                let message =
                    OutgoingMessage::new(ConversationId::direct(user, &receiver.user), body(), now);
                client.send(&message).await.unwrap();
            }
        }
        assert_eq!(self.server.vendor().offline_len(&receiver.user), TOTAL);
        receiver
    }
}

/// Who reads the delivered messages during a sync.
#[derive(Clone, Copy)]
enum Reader {
    /// A durable subscription, registered before login, read in batches of up to 1,000,
    /// each acknowledged (durable when `ack` returns).
    Durable,
    /// A live subscription with a queue big enough for everything (no durable
    /// subscription: the client keeps no journal).
    Live,
}

/// One measured sync: client built, the reader subscribed, `login()` until Online while
/// the reader takes all `TOTAL` messages. Returns (time to Online, time to all read).
async fn sync_once(
    fixture: &SyncFixture,
    receiver: im_service::Credentials,
    store: Arc<dyn Store>,
    reader: Reader,
) -> (Duration, Duration) {
    let start = Instant::now();
    let client = ImClient::builder(Arc::new(fixture.vendor.client()), receiver)
        .store(store)
        .build();
    let (online, delivered) = match reader {
        Reader::Durable => read_durable(&client, start).await,
        Reader::Live => read_live(&client, start).await,
    };
    client.logout().await;
    (online, delivered.max(online))
}

async fn read_live(client: &ImClient, start: Instant) -> (Duration, Duration) {
    let mut events = client.subscribe_with(
        Filter::all(),
        DeliveryPolicy::DropOldest {
            capacity: 8 * TOTAL,
        },
    );
    let login = async {
        client.login().await.unwrap();
        start.elapsed()
    };
    let read = async {
        let mut got = 0;
        while got < TOTAL {
            match events.next().await.as_deref() {
                Some(ClientEvent::Message(_)) => got += 1,
                Some(ClientEvent::Lagged { dropped }) => panic!("live reader lost {dropped}"),
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
        start.elapsed()
    };
    tokio::join!(login, read)
}

async fn read_durable(client: &ImClient, start: Instant) -> (Duration, Duration) {
    let mut ledger = client.durable_subscription("bench").await.unwrap();
    let login = async {
        client.login().await.unwrap();
        start.elapsed()
    };
    let read = async {
        let mut got = 0;
        let mut last = 0;
        while got < TOTAL {
            let batch = ledger.next_batch(1_000).await.unwrap();
            got += batch.len();
            let position = batch.last().unwrap().position;
            assert_eq!(
                position,
                last + batch.len() as u64,
                "journal positions skip"
            );
            last = position;
            ledger.ack(position).await.unwrap();
        }
        assert_eq!(got, TOTAL);
        start.elapsed()
    };
    tokio::join!(login, read)
}

/// Messages shaped as the vendor stores them (ids `m:N`, sequences per conversation,
/// interleaved as queued), in pages of `PAGE`.
fn vendor_shaped_pages() -> Vec<Vec<Message>> {
    let receiver = UserId::new("receiver-baseline");
    let now = Timestamp::from_millis(1_764_000_000_000);
    let mut all = Vec::with_capacity(TOTAL);
    for j in 0..PER_SENDER {
        for i in 0..SENDERS {
            let sender = UserId::new(format!("sender{i:04}"));
            all.push(Message {
                server_id: ServerMsgId::new(format!("m:{}", 1_000_000 + all.len())),
                client_id: ClientMsgId::generate(),
                conversation: ConversationId::direct(&sender, &receiver),
                sender,
                seq: Some(Seq(j as u64 + 1)),
                server_time: now,
                client_time: now,
                content: body(),
            });
        }
    }
    all.chunks(PAGE).map(<[Message]>::to_vec).collect()
}

/// Per page, per message: (index key, messages key, index value, messages value), exactly
/// as a `SledStore` writes them: ingested into a real store, then read back with raw sled.
type Entries = Vec<Vec<(Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>)>>;

fn store_entries(rt: &Runtime, pages: &[Vec<Message>]) -> Entries {
    let dir = tempfile::tempdir().unwrap();
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

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A store for one sync run, on the real disk where it is a sled one.
#[derive(Clone, Copy)]
enum StoreKind {
    Log,
    Sled,
    Memory,
}

fn bench_sync(c: &mut Criterion, rt: &Runtime) {
    // Set up on first use: a filtered run that skips this group skips the setup too.
    let fixture: RefCell<Option<SyncFixture>> = RefCell::new(None);
    let entries = OnceCell::new();
    let raw_times = RefCell::new(Vec::new());

    let mut group = c.benchmark_group("sync_10000_offline_1000_conversations");
    group.throughput(Throughput::Elements(TOTAL as u64));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("baseline_raw_sled_pages_of_200_flush_each", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let entries = entries.get_or_init(|| store_entries(rt, &vendor_shaped_pages()));
                let (dir, db) = raw_db();
                let messages = db.open_tree("messages").unwrap();
                let index = db.open_tree("by_server_id").unwrap();
                let start = Instant::now();
                for page in entries {
                    let mut message_batch = sled::Batch::default();
                    let mut index_batch = sled::Batch::default();
                    for (id, key, index_value, value) in page {
                        message_batch.insert(key.as_slice(), value.as_slice());
                        index_batch.insert(id.as_slice(), index_value.as_slice());
                    }
                    messages.apply_batch(message_batch).unwrap();
                    index.apply_batch(index_batch).unwrap();
                    db.flush().unwrap();
                }
                let took = start.elapsed();
                raw_times.borrow_mut().push(took);
                total += took;
                drop((messages, index, db, dir));
            }
            total
        })
    });
    let variants = [
        (
            "reference_vendor_log_store_durable_reader",
            StoreKind::Log,
            Reader::Durable,
        ),
        (
            "reference_vendor_sled_store_durable_reader",
            StoreKind::Sled,
            Reader::Durable,
        ),
        (
            "reference_vendor_sled_store_live_reader",
            StoreKind::Sled,
            Reader::Live,
        ),
        (
            "reference_vendor_memory_store_durable_reader",
            StoreKind::Memory,
            Reader::Durable,
        ),
    ];
    let mut medians = Vec::new();
    for (name, kind, reader) in variants {
        let times = RefCell::new(Vec::new());
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut fixture = fixture.borrow_mut();
                let fixture = fixture.get_or_insert_with(|| rt.block_on(SyncFixture::start()));
                for _ in 0..iters {
                    let receiver = rt.block_on(fixture.queue_offline());
                    let dir = tempfile::tempdir().unwrap();
                    let store: Arc<dyn Store> = match kind {
                        StoreKind::Sled => Arc::new(SledStore::open(dir.path()).unwrap()),
                        StoreKind::Log => Arc::new(LogStore::open(dir.path()).unwrap()),
                        StoreKind::Memory => Arc::new(MemoryStore::new()),
                    };
                    let (online, delivered) =
                        rt.block_on(sync_once(fixture, receiver, store, reader));
                    times.borrow_mut().push((online, delivered));
                    total += delivered;
                    drop(dir);
                }
                total
            })
        });
        let times = times.into_inner();
        if times.is_empty() {
            continue; // filtered out
        }
        let online: Vec<Duration> = times.iter().map(|t| t.0).collect();
        let delivered: Vec<Duration> = times.iter().map(|t| t.1).collect();
        medians.push((name, median(&online), median(&delivered), times.len()));
    }
    group.finish();

    let raw = raw_times.into_inner();
    let mut figures = Vec::new();
    if !raw.is_empty() {
        println!(
            "baseline_raw_sled_pages_of_200_flush_each: median {:.1} ms over {} runs",
            ms(median(&raw)),
            raw.len()
        );
        figures.push((
            format!("sync {TOTAL} offline: raw sled pages of {PAGE} + flush each, median (ms)"),
            ms(median(&raw)),
        ));
    }
    for (name, online, delivered, runs) in &medians {
        println!(
            "{name}: medians over {runs} runs (warm-up included): Online {:.1} ms, \
             all {TOTAL} read {:.1} ms",
            ms(*online),
            ms(*delivered)
        );
        figures.push((format!("{name}: to Online, median (ms)"), ms(*online)));
        figures.push((format!("{name}: all read, median (ms)"), ms(*delivered)));
    }
    if let Some(&(_, _, durable, _)) = medians
        .iter()
        .find(|m| m.0 == "reference_vendor_log_store_durable_reader")
    {
        let met = durable.as_secs_f64() < GOAL_S;
        println!(
            "goal: {TOTAL} offline messages over {SENDERS} conversations Online and all \
             delivered under {GOAL_S} s with durable writes: {} ({:.1} ms)",
            if met { "met" } else { "NOT met" },
            ms(durable)
        );
        figures.push((
            format!("sync goal under {GOAL_S} s, durable store and reader (1 = met)"),
            f64::from(u8::from(met)),
        ));
    }
    if !figures.is_empty() {
        im_benches::write_figures("durable", &figures).unwrap();
    }
}

/// Conversations (receivers) of the client-path group.
const FANOUT: usize = 8;
/// Messages per conversation in one round of the client-path group.
const PER_CONVERSATION: usize = 8;
/// Messages per round of the client-path group.
const ROUND: usize = FANOUT * PER_CONVERSATION;

/// One sender and `FANOUT` receivers on the reference vendor (TCP, loopback), either bare
/// adapters or `ImClient`s on a store made by `store` (`None`: bare adapters).
struct PairFixture {
    _server: ReferenceServer,
    _dirs: Vec<tempfile::TempDir>,
    sender: Sender,
    receivers: Vec<Sender>,
    to: Vec<ConversationId>,
    events: futures::stream::BoxStream<'static, bool>,
}

enum Sender {
    Bare(Arc<im_service::reference::ReferenceClient>),
    Client(Arc<ImClient>),
}

#[derive(Clone, Copy)]
enum PairKind {
    Bare,
    Memory,
    Log,
    Sled,
}

impl PairFixture {
    async fn start(kind: PairKind) -> Self {
        let config = ServerConfig {
            sweep_interval: Duration::from_secs(3600),
            ..ServerConfig::default()
        };
        let server = ReferenceServer::start(config).await.unwrap();
        let vendor = ReferenceVendor::discover(server.addr(), ReferenceConfig::default())
            .await
            .unwrap();
        let mut dirs = Vec::new();
        let mut store = || -> Arc<dyn Store> {
            match kind {
                PairKind::Sled => {
                    let dir = tempfile::tempdir().unwrap();
                    let store = SledStore::open(dir.path()).unwrap();
                    dirs.push(dir);
                    Arc::new(store)
                }
                PairKind::Log => {
                    let dir = tempfile::tempdir().unwrap();
                    let store = LogStore::open(dir.path()).unwrap();
                    dirs.push(dir);
                    Arc::new(store)
                }
                _ => Arc::new(MemoryStore::new()),
            }
        };
        let me = server.vendor().register_user(&UserId::new("sender"));
        let mut to = Vec::new();
        let mut streams: Vec<futures::stream::BoxStream<'static, bool>> = Vec::new();
        let mut receivers = Vec::new();
        for i in 0..FANOUT {
            let creds = server
                .vendor()
                .register_user(&UserId::new(format!("receiver{i}")));
            to.push(ConversationId::direct(&me.user, &creds.user));
            match kind {
                PairKind::Bare => {
                    let client = vendor.client();
                    let events = client.take_events().unwrap();
                    client.login(&creds).await.unwrap();
                    client.go_online().await.unwrap();
                    streams.push(Box::pin(
                        events.map(|e| matches!(e, im_service::VendorEvent::MessagePushed(_))),
                    ));
                    receivers.push(Sender::Bare(Arc::new(client)));
                }
                _ => {
                    let client = ImClient::builder(Arc::new(vendor.client()), creds)
                        .store(store())
                        .build();
                    let sub = client.subscribe_with(
                        Filter::all(),
                        DeliveryPolicy::DropOldest { capacity: 1 << 20 },
                    );
                    client.login().await.unwrap();
                    streams.push(Box::pin(sub.map(|e| matches!(*e, ClientEvent::Message(_)))));
                    receivers.push(Sender::Client(Arc::new(client)));
                }
            }
        }
        let sender = match kind {
            PairKind::Bare => {
                let client = vendor.client();
                client.login(&me).await.unwrap();
                Sender::Bare(Arc::new(client))
            }
            _ => {
                let client = ImClient::builder(Arc::new(vendor.client()), me)
                    .store(store())
                    .build();
                client.login().await.unwrap();
                Sender::Client(Arc::new(client))
            }
        };
        Self {
            _server: server,
            _dirs: dirs,
            sender,
            receivers,
            to,
            events: Box::pin(futures::stream::select_all(streams)),
        }
    }

    /// Sends `ROUND` messages at once (`PER_CONVERSATION` to each receiver) and waits until
    /// the receivers' apps have all of them.
    async fn round(&mut self) {
        let sends = (0..ROUND).map(|i| {
            let to = self.to[i % FANOUT].clone();
            match &self.sender {
                Sender::Bare(c) => {
                    let c = c.clone();
                    tokio::spawn(async move {
                        let message = OutgoingMessage::new(to, body(), Timestamp::from_millis(0));
                        c.send(&message)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                }
                Sender::Client(c) => {
                    let c = c.clone();
                    tokio::spawn(async move {
                        c.send(to, body())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                }
            }
        });
        for sent in join_all(sends).await {
            sent.unwrap().unwrap();
        }
        let mut got = 0;
        while got < ROUND {
            if self.events.next().await.unwrap() {
                got += 1;
            }
        }
    }
}

/// Issue 22: the client path on a durable store against the bare adapter, same run.
fn bench_client_path(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("durable_client_path_64_at_once_8_conversations");
    group.throughput(Throughput::Elements(ROUND as u64));
    group.sample_size(20);
    for (name, kind) in [
        ("baseline_bare_reference_adapter", PairKind::Bare),
        ("imclient_memory_store", PairKind::Memory),
        ("imclient_log_store", PairKind::Log),
        ("imclient_sled_store", PairKind::Sled),
    ] {
        let fixture = RefCell::new(None::<PairFixture>);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    // Taken out for the rounds (no `RefCell` borrow across an await),
                    // put back for the next sample.
                    let taken = fixture.borrow_mut().take();
                    let mut f = match taken {
                        Some(f) => f,
                        None => PairFixture::start(kind).await,
                    };
                    let start = Instant::now();
                    for _ in 0..iters {
                        f.round().await;
                    }
                    let elapsed = start.elapsed();
                    *fixture.borrow_mut() = Some(f);
                    elapsed
                })
            })
        });
        if let Some(f) = fixture.borrow_mut().take() {
            rt.block_on(async move {
                for s in f.receivers.iter().chain([&f.sender]) {
                    match s {
                        Sender::Client(c) => c.logout().await,
                        Sender::Bare(c) => {
                            let _ = c.logout().await;
                        }
                    }
                }
                drop(f);
            });
        }
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    bench_send(c, &rt);
    bench_client_path(c, &rt);
    bench_sync(c, &rt);
}

criterion_group!(benches, bench);
criterion_main!(benches);
