//! The vendor contract suite's scenarios: one set every `im-service` adapter must pass (the
//! matrix-rust-sdk way: one macro, every backend). A scenario whose capability the vendor
//! does not declare checks that the call is refused with `Unsupported` instead.
//!
//! They are wired once, in the case library's service table
//! ([`vendor_contract_tests!`](crate::vendor_contract_tests)), which gives each its `SVC-…`
//! case and generates the per-adapter tests:
//!
//! ```text
//! im_testkit::vendor_contract_tests!(im_testkit::cases::Target::Memory);
//! ```

use std::time::Duration;

use futures::StreamExt;
use im_service::{
    Capability, Content, ConversationId, Credentials, EventStream, HistoryQuery, HistoryRange,
    HistoryScope, KickReason, Message, OutgoingMessage, PageCursor, Seq, ServiceError, Timestamp,
    Vendor, VendorEvent,
};

use crate::harness::VendorHarness;

/// How long a scenario waits for an event that must come.
const EVENT_WAIT: Duration = Duration::from_secs(5);

/// Waits for the next event, failing the test if none comes in time.
pub async fn next_event(events: &mut EventStream) -> VendorEvent {
    match tokio::time::timeout(EVENT_WAIT, events.next()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("event stream ended"),
        Err(_) => panic!("no event within {EVENT_WAIT:?}"),
    }
}

/// Waits for the next pushed message, skipping other events.
pub async fn next_push(events: &mut EventStream) -> Message {
    loop {
        if let VendorEvent::MessagePushed(m) = next_event(events).await {
            return m;
        }
    }
}

/// A text message from the harness's point of view.
pub fn text(conversation: &ConversationId, body: &str) -> OutgoingMessage {
    OutgoingMessage::new(
        conversation.clone(),
        Content::text(body),
        Timestamp::from_millis(0),
    )
}

fn bodies(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match &m.content {
            Content::Text(t) => t.clone(),
            Content::Custom { type_tag, .. } => format!("<{type_tag}>"),
            Content::Recalled { .. } => "<recalled>".to_string(),
        })
        .collect()
}

async fn logged_in<H: VendorHarness>(h: &H, creds: &Credentials) -> H::Client {
    let c = h.client().await;
    if let Err(e) = c.login(creds).await {
        panic!("login of {} failed: {e}", creds.user);
    }
    c
}

async fn ok<T>(what: &str, r: Result<T, ServiceError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e}"),
    }
}

/// Messages sent to an absent user wait in the offline queue and come, newest first, after
/// the next login; acknowledged batches are gone.
pub async fn offline_queue_delivered_after_login<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = logged_in(&h, &alice).await;
    for body in ["one", "two", "three"] {
        ok("send", a.send(&text(&conv, body)).await).await;
    }
    let b = logged_in(&h, &bob).await;
    if !b.capabilities().supports(Capability::OfflineQueue) {
        assert_eq!(ok("pull", b.pull_offline(10).await).await.messages.len(), 0);
        return;
    }
    let batch = ok("pull offline", b.pull_offline(10).await).await;
    assert_eq!(
        bodies(&batch.messages),
        ["three", "two", "one"],
        "offline batch is newest first"
    );
    assert_eq!(batch.left, 0);
    assert!(
        batch
            .messages
            .iter()
            .all(|m| m.sender == alice.user && m.conversation == conv)
    );
    let ack = batch
        .ack
        .clone()
        .unwrap_or_else(|| panic!("non-empty batch without ack"));
    ok("ack", b.ack_offline(&ack).await).await;
    let again = ok("pull offline", b.pull_offline(10).await).await;
    assert!(
        again.messages.is_empty(),
        "acknowledged messages came back: {:?}",
        bodies(&again.messages)
    );
}

