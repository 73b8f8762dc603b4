//! The archive beyond one process (issue 23), figures only: signed `message.stored`
//! callbacks per second into one `im-archive` on sled against 1, 2 and 4 replicas on one
//! PostgreSQL database, and a history page at 1 million stored messages, in one run.
//!
//! `IM_POSTGRES_URL` names the server (`tests/postgres/postgres.sh start 5433`); without it
//! the PostgreSQL rows print `SKIPPED`. Each configuration ingests `--callbacks N` (default
//! 20,000) fresh messages over 50 conversations, 64 callbacks in flight, spread round-robin
//! over the replicas; every replica is an `ArchiveServer` with its own connection pool (8),
//! all in this process and on this machine's two cores with the database: a measurement of
//! what replicas cost and share here, not of a cluster. The page: the newest 50 of one
//! conversation of 1,000,000 rows (bulk-loaded in SQL), and one 500,000 rows deep by cursor,
//! median of 200 reads through `ArchiveStore::page`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use im_archive::{
    ArchiveConfig, ArchiveServer, ArchiveStore, PageQuery, PgArchive, PgConfig, Position,
    SledArchive,
};
use im_service::webhook::{self, CallbackPayload, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use im_service::{
    ClientMsgId, Clock, Content, ConversationId, Message, ServerMsgId, SystemClock, Timestamp,
    UserId,
};

const SECRET: &[u8] = b"bench secret";
const IN_FLIGHT: usize = 64;
const PAGE_ROWS: i64 = 1_000_000;

fn message(i: u64) -> Message {
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
}

async fn server(store: Arc<dyn ArchiveStore>) -> ArchiveServer {
    let config = ArchiveConfig {
        vendors: HashMap::from([("reference".to_owned(), SECRET.to_vec())]),
        ..ArchiveConfig::default()
    };
    ArchiveServer::start(config, store).await.unwrap()
}

/// A fresh database on the server, as a URL.
async fn fresh_database(url: &str, name: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(connection);
    // One statement each: neither may run inside a transaction block.
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;
    format!("{}/{name}", url.rsplit_once('/').unwrap().0)
}

/// `n` callbacks spread over `servers`, `IN_FLIGHT` at once: callbacks per second.
async fn ingest(servers: &[ArchiveServer], n: u64) -> f64 {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let ts = webhook::unix_seconds(SystemClock.now());
    let bodies: Vec<(String, Vec<u8>, String)> = (0..n)
        .map(|i| {
            let body =
                serde_json::to_vec(&CallbackPayload::message_stored("reference", message(i)))
                    .unwrap();
            let sig = webhook::sign(SECRET, ts, &body);
            let url = format!(
                "{}/v1/callbacks/reference",
                servers[i as usize % servers.len()].url()
            );
            (url, body, sig)
        })
        .collect();
    let started = Instant::now();
    futures::stream::iter(bodies)
        .for_each_concurrent(IN_FLIGHT, |(url, body, sig)| {
            let http = &http;
            async move {
                let r = http
                    .post(url)
                    .header(TIMESTAMP_HEADER, ts.to_string())
                    .header(SIGNATURE_HEADER, sig)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        })
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// Median time of `reads` page reads of `query`, in ms.
async fn page_ms(store: &dyn ArchiveStore, query: &PageQuery, reads: usize) -> f64 {
    let mut took = Vec::with_capacity(reads);
    for _ in 0..reads {
        let at = Instant::now();
        let page = store.page(query).await.unwrap();
        took.push(at.elapsed());
        assert_eq!(page.messages.len(), query.limit);
    }
    took.sort();
    im_benches::percentile_ms(&took, 0.5)
}

fn main() {
    let args = im_benches::BenchArgs::parse(std::env::args().skip(1), &["--callbacks"]);
    let callbacks = args.value::<u64>("--callbacks").unwrap_or(20_000);
    let rt = im_benches::runtime("archive", None);
    let url = std::env::var("IM_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let mut figures: Vec<(String, f64)> = Vec::new();
    let mut table =
        String::from("| archive | callbacks/s | vs sled, one process |\n|---|---:|---:|\n");
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let sled = Arc::new(SledArchive::open(dir.path()).unwrap());
        let servers = [server(sled.clone()).await];
        let base = ingest(&servers, callbacks).await;
        assert_eq!(sled.len().await.unwrap(), callbacks);
        println!("sled, one process: {base:.0} callbacks/s");
        table.push_str(&format!("| sled, one process | {base:.0} | 1 |\n"));
        figures.push(("archive_replicas sled: callbacks/s".into(), base));
        for s in servers {
            s.shutdown().await;
        }
        let Some(url) = &url else {
            println!("PostgreSQL: SKIPPED: no IM_POSTGRES_URL (tests/postgres/postgres.sh start 5433)");
            return;
        };
        for replicas in [1usize, 2, 4] {
            let db = fresh_database(url, &format!("im_bench_replicas_{replicas}")).await;
            let mut servers = Vec::new();
            let mut first: Option<Arc<PgArchive>> = None;
            for _ in 0..replicas {
                let store = Arc::new(
                    PgArchive::connect(&PgConfig {
                        max_connections: 8,
                        ..PgConfig::new(&db)
                    })
                    .await
                    .unwrap(),
                );
                first.get_or_insert_with(|| store.clone());
                servers.push(server(store).await);
            }
            let rate = ingest(&servers, callbacks).await;
            let stored = first.unwrap().len().await.unwrap();
            assert_eq!(stored, callbacks, "each callback stored once");
            println!("PostgreSQL, {replicas} replica(s): {rate:.0} callbacks/s ({:.2}× sled)", rate / base);
            table.push_str(&format!(
                "| PostgreSQL, {replicas} replica(s) | {rate:.0} | {:.2} |\n",
                rate / base
            ));
            figures.push((format!("archive_replicas postgres {replicas}: callbacks/s"), rate));
            figures.push((format!("archive_replicas postgres {replicas}: vs sled (×)"), rate / base));
            for s in servers {
                s.shutdown().await;
            }
        }
        // A page at 1,000,000 stored messages, bulk-loaded in SQL (the store's own rows).
        let db = fresh_database(url, "im_bench_page").await;
        let store = PgArchive::connect(&PgConfig::new(&db)).await.unwrap();
        let conv = ConversationId::direct(&UserId::new("tenant0"), &UserId::new("keeper"));
        let template = serde_json::to_string(&Message {
            server_id: ServerMsgId::new("@ID@"),
            client_id: ClientMsgId::new("@ID@"),
            ..message(0)
        })
        .unwrap()
        .replace("1764000000000", "@T@");
        let (client, connection) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(connection);
        // Through the store first: it makes the month's partition the bulk rows land in.
        store.store("reference", &[message(0)]).await.unwrap();
        let loading = Instant::now();
        client
            .execute(
                "INSERT INTO messages (vendor, server_id, conversation, server_time, original, current) \
                 SELECT 'reference', convert_to(id, 'UTF8'), $1, t, j, j FROM ( \
                   SELECT 'm:' || lpad(i::text, 10, '0') AS id, 1764000000000 + i AS t, \
                          replace(replace($2, '@ID@', 'm:' || lpad(i::text, 10, '0')), '@T@', (1764000000000 + i)::text)::json AS j \
                   FROM generate_series(1, $3::bigint) AS i) AS rows",
                &[&conv.to_string().as_bytes(), &template, &PAGE_ROWS],
            )
            .await
            .unwrap();
        client.batch_execute("ANALYZE messages").await.unwrap();
        println!("loaded {PAGE_ROWS} rows in {:.1} s", loading.elapsed().as_secs_f64());
        drop(client);
        let _ = conn.await;
        let newest = PageQuery {
            conversation: conv.clone(),
            from: Timestamp::from_millis(0),
            to: Timestamp::from_millis(i64::MAX),
            before: None,
            limit: 50,
        };
        let deep = PageQuery {
            before: Some(Position {
                time: Timestamp::from_millis(1_764_000_000_000 + PAGE_ROWS / 2),
                id: ServerMsgId::new(format!("m:{:010}", PAGE_ROWS / 2)),
            }),
            ..newest.clone()
        };
        let first_page = page_ms(&store, &newest, 200).await;
        let deep_page = page_ms(&store, &deep, 200).await;
        println!("page of 50 at {PAGE_ROWS} rows: newest {first_page:.3} ms, 500,000 deep {deep_page:.3} ms (median of 200)");
        table.push_str(&format!(
            "\n| history page of 50, 1,000,000 stored (PostgreSQL) | median |\n|---|---:|\n| newest | {first_page:.3} ms |\n| 500,000 deep, by cursor | {deep_page:.3} ms |\n"
        ));
        figures.push(("archive_replicas page newest at 1M: ms".into(), first_page));
        figures.push(("archive_replicas page 500k deep at 1M: ms".into(), deep_page));
    });
    println!("\n{table}");
    im_benches::write_figures("archive_replicas", &figures).unwrap();
}
