//! Architecture-layer cases: the client (`im-arch`) on the target vendor.

// A case fails by panicking (the runner reports the message): `expect` is an assertion here.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::{ClientEvent, ConnectionState, DeliveryPolicy, EventKind, Filter, ImClient};
use im_service::{Capability as C, Content, ConversationId, Origin, UserId, Vendor};

use super::{Case, Category, FailureClass, Layer};
use crate::contract::text;
use crate::faulty::{FaultyVendor, PushFaults};
use crate::harness::VendorHarness;
use crate::on_target;
use crate::wait::until;

/// Events until the client is `Online`, failing the case after 10 s in all.
async fn until_online(sub: &mut im_arch::Subscription) -> Vec<ClientEvent> {
    until(sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await
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

/// Class 5: a send goes out once and reports Sent with the vendor's id; the local echo is
/// the only copy the app sees: the message is never delivered again as a received message,
/// neither when the vendor echoes it nor after a resync.
async fn send_reports_sent<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, alice).build();
    let mut sub = client.subscribe();
    client.login().await.expect("login");
    let mut seen = until(&mut sub, Duration::from_secs(10), |e| {
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
    seen.extend(events);
    let b = h.client().await;
    b.login(&bob).await.expect("bob logs in");
    let batch = b.pull_offline(10).await.expect("pull");
    assert_eq!(batch.messages.len(), 1, "stored once at the vendor");
    // Bob answers: whatever the vendor echoes of ours has come back by the time his
    // answer arrives (one conversation, one order).
    b.send(&text(&conv, "reply")).await.expect("bob replies");
    let want = Content::text("reply");
    seen.extend(
        until(
            &mut sub,
            Duration::from_secs(10),
            |e| matches!(e, ClientEvent::Message(r) if r.message.content == want),
        )
        .await,
    );
    // A resync pulls the conversation's tail again, our message included.
    client.reconnect_now().await;
    seen.extend(
        until(&mut sub, Duration::from_secs(20), |e| {
            matches!(e, ClientEvent::State(ConnectionState::Online))
        })
        .await,
    );
    b.send(&text(&conv, "after the resync"))
        .await
        .expect("bob sends");
    let want = Content::text("after the resync");
    seen.extend(
        until(
            &mut sub,
            Duration::from_secs(10),
            |e| matches!(e, ClientEvent::Message(r) if r.message.content == want),
        )
        .await,
    );
    let again: Vec<&ClientEvent> = seen
        .iter()
        .filter(|e| matches!(e, ClientEvent::Message(r) if r.message.client_id == id))
        .collect();
    assert!(
        again.is_empty(),
        "the echo of our own message was delivered again: {again:?}"
    );
    let received: Vec<String> = delivered(&seen).into_iter().map(|(b, _)| b).collect();
    assert_eq!(
        received,
        ["reply", "after the resync"],
        "only bob's messages arrive, once each"
    );
    b.logout().await.expect("bob logs out");
    client.logout().await;
}

/// Class 6: unread counts follow received messages and mark-read, and stay consistent
/// after a resync re-delivers the conversation and after a restart on the same store.
async fn unread_and_mark_read<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    let store: Arc<dyn im_arch::Store> = Arc::new(im_arch::MemoryStore::new());
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, bob.clone())
        .store(store.clone())
        .build();
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
    assert_eq!(client.total_unread(), 2, "two received, unread");
    client.mark_read(&conv).await.expect("mark read");
    assert_eq!(client.total_unread(), 0, "0 after mark-read");
    // A resync goes over the conversation again: what was read stays read.
    client.reconnect_now().await;
    until(&mut sub, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    assert_eq!(
        client.total_unread(),
        0,
        "a resync does not make read messages unread"
    );
    a.send(&text(&conv, "u2")).await.expect("send");
    let want = Content::text("u2");
    until(
        &mut sub,
        Duration::from_secs(10),
        |e| matches!(e, ClientEvent::Message(r) if r.message.content == want),
    )
    .await;
    assert_eq!(client.total_unread(), 1, "only the message after mark-read");
    client.logout().await;
    drop(sub);
    drop(client);
    // A restart on the same store: the read position survived.
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, bob).store(store).build();
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in again");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    assert_eq!(
        client.total_unread(),
        1,
        "after a restart the read state is kept: only the message after mark-read is unread"
    );
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
    // The pair's registered ids (a harness may suffix the names it is given).
    let ConversationId::Direct { low, high } = conv.clone() else {
        unreachable!("online_pair gives a direct conversation")
    };
    h.group("team", &[low, high, carol.user.clone()]).await;
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

