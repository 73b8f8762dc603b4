//! The archive's HTTP surface, over loopback: every bad input gets its status and stores
//! nothing; good callbacks are stored once; the history API pages newest first and only
//! for members; `message.changed` callbacks show in history as each message's current state.
//! On the in-memory store, and on PostgreSQL with `IM_ARCHIVE_TEST_STORE=postgres`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use im_archive::{ArchiveConfig, ArchiveServer, ArchiveStore, CallbackOutcome, MemoryArchive};
use im_service::webhook::{
    self, CallbackPayload, ChangePayload, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use im_service::{
    ChangeKind, ClientMsgId, Clock, Content, ConversationId, GroupId, HistoryPage, ManualClock,
    Message, MessageChange, ServerMsgId, Timestamp, UserId,
};

const SECRET: &[u8] = b"reference callback secret";
const NOW_MS: i64 = 1_800_000_000_000;

struct Fixture {
    server: ArchiveServer,
    store: Arc<dyn ArchiveStore>,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
}

async fn fixture() -> Fixture {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(NOW_MS)));
    let store = test_store().await;
    let config = ArchiveConfig {
        vendors: HashMap::from([("reference".to_owned(), SECRET.to_vec())]),
        tokens: HashMap::from([
            ("tok-alice".to_owned(), UserId::new("alice")),
            ("tok-bob".to_owned(), UserId::new("bob")),
            ("tok-carol".to_owned(), UserId::new("carol")),
        ]),
        groups: HashMap::from([(
            GroupId::new("room"),
            HashSet::from([UserId::new("alice"), UserId::new("carol")]),
        )]),
        max_body_bytes: 8 * 1024,
        max_page: 20,
        clock: clock.clone(),
        ..ArchiveConfig::default()
    };
    let server = ArchiveServer::start(config, store.clone()).await.unwrap();
    Fixture {
        server,
        store,
        clock,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

#[cfg(feature = "postgres")]
mod pg_support;

/// The store under the server: the in-memory twin, or with `IM_ARCHIVE_TEST_STORE=postgres`
/// a fresh database on the server `IM_POSTGRES_URL` names (CI runs this suite both ways).
async fn test_store() -> Arc<dyn ArchiveStore> {
    #[cfg(feature = "postgres")]
    if let Some(store) = pg_support::store_if_asked().await {
        return store;
    }
    Arc::new(MemoryArchive::new())
}

fn ab() -> ConversationId {
    ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"))
}

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

fn body_of(m: &Message) -> Vec<u8> {
    serde_json::to_vec(&CallbackPayload::message_stored("reference", m.clone())).unwrap()
}

impl Fixture {
    fn now_secs(&self) -> i64 {
        webhook::unix_seconds(self.clock.now())
    }

    /// POSTs `body` to the callback route of `vendor` with the given headers.
    async fn post_raw(
        &self,
        vendor: &str,
        body: Vec<u8>,
        timestamp: Option<String>,
        signature: Option<String>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/v1/callbacks/{vendor}", self.server.url()))
            .body(body);
        if let Some(t) = timestamp {
            req = req.header(TIMESTAMP_HEADER, t);
        }
        if let Some(s) = signature {
            req = req.header(SIGNATURE_HEADER, s);
        }
        req.send().await.unwrap()
    }

    /// A correctly signed callback carrying `body`.
    async fn post_signed(&self, body: Vec<u8>) -> reqwest::Response {
        let ts = self.now_secs();
        let sig = webhook::sign(SECRET, ts, &body);
        self.post_raw("reference", body, Some(ts.to_string()), Some(sig))
            .await
    }

    async fn deliver(&self, m: &Message) -> CallbackOutcome {
        let r = self.post_signed(body_of(m)).await;
        assert_eq!(r.status(), 200);
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    async fn get(&self, path_and_query: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .get(format!("{}{path_and_query}", self.server.url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    async fn history(&self, query: &str, token: &str) -> HistoryPage {
        let r = self.get(&format!("/v1/history?{query}"), Some(token)).await;
        let status = r.status();
        let body = r.bytes().await.unwrap();
        assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }
}

/// Percent-encodes the few characters a conversation id can hold that a query cannot.
fn enc(c: &ConversationId) -> String {
    c.to_string().replace(':', "%3A")
}

#[tokio::test]
async fn a_signed_callback_is_stored_once_and_a_redelivery_is_a_200_duplicate() {
    let f = fixture().await;
    let m = msg(&ab(), "alice", "m1", NOW_MS - 1000);
    assert_eq!(f.deliver(&m).await, CallbackOutcome::Stored);
    assert_eq!(f.deliver(&m).await, CallbackOutcome::Duplicate);
    assert_eq!(f.store.len().await.unwrap(), 1);
    // Another event than message.stored is acknowledged and not kept.
    let mut other = CallbackPayload::message_stored("reference", msg(&ab(), "bob", "m2", 1));
    other.event = "message.recalled".into();
    let r = f.post_signed(serde_json::to_vec(&other).unwrap()).await;
    assert_eq!(r.status(), 200);
    let outcome: CallbackOutcome = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(outcome, CallbackOutcome::Ignored);
    assert_eq!(f.store.len().await.unwrap(), 1);
}

/// A header value, or `None` to leave the header out.
type Header = Option<String>;

#[tokio::test]
async fn bad_signatures_and_stale_timestamps_are_401_and_store_nothing() {
    let f = fixture().await;
    let body = body_of(&msg(&ab(), "alice", "m1", NOW_MS));
    let ts = f.now_secs();
    let good = webhook::sign(SECRET, ts, &body);
    let cases: Vec<(&str, Vec<u8>, Header, Header)> = vec![
        (
            "wrong secret",
            body.clone(),
            Some(ts.to_string()),
            Some(webhook::sign(b"guess", ts, &body)),
        ),
        (
            "not hex",
            body.clone(),
            Some(ts.to_string()),
            Some("zz".into()),
        ),
        ("no signature", body.clone(), Some(ts.to_string()), None),
        ("no timestamp", body.clone(), None, Some(good.clone())),
        (
            "timestamp changed",
            body.clone(),
            Some((ts + 1).to_string()),
            Some(good.clone()),
        ),
        (
            "body changed",
            body_of(&msg(&ab(), "alice", "m9", NOW_MS)),
            Some(ts.to_string()),
            Some(good.clone()),
        ),
        (
            "stale",
            body.clone(),
            Some((ts - 301).to_string()),
            Some(webhook::sign(SECRET, ts - 301, &body)),
        ),
        (
            "future",
            body.clone(),
            Some((ts + 301).to_string()),
            Some(webhook::sign(SECRET, ts + 301, &body)),
        ),
    ];
    for (what, body, t, s) in cases {
        let r = f.post_raw("reference", body, t, s).await;
        assert_eq!(r.status(), 401, "{what}");
        let err: im_archive::ErrorBody = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(!err.error.is_empty(), "{what}: a reason is given");
    }
    assert_eq!(f.store.len().await.unwrap(), 0, "nothing stored");
    // Within the window (300 s) it is accepted.
    let r = f
        .post_raw(
            "reference",
            body.clone(),
            Some((ts - 299).to_string()),
            Some(webhook::sign(SECRET, ts - 299, &body)),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(f.store.len().await.unwrap(), 1);
}

#[tokio::test]
async fn malformed_oversized_and_unknown_vendor_callbacks_are_refused() {
    let f = fixture().await;
    // Authentic but not a payload: 400.
    for body in [
        &b"not json"[..],
        b"{}",
        b"{\"vendor\":\"reference\",\"event\":\"message.stored\"}",
    ] {
        let r = f.post_signed(body.to_vec()).await;
        assert_eq!(r.status(), 400, "{}", String::from_utf8_lossy(body));
    }
    // Larger than the body limit (8 KiB here): 413, whatever the signature.
    let mut big = msg(&ab(), "alice", "big", NOW_MS);
    big.content = Content::Text("x".repeat(16 * 1024));
    let r = f.post_signed(body_of(&big)).await;
    assert_eq!(r.status(), 413);
    // A vendor without a secret here: 404.
    let body = body_of(&msg(&ab(), "alice", "m1", NOW_MS));
    let ts = f.now_secs();
    let sig = webhook::sign(SECRET, ts, &body);
    let r = f
        .post_raw("nobody", body, Some(ts.to_string()), Some(sig))
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(f.store.len().await.unwrap(), 0, "nothing stored");
}

#[tokio::test]
async fn history_pages_newest_first_by_cursor_and_time_range() {
    let f = fixture().await;
    for i in 0..7 {
        f.deliver(&msg(
            &ab(),
            if i % 2 == 0 { "alice" } else { "bob" },
            &format!("m{i}"),
            1_000 * (i + 1),
        ))
        .await;
    }
    let mut seen = Vec::new();
    let mut query = format!("conversation={}&limit=3", enc(&ab()));
    loop {
        let page = f.history(&query, "tok-bob").await;
        assert!(page.messages.len() <= 3);
        seen.extend(page.messages.iter().map(|m| m.server_id.to_string()));
        match page.next {
            Some(c) => {
                query = format!(
                    "conversation={}&limit=3&cursor={}",
                    enc(&ab()),
                    c.0.replace(':', "%3A")
                )
            }
            None => break,
        }
    }
    assert_eq!(seen, ["m6", "m5", "m4", "m3", "m2", "m1", "m0"]);
    let range = f
        .history(
            &format!("conversation={}&from=2000&to=5000", enc(&ab())),
            "tok-alice",
        )
        .await;
    let ids: Vec<String> = range
        .messages
        .iter()
        .map(|m| m.server_id.to_string())
        .collect();
    assert_eq!(ids, ["m3", "m2", "m1"], "from inclusive, to exclusive");
    assert!(range.next.is_none());
}

#[tokio::test]
async fn history_refuses_strangers_unknown_conversations_and_bad_requests() {
    let f = fixture().await;
    f.deliver(&msg(&ab(), "alice", "m1", 1)).await;
    let room = ConversationId::Group(GroupId::new("room"));
    f.deliver(&msg(&room, "alice", "g1", 2)).await;
    let q = |c: &ConversationId| format!("/v1/history?conversation={}", enc(c));
    // No token, an unknown token, a malformed header: 401.
    assert_eq!(f.get(&q(&ab()), None).await.status(), 401);
    assert_eq!(f.get(&q(&ab()), Some("tok-mallory")).await.status(), 401);
    // Another user's conversation: 403.
    assert_eq!(f.get(&q(&ab()), Some("tok-carol")).await.status(), 403);
    let r = f.get(&q(&room), Some("tok-bob")).await;
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    // A roster member who never wrote may read the group.
    assert_eq!(f.get(&q(&room), Some("tok-carol")).await.status(), 200);
    // A conversation the archive does not hold: 404.
    let unknown = ConversationId::direct(&UserId::new("bob"), &UserId::new("zed"));
    assert_eq!(f.get(&q(&unknown), Some("tok-bob")).await.status(), 404);
    // Bad parameters: 400.
    for bad in [
        format!("{}&limit=0", q(&ab())),
        format!("{}&limit=21", q(&ab())),
        format!("{}&cursor=nonsense", q(&ab())),
        "/v1/history?conversation=x:y".to_owned(),
        "/v1/history".to_owned(),
        format!("{}&from=yesterday", q(&ab())),
    ] {
        assert_eq!(f.get(&bad, Some("tok-bob")).await.status(), 400, "{bad}");
    }
    // The caller's conversations.
    let r = f.get("/v1/conversations", Some("tok-carol")).await;
    let convs: Vec<String> = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(convs, [room.to_string()]);
    assert_eq!(f.get("/v1/conversations", None).await.status(), 401);
}

#[tokio::test]
async fn health_readiness_and_graceful_shutdown() {
    let f = fixture().await;
    assert_eq!(f.get("/healthz", None).await.status(), 200);
    assert_eq!(f.get("/readyz", None).await.status(), 200);
    let url = f.server.url();
    f.server.shutdown().await;
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        f.http.get(format!("{url}/healthz")).send(),
    )
    .await
    .expect("answers or refuses promptly");
    assert!(refused.is_err(), "no longer serving");
}

/// A `message.changed` body of `change`.
fn change_body(change: &MessageChange) -> Vec<u8> {
    serde_json::to_vec(&ChangePayload::message_changed("reference", change.clone())).unwrap()
}

fn change_of(m: &Message, kind: ChangeKind, revision: u32) -> MessageChange {
    MessageChange {
        conversation: m.conversation.clone(),
        target: m.server_id.clone(),
        kind,
        by: m.sender.clone(),
        at: Timestamp::from_millis(m.server_time.as_millis() + 10),
        revision,
    }
}

impl Fixture {
    async fn deliver_change(&self, change: &MessageChange) -> CallbackOutcome {
        let r = self.post_signed(change_body(change)).await;
        let status = r.status();
        let body = r.bytes().await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// The whole history of alice and bob, newest first, as alice reads it.
    async fn ab_history(&self) -> Vec<Message> {
        self.history(&format!("conversation={}", enc(&ab())), "tok-alice")
            .await
            .messages
    }
}

#[tokio::test]
async fn a_signed_change_callback_is_applied_and_history_shows_the_current_state() {
    let f = fixture().await;
    let m1 = msg(&ab(), "alice", "m1", NOW_MS - 2000);
    let m2 = msg(&ab(), "bob", "m2", NOW_MS - 1000);
    f.deliver(&m1).await;
    f.deliver(&m2).await;

    let edit = change_of(&m1, ChangeKind::Edited(Content::text("fixed")), 1);
    assert_eq!(f.deliver_change(&edit).await, CallbackOutcome::Stored);
    let recall = change_of(&m2, ChangeKind::Recalled, 1);
    assert_eq!(f.deliver_change(&recall).await, CallbackOutcome::Stored);

    let page = f.ab_history().await;
    assert_eq!(
        page.iter()
            .map(|m| m.server_id.as_str())
            .collect::<Vec<_>>(),
        ["m2", "m1"],
        "each message once, in place"
    );
    assert_eq!(
        page[0].content,
        Content::Recalled {
            by: UserId::new("bob"),
            at: recall.at
        },
        "a recalled message reads as recalled"
    );
    assert_eq!(page[1].content, Content::text("fixed"), "an edit's content");
    // The rest of the message is as the vendor stored it.
    assert_eq!(
        Message {
            content: m1.content.clone(),
            ..page[1].clone()
        },
        m1
    );
    // The company archive keeps what was said.
    assert_eq!(
        f.store.original("reference", &m2.server_id).await.unwrap(),
        Some(m2)
    );
    assert_eq!(f.store.len().await.unwrap(), 2);
}

#[tokio::test]
async fn a_redelivered_or_older_change_is_a_200_duplicate_stored_once() {
    let f = fixture().await;
    let m = msg(&ab(), "alice", "m1", NOW_MS - 1000);
    f.deliver(&m).await;
    let second = change_of(&m, ChangeKind::Edited(Content::text("second")), 2);
    assert_eq!(f.deliver_change(&second).await, CallbackOutcome::Stored);
    assert_eq!(
        f.deliver_change(&second).await,
        CallbackOutcome::Duplicate,
        "a redelivered change is a duplicate"
    );
    let first = change_of(&m, ChangeKind::Edited(Content::text("first")), 1);
    assert_eq!(
        f.deliver_change(&first).await,
        CallbackOutcome::Duplicate,
        "an older change a newer edit supersedes is a duplicate"
    );
    assert_eq!(f.ab_history().await[0].content, Content::text("second"));
    let revisions: Vec<u32> = f
        .store
        .changes_of("reference", &m.server_id)
        .await
        .unwrap()
        .iter()
        .map(|c| c.revision)
        .collect();
    assert_eq!(revisions, [1, 2], "each revision stored once");
}

#[tokio::test]
async fn a_change_before_its_message_is_kept_and_applied_when_the_message_arrives() {
    let f = fixture().await;
    let m = msg(&ab(), "alice", "m1", NOW_MS - 1000);
    let edit = change_of(&m, ChangeKind::Edited(Content::text("early edit")), 1);
    assert_eq!(f.deliver_change(&edit).await, CallbackOutcome::Pending);
    assert_eq!(f.deliver_change(&edit).await, CallbackOutcome::Duplicate);
    // Nothing to read yet: the conversation is unknown (404), no message counted.
    let r = f
        .get(
            &format!("/v1/history?conversation={}", enc(&ab())),
            Some("tok-alice"),
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(f.store.len().await.unwrap(), 0);

    assert_eq!(f.deliver(&m).await, CallbackOutcome::Stored);
    let page = f.ab_history().await;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].content, Content::text("early edit"));
}

#[tokio::test]
async fn a_delete_for_me_leaves_the_company_history_as_it_is() {
    let f = fixture().await;
    let m = msg(&ab(), "alice", "m1", NOW_MS - 1000);
    f.deliver(&m).await;
    let gone = MessageChange {
        by: UserId::new("bob"),
        ..change_of(&m, ChangeKind::DeletedForMe, 1)
    };
    assert_eq!(f.deliver_change(&gone).await, CallbackOutcome::Stored);
    for token in ["tok-alice", "tok-bob"] {
        let page = f
            .history(&format!("conversation={}", enc(&ab())), token)
            .await;
        assert_eq!(page.messages, std::slice::from_ref(&m), "{token}");
    }
}

#[tokio::test]
async fn a_badly_signed_change_is_401_and_changes_nothing() {
    let f = fixture().await;
    let m = msg(&ab(), "alice", "m1", NOW_MS - 1000);
    f.deliver(&m).await;
    let body = change_body(&change_of(&m, ChangeKind::Recalled, 1));
    let ts = f.now_secs();
    for (what, sig) in [
        ("wrong secret", Some(webhook::sign(b"guess", ts, &body))),
        ("no signature", None),
        (
            "signed for another time",
            Some(webhook::sign(SECRET, ts - 1, &body)),
        ),
    ] {
        let r = f
            .post_raw("reference", body.clone(), Some(ts.to_string()), sig)
            .await;
        assert_eq!(r.status(), 401, "{what}");
    }
    // Authentic, but a change event without a change: 400.
    let bad = br#"{"vendor":"reference","event":"message.changed","message":null}"#.to_vec();
    assert_eq!(f.post_signed(bad).await.status(), 400);
    // A change naming another conversation than its message: 400, nothing kept.
    let stray = MessageChange {
        conversation: ConversationId::group("room"),
        ..change_of(&m, ChangeKind::Recalled, 1)
    };
    assert_eq!(f.post_signed(change_body(&stray)).await.status(), 400);

    assert!(
        f.store
            .changes_of("reference", &m.server_id)
            .await
            .unwrap()
            .is_empty(),
        "nothing stored"
    );
    assert_eq!(f.ab_history().await, [m]);
}

/// Past `max_connections` open connections a new one is closed at once (idle connections
/// from a stranger cannot grow the archive without bound); once one goes, a new one is
/// served again.
#[tokio::test]
async fn connections_past_the_bound_are_closed_and_a_freed_slot_serves_again() {
    let config = ArchiveConfig {
        max_connections: 2,
        ..ArchiveConfig::default()
    };
    let server = ArchiveServer::start(config, test_store().await)
        .await
        .unwrap();
    let idle_a = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let _idle_b = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    // A fresh client per request: no pooled connection may be reused.
    let get = || async {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let request = http.get(format!("{}/healthz", server.url())).send();
        tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("an answer or a close within the deadline")
    };
    assert!(
        get().await.is_err(),
        "a third connection is closed without an answer"
    );
    drop(idle_a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get().await.map(|r| r.status()).ok() != Some(reqwest::StatusCode::OK) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a freed slot never served a new connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