/// Offline messages come in packages with a "left" count; paging walks from newest to
/// oldest and loses nothing.
pub async fn offline_batches_page_newest_first<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = logged_in(&h, &alice).await;
    for i in 1..=5 {
        ok("send", a.send(&text(&conv, &format!("m{i}"))).await).await;
    }
    let b = logged_in(&h, &bob).await;
    if !b.capabilities().supports(Capability::ExplicitOfflineAck) {
        return;
    }
    let mut seen = Vec::new();
    let mut lefts = Vec::new();
    loop {
        let batch = ok("pull offline", b.pull_offline(2).await).await;
        if batch.messages.is_empty() {
            break;
        }
        assert!(batch.messages.len() <= 2);
        seen.extend(bodies(&batch.messages));
        lefts.push(batch.left);
        if let Some(ack) = &batch.ack {
            ok("ack", b.ack_offline(ack).await).await;
        }
    }
    assert_eq!(seen, ["m5", "m4", "m3", "m2", "m1"]);
    assert_eq!(lefts, [3, 1, 0]);
}

/// A logged-in client gets no live pushes until it declares itself online; what arrived
/// in between is still delivered (queued, then pushed at `go_online`).
pub async fn pushes_start_only_after_go_online<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = logged_in(&h, &alice).await;
    let b = h.client().await;
    let mut events = b
        .take_events()
        .unwrap_or_else(|| panic!("events already taken"));
    assert!(b.take_events().is_none(), "event stream has one consumer");
    ok("login", b.login(&bob).await).await;
    ok("send", a.send(&text(&conv, "while syncing")).await).await;
    let batch = ok("pull offline", b.pull_offline(10).await).await;
    assert_eq!(
        bodies(&batch.messages),
        ["while syncing"],
        "not yet online: message must be queued"
    );
    ok("go online", b.go_online().await).await;
    // The unacknowledged message raced the pull: it may be pushed again now.
    ok("send", a.send(&text(&conv, "live")).await).await;
    let mut pushed = Vec::new();
    while pushed.last().map(String::as_str) != Some("live") {
        pushed.extend(bodies(&[next_push(&mut events).await]));
    }
    assert!(
        pushed == ["live"] || pushed == ["while syncing", "live"],
        "unexpected pushes {pushed:?}"
    );
}

/// History older than the retention window is not served, and the page says where the
/// vendor's horizon is, so the caller can report a gap instead of "no messages".
pub async fn retention_cuts_old_history<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = logged_in(&h, &alice).await;
    let old = ok("send", a.send(&text(&conv, "old")).await).await;
    h.advance(h.config().retention + Duration::from_secs(24 * 3600))
        .await;
    let a = logged_in(&h, &alice).await;
    ok("send", a.send(&text(&conv, "new")).await).await;
    let page = ok(
        "history",
        a.pull_history(&HistoryQuery::latest(conv.clone(), 50))
            .await,
    )
    .await;
    assert_eq!(bodies(&page.messages), ["new"]);
    let horizon = page
        .horizon
        .unwrap_or_else(|| panic!("limited retention must report its horizon"));
    assert!(
        horizon > old.server_time,
        "horizon {horizon:?} must lie after the expired message"
    );
    assert!(page.next.is_none());
}

/// Time-range queries: bounds `[from, to)`, newest first, paged by cursor.
pub async fn time_range_pull_newest_first_paged<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = logged_in(&h, &alice).await;
    if !a.capabilities().supports(Capability::HistoryByTime) {
        let q = HistoryQuery::latest(conv, 10).range(HistoryRange::Time {
            from: Timestamp::from_millis(0),
            to: Timestamp::from_millis(1),
        });
        assert_eq!(
            a.pull_history(&q).await,
            Err(ServiceError::Unsupported(Capability::HistoryByTime))
        );
        return;
    }
    let mut times = Vec::new();
    for i in 1..=5 {
        times.push(
            ok("send", a.send(&text(&conv, &format!("m{i}"))).await)
                .await
                .server_time,
        );
        h.advance(Duration::from_secs(60)).await;
    }
    // [t2, t5) holds m2, m3, m4.
    let query = HistoryQuery::latest(conv.clone(), 2).range(HistoryRange::Time {
        from: times[1],
        to: times[4],
    });
    let first = ok("history", a.pull_history(&query).await).await;
    assert_eq!(bodies(&first.messages), ["m4", "m3"]);
    let cursor = first
        .next
        .clone()
        .unwrap_or_else(|| panic!("a full page with more left needs a cursor"));
    let second = ok(
        "history",
        a.pull_history(&query.clone().after_cursor(Some(cursor)))
            .await,
    )
    .await;
    assert_eq!(bodies(&second.messages), ["m2"]);
    assert!(second.next.is_none(), "range exhausted");
}

