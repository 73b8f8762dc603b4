//! The message lifecycle of `MemoryVendor`, the reference semantics: recall and edit by
//! policy, delete for me, read receipts both ways, the change feed, several devices, and the
//! current state of every message in offline and history pulls.
#![cfg(feature = "memory")]
// Helpers outside `#[test]` functions fail the test the same way.
#![allow(clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use im_service::memory::{MemoryClient, MemoryVendor, MemoryVendorConfig};
use im_service::{
    Capability, ChangeCursor, ChangeKind, ChangeRefusal, Content, ConversationId, Credentials,
    EditPermission, EventStream, GroupId, HistoryQuery, HistoryScope, LifecyclePolicy, ManualClock,
    Message, OutgoingMessage, ServerMsgId, ServiceError, Timestamp, UserId, Vendor, VendorEvent,
};

struct World {
    vendor: MemoryVendor,
    clock: ManualClock,
    alice: Credentials,
    bob: Credentials,
    conv: ConversationId,
}

fn world(config: MemoryVendorConfig) -> World {
    let (vendor, clock) = MemoryVendor::with_manual_clock(config);
    let alice = vendor.register_user(&UserId::new("alice"));
    let bob = vendor.register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&alice.user, &bob.user);
    World {
        vendor,
        clock,
        alice,
        bob,
        conv,
    }
}

fn multi_device() -> MemoryVendorConfig {
    MemoryVendorConfig {
        multi_device: true,
        ..MemoryVendorConfig::default()
    }
}

/// A logged-in device that takes live pushes, with its event stream.
async fn online(vendor: &MemoryVendor, who: &Credentials) -> (MemoryClient, EventStream) {
    let (client, events) = logged_in(vendor, who).await;
    client.go_online().await.expect("go online");
    (client, events)
}

/// A logged-in device that has not declared itself online (it is syncing or away).
async fn logged_in(vendor: &MemoryVendor, who: &Credentials) -> (MemoryClient, EventStream) {
    let client = vendor.client();
    let events = client.take_events().expect("events");
    client.login(who).await.expect("login");
    (client, events)
}

/// Every event queued so far. The memory vendor queues events synchronously inside each
/// call, so what a call caused is there when it returns: no waiting.
fn drain(events: &mut EventStream) -> Vec<VendorEvent> {
    let mut out = Vec::new();
    while let Some(Some(e)) = events.next().now_or_never() {
        out.push(e);
    }
    out
}

async fn say(client: &MemoryClient, conv: &ConversationId, text: &str) -> ServerMsgId {
    let msg = OutgoingMessage::new(conv.clone(), Content::text(text), Timestamp::from_millis(0));
    client.send(&msg).await.expect("send").server_id
}

fn refused(r: Result<im_service::MessageChange, ServiceError>) -> ChangeRefusal {
    match r {
        Err(ServiceError::ChangeRefused(why)) => why,
        other => panic!("expected a refused change, got {other:?}"),
    }
}

async fn history(client: &MemoryClient, conv: &ConversationId) -> Vec<Message> {
    client
        .pull_history(&HistoryQuery::latest(conv.clone(), 50))
        .await
        .expect("history")
        .messages
}

fn texts(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match &m.content {
            Content::Text(t) => t.clone(),
            Content::Recalled { by, .. } => format!("<recalled by {by}>"),
            Content::Custom { type_tag, .. } => format!("<{type_tag}>"),
        })
        .collect()
}

