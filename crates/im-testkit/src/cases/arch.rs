//! Architecture-layer cases: the client (`im-arch`) on the target vendor.

// A case fails by panicking (the runner reports the message): `expect` is an assertion here.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::{ClientEvent, ConnectionState, DeliveryPolicy, EventKind, Filter, ImClient};
use im_service::{Capability as C, Content, ConversationId, Origin, UserId, Vendor};

use super::{Case, Category, Layer};
use crate::contract::text;
use crate::faulty::{FaultyVendor, PushFaults};
use crate::harness::VendorHarness;
use crate::on_target;

/// Events until `stop` matches, failing the case after `within`.
pub(super) async fn until(
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

pub(super) fn delivered(events: &[ClientEvent]) -> Vec<(String, Origin)> {
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

/// Class 1: the ack of a stored send is lost; the client resends with the same id, and
/// the duplicate answer counts as sent; the vendor holds one copy.
async fn lost_ack_counts_as_sent<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let faulty = Arc::new(FaultyVendor::new(Arc::new(h.client().await), 1));
    faulty.lose_send_acks(1);
    let client = ImClient::builder(faulty, alice).build();
    let mut sub = client.subscribe();
    client.login().await.expect("login");
    let id = client
        .send(conv.clone(), Content::text("once"))
        .await
        .expect("queued");
    until(&mut sub, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::SendStatus { client_id, status: Some(im_arch::SendStatus::Sent { .. }), .. } if *client_id == id)
    })
    .await;
    let b = h.client().await;
    b.login(&bob).await.expect("bob logs in");
    let page = b
        .pull_history(&im_service::HistoryQuery::latest(conv, 10))
        .await
        .expect("history");
    assert_eq!(page.messages.len(), 1, "stored once");
    client.logout().await;
}

/// Class 2: a lost push leaves a hole; the client fetches it and delivers in order.
async fn lost_push_is_filled<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    let faulty = Arc::new(FaultyVendor::new(Arc::new(h.client().await), 2));
    faulty.set_push_faults(PushFaults {
        lose: Some(Arc::new(|m: &im_service::Message| {
            m.seq.is_some_and(|s| s.0 == 2)
        })),
        ..PushFaults::default()
    });
    let client = ImClient::builder(faulty, bob).build();
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    for i in 1..=3 {
        a.send(&text(&conv, &format!("g{i}"))).await.expect("send");
    }
    let mut got = 0;
    let events = until(&mut sub, Duration::from_secs(10), |e| {
        got += usize::from(matches!(e, ClientEvent::Message(_)));
        got == 3
    })
    .await;
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(r) => r.message.seq.map(|s| s.0),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3], "the hole is fetched and order kept");
    client.logout().await;
}

