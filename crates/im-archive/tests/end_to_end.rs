//! The archive end to end: the reference vendor's signed callbacks feed it, the vendor's
//! retention drops the messages, and a client's `Old` window still reads them through
//! `im-arch`'s `ArchiveHistory`; the archive process killed between storing and
//! acknowledging loses nothing and stores nothing twice; edits and recalls made through the
//! vendor reach the archive as `message.changed` callbacks and show in its history. On sled,
//! and on PostgreSQL with `IM_ARCHIVE_TEST_STORE=postgres`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_arch::{ArchiveHistory, HistorySource, HistoryWindow, ImClient, VendorHistory};
use im_archive::{ArchiveConfig, ArchiveServer, ArchiveStore, PageQuery, SledArchive};
use im_service::{
    ConversationId, Credentials, Message, ServerMsgId, ServiceError, ShiftedClock, Timestamp,
    Token, UserId, Vendor,
};
use im_testkit::contract::text;
use im_testkit::harness::{ContractConfig, ReferenceHarness, VendorHarness};
use im_vendor_sim::{CallbackConfig, ServerConfig};

const SECRET: &[u8] = b"archive e2e secret";
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A reference vendor keeping 7 days that POSTs its callbacks to `url`, retrying fast.
async fn vendor_calling(url: String) -> ReferenceHarness {
    let mut callbacks = CallbackConfig::new(url, SECRET);
    callbacks.max_attempts = 200;
    callbacks.base_backoff = Duration::from_millis(5);
    callbacks.max_backoff = Duration::from_millis(100);
    callbacks.request_timeout = Duration::from_secs(2);
    ReferenceHarness::start_with(
        ContractConfig {
            retention: 7 * DAY,
            ..ContractConfig::default()
        },
        ServerConfig {
            callbacks: Some(callbacks),
            ..ServerConfig::default()
        },
    )
    .await
}

/// Alice sends `n` messages to bob; returns their server ids in send order.
async fn alice_sends(h: &ReferenceHarness, conv: &ConversationId, n: usize) -> Vec<ServerMsgId> {
    let alice = h.user("alice").await;
    h.user("bob").await;
    let a = h.client().await;
    a.login(&alice).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let out = text(conv, &format!("message {i}"));
        let receipt = a.send(&out).await.unwrap();
        // An idempotent resend is the same message: no second callback.
        if i == 0 {
            assert_eq!(a.send(&out).await.unwrap().server_id, receipt.server_id);
        }
        ids.push(receipt.server_id);
    }
    a.logout().await.unwrap();
    ids
}

