//! Message-lifecycle cases (LIFE): recall, edit, delete for me, read state both ways and
//! several devices of one user, through the vendor contract on every target. A case whose
//! capability the target lacks is "not applicable" by that capability's name.
//!
//! The multi-device cases build their harness with `ContractConfig::multi_device`, the
//! others with the default (a second login kicks the first where the vendor does that).

// A case fails by panicking (the runner reports the message): `expect` is an assertion here.
#![allow(clippy::expect_used)]

use std::time::Duration;

use im_service::{
    Capability as C, ChangeKind, ChangeRefusal, Content, ConversationId, Credentials, HistoryQuery,
    Message, ServerMsgId, ServiceError, Vendor, VendorEvent,
};

use super::{Case, Category, FailureClass, Layer};
use crate::contract::{next_event, text};
use crate::harness::{ContractConfig, VendorHarness};
use crate::on_target;

/// A harness configuration whose vendor keeps several devices of one user logged in.
/// A harness configuration with a 2-second recall window: short enough to pass in real time
/// on a server whose clock the harness cannot move (Prosody).
fn short_recall_window() -> ContractConfig {
    ContractConfig {
        recall_window: Some(Duration::from_secs(2)),
        ..ContractConfig::default()
    }
}

fn multi_device() -> ContractConfig {
    ContractConfig {
        multi_device: true,
        ..ContractConfig::default()
    }
}

async fn logged_in<H: VendorHarness>(h: &H, creds: &Credentials) -> H::Client {
    let c = h.client().await;
    c.login(creds)
        .await
        .unwrap_or_else(|e| panic!("login of {} failed: {e}", creds.user));
    c
}

/// Logs in and declares itself online (live pushes and change events start).
async fn online<H: VendorHarness>(h: &H, creds: &Credentials) -> H::Client {
    let c = logged_in(h, creds).await;
    drain_offline(&c).await;
    c.go_online().await.expect("go online");
    c
}

/// Pulls and acknowledges every offline batch; returns the messages, oldest first.
async fn drain_offline<V: Vendor>(c: &V) -> Vec<Message> {
    let mut all = Vec::new();
    for _ in 0..100 {
        let batch = c.pull_offline(100).await.expect("pull offline");
        if let Some(ack) = &batch.ack {
            c.ack_offline(ack).await.expect("ack offline");
        }
        let done = batch.left == 0;
        all.extend(batch.messages.into_iter().rev());
        if done {
            return all;
        }
    }
    panic!("the offline queue never emptied in 100 pulls");
}

/// The conversation's history as the caller sees it now, oldest first.
async fn history<V: Vendor>(c: &V, conv: &ConversationId) -> Vec<Message> {
    let page = c
        .pull_history(&HistoryQuery::latest(conv.clone(), 100))
        .await
        .expect("pull history");
    page.messages.into_iter().rev().collect()
}

/// The next event that is not a heartbeat-like notice, within the contract's deadline.
async fn next_change(events: &mut im_service::EventStream) -> VendorEvent {
    loop {
        if let ev @ (VendorEvent::MessageChanged(_)
        | VendorEvent::ReadReceipt(_)
        | VendorEvent::MessagePushed(_)) = next_event(events).await
        {
            return ev;
        }
    }
}

/// Asserts that no event `bad` matches arrives within half a second.
async fn no_event_like(
    events: &mut im_service::EventStream,
    what: &str,
    bad: impl Fn(&VendorEvent) -> bool,
) {
    use futures::StreamExt;
    let quiet = async {
        while let Some(ev) = events.next().await {
            assert!(!bad(&ev), "unexpected {what}: {ev:?}");
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), quiet).await;
}

fn body(m: &Message) -> String {
    match &m.content {
        Content::Text(t) => t.clone(),
        Content::Custom { type_tag, .. } => format!("<{type_tag}>"),
        Content::Recalled { .. } => "<recalled>".into(),
    }
}

fn refusal(r: Result<im_service::MessageChange, ServiceError>) -> ChangeRefusal {
    match r {
        Err(ServiceError::ChangeRefused(why)) => why,
        other => panic!("expected a refused change, got {other:?}"),
    }
}

/// alice and bob, a direct conversation, alice's sent message id.
struct Pair<H: VendorHarness> {
    alice: Credentials,
    bob: Credentials,
    conv: ConversationId,
    a: H::Client,
}

async fn pair<H: VendorHarness>(h: &H) -> Pair<H> {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = online(h, &alice).await;
    Pair {
        alice,
        bob,
        conv,
        a,
    }
}