/// The timeline pages newest first from the local store: every page holds exactly the
/// messages it should, in order, and paging past the oldest finds nothing more.
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
    let bodies = |page: &im_arch::TimelinePage| -> Vec<String> {
        page.messages
            .iter()
            .map(|m| format!("{:?}", m.content))
            .collect()
    };
    let want = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .map(|b| format!("{:?}", Content::text(*b)))
            .collect()
    };
    let page = client
        .timeline_before(&conv, None, 3)
        .await
        .expect("timeline");
    assert_eq!(bodies(&page), want(&["t4", "t3", "t2"]), "the first page");
    let older = client
        .timeline_before(&conv, page.messages.last(), 10)
        .await
        .expect("timeline");
    assert_eq!(
        bodies(&older),
        want(&["t1", "t0"]),
        "the second page: the rest, newest first, no repeats"
    );
    let oldest = client
        .timeline_before(&conv, older.messages.last(), 10)
        .await
        .expect("timeline");
    assert_eq!(
        bodies(&oldest),
        Vec::<String>::new(),
        "nothing is older than the oldest"
    );
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

/// Class 3: the head send fails for good with a server error (more failures than its
/// attempts absorb); nothing overtakes it while it is Failed; resending it releases the
/// rest, in order.
async fn failed_head_blocks_then_releases<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    // The default number of attempts, with short delays so the case is quick.
    let retry = im_arch::RetryPolicy {
        backoff: im_arch::Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
            jitter: im_arch::Jitter::None,
        },
        ..im_arch::RetryPolicy::default()
    };
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, alice)
        .config(im_arch::ClientConfig {
            retry,
            ..im_arch::ClientConfig::default()
        })
        .build();
    let mut sub = client.subscribe();
    client.login().await.expect("login");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    // An unknown server error (transient) on every attempt A gets: A fails.
    h.fail_next(
        im_service::memory::VendorOp::Send,
        retry.max_attempts,
        im_service::ServiceError::Server {
            code: 500,
            message: "injected".into(),
        },
    );
    let mut ids = Vec::new();
    for body in ["A", "B", "C"] {
        ids.push(
            client
                .send(conv.clone(), Content::text(body))
                .await
                .expect("queued"),
        );
    }
    let a = ids[0].clone();
    let events = until(&mut sub, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::SendStatus { client_id, status: Some(im_arch::SendStatus::Failed { .. }), .. } if *client_id == a)
    })
    .await;
    assert!(
        events.iter().any(|e| matches!(
            e,
            ClientEvent::SendStatus {
                client_id,
                status: Some(im_arch::SendStatus::Failed {
                    recoverable: true,
                    ..
                }),
                ..
            } if *client_id == a
        )),
        "the head fails after its attempts, recoverable (an unknown server error is transient)"
    );
    let early_sent: Vec<&ClientEvent> = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::SendStatus {
                    status: Some(im_arch::SendStatus::Sent { .. }),
                    ..
                }
            )
        })
        .collect();
    assert!(
        early_sent.is_empty(),
        "nothing is sent while the head fails: {early_sent:?}"
    );
    client.resend(&a).await.expect("resend the head");
    let mut sent = std::collections::HashSet::new();
    until(&mut sub, Duration::from_secs(20), |e| {
        if let ClientEvent::SendStatus {
            client_id,
            status: Some(im_arch::SendStatus::Sent { .. }),
            ..
        } = e
        {
            sent.insert(client_id.clone());
        }
        ids.iter().all(|id| sent.contains(id))
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
    // The bus fills each subscriber's queue in turn, so `all` can see the fifth message a
    // moment before `ui` has it: wait (bounded) until the third drop has been counted; the
    // count and the push happen under the queue's lock, so the queue is complete then.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.bus().dropped_total() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the UI queue dropped {} of 3 within 10 s",
            client.bus().dropped_total()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
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
/// store stays usable; a store a newer build wrote (higher schema version) is refused
/// with `SchemaTooNew` and left exactly as it was.
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
        // Corrupt the cursor entry behind the store's back.
        let db = raw_open(&dir).await;
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
    store.flush().await.expect("flush");
    drop(store);
    // A newer build wrote the store: its schema version is above ours.
    let newer = im_arch::SCHEMA_VERSION + 1;
    let before = {
        let db = raw_open(&dir).await;
        let meta = db.open_tree("meta").expect("meta tree");
        meta.insert(
            "schema_version",
            im_service::codec::encode(&newer).expect("encode"),
        )
        .expect("write the schema version");
        db.flush().expect("flush");
        snapshot(&db)
    };
    match SledStore::open(&dir) {
        Err(im_arch::ArchError::SchemaTooNew { found, supported }) => {
            assert_eq!(
                (found, supported),
                (newer, im_arch::SCHEMA_VERSION),
                "the refusal names both versions"
            );
        }
        Err(other) => panic!("a newer schema must be SchemaTooNew, got {other:?}"),
        Ok(_) => panic!("a store with a newer schema version ({newer}) was opened"),
    }
    let after = snapshot(&raw_open(&dir).await);
    assert!(
        before == after,
        "the refused store was modified: {} entries before, {} after",
        before.len(),
        after.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reopens the log store in `dir` once a dropped client's task has let go of it (it holds
/// the store, and so the directory's lock, until it is torn down). The open waits for the
/// lock (up to 2 s) on a blocking thread, so the old client's task can run meanwhile.
async fn reopen_log_store(dir: &std::path::Path) -> im_arch::LogStore {
    let path = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || im_arch::LogStore::open(path)).await {
        Ok(Ok(store)) => store,
        other => panic!(
            "the store in {} does not reopen once the old client is gone: {other:?}",
            dir.display()
        ),
    }
}

/// Class 9 on the default store: damage inside a `LogStore`'s log loses only the damaged
/// write. The open reports it (`LogStore::damage`), the send queued after it survives and
/// goes out exactly once, and the store works on.
async fn log_store_damage_is_contained<H: VendorHarness>(h: H) {
    use im_arch::{ConversationState, LogStore, Store};
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let dir = std::env::temp_dir().join(format!(
        "im-case-log-store-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    const DAMAGED: &str = "draft-that-will-be-damaged";
    {
        let store = Arc::new(LogStore::open(&dir).expect("open"));
        store
            .put_conversation_state(&ConversationState {
                id: conv.clone(),
                pinned: true,
                muted: false,
                draft: Some((DAMAGED.into(), im_service::Timestamp::from_millis(1))),
                read_up_to: None,
            })
            .await
            .expect("write");
        store.flush().await.expect("flush");
        let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
        // Never logged in: the send waits in the outbox, written after the draft.
        let client = ImClient::builder(vendor, alice.clone())
            .store(store)
            .build();
        client
            .send(conv.clone(), Content::text("queued after the damage"))
            .await
            .expect("queued");
    }
    // Damage the draft's write on disk (one flipped bit inside it).
    let log = std::fs::read_dir(&dir)
        .expect("store directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("log."))
        })
        .expect("a log file");
    let mut bytes = std::fs::read(&log).expect("read the log");
    let at = bytes
        .windows(DAMAGED.len())
        .position(|w| w == DAMAGED.as_bytes())
        .expect("the draft is in the log");
    bytes[at] ^= 0x20;
    std::fs::write(&log, &bytes).expect("write the damaged log");

    let store = reopen_log_store(&dir).await;
    assert_eq!(
        store.damage().len(),
        1,
        "the damage is reported: {:?}",
        store.damage()
    );
    assert_eq!(
        store.conversation_states().await.expect("read"),
        vec![],
        "the damaged write is lost"
    );
    assert_eq!(
        store.outbox().await.expect("read").len(),
        1,
        "the send queued after the damage survives"
    );
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, alice)
        .store(Arc::new(store))
        .build();
    let mut sub = client.subscribe();
    client.login().await.expect("login");
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
    let b = h.client().await;
    b.login(&bob).await.expect("bob logs in");
    let batch = b.pull_offline(10).await.expect("pull");
    assert_eq!(
        batch
            .messages
            .iter()
            .map(|m| m.content.clone())
            .collect::<Vec<_>>(),
        vec![Content::text("queued after the damage")],
        "the surviving send went out exactly once"
    );
    client.logout().await;
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens a sled directory behind the store's back. sled's background threads can hold the
/// directory's lock for a moment after the last handle is dropped (seen on CI), so this
/// waits for it with the helper `SledStore::open` uses (`im_service::lock_wait`), off the
/// runtime threads, within a deadline.
async fn raw_open(dir: &std::path::Path) -> sled::Db {
    let path = dir.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        im_service::lock_wait::retry_while(
            Duration::from_secs(10),
            || sled::open(&path),
            |e| matches!(e, sled::Error::Io(io) if im_service::lock_wait::is_lock_contention(io)),
        )
    })
    .await
    .expect("the blocking open ran");
    opened.unwrap_or_else(|e| panic!("raw open of {}: {e:?}", dir.display()))
}

/// Every tree's name and entries, to compare a store before and after.
type Snapshot = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

/// Every (tree, key, value) of `db`.
fn snapshot(db: &sled::Db) -> Snapshot {
    let mut names = db.tree_names();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let tree = db.open_tree(&name).expect("tree");
            let entries = tree
                .iter()
                .map(|kv| {
                    let (k, v) = kv.expect("entry");
                    (k.to_vec(), v.to_vec())
                })
                .collect();
            (name.to_vec(), entries)
        })
        .collect()
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
/// rebuilt on the same store directory (the default `LogStore`).
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
        let store = Arc::new(im_arch::LogStore::open(&dir).expect("open"));
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
    let store = Arc::new(reopen_log_store(&dir).await);
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