/// Class 3: the head send fails with a server error; nothing overtakes it; it is retried
/// and the rest follow in order.
async fn failed_head_blocks_then_releases<H: VendorHarness>(h: H) {
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
    // An unknown server error: transient, retried by the shared policy.
    h.fail_next(
        im_service::memory::VendorOp::Send,
        2,
        im_service::ServiceError::Server {
            code: 500,
            message: "injected".into(),
        },
    );
    for body in ["A", "B", "C"] {
        client
            .send(conv.clone(), Content::text(body))
            .await
            .expect("queued");
    }
    let mut sent = 0;
    until(&mut sub, Duration::from_secs(20), |e| {
        sent += usize::from(matches!(
            e,
            ClientEvent::SendStatus {
                status: Some(im_arch::SendStatus::Sent { .. }),
                ..
            }
        ));
        sent == 3
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
    bodies.reverse();
    let want: Vec<String> = ["A", "B", "C"]
        .iter()
        .map(|b| format!("{:?}", Content::text(*b)))
        .collect();
    assert_eq!(bodies, want, "nothing overtook the failed head");
    client.logout().await;
}

/// Class 10: a UI subscriber that falls behind is told exactly how many it lost.
async fn lagging_ui_is_told<H: VendorHarness>(h: H) {
    let (client, mut all, a, conv) = online_pair(&h).await;
    let mut ui = client.subscribe_with(
        Filter::of([EventKind::Message]),
        DeliveryPolicy::DropOldest { capacity: 2 },
    );
    for i in 0..5 {
        a.send(&text(&conv, &format!("l{i}"))).await.expect("send");
    }
    let mut got = 0;
    until(&mut all, Duration::from_secs(10), |e| {
        got += usize::from(matches!(e, ClientEvent::Message(_)));
        got == 5
    })
    .await;
    let drained = ui.drain_now();
    assert!(
        matches!(&*drained[0], ClientEvent::Lagged { dropped: 3 }),
        "an explicit lag notice first: {drained:?}"
    );
    assert_eq!(drained.len(), 3, "then the newest two");
    assert_eq!(client.bus().dropped_total(), 3);
    client.logout().await;
}

/// Class 9: a corrupted store entry gives a typed error naming the key; the rest of the
/// store stays usable, and a newer schema is refused without being touched.
async fn store_corruption_is_contained<H: VendorHarness>(_h: H) {
    use im_arch::{SledStore, Store};
    let dir = std::env::temp_dir().join(format!(
        "im-case-store-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let conv = ConversationId::group("g");
    {
        let store = SledStore::open(&dir).expect("open");
        let cursor = im_arch::SyncCursor::default();
        store
            .set_cursors(&[(conv.clone(), cursor)])
            .await
            .expect("write");
        store.flush().await.expect("flush");
    }
    {
        // Corrupt the cursor entry behind the store's back. sled's background threads can
        // hold the directory's lock for a moment after the last handle is dropped (seen on
        // CI), so the raw open waits for it the way `SledStore::open` does, within a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let db = loop {
            match sled::open(&dir) {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("raw open: {e:?}"),
            }
        };
        let tree = db.open_tree("cursors").expect("tree");
        let keys: Vec<_> = tree.iter().keys().map(|k| k.expect("key")).collect();
        for k in keys {
            if k.first() != Some(&0xff) {
                tree.insert(k, &b"garbage"[..]).expect("corrupt");
            }
        }
        db.flush().expect("flush");
    }
    let store = SledStore::open(&dir).expect("reopen");
    let err = store.cursor(&conv).await.expect_err("corrupt entry");
    assert!(
        matches!(err, im_arch::ArchError::CorruptEntry { .. }),
        "typed error: {err:?}"
    );
    // The rest stays usable.
    let fresh = vec![im_service::Message {
        server_id: im_service::ServerMsgId::new("s1"),
        client_id: im_service::ClientMsgId::new("c1"),
        conversation: conv.clone(),
        sender: UserId::new("a"),
        seq: None,
        server_time: im_service::Timestamp::from_millis(1),
        client_time: im_service::Timestamp::from_millis(1),
        content: Content::text("still works"),
    }];
    assert_eq!(store.put_messages(&fresh).await.expect("write"), [true]);
    assert_eq!(store.latest(&conv, 10).await.expect("read"), fresh);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Class 4: a send the vendor refuses for good ends Failed (not recoverable) within a
/// deadline; it never stays "sending".
async fn refused_send_ends_failed<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, alice).build();
    let mut sub = client.subscribe();
    client.login().await.expect("login");
    h.fail_next(
        im_service::memory::VendorOp::Send,
        1,
        im_service::ServiceError::NotMember(conv.clone()),
    );
    let id = client
        .send(conv, Content::text("refused"))
        .await
        .expect("queued");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::SendStatus { client_id, status: Some(im_arch::SendStatus::Failed { recoverable: false, .. }), .. } if *client_id == id)
    })
    .await;
    client.logout().await;
}

