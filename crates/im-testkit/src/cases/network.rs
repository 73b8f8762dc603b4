//! Network-fault cases: the client (`im-arch`) and QC (`im-qc`) against the target vendor
//! with the harness's [`FaultProxy`] breaking the network between them — every connection
//! dropped, a blackhole, refused connections during an outage, a cut mid-frame, a delay.
//! Because the faults live in the network and not in the vendor, these run on real servers
//! (Prosody, …) exactly as on the reference vendor.

// A case fails by panicking (the runner reports the message): `expect` is an assertion here.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::{Backoff, ClientConfig, ClientEvent, ConnectionState, ImClient, Jitter, RetryPolicy};
use im_qc::{
    AlertRule, Comparison, Metric, QcConfig, QcEvent, QcMonitor, QcVendor, Severity, UnknownDevice,
    Verdict, Watch,
};
use im_service::{
    Capability as C, ClientMsgId, Content, ConversationId, Credentials, ErrorClass, SystemClock,
    Vendor,
};
use tokio::time::Instant;

use super::arch::delivered;
use super::{Case, Category, FailureClass, HarnessNeed, Layer};
use crate::contract::text;
use crate::harness::VendorHarness;
use crate::on_target;
use crate::wait::until;
use crate::{FaultProxy, ProxyStats};

/// Overall deadline of each wait for a message, a state or a send status.
const WITHIN: Duration = Duration::from_secs(30);

/// The harness's proxy (the case declares `NetworkFaults`, so there is one).
fn net<H: VendorHarness>(h: &H) -> &FaultProxy {
    h.network()
        .expect("NetworkFaults: the harness puts a proxy between client and vendor")
}

/// Short heartbeats and reconnects, so a case about the network takes about a second.
fn net_config() -> ClientConfig {
    ClientConfig {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(300),
        max_missed_heartbeats: 2,
        reconnect: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
            jitter: Jitter::Full,
        },
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: Backoff {
                base: Duration::from_millis(20),
                max: Duration::from_millis(100),
                jitter: Jitter::Full,
            },
            deadline: None,
        },
        ..ClientConfig::default()
    }
}

/// A client of `who` through the harness's network, online.
async fn online<H: VendorHarness>(
    h: &H,
    who: Credentials,
    config: ClientConfig,
) -> (ImClient, im_arch::Subscription) {
    let vendor: Arc<dyn Vendor> = Arc::new(h.client().await);
    let client = ImClient::builder(vendor, who).config(config).build();
    let mut sub = client.subscribe();
    client.login().await.expect("logs in");
    until(&mut sub, WITHIN, |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    (client, sub)
}

/// Events until `n` messages were delivered.
async fn messages(sub: &mut im_arch::Subscription, n: usize) -> Vec<ClientEvent> {
    let mut seen = 0;
    until(sub, WITHIN, |e| {
        seen += usize::from(matches!(e, ClientEvent::Message(_)));
        seen == n
    })
    .await
}

/// Events until every one of `ids` reported `Sent` (failing the case on a `Failed`).
async fn all_sent(sub: &mut im_arch::Subscription, ids: &[ClientMsgId]) -> Vec<ClientEvent> {
    let mut left: Vec<ClientMsgId> = ids.to_vec();
    until(sub, WITHIN, |e| {
        if let ClientEvent::SendStatus {
            client_id,
            status: Some(status),
            ..
        } = e
        {
            if let im_arch::SendStatus::Failed { reason, .. } = status {
                assert!(
                    !left.contains(client_id),
                    "{client_id} failed instead of waiting for the network: {reason}"
                );
            }
            if matches!(status, im_arch::SendStatus::Sent { .. }) {
                left.retain(|id| id != client_id);
            }
        }
        left.is_empty()
    })
    .await
}

fn bodies(events: &[ClientEvent]) -> Vec<String> {
    delivered(events).into_iter().map(|(b, _)| b).collect()
}

/// After a fault: one more message arrives alone — nothing of the earlier ones comes again.
async fn nothing_repeats(
    sender: &ImClient,
    sub: &mut im_arch::Subscription,
    conv: &ConversationId,
) {
    sender
        .send(conv.clone(), Content::text("marker"))
        .await
        .expect("queued");
    let events = messages(sub, 1).await;
    assert_eq!(bodies(&events), ["marker"], "nothing delivered twice");
}

fn reconnected(events: &[ClientEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ClientEvent::State(ConnectionState::Reconnecting { .. })))
}