/// Class 7: sends queued before login wait for authentication: while the login is held
/// at the vendor (the client is connecting, not authenticated) nothing is sent; the first
/// send reaches the vendor after the login was accepted.
async fn sends_wait_for_auth<H: VendorHarness>(h: H) {
    use super::{GateCall, GatedVendor};
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let gated = Arc::new(GatedVendor::new(Arc::new(h.client().await)));
    gated.close();
    let client = ImClient::builder(gated.clone(), alice).build();
    let mut sub = client.subscribe();
    let id = client
        .send(conv, Content::text("early"))
        .await
        .expect("queued");
    let login = client.login();
    tokio::pin!(login);
    tokio::select! {
        r = &mut login => panic!("the login passed a closed gate: {r:?}"),
        r = gated.wait_until(Duration::from_secs(10), |c| c.contains(&GateCall::LoginStarted)) => {
            r.unwrap_or_else(|calls| panic!("the login never reached the vendor: {calls:?}"));
        }
    }
    // The login is pending at the vendor. A sender that does not wait for authentication
    // sends in this window (the pass does not depend on its length).
    tokio::select! {
        r = &mut login => panic!("the login passed a closed gate: {r:?}"),
        () = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    assert_eq!(
        gated.calls(),
        [GateCall::LoginStarted],
        "nothing is attempted before authentication completes"
    );
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
        "the queued send waits as Sending"
    );
    gated.open();
    tokio::time::timeout(Duration::from_secs(20), login)
        .await
        .expect("the login answers once the vendor lets it through")
        .expect("login");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::SendStatus { client_id, status: Some(im_arch::SendStatus::Sent { .. }), .. } if *client_id == id)
    })
    .await;
    let calls = gated.calls();
    let logged_in = calls.iter().position(|c| *c == GateCall::LoggedIn);
    let first_send = calls.iter().position(|c| *c == GateCall::Send);
    assert!(
        logged_in.is_some() && first_send > logged_in,
        "the first send comes after the accepted login: {calls:?}"
    );
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