async fn send<V: Vendor>(c: &V, conv: &ConversationId, what: &str) -> ServerMsgId {
    c.send(&text(conv, what)).await.expect("send").server_id
}

/// LIFE-001: a recall within the window reaches an online peer as a change, and history
/// shows the message as recalled for both, never its old content.
async fn recall_within_window<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let b = online(&h, &p.bob).await;
    let mut events = b.take_events().expect("bob's events");
    let id = send(&p.a, &p.conv, "oops").await;
    match next_change(&mut events).await {
        VendorEvent::MessagePushed(m) => assert_eq!(m.server_id, id),
        other => panic!("bob first gets the message, got {other:?}"),
    }
    let change =
        p.a.recall(&p.conv, &id)
            .await
            .expect("recall within the window");
    assert_eq!(change.kind, ChangeKind::Recalled);
    assert_eq!(&change.by, &p.alice.user);
    assert!(change.revision >= 1, "a revision: {change:?}");
    match next_change(&mut events).await {
        VendorEvent::MessageChanged(c) => assert_eq!(c, change, "bob gets the same change"),
        other => panic!("bob gets the recall, got {other:?}"),
    }
    for (who, c) in [("alice", &p.a), ("bob", &b)] {
        let h = history(c, &p.conv).await;
        assert_eq!(h.len(), 1, "{who}: the message stays, once");
        assert!(
            matches!(h[0].content, Content::Recalled { .. }),
            "{who} sees it recalled, got {:?}",
            h[0].content
        );
    }
}

/// LIFE-002: after the recall window a recall is refused with the window, and the message
/// is unchanged.
async fn recall_after_window<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let id = send(&p.a, &p.conv, "too late").await;
    let window = p.a.lifecycle().recall_window.expect("a recall window");
    h.advance(window + Duration::from_secs(1)).await;
    assert_eq!(
        refusal(p.a.recall(&p.conv, &id).await),
        ChangeRefusal::WindowPassed { window }
    );
    assert_eq!(body(&history(&p.a, &p.conv).await[0]), "too late");
}

/// LIFE-003: only the sender may recall.
async fn recall_by_another_user<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let b = online(&h, &p.bob).await;
    let id = send(&p.a, &p.conv, "mine").await;
    assert_eq!(
        refusal(b.recall(&p.conv, &id).await),
        ChangeRefusal::NotAllowed
    );
    assert_eq!(body(&history(&b, &p.conv).await[0]), "mine");
}

/// LIFE-004: the sender edits twice; the peer gets revisions 1 and 2 and history shows the
/// message once with its latest content.
async fn edit_by_sender<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let b = online(&h, &p.bob).await;
    let mut events = b.take_events().expect("bob's events");
    let id = send(&p.a, &p.conv, "helo").await;
    let _ = next_change(&mut events).await;
    let mut last = 0;
    for content in ["hello", "hello!"] {
        let change =
            p.a.edit(&p.conv, &id, &Content::text(content))
                .await
                .expect("edit by the sender");
        assert!(
            change.revision > last,
            "revisions increase: {change:?} after {last}"
        );
        last = change.revision;
        match next_change(&mut events).await {
            VendorEvent::MessageChanged(c) => {
                assert_eq!(c.kind, ChangeKind::Edited(Content::text(content)));
                assert_eq!(c.revision, change.revision, "bob gets the same revision");
            }
            other => panic!("bob gets the edit to {content:?}, got {other:?}"),
        }
    }
    let h = history(&b, &p.conv).await;
    assert_eq!(h.iter().map(body).collect::<Vec<_>>(), ["hello!"]);
    assert_eq!(h[0].server_id, id, "the same message, not a new one");
}

/// LIFE-005: an edit by someone other than the sender follows the vendor's declared rule.
async fn edit_by_another_user<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let b = online(&h, &p.bob).await;
    let id = send(&p.a, &p.conv, "alice's words").await;
    let edit = b.edit(&p.conv, &id, &Content::text("bob's words")).await;
    match b.lifecycle().edit_permission {
        im_service::EditPermission::Sender => {
            assert_eq!(refusal(edit), ChangeRefusal::NotAllowed);
            assert_eq!(body(&history(&b, &p.conv).await[0]), "alice's words");
        }
        im_service::EditPermission::AnyMember => {
            edit.expect("any member may edit");
            assert_eq!(body(&history(&p.a, &p.conv).await[0]), "bob's words");
        }
    }
}