/// (a) Every connection dropped: the drop hits open connections and the clients come back
/// over new ones by themselves; what alice sends meanwhile reaches bob once each, in order.
/// Where the client holds one long-lived connection ([`VendorHarness::persistent_connection`])
/// bob must also have noticed the drop and reconnected; over independent HTTP requests a drop
/// between two requests is invisible by design, and only the outcome is asserted.
async fn drop_all_reconnects_in_order<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let (a, mut a_sub) = online(&h, alice, net_config()).await;
    let (b, mut b_sub) = online(&h, bob, net_config()).await;
    a.send(conv.clone(), Content::text("before"))
        .await
        .expect("queued");
    assert_eq!(bodies(&messages(&mut b_sub, 1).await), ["before"]);
    let before: ProxyStats = net(&h).stats();
    net(&h).drop_all();
    let mut ids = Vec::new();
    for i in 1..=5 {
        let id = a
            .send(conv.clone(), Content::text(format!("during {i}")))
            .await
            .expect("queued while reconnecting");
        ids.push(id);
    }
    let events = messages(&mut b_sub, 5).await;
    if h.persistent_connection() {
        assert!(reconnected(&events), "bob noticed the drop: {events:?}");
    }
    assert_eq!(
        bodies(&events),
        (1..=5).map(|i| format!("during {i}")).collect::<Vec<_>>(),
        "every message once, in order"
    );
    all_sent(&mut a_sub, &ids).await;
    let after = net(&h).stats();
    assert!(
        after.dropped >= before.dropped + 2,
        "the drop hit open connections (at least one per client): {after:?}"
    );
    assert!(
        after.accepted > before.accepted,
        "the clients came back over new connections: {after:?}"
    );
    nothing_repeats(&a, &mut b_sub, &conv).await;
    a.logout().await;
    b.logout().await;
}

/// (b) A blackhole: the connection stays open but nothing flows. The missed heartbeats are
/// noticed within the configured bound, the client reconnects once the network heals, and
/// what was sent meanwhile arrives once, in order.
async fn blackhole_detected_and_recovered<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let config = net_config();
    // A heartbeat every interval, each waiting up to the timeout: the misses that mean a
    // dead connection come within this (plus scheduling slack).
    let bound = (config.heartbeat_interval + config.heartbeat_timeout)
        * config.max_missed_heartbeats
        + config.heartbeat_interval;
    let (a, mut a_sub) = online(&h, alice, config.clone()).await;
    let (b, mut b_sub) = online(&h, bob, config.clone()).await;
    net(&h).blackhole(true);
    let started = Instant::now();
    let events = until(&mut b_sub, WITHIN, |e| {
        matches!(e, ClientEvent::HeartbeatMissed { missed: 2 })
    })
    .await;
    let noticed = started.elapsed();
    let misses: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::HeartbeatMissed { missed } => Some(*missed),
            _ => None,
        })
        .collect();
    assert_eq!(misses, [1, 2], "two misses in a row: {events:?}");
    let slack = Duration::from_millis(500);
    assert!(
        noticed <= bound + slack,
        "blackhole noticed after {noticed:?}, configured bound {bound:?}"
    );
    // The second miss ends the connection: the client reconnects by itself, its goodbye to
    // the dead connection cut short at one heartbeat timeout (not the adapter's own request
    // timeout: seconds on the reference protocol, far more over HTTP).
    until(&mut b_sub, WITHIN, |e| {
        matches!(e, ClientEvent::State(ConnectionState::Reconnecting { .. }))
    })
    .await;
    let reconnecting = started.elapsed() - noticed;
    assert!(
        reconnecting <= config.heartbeat_timeout + slack,
        "reconnecting began {reconnecting:?} after the second miss; the goodbye to a dead \
         link may take one heartbeat timeout ({:?})",
        config.heartbeat_timeout
    );
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(
            a.send(conv.clone(), Content::text(format!("in the dark {i}")))
                .await
                .expect("queued"),
        );
    }
    // Still dark a little longer: bob's reconnect cannot complete meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    net(&h).heal();
    let events = messages(&mut b_sub, 3).await;
    assert_eq!(
        bodies(&events),
        (1..=3)
            .map(|i| format!("in the dark {i}"))
            .collect::<Vec<_>>(),
        "nothing lost, in order, once each"
    );
    all_sent(&mut a_sub, &ids).await;
    nothing_repeats(&a, &mut b_sub, &conv).await;
    a.logout().await;
    b.logout().await;
}