/// Sequence queries: exclusive bounds, newest first, paged; sequences are gap-free per
/// conversation.
pub async fn seq_range_pull_newest_first_paged<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = logged_in(&h, &alice).await;
    let caps = a.capabilities().clone();
    if !caps.supports(Capability::HistoryBySeq) {
        let q = HistoryQuery::latest(conv, 10).range(HistoryRange::Seq {
            after: None,
            before: None,
        });
        assert_eq!(
            a.pull_history(&q).await,
            Err(ServiceError::Unsupported(Capability::HistoryBySeq))
        );
        return;
    }
    let mut seqs = Vec::new();
    for i in 1..=5 {
        seqs.push(
            ok("send", a.send(&text(&conv, &format!("m{i}"))).await)
                .await
                .seq,
        );
    }
    if caps.supports(Capability::SequenceNumbers) {
        let first = seqs[0]
            .unwrap_or_else(|| panic!("declared sequences but receipt has none"))
            .0;
        let expected: Vec<Option<Seq>> = (first..first + 5).map(|s| Some(Seq(s))).collect();
        assert_eq!(seqs, expected, "sequences are gap-free");
    }
    let (Some(s1), Some(s5)) = (seqs[0], seqs[4]) else {
        panic!("seq history without sequences")
    };
    let query = HistoryQuery::latest(conv.clone(), 2).range(HistoryRange::Seq {
        after: Some(s1),
        before: Some(s5),
    });
    let first = ok("history", a.pull_history(&query).await).await;
    assert_eq!(bodies(&first.messages), ["m4", "m3"]);
    let second = ok(
        "history",
        a.pull_history(&query.clone().after_cursor(first.next))
            .await,
    )
    .await;
    assert_eq!(bodies(&second.messages), ["m2"]);
    assert!(second.next.is_none());
}

/// A query over all conversations interleaves them newest first and skips conversations
/// the user is not in.
pub async fn all_conversations_pull_newest_first<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let carol = h.user("carol").await;
    let ab = ConversationId::direct(&alice.user, &bob.user);
    let ac = ConversationId::direct(&alice.user, &carol.user);
    let bc = ConversationId::direct(&bob.user, &carol.user);
    let a = logged_in(&h, &alice).await;
    let b = logged_in(&h, &bob).await;
    ok("send", a.send(&text(&ab, "ab1")).await).await;
    h.advance(Duration::from_millis(10)).await;
    ok("send", b.send(&text(&bc, "bc1")).await).await;
    h.advance(Duration::from_millis(10)).await;
    ok("send", a.send(&text(&ac, "ac1")).await).await;
    h.advance(Duration::from_millis(10)).await;
    ok("send", b.send(&text(&ab, "ab2")).await).await;
    let query = HistoryQuery {
        scope: HistoryScope::All,
        range: HistoryRange::Latest,
        cursor: None,
        limit: 3,
    };
    let page = ok("history", a.pull_history(&query).await).await;
    assert_eq!(bodies(&page.messages), ["ab2", "ac1", "ab1"]);
}

/// Sending the same client id twice (a resend after a lost ack) stores one message; the
/// second answer is the first receipt marked duplicate, not an error.
pub async fn idempotent_send<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = logged_in(&h, &alice).await;
    let msg = text(&conv, "once");
    let first = ok("send", a.send(&msg).await).await;
    assert!(!first.duplicate);
    let second = ok("resend", a.send(&msg).await).await;
    assert!(second.duplicate, "resend must be recognised");
    assert_eq!(second.server_id, first.server_id);
    assert_eq!(second.seq, first.seq);
    let page = ok(
        "history",
        a.pull_history(&HistoryQuery::latest(conv, 10)).await,
    )
    .await;
    assert_eq!(bodies(&page.messages), ["once"], "stored exactly once");
    let b = logged_in(&h, &bob).await;
    let batch = ok("pull offline", b.pull_offline(10).await).await;
    assert_eq!(
        bodies(&batch.messages),
        ["once"],
        "queued for the recipient exactly once"
    );
}