/// Class 4: messages queued before a restart go out exactly once after the client is
/// rebuilt on the same sled directory.
async fn queue_survives_restart<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let dir = std::env::temp_dir().join(format!(
        "im-case-queue-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    {
        let store = Arc::new(im_arch::SledStore::open(&dir).expect("open"));
        let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
        // Never logged in: the sends wait in the outbox, then the process "dies".
        let client = ImClient::builder(vendor, alice.clone())
            .store(store)
            .build();
        for body in ["q1", "q2"] {
            client
                .send(conv.clone(), Content::text(body))
                .await
                .expect("queued");
        }
    }
    // The dropped client's task lets go of the directory lock once it is torn down.
    let mut reopened = None;
    for _ in 0..100 {
        match im_arch::SledStore::open(&dir) {
            Ok(store) => {
                reopened = Some(store);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let store = Arc::new(reopened.expect("the store reopens once the old client is gone"));
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, alice).store(store).build();
    let mut sub = client.subscribe();
    client.login().await.expect("login");
    let mut sent = 0;
    until(&mut sub, Duration::from_secs(10), |e| {
        sent += usize::from(matches!(
            e,
            ClientEvent::SendStatus {
                status: Some(im_arch::SendStatus::Sent { .. }),
                ..
            }
        ));
        sent == 2
    })
    .await;
    let b = h.client().await;
    b.login(&bob).await.expect("bob logs in");
    let batch = b.pull_offline(10).await.expect("pull");
    assert_eq!(batch.messages.len(), 2, "each queued message exactly once");
    client.logout().await;
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Class 7: sends queued before login wait for authentication, then go out.
async fn sends_wait_for_auth<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, alice).build();
    let mut sub = client.subscribe();
    let id = client
        .send(conv, Content::text("early"))
        .await
        .expect("queued");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        matches!(
            client
                .outbox()
                .await
                .expect("outbox")
                .first()
                .map(|i| &i.status),
            Some(im_arch::SendStatus::Sending)
        ),
        "nothing is attempted before authentication"
    );
    client.login().await.expect("login");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::SendStatus { client_id, status: Some(im_arch::SendStatus::Sent { .. }), .. } if *client_id == id)
    })
    .await;
    client.logout().await;
}

/// The same client logs in again after a refused login, a kick and a logout, and receives
/// each time; the refusal is typed.
async fn relogin_after_refusal_kick_and_logout<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    let wrong = im_service::Credentials {
        user: bob.user.clone(),
        token: im_service::Token::new("not-the-token"),
    };
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, wrong).build();
    let mut sub = client.subscribe();
    let refused = tokio::time::timeout(Duration::from_secs(20), client.login())
        .await
        .expect("a refused login answers");
    assert!(
        matches!(refused, Err(im_arch::ArchError::AuthFailed(_))),
        "a wrong token is AuthFailed: {refused:?}"
    );
    client.set_token(bob.token.clone());
    for (round, body) in ["after the refusal", "after the kick", "after the logout"]
        .into_iter()
        .enumerate()
    {
        tokio::time::timeout(Duration::from_secs(20), client.login())
            .await
            .expect("login answers")
            .unwrap_or_else(|e| panic!("login {round} on the same client: {e}"));
        a.send(&text(&conv, body)).await.expect("alice sends");
        let want = Content::text(body);
        until(
            &mut sub,
            Duration::from_secs(10),
            |e| matches!(e, ClientEvent::Message(r) if r.message.content == want),
        )
        .await;
        match round {
            0 => {
                // Another device of Bob's takes over: this client is kicked.
                let other = h.client().await;
                other.login(&bob).await.expect("the other device logs in");
                until(&mut sub, Duration::from_secs(10), |e| {
                    matches!(e, ClientEvent::State(ConnectionState::Kicked(_)))
                })
                .await;
                other.logout().await.expect("the other device logs out");
            }
            1 => client.logout().await,
            _ => {}
        }
    }
    client.logout().await;
}

/// Pinned rows first, then by the later of last message and draft.
async fn list_order_pins_and_drafts<H: VendorHarness>(h: H) {
    let (client, mut sub, a, direct) = online_pair(&h).await;
    let carol = h.user("carol").await;
    let bob = h.user("bob").await;
    let with_carol = ConversationId::direct(&bob.user, &carol.user);
    let c = h.client().await;
    c.login(&carol).await.expect("carol logs in");
    a.send(&text(&direct, "from alice")).await.expect("send");
    c.send(&text(&with_carol, "from carol"))
        .await
        .expect("send");
    let mut got = 0;
    until(&mut sub, Duration::from_secs(10), |e| {
        got += usize::from(matches!(e, ClientEvent::Message(_)));
        got == 2
    })
    .await;
    let order = |client: &ImClient| -> Vec<ConversationId> {
        client
            .conversations(0, 10)
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    let first = order(&client);
    assert_eq!(first.len(), 2, "one row per conversation");
    let (top, bottom) = (first[0].clone(), first[1].clone());
    // A draft follows the row (ordering by draft time is unit-tested in im-arch, on a
    // clock the test controls); it survives in the row.
    client.set_draft(&bottom, Some("typing…".into())).await;
    let row = client
        .conversations(0, 10)
        .into_iter()
        .find(|r| r.id == bottom)
        .expect("row");
    assert_eq!(row.draft.map(|d| d.0), Some("typing…".to_string()));
    // Pinned rows come first whatever their time.
    client.set_pinned(&bottom, true).await;
    assert_eq!(order(&client), [bottom, top], "pinned first");
    client.logout().await;
}

/// Class 6: my own messages never count as unread; muted rows leave the total.
async fn own_and_muted_unread<H: VendorHarness>(h: H) {
    let (client, mut sub, a, conv) = online_pair(&h).await;
    client
        .send(conv.clone(), Content::text("mine"))
        .await
        .expect("queued");
    // Mine is stored first; theirs comes after it (so it is unread).
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(
            e,
            ClientEvent::SendStatus {
                status: Some(im_arch::SendStatus::Sent { .. }),
                ..
            }
        )
    })
    .await;
    h.advance(Duration::from_secs(1)).await;
    a.send(&text(&conv, "theirs")).await.expect("send");
    until(
        &mut sub,
        Duration::from_secs(10),
        |e| matches!(e, ClientEvent::Message(r) if r.message.content == Content::text("theirs")),
    )
    .await;
    assert_eq!(client.total_unread(), 1, "only their message is unread");
    client.set_muted(&conv, true).await;
    assert_eq!(client.total_unread(), 0, "muted rows leave the total");
    client.logout().await;
}

