//! Architecture-layer cases about time and trouble: the history windows and their explicit
//! gaps, retry counts and giving up, heartbeat misses, and a reconnect in the middle of a sync.

// A case fails by panicking (the runner reports the message): `expect` is an assertion here.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::{
    ArchError, Backoff, ClientConfig, ClientEvent, ConnectionState, DeliveryPolicy, EventKind,
    Filter, HistoryWindow, ImClient, Jitter, RetryPolicy, VendorHistory,
};
use im_service::memory::VendorOp;
use im_service::{
    Capability as C, Content, ConversationId, Credentials, Message, ServiceError, UserId, Vendor,
};

use super::arch::delivered;
use super::{Case, Category, FailureClass, HarnessNeed, Layer};
use crate::contract::text;
use crate::harness::{ContractConfig, VendorHarness};
use crate::on_target;
use crate::wait::until;

const DAY: Duration = Duration::from_secs(24 * 3600);
const HOUR: Duration = Duration::from_secs(3600);

/// Short timings, so a case about retries and reconnects takes milliseconds.
fn quick_config() -> ClientConfig {
    let fast = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(40),
        jitter: Jitter::Full,
    };
    ClientConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: fast,
            deadline: None,
        },
        reconnect: fast,
        ..ClientConfig::default()
    }
}

/// Fresh credentials for an account (after vendor time moved on, old tokens may be dead).
async fn fresh<H: VendorHarness>(h: &H, user: &UserId) -> Credentials {
    Credentials {
        user: user.clone(),
        token: h.token(user, 365 * DAY).await,
    }
}

