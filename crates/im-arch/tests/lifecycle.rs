//! The message lifecycle through `ImClient` on the in-process vendor with several devices
//! (issue 20): recall, edit and delete for me reaching the other device and the peer, read
//! state both ways, my own sends on my other device, and a device that was away learning
//! what changed from the change feed. Tokio time is paused; every wait has one overall
//! deadline.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::{ArchError, ClientConfig, ClientEvent, ImClient, Subscription};
use im_service::memory::{MemoryVendor, MemoryVendorConfig};
use im_service::{
    ChangeKind, ChangeRefusal, Content, ConversationId, Credentials, Message, ServerMsgId, UserId,
};

/// Every wait of a test ends by this (paused) deadline at the latest, as a named failure.
const DEADLINE: Duration = Duration::from_secs(3600);

struct World {
    vendor: MemoryVendor,
    me: Credentials,
    peer: Credentials,
    conv: ConversationId,
}

fn world() -> World {
    let vendor = MemoryVendor::new(MemoryVendorConfig {
        multi_device: true,
        ..MemoryVendorConfig::default()
    });
    let me = vendor.register_user(&UserId::new("me"));
    let peer = vendor.register_user(&UserId::new("peer"));
    let conv = ConversationId::direct(&me.user, &peer.user);
    World {
        vendor,
        me,
        peer,
        conv,
    }
}

/// A logged-in client (one device) of `creds`, with its subscription.
async fn device(w: &World, creds: &Credentials) -> (ImClient, Subscription) {
    let client = ImClient::builder(Arc::new(w.vendor.client()), creds.clone())
        .config(ClientConfig {
            heartbeat_interval: Duration::from_secs(5),
            ..ClientConfig::default()
        })
        .build();
    let sub = client.subscribe();
    client.login().await.unwrap();
    (client, sub)
}

async fn wait_for(sub: &mut Subscription, what: &str, pred: impl FnMut(&ClientEvent) -> bool) {
    im_testkit::wait::wait_for(sub, DEADLINE, what, pred).await;
}

/// Waits until `sub` is handed the message with content `body`; returns it.
async fn receives(sub: &mut Subscription, who: &str, body: &str) -> Message {
    let want = Content::text(body);
    let ev = im_testkit::wait::wait_for(
        sub,
        DEADLINE,
        &format!("{who} gets {body:?}"),
        |e| matches!(e, ClientEvent::Message(r) if r.message.content == want),
    )
    .await;
    match ev {
        ClientEvent::Message(r) => r.message,
        _ => unreachable!(),
    }
}

/// Waits until `sub` is told that `target` changed; returns the message as it now is.
async fn changed(sub: &mut Subscription, who: &str, target: &ServerMsgId) -> Option<Message> {
    let ev = im_testkit::wait::wait_for(
        sub,
        DEADLINE,
        &format!("{who} sees {target} change"),
        |e| matches!(e, ClientEvent::MessageChanged { change, .. } if &change.target == target),
    )
    .await;
    match ev {
        ClientEvent::MessageChanged { message, .. } => message,
        _ => unreachable!(),
    }
}

async fn timeline(client: &ImClient, conv: &ConversationId) -> Vec<Message> {
    client
        .timeline_before(conv, None, 100)
        .await
        .unwrap()
        .messages
}

fn unread(client: &ImClient, conv: &ConversationId) -> u64 {
    client
        .conversations(0, 100)
        .into_iter()
        .find(|r| &r.id == conv)
        .map_or(0, |r| r.unread)
}