/// A second login of the same user kicks the first connection with a reason, and the
/// kicked handle's calls fail with `Kicked`.
pub async fn kick_on_second_login<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let first = h.client().await;
    if !first.capabilities().supports(Capability::KickOnSecondLogin) {
        return;
    }
    let mut events = first
        .take_events()
        .unwrap_or_else(|| panic!("events already taken"));
    ok("login", first.login(&alice).await).await;
    let _second = logged_in(&h, &alice).await;
    loop {
        match next_event(&mut events).await {
            VendorEvent::Kicked(reason) => {
                assert_eq!(reason, KickReason::LoggedInElsewhere);
                break;
            }
            VendorEvent::MessagePushed(_) => continue,
            other => panic!("expected Kicked, got {other:?}"),
        }
    }
    let conv = ConversationId::direct(&alice.user, &bob.user);
    assert_eq!(
        first.send(&text(&conv, "from the kicked device")).await,
        Err(ServiceError::Kicked(KickReason::LoggedInElsewhere))
    );
}

/// A token warns at ~80% of its life, expires with an event, then every call and every
/// login with it fails with `TokenExpired`.
pub async fn token_expiry_events<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let client = h.client().await;
    if !client.capabilities().supports(Capability::TokenExpiry) {
        return;
    }
    let ttl = Duration::from_secs(600);
    let creds = Credentials {
        user: alice.user.clone(),
        token: h.token(&alice.user, ttl).await,
    };
    let mut events = client
        .take_events()
        .unwrap_or_else(|| panic!("events already taken"));
    let session = ok("login", client.login(&creds).await).await;
    assert!(session.token_expires_at.is_some());
    h.advance(Duration::from_secs(510)).await; // 85% of the token's life
    match next_event(&mut events).await {
        VendorEvent::TokenWillExpire { expires_at } => {
            assert_eq!(Some(expires_at), session.token_expires_at)
        }
        other => panic!("expected TokenWillExpire, got {other:?}"),
    }
    h.advance(Duration::from_secs(120)).await;
    assert_eq!(next_event(&mut events).await, VendorEvent::TokenExpired);
    let conv = ConversationId::direct(&alice.user, &bob.user);
    assert_eq!(
        client.send(&text(&conv, "late")).await,
        Err(ServiceError::TokenExpired)
    );
    let again = h.client().await;
    assert_eq!(
        again.login(&creds).await.map(|_| ()),
        Err(ServiceError::TokenExpired)
    );
}

/// Content over the size limit is refused with a typed error and nothing is stored.
pub async fn oversized_message_rejected<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = logged_in(&h, &alice).await;
    let max = a.capabilities().max_message_bytes;
    assert_eq!(
        max,
        h.config().max_message_bytes,
        "capabilities report the configured limit"
    );
    let big = OutgoingMessage::new(
        conv.clone(),
        Content::text("x".repeat(max + 1)),
        Timestamp::from_millis(0),
    );
    assert_eq!(
        a.send(&big).await,
        Err(ServiceError::MessageTooLarge { size: max + 1, max })
    );
    let exact = OutgoingMessage::new(
        conv.clone(),
        Content::text("y".repeat(max)),
        Timestamp::from_millis(0),
    );
    ok("send at the limit", a.send(&exact).await).await;
    let page = ok(
        "history",
        a.pull_history(&HistoryQuery::latest(conv, 10)).await,
    )
    .await;
    assert_eq!(
        page.messages.len(),
        1,
        "only the message at the limit is stored"
    );
}

