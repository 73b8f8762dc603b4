//! The archive on PostgreSQL (issue 23), against a real server named by `IM_POSTGRES_URL`
//! (`tests/postgres/postgres.sh` starts a private cluster; CI sets `IM_REQUIRE_POSTGRES=1`,
//! so a missing server fails there instead of skipping): several archive replicas on one
//! database store each callback once and serve the same history; a newer schema is refused;
//! a database that is away is a quick `Unavailable`, never a hang.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
mod pg_support;
use pg_support::{fresh_database, server_url};

use im_archive::{
    ArchiveConfig, ArchiveError, ArchiveServer, ArchiveStore, CallbackOutcome, PageQuery,
    PgArchive, PgConfig,
};
use im_service::webhook::{self, CallbackPayload, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use im_service::{
    ClientMsgId, Clock, Content, ConversationId, HistoryPage, Message, ServerMsgId, SystemClock,
    Timestamp, UserId,
};

const SECRET: &[u8] = b"reference callback secret";

fn msg(conv: &ConversationId, sender: &str, id: &str, time: i64) -> Message {
    Message {
        server_id: ServerMsgId::new(id),
        client_id: ClientMsgId::new(format!("c-{id}")),
        conversation: conv.clone(),
        sender: UserId::new(sender),
        seq: None,
        server_time: Timestamp::from_millis(time),
        client_time: Timestamp::from_millis(time),
        content: Content::Text(format!("body {id}")),
    }
}

/// An archive replica on `url`: its own connection pool and HTTP server.
async fn replica(url: &str) -> (ArchiveServer, Arc<PgArchive>) {
    let store = Arc::new(PgArchive::connect(&PgConfig::new(url)).await.unwrap());
    let users = ["alice", "bob", "carol", "dave"];
    let config = ArchiveConfig {
        vendors: HashMap::from([("reference".to_owned(), SECRET.to_vec())]),
        tokens: users
            .iter()
            .map(|u| (format!("tok-{u}"), UserId::new(*u)))
            .collect(),
        groups: HashMap::new(),
        clock: Arc::new(SystemClock),
        ..ArchiveConfig::default()
    };
    let server = ArchiveServer::start(config, store.clone()).await.unwrap();
    (server, store)
}

/// POSTs `m` as a signed `message.stored` callback to `server`; the outcome it answered.
async fn deliver(http: &reqwest::Client, server: &ArchiveServer, m: &Message) -> CallbackOutcome {
    let body =
        serde_json::to_vec(&CallbackPayload::message_stored("reference", m.clone())).unwrap();
    let ts = webhook::unix_seconds(SystemClock.now());
    let sig = webhook::sign(SECRET, ts, &body);
    // The vendor retries any non-2xx; so does this test, within a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .post(format!("{}/v1/callbacks/reference", server.url()))
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, sig.clone())
            .body(body.clone())
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 200
        {
            return serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "callback {} not accepted within 60 s",
            m.server_id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every page of `conv` read from `server` by `token`, newest first.
async fn history(
    http: &reqwest::Client,
    server: &ArchiveServer,
    conv: &ConversationId,
    token: &str,
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "{}/v1/history?conversation={}&limit=100",
            server.url(),
            conv.to_string().replace(':', "%3A")
        );
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", c.replace(':', "%3A")));
        }
        let r = http.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let page: HistoryPage = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        out.extend(page.messages);
        match page.next {
            Some(next) => cursor = Some(next.0),
            None => return out,
        }
    }
}