/// (c) An outage that refuses new connections: sends wait in the outbox, reconnects back
/// off (no storm against a server that refuses), and after recovery each send is delivered
/// once, in order.
async fn outage_queues_backs_off_and_delivers<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let (a, mut a_sub) = online(&h, alice, net_config()).await;
    let (b, mut b_sub) = online(&h, bob, net_config()).await;
    let outage = Duration::from_millis(1500);
    let before = net(&h).stats();
    net(&h).outage(outage);
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(
            a.send(conv.clone(), Content::text(format!("queued {i}")))
                .await
                .expect("queued offline"),
        );
    }
    let outbox = a.outbox().await.expect("outbox");
    assert_eq!(outbox.len(), 3, "queued while offline: {outbox:?}");
    // Alice's reconnect attempts during the outage: numbered, each after a backoff delay.
    let a_events = all_sent(&mut a_sub, &ids).await;
    let attempts: Vec<(u32, Duration)> = a_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::State(ConnectionState::Reconnecting { attempt, next_in }) => {
                Some((*attempt, *next_in))
            }
            _ => None,
        })
        .collect();
    assert!(
        attempts.len() >= 2,
        "the refused reconnects were retried: {attempts:?}"
    );
    assert!(
        attempts.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "attempts counted up: {attempts:?}"
    );
    let events = messages(&mut b_sub, 3).await;
    assert_eq!(
        bodies(&events),
        (1..=3).map(|i| format!("queued {i}")).collect::<Vec<_>>(),
        "delivered once each after recovery, in order"
    );
    let after = net(&h).stats();
    let refused = after.refused - before.refused;
    assert!(refused >= 2, "connections were refused: {after:?}");
    // With backoff from 50 ms up to 400 ms, two clients make a few dozen attempts in 1.5 s
    // at most; without it they would make thousands.
    assert!(
        refused <= 60,
        "a reconnect storm: {refused} refused in {outage:?}"
    );
    nothing_repeats(&a, &mut b_sub, &conv).await;
    a.logout().await;
    b.logout().await;
}

/// (c') A client that may not wait for ever: during a long outage it gives up reconnecting
/// with a typed state within its bound, a raw login fails with a typed, retryable error (no
/// hang), and the queued send is kept — after the outage a new login delivers it once.
async fn give_up_is_typed_and_loses_nothing<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let config = ClientConfig {
        max_reconnect_attempts: Some(3),
        ..net_config()
    };
    let (a, mut a_sub) = online(&h, alice.clone(), config).await;
    net(&h).outage(Duration::from_secs(600));
    let id = a
        .send(conv.clone(), Content::text("kept"))
        .await
        .expect("queued");
    let started = Instant::now();
    let events = until(&mut a_sub, WITHIN, |e| {
        matches!(e, ClientEvent::State(ConnectionState::Failed(_)))
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up within its bound (3 attempts, backoff ≤ 400 ms): {:?}",
        started.elapsed()
    );
    assert!(reconnected(&events), "it tried first: {events:?}");
    let raw = h.client().await;
    let err = tokio::time::timeout(WITHIN, raw.login(&alice))
        .await
        .expect("a refused login returns, it does not hang")
        .expect_err("the login is refused during the outage");
    assert_ne!(err.class(), ErrorClass::Permanent, "retryable: {err:?}");
    let outbox = a.outbox().await.expect("outbox");
    assert!(
        outbox
            .iter()
            .any(|i| i.message.client_id == id && i.status == im_arch::SendStatus::Sending),
        "the send is kept, not lost and not failed for good: {outbox:?}"
    );
    net(&h).heal();
    a.login().await.expect("logs in again");
    all_sent(&mut a_sub, std::slice::from_ref(&id)).await;
    let b = h.client().await;
    b.login(&bob).await.expect("bob logs in");
    let batch = b.pull_offline(10).await.expect("pull");
    let got: Vec<&Content> = batch.messages.iter().map(|m| &m.content).collect();
    assert_eq!(got, [&Content::text("kept")], "delivered once");
    a.logout().await;
}