/// LIFE-006: a recalled message cannot be edited back.
async fn edit_after_recall<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let id = send(&p.a, &p.conv, "gone").await;
    p.a.recall(&p.conv, &id).await.expect("recall");
    assert_eq!(
        refusal(p.a.edit(&p.conv, &id, &Content::text("back")).await),
        ChangeRefusal::Recalled
    );
    assert!(matches!(
        history(&p.a, &p.conv).await[0].content,
        Content::Recalled { .. }
    ));
}

/// LIFE-007: bob was away while alice sent and recalled one message and edited another:
/// after login his offline messages are in their current state, the old text nowhere.
async fn changes_seen_after_login<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let recalled = send(&p.a, &p.conv, "secret").await;
    let edited = send(&p.a, &p.conv, "draft").await;
    p.a.recall(&p.conv, &recalled).await.expect("recall");
    p.a.edit(&p.conv, &edited, &Content::text("final"))
        .await
        .expect("edit");
    let b = logged_in(&h, &p.bob).await;
    let offline = drain_offline(&b).await;
    let bodies: Vec<String> = offline.iter().map(body).collect();
    assert!(
        !bodies.iter().any(|s| s == "secret" || s == "draft"),
        "no old content reaches bob: {bodies:?}"
    );
    assert_eq!(
        offline.iter().filter(|m| m.server_id == edited).count(),
        1,
        "the edited message arrives once: {bodies:?}"
    );
    let now = history(&b, &p.conv).await;
    assert_eq!(
        now.iter().map(body).collect::<Vec<_>>(),
        ["<recalled>", "final"]
    );
}

/// LIFE-008: the change feed: bob keeps his position, is away while alice edits, and
/// catches up with exactly that change once.
async fn change_feed_catches_up<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let id = send(&p.a, &p.conv, "v1").await;
    let b = online(&h, &p.bob).await;
    let start = b.pull_changes(None, 10).await.expect("feed position");
    assert!(start.changes.is_empty() && start.left == 0, "{start:?}");
    b.logout().await.expect("bob leaves");
    let change =
        p.a.edit(&p.conv, &id, &Content::text("v2"))
            .await
            .expect("edit");
    let b = logged_in(&h, &p.bob).await;
    drain_offline(&b).await;
    let caught = b
        .pull_changes(Some(start.next.clone()), 10)
        .await
        .expect("pull changes");
    assert_eq!(caught.changes, vec![change], "the missed edit, once");
    assert_eq!(caught.left, 0);
    let again = b
        .pull_changes(Some(caught.next.clone()), 10)
        .await
        .expect("pull changes again");
    assert!(again.changes.is_empty(), "nothing twice: {again:?}");
}

/// LIFE-009: bob reads; alice, online, is told (for "seen").
async fn read_receipt_from_peer<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let mut events = p.a.take_events().expect("alice's events");
    let b = online(&h, &p.bob).await;
    let id = send(&p.a, &p.conv, "did you see this?").await;
    b.mark_read(&p.conv, &id).await.expect("bob reads");
    loop {
        if let VendorEvent::ReadReceipt(r) = next_change(&mut events).await {
            assert_eq!(
                (&r.reader, &r.up_to, &r.conversation),
                (&p.bob.user, &id, &p.conv)
            );
            return;
        }
    }
}

/// LIFE-010: bob reads on device B; device A is told it was his own read.
async fn read_on_other_device<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let b1 = online(&h, &p.bob).await;
    let mut events = b1.take_events().expect("bob A's events");
    let b2 = online(&h, &p.bob).await;
    let id = send(&p.a, &p.conv, "read me once").await;
    b2.mark_read(&p.conv, &id).await.expect("read on B");
    loop {
        if let VendorEvent::ReadReceipt(r) = next_change(&mut events).await {
            assert_eq!(
                (&r.reader, &r.up_to),
                (&p.bob.user, &id),
                "B's read reaches A"
            );
            return;
        }
    }
}

/// LIFE-011: alice sends from device A; device B gets it once, as her own message; A is
/// not pushed its own send.
async fn own_send_reaches_other_device<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let mut a_events = p.a.take_events().expect("alice A's events");
    let a2 = online(&h, &p.alice).await;
    let mut b_events = a2.take_events().expect("alice B's events");
    let id = send(&p.a, &p.conv, "from my phone").await;
    match next_change(&mut b_events).await {
        VendorEvent::MessagePushed(m) => {
            assert_eq!((&m.server_id, &m.sender), (&id, &p.alice.user));
        }
        other => panic!("device B gets the send, got {other:?}"),
    }
    no_event_like(
        &mut b_events,
        "second copy on B",
        |ev| matches!(ev, VendorEvent::MessagePushed(m) if m.server_id == id),
    )
    .await;
    no_event_like(
        &mut a_events,
        "push of its own send on A",
        |ev| matches!(ev, VendorEvent::MessagePushed(m) if m.server_id == id),
    )
    .await;
}

