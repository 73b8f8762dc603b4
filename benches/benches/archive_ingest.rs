//! Archive ingest benchmark: signed `message.stored` callbacks over loopback HTTP into an
//! `im-archive` server on sled, against raw sled inserts of the same messages, in the same
//! run. Every iteration ingests `BATCH` new messages (fresh ids, so nothing is a duplicate).
//!
//! The archive acknowledges a callback only after the store made it durable, so each
//! callback costs one sled flush. The figures separate what that costs from what the
//! service adds:
//! * `baseline_raw_sled_insert`: one pre-encoded `insert` per message, no flush — the raw
//!   sled insert rate;
//! * `baseline_raw_sled_insert_flush_each`: the same with a flush after each insert — the
//!   floor of any store that acknowledges each message durably;
//! * `store_direct_flush_each`: `SledArchive::store` + `flush` per message, no HTTP;
//! * `http_callbacks_sequential`: one callback at a time, as the reference vendor's
//!   dispatcher sends them (verification, JSON, HTTP/1.1 keep-alive, store, flush);
//! * `http_callbacks_16_in_flight`: sixteen callbacks in flight (a vendor delivering in
//!   parallel): flushes of concurrent requests overlap.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use im_archive::{ArchiveConfig, ArchiveServer, ArchiveStore, SledArchive};
use im_service::webhook::{self, CallbackPayload, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use im_service::{
    ClientMsgId, Clock, Content, ConversationId, Message, ServerMsgId, SystemClock, Timestamp,
    UserId, codec,
};

/// Callbacks per measured iteration.
const BATCH: usize = 100;
const SECRET: &[u8] = b"bench secret";

/// Message ids are never reused across iterations or functions.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn fresh_messages() -> Vec<Message> {
    let first = NEXT_ID.fetch_add(BATCH as u64, Ordering::Relaxed);
    (first..first + BATCH as u64)
        .map(|i| {
            let conversation = ConversationId::direct(
                &UserId::new(format!("tenant{}", i % 50)),
                &UserId::new("keeper"),
            );
            Message {
                server_id: ServerMsgId::new(format!("m:{i:010}")),
                client_id: ClientMsgId::new(format!("c:{i:010}")),
                conversation,
                sender: UserId::new("keeper"),
                seq: None,
                server_time: Timestamp::from_millis(1_764_000_000_000 + i as i64),
                client_time: Timestamp::from_millis(1_764_000_000_000 + i as i64),
                content: Content::text("x".repeat(100)),
            }
        })
        .collect()
}

/// Signed callback requests (body, timestamp, signature), built outside the measurement.
fn signed_callbacks() -> Vec<(Vec<u8>, String, String)> {
    let ts = webhook::unix_seconds(SystemClock.now());
    fresh_messages()
        .into_iter()
        .map(|m| {
            let body =
                serde_json::to_vec(&CallbackPayload::message_stored("reference", m)).unwrap();
            let sig = webhook::sign(SECRET, ts, &body);
            (body, ts.to_string(), sig)
        })
        .collect()
}

async fn post(http: &reqwest::Client, url: &str, (body, ts, sig): (Vec<u8>, String, String)) {
    let r = http
        .post(url)
        .header(TIMESTAMP_HEADER, ts)
        .header(SIGNATURE_HEADER, sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let raw_dir = tempfile::tempdir().unwrap();
    let raw = sled::open(raw_dir.path())
        .unwrap()
        .open_tree("raw")
        .unwrap();
    let direct_dir = tempfile::tempdir().unwrap();
    let direct = SledArchive::open(direct_dir.path()).unwrap();
    let served_dir = tempfile::tempdir().unwrap();
    let server = rt.block_on(async {
        ArchiveServer::start(
            ArchiveConfig {
                vendors: HashMap::from([("reference".to_owned(), SECRET.to_vec())]),
                ..ArchiveConfig::default()
            },
            Arc::new(SledArchive::open(served_dir.path()).unwrap()),
        )
        .await
        .unwrap()
    });
    let url = format!("{}/v1/callbacks/reference", server.url());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let mut group = c.benchmark_group("archive_ingest");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    // Pre-encoded like the store would encode them: the baseline measures sled alone.
    let encoded = || -> Vec<(Vec<u8>, Vec<u8>)> {
        fresh_messages()
            .iter()
            .map(|m| {
                (
                    m.server_id.as_str().as_bytes().to_vec(),
                    codec::encode(m).unwrap(),
                )
            })
            .collect()
    };
    group.bench_function("baseline_raw_sled_insert", |b| {
        b.iter_batched(
            encoded,
            |entries| {
                for (k, v) in entries {
                    raw.insert(k, v).unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("baseline_raw_sled_insert_flush_each", |b| {
        b.iter_batched(
            encoded,
            |entries| {
                rt.block_on(async {
                    for (k, v) in entries {
                        raw.insert(k, v).unwrap();
                        raw.flush_async().await.unwrap();
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("store_direct_flush_each", |b| {
        b.iter_batched(
            fresh_messages,
            |messages| {
                rt.block_on(async {
                    for m in messages {
                        direct
                            .store("reference", std::slice::from_ref(&m))
                            .await
                            .unwrap();
                        direct.flush().await.unwrap();
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("http_callbacks_sequential", |b| {
        b.iter_batched(
            signed_callbacks,
            |requests| {
                rt.block_on(async {
                    for r in requests {
                        post(&http, &url, r).await;
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("http_callbacks_16_in_flight", |b| {
        b.iter_batched(
            signed_callbacks,
            |requests| {
                rt.block_on(
                    futures::stream::iter(requests)
                        .map(|r| post(&http, &url, r))
                        .buffer_unordered(16)
                        .collect::<Vec<()>>(),
                )
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    rt.block_on(server.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