#[tokio::test]
async fn a_recall_in_the_window_reaches_peers_not_the_changer_and_empties_the_store() {
    let w = world(MemoryVendorConfig::default());
    let (a, mut a_events) = online(&w.vendor, &w.alice).await;
    let (b, mut b_events) = online(&w.vendor, &w.bob).await;
    let id = say(&a, &w.conv, "wrong quick reply").await;
    drain(&mut b_events);
    w.clock.advance(Duration::from_secs(120)); // the last allowed instant

    let change = a.recall(&w.conv, &id).await.expect("recall in the window");
    assert_eq!(change.kind, ChangeKind::Recalled);
    assert_eq!(change.revision, 1);
    assert_eq!(change.by, w.alice.user);
    assert_eq!(
        drain(&mut b_events),
        vec![VendorEvent::MessageChanged(change.clone())],
        "the peer hears of the recall live"
    );
    assert_eq!(
        drain(&mut a_events),
        vec![],
        "the changer's own session is not told what it did"
    );
    let stored = w.vendor.stored_messages(&w.conv);
    assert_eq!(texts(&stored), vec!["<recalled by alice>".to_string()]);
    assert!(
        !format!("{stored:?}").contains("wrong quick reply"),
        "recalled content is gone from the vendor's store"
    );
    assert_eq!(texts(&history(&b, &w.conv).await), texts(&stored));
    assert_eq!(
        refused(a.recall(&w.conv, &id).await),
        ChangeRefusal::Recalled
    );
}

#[tokio::test]
async fn a_recall_after_the_window_or_by_another_user_is_refused() {
    let w = world(MemoryVendorConfig::default());
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let (b, _be) = online(&w.vendor, &w.bob).await;
    let id = say(&a, &w.conv, "hello").await;
    assert_eq!(
        refused(b.recall(&w.conv, &id).await),
        ChangeRefusal::NotAllowed,
        "only the sender may recall"
    );
    w.clock.advance(Duration::from_secs(121));
    assert_eq!(
        refused(a.recall(&w.conv, &id).await),
        ChangeRefusal::WindowPassed {
            window: Duration::from_secs(120)
        }
    );
    assert_eq!(texts(&w.vendor.stored_messages(&w.conv)), vec!["hello"]);
    // Unknown messages and strangers are typed errors too.
    assert_eq!(
        refused(a.recall(&w.conv, &ServerMsgId::new("m:999")).await),
        ChangeRefusal::UnknownMessage
    );
    assert_eq!(
        refused(a.recall(&w.conv, &ServerMsgId::new("not ours")).await),
        ChangeRefusal::UnknownMessage
    );
    let carol = w.vendor.register_user(&UserId::new("carol"));
    let (c, _ce) = online(&w.vendor, &carol).await;
    assert_eq!(
        c.edit(&w.conv, &id, &Content::text("x")).await,
        Err(ServiceError::NotMember(w.conv.clone()))
    );
}

#[tokio::test]
async fn edits_follow_the_permission_and_revisions_increase() {
    let w = world(MemoryVendorConfig::default());
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let (b, mut b_events) = online(&w.vendor, &w.bob).await;
    assert_eq!(a.lifecycle(), LifecyclePolicy::default());
    let id = say(&a, &w.conv, "see you at 5").await;
    drain(&mut b_events);
    assert_eq!(
        refused(b.edit(&w.conv, &id, &Content::text("bob was here")).await),
        ChangeRefusal::NotAllowed,
        "by default only the sender edits"
    );
    w.clock.advance(Duration::from_secs(3600)); // edits have no window by default
    let first = a.edit(&w.conv, &id, &Content::text("see you at 6")).await;
    let first = first.expect("edit by sender");
    let second = a.edit(&w.conv, &id, &Content::text("see you at 7")).await;
    let second = second.expect("second edit");
    assert_eq!((first.revision, second.revision), (1, 2));
    assert_eq!(
        drain(&mut b_events),
        vec![
            VendorEvent::MessageChanged(first),
            VendorEvent::MessageChanged(second)
        ]
    );
    assert_eq!(texts(&history(&b, &w.conv).await), vec!["see you at 7"]);
    assert!(matches!(
        a.edit(&w.conv, &id, &Content::text("x".repeat(20_000)))
            .await,
        Err(ServiceError::MessageTooLarge { .. })
    ));

    // Another vendor lets any member edit.
    let w = world(MemoryVendorConfig {
        lifecycle: LifecyclePolicy {
            edit_permission: EditPermission::AnyMember,
            ..LifecyclePolicy::default()
        },
        ..MemoryVendorConfig::default()
    });
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let (b, _be) = online(&w.vendor, &w.bob).await;
    let id = say(&a, &w.conv, "typo").await;
    let change = b.edit(&w.conv, &id, &Content::text("fixed")).await;
    assert_eq!(change.expect("any member may edit").by, w.bob.user);
    assert_eq!(texts(&history(&a, &w.conv).await), vec!["fixed"]);
}