/// Wrong tokens, unknown users and calls without a session fail with typed errors.
pub async fn bad_credentials_and_no_session<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let c = h.client().await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    assert_eq!(
        c.send(&text(&conv, "x")).await,
        Err(ServiceError::NotLoggedIn)
    );
    assert_eq!(
        c.pull_offline(10).await.map(|_| ()),
        Err(ServiceError::NotLoggedIn)
    );
    let wrong = Credentials {
        user: alice.user.clone(),
        token: bob.token.clone(),
    };
    assert!(matches!(
        c.login(&wrong).await,
        Err(ServiceError::AuthFailed(_))
    ));
    let forged = Credentials {
        user: alice.user.clone(),
        token: im_service::Token::new("forged"),
    };
    assert!(matches!(
        c.login(&forged).await,
        Err(ServiceError::AuthFailed(_))
    ));
    let ghost = Credentials {
        user: im_service::UserId::new("ghost"),
        token: alice.token.clone(),
    };
    assert!(matches!(
        c.login(&ghost).await,
        Err(ServiceError::UnknownUser(_) | ServiceError::AuthFailed(_))
    ));
    // A failed login leaves no session behind, and a good one still works.
    ok("login", c.login(&alice).await).await;
    let to_ghost = ConversationId::direct(&alice.user, &im_service::UserId::new("ghost"));
    let to_ghost_sent = c.send(&text(&to_ghost, "x")).await;
    assert!(
        matches!(
            to_ghost_sent,
            Err(ServiceError::UnknownUser(_) | ServiceError::NotMember(_))
        ),
        "a send to an unknown user is refused: {to_ghost_sent:?}"
    );
    ok("logout", c.logout().await).await;
    ok("second logout is a no-op", c.logout().await).await;
    assert_eq!(c.ping().await.map(|_| ()), Err(ServiceError::NotLoggedIn));
}

/// Group messages reach every other member; non-members can neither send nor read.
pub async fn group_conversation<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let carol = h.user("carol").await;
    let dave = h.user("dave").await;
    let a = logged_in(&h, &alice).await;
    let group = ConversationId::group("team");
    if !a.capabilities().supports(Capability::GroupConversations) {
        return;
    }
    h.group(
        "team",
        &[alice.user.clone(), bob.user.clone(), carol.user.clone()],
    )
    .await;
    ok("send", a.send(&text(&group, "hello team")).await).await;
    for member in [&bob, &carol] {
        let c = logged_in(&h, member).await;
        let batch = ok("pull offline", c.pull_offline(10).await).await;
        assert_eq!(
            bodies(&batch.messages),
            ["hello team"],
            "{} got the group message",
            member.user
        );
    }
    let d = logged_in(&h, &dave).await;
    assert_eq!(
        d.send(&text(&group, "intruder")).await.map(|_| ()),
        Err(ServiceError::NotMember(group.clone()))
    );
    assert_eq!(
        d.pull_history(&HistoryQuery::latest(group.clone(), 10))
            .await
            .map(|_| ()),
        Err(ServiceError::NotMember(group))
    );
}

/// Heartbeat answers with a round-trip time while logged in.
pub async fn heartbeat_rtt<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let a = logged_in(&h, &alice).await;
    let rtt = ok("ping", a.ping().await).await;
    assert!(rtt < Duration::from_secs(5), "loopback rtt {rtt:?}");
}

/// Malformed requests are refused with `InvalidRequest`; undeclared features with
/// `Unsupported`, never faked.
pub async fn invalid_requests_and_undeclared_features<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = logged_in(&h, &alice).await;
    let zero = HistoryQuery::latest(conv.clone(), 0);
    assert!(matches!(
        a.pull_history(&zero).await,
        Err(ServiceError::InvalidRequest(_))
    ));
    let bad_cursor =
        HistoryQuery::latest(conv.clone(), 5).after_cursor(Some(PageCursor("garbage".into())));
    assert!(matches!(
        a.pull_history(&bad_cursor).await,
        Err(ServiceError::InvalidRequest(_))
    ));
    let bad_ack = im_service::OfflineAck {
        token: "not an ack".into(),
    };
    assert!(matches!(
        a.ack_offline(&bad_ack).await,
        Err(ServiceError::InvalidRequest(_))
    ));
    let sent = ok("send", a.send(&text(&conv, "x")).await).await;
    if !a.capabilities().supports(Capability::ReadReceipts) {
        assert_eq!(
            a.mark_read(&conv, &sent.server_id).await,
            Err(ServiceError::Unsupported(Capability::ReadReceipts))
        );
    }
}
