//! Architecture-layer cases: the client (`im-arch`) on the target vendor.

// A case fails by panicking (the runner reports the message): `expect` is an assertion here.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::{ClientEvent, ConnectionState, DeliveryPolicy, EventKind, Filter, ImClient};
use im_service::{Capability as C, Content, ConversationId, Origin, UserId, Vendor};

use super::{Case, Category, Layer};
use crate::contract::text;
use crate::harness::VendorHarness;
use crate::on_target;

/// Events until `stop` matches, failing the case after `within`.
async fn until(
    sub: &mut im_arch::Subscription,
    within: Duration,
    mut stop: impl FnMut(&ClientEvent) -> bool,
) -> Vec<ClientEvent> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let ev = match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(ev)) => (*ev).clone(),
            Ok(None) => panic!("client gone; saw {seen:?}"),
            Err(_) => panic!("timed out; saw {seen:?}"),
        };
        let done = stop(&ev);
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

fn delivered(events: &[ClientEvent]) -> Vec<(String, Origin)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(r) => Some((
                match &r.message.content {
                    im_service::Content::Text(t) => t.clone(),
                    other => format!("{other:?}"),
                },
                r.origin,
            )),
            _ => None,
        })
        .collect()
}

/// Offline first, then live, none twice, through the client.
async fn ack_online<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    for i in 1..=3 {
        a.send(&text(&conv, &format!("m{i}"))).await.expect("send");
    }
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, bob).build();
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in");
    let events = until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    let offline = delivered(&events);
    assert_eq!(
        offline.len(),
        3,
        "three offline messages, once each: {offline:?}"
    );
    assert!(offline.iter().all(|(_, o)| *o == Origin::Offline));
    a.send(&text(&conv, "live")).await.expect("send");
    let events = until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::Message(_))
    })
    .await;
    assert_eq!(delivered(&events), [("live".to_string(), Origin::Online)]);
    client.logout().await;
}

/// A send goes out once and reports Sent with the vendor's id.
async fn send_reports_sent<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, alice).build();
    let mut sub = client.subscribe();
    client.login().await.expect("login");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    let id = client
        .send(conv.clone(), im_service::Content::text("hello"))
        .await
        .expect("queued");
    let events = until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::SendStatus { client_id, status: Some(im_arch::SendStatus::Sent { .. }), .. } if *client_id == id)
    })
    .await;
    assert!(
        events.iter().any(|e| matches!(
            e,
            ClientEvent::SendStatus {
                status: Some(im_arch::SendStatus::Sending),
                ..
            }
        )),
        "the local echo comes first"
    );
    let b = h.client().await;
    b.login(&bob).await.expect("bob logs in");
    let batch = b.pull_offline(10).await.expect("pull");
    assert_eq!(batch.messages.len(), 1, "stored once at the vendor");
    client.logout().await;
}

/// Unread counts follow received messages and mark-read.
async fn unread_and_mark_read<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, bob).build();
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    for i in 0..2 {
        a.send(&text(&conv, &format!("u{i}"))).await.expect("send");
    }
    let mut got = 0;
    until(&mut sub, Duration::from_secs(10), |e| {
        got += usize::from(matches!(e, ClientEvent::Message(_)));
        got == 2
    })
    .await;
    assert_eq!(client.total_unread(), 2);
    client.mark_read(&conv).await.expect("mark read");
    assert_eq!(client.total_unread(), 0);
    client.logout().await;
}

/// Bob's client online, Alice's raw session, their direct conversation.
async fn online_pair<H: VendorHarness>(
    h: &H,
) -> (ImClient, im_arch::Subscription, H::Client, ConversationId) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, bob).build();
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    (client, sub, a, conv)
}

/// A chat screen's subscription gets its conversation only.
async fn filter_by_conversation<H: VendorHarness>(h: H) {
    let (client, mut all, a, conv) = online_pair(&h).await;
    let carol = h.user("carol").await;
    h.group(
        "team",
        &[UserId::new("alice"), UserId::new("bob"), carol.user.clone()],
    )
    .await;
    let team = ConversationId::group("team");
    let mut screen = client.subscribe_with(
        Filter::of([EventKind::Message]).in_conversations([conv.clone()]),
        DeliveryPolicy::DropOldest { capacity: 64 },
    );
    a.send(&text(&team, "to the team")).await.expect("send");
    a.send(&text(&conv, "to bob")).await.expect("send");
    let mut got = 0;
    until(&mut all, Duration::from_secs(10), |e| {
        got += usize::from(matches!(e, ClientEvent::Message(_)));
        got == 2
    })
    .await;
    let seen: Vec<String> = screen
        .drain_now()
        .iter()
        .filter_map(|e| match &**e {
            ClientEvent::Message(r) => Some(format!("{:?}", r.message.content)),
            _ => None,
        })
        .collect();
    assert_eq!(seen.len(), 1, "only the chat's conversation: {seen:?}");
    assert!(seen[0].contains("to bob"));
    client.logout().await;
}