/// A kind filter passes exactly its kinds; dropping a subscription removes it.
async fn kind_filter_and_unsubscribe<H: VendorHarness>(h: H) {
    let (client, _all, _a, conv) = online_pair(&h).await;
    let before = client.bus().subscriber_count();
    let mut sends = client.subscribe_with(
        Filter::of([EventKind::SendStatus]),
        DeliveryPolicy::Reliable { capacity: 64 },
    );
    assert_eq!(client.bus().subscriber_count(), before + 1);
    let id = client.send(conv, Content::text("x")).await.expect("queued");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, sends.recv())
            .await
            .expect("no send status in time")
            .expect("client gone");
        assert_eq!(ev.kind(), EventKind::SendStatus, "only send status: {ev:?}");
        if matches!(&*ev, ClientEvent::SendStatus { client_id, status: Some(im_arch::SendStatus::Sent { .. }), .. } if *client_id == id)
        {
            break;
        }
    }
    drop(sends);
    assert_eq!(
        client.bus().subscriber_count(),
        before,
        "dropping unsubscribes"
    );
    client.logout().await;
}

/// Duplicated and reordered pushes are delivered once each, in order.
async fn duplicated_and_reordered_pushes<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    let faulty = Arc::new(FaultyVendor::new(Arc::new(h.client().await), 5));
    faulty.set_push_faults(PushFaults {
        duplicate: 1.0,
        reorder: true,
        ..PushFaults::default()
    });
    let client = ImClient::builder(faulty, bob).build();
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    for i in 1..=4 {
        a.send(&text(&conv, &format!("d{i}"))).await.expect("send");
    }
    let mut got = 0;
    let events = until(&mut sub, Duration::from_secs(10), |e| {
        got += usize::from(matches!(e, ClientEvent::Message(_)));
        got == 4
    })
    .await;
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(r) => r.message.seq.map(|s| s.0),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // Nothing more: the duplicates were dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra: Vec<_> = sub
        .drain_now()
        .into_iter()
        .filter(|e| matches!(&**e, ClientEvent::Message(_)))
        .collect();
    assert!(extra.is_empty(), "duplicates delivered: {extra:?}");
    client.logout().await;
}

/// Class 8: after a reconnect, what was sent while the client was away is delivered, none
/// skipped and none twice, before the client is online again.
async fn reconnect_resyncs_without_gaps<H: VendorHarness>(h: H) {
    let (client, mut sub, a, conv) = online_pair(&h).await;
    a.send(&text(&conv, "before")).await.expect("send");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::Message(_))
    })
    .await;
    client.reconnect_now().await;
    for i in 0..3 {
        a.send(&text(&conv, &format!("during{i}")))
            .await
            .expect("send");
    }
    let events = until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    // Whatever arrived before going online, plus what may come right after.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bodies: Vec<String> = delivered(&events).into_iter().map(|(b, _)| b).collect();
    bodies.extend(sub.drain_now().iter().filter_map(|e| match &**e {
        ClientEvent::Message(r) => Some(format!("{:?}", r.message.content)),
        _ => None,
    }));
    let during: Vec<&String> = bodies.iter().filter(|b| b.contains("during")).collect();
    assert_eq!(during.len(), 3, "each message of the gap once: {bodies:?}");
    assert!(
        !bodies.iter().any(|b| b.contains("before")),
        "nothing twice"
    );
    client.logout().await;
}