/// LIFE-012: a second device logs in and the first stays logged in.
async fn second_device_stays<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let mut a_events = p.a.take_events().expect("alice A's events");
    let _a2 = online(&h, &p.alice).await;
    no_event_like(&mut a_events, "kick", |ev| {
        matches!(
            ev,
            VendorEvent::Kicked(_) | VendorEvent::ConnectionLost { .. }
        )
    })
    .await;
    send(&p.a, &p.conv, "still here").await;
}

/// LIFE-013: bob deletes a message for himself: gone from his history, kept in alice's.
async fn delete_for_me<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let b = online(&h, &p.bob).await;
    let keep = send(&p.a, &p.conv, "keep").await;
    let drop = send(&p.a, &p.conv, "drop").await;
    let change = b
        .delete_for_me(&p.conv, &drop)
        .await
        .expect("delete for me");
    assert_eq!(change.kind, ChangeKind::DeletedForMe);
    let mine: Vec<ServerMsgId> = history(&b, &p.conv)
        .await
        .into_iter()
        .map(|m| m.server_id)
        .collect();
    assert_eq!(mine, vec![keep], "bob's history lost only that message");
    assert_eq!(history(&p.a, &p.conv).await.len(), 2, "alice keeps both");
}

/// LIFE-014: every change of one message gets the next revision, so receivers converge
/// whatever order they see changes in.
async fn revisions_increase<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let id = send(&p.a, &p.conv, "a").await;
    let mut revisions = Vec::new();
    for content in ["b", "c"] {
        revisions.push(
            p.a.edit(&p.conv, &id, &Content::text(content))
                .await
                .expect("edit")
                .revision,
        );
    }
    revisions.push(p.a.recall(&p.conv, &id).await.expect("recall").revision);
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]) && revisions[0] >= 1,
        "each change gets a higher revision, even in quick succession: {revisions:?}"
    );
}

/// LIFE-015: a client cannot send a "recalled" placeholder as if it were a message.
async fn recalled_placeholder_not_sendable<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let fake = im_service::OutgoingMessage::new(
        p.conv.clone(),
        Content::Recalled {
            by: p.bob.user.clone(),
            at: im_service::Timestamp::from_millis(0),
        },
        im_service::Timestamp::from_millis(0),
    );
    match p.a.send(&fake).await {
        Err(ServiceError::InvalidRequest(_)) => {}
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    assert!(history(&p.a, &p.conv).await.is_empty(), "nothing stored");
}

/// LIFE-016: changes to unknown messages are refused by name and change nothing.
async fn change_of_unknown_message<H: VendorHarness>(h: H) {
    let p = pair(&h).await;
    let ghost = ServerMsgId::new("no-such-message");
    assert_eq!(
        refusal(p.a.edit(&p.conv, &ghost, &Content::text("x")).await),
        ChangeRefusal::UnknownMessage
    );
    assert_eq!(
        refusal(p.a.recall(&p.conv, &ghost).await),
        ChangeRefusal::UnknownMessage
    );
}

/// An `ImClient` of `creds` on a fresh vendor handle of `h`, online, with its subscription.
async fn arch_online<H: VendorHarness>(
    h: &H,
    creds: &Credentials,
) -> (im_arch::ImClient, im_arch::Subscription) {
    let vendor: std::sync::Arc<dyn Vendor> = std::sync::Arc::new(h.client().await);
    let client = im_arch::ImClient::builder(vendor, creds.clone()).build();
    let mut sub = client.subscribe();
    client.login().await.expect("login");
    crate::wait::until(&mut sub, Duration::from_secs(10), |e| {
        matches!(
            e,
            im_arch::ClientEvent::State(im_arch::ConnectionState::Online)
        )
    })
    .await;
    (client, sub)
}

/// The newest timeline page of `conv` on `client`, oldest first, as bodies.
async fn timeline_bodies(client: &im_arch::ImClient, conv: &ConversationId) -> Vec<String> {
    let page = client
        .timeline_before(conv, None, 50)
        .await
        .expect("timeline");
    let mut bodies: Vec<String> = page.messages.iter().map(body).collect();
    bodies.reverse();
    bodies
}