fn bodies(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match &m.content {
            Content::Text(t) => t.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Bob's client on the harness's clock, online.
async fn online_bob<H: VendorHarness>(
    h: &H,
    bob: Credentials,
    config: ClientConfig,
    old: bool,
) -> (ImClient, im_arch::Subscription, Arc<dyn Vendor>) {
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let mut builder = ImClient::builder(vendor.clone(), bob)
        .clock(h.clock())
        .config(config);
    if old {
        builder = builder.history_source(
            HistoryWindow::Old,
            Some(Arc::new(VendorHistory(vendor.clone()))),
        );
    }
    let client = builder.build();
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in");
    until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    (client, sub, vendor)
}

/// Messages 40, 15 and 1 day old against a vendor keeping 30 days and an hour: Recent and
/// Middle serve theirs, and Old — asked of the vendor — is an explicit gap up to its horizon,
/// not an empty page that would read as "nothing was said".
///
/// The extra hour keeps the Middle window's lower edge (30 days before the client's "now")
/// inside what the vendor keeps even when a real clock ticks between the client computing the
/// window and the vendor computing its horizon; with exactly 30 days a one-millisecond gap
/// could appear at the edge.
async fn history_windows_and_gaps<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    for (body, then) in [
        ("40 days ago", 25 * DAY),
        ("15 days ago", 14 * DAY),
        ("1 day ago", DAY),
    ] {
        let a = h.client().await;
        a.login(&fresh(&h, &alice.user).await)
            .await
            .expect("alice logs in");
        a.send(&text(&conv, body)).await.expect("send");
        a.logout().await.expect("logout");
        h.advance(then).await;
    }
    let (client, _sub, _) = online_bob(&h, fresh(&h, &bob.user).await, quick_config(), true).await;
    let recent = client
        .history(&conv, HistoryWindow::Recent, 50, None)
        .await
        .expect("recent window");
    assert_eq!(bodies(&recent.messages), ["1 day ago"], "{recent:?}");
    assert!(recent.gaps.is_empty(), "{recent:?}");
    let middle = client
        .history(&conv, HistoryWindow::Middle, 50, None)
        .await
        .expect("middle window");
    assert_eq!(bodies(&middle.messages), ["15 days ago"], "{middle:?}");
    assert!(middle.gaps.is_empty(), "{middle:?}");
    let before = HistoryWindow::Old.range(h.clock().now());
    let old = client
        .history(&conv, HistoryWindow::Old, 50, None)
        .await
        .expect("old window");
    let after = HistoryWindow::Old.range(h.clock().now());
    assert!(old.messages.is_empty(), "retention removed it: {old:?}");
    assert_eq!(old.gaps.len(), 1, "one explicit gap: {old:?}");
    // The Old window is a gap from its start to the vendor's horizon, an hour before the
    // window's end (a real clock may tick meanwhile, hence the bounds).
    let gap = &old.gaps[0];
    assert_eq!(gap.from, before.0, "{old:?}");
    let (lo, hi) = (before.1.minus(HOUR), after.1.minus(HOUR));
    assert!(lo <= gap.to && gap.to <= hi, "{old:?}");
    client.logout().await;
}

/// A call failing with retryable errors is tried exactly `max_attempts` times, each failure
/// published as it happens, then given up with a typed error; a permanent error is not
/// retried at all.
async fn retries_then_gives_up<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let (client, _sub, _) = online_bob(&h, bob, quick_config(), false).await;
    let mut retries = client.subscribe_with(
        Filter::of([EventKind::Retry]),
        DeliveryPolicy::Reliable { capacity: 64 },
    );
    let mut retries_seen = Vec::new();
    // Exactly three failures: a fourth attempt would succeed, so an extra attempt shows.
    h.fail_next(
        VendorOp::PullHistory,
        3,
        ServiceError::Unavailable("injected".into()),
    );
    let err = client
        .history(&conv, HistoryWindow::Recent, 10, None)
        .await
        .expect_err("three failures exhaust three attempts");
    assert!(
        matches!(
            &err,
            ArchError::GaveUp {
                op: "pull_history",
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
    for ev in retries.drain_now() {
        if let ClientEvent::Retry(r) = &*ev {
            retries_seen.push((r.attempt, r.next_in.is_some()));
        }
    }
    assert_eq!(
        retries_seen,
        [(1, true), (2, true), (3, false)],
        "every failed attempt published, the last with no next attempt"
    );
    client
        .history(&conv, HistoryWindow::Recent, 10, None)
        .await
        .expect("the vendor recovered: no failure was left over");
    // A permanent refusal: one attempt, no retry.
    h.fail_next(
        VendorOp::PullHistory,
        1,
        ServiceError::NotMember(conv.clone()),
    );
    let err = client
        .history(&conv, HistoryWindow::Recent, 10, None)
        .await
        .expect_err("permanent");
    assert!(matches!(err, ArchError::Permanent { .. }), "{err:?}");
    let permanent: Vec<(u32, bool)> = retries
        .drain_now()
        .iter()
        .filter_map(|e| match &**e {
            ClientEvent::Retry(r) => Some((r.attempt, r.next_in.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(
        permanent,
        [(1, false)],
        "a permanent error: its one attempt is published, with no next one"
    );
    client.logout().await;
}

/// Unanswered heartbeats: after `max_missed_heartbeats` misses the client reconnects by
/// itself and messages flow again.
async fn heartbeat_miss_reconnects<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let config = ClientConfig {
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_millis(500),
        max_missed_heartbeats: 2,
        ..quick_config()
    };
    let (client, mut sub, _) = online_bob(&h, bob, config, false).await;
    h.fail_next(
        VendorOp::Ping,
        2,
        ServiceError::Timeout(Duration::from_millis(500)),
    );
    let events = until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    let misses: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::HeartbeatMissed { missed } => Some(*missed),
            _ => None,
        })
        .collect();
    assert_eq!(misses, [1, 2], "{events:?}");
    let reconnect_at = events
        .iter()
        .position(|e| matches!(e, ClientEvent::State(ConnectionState::Reconnecting { .. })))
        .expect("the client reconnects by itself");
    let second_miss = events
        .iter()
        .position(|e| matches!(e, ClientEvent::HeartbeatMissed { missed: 2 }))
        .expect("second miss");
    assert!(second_miss < reconnect_at, "{events:?}");
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    a.send(&text(&conv, "after the reconnect"))
        .await
        .expect("send");
    let events = until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::Message(_))
    })
    .await;
    assert_eq!(delivered(&events).len(), 1);
    client.logout().await;
}

/// The connection fails in the middle of the offline sync (acks keep failing after the
/// first batch was delivered): the client reconnects, syncs again, and every offline
/// message arrives exactly once — the redelivered batch is recognised.
async fn reconnect_mid_sync<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    for i in 1..=5 {
        a.send(&text(&conv, &format!("offline {i}")))
            .await
            .expect("send");
    }
    // Every ack attempt of the first pass fails: the pass gives up mid-sync.
    h.fail_next(
        VendorOp::AckOffline,
        3,
        ServiceError::ConnectionLost("injected".into()),
    );
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, bob)
        .config(ClientConfig {
            offline_batch: 2,
            ..quick_config()
        })
        .build();
    let mut sub = client.subscribe();
    client.login().await.expect("bob logs in");
    let events = until(&mut sub, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::State(ConnectionState::Reconnecting { .. }))),
        "the failed pass led to a reconnect: {events:?}"
    );
    let mut got: Vec<String> = delivered(&events).into_iter().map(|(b, _)| b).collect();
    got.sort();
    let want: Vec<String> = (1..=5).map(|i| format!("offline {i}")).collect();
    assert_eq!(got, want, "each offline message exactly once");
    client.logout().await;
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "HIST-003",
            title: "Each history window is served or reported as an explicit gap",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::HistoryByTime],
            harness: &[HarnessNeed::VendorClock],
            steps: &[
                "the vendor keeps 30 days and an hour; messages are sent 40, 15 and 1 day(s) before now",
                "bob's client (on the vendor's clock) reads the Recent, Middle and Old windows",
            ],
            expected: "Recent has the 1-day message, Middle the 15-day one, both without gaps; \
                       Old has no messages and one explicit gap covering the whole window",
            guards: None,
            run: |t| {
                Box::pin(async move {
                    on_target!(
                        t,
                        ContractConfig {
                            retention: 30 * DAY + HOUR,
                            ..ContractConfig::default()
                        },
                        history_windows_and_gaps
                    )
                })
            },
        },
        Case {
            id: "RETRY-001",
            title: "Retryable failures are retried exactly max_attempts times, then given up",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::HistoryByTime],
            harness: &[],
            steps: &[
                "bob is online with max_attempts = 3",
                "the vendor fails the next 3 history pulls as unavailable",
                "bob reads history; then again; then the vendor refuses one pull for good",
            ],
            expected: "GaveUp after 3 attempts with 3 Retry events (the last without a next \
                       attempt); the next read works; the permanent refusal is not retried",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, retries_then_gives_up) }),
        },
        Case {
            id: "CONN-001",
            title: "Missed heartbeats make the client reconnect by itself",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::Heartbeat],
            harness: &[],
            steps: &[
                "bob is online, heartbeat every 50 ms, 2 misses allowed",
                "the vendor times out the next 2 pings",
                "alice then sends a message",
            ],
            expected: "HeartbeatMissed 1 and 2, then Reconnecting, then Online; the message \
                       arrives",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, heartbeat_miss_reconnects) }),
        },
        Case {
            id: "SYNC-005",
            title: "A reconnect in the middle of the offline sync delivers everything once",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::OfflineQueue],
            harness: &[],
            steps: &[
                "alice sends 5 while bob is away",
                "bob syncs in batches of 2; every ack of the first pass fails",
                "the pass gives up, the client reconnects and syncs again",
            ],
            expected: "a Reconnecting state, then Online; each of the 5 delivered exactly once",
            guards: Some(FailureClass::ForgottenSession),
            run: |t| Box::pin(async move { on_target!(t, reconnect_mid_sync) }),
        },
    ]
}