/// Class 10: the list has one consistent order: pinned rows first, then by the later of
/// the last message and the draft; the draft stays on its row, across a restart too.
async fn list_order_pins_and_drafts<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let carol = h.user("carol").await;
    let direct = ConversationId::direct(&alice.user, &bob.user);
    let with_carol = ConversationId::direct(&bob.user, &carol.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    let c = h.client().await;
    c.login(&carol).await.expect("carol logs in");
    let store: Arc<dyn im_arch::Store> = Arc::new(im_arch::MemoryStore::new());
    let build = |vendor: Arc<dyn Vendor>| {
        ImClient::builder(vendor, bob.clone())
            .clock(h.clock())
            .store(store.clone())
            .build()
    };
    let client = build(Arc::new(h.client().await));
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    a.send(&text(&direct, "from alice")).await.expect("send");
    let want = Content::text("from alice");
    until(
        &mut sub,
        Duration::from_secs(10),
        |e| matches!(e, ClientEvent::Message(r) if r.message.content == want),
    )
    .await;
    h.advance(Duration::from_secs(1)).await;
    c.send(&text(&with_carol, "from carol"))
        .await
        .expect("send");
    let want = Content::text("from carol");
    until(
        &mut sub,
        Duration::from_secs(10),
        |e| matches!(e, ClientEvent::Message(r) if r.message.content == want),
    )
    .await;
    let order = |client: &ImClient| -> Vec<ConversationId> {
        client
            .conversations(0, 10)
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(
        order(&client),
        [with_carol.clone(), direct.clone()],
        "one row per conversation, newest message first"
    );
    // A draft edited after carol's message moves the older conversation up.
    h.advance(Duration::from_secs(1)).await;
    client.set_draft(&direct, Some("typing…".into())).await;
    assert_eq!(
        order(&client),
        [direct.clone(), with_carol.clone()],
        "the draft moves its row up"
    );
    let draft_of = |client: &ImClient| {
        client
            .conversations(0, 10)
            .into_iter()
            .find(|r| r.id == direct)
            .and_then(|r| r.draft.map(|d| d.0))
    };
    assert_eq!(
        draft_of(&client),
        Some("typing…".to_string()),
        "the draft is on its row"
    );
    // Pinned rows come first whatever their time.
    client.set_pinned(&with_carol, true).await;
    assert_eq!(
        order(&client),
        [with_carol.clone(), direct.clone()],
        "pinned first"
    );
    client.logout().await;
    drop(sub);
    drop(client);
    // A restart on the same store: the same order, the draft kept.
    let client = build(Arc::new(h.client().await));
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in again");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    assert_eq!(
        order(&client),
        [with_carol, direct.clone()],
        "the order survives a restart"
    );
    assert_eq!(
        draft_of(&client),
        Some("typing…".to_string()),
        "the draft survives a restart"
    );
    client.logout().await;
}

