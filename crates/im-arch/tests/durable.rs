//! Durable subscriptions and the never-waiting supervisor: a reader that never reads does
//! not hold up login, a later reader gets everything once from the store, and a restarted
//! client hands out exactly what was not acknowledged.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use im_arch::{ArchError, ClientEvent, DurableEvent, DurableSubscription, ImClient, SledStore};
use im_service::memory::{MemoryVendor, MemoryVendorConfig};
use im_service::{Content, ConversationId, Credentials, OutgoingMessage, UserId, Vendor};

/// Every wait of these tests ends by this deadline at the latest, as a named failure.
const DEADLINE: Duration = Duration::from_secs(120);

struct World {
    vendor: MemoryVendor,
    bob: Credentials,
    senders: Vec<Credentials>,
}

fn world(senders: usize) -> World {
    let vendor = MemoryVendor::new(MemoryVendorConfig::default());
    let bob = vendor.register_user(&UserId::new("bob"));
    let senders = (0..senders)
        .map(|i| vendor.register_user(&UserId::new(format!("tenant{i}"))))
        .collect();
    World {
        vendor,
        bob,
        senders,
    }
}

/// Sends `per_sender` messages from every sender to Bob straight through the vendor (Bob is
/// offline: they queue there). Bodies are `sender:i`.
async fn queue_offline(w: &World, per_sender: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for creds in &w.senders {
        let client = w.vendor.client();
        client.login(creds).await.unwrap();
        let conv = ConversationId::direct(&creds.user, &w.bob.user);
        for i in 0..per_sender {
            let body = format!("{}:{i}", creds.user);
            let msg = OutgoingMessage::new(conv.clone(), Content::text(&body), w.vendor.now());
            client.send(&msg).await.unwrap();
            bodies.push(body);
        }
        client.logout().await.unwrap();
    }
    bodies
}

fn body(e: &DurableEvent) -> String {
    match &e.message.content {
        Content::Text(t) => t.clone(),
        other => format!("{other:?}"),
    }
}

/// Reads `n` events (in batches of up to `batch`), each within the deadline.
/// One overall deadline: a `next_batch` that keeps answering at once with nothing fails
/// here by name instead of spinning.
async fn read(sub: &mut DurableSubscription, n: usize, batch: usize) -> Vec<DurableEvent> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "durable reader: only {} of {n} events came before the deadline",
            out.len()
        );
        let got = tokio::time::timeout(left, sub.next_batch(batch))
            .await
            .unwrap_or_else(|_| panic!("durable reader: only {} of {n} events came", out.len()))
            .unwrap();
        out.extend(got);
    }
    out
}

/// Acceptance (issue 16): a subscriber that never reads and 5,000 offline messages: `login()`
/// returns, and a later reader gets all 5,000 once, in per-conversation order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_subscriber_does_not_block_login_and_a_later_reader_gets_all_5000_once() {
    let w = world(5);
    let sent = queue_offline(&w, 1000).await;
    assert_eq!(sent.len(), 5000);
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone()).build();
    // Two readers that never read during login: a live one and a durable one.
    let mut live = client.subscribe();
    let mut durable = client.durable_subscription("ledger").await.unwrap();
    tokio::time::timeout(DEADLINE, client.login())
        .await
        .expect("login() returned although nobody reads the events")
        .unwrap();
    assert!(client.state().is_online());

    // The later reader: everything once, positions 1..=5000 without a hole.
    let events = read(&mut durable, 5000, 700).await;
    assert_eq!(events.len(), 5000, "exactly 5,000 events");
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=5000).collect::<Vec<u64>>(),
        "positions 1..=5000"
    );
    let got: HashSet<String> = events.iter().map(body).collect();
    assert_eq!(got.len(), 5000, "no message twice");
    assert_eq!(got, sent.iter().cloned().collect(), "no message missing");
    // Per conversation, in the order sent.
    for creds in &w.senders {
        let prefix = format!("{}:", creds.user);
        let order: Vec<usize> = events
            .iter()
            .map(body)
            .filter_map(|b| b.strip_prefix(&prefix).map(|i| i.parse().unwrap()))
            .collect();
        assert_eq!(
            order,
            (0..1000).collect::<Vec<_>>(),
            "order of {}",
            creds.user
        );
    }
    durable.ack(5000).await.unwrap();

    // The live reader was not waited for: it was told it lagged, never silently robbed.
    let backlog = live.drain_now();
    let lagged: u64 = backlog
        .iter()
        .filter_map(|e| match **e {
            ClientEvent::Lagged { dropped } => Some(dropped),
            _ => None,
        })
        .sum();
    let messages = backlog
        .iter()
        .filter(|e| matches!(***e, ClientEvent::Message(_)))
        .count();
    assert!(lagged > 0, "the live reader was told it lagged");
    assert!(messages < 5000, "the live queue stayed bounded");
    client.logout().await;
}

