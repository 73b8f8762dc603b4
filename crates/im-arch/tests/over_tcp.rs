//! The client against the reference vendor over real TCP on 127.0.0.1, with the server's
//! fault injection: ACK-online, dropped connections, duplicated and reordered pushes,
//! failing pulls, ignored heartbeats, kick. Real time with short intervals; every wait is
//! for an event, bounded by a generous timeout.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::messages;

use std::sync::Arc;
use std::time::Duration;

use im_arch::{
    Backoff, ClientConfig, ClientEvent, ConnectionState, ImClient, Jitter, RetryPolicy,
    Subscription,
};
use im_service::memory::{MemoryClient, VendorOp};
use im_service::{
    Content, Credentials, KickReason, Origin, OutgoingMessage, ServiceError, Timestamp, Vendor,
};
use im_testkit::TcpWorld;
use im_vendor_sim::Faults;

/// The shared TCP world, plus Alice's client talking in process to the same store, so
/// faults on TCP hit only Bob.
struct World {
    tcp: TcpWorld,
    alice_client: MemoryClient,
}

impl std::ops::Deref for World {
    type Target = TcpWorld;

    fn deref(&self) -> &TcpWorld {
        &self.tcp
    }
}

async fn world() -> World {
    let tcp = TcpWorld::start().await;
    let alice_client = tcp.in_process(&tcp.alice).await;
    World { tcp, alice_client }
}

impl World {
    async fn say(&self, n: u64) {
        let msg = OutgoingMessage::new(
            self.conv.clone(),
            Content::text(format!("m{n}")),
            Timestamp::from_millis(0),
        );
        self.alice_client.send(&msg).await.unwrap();
    }

    fn client(&self) -> ImClient {
        ImClient::builder(Arc::new(self.vendor.client()), self.bob.clone())
            .config(config())
            .build()
    }
}

fn config() -> ClientConfig {
    ClientConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(300),
        max_missed_heartbeats: 2,
        reconnect: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
            jitter: Jitter::Full,
        },
        retry: RetryPolicy {
            max_attempts: 4,
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(100),
                jitter: Jitter::Full,
            },
            deadline: None,
        },
        offline_batch: 3,
        ..ClientConfig::default()
    }
}

async fn until(sub: &mut Subscription, stop: impl FnMut(&ClientEvent) -> bool) -> Vec<ClientEvent> {
    im_testkit::wait::until(sub, Duration::from_secs(20), stop).await
}

fn got_seq(n: u64) -> impl FnMut(&ClientEvent) -> bool {
    move |e| matches!(e, ClientEvent::Message(r) if r.message.seq.map(|s| s.0) == Some(n))
}