#[tokio::test(start_paused = true)]
async fn edit_recall_and_delete_reach_my_other_device_and_show_once() {
    let w = world();
    let (a, mut sub_a) = device(&w, &w.me).await;
    let (b, mut sub_b) = device(&w, &w.me).await;
    let (p, mut sub_p) = device(&w, &w.peer).await;
    p.send(w.conv.clone(), Content::text("wrong"))
        .await
        .unwrap();
    let m = receives(&mut sub_a, "device A", "wrong").await;
    receives(&mut sub_b, "device B", "wrong").await;

    // The peer edits: both my devices show it once, with the latest content, marked edited.
    let edit = p
        .edit(&w.conv, &m.server_id, Content::text("right"))
        .await
        .unwrap();
    assert_eq!(edit.kind, ChangeKind::Edited(Content::text("right")));
    for (who, client, sub) in [("A", &a, &mut sub_a), ("B", &b, &mut sub_b)] {
        let now = changed(sub, who, &m.server_id).await.expect("still there");
        assert_eq!(now.content, Content::text("right"));
        let shown = timeline(client, &w.conv).await;
        assert_eq!(shown.len(), 1, "{who}: the edited message shows once");
        assert_eq!(shown[0].content, Content::text("right"), "{who}");
        let rev = client
            .revision(&m.server_id)
            .await
            .unwrap()
            .expect("revision");
        assert!(rev.edited_at.is_some(), "{who}: the UI can show 'edited'");
        let row = client.conversations(0, 10).remove(0);
        assert_eq!(
            row.last_message.map(|l| l.content),
            Some(Content::text("right")),
            "{who}: the list's last message follows the edit"
        );
    }
    // The peer's own timeline has it applied when the call returned.
    assert_eq!(
        timeline(&p, &w.conv).await[0].content,
        Content::text("right")
    );

    // The peer recalls: "message recalled" everywhere, never the old content.
    p.recall(&w.conv, &m.server_id).await.unwrap();
    for (who, client, sub) in [("A", &a, &mut sub_a), ("B", &b, &mut sub_b)] {
        let now = changed(sub, who, &m.server_id).await.expect("still there");
        assert!(matches!(now.content, Content::Recalled { .. }), "{who}");
        let shown = timeline(client, &w.conv).await;
        assert_eq!(shown.len(), 1, "{who}");
        assert!(
            matches!(shown[0].content, Content::Recalled { .. }),
            "{who}"
        );
    }

    // I delete it for me on A: gone from both my devices, the peer keeps it.
    a.delete_for_me(&w.conv, &m.server_id).await.unwrap();
    assert!(
        timeline(&a, &w.conv).await.is_empty(),
        "gone from A at once"
    );
    assert_eq!(changed(&mut sub_b, "B", &m.server_id).await, None);
    assert!(timeline(&b, &w.conv).await.is_empty(), "gone from B");
    assert_eq!(unread(&b, &w.conv), 0, "a deleted message is not unread");
    assert_eq!(timeline(&p, &w.conv).await.len(), 1, "the peer keeps it");
    drop(sub_p.drain_now());
    for c in [a, b, p] {
        c.logout().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_change_is_typed_and_changes_nothing() {
    let w = world();
    let (a, _sub_a) = device(&w, &w.me).await;
    let (p, mut sub_p) = device(&w, &w.peer).await;
    a.send(w.conv.clone(), Content::text("mine")).await.unwrap();
    let m = receives(&mut sub_p, "peer", "mine").await;
    let err = p.recall(&w.conv, &m.server_id).await.unwrap_err();
    assert_eq!(
        err,
        ArchError::ChangeRefused {
            op: "recall",
            refusal: ChangeRefusal::NotAllowed
        }
    );
    assert!(!err.is_retryable());
    assert_eq!(
        timeline(&p, &w.conv).await[0].content,
        Content::text("mine")
    );
    a.logout().await;
    p.logout().await;
}

#[tokio::test(start_paused = true)]
async fn reads_come_back_from_my_other_device_and_from_the_peer() {
    let w = world();
    let (a, mut sub_a) = device(&w, &w.me).await;
    let (b, mut sub_b) = device(&w, &w.me).await;
    let (p, mut sub_p) = device(&w, &w.peer).await;
    for body in ["one", "two"] {
        p.send(w.conv.clone(), Content::text(body)).await.unwrap();
    }
    receives(&mut sub_a, "A", "two").await;
    receives(&mut sub_b, "B", "two").await;
    assert_eq!((unread(&a, &w.conv), unread(&b, &w.conv)), (2, 2));

    // Read on B: unread clears on A too; the peer sees "seen".
    b.mark_read(&w.conv).await.unwrap();
    assert_eq!(unread(&b, &w.conv), 0);
    wait_for(&mut sub_a, "A's row cleared by B's read", |e| {
        matches!(e, ClientEvent::ConversationChanged(row) if row.id == w.conv && row.unread == 0)
    })
    .await;
    assert_eq!(a.total_unread(), 0);
    wait_for(
        &mut sub_p,
        "the peer sees that I read",
        |e| matches!(e, ClientEvent::ReadBy { reader, .. } if reader == &w.me.user),
    )
    .await;
    let seen = p.read_receipts(&w.conv).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reader, w.me.user);
    for c in [a, b, p] {
        c.logout().await;
    }
}

#[tokio::test(start_paused = true)]
async fn my_send_from_device_a_appears_on_device_b_once_as_mine() {
    let w = world();
    let (a, mut sub_a) = device(&w, &w.me).await;
    let (b, mut sub_b) = device(&w, &w.me).await;
    let (p, mut sub_p) = device(&w, &w.peer).await;
    p.send(w.conv.clone(), Content::text("hi")).await.unwrap();
    receives(&mut sub_b, "B", "hi").await;
    a.send(w.conv.clone(), Content::text("from A"))
        .await
        .unwrap();
    let on_b = receives(&mut sub_b, "B", "from A").await;
    assert_eq!(on_b.sender, w.me.user, "delivered as my own message");
    receives(&mut sub_p, "peer", "from A").await;
    // Settle, then count: once on B, never as a second echo on A.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let count = |sub: &mut Subscription| {
        sub.drain_now()
            .iter()
            .filter(|e| matches!(&***e, ClientEvent::Message(r) if r.message.content == Content::text("from A")))
            .count()
    };
    assert_eq!(count(&mut sub_b), 0, "B got it once");
    assert_eq!(
        count(&mut sub_a),
        0,
        "A shows its local echo, no message event"
    );
    assert_eq!(
        unread(&b, &w.conv),
        0,
        "my own message is never unread (and read what it answers)"
    );
    let shown: Vec<Content> = timeline(&b, &w.conv)
        .await
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(shown, [Content::text("from A"), Content::text("hi")]);
    for c in [a, b, p] {
        c.logout().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_device_that_was_away_learns_changes_and_my_sends_after_login() {
    let w = world();
    let (a, mut sub_a) = device(&w, &w.me).await;
    let (b, mut sub_b) = device(&w, &w.me).await;
    let (p, _sub_p) = device(&w, &w.peer).await;
    p.send(w.conv.clone(), Content::text("oops")).await.unwrap();
    let m = receives(&mut sub_b, "B", "oops").await;
    receives(&mut sub_a, "A", "oops").await;
    b.logout().await;

    // While B is away: the peer recalls, sends again, A reads and answers.
    p.recall(&w.conv, &m.server_id).await.unwrap();
    p.send(w.conv.clone(), Content::text("fixed"))
        .await
        .unwrap();
    receives(&mut sub_a, "A", "fixed").await;
    a.mark_read(&w.conv).await.unwrap();
    a.send(w.conv.clone(), Content::text("thanks"))
        .await
        .unwrap();

    b.login().await.unwrap();
    let shown = timeline(&b, &w.conv).await;
    let contents: Vec<&Content> = shown.iter().map(|m| &m.content).collect();
    assert_eq!(contents.len(), 3, "each message once: {contents:?}");
    assert_eq!(contents[0], &Content::text("thanks"));
    assert_eq!(contents[1], &Content::text("fixed"));
    assert!(
        matches!(contents[2], Content::Recalled { .. }),
        "the recall made while away is applied: {contents:?}"
    );
    assert_eq!(unread(&b, &w.conv), 0, "read on A and answered from A");
    assert_eq!(unread(&a, &w.conv), 0);
    drop(sub_b.drain_now());
    for c in [a, b, p] {
        c.logout().await;
    }
}
