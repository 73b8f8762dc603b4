//! The reference vendor's signed callbacks, end to end: a `MemoryVendor` store feed (and a
//! change feed), the `CallbackDispatcher`, and an axum receiver that verifies every request
//! with `im_service::webhook::verify_callback`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use im_service::memory::{MemoryVendor, MemoryVendorConfig};
use im_service::webhook::{
    self, Callback, CallbackPayload, ChangePayload, MESSAGE_CHANGED, MESSAGE_STORED,
    SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookError,
};
use im_service::{
    ChangeKind, Clock, ConversationId, ManualClock, MessageChange, ServerMsgId, UserId, Vendor,
};
use im_testkit::contract::text;
use im_vendor_sim::{CallbackConfig, CallbackDispatcher, CallbackStats, CallbackStatsSnapshot};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &[u8] = b"callback secret for tests";
const WINDOW: Duration = Duration::from_secs(300);

/// What the test receiver saw.
#[derive(Clone)]
struct Receiver {
    clock: Arc<dyn Clock>,
    /// Requests answered with 500 before the receiver starts accepting.
    fail_first: u32,
    requests: Arc<AtomicU32>,
    /// Every accepted callback, messages and changes, in arrival order.
    accepted: Arc<Mutex<Vec<Callback>>>,
    rejected: Arc<Mutex<Vec<WebhookError>>>,
    wrong_content_type: Arc<AtomicU32>,
}

impl Receiver {
    fn new(clock: Arc<dyn Clock>, fail_first: u32) -> Self {
        Self {
            clock,
            fail_first,
            requests: Arc::default(),
            accepted: Arc::default(),
            rejected: Arc::default(),
            wrong_content_type: Arc::default(),
        }
    }

    /// The accepted message callbacks, in arrival order.
    fn accepted(&self) -> Vec<CallbackPayload> {
        self.accepted
            .lock()
            .iter()
            .filter_map(|c| match c {
                Callback::Message(p) => Some(p.clone()),
                Callback::Changed(_) => None,
            })
            .collect()
    }

    /// Every accepted callback, in arrival order.
    fn all_accepted(&self) -> Vec<Callback> {
        self.accepted.lock().clone()
    }

    fn rejected(&self) -> Vec<WebhookError> {
        self.rejected.lock().clone()
    }

    /// Serves on `listener` until `stop` is cancelled.
    fn serve(&self, listener: TcpListener, stop: CancellationToken) {
        let app = Router::new()
            .route("/callbacks", post(receive))
            .with_state(self.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap_or_else(|e| panic!("test receiver failed: {e}"));
        });
    }
}

async fn receive(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = rx.requests.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("content-type") != Some("application/json") {
        rx.wrong_content_type.fetch_add(1, Ordering::SeqCst);
    }
    let now = webhook::unix_seconds(rx.clock.now());
    match webhook::verify_callback(
        SECRET,
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        now,
        WINDOW,
    ) {
        Err(e) => {
            rx.rejected.lock().push(e);
            StatusCode::UNAUTHORIZED
        }
        Ok(_) if n < rx.fail_first => StatusCode::INTERNAL_SERVER_ERROR,
        Ok(payload) => {
            rx.accepted.lock().push(payload);
            StatusCode::NO_CONTENT
        }
    }
}

async fn bind_local() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/callbacks")
}

/// Fast retries so the tests run in milliseconds; no timing is asserted.
fn config(addr: SocketAddr) -> CallbackConfig {
    CallbackConfig {
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        request_timeout: Duration::from_secs(5),
        vendor_name: "memory".into(),
        ..CallbackConfig::new(url(addr), SECRET)
    }
}

/// Waits (polling, with a generous deadline against hangs) until `done` holds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_settled(stats: &CallbackStats, n: u64) {
    wait_until(&format!("{n} callbacks settled"), || stats.settled() >= n).await;
}

/// A vendor with alice and bob, alice logged in; returns the vendor clock too.
async fn vendor_with_alice() -> anyhow::Result<(
    MemoryVendor,
    ManualClock,
    im_service::memory::MemoryClient,
    ConversationId,
)> {
    let (vendor, clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig::default());
    let alice = vendor.register_user(&UserId::new("alice"));
    let bob = vendor.register_user(&UserId::new("bob"));
    let client = vendor.client();
    client.login(&alice).await?;
    Ok((
        vendor,
        clock,
        client,
        ConversationId::direct(&alice.user, &bob.user),
    ))
}

fn server_ids(payloads: &[CallbackPayload]) -> Vec<ServerMsgId> {
    payloads
        .iter()
        .map(|p| p.message.server_id.clone())
        .collect()
}