/// After a restart (the client and store dropped without logout) a durable subscription
/// hands out exactly what was not acknowledged: never an acknowledged event, never a
/// skipped one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_resumes_after_the_acknowledged_position() {
    let w = world(1);
    let dir = tempfile::tempdir().unwrap();
    let sent = queue_offline(&w, 10).await;
    let first: Vec<DurableEvent> = {
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
            .store(store)
            .build();
        let mut sub = client.durable_subscription("ledger").await.unwrap();
        tokio::time::timeout(DEADLINE, client.login())
            .await
            .expect("login")
            .unwrap();
        let events = read(&mut sub, 10, 3).await;
        sub.ack(4).await.unwrap();
        assert_eq!(sub.acked(), 4);
        events
        // Dropped here without logout: the supervisor is aborted mid-session.
    };
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), sent);
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
        .store(store)
        .build();
    let mut sub = client.durable_subscription("ledger").await.unwrap();
    assert_eq!(sub.acked(), 4, "the acknowledged position survived");
    let again = read(&mut sub, 6, 100).await;
    assert_eq!(
        again.iter().map(|e| e.position).collect::<Vec<_>>(),
        (5..=10).collect::<Vec<u64>>(),
        "exactly the unacknowledged positions, before login"
    );
    assert_eq!(
        again,
        first[4..].to_vec(),
        "the same events at the same positions"
    );
    sub.ack(10).await.unwrap();
    // Logging in again delivers nothing new: the vendor's offline queue was acknowledged.
    tokio::time::timeout(DEADLINE, client.login())
        .await
        .expect("login")
        .unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(300), sub.next_batch(10)).await;
    assert!(
        nothing.is_err(),
        "no event after everything was acknowledged"
    );
    client.logout().await;
}

#[tokio::test]
async fn acknowledging_what_was_not_handed_out_is_refused() {
    let w = world(1);
    queue_offline(&w, 2).await;
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone()).build();
    let mut sub = client.durable_subscription("ledger").await.unwrap();
    client.login().await.unwrap();
    let first = tokio::time::timeout(DEADLINE, sub.next_batch(1))
        .await
        .expect("an event")
        .unwrap();
    assert_eq!(first.len(), 1);
    let refused = sub.ack(2).await;
    assert!(
        matches!(refused, Err(ArchError::InvalidArgument(_))),
        "ack of an unseen position: {refused:?}"
    );
    assert_eq!(sub.acked(), 0);
    sub.ack(1).await.unwrap();
    assert!(client.durable_subscription("").await.is_err(), "empty name");
    client.logout().await;
}

/// Names: 1 to 200 bytes (exactly 200 is accepted, 201 refused), and a subscription knows
/// its own name (in its accessor and its `Debug`). Found by cargo-mutants: the bound
/// `> MAX_NAME` could become `>=` unnoticed.
#[tokio::test]
async fn names_of_one_to_two_hundred_bytes_are_accepted_and_known() {
    let w = world(0);
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone()).build();
    let longest = "n".repeat(200);
    let sub = client
        .durable_subscription(&longest)
        .await
        .expect("a 200-byte name is accepted");
    assert_eq!(sub.name(), longest);
    assert!(format!("{sub:?}").contains(&longest), "{sub:?}");
    let refused = client.durable_subscription(&"n".repeat(201)).await;
    assert!(
        matches!(refused, Err(ArchError::InvalidArgument(_))),
        "a 201-byte name: {refused:?}"
    );
}

/// Removing a subscription forgets its position: opened again, it starts afresh at the
/// journal's head (it does not replay what it had not acknowledged). Found by
/// cargo-mutants: `remove_durable_subscription` could do nothing unnoticed.
#[tokio::test]
async fn a_removed_subscription_starts_afresh_at_the_head() {
    let w = world(1);
    queue_offline(&w, 3).await;
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone()).build();
    let mut sub = client.durable_subscription("ledger").await.unwrap();
    client.login().await.unwrap();
    let got = read(&mut sub, 3, 10).await;
    sub.ack(got[0].position).await.unwrap();
    drop(sub);
    let kept = client.durable_subscription("ledger").await.unwrap();
    assert_eq!(kept.acked(), got[0].position, "kept while registered");
    drop(kept);

    client.remove_durable_subscription("ledger").await.unwrap();
    let fresh = client.durable_subscription("ledger").await.unwrap();
    assert_eq!(
        fresh.acked(),
        got[2].position,
        "re-registered at the head, not at its old position"
    );
    client.logout().await;
}