#[tokio::test]
async fn an_edit_after_a_recall_is_refused() {
    let w = world(MemoryVendorConfig::default());
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let id = say(&a, &w.conv, "oops").await;
    a.edit(&w.conv, &id, &Content::text("oops!"))
        .await
        .expect("edit");
    let recall = a.recall(&w.conv, &id).await.expect("recall");
    assert_eq!(recall.revision, 2);
    assert_eq!(
        refused(a.edit(&w.conv, &id, &Content::text("back")).await),
        ChangeRefusal::Recalled
    );
    assert_eq!(
        texts(&w.vendor.stored_messages(&w.conv)),
        vec!["<recalled by alice>"]
    );
}

#[tokio::test]
async fn sending_recalled_content_is_an_invalid_request() {
    let w = world(MemoryVendorConfig::default());
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let fake = Content::Recalled {
        by: w.bob.user.clone(),
        at: Timestamp::from_millis(0),
    };
    let msg = OutgoingMessage::new(w.conv.clone(), fake.clone(), Timestamp::from_millis(0));
    assert!(matches!(
        a.send(&msg).await,
        Err(ServiceError::InvalidRequest(_))
    ));
    let id = say(&a, &w.conv, "hi").await;
    assert!(matches!(
        a.edit(&w.conv, &id, &fake).await,
        Err(ServiceError::InvalidRequest(_))
    ));
    assert_eq!(w.vendor.stored_messages(&w.conv).len(), 1);
}

#[tokio::test]
async fn delete_for_me_hides_only_for_the_caller_and_reaches_its_other_device() {
    let w = world(multi_device());
    let (a, mut a_events) = online(&w.vendor, &w.alice).await;
    let (b1, mut b1_events) = online(&w.vendor, &w.bob).await;
    let (b2, mut b2_events) = online(&w.vendor, &w.bob).await;
    let keep = say(&a, &w.conv, "keep").await;
    let gone = say(&a, &w.conv, "gone").await;
    drain(&mut b1_events);
    drain(&mut b2_events);

    let change = b1.delete_for_me(&w.conv, &gone).await.expect("delete");
    assert_eq!(change.kind, ChangeKind::DeletedForMe);
    assert_eq!(
        drain(&mut b2_events),
        vec![VendorEvent::MessageChanged(change.clone())],
        "my other device deletes it too"
    );
    assert_eq!(drain(&mut b1_events), vec![], "not told to the changer");
    assert_eq!(drain(&mut a_events), vec![], "nobody else hears of it");
    assert_eq!(texts(&history(&b2, &w.conv).await), vec!["keep"]);
    assert_eq!(texts(&history(&a, &w.conv).await), vec!["gone", "keep"]);
    let all = HistoryQuery {
        scope: HistoryScope::All,
        ..HistoryQuery::latest(w.conv.clone(), 50)
    };
    let mine = b1.pull_history(&all).await.expect("history of all");
    assert_eq!(texts(&mine.messages), vec!["keep"]);
    // A retry answers with the first deletion; further changes are not for bob to make.
    assert_eq!(b2.delete_for_me(&w.conv, &gone).await, Ok(change));
    assert_eq!(
        refused(b1.edit(&w.conv, &gone, &Content::text("x")).await),
        ChangeRefusal::UnknownMessage
    );
    // The sender's edit of it reaches bob no more.
    a.edit(&w.conv, &gone, &Content::text("gone!"))
        .await
        .expect("edit");
    assert_eq!(drain(&mut b1_events), vec![]);
    let _ = keep;
}

