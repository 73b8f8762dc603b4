//! Architecture-layer cases: the client (`im-arch`) on the target vendor.

// A case fails by panicking (the runner reports the message): `expect` is an assertion here.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::{ClientEvent, ConnectionState, ImClient};
use im_service::{Capability as C, ConversationId, Origin, Vendor};

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
    ]
}