/// Waits until `client`'s row of `conv` satisfies `want`.
async fn row_until(
    client: &im_arch::ImClient,
    conv: &ConversationId,
    what: &str,
    want: impl Fn(&im_arch::ConversationSummary) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = client
            .conversations(0, usize::MAX)
            .into_iter()
            .find(|r| &r.id == conv);
        if row.as_ref().is_some_and(&want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within 10 s; the row is {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// LIFE-017: the peer's client shows an edited message once with its latest content, and a
/// recalled one as recalled; the conversation row's last message follows.
async fn client_timeline_follows_changes<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let (a, _a_sub) = arch_online(&h, &alice).await;
    let (b, mut b_sub) = arch_online(&h, &bob).await;
    let first = a
        .send(conv.clone(), Content::text("teh plan"))
        .await
        .expect("send");
    let second = a
        .send(conv.clone(), Content::text("secret"))
        .await
        .expect("send");
    let mut ids = Vec::new();
    crate::wait::until(&mut b_sub, Duration::from_secs(10), |e| {
        if let im_arch::ClientEvent::Message(r) = e {
            ids.push(r.message.server_id.clone());
        }
        ids.len() == 2
    })
    .await;
    let _ = (first, second);
    a.edit(&conv, &ids[0], Content::text("the plan"))
        .await
        .expect("edit");
    a.recall(&conv, &ids[1]).await.expect("recall");
    let mut changes = 0;
    crate::wait::until(&mut b_sub, Duration::from_secs(10), |e| {
        changes += usize::from(matches!(e, im_arch::ClientEvent::MessageChanged { .. }));
        changes == 2
    })
    .await;
    assert_eq!(timeline_bodies(&b, &conv).await, ["the plan", "<recalled>"]);
    row_until(&b, &conv, "the last message shows as recalled", |r| {
        r.last_message
            .as_ref()
            .is_some_and(|m| matches!(m.content, Content::Recalled { .. }))
    })
    .await;
    a.logout().await;
    b.logout().await;
}

/// LIFE-018: the sender's client sees the peer's read ("seen").
async fn client_sees_peer_read<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let (a, mut a_sub) = arch_online(&h, &alice).await;
    let (b, mut b_sub) = arch_online(&h, &bob).await;
    a.send(conv.clone(), Content::text("seen?"))
        .await
        .expect("send");
    crate::wait::until(&mut b_sub, Duration::from_secs(10), |e| {
        matches!(e, im_arch::ClientEvent::Message(_))
    })
    .await;
    row_until(&b, &conv, "bob has one unread", |r| r.unread == 1).await;
    b.mark_read(&conv).await.expect("bob reads");
    crate::wait::until(
        &mut a_sub,
        Duration::from_secs(10),
        |e| matches!(e, im_arch::ClientEvent::ReadBy { reader, .. } if reader == &bob.user),
    )
    .await;
    a.logout().await;
    b.logout().await;
}

/// LIFE-019: bob reads on device B; device A's unread for that conversation drops to 0,
/// never below.
async fn read_on_b_clears_unread_on_a<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let (a, _a_sub) = arch_online(&h, &alice).await;
    let (b1, _b1_sub) = arch_online(&h, &bob).await;
    let (b2, _b2_sub) = arch_online(&h, &bob).await;
    for i in 0..3 {
        a.send(conv.clone(), Content::text(format!("m{i}")))
            .await
            .expect("send");
    }
    row_until(&b1, &conv, "device A has 3 unread", |r| r.unread == 3).await;
    row_until(&b2, &conv, "device B has 3 unread", |r| r.unread == 3).await;
    b2.mark_read(&conv).await.expect("read on B");
    row_until(&b1, &conv, "device A's unread follows B's read", |r| {
        r.unread == 0
    })
    .await;
    assert_eq!(b1.total_unread(), 0);
    for c in [a, b1, b2] {
        c.logout().await;
    }
}

/// LIFE-020: alice sends from device A; device B shows it once, as hers, never unread.
async fn own_send_on_other_client<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let (a1, _s1) = arch_online(&h, &alice).await;
    let (a2, mut s2) = arch_online(&h, &alice).await;
    a1.send(conv.clone(), Content::text("from my laptop"))
        .await
        .expect("send");
    crate::wait::until(
        &mut s2,
        Duration::from_secs(10),
        |e| matches!(e, im_arch::ClientEvent::Message(r) if r.message.sender == alice.user),
    )
    .await;
    row_until(&a2, &conv, "device B shows it as its last message", |r| {
        r.last_message.is_some()
    })
    .await;
    assert_eq!(
        timeline_bodies(&a2, &conv).await,
        ["from my laptop"],
        "once"
    );
    assert_eq!(a2.total_unread(), 0, "my own message is never unread");
    let _ = bob;
    a1.logout().await;
    a2.logout().await;
}