/// Issue 23's replica test: 10,000 callbacks spread over three replicas of one database,
/// 10% of them delivered again to a different replica: exactly 10,000 stored, every
/// redelivery answered `duplicate`, and the history is the same from each replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_callbacks_over_three_replicas_are_stored_once() {
    let Some(url) = server_url() else { return };
    let url = fresh_database(&url).await;
    let replicas = [
        replica(&url).await,
        replica(&url).await,
        replica(&url).await,
    ];
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let users = ["alice", "bob", "carol", "dave"];
    let conversations: Vec<ConversationId> = (0..users.len())
        .flat_map(|a| (a + 1..users.len()).map(move |b| (a, b)))
        .map(|(a, b)| ConversationId::direct(&UserId::new(users[a]), &UserId::new(users[b])))
        .collect();
    let messages: Vec<Message> = (0..10_000)
        .map(|i| {
            let conv = &conversations[i % conversations.len()];
            let sender = match conv {
                ConversationId::Direct { low, .. } => low.as_str().to_owned(),
                ConversationId::Group(_) => unreachable!("direct conversations only"),
            };
            msg(
                conv,
                &sender,
                &format!("m{i:05}"),
                1_800_000_000_000 + i as i64,
            )
        })
        .collect();
    // (message, replica, whether it is the redelivery), 32 callbacks in flight.
    let mut deliveries: Vec<(usize, usize, bool)> =
        (0..messages.len()).map(|i| (i, i % 3, false)).collect();
    deliveries.extend(
        (0..messages.len())
            .filter(|i| i % 10 == 0)
            .map(|i| (i, (i + 1) % 3, true)),
    );
    let outcomes: Vec<(bool, CallbackOutcome)> = futures::stream::iter(deliveries)
        .map(|(i, r, again)| {
            let http = &http;
            let replicas = &replicas;
            let messages = &messages;
            async move { (again, deliver(http, &replicas[r].0, &messages[i]).await) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let duplicates = outcomes
        .iter()
        .filter(|(_, o)| *o == CallbackOutcome::Duplicate)
        .count();
    assert_eq!(
        duplicates, 1_000,
        "each redelivery, and only those, is a duplicate"
    );
    for (_, store) in &replicas {
        assert_eq!(store.len().await.unwrap(), 10_000, "stored exactly once");
    }
    for conv in &conversations {
        let token = match conv {
            ConversationId::Direct { low, .. } => format!("tok-{low}"),
            ConversationId::Group(_) => unreachable!("direct conversations only"),
        };
        let from_each = [
            history(&http, &replicas[0].0, conv, &token).await,
            history(&http, &replicas[1].0, conv, &token).await,
            history(&http, &replicas[2].0, conv, &token).await,
        ];
        let expected = messages.iter().filter(|m| m.conversation == *conv).count();
        assert_eq!(from_each[0].len(), expected, "every message of {conv}");
        assert_eq!(
            from_each[0], from_each[1],
            "replicas 0 and 1 agree on {conv}"
        );
        assert_eq!(
            from_each[0], from_each[2],
            "replicas 0 and 2 agree on {conv}"
        );
    }
}

/// A database whose schema is newer than this build is refused by name, and left as it was.
#[tokio::test]
async fn a_newer_schema_is_refused_and_left_alone() {
    let Some(url) = server_url() else { return };
    let url = fresh_database(&url).await;
    let store = PgArchive::connect(&PgConfig::new(&url)).await.unwrap();
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    store
        .store("reference", &[msg(&conv, "alice", "a", 1)])
        .await
        .unwrap();
    drop(store);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(connection);
    client
        .batch_execute("INSERT INTO im_archive_schema (version) VALUES (99)")
        .await
        .unwrap();
    let refused = PgArchive::connect(&PgConfig::new(&url)).await.unwrap_err();
    assert!(
        refused.to_string().contains("schema version 99"),
        "the refusal names the version: {refused}"
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the newer database was left as it was");
    drop(client);
    let _ = conn.await;
}

/// No database there: a quick, typed `Unavailable` (503 to a caller), never a hang.
#[tokio::test]
async fn a_database_that_is_away_is_unavailable_quickly() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = PgConfig {
        wait: Duration::from_millis(500),
        ..PgConfig::new(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), PgArchive::connect(&config))
        .await
        .expect("the connect gave up within its wait, no hang");
    assert!(
        matches!(outcome, Err(ArchiveError::Unavailable(_))),
        "a database that is away is Unavailable: {outcome:?}"
    );
    assert_eq!(
        ArchiveError::Unavailable(String::new()).status(),
        503,
        "answered 503"
    );
}

/// Pages by (time, id) newest first: ids compare bytewise ("B" before "a"), as the other
/// stores order them; a message carrying a NUL character is stored and read back whole.
#[tokio::test]
async fn ids_order_bytewise_within_a_millisecond() {
    let Some(url) = server_url() else { return };
    let url = fresh_database(&url).await;
    let store = PgArchive::connect(&PgConfig::new(&url)).await.unwrap();
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    store
        .store(
            "reference",
            &[
                msg(&conv, "alice", "a", 5),
                msg(&conv, "alice", "B", 5),
                msg(&conv, "alice", "_", 5),
                Message {
                    content: Content::Text("a NUL \u{0} inside".into()),
                    ..msg(&conv, "alice", "nul", 1)
                },
            ],
        )
        .await
        .unwrap();
    let page = store
        .page(&PageQuery {
            conversation: conv,
            from: Timestamp::from_millis(0),
            to: Timestamp::from_millis(10),
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    let ids: Vec<&str> = page.messages.iter().map(|m| m.server_id.as_str()).collect();
    assert_eq!(
        ids,
        ["a", "_", "B", "nul"],
        "newest first, ids bytewise descending"
    );
    assert_eq!(
        page.messages[3].content,
        Content::Text("a NUL \u{0} inside".into()),
        "a NUL character is kept"
    );
}

/// A private cluster this test may stop and start (`tests/postgres/postgres.sh`), stopped by
/// PID when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    script: std::path::PathBuf,
}

impl Cluster {
    /// Starts one on a free port; `None` (skipped) where no PostgreSQL server is installed
    /// and none is required.
    fn start() -> Option<Self> {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/postgres/postgres.sh");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self { dir, script };
        if !cluster.run(&["start", &port.to_string()]) {
            assert!(
                std::env::var("IM_REQUIRE_POSTGRES").is_err(),
                "IM_REQUIRE_POSTGRES is set but tests/postgres/postgres.sh could not start a cluster"
            );
            eprintln!("skipped: no PostgreSQL server to start (install Debian's postgresql)");
            return None;
        }
        Some(cluster)
    }

    fn run(&self, args: &[&str]) -> bool {
        std::process::Command::new(&self.script)
            .args(args)
            .env("IM_POSTGRES_DIR", self.dir.path().join("pg"))
            .status()
            .is_ok_and(|s| s.success())
    }

    fn url(&self) -> String {
        let port = std::fs::read_to_string(self.dir.path().join("pg/port")).unwrap();
        format!("postgres://postgres@127.0.0.1:{}/postgres", port.trim())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.run(&["stop"]);
    }
}

/// Issue 23's restart test: PostgreSQL stopped and started again while 5,000 callbacks
/// arrive. While it is away the archive answers 503 with `Retry-After` (the vendor retries),
/// `/readyz` says so, and nothing hangs; when it is back the archive is ready again by itself,
/// and every message is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_during_ingest_loses_and_doubles_nothing() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let cluster = Arc::new(cluster);
    let url = cluster.url();
    let (server, store) = replica(&url).await;
    let server = Arc::new(server);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let messages: Vec<Message> = (0..5_000)
        .map(|i| msg(&conv, "alice", &format!("r{i:05}"), 1_800_000_000_000 + i))
        .collect();
    let acknowledged = Arc::new(AtomicU32::new(0));
    let refusals = Arc::new(parking_lot::Mutex::new(Vec::<(u16, Option<String>)>::new()));
    let ingest = {
        let (server, http, acknowledged, refusals) = (
            server.clone(),
            http.clone(),
            acknowledged.clone(),
            refusals.clone(),
        );
        tokio::spawn(async move {
            futures::stream::iter(messages)
                .for_each_concurrent(16, |m| {
                    let (server, http, acknowledged, refusals) =
                        (&server, &http, &acknowledged, &refusals);
                    async move {
                        let body = serde_json::to_vec(&CallbackPayload::message_stored(
                            "reference",
                            m.clone(),
                        ))
                        .unwrap();
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                        loop {
                            let ts = webhook::unix_seconds(SystemClock.now());
                            let r = http
                                .post(format!("{}/v1/callbacks/reference", server.url()))
                                .header(TIMESTAMP_HEADER, ts.to_string())
                                .header(SIGNATURE_HEADER, webhook::sign(SECRET, ts, &body))
                                .body(body.clone())
                                .timeout(Duration::from_secs(30))
                                .send()
                                .await
                                .expect("the archive answers, even while its database is away");
                            if r.status() == 200 {
                                acknowledged.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            let retry_after = r
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            refusals.lock().push((r.status().as_u16(), retry_after));
                            assert!(
                                tokio::time::Instant::now() < deadline,
                                "{} not stored within 120 s",
                                m.server_id
                            );
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                })
                .await;
        })
    };
    // A fifth in, the database goes away for two seconds.
    let wait_until = |n: u32| {
        let acknowledged = acknowledged.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while acknowledged.load(Ordering::SeqCst) < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "ingest stalled below {n}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_until(1_000).await;
    let c = cluster.clone();
    assert!(
        tokio::task::spawn_blocking(move || c.run(&["down"]))
            .await
            .unwrap(),
        "the cluster stopped"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = http
        .get(format!("{}/readyz", server.url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 503, "/readyz reflects the database being away");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let c = cluster.clone();
    assert!(
        tokio::task::spawn_blocking(move || c.run(&["up"]))
            .await
            .unwrap(),
        "the cluster started again"
    );
    tokio::time::timeout(Duration::from_secs(180), ingest)
        .await
        .expect("ingest finished after the restart")
        .unwrap();
    assert_eq!(acknowledged.load(Ordering::SeqCst), 5_000);
    assert_eq!(
        store.len().await.unwrap(),
        5_000,
        "each message stored once"
    );
    let refused = refusals.lock().clone();
    assert!(
        !refused.is_empty(),
        "callbacks arrived while the database was away"
    );
    assert!(
        refused
            .iter()
            .all(|(status, retry)| *status == 503 && retry.is_some()),
        "while away: 503 with Retry-After, nothing else: {:?}",
        &refused[..refused.len().min(5)]
    );
    let ready = http
        .get(format!("{}/readyz", server.url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 200, "ready again by itself");
    let stored = history(&http, &server, &conv, "tok-alice").await;
    assert_eq!(stored.len(), 5_000, "history has every message once");
}

/// Every pooled connection busy (here: the one connection, held by a write waiting on a
/// table lock) → the next call is `Unavailable` as soon as the pool's wait is over, never a
/// hang; once the lock goes, the held write completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_is_unavailable_quickly() {
    let Some(url) = server_url() else { return };
    let url = fresh_database(&url).await;
    let store = Arc::new(
        PgArchive::connect(&PgConfig {
            max_connections: 1,
            wait: Duration::from_millis(300),
            ..PgConfig::new(&url)
        })
        .await
        .unwrap(),
    );
    // Another session locks the table: a write through the pool's one connection waits.
    let (locker, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let held = {
        let store = store.clone();
        let m = msg(&conv, "alice", "held", 1);
        tokio::spawn(async move { store.store("reference", &[m]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = tokio::time::timeout(Duration::from_secs(10), store.len())
        .await
        .expect("no hang while the pool is exhausted");
    assert!(
        matches!(refused, Err(ArchiveError::Unavailable(_))),
        "an exhausted pool is Unavailable: {refused:?}"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    let stored = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held write completes once the lock is gone")
        .unwrap();
    assert_eq!(stored.unwrap(), vec![im_archive::Stored::New]);
    drop(locker);
    let _ = conn.await;
}

/// Retention by month partitions: dropping the months before March removes January's and
/// February's partitions whole (each a `DROP TABLE`), and history then holds March only.
#[tokio::test]
async fn retention_drops_whole_months() {
    let Some(url) = server_url() else { return };
    let url = fresh_database(&url).await;
    let store = PgArchive::connect(&PgConfig::new(&url)).await.unwrap();
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    // 2026-01-15, 2026-02-15 and 2026-03-15, three messages each.
    let months = [1_768_435_200_000_i64, 1_771_113_600_000, 1_773_532_800_000];
    let mut all = Vec::new();
    for (k, start) in months.iter().enumerate() {
        for i in 0..3 {
            all.push(msg(&conv, "alice", &format!("m{k}-{i}"), start + i));
        }
    }
    store.store("reference", &all).await.unwrap();
    assert_eq!(store.len().await.unwrap(), 9);
    // 2026-03-01T00:00:00Z.
    let dropped = store
        .drop_months_before(Timestamp::from_millis(1_772_323_200_000))
        .await
        .unwrap();
    assert_eq!(
        dropped,
        ["messages_2026m01", "messages_2026m02"],
        "whole months, by partition"
    );
    assert_eq!(store.len().await.unwrap(), 3, "March's three remain");
    let page = store
        .page(&PageQuery {
            conversation: conv.clone(),
            from: Timestamp::from_millis(0),
            to: Timestamp::from_millis(i64::MAX),
            before: None,
            limit: 50,
        })
        .await
        .unwrap();
    let ids: Vec<&str> = page.messages.iter().map(|m| m.server_id.as_str()).collect();
    assert_eq!(ids, ["m2-2", "m2-1", "m2-0"], "history holds March only");
    // Dropping again finds nothing more to drop.
    assert!(
        store
            .drop_months_before(Timestamp::from_millis(1_772_323_200_000))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A database at schema version 1 (one unpartitioned `messages` table) is migrated at start
/// with its messages: they page as before, and a redelivery is still a duplicate.
#[tokio::test]
async fn a_schema_1_database_is_migrated_with_its_messages() {
    let Some(url) = server_url() else { return };
    let url = fresh_database(&url).await;
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let old = msg(&conv, "alice", "old", 1_768_435_200_000);
    {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(connection);
        client
            .batch_execute(include_str!("../migrations/0001_init.sql"))
            .await
            .unwrap();
        client
            .batch_execute(
                "CREATE TABLE im_archive_schema (version integer NOT NULL); \
                 INSERT INTO im_archive_schema VALUES (1)",
            )
            .await
            .unwrap();
        let json = serde_json::to_value(&old).unwrap();
        client
            .execute(
                "INSERT INTO messages VALUES ('reference', 'old', $1, $2, $3, $3)",
                &[
                    &conv.to_string().as_bytes(),
                    &old.server_time.as_millis(),
                    &json,
                ],
            )
            .await
            .unwrap();
        drop(client);
        let _ = conn.await;
    }
    let store = PgArchive::connect(&PgConfig::new(&url)).await.unwrap();
    assert_eq!(
        store.len().await.unwrap(),
        1,
        "the message survived the migration"
    );
    assert_eq!(
        store.original("reference", &old.server_id).await.unwrap(),
        Some(old.clone())
    );
    assert_eq!(
        store
            .store("reference", std::slice::from_ref(&old))
            .await
            .unwrap(),
        [im_archive::Stored::Duplicate],
        "a redelivery after the migration is still a duplicate"
    );
}

/// Callbacks arriving together are merged into one call (group commit): each caller still
/// gets its own message's answer. 40 stores at once, a quarter of them repeats of messages
/// stored before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_callbacks_each_get_their_own_answer() {
    let Some(url) = server_url() else { return };
    let url = fresh_database(&url).await;
    let store = Arc::new(PgArchive::connect(&PgConfig::new(&url)).await.unwrap());
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let messages: Vec<Message> = (0..40)
        .map(|i| msg(&conv, "alice", &format!("g{i:02}"), 1_800_000_000_000 + i))
        .collect();
    for m in messages
        .iter()
        .filter(|m| m.server_id.as_str().ends_with(['3', '7']))
    {
        store
            .store("reference", std::slice::from_ref(m))
            .await
            .unwrap();
    }
    let answers = futures::future::join_all(messages.iter().map(|m| {
        let store = store.clone();
        async move {
            store
                .store("reference", std::slice::from_ref(m))
                .await
                .unwrap()
        }
    }))
    .await;
    for (m, answer) in messages.iter().zip(answers) {
        let repeat = m.server_id.as_str().ends_with(['3', '7']);
        let want = if repeat {
            im_archive::Stored::Duplicate
        } else {
            im_archive::Stored::New
        };
        assert_eq!(answer, [want], "{}'s own answer", m.server_id);
    }
    assert_eq!(store.len().await.unwrap(), 40);
}