/// Sends of one conversation reach the vendor in the order they were queued.
async fn sends_keep_their_order<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, alice).build();
    let mut sub = client.subscribe();
    client.login().await.expect("login");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            client
                .send(conv.clone(), Content::text(format!("n{i}")))
                .await
                .expect("queued"),
        );
    }
    let mut sent = 0;
    until(&mut sub, Duration::from_secs(10), |e| {
        sent += usize::from(matches!(
            e,
            ClientEvent::SendStatus {
                status: Some(im_arch::SendStatus::Sent { .. }),
                ..
            }
        ));
        sent == 5
    })
    .await;
    let b = h.client().await;
    b.login(&bob).await.expect("bob logs in");
    let page = b
        .pull_history(&im_service::HistoryQuery::latest(conv, 10))
        .await
        .expect("history");
    let mut bodies: Vec<String> = page
        .messages
        .iter()
        .map(|m| format!("{:?}", m.content))
        .collect();
    bodies.reverse(); // history is newest first
    let want: Vec<String> = (0..5)
        .map(|i| format!("{:?}", Content::text(format!("n{i}"))))
        .collect();
    assert_eq!(bodies, want);
    client.logout().await;
}

/// Oversized content is refused by `send` with a typed error; nothing is queued.
async fn oversized_send_refused<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, alice).build();
    client.login().await.expect("login");
    let huge = Content::text("x".repeat(h.config().max_message_bytes + 1));
    let err = client.send(conv, huge).await;
    assert!(err.is_err(), "oversized content must be refused");
    assert!(client.outbox().await.expect("outbox").is_empty());
    client.logout().await;
}

/// The timeline pages newest first from the local store.
async fn timeline_newest_first<H: VendorHarness>(h: H) {
    let (client, mut sub, a, conv) = online_pair(&h).await;
    for i in 0..5 {
        a.send(&text(&conv, &format!("t{i}"))).await.expect("send");
    }
    let mut got = 0;
    until(&mut sub, Duration::from_secs(10), |e| {
        got += usize::from(matches!(e, ClientEvent::Message(_)));
        got == 5
    })
    .await;
    let page = client
        .timeline_before(&conv, None, 3)
        .await
        .expect("timeline");
    let bodies: Vec<String> = page
        .messages
        .iter()
        .map(|m| format!("{:?}", m.content))
        .collect();
    let want: Vec<String> = ["t4", "t3", "t2"]
        .iter()
        .map(|b| format!("{:?}", Content::text(*b)))
        .collect();
    assert_eq!(bodies, want);
    let older = client
        .timeline_before(&conv, page.messages.last(), 10)
        .await
        .expect("timeline");
    assert_eq!(older.messages.len(), 2, "the rest, no repeats");
    client.logout().await;
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "SYNC-001",
            title: "ACK-online through the client: offline first, then live, none twice",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::OfflineQueue],
            steps: &[
                "alice sends 3 messages while bob is away",
                "bob's client logs in and syncs",
                "alice sends one more",
            ],
            expected: "the 3 arrive as Offline before Online, once each; the next as Online",
            guards: Some(4),
            run: |t| Box::pin(async move { on_target!(t, ack_online) }),
        },
        Case {
            id: "SEND-001",
            title: "A queued send shows a local echo, goes out once, reports Sent",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::ServerAcks],
            steps: &[
                "log in",
                "send one message",
                "read the peer's offline queue",
            ],
            expected: "Sending then Sent; the vendor stores it once",
            guards: Some(5),
            run: |t| Box::pin(async move { on_target!(t, send_reports_sent) }),
        },
        Case {
            id: "CONV-001",
            title: "Unread counts follow received messages and mark-read",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            steps: &[
                "bob is online",
                "alice sends 2 messages",
                "bob marks the conversation read",
            ],
            expected: "total unread 2, then 0",
            guards: Some(6),
            run: |t| Box::pin(async move { on_target!(t, unread_and_mark_read) }),
        },
        Case {
            id: "DIST-001",
            title: "A conversation-filtered subscription gets only its conversation",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::GroupConversations],
            steps: &[
                "a chat screen subscribes to the direct conversation",
                "alice writes in a group, then in the direct conversation",
            ],
            expected: "the screen sees exactly the direct message",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, filter_by_conversation) }),
        },
        Case {
            id: "SEND-002",
            title: "Sends of a conversation reach the vendor in queue order",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::HistoryByTime],
            steps: &[
                "queue 5 sends at once",
                "wait until all are Sent",
                "read history",
            ],
            expected: "the vendor holds them in the order they were queued",
            guards: Some(3),
            run: |t| Box::pin(async move { on_target!(t, sends_keep_their_order) }),
        },
        Case {
            id: "SEND-003",
            title: "Oversized content is refused by send, nothing is queued",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            steps: &["send content one byte over the vendor's limit"],
            expected: "a typed error; the outbox stays empty",
            guards: Some(10),
            run: |t| Box::pin(async move { on_target!(t, oversized_send_refused) }),
        },
        Case {
            id: "HIST-001",
            title: "The timeline pages newest first without repeats",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            steps: &["receive 5 messages", "page 3, then the rest"],
            expected: "t4, t3, t2, then the 2 older ones",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, timeline_newest_first) }),
        },
    ]
}