#[tokio::test]
async fn a_message_deleted_for_me_leaves_my_offline_queue_only() {
    let w = world(MemoryVendorConfig::default());
    let carol = w.vendor.register_user(&UserId::new("carol"));
    let group = GroupId::new("desk");
    w.vendor
        .create_group(
            &group,
            &[w.alice.user.clone(), w.bob.user.clone(), carol.user.clone()],
        )
        .expect("group");
    let conv = ConversationId::Group(group);
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let spam = say(&a, &conv, "spam").await;
    say(&a, &conv, "news").await;
    let (b, _be) = logged_in(&w.vendor, &w.bob).await;
    b.delete_for_me(&conv, &spam).await.expect("delete");
    let batch = b.pull_offline(10).await.expect("offline");
    assert_eq!(texts(&batch.messages), vec!["news"]);
    assert_eq!(w.vendor.offline_len(&carol.user), 2, "carol keeps both");
}

#[tokio::test]
async fn offline_and_history_pulls_return_the_current_state() {
    let w = world(MemoryVendorConfig::default());
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let edited = say(&a, &w.conv, "draft").await;
    let recalled = say(&a, &w.conv, "secret").await;
    say(&a, &w.conv, "plain").await;
    a.edit(&w.conv, &edited, &Content::text("final"))
        .await
        .expect("edit");
    a.recall(&w.conv, &recalled).await.expect("recall");
    assert_eq!(w.vendor.offline_len(&w.bob.user), 3);

    let (b, _be) = logged_in(&w.vendor, &w.bob).await;
    let batch = b.pull_offline(10).await.expect("offline");
    assert_eq!(
        texts(&batch.messages),
        vec!["plain", "<recalled by alice>", "final"],
        "offline messages come in their current state (newest first)"
    );
    assert_eq!(texts(&history(&b, &w.conv).await), texts(&batch.messages));
    assert!(!format!("{batch:?}").contains("secret"));
}

#[tokio::test]
async fn an_offline_user_pulls_the_changes_it_missed_page_by_page() {
    let w = world(MemoryVendorConfig::default());
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let (b, _be) = logged_in(&w.vendor, &w.bob).await;
    let start = b.pull_changes(None, 10).await.expect("feed end");
    assert!(start.changes.is_empty() && start.receipts.is_empty());
    assert_eq!(start.left, 0);
    b.logout().await.expect("logout");

    let id = say(&a, &w.conv, "v1").await;
    let edit = a
        .edit(&w.conv, &id, &Content::text("v2"))
        .await
        .expect("edit");
    let recall = a.recall(&w.conv, &id).await.expect("recall");

    b.login(&w.bob).await.expect("login");
    let first = b.pull_changes(Some(start.next.clone()), 1).await;
    let first = first.expect("first page");
    assert_eq!(first.changes, vec![edit.clone()]);
    assert_eq!(first.left, 1);
    let second = b.pull_changes(Some(first.next.clone()), 1).await;
    let second = second.expect("second page");
    assert_eq!(second.changes, vec![recall.clone()]);
    assert_eq!(second.left, 0);
    let done = b.pull_changes(Some(second.next.clone()), 10).await;
    let done = done.expect("up to date");
    assert_eq!((done.changes.len(), done.left), (0, 0));
    assert_eq!(done.next, second.next, "an empty pull keeps its place");
    // All at once, from the start.
    let all = b.pull_changes(Some(start.next), 10).await.expect("all");
    assert_eq!(all.changes, vec![edit, recall]);
    // A fresh client starts at the end.
    let fresh = b.pull_changes(None, 10).await.expect("fresh");
    assert_eq!(fresh.next, second.next);
}

#[tokio::test]
async fn a_malformed_change_cursor_is_a_typed_error() {
    let w = world(MemoryVendorConfig::default());
    let (b, _be) = logged_in(&w.vendor, &w.bob).await;
    assert!(matches!(
        b.pull_changes(Some(ChangeCursor(b"garbage".to_vec())), 10)
            .await,
        Err(ServiceError::InvalidRequest(_))
    ));
    assert!(matches!(
        b.pull_changes(None, 0).await,
        Err(ServiceError::InvalidRequest(_))
    ));
    let nobody = w.vendor.client();
    assert_eq!(
        nobody.pull_changes(None, 10).await,
        Err(ServiceError::NotLoggedIn)
    );
}