#[tokio::test]
async fn callbacks_arrive_signed_in_order_once_per_stored_message() -> anyhow::Result<()> {
    let (vendor, clock, client, conv) = vendor_with_alice().await?;
    let clock: Arc<dyn Clock> = Arc::new(clock);
    let receiver = Receiver::new(Arc::clone(&clock), 0);
    let (listener, addr) = bind_local().await?;
    let stop = CancellationToken::new();
    receiver.serve(listener, stop.clone());
    let dispatcher = CallbackDispatcher::spawn(
        config(addr),
        vendor.store_feed(),
        Arc::clone(&clock),
        CancellationToken::new(),
    );

    let first = text(&conv, "one");
    let mut receipts = Vec::new();
    receipts.push(client.send(&first).await?);
    receipts.push(client.send(&text(&conv, "two")).await?);
    receipts.push(client.send(&text(&conv, "three")).await?);
    // A resend of the same client id is recognised: no new message, so no callback.
    let resent = client.send(&first).await?;
    assert!(resent.duplicate);
    // A later message proves the resend's (absent) callback would have come before it.
    receipts.push(client.send(&text(&conv, "four")).await?);

    let stats = dispatcher.stats();
    wait_settled(&stats, 4).await;
    let accepted = receiver.accepted();
    assert_eq!(
        server_ids(&accepted),
        receipts
            .iter()
            .map(|r| r.server_id.clone())
            .collect::<Vec<_>>(),
        "one callback per stored message, in send order"
    );
    let stored = vendor.stored_messages(&conv);
    assert_eq!(
        accepted
            .iter()
            .map(|p| p.message.clone())
            .collect::<Vec<_>>(),
        stored,
        "the payload is the stored message"
    );
    assert!(
        accepted
            .iter()
            .all(|p| p.vendor == "memory" && p.event == MESSAGE_STORED)
    );
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    assert_eq!(receiver.wrong_content_type.load(Ordering::SeqCst), 0);
    assert_eq!(
        stats.snapshot(),
        CallbackStatsSnapshot {
            delivered: 4,
            attempts: 4,
            failed_attempts: 0,
            given_up: 0,
        }
    );

    dispatcher.shutdown().await;
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn server_errors_are_retried_and_each_message_is_accepted_once() -> anyhow::Result<()> {
    let (vendor, clock, client, conv) = vendor_with_alice().await?;
    let clock: Arc<dyn Clock> = Arc::new(clock);
    let receiver = Receiver::new(Arc::clone(&clock), 2);
    let (listener, addr) = bind_local().await?;
    let stop = CancellationToken::new();
    receiver.serve(listener, stop.clone());
    let dispatcher = CallbackDispatcher::spawn(
        config(addr),
        vendor.store_feed(),
        Arc::clone(&clock),
        CancellationToken::new(),
    );

    let mut expected = Vec::new();
    for body in ["a", "b", "c"] {
        expected.push(client.send(&text(&conv, body)).await?.server_id);
    }

    let stats = dispatcher.stats();
    wait_settled(&stats, 3).await;
    assert_eq!(server_ids(&receiver.accepted()), expected);
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 5);
    assert!(
        receiver.rejected().is_empty(),
        "every retry is signed: {:?}",
        receiver.rejected()
    );
    assert_eq!(
        stats.snapshot(),
        CallbackStatsSnapshot {
            delivered: 3,
            attempts: 5,
            failed_attempts: 2,
            given_up: 0,
        }
    );

    dispatcher.shutdown().await;
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_stays_down_makes_the_message_given_up_then_delivery_resumes()
-> anyhow::Result<()> {
    let (vendor, clock, client, conv) = vendor_with_alice().await?;
    let clock: Arc<dyn Clock> = Arc::new(clock);
    // Take a free port and close it: connections to it are refused.
    let (listener, addr) = bind_local().await?;
    drop(listener);
    let dispatcher = CallbackDispatcher::spawn(
        CallbackConfig {
            max_attempts: 3,
            ..config(addr)
        },
        vendor.store_feed(),
        Arc::clone(&clock),
        CancellationToken::new(),
    );

    client.send(&text(&conv, "lost")).await?;
    let stats = dispatcher.stats();
    wait_settled(&stats, 1).await;
    assert_eq!(
        stats.snapshot(),
        CallbackStatsSnapshot {
            delivered: 0,
            attempts: 3,
            failed_attempts: 3,
            given_up: 1,
        }
    );

    // The receiver comes back on the same port; the next message goes through.
    let receiver = Receiver::new(Arc::clone(&clock), 0);
    let stop = CancellationToken::new();
    receiver.serve(TcpListener::bind(addr).await?, stop.clone());
    let next = client.send(&text(&conv, "found")).await?;
    wait_settled(&stats, 2).await;
    assert_eq!(server_ids(&receiver.accepted()), vec![next.server_id]);
    assert_eq!(stats.delivered(), 1);
    assert_eq!(stats.given_up(), 1);

    dispatcher.shutdown().await;
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn attempts_are_stamped_with_the_vendor_clock() -> anyhow::Result<()> {
    // The vendor clock runs an hour ahead of the receiver's: every attempt is refused as
    // stale, proving the timestamp comes from the dispatcher's clock at each attempt.
    let (vendor, clock, client, conv) = vendor_with_alice().await?;
    let receiver_clock: Arc<dyn Clock> = Arc::new(ManualClock::new(clock.now()));
    clock.advance(Duration::from_secs(3600));
    let receiver = Receiver::new(receiver_clock, 0);
    let (listener, addr) = bind_local().await?;
    let stop = CancellationToken::new();
    receiver.serve(listener, stop.clone());
    let dispatcher = CallbackDispatcher::spawn(
        CallbackConfig {
            max_attempts: 2,
            ..config(addr)
        },
        vendor.store_feed(),
        Arc::new(clock.clone()),
        CancellationToken::new(),
    );

    client.send(&text(&conv, "from the future")).await?;
    let stats = dispatcher.stats();
    wait_settled(&stats, 1).await;
    assert_eq!(stats.given_up(), 1);
    assert!(receiver.accepted().is_empty());
    assert_eq!(
        receiver.rejected(),
        vec![WebhookError::StaleTimestamp { age_secs: -3600 }; 2]
    );

    dispatcher.shutdown().await;
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn cancelling_the_parent_token_stops_the_dispatcher() -> anyhow::Result<()> {
    let (vendor, clock, client, conv) = vendor_with_alice().await?;
    let clock: Arc<dyn Clock> = Arc::new(clock);
    let receiver = Receiver::new(Arc::clone(&clock), 0);
    let (listener, addr) = bind_local().await?;
    let stop = CancellationToken::new();
    receiver.serve(listener, stop.clone());
    let parent = CancellationToken::new();
    let dispatcher = CallbackDispatcher::spawn(
        config(addr),
        vendor.store_feed(),
        Arc::clone(&clock),
        parent.clone(),
    );
    client.send(&text(&conv, "before")).await?;
    let stats = dispatcher.stats();
    wait_settled(&stats, 1).await;

    parent.cancel();
    // Shutting down a cancelled dispatcher returns (its task has ended or ends now).
    dispatcher.shutdown().await;
    client.send(&text(&conv, "after")).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(stats.settled(), 1, "nothing is sent after cancellation");
    assert_eq!(receiver.accepted().len(), 1);
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn shutdown_does_not_cancel_the_callers_token() -> anyhow::Result<()> {
    let vendor = MemoryVendor::default();
    let token = CancellationToken::new();
    let dispatcher = CallbackDispatcher::spawn(
        CallbackConfig::new("http://127.0.0.1:9/callbacks", SECRET),
        vendor.store_feed(),
        Arc::new(im_service::SystemClock),
        token.clone(),
    );
    dispatcher.shutdown().await;
    assert!(!token.is_cancelled());
    Ok(())
}

#[test]
fn config_debug_never_shows_the_secret() {
    let config = CallbackConfig::new("http://example.invalid/cb", b"s3cr3t-value".to_vec());
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert_eq!(config.max_attempts, 8);
    assert_eq!(config.base_backoff, Duration::from_millis(100));
    assert_eq!(config.max_backoff, Duration::from_secs(5));
    assert_eq!(config.request_timeout, Duration::from_secs(5));
}

/// The whole path through the reference server: messages sent over TCP produce signed
/// callbacks from the server, once per stored message, in order.
#[tokio::test]
async fn reference_server_posts_signed_callbacks_for_messages_sent_over_tcp() -> anyhow::Result<()>
{
    use im_service::reference::{ReferenceConfig, ReferenceVendor};
    use im_vendor_sim::{ReferenceServer, ServerConfig};

    let (listener, addr) = bind_local().await?;
    let receiver = Receiver::new(Arc::new(im_service::SystemClock), 0);
    let stop = CancellationToken::new();
    receiver.serve(listener, stop.clone());
    let mut callbacks = CallbackConfig::new(format!("http://{addr}/callbacks"), SECRET.to_vec());
    callbacks.base_backoff = Duration::from_millis(5);
    let server = ReferenceServer::start(ServerConfig {
        callbacks: Some(callbacks),
        ..Default::default()
    })
    .await?;
    let a = server.vendor().register_user(&UserId::new("alice"));
    let b = server.vendor().register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&a.user, &b.user);
    let vendor = ReferenceVendor::discover(server.addr(), ReferenceConfig::default()).await?;
    let alice = vendor.client();
    alice.login(&a).await?;
    let mut sent = Vec::new();
    for body in ["one", "two", "three"] {
        let msg = text(&conv, body);
        sent.push(alice.send(&msg).await?.server_id);
        assert!(
            alice.send(&msg).await?.duplicate,
            "a resend is recognised and not called back"
        );
    }
    let stats = server.callback_stats().expect("callbacks configured");
    wait_settled(&stats, 3).await;
    let got: Vec<ServerMsgId> = receiver
        .accepted()
        .into_iter()
        .map(|p| p.message.server_id)
        .collect();
    assert_eq!(
        got, sent,
        "one verified callback per stored message, in order"
    );
    assert!(receiver.rejected().is_empty());
    assert_eq!(stats.delivered(), 3);
    server.shutdown().await;
    stop.cancel();
    Ok(())
}

/// A change of `target` at `revision`.
fn change_of(target: &im_service::Message, revision: u32) -> MessageChange {
    MessageChange {
        conversation: target.conversation.clone(),
        target: target.server_id.clone(),
        kind: ChangeKind::Edited(im_service::Content::text(format!("edit {revision}"))),
        by: target.sender.clone(),
        at: target.server_time,
        revision,
    }
}

/// What the receiver got, as `stored:<id>` and `changed:<id>@<revision>`.
fn order(callbacks: &[Callback]) -> Vec<String> {
    callbacks
        .iter()
        .map(|c| match c {
            Callback::Message(p) => format!("stored:{}", p.message.server_id),
            Callback::Changed(p) => format!("changed:{}@{}", p.change.target, p.change.revision),
        })
        .collect()
}

/// Changes are called back signed, in order, never before a message already in the message
/// feed (the dispatcher's rule), from hand-made feeds.
#[tokio::test]
async fn change_callbacks_follow_the_messages_stored_before_them() -> anyhow::Result<()> {
    let (vendor, clock, client, conv) = vendor_with_alice().await?;
    let clock: Arc<dyn Clock> = Arc::new(clock);
    let receiver = Receiver::new(Arc::clone(&clock), 1);
    let (listener, addr) = bind_local().await?;
    let stop = CancellationToken::new();
    receiver.serve(listener, stop.clone());

    let mut stored = Vec::new();
    // Eight messages: with the ordering rule broken (an unbiased select), the chance that
    // the changes still come last is 2^-8.
    for n in 0..8 {
        let receipt = client.send(&text(&conv, &format!("message {n}"))).await?;
        stored.push(receipt.server_id);
    }
    let messages = vendor.stored_messages(&conv);
    assert_eq!(messages.len(), 8);
    // Both feeds are full before the dispatcher starts: the changes of messages 0 and 1 are
    // queued, so is every message. The changes must wait for all the messages.
    let (message_tx, message_rx) = tokio::sync::mpsc::unbounded_channel();
    let (change_tx, change_rx) = tokio::sync::mpsc::unbounded_channel();
    change_tx.send(change_of(&messages[0], 1))?;
    change_tx.send(change_of(&messages[1], 1))?;
    change_tx.send(change_of(&messages[0], 2))?;
    for m in &messages {
        message_tx.send(m.clone())?;
    }
    let dispatcher = CallbackDispatcher::spawn_with_changes(
        config(addr),
        message_rx,
        change_rx,
        Arc::clone(&clock),
        CancellationToken::new(),
    );
    let stats = dispatcher.stats();
    wait_settled(&stats, 11).await;
    // A change alone goes out too (retried like a message: the receiver failed once above).
    change_tx.send(change_of(&messages[2], 1))?;
    wait_settled(&stats, 12).await;

    let mut want: Vec<String> = stored.iter().map(|id| format!("stored:{id}")).collect();
    want.extend([
        format!("changed:{}@1", stored[0]),
        format!("changed:{}@1", stored[1]),
        format!("changed:{}@2", stored[0]),
        format!("changed:{}@1", stored[2]),
    ]);
    assert_eq!(
        order(&receiver.all_accepted()),
        want,
        "messages before the changes queued with them, changes in feed order"
    );
    let changes: Vec<ChangePayload> = receiver
        .all_accepted()
        .into_iter()
        .filter_map(|c| match c {
            Callback::Changed(p) => Some(p),
            Callback::Message(_) => None,
        })
        .collect();
    assert!(
        changes
            .iter()
            .all(|p| p.vendor == "memory" && p.event == MESSAGE_CHANGED)
    );
    assert_eq!(
        changes[0].change,
        change_of(&messages[0], 1),
        "the payload is the change"
    );
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    assert_eq!(
        stats.snapshot(),
        CallbackStatsSnapshot {
            delivered: 12,
            attempts: 13,
            failed_attempts: 1,
            given_up: 0,
        }
    );

    // Closing both feeds ends the task; shutdown waits for it either way.
    drop((message_tx, change_tx));
    dispatcher.shutdown().await;
    stop.cancel();
    Ok(())
}