fn seqs(events: &[ClientEvent]) -> Vec<u64> {
    messages(events).into_iter().map(|(s, _)| s).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_online_over_tcp() {
    let w = world().await;
    for i in 1..=5 {
        w.say(i).await;
    }
    let client = w.client();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    for i in 6..=8 {
        w.say(i).await;
    }
    let events = until(&mut sub, got_seq(8)).await;
    use Origin::*;
    assert_eq!(
        messages(&events),
        [
            (1, Offline),
            (2, Offline),
            (3, Offline),
            (4, Offline),
            (5, Offline),
            (6, Online),
            (7, Online),
            (8, Online)
        ]
    );
    client.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_pushes_over_tcp() {
    let w = world().await;
    let client = w.client();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    w.server.set_faults(Faults {
        duplicate_push_probability: 0.5,
        reorder_pushes: true,
        reorder_window: Duration::from_millis(30),
        ..Faults::none()
    });
    for i in 1..=20 {
        w.say(i).await;
    }
    let events = until(&mut sub, got_seq(20)).await;
    assert_eq!(seqs(&events), (1..=20).collect::<Vec<_>>());
    client.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lose_and_repeat_nothing() {
    let w = world().await;
    let client = w.client();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    // Every connection dies after 7 frames: sync and a few pushes, then it breaks again.
    w.server.set_faults(Faults {
        drop_after_frames: Some(7),
        ..Faults::none()
    });
    for i in 1..=30 {
        w.say(i).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let events = until(&mut sub, got_seq(30)).await;
    assert_eq!(seqs(&events), (1..=30).collect::<Vec<_>>());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::State(ConnectionState::Reconnecting { .. }))),
        "the fault really broke connections"
    );
    w.server.set_faults(Faults::none());
    client.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pulls_are_retried_over_tcp() {
    let w = world().await;
    for i in 1..=4 {
        w.say(i).await;
    }
    w.server.fail_next(
        VendorOp::PullOffline,
        2,
        ServiceError::Unavailable("busy".into()),
    );
    let client = w.client();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    let events = until(&mut sub, got_seq(4)).await;
    let retries = events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Retry(a) if a.op == "pull_offline"))
        .count();
    assert_eq!(retries, 2);
    assert_eq!(seqs(&events), [1, 2, 3, 4]);
    client.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_heartbeats_trigger_a_reconnect_over_tcp() {
    let w = world().await;
    let client = w.client();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    until(&mut sub, |e| matches!(e, ClientEvent::Heartbeat { .. })).await;
    w.server.set_faults(Faults {
        ignore_heartbeats: true,
        ..Faults::none()
    });
    until(&mut sub, |e| {
        matches!(e, ClientEvent::State(ConnectionState::Reconnecting { .. }))
    })
    .await;
    w.server.set_faults(Faults::none());
    until(&mut sub, |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    w.say(1).await;
    let events = until(&mut sub, got_seq(1)).await;
    assert_eq!(seqs(&events), [1]);
    client.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicked_over_tcp_stops() {
    let w = world().await;
    let client = w.client();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    let other = w.vendor.client();
    other.login(&w.bob).await.unwrap();
    until(&mut sub, |e| {
        matches!(
            e,
            ClientEvent::State(ConnectionState::Kicked(KickReason::LoggedInElsewhere))
        )
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), sub.recv())
            .await
            .is_err(),
        "no reconnect attempt"
    );
    other.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_in_the_middle_of_a_sync_over_tcp() {
    let w = world().await;
    for i in 1..=10 {
        w.say(i).await;
    }
    // The first connection dies inside the offline drain (login, pull, ack, pull, …).
    w.server.set_faults(Faults {
        drop_after_frames: Some(4),
        ..Faults::none()
    });
    let client = Arc::new(w.client());
    let mut sub = client.subscribe();
    let logging_in = tokio::spawn({
        let client = client.clone();
        async move { client.login().await }
    });
    let first = until(&mut sub, |e| {
        matches!(e, ClientEvent::State(ConnectionState::Reconnecting { .. }))
    })
    .await;
    assert!(
        first
            .iter()
            .any(|e| matches!(e, ClientEvent::Sync(im_arch::SyncProgress::Failed(_))))
    );
    w.server.set_faults(Faults::none());
    logging_in.await.unwrap().unwrap();
    let events = until(&mut sub, got_seq(10)).await;
    assert_eq!(seqs(&events), (1..=10).collect::<Vec<_>>());
    client.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_over_tcp_stops_without_a_loop() {
    let w = world().await;
    let token = w
        .server
        .vendor()
        .issue_token(&w.bob.user, Some(Duration::from_secs(600)))
        .unwrap();
    let creds = Credentials {
        user: w.bob.user.clone(),
        token,
    };
    let client = ImClient::builder(Arc::new(w.vendor.client()), creds)
        .config(config())
        .build();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    w.server.shift_clock(Duration::from_secs(601));
    until(&mut sub, |e| {
        matches!(e, ClientEvent::State(ConnectionState::TokenExpired))
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), sub.recv())
            .await
            .is_err(),
        "no reconnect attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_give_up_over_tcp_and_the_client_recovers() {
    let w = world().await;
    w.say(1).await;
    // Four failures: every attempt of the first pass (max 4) fails, the next pass succeeds.
    w.server.fail_next(
        VendorOp::PullOffline,
        4,
        ServiceError::Unavailable("busy".into()),
    );
    let client = w.client();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    let events = until(&mut sub, got_seq(1)).await;
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::Sync(im_arch::SyncProgress::Failed(im_arch::ArchError::GaveUp {
            op: "pull_offline",
            attempts: 4,
            ..
        }))
    )));
    client.logout().await;
}

/// Issue 20 over the wire (protocol 2): the peer's edit reaches the client live and shows
/// once with its latest content; a recall made while the client was away arrives from the
/// change feed at the next login; the client's read comes back to the peer as a receipt.
#[tokio::test]
async fn edits_recalls_and_reads_over_tcp() {
    let w = world().await;
    let bob = w.client();
    let mut sub = bob.subscribe();
    bob.login().await.unwrap();
    let alice = ImClient::builder(Arc::new(w.vendor.client()), w.alice.clone())
        .config(config())
        .build();
    let mut alice_sub = alice.subscribe();
    alice.login().await.unwrap();
    alice
        .send(w.conv.clone(), Content::text("wrong"))
        .await
        .unwrap();
    let got = until(&mut sub, |e| matches!(e, ClientEvent::Message(_))).await;
    let Some(ClientEvent::Message(r)) = got.last() else {
        unreachable!()
    };
    let id = r.message.server_id.clone();
    alice
        .edit(&w.conv, &id, Content::text("right"))
        .await
        .unwrap();
    until(&mut sub, |e| {
        matches!(e, ClientEvent::MessageChanged { message: Some(m), .. } if m.content == Content::text("right"))
    })
    .await;
    let page = bob
        .timeline_before(&w.conv, None, 10)
        .await
        .unwrap()
        .messages;
    assert_eq!(page.len(), 1, "the edited message shows once");
    assert_eq!(page[0].content, Content::text("right"));

    bob.logout().await;
    alice.recall(&w.conv, &id).await.unwrap();
    bob.login().await.unwrap();
    let page = bob
        .timeline_before(&w.conv, None, 10)
        .await
        .unwrap()
        .messages;
    assert!(
        matches!(page[0].content, Content::Recalled { .. }),
        "the recall made while away is applied at login: {page:?}"
    );
    bob.mark_read(&w.conv).await.unwrap();
    until(
        &mut alice_sub,
        |e| matches!(e, ClientEvent::ReadBy { reader, .. } if reader == &w.bob.user),
    )
    .await;
    bob.logout().await;
    alice.logout().await;
}