/// (d) QC on a real network: an outage is judged Down and fires the `vendor_down` alert;
/// when the network heals the client reconnects, the alert resolves and the verdict is
/// Healthy again.
async fn qc_detects_outage_and_recovery<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let qc = Arc::new(QcVendor::new(
        Arc::new(h.client().await),
        Arc::new(UnknownDevice),
    ));
    let client = ImClient::builder(qc.clone(), alice)
        .config(net_config())
        .build();
    let config = QcConfig {
        eval_interval: Duration::from_millis(50),
        verdict_window: Duration::from_secs(2),
        down_when_disconnected_for: Duration::from_millis(300),
        rules: vec![AlertRule {
            name: "vendor_down".into(),
            metric: Metric::Verdict,
            comparison: Comparison::Above,
            threshold: 1.5,
            for_duration: Duration::from_millis(200),
            severity: Severity::Critical,
        }],
        ..QcConfig::default()
    };
    let watch = Watch {
        metrics: qc.metrics(),
        bus: client.bus().clone(),
        roles: None,
        user: None,
        device: Arc::new(UnknownDevice),
        clock: Arc::new(SystemClock),
    };
    let monitor = QcMonitor::start(config, watch).expect("monitor");
    let mut sub = client.subscribe();
    client.login().await.expect("login");
    until(&mut sub, WITHIN, |e| {
        matches!(e, ClientEvent::State(ConnectionState::Online))
    })
    .await;
    // A login slower than the Down bound (Synapse on a loaded machine) fires and resolves
    // the alert on its own; only what follows the outage may count, so the case listens
    // from a settled, healthy monitor on.
    qc_settled(&monitor).await;
    let mut events = monitor.subscribe(
        im_arch::Filter::all(),
        im_arch::DeliveryPolicy::Reliable { capacity: 256 },
    );
    net(&h).outage(Duration::from_millis(2000));
    let fired = qc_until(
        &mut events,
        "AlertFired vendor_down",
        |e| matches!(e, QcEvent::AlertFired { rule, .. } if rule == "vendor_down"),
    )
    .await;
    assert!(
        fired.iter().any(|e| matches!(
            e,
            QcEvent::VerdictChanged {
                to: Verdict::Down,
                ..
            }
        )),
        "judged Down: {fired:?}"
    );
    let healthy = |e: &QcEvent| {
        matches!(
            e,
            QcEvent::VerdictChanged {
                to: Verdict::Healthy,
                ..
            }
        )
    };
    let mut after = qc_until(
        &mut events,
        "AlertResolved vendor_down",
        |e| matches!(e, QcEvent::AlertResolved { rule } if rule == "vendor_down"),
    )
    .await;
    if !after.iter().any(healthy) {
        after = qc_until(&mut events, "VerdictChanged to Healthy", healthy).await;
    }
    assert!(after.iter().any(healthy), "{after:?}");
    assert!(client.state().is_online(), "the client is back online");
    client.logout().await;
}

/// Waits, within one overall deadline, until `monitor` judges the vendor Healthy with no
/// alert firing.
async fn qc_settled(monitor: &QcMonitor) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let snap = monitor.snapshot();
        if snap.verdict.verdict == Verdict::Healthy && snap.alerts.iter().all(|a| !a.firing) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the monitor never settled Healthy before the outage within {WITHIN:?}: {:?} {:?}",
            snap.verdict,
            snap.alerts
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// QC events until `stop` matches one (included), one overall deadline.
async fn qc_until(
    events: &mut im_arch::BusStream<QcEvent>,
    what: &str,
    mut stop: impl FnMut(&QcEvent) -> bool,
) -> Vec<QcEvent> {
    let deadline = Instant::now() + WITHIN;
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WITHIN:?}; saw {seen:?}"))
            .unwrap_or_else(|| panic!("monitor gone; saw {seen:?}"));
        let done = stop(&ev);
        seen.push((*ev).clone());
        if done {
            return seen;
        }
    }
}