/// LIFE-021: a message already in the company archive is edited and recalled through the
/// vendor; the archive's history (what `ArchiveHistory` reads) shows the current state, the
/// same as the vendor's, and keeps what was first said. The vendor's signed callbacks feed an
/// in-process archive: the reference server's own dispatcher, or for the memory vendor the
/// same dispatcher on its store and change feeds.
async fn archive_follows_changes(target: super::Target) {
    use std::collections::HashMap;

    use im_archive::{ArchiveConfig, ArchiveServer, MemoryArchive};
    use im_vendor_sim::{CallbackConfig, CallbackDispatcher, ServerConfig};

    const SECRET: &[u8] = b"LIFE-021 secret";
    let store = std::sync::Arc::new(MemoryArchive::new());
    let archive = ArchiveServer::start(
        ArchiveConfig {
            vendors: HashMap::from([("reference".to_owned(), SECRET.to_vec())]),
            tokens: HashMap::from([("bob-token".to_owned(), im_service::UserId::new("bob"))]),
            ..ArchiveConfig::default()
        },
        store.clone(),
    )
    .await
    .expect("the archive starts");
    let mut callbacks =
        CallbackConfig::new(format!("{}/v1/callbacks/reference", archive.url()), SECRET);
    callbacks.base_backoff = Duration::from_millis(5);
    callbacks.max_backoff = Duration::from_millis(100);
    match target {
        super::Target::Reference => {
            let h = crate::harness::ReferenceHarness::start_with(
                ContractConfig::default(),
                ServerConfig {
                    callbacks: Some(callbacks),
                    ..ServerConfig::default()
                },
            )
            .await;
            let stats = h.server.callback_stats().expect("callbacks configured");
            archive_case(&h, stats, &archive, &store).await;
            h.server.shutdown().await;
        }
        super::Target::Memory => {
            let h = crate::harness::MemoryHarness::new(ContractConfig::default());
            let cancel = tokio_util::sync::CancellationToken::new();
            // Callbacks are stamped with real time: the archive checks their age against
            // its own clock, not the harness's manual one.
            let dispatcher = CallbackDispatcher::spawn_with_changes(
                callbacks,
                h.vendor.store_feed(),
                h.vendor.change_feed(),
                std::sync::Arc::new(im_service::SystemClock),
                cancel,
            );
            archive_case(&h, dispatcher.stats(), &archive, &store).await;
            dispatcher.shutdown().await;
        }
        super::Target::Xmpp | super::Target::XmppEjabberd | super::Target::Matrix => {
            unreachable!("n/a by HarnessNeed::VendorCallbacks")
        }
    }
    archive.shutdown().await;
}

async fn archive_case<H: VendorHarness>(
    h: &H,
    stats: std::sync::Arc<im_vendor_sim::CallbackStats>,
    archive: &im_archive::ArchiveServer,
    store: &im_archive::MemoryArchive,
) {
    use im_arch::{ArchiveHistory, HistorySource};
    use im_archive::ArchiveStore;
    use im_service::{Timestamp, Token};

    let settled = |n: u64| {
        let stats = stats.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while stats.settled() < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "callbacks not settled: {:?}",
                    stats.snapshot()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(stats.snapshot().given_up, 0, "{:?}", stats.snapshot());
        }
    };
    let p = pair(h).await;
    let kept = send(&p.a, &p.conv, "first words").await;
    let gone = send(&p.a, &p.conv, "regret").await;
    settled(2).await;
    let kept_id = &kept;
    let archived = move || async move {
        store
            .original("reference", kept_id)
            .await
            .expect("archive readable")
            .map(|m| body(&m))
    };
    assert_eq!(
        archived().await.as_deref(),
        Some("first words"),
        "archived first"
    );
    p.a.edit(&p.conv, &kept, &Content::text("better words"))
        .await
        .expect("edit");
    p.a.recall(&p.conv, &gone).await.expect("recall");
    settled(4).await;
    let page = ArchiveHistory::new(archive.url(), Token::new("bob-token"))
        .expect("archive client")
        .page(
            &p.conv,
            Timestamp::from_millis(i64::MIN),
            Timestamp::from_millis(i64::MAX),
            None,
            50,
        )
        .await
        .expect("archive history");
    let mut bodies: Vec<String> = page.messages.iter().map(body).collect();
    bodies.reverse();
    assert_eq!(
        bodies,
        ["better words", "<recalled>"],
        "current state, once each"
    );
    let mut from_vendor = history(&p.a, &p.conv).await;
    from_vendor.reverse();
    assert_eq!(
        page.messages, from_vendor,
        "the archive agrees with the vendor"
    );
    assert_eq!(
        archived().await.as_deref(),
        Some("first words"),
        "what was said is kept"
    );
}