/// Class 6: my own messages never count as unread; muted rows leave the total; both, and
/// the read position after mark-read, survive a restart on the same store.
async fn own_and_muted_unread<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    let store: Arc<dyn im_arch::Store> = Arc::new(im_arch::MemoryStore::new());
    let start = |vendor: Arc<dyn Vendor>| {
        let client = ImClient::builder(vendor, bob.clone())
            .store(store.clone())
            .build();
        let sub = client.subscribe();
        (client, sub)
    };
    let (client, mut sub) = start(Arc::new(h.client().await));
    client.login().await.expect("bob logs in");
    until_online(&mut sub).await;
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
    drop((client, sub));

    // Restart: still muted; unmuted, only theirs is unread (mine is not, after a reload).
    let (client, mut sub) = start(Arc::new(h.client().await));
    client.login().await.expect("bob logs in again");
    until_online(&mut sub).await;
    assert_eq!(client.total_unread(), 0, "muted survives a restart");
    client.set_muted(&conv, false).await;
    assert_eq!(
        client.total_unread(),
        1,
        "after a restart my own message is still not unread"
    );
    client.mark_read(&conv).await.expect("mark read");
    assert_eq!(client.total_unread(), 0, "0 after mark-read");
    client.logout().await;
    drop((client, sub));

    // Restart again: the read position survived.
    let (client, mut sub) = start(Arc::new(h.client().await));
    client.login().await.expect("bob logs in a third time");
    until_online(&mut sub).await;
    assert_eq!(
        client.total_unread(),
        0,
        "mark-read survives a restart: nothing is unread again"
    );
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
    // One deadline for the whole wait; on time-out the case says what it saw.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout_at(deadline, sends.recv())
            .await
            .unwrap_or_else(|_| panic!("{id} was not Sent within 10 s; saw {seen:?}"))
            .unwrap_or_else(|| panic!("client gone; saw {seen:?}"));
        seen.push(ev.clone());
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
/// skipped and none twice, before the client reports itself online again.
async fn reconnect_resyncs_without_gaps<H: VendorHarness>(h: H) {
    use super::{GateCall, GatedVendor};
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    let gated = Arc::new(GatedVendor::new(Arc::new(h.client().await)));
    let client = ImClient::builder(gated.clone(), bob).build();
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    a.send(&text(&conv, "before")).await.expect("send");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::Message(_))
    })
    .await;
    // Reconnect; the new login waits at the gate while alice writes: the gap is certain.
    gated.close();
    client.reconnect_now().await;
    let logins = |c: &[GateCall]| c.iter().filter(|c| **c == GateCall::LoginStarted).count();
    gated
        .wait_until(Duration::from_secs(20), |c| logins(c) == 2)
        .await
        .unwrap_or_else(|calls| panic!("the reconnect's login never came: {calls:?}"));
    for i in 0..3 {
        a.send(&text(&conv, &format!("during{i}")))
            .await
            .expect("send");
    }
    gated.open();
    let events = until(&mut sub, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    let bodies: Vec<String> = delivered(&events).into_iter().map(|(b, _)| b).collect();
    assert_eq!(
        bodies,
        ["during0", "during1", "during2"],
        "the gap, in order, once each, before Online (nothing earlier repeats)"
    );
    // After Online only new messages come: the marker is next, nothing of the gap again.
    a.send(&text(&conv, "after")).await.expect("send");
    let events = until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::Message(_))
    })
    .await;
    let bodies: Vec<String> = delivered(&events).into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, ["after"], "nothing of the gap after Online");
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
            title: "A queued send shows a local echo, goes out once, reports Sent, never comes back",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::ServerAcks],
            harness: &[],
            steps: &[
                "log in",
                "send one message",
                "read the peer's offline queue",
                "the peer replies; the client resyncs; the peer sends again",
            ],
            expected: "Sending then Sent; the vendor stores it once; the message is never \
                       delivered again as a received message (only the peer's two arrive)",
            guards: Some(FailureClass::LocalEcho),
            run: |t| Box::pin(async move { on_target!(t, send_reports_sent) }),
        },
        Case {
            id: "CONV-001",
            title: "Unread counts follow received messages and mark-read, across a resync and a restart",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &[
                "bob is online",
                "alice sends 2 messages",
                "bob marks the conversation read",
                "bob's client resyncs; alice sends 1 more",
                "bob's client restarts on the same store",
            ],
            expected: "total unread 2, then 0, still 0 after the resync, 1 after the new \
                       message, still 1 after the restart",
            guards: Some(FailureClass::UnreadDrift),
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
            guards: Some(FailureClass::SendQueueOrder),
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
            steps: &[
                "receive 5 messages t0..t4",
                "page 3, then 10 before the last, then 10 before that",
            ],
            expected: "t4, t3, t2; then t1, t0; then nothing",
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
            guards: Some(FailureClass::DuplicateAfterLostAck),
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
            guards: Some(FailureClass::SequenceGap),
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
                "the vendor fails as many sends as the default policy attempts, with an \
                 unknown server error",
                "queue A, B, C",
                "A ends Failed; resend A",
            ],
            expected: "A is Failed (recoverable) with nothing sent behind it; after the \
                       resend the vendor holds A, B, C in order",
            guards: Some(FailureClass::SendQueueOrder),
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
            guards: Some(FailureClass::LagAndClockSkew),
            run: |t| Box::pin(async move { on_target!(t, lagging_ui_is_told) }),
        },
        Case {
            id: "STORE-001",
            title: "A corrupted store entry is a typed error; the rest stays usable; a newer schema is refused",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &[
                "write a cursor",
                "corrupt it on disk",
                "reopen, read it, write messages",
                "raise the schema version on disk above this build's; open",
            ],
            expected: "CorruptEntry for that key; other reads and writes work; the newer \
                       store is refused with SchemaTooNew and left unchanged",
            guards: Some(FailureClass::StoreCorruption),
            run: |t| Box::pin(async move { on_target!(t, store_corruption_is_contained) }),
        },
        Case {
            id: "STORE-002",
            title: "Damage in the default log store loses only the damaged write; a queued send survives",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::OfflineQueue],
            harness: &[],
            steps: &[
                "write a draft, then queue a send without logging in (log store)",
                "flip a bit inside the draft's record on disk",
                "reopen; log in; the peer pulls its queue",
            ],
            expected: "the damage is reported and only the draft is lost; the queued send is \
                       Sent and the peer's queue holds it once",
            guards: Some(FailureClass::StoreCorruption),
            run: |t| Box::pin(async move { on_target!(t, log_store_damage_is_contained) }),
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
            guards: Some(FailureClass::StuckSending),
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
                "queue 2 sends on a log store (the default) without logging in",
                "drop the client; rebuild it on the same directory; log in",
            ],
            expected: "both are Sent; the peer's queue holds each once",
            guards: Some(FailureClass::StuckSending),
            run: |t| Box::pin(async move { on_target!(t, queue_survives_restart) }),
        },
        Case {
            id: "AUTH-001",
            title: "Sends queued before login wait for authentication",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &[
                "send before login",
                "log in; the vendor holds the login",
                "let the login through",
            ],
            expected: "no send reaches the vendor while the login is pending (still \
                       Sending); the first send comes after the accepted login; Sent",
            guards: Some(FailureClass::ReconnectStorm),
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
            guards: Some(FailureClass::ReconnectStorm),
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
                "two conversations get messages, a second apart",
                "a second later, edit a draft in the older",
                "pin the other",
                "restart on the same store",
            ],
            expected: "newest first; the draft moves its row up and stays on it; pinned \
                       first; order and draft survive the restart",
            guards: Some(FailureClass::LagAndClockSkew),
            run: |t| Box::pin(async move { on_target!(t, list_order_pins_and_drafts) }),
        },
        Case {
            id: "CONV-003",
            title: "My own messages are never unread; muted rows leave the total",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[],
            steps: &[
                "I send one, they send one",
                "mute the conversation",
                "restart on the same store; unmute; mark read",
                "restart again",
            ],
            expected: "total unread 1, then 0; after the restart 0, 1 when unmuted (mine \
                       never counts), 0 after mark-read; still 0 after the second restart",
            guards: Some(FailureClass::UnreadDrift),
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
            guards: Some(FailureClass::SequenceGap),
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
                "bob's client reconnects; the vendor holds its login",
                "alice sends 3 meanwhile; the login goes through",
                "alice sends one more",
            ],
            expected: "the 3 arrive in order, once each, before Online; nothing earlier \
                       repeats; after Online only the new one",
            guards: Some(FailureClass::ForgottenSession),
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