/// Where [`cut_mid_frame`] cuts alice's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutAt {
    /// Inside the send's request frame: the vendor never sees the message.
    MidRequest,
    /// Inside the response frame, after the whole request: the vendor stored the message
    /// and its ack is lost.
    MidResponse,
}

/// (e) The connection is cut after N bytes, in the middle of a frame. The send returns (no
/// hang) and the cut really happened; where the client holds one long-lived connection
/// ([`VendorHarness::persistent_connection`]) the cut falls inside that send's exchange, so
/// it must fail with a typed, retryable error. Over independent HTTP requests a send may be
/// several requests on pooled connections (the cut may hit another one, and a request whose
/// idle connection closed is retried by the HTTP client), so there it may also end `Ok`, and
/// an aim that missed every connection is tried again earlier with a new message.
/// A failed send is resent after a new login (same client id), as the outbox does; with
/// `IdempotentSend` (the lost-ack case) the resend happens whatever the first outcome. Bob
/// gets each message exactly once.
async fn cut_mid_frame<H: VendorHarness>(h: H, at: CutAt) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    // A first send may do one-off work (a Matrix client creates the room): measure the
    // second, what one send costs on this vendor's wire (alice's client is the only one
    // logged in, and no client heartbeats run here).
    a.send(&text(&conv, "measure 1")).await.expect("send");
    let s0 = net(&h).stats();
    a.send(&text(&conv, "measure 2")).await.expect("send");
    let s1 = net(&h).stats();
    let up = s1.bytes_to_upstream - s0.bytes_to_upstream;
    let down = s1.bytes_to_client - s0.bytes_to_client;
    assert!(up >= 2, "the send went through the proxy: {s1:?}");
    let cut_at = match at {
        CutAt::MidRequest => up / 2,
        CutAt::MidResponse => {
            assert!(
                down >= 2,
                "the vendor answers a send ({down} bytes): {s1:?}"
            );
            up + down / 2
        }
    };
    // The next send has the same size: the cut falls where it was aimed. Over pooled HTTP
    // connections a send's bytes are spread over several connections, each counting its own
    // budget, so the aim may lie past what any one of them carries: there a send the cut
    // missed must have gone through normally, and the next one is aimed a third earlier (a
    // few tries, each a new message of the same size). A long-lived connection carries the
    // whole send: the first aim must hit.
    let mut aim = cut_at;
    let mut n = 3;
    let (resend, sent) = loop {
        let before = net(&h).stats();
        net(&h).cut_after(Some(aim));
        let message = text(&conv, &format!("measure {n}"));
        let sent = tokio::time::timeout(WITHIN, a.send(&message))
            .await
            .expect("the cut send returns, it does not hang");
        net(&h).cut_after(None);
        if cut_since(&h, before).await {
            break (message, sent);
        }
        assert!(
            !h.persistent_connection() && n < 8,
            "the proxy cut a connection during the send (aimed at {aim} bytes): {:?}",
            net(&h).stats()
        );
        sent.expect("a send the cut missed succeeds");
        aim = aim * 2 / 3;
        n += 1;
    };
    let failed = match sent {
        Err(err) => {
            assert_ne!(err.class(), ErrorClass::Permanent, "retryable: {err:?}");
            true
        }
        Ok(receipt) => {
            assert!(
                !h.persistent_connection(),
                "the connection was cut before the ack, yet the send returned {receipt:?}"
            );
            false
        }
    };
    // A lost ack looks like a failure to the sender: with IdempotentSend declared, resending
    // the same client id must store nothing twice, whatever the first attempt returned.
    if failed || at == CutAt::MidResponse {
        a.login(&alice).await.expect("alice logs in again");
        a.send(&resend).await.expect("the resend (same client id)");
    }
    let b = h.client().await;
    b.login(&bob).await.expect("bob logs in");
    let batch = b.pull_offline(10).await.expect("pull");
    let got: Vec<&Content> = batch.messages.iter().map(|m| &m.content).collect();
    let want: Vec<Content> = (1..=n)
        .rev()
        .map(|i| Content::text(format!("measure {i}")))
        .collect();
    assert_eq!(
        got,
        want.iter().collect::<Vec<_>>(),
        "each once (an offline batch is newest first)"
    );
}