macro_rules! life_case {
    ($id:literal, $title:literal, needs: [$($need:ident),*], harness: [$($h:ident),*],
     guards: $guards:expr, steps: [$($step:literal),*], expected: $expected:literal,
     $config:expr, $f:ident) => {
        life_case!($id, $title, layer: Service, needs: [$($need),*], harness: [$($h),*],
            guards: $guards, steps: [$($step),*], expected: $expected, $config, $f)
    };
    ($id:literal, $title:literal, layer: $layer:ident, needs: [$($need:ident),*],
     harness: [$($h:ident),*], guards: $guards:expr, steps: [$($step:literal),*],
     expected: $expected:literal, $config:expr, $f:ident) => {
        Case {
            id: $id,
            title: $title,
            category: Category::Essential,
            layer: Layer::$layer,
            needs: &[$(C::$need),*],
            harness: &[$(super::HarnessNeed::$h),*],
            steps: &[$($step),*],
            expected: $expected,
            guards: $guards,
            run: |t| Box::pin(async move { on_target!(t, $config, $f) }),
        }
    };
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        life_case!("LIFE-001", "A recall within the window reaches the peer; history shows it recalled",
            needs: [Recall], harness: [], guards: None,
            steps: ["bob online; alice sends", "alice recalls"],
            expected: "bob gets the same change; both histories hold the message once, as recalled, never its text",
            ContractConfig::default(), recall_within_window),
        life_case!("LIFE-002", "A recall after the window is refused",
            needs: [Recall], harness: [], guards: None,
            steps: ["the vendor's recall window is 2 s", "alice sends", "vendor time (real time on a real server) passes the window", "alice recalls"],
            expected: "ChangeRefused(WindowPassed) naming the window; the message is unchanged",
            short_recall_window(), recall_after_window),
        life_case!("LIFE-003", "Only the sender may recall",
            needs: [Recall], harness: [], guards: None,
            steps: ["alice sends", "bob recalls it"],
            expected: "ChangeRefused(NotAllowed); the message is unchanged",
            ContractConfig::default(), recall_by_another_user),
        life_case!("LIFE-004", "An edit by the sender shows once with its latest content",
            needs: [Edit], harness: [], guards: Some(FailureClass::LocalEcho),
            steps: ["bob online; alice sends", "alice edits twice"],
            expected: "bob gets each edit with the revision alice got, increasing; history has the one message with the last content",
            ContractConfig::default(), edit_by_sender),
        life_case!("LIFE-005", "An edit by another user follows the declared rule",
            needs: [Edit], harness: [], guards: None,
            steps: ["alice sends", "bob edits it"],
            expected: "refused with NotAllowed where only senders may edit (and unchanged), applied where any member may",
            ContractConfig::default(), edit_by_another_user),
        life_case!("LIFE-006", "A recalled message cannot be edited back",
            needs: [Recall, Edit], harness: [], guards: None,
            steps: ["alice sends and recalls", "alice edits"],
            expected: "ChangeRefused(Recalled); history still shows it recalled",
            ContractConfig::default(), edit_after_recall),
        life_case!("LIFE-007", "Changes made while away are seen after login, in current state",
            needs: [Recall, Edit, OfflineQueue], harness: [], guards: Some(FailureClass::SequenceGap),
            steps: ["bob away; alice sends two messages, recalls one, edits the other", "bob logs in and pulls offline and history"],
            expected: "no old text reaches bob; the edited message arrives once; history: recalled, then the edit",
            ContractConfig::default(), changes_seen_after_login),
        life_case!("LIFE-008", "The change feed gives an away client exactly what it missed",
            needs: [ChangeFeed, Edit], harness: [], guards: None,
            steps: ["bob takes his feed position and leaves", "alice edits", "bob logs in and pulls changes from his position, twice"],
            expected: "the edit once, nothing left; the second pull is empty",
            ContractConfig::default(), change_feed_catches_up),
        life_case!("LIFE-009", "A peer's read comes back as a read receipt",
            needs: [ReadReceipts, ReadReceiptEvents], harness: [], guards: Some(FailureClass::UnreadDrift),
            steps: ["alice and bob online; alice sends", "bob marks it read"],
            expected: "alice gets a receipt: reader bob, up to that message",
            ContractConfig::default(), read_receipt_from_peer),
        life_case!("LIFE-010", "A read on device B reaches device A",
            needs: [MultiDevice, ReadReceipts, ReadReceiptEvents], harness: [], guards: Some(FailureClass::UnreadDrift),
            steps: ["bob online on devices A and B; alice sends", "bob reads on B"],
            expected: "A gets a receipt whose reader is bob himself, up to that message",
            multi_device(), read_on_other_device),
        life_case!("LIFE-011", "My send from device A reaches device B once, as mine",
            needs: [MultiDevice], harness: [], guards: Some(FailureClass::LocalEcho),
            steps: ["alice online on A and B", "alice sends from A"],
            expected: "B gets it once with sender alice; A is not pushed its own send",
            multi_device(), own_send_reaches_other_device),
        life_case!("LIFE-012", "A second device does not kick the first",
            needs: [MultiDevice], harness: [], guards: None,
            steps: ["alice online on A", "alice logs in on B", "A sends"],
            expected: "A is neither kicked nor disconnected and can send",
            multi_device(), second_device_stays),
        life_case!("LIFE-013", "Delete for me hides a message only for me",
            needs: [DeleteForMe], harness: [], guards: None,
            steps: ["alice sends two", "bob deletes one for himself"],
            expected: "bob's history lost that one; alice keeps both",
            ContractConfig::default(), delete_for_me),
        life_case!("LIFE-014", "Each change of a message gets the next revision",
            needs: [Recall, Edit], harness: [], guards: Some(FailureClass::DuplicateAfterLostAck),
            steps: ["alice sends", "edits twice", "recalls"],
            expected: "strictly increasing revisions (1, 2, 3 where the vendor counts), even within 100 ms",
            ContractConfig::default(), revisions_increase),
        life_case!("LIFE-015", "A recalled placeholder cannot be sent as a message",
            needs: [], harness: [], guards: None,
            steps: ["alice sends a message whose content is the recalled placeholder"],
            expected: "InvalidRequest; nothing stored",
            ContractConfig::default(), recalled_placeholder_not_sendable),
        life_case!("LIFE-016", "Changing an unknown message is refused by name",
            needs: [Recall, Edit], harness: [], guards: None,
            steps: ["alice edits and recalls an id that does not exist"],
            expected: "ChangeRefused(UnknownMessage) for both",
            ContractConfig::default(), change_of_unknown_message),
        life_case!("LIFE-017", "The client shows an edit once with its latest content and a recall as recalled",
            layer: Arch, needs: [Recall, Edit], harness: [], guards: Some(FailureClass::LocalEcho),
            steps: ["alice and bob online in ImClients; alice sends two", "alice edits the first and recalls the second"],
            expected: "bob's timeline: the edited text once, then a recalled placeholder; his row's last message shows as recalled",
            ContractConfig::default(), client_timeline_follows_changes),
        life_case!("LIFE-018", "The sender's client sees the peer's read",
            layer: Arch, needs: [ReadReceipts, ReadReceiptEvents], harness: [], guards: Some(FailureClass::UnreadDrift),
            steps: ["alice sends", "bob's client marks the conversation read"],
            expected: "alice's client gets ReadBy with reader bob",
            ContractConfig::default(), client_sees_peer_read),
        life_case!("LIFE-019", "A read on device B clears unread on device A",
            layer: Arch, needs: [MultiDevice, ReadReceipts, ReadReceiptEvents], harness: [], guards: Some(FailureClass::UnreadDrift),
            steps: ["bob on devices A and B; alice sends three", "bob reads on B"],
            expected: "both show 3 unread, then A shows 0 (never negative)",
            multi_device(), read_on_b_clears_unread_on_a),
        life_case!("LIFE-020", "My send from device A shows once on device B, never unread",
            layer: Arch, needs: [MultiDevice], harness: [], guards: Some(FailureClass::LocalEcho),
            steps: ["alice on devices A and B", "alice sends from A"],
            expected: "B's timeline has it once, sender alice; B's total unread stays 0",
            multi_device(), own_send_on_other_client),
        Case {
            id: "LIFE-021",
            title: "A change to a message already in the archive shows there as current state",
            category: Category::Essential,
            layer: Layer::Service,
            needs: &[C::Recall, C::Edit],
            harness: &[super::HarnessNeed::VendorCallbacks],
            steps: &[
                "the vendor's callbacks feed an in-process company archive",
                "alice sends two messages; both are archived",
                "alice edits one and recalls the other through the vendor",
            ],
            expected: "the archive's history (ArchiveHistory) shows the edit and the recall, \
                       once each, equal to the vendor's history; the original text is kept",
            guards: None,
            run: |t| Box::pin(archive_follows_changes(t)),
        },
    ]
}