/// Waits (real time: callbacks cross real sockets) until the vendor settled `n` callbacks.
async fn callbacks_settled(h: &ReferenceHarness, n: u64) {
    let stats = h.server.callback_stats().expect("callbacks configured");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.settled() < n {
        assert!(
            Instant::now() < deadline,
            "callbacks not settled: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = stats.snapshot();
    assert_eq!((s.delivered, s.given_up), (n, 0), "{s:?}");
}

#[cfg(feature = "postgres")]
mod pg_support;

/// The archive's store in these tests: sled in `dir`, or with
/// `IM_ARCHIVE_TEST_STORE=postgres` a fresh database on the server `IM_POSTGRES_URL` names
/// (CI runs this suite both ways; the crash test runs the binary on sled either way).
async fn archive_store(dir: &std::path::Path) -> Arc<dyn ArchiveStore> {
    #[cfg(feature = "postgres")]
    if let Some(store) = pg_support::store_if_asked().await {
        return store;
    }
    Arc::new(SledArchive::open(dir).unwrap())
}

fn server_ids(messages: &[Message]) -> Vec<ServerMsgId> {
    messages.iter().map(|m| m.server_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_window_is_served_by_the_archive_after_the_vendor_forgot() {
    let dir = tempfile::tempdir().unwrap();
    let archive = ArchiveServer::start(
        ArchiveConfig {
            vendors: HashMap::from([("reference".to_owned(), SECRET.to_vec())]),
            tokens: HashMap::from([
                ("bob-archive-token".to_owned(), UserId::new("bob")),
                ("carol-archive-token".to_owned(), UserId::new("carol")),
            ]),
            ..ArchiveConfig::default()
        },
        archive_store(dir.path()).await,
    )
    .await
    .unwrap();
    let h = vendor_calling(format!("{}/v1/callbacks/reference", archive.url())).await;
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let sent = alice_sends(&h, &conv, 7).await;
    callbacks_settled(&h, 7).await;

    // Forty days pass on the vendor's clock; it keeps seven.
    h.server.shift_clock(40 * DAY);
    let bob = Credentials {
        user: UserId::new("bob"),
        token: h.token(&UserId::new("bob"), 365 * DAY).await,
    };
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    vendor.login(&bob).await.unwrap();
    let from_vendor = VendorHistory(vendor.clone())
        .page(&conv, Timestamp::from_millis(0), h.clock().now(), None, 50)
        .await
        .unwrap();
    assert!(
        from_vendor.messages.is_empty(),
        "retention dropped them: {from_vendor:?}"
    );
    vendor.logout().await.unwrap();

    let client = ImClient::builder(vendor.clone(), bob)
        .clock(h.clock())
        .history_source(
            HistoryWindow::Old,
            Some(Arc::new(
                ArchiveHistory::new(archive.url(), Token::new("bob-archive-token")).unwrap(),
            )),
        )
        .build();
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let page = client
            .history(&conv, HistoryWindow::Old, 3, cursor)
            .await
            .unwrap();
        assert!(
            page.gaps.is_empty(),
            "the archive covers the window: {page:?}"
        );
        assert!(page.messages.len() <= 3);
        got.extend(page.messages);
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    let mut newest_first = sent.clone();
    newest_first.reverse();
    assert_eq!(
        server_ids(&got),
        newest_first,
        "all, newest first, none twice"
    );
    assert!(got.windows(2).all(|w| w[0].server_time >= w[1].server_time));
    let distinct: HashSet<_> = got.iter().map(|m| &m.server_id).collect();
    assert_eq!(distinct.len(), got.len());
    assert_eq!(got[0].content, im_service::Content::text("message 6"));
    drop(client);

    // The same source with the wrong token, or for a stranger, gets typed, permanent errors;
    // a conversation the archive never saw is an empty page.
    let (from, to) = HistoryWindow::Old.range(h.clock().now());
    let wrong = ArchiveHistory::new(archive.url(), Token::new("guess")).unwrap();
    let err = wrong.page(&conv, from, to, None, 10).await.unwrap_err();
    assert!(matches!(err, ServiceError::AuthFailed(_)), "{err:?}");
    let carol = ArchiveHistory::new(archive.url(), Token::new("carol-archive-token")).unwrap();
    let err = carol.page(&conv, from, to, None, 10).await.unwrap_err();
    assert_eq!(err, ServiceError::NotMember(conv.clone()));
    let never = ConversationId::direct(&UserId::new("carol"), &UserId::new("dave"));
    assert!(
        carol
            .page(&never, from, to, None, 10)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    h.server.shutdown().await;
    archive.shutdown().await;
}

/// Both archive-served windows: messages 40 days old land in `Old`, 15 days old in
/// `Middle`, while the vendor (7 days) has neither. The archive judges callback timestamps
/// on the same (shifted) time as the vendor, as a real deployment shares one clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middle_and_old_windows_are_served_by_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let time = Arc::new(ShiftedClock::new());
    let archive = ArchiveServer::start(
        ArchiveConfig {
            vendors: HashMap::from([("reference".to_owned(), SECRET.to_vec())]),
            tokens: HashMap::from([("bob-token".to_owned(), UserId::new("bob"))]),
            clock: time.clone(),
            ..ArchiveConfig::default()
        },
        archive_store(dir.path()).await,
    )
    .await
    .unwrap();
    let h = vendor_calling(format!("{}/v1/callbacks/reference", archive.url())).await;
    let pass = |d: Duration| {
        time.shift(d);
        h.server.shift_clock(d);
    };
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let old = alice_sends(&h, &conv, 3).await;
    callbacks_settled(&h, 3).await;
    pass(25 * DAY);
    let middle = alice_sends(&h, &conv, 4).await;
    callbacks_settled(&h, 7).await;
    pass(15 * DAY);

    let bob = Credentials {
        user: UserId::new("bob"),
        token: h.token(&UserId::new("bob"), 365 * DAY).await,
    };
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let source = || -> Arc<dyn HistorySource> {
        Arc::new(ArchiveHistory::new(archive.url(), Token::new("bob-token")).unwrap())
    };
    let client = ImClient::builder(vendor, bob)
        .clock(h.clock())
        .history_source(HistoryWindow::Middle, Some(source()))
        .history_source(HistoryWindow::Old, Some(source()))
        .build();
    for (window, sent) in [(HistoryWindow::Middle, middle), (HistoryWindow::Old, old)] {
        let page = client.history(&conv, window, 50, None).await.unwrap();
        let mut want = sent;
        want.reverse();
        assert_eq!(server_ids(&page.messages), want, "{window:?}");
        assert!(
            page.gaps.is_empty() && page.next.is_none(),
            "{window:?}: {page:?}"
        );
    }
    let recent = client.history(&conv, HistoryWindow::Recent, 50, None).await;
    // Recent is the vendor's, and this client never logged in: the vendor's typed,
    // permanent refusal, not the archive's data and not an empty page.
    assert!(
        matches!(
            recent,
            Err(im_arch::ArchError::Permanent {
                op: "pull_history",
                error: ServiceError::NotLoggedIn,
            })
        ),
        "the Recent window is the vendor's, which refuses a client not logged in: {recent:?}"
    );
    drop(client);
    h.server.shutdown().await;
    archive.shutdown().await;
}

/// Issue 20: the reference vendor calls back the changes made to archived messages, and
/// the archive's history shows each message's current state, as the vendor's own history
/// does for a member who deleted nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_recalls_made_through_the_vendor_show_in_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let store = archive_store(dir.path()).await;
    let archive = ArchiveServer::start(
        ArchiveConfig {
            vendors: HashMap::from([("reference".to_owned(), SECRET.to_vec())]),
            tokens: HashMap::from([("bob-token".to_owned(), UserId::new("bob"))]),
            ..ArchiveConfig::default()
        },
        store.clone(),
    )
    .await
    .unwrap();
    let h = vendor_calling(format!("{}/v1/callbacks/reference", archive.url())).await;
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let sent = alice_sends(&h, &conv, 3).await;
    callbacks_settled(&h, 3).await;

    // The changes go through the vendor: its clients, over the reference protocol.
    let alice = h.client().await;
    alice.login(&h.user("alice").await).await.unwrap();
    let bob = h.client().await;
    bob.login(&h.user("bob").await).await.unwrap();
    let edited = im_service::Content::text("message 0, corrected");
    alice.edit(&conv, &sent[0], &edited).await.unwrap();
    let recall = alice.recall(&conv, &sent[1]).await.unwrap();
    alice
        .edit(
            &conv,
            &sent[0],
            &im_service::Content::text("message 0, final"),
        )
        .await
        .unwrap();
    bob.delete_for_me(&conv, &sent[2]).await.unwrap();
    callbacks_settled(&h, 7).await;

    let page = ArchiveHistory::new(archive.url(), Token::new("bob-token"))
        .unwrap()
        .page(
            &conv,
            Timestamp::from_millis(i64::MIN),
            Timestamp::from_millis(i64::MAX),
            None,
            50,
        )
        .await
        .unwrap();
    let mut want = sent.clone();
    want.reverse();
    assert_eq!(
        server_ids(&page.messages),
        want,
        "each message once, in place"
    );
    let [newest, recalled, first] = &page.messages[..] else {
        panic!("three messages: {page:?}");
    };
    assert_eq!(
        newest.content,
        im_service::Content::text("message 2"),
        "bob's delete-for-me leaves the company archive as it was"
    );
    assert_eq!(
        recalled.content,
        im_service::Content::Recalled {
            by: UserId::new("alice"),
            at: recall.at,
        },
        "a recalled message reads as recalled"
    );
    assert_eq!(
        first.content,
        im_service::Content::text("message 0, final"),
        "the latest edit"
    );
    // The vendor's own history, for alice who deleted nothing, agrees.
    let from_vendor = alice
        .pull_history(&im_service::HistoryQuery::latest(conv.clone(), 50))
        .await
        .unwrap();
    let mut vendor_newest_first = from_vendor.messages.clone();
    vendor_newest_first.sort_by_key(|m| std::cmp::Reverse((m.server_time, m.server_id.clone())));
    assert_eq!(
        page.messages, vendor_newest_first,
        "archive and vendor agree"
    );
    // What was said is kept.
    assert_eq!(
        store
            .original("reference", &sent[0])
            .await
            .unwrap()
            .map(|m| m.content),
        Some(im_service::Content::text("message 0"))
    );
    assert_eq!(
        store.changes_of("reference", &sent[0]).await.unwrap().len(),
        2
    );

    h.server.shutdown().await;
    archive.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_or_silent_archive_is_a_retryable_error() {
    // Nothing listens on a port just released: Unavailable.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let conv = ConversationId::direct(&UserId::new("a"), &UserId::new("b"));
    let (from, to) = (Timestamp::from_millis(0), Timestamp::from_millis(1));
    let src = ArchiveHistory::new(format!("http://{addr}"), Token::new("t")).unwrap();
    let err = src.page(&conv, from, to, None, 10).await.unwrap_err();
    assert!(matches!(err, ServiceError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    // A peer that accepts and never answers: Timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let src = ArchiveHistory::new(format!("http://{addr}"), Token::new("t"))
        .unwrap()
        .timeout(Duration::from_millis(200));
    let err = src.page(&conv, from, to, None, 10).await.unwrap_err();
    assert_eq!(err, ServiceError::Timeout(Duration::from_millis(200)));
    assert!(err.is_retryable());
    hold.abort();
}

/// The archive binary as a child process, with its address read from its stdout.
struct ArchiveProcess {
    child: Child,
    addr: SocketAddr,
}

impl ArchiveProcess {
    fn spawn(data: &std::path::Path, listen: &str, extra: &[&str]) -> ArchiveProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_im-archive"))
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", listen, "--token", "tok-bob=bob"])
            .args(extra)
            .env(
                "IM_ARCHIVE_VENDORS",
                format!("reference={}", String::from_utf8_lossy(SECRET)),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn im-archive");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        ArchiveProcess { child, addr }
    }

    /// Waits for the process to end on its own (bounded), returning its status.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "archive did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits for the graceful exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for ArchiveProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_store_and_ack_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    // The first process aborts right after the 3rd callback is durable, before its 200.
    let mut first = tokio::task::spawn_blocking({
        let data = dir.path().to_owned();
        move || ArchiveProcess::spawn(&data, "127.0.0.1:0", &["--crash-after-stores", "3"])
    })
    .await
    .unwrap();
    let addr = first.addr;
    let h = vendor_calling(format!("http://{addr}/v1/callbacks/reference")).await;
    let conv = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let sent = alice_sends(&h, &conv, 8).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = first.wait_exit(Duration::from_secs(30));
        drop(first);
        status
    })
    .await
    .unwrap();
    assert!(!status.success(), "it crashed: {status:?}");
    let stats = h.server.callback_stats().unwrap();
    assert_eq!(
        stats.delivered(),
        2,
        "the 3rd was stored but never acknowledged"
    );

    // Restarted on the same address and data: the vendor's retries deliver the rest.
    let second = tokio::task::spawn_blocking({
        let data = dir.path().to_owned();
        move || ArchiveProcess::spawn(&data, &addr.to_string(), &[])
    })
    .await
    .unwrap();
    callbacks_settled(&h, 8).await;
    assert!(
        stats.failed_attempts() >= 1,
        "the crash cost at least one attempt"
    );
    let status = tokio::task::spawn_blocking(move || second.terminate())
        .await
        .unwrap();
    assert!(status.success(), "graceful shutdown on SIGTERM: {status:?}");
    h.server.shutdown().await;

    // Exactly once: eight entries, each message once, in order.
    let store = SledArchive::open(dir.path()).unwrap();
    assert_eq!(store.len().await.unwrap(), 8);
    let page = store
        .page(&PageQuery {
            conversation: conv,
            from: Timestamp::from_millis(i64::MIN),
            to: Timestamp::from_millis(i64::MAX),
            before: None,
            limit: 100,
        })
        .await
        .unwrap();
    let mut want = sent;
    want.reverse();
    assert_eq!(server_ids(&page.messages), want);
}