#[tokio::test]
async fn the_change_feed_keeps_what_retention_keeps() {
    let w = world(MemoryVendorConfig {
        retention: Some(Duration::from_secs(24 * 3600)),
        ..MemoryVendorConfig::default()
    });
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let (b, _be) = logged_in(&w.vendor, &w.bob).await;
    let start = b.pull_changes(None, 10).await.expect("start").next;
    let old = say(&a, &w.conv, "old").await;
    a.edit(&w.conv, &old, &Content::text("old!"))
        .await
        .expect("edit");
    w.clock.advance(Duration::from_secs(2 * 24 * 3600));
    let new = say(&a, &w.conv, "new").await;
    let kept = a
        .edit(&w.conv, &new, &Content::text("new!"))
        .await
        .expect("edit");
    w.vendor.sweep();
    assert_eq!(w.vendor.change_feed_len(&w.bob.user), 1);
    let batch = b.pull_changes(Some(start), 10).await.expect("pull");
    assert_eq!(
        batch.changes,
        vec![kept],
        "a stale cursor gets everything kept"
    );
    assert_eq!(batch.left, 0);
}

#[tokio::test]
async fn a_read_receipt_reaches_the_peer_and_my_other_device() {
    let w = world(multi_device());
    let (a1, mut a1_events) = online(&w.vendor, &w.alice).await;
    let (a2, mut a2_events) = online(&w.vendor, &w.alice).await;
    let (b, mut b_events) = online(&w.vendor, &w.bob).await;
    assert!(a1.capabilities().supports(Capability::ReadReceipts));
    assert!(a1.capabilities().supports(Capability::ReadReceiptEvents));
    let b_start = b.pull_changes(None, 10).await.expect("start").next;
    let first = say(&b, &w.conv, "one").await;
    let second = say(&b, &w.conv, "two").await;
    drain(&mut a1_events);
    drain(&mut a2_events);

    a1.mark_read(&w.conv, &second).await.expect("mark read");
    let receipt = w
        .vendor
        .read_position(&w.alice.user, &w.conv)
        .expect("read position kept");
    assert_eq!(receipt.reader, w.alice.user);
    assert_eq!(receipt.up_to, second);
    assert_eq!(
        drain(&mut b_events),
        vec![VendorEvent::ReadReceipt(receipt.clone())],
        "the peer sees 'seen'"
    );
    assert_eq!(
        drain(&mut a2_events),
        vec![VendorEvent::ReadReceipt(receipt.clone())],
        "my other device learns my read"
    );
    assert_eq!(
        drain(&mut a1_events),
        vec![],
        "the reading device is not told"
    );

    // Read positions only move forward.
    a2.mark_read(&w.conv, &first).await.expect("older read");
    assert_eq!(
        drain(&mut b_events),
        vec![],
        "an older read position reports nothing"
    );
    assert_eq!(
        w.vendor.read_position(&w.alice.user, &w.conv),
        Some(receipt.clone())
    );
    let fed = b.pull_changes(Some(b_start), 10).await.expect("feed");
    assert_eq!(fed.receipts, vec![receipt]);

    assert!(matches!(
        a1.mark_read(&w.conv, &ServerMsgId::new("m:999")).await,
        Err(ServiceError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn with_multi_device_my_send_reaches_my_other_device_once_and_nobody_is_kicked() {
    let w = world(multi_device());
    let (a1, mut a1_events) = online(&w.vendor, &w.alice).await;
    let (a2, mut a2_events) = online(&w.vendor, &w.alice).await;
    let caps = a1.capabilities();
    assert!(caps.supports(Capability::MultiDevice));
    assert!(!caps.supports(Capability::KickOnSecondLogin));
    a1.ping().await.expect("the first device stays logged in");

    let id = say(&a1, &w.conv, "from my phone").await;
    let pushed = drain(&mut a2_events);
    assert_eq!(pushed.len(), 1, "exactly one push: {pushed:?}");
    let VendorEvent::MessagePushed(m) = &pushed[0] else {
        panic!("expected a push, got {pushed:?}");
    };
    assert_eq!((&m.server_id, &m.sender), (&id, &w.alice.user));
    assert_eq!(
        drain(&mut a1_events),
        vec![],
        "the sending device gets no echo"
    );
    assert_eq!(w.vendor.offline_len(&w.alice.user), 0);
    assert_eq!(w.vendor.offline_len(&w.bob.user), 1);
    a2.ping().await.expect("both devices live");
}

#[tokio::test]
async fn without_multi_device_a_second_login_still_kicks_the_first() {
    let w = world(MemoryVendorConfig::default());
    let (a1, mut a1_events) = online(&w.vendor, &w.alice).await;
    assert!(a1.capabilities().supports(Capability::KickOnSecondLogin));
    assert!(!a1.capabilities().supports(Capability::MultiDevice));
    let (_a2, _a2_events) = online(&w.vendor, &w.alice).await;
    assert_eq!(
        drain(&mut a1_events),
        vec![VendorEvent::Kicked(
            im_service::KickReason::LoggedInElsewhere
        )]
    );
    assert!(matches!(a1.ping().await, Err(ServiceError::Kicked(_))));
}

#[tokio::test]
async fn the_vendor_feeds_every_stored_change_in_order() {
    let w = world(MemoryVendorConfig::default());
    let mut changes = w.vendor.change_feed();
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let (b, _be) = online(&w.vendor, &w.bob).await;
    let id = say(&a, &w.conv, "x").await;
    let edit = a
        .edit(&w.conv, &id, &Content::text("y"))
        .await
        .expect("edit");
    let delete = b.delete_for_me(&w.conv, &id).await.expect("delete");
    let recall = a.recall(&w.conv, &id).await.expect("recall");
    assert_eq!(
        (delete.revision, recall.revision),
        (2, 3),
        "one revision counter per message"
    );
    let mut fed = Vec::new();
    while let Ok(c) = changes.try_recv() {
        fed.push(c);
    }
    assert_eq!(fed, vec![edit, delete, recall]);
}

#[tokio::test]
async fn a_device_that_was_away_learns_my_sends_from_history_and_my_deletions_from_the_feed() {
    let w = world(multi_device());
    let (a1, _a1e) = online(&w.vendor, &w.alice).await;
    let (a2, _a2e) = logged_in(&w.vendor, &w.alice).await;
    let a2_start = a2.pull_changes(None, 10).await.expect("start").next;
    a2.logout().await.expect("away");
    let (b, _be) = online(&w.vendor, &w.bob).await;

    let mine = say(&a1, &w.conv, "sent from my phone").await;
    say(&b, &w.conv, "answer").await; // pushed live to a1: no offline copy for alice
    a1.delete_for_me(&w.conv, &mine).await.expect("delete");
    assert_eq!(
        w.vendor.offline_len(&w.alice.user),
        0,
        "no offline copy of my own send, nor of what another device took live"
    );

    a2.login(&w.alice).await.expect("back");
    assert!(
        a2.pull_offline(10)
            .await
            .expect("offline")
            .messages
            .is_empty()
    );
    let all = HistoryQuery {
        scope: HistoryScope::All,
        ..HistoryQuery::latest(w.conv.clone(), 50)
    };
    let page = a2.pull_history(&all).await.expect("history");
    assert_eq!(
        texts(&page.messages),
        vec!["answer"],
        "deleted for me on every device"
    );
    let fed = a2.pull_changes(Some(a2_start), 10).await.expect("feed");
    assert_eq!(fed.changes.len(), 1);
    assert_eq!(fed.changes[0].kind, ChangeKind::DeletedForMe);
    assert_eq!(fed.changes[0].target, mine);
}

#[tokio::test]
async fn a_recall_in_a_group_reaches_every_online_member() {
    let w = world(MemoryVendorConfig::default());
    let carol = w.vendor.register_user(&UserId::new("carol"));
    let group = GroupId::new("desk");
    let members = [w.alice.user.clone(), w.bob.user.clone(), carol.user.clone()];
    w.vendor.create_group(&group, &members).expect("group");
    let conv = ConversationId::Group(group);
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let (_b, mut b_events) = online(&w.vendor, &w.bob).await;
    let (c, _ce) = logged_in(&w.vendor, &carol).await; // syncing: no live pushes yet
    let c_start = c.pull_changes(None, 10).await.expect("start").next;
    let id = say(&a, &conv, "wrong tenant").await;
    drain(&mut b_events);
    let change = a.recall(&conv, &id).await.expect("recall");
    assert_eq!(
        drain(&mut b_events),
        vec![VendorEvent::MessageChanged(change.clone())]
    );
    let fed = c.pull_changes(Some(c_start), 10).await.expect("feed");
    assert_eq!(fed.changes, vec![change]);
}

#[tokio::test]
async fn a_device_that_does_not_read_its_changes_is_dropped_and_loses_nothing() {
    let w = world(MemoryVendorConfig {
        event_buffer: 2,
        ..MemoryVendorConfig::default()
    });
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let b = w.vendor.client();
    let _held = b.take_events(); // never read
    b.login(&w.bob).await.expect("login");
    let start = b.pull_changes(None, 10).await.expect("start").next;
    b.go_online().await.expect("online");
    let id = say(&a, &w.conv, "v0").await;
    for i in 1..=3 {
        let edit = a.edit(&w.conv, &id, &Content::text(format!("v{i}"))).await;
        edit.expect("edit");
    }
    assert!(
        !w.vendor.is_online(&w.bob.user),
        "a full queue drops the device"
    );
    let b = w.vendor.client();
    b.login(&w.bob).await.expect("login again");
    let fed = b.pull_changes(Some(start), 10).await.expect("feed");
    let revisions: Vec<u32> = fed.changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, vec![1, 2, 3], "the feed kept every change");
}

#[tokio::test]
async fn go_online_pushes_what_changed_after_the_last_feed_pull() {
    let w = world(multi_device());
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let id = say(&a, &w.conv, "v0").await;
    let (b1, mut b1_events) = logged_in(&w.vendor, &w.bob).await;
    let (b2, _b2e) = online(&w.vendor, &w.bob).await;
    b1.pull_changes(None, 10).await.expect("synced to the end");
    // Between b1's last pull and its go_online: a peer's edit, b1's own deletion of it
    // (returned to b1 already), and b2's read.
    let edit = a
        .edit(&w.conv, &id, &Content::text("v1"))
        .await
        .expect("edit");
    b2.mark_read(&w.conv, &id).await.expect("read on b2");
    let receipt = w.vendor.read_position(&w.bob.user, &w.conv).expect("kept");
    b1.delete_for_me(&w.conv, &id).await.expect("delete");
    drain(&mut b1_events);
    b1.go_online().await.expect("online");
    assert_eq!(
        drain(&mut b1_events),
        vec![
            VendorEvent::MessageChanged(edit),
            VendorEvent::ReadReceipt(receipt)
        ],
        "what raced the feed pull is pushed once, never the session's own change"
    );
    // A client that does not use the feed gets no replay.
    let (b3, mut b3_events) = online(&w.vendor, &w.bob).await;
    assert_eq!(drain(&mut b3_events), vec![]);
    b3.ping().await.expect("alive");
}

#[tokio::test]
async fn the_change_feed_keeps_at_most_its_bound() {
    let w = world(MemoryVendorConfig {
        change_feed_max: 2,
        ..MemoryVendorConfig::default()
    });
    let (a, _ae) = online(&w.vendor, &w.alice).await;
    let (b, _be) = logged_in(&w.vendor, &w.bob).await;
    let start = b.pull_changes(None, 10).await.expect("start").next;
    let id = say(&a, &w.conv, "v0").await;
    for i in 1..=3 {
        let edit = a.edit(&w.conv, &id, &Content::text(format!("v{i}"))).await;
        edit.expect("edit");
    }
    assert_eq!(w.vendor.change_feed_len(&w.bob.user), 2);
    let fed = b.pull_changes(Some(start), 10).await.expect("feed");
    let revisions: Vec<u32> = fed.changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, vec![2, 3], "the oldest went first");
    assert_eq!(texts(&history(&b, &w.conv).await), vec!["v3"]);
}