/// The timeline continues past the local store through the vendor's history window and
/// keeps what comes back.
async fn timeline_reaches_vendor_history<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    for i in 0..4 {
        a.send(&text(&conv, &format!("old{i}")))
            .await
            .expect("send");
    }
    // Another device of bob's took and acknowledged them: they are history now.
    let other = h.client().await;
    other.login(&bob).await.expect("bob's other device");
    let batch = other.pull_offline(10).await.expect("pull");
    if let Some(ack) = &batch.ack {
        other.ack_offline(ack).await.expect("ack");
    }
    other.logout().await.expect("logout");
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, bob).build();
    client.login().await.expect("login");
    let page = client
        .timeline_before(&conv, None, 10)
        .await
        .expect("timeline");
    let bodies: Vec<String> = page
        .messages
        .iter()
        .map(|m| format!("{:?}", m.content))
        .collect();
    let want: Vec<String> = (0..4)
        .rev()
        .map(|i| format!("{:?}", Content::text(format!("old{i}"))))
        .collect();
    assert_eq!(bodies, want, "newest first, from the vendor");
    let stored = client.store().latest(&conv, 10).await.expect("store read");
    assert_eq!(stored.len(), 4, "what came back is kept locally");
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
            harness: &[],
            steps: &[
                "alice sends 3 messages while bob is away",
                "bob's client logs in and syncs",
                "alice sends one more",
            ],
            expected: "the 3 arrive as Offline before Online, once each; the next as Online",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, ack_online) }),
        },
        Case {
            id: "SEND-001",
            title: "A queued send shows a local echo, goes out once, reports Sent",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::ServerAcks],
            harness: &[],
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
            harness: &[],
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
            harness: &[],
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
            harness: &[],
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
            harness: &[],
            steps: &["send content one byte over the vendor's limit"],
            expected: "a typed error; the outbox stays empty",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, oversized_send_refused) }),
        },
        Case {
            id: "HIST-001",
            title: "The timeline pages newest first without repeats",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &["receive 5 messages", "page 3, then the rest"],
            expected: "t4, t3, t2, then the 2 older ones",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, timeline_newest_first) }),
        },
        Case {
            id: "SEND-004",
            title: "A lost send ack: the resend counts as sent, stored once",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::IdempotentSend, C::HistoryByTime],
            harness: &[],
            steps: &[
                "the vendor stores a send but its ack is lost",
                "the client resends",
            ],
            expected: "Sent; the vendor holds one copy",
            guards: Some(1),
            run: |t| Box::pin(async move { on_target!(t, lost_ack_counts_as_sent) }),
        },
        Case {
            id: "SYNC-002",
            title: "A lost push is detected as a hole and fetched, order kept",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::SequenceNumbers, C::HistoryBySeq],
            harness: &[],
            steps: &["bob is online", "alice sends 3; push 2 is lost"],
            expected: "bob gets 1, 2, 3 in order, each once",
            guards: Some(2),
            run: |t| Box::pin(async move { on_target!(t, lost_push_is_filled) }),
        },
        Case {
            id: "SEND-005",
            title: "A failing head send blocks its conversation, then releases in order",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::HistoryByTime],
            harness: &[],
            steps: &[
                "the vendor fails the next 2 sends with an unknown server error",
                "queue A, B, C",
            ],
            expected: "A is retried and sent first; the vendor holds A, B, C in order",
            guards: Some(3),
            run: |t| Box::pin(async move { on_target!(t, failed_head_blocks_then_releases) }),
        },
        Case {
            id: "DIST-002",
            title: "A lagging UI subscriber gets an exact lag notice",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &[
                "a UI subscribes DropOldest(2) and does not read",
                "5 messages arrive",
            ],
            expected: "Lagged(3), then the newest 2; the bus counts 3 dropped",
            guards: Some(10),
            run: |t| Box::pin(async move { on_target!(t, lagging_ui_is_told) }),
        },
        Case {
            id: "STORE-001",
            title: "A corrupted store entry is a typed error; the rest stays usable",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &[
                "write a cursor",
                "corrupt it on disk",
                "reopen, read it, write messages",
            ],
            expected: "CorruptEntry for that key; other reads and writes work",
            guards: Some(9),
            run: |t| Box::pin(async move { on_target!(t, store_corruption_is_contained) }),
        },
        Case {
            id: "SEND-006",
            title: "A send the vendor refuses for good ends Failed, never stuck",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &["the vendor refuses the next send as not a member", "send"],
            expected: "Failed { recoverable: false } within the deadline",
            guards: Some(4),
            run: |t| Box::pin(async move { on_target!(t, refused_send_ends_failed) }),
        },
        Case {
            id: "SEND-007",
            title: "Queued sends survive a restart and go out exactly once",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::OfflineQueue],
            harness: &[],
            steps: &[
                "queue 2 sends on a sled store without logging in",
                "drop the client; rebuild it on the same directory; log in",
            ],
            expected: "both are Sent; the peer's queue holds each once",
            guards: Some(4),
            run: |t| Box::pin(async move { on_target!(t, queue_survives_restart) }),
        },
        Case {
            id: "AUTH-001",
            title: "Sends queued before login wait for authentication",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &["send before login", "wait", "log in"],
            expected: "still Sending before login; Sent after",
            guards: Some(7),
            run: |t| Box::pin(async move { on_target!(t, sends_wait_for_auth) }),
        },
        Case {
            id: "AUTH-002",
            title: "The same client logs in again after a refused login, a kick and a logout",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &[
                "log in with a wrong token",
                "set the right token, log in, receive",
                "another device of the same user logs in (kick); log in again, receive",
                "log out; log in again, receive",
            ],
            expected: "the refusal is ArchError::AuthFailed; every later login of the same \
                       client succeeds and receives",
            guards: Some(7),
            run: |t| Box::pin(async move { on_target!(t, relogin_after_refusal_kick_and_logout) }),
        },
        Case {
            id: "CONV-002",
            title: "The list keeps one row per conversation, drafts on rows, pinned first",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &[
                "two conversations get messages",
                "edit a draft in the older",
                "pin it",
            ],
            expected: "newest first; the draft moves it up; pinned stays first",
            guards: Some(10),
            run: |t| Box::pin(async move { on_target!(t, list_order_pins_and_drafts) }),
        },
        Case {
            id: "CONV-003",
            title: "My own messages are never unread; muted rows leave the total",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &["I send one, they send one", "mute the conversation"],
            expected: "total unread 1, then 0",
            guards: Some(6),
            run: |t| Box::pin(async move { on_target!(t, own_and_muted_unread) }),
        },
        Case {
            id: "DIST-003",
            title: "A kind filter passes only its kinds; dropping it unsubscribes",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &[
                "subscribe to send status only",
                "send",
                "drop the subscription",
            ],
            expected: "only SendStatus events; the subscriber count goes back",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, kind_filter_and_unsubscribe) }),
        },
        Case {
            id: "SYNC-003",
            title: "Duplicated and reordered pushes are delivered once, in order",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::SequenceNumbers],
            harness: &[],
            steps: &[
                "every push is duplicated and pairs are swapped",
                "alice sends 4",
            ],
            expected: "1, 2, 3, 4 once each",
            guards: Some(2),
            run: |t| Box::pin(async move { on_target!(t, duplicated_and_reordered_pushes) }),
        },
        Case {
            id: "SYNC-004",
            title: "After a reconnect the gap is delivered once, before going online",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::OfflineQueue],
            harness: &[],
            steps: &[
                "bob is online",
                "bob's client reconnects",
                "alice sends 3 meanwhile",
            ],
            expected: "the 3 arrive once each; nothing earlier repeats",
            guards: Some(8),
            run: |t| Box::pin(async move { on_target!(t, reconnect_resyncs_without_gaps) }),
        },
        Case {
            id: "HIST-002",
            title: "The timeline continues through the vendor's history and keeps it",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::HistoryByTime],
            harness: &[],
            steps: &[
                "4 messages are taken and acknowledged by another device",
                "a fresh client pages its timeline",
            ],
            expected: "the 4, newest first, from the vendor; then stored locally",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, timeline_reaches_vendor_history) }),
        },
    ]
}