/// Whether the proxy has cut a connection since `before`, waiting up to a second for it
/// (the proxy counts a cut as the connection task ends, just after the client saw it).
async fn cut_since<H: VendorHarness>(h: &H, before: ProxyStats) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if net(h).stats().cut > before.cut {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (f) A delay on every chunk both ways: still correct, and the heartbeat's measured round
/// trip shows the delay (and drops again when it ends).
async fn delay_shows_in_heartbeat_rtt<H: VendorHarness>(h: H) {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let config = ClientConfig {
        heartbeat_timeout: Duration::from_secs(3),
        ..net_config()
    };
    let (b, mut b_sub) = online(&h, bob, config).await;
    let a = h.client().await;
    a.login(&alice).await.expect("alice logs in");
    let by = Duration::from_millis(150);
    net(&h).delay(by);
    until(
        &mut b_sub,
        WITHIN,
        |e| matches!(e, ClientEvent::Heartbeat { rtt } if *rtt >= 2 * by),
    )
    .await;
    for i in 1..=3 {
        a.send(&text(&conv, &format!("slow {i}")))
            .await
            .expect("send through the delay");
    }
    let events = messages(&mut b_sub, 3).await;
    assert_eq!(
        bodies(&events),
        (1..=3).map(|i| format!("slow {i}")).collect::<Vec<_>>(),
        "in order, once each"
    );
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, ClientEvent::HeartbeatMissed { .. })),
        "a delay below the heartbeat timeout is not a miss: {events:?}"
    );
    net(&h).delay(Duration::ZERO);
    until(
        &mut b_sub,
        WITHIN,
        |e| matches!(e, ClientEvent::Heartbeat { rtt } if *rtt < by),
    )
    .await;
    b.logout().await;
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "NET-001",
            title: "Every connection dropped: the clients come back; sends meanwhile arrive once, in order",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[HarnessNeed::NetworkFaults],
            steps: &[
                "alice and bob are online through the fault proxy (heartbeat every 100 ms)",
                "the proxy drops every connection",
                "alice sends 5 at once, while both reconnect",
            ],
            expected: "the drop closed open connections and new ones were opened; bob gets \
                       the 5 once each, in order (and, where the client keeps one long-lived \
                       connection, reconnected by himself); alice's 5 end Sent; a marker sent \
                       after arrives alone",
            guards: Some(FailureClass::SendQueueOrder),
            run: |t| Box::pin(async move { on_target!(t, drop_all_reconnects_in_order) }),
        },
        Case {
            id: "NET-002",
            title: "A blackhole is noticed by missed heartbeats within the bound; nothing is lost",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::Heartbeat],
            harness: &[HarnessNeed::NetworkFaults],
            steps: &[
                "alice and bob are online (heartbeat 100 ms, timeout 300 ms, 2 misses)",
                "the proxy blackholes every connection: open, but nothing flows",
                "alice sends 3; the network heals",
            ],
            expected: "bob sees HeartbeatMissed 1 and 2 within 2 × (interval + timeout) + \
                       interval (+ 0.5 s slack), then Reconnecting; after healing the 3 \
                       arrive once each, in order",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, blackhole_detected_and_recovered) }),
        },
        Case {
            id: "NET-003",
            title: "An outage refusing connections: sends wait, reconnects back off, delivery once after",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[],
            harness: &[HarnessNeed::NetworkFaults],
            steps: &[
                "alice and bob are online through the proxy",
                "a 1.5 s outage: every connection dropped, new ones refused",
                "alice sends 3 during it",
            ],
            expected: "the 3 wait in alice's outbox; her reconnect attempts are numbered and \
                       backed off (at most 60 refusals for both clients); after the outage \
                       bob gets the 3 once each, in order",
            guards: Some(FailureClass::ReconnectStorm),
            run: |t| Box::pin(async move { on_target!(t, outage_queues_backs_off_and_delivers) }),
        },
        Case {
            id: "NET-004",
            title: "A long outage ends in a typed give-up, never stuck; the queued send survives",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::OfflineQueue],
            harness: &[HarnessNeed::NetworkFaults],
            steps: &[
                "alice is online with at most 3 reconnect attempts",
                "a long outage starts; alice sends one",
                "a raw login is tried during the outage",
                "the network heals; alice logs in again; bob pulls his offline messages",
            ],
            expected: "alice's client ends Failed (gave up) within 10 s; the raw login fails \
                       with a typed retryable error; the send stays queued, goes out after \
                       the new login and bob has it once",
            guards: Some(FailureClass::StuckSending),
            run: |t| Box::pin(async move { on_target!(t, give_up_is_typed_and_loses_nothing) }),
        },
        Case {
            id: "NET-005",
            title: "QC judges a network outage Down, alerts, and sees the recovery",
            category: Category::Essential,
            layer: Layer::Qc,
            needs: &[],
            harness: &[HarnessNeed::NetworkFaults],
            steps: &[
                "alice is online through the QC decorator; a vendor_down rule (verdict Down \
                 for 200 ms)",
                "a 2 s outage",
            ],
            expected: "VerdictChanged to Down and AlertFired vendor_down; after the outage \
                       AlertResolved and VerdictChanged to Healthy, the client online",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, qc_detects_outage_and_recovery) }),
        },
        Case {
            id: "NET-006",
            title: "A connection cut inside a request frame: no hang, nothing lost or doubled",
            category: Category::Essential,
            layer: Layer::Service,
            needs: &[C::OfflineQueue],
            harness: &[HarnessNeed::NetworkFaults],
            steps: &[
                "alice sends two messages; the proxy measures the second's bytes each way",
                "the proxy cuts a connection halfway through the next send's request",
                "alice sends a third message (where the client uses several connections \
                 and the cut missed them all: up to 5 more, each aimed a third earlier); if \
                 the cut one failed, she logs in again and resends it (same client id)",
                "bob pulls his offline messages",
            ],
            expected: "the cut happened and the send returns without hanging: with a \
                       retryable (typed) error where the client keeps one long-lived \
                       connection, else an error or Ok; bob has every message once each",
            guards: None,
            run: |t| {
                Box::pin(async move { on_target!(t, |h| cut_mid_frame(h, CutAt::MidRequest)) })
            },
        },
        Case {
            id: "NET-007",
            title: "A network delay: still correct, and the heartbeat RTT shows it",
            category: Category::Essential,
            layer: Layer::Arch,
            needs: &[C::Heartbeat],
            harness: &[HarnessNeed::NetworkFaults],
            steps: &[
                "bob is online (heartbeat 100 ms, timeout 3 s)",
                "the proxy delays every chunk by 150 ms each way",
                "alice sends 3; the delay ends",
            ],
            expected: "a heartbeat RTT of at least 300 ms; the 3 arrive in order once each, \
                       no heartbeat missed; after the delay an RTT under 150 ms",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, delay_shows_in_heartbeat_rtt) }),
        },
        Case {
            id: "NET-008",
            title: "A send ack cut mid-frame: no hang, and the resend is stored once",
            category: Category::Essential,
            layer: Layer::Service,
            needs: &[C::OfflineQueue, C::IdempotentSend],
            harness: &[HarnessNeed::NetworkFaults],
            steps: &[
                "alice sends two messages; the proxy measures the second's bytes each way",
                "the proxy cuts a connection after the next send's whole request and half \
                 of its response (the vendor has stored the message; the ack is lost)",
                "alice sends a third message (where the client uses several connections \
                 and the cut missed them all: up to 5 more, each aimed a third earlier); \
                 she logs in again and resends the cut one (same client id)",
                "bob pulls his offline messages",
            ],
            expected: "the cut happened and the send returns without hanging: with a \
                       retryable (typed) error where the client keeps one long-lived \
                       connection, else an error or Ok; the resend succeeds; bob has every \
                       message once each",
            guards: Some(FailureClass::DuplicateAfterLostAck),
            run: |t| {
                Box::pin(async move { on_target!(t, |h| cut_mid_frame(h, CutAt::MidResponse)) })
            },
        },
    ]
}
