//! The persistent send queue on the in-process vendor with paused time: order under
//! failure (failure class 3), resend after a lost ack (class 1), local echo reconciled
//! (class 5), sends waiting for authentication (class 7), oversized content refused.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::{
    ArchError, Backoff, ClientConfig, ClientEvent, ConnectionState, ImClient, Jitter, RetryPolicy,
    SendStatus, Subscription,
};
use im_service::memory::{MemoryVendor, MemoryVendorConfig, VendorOp};
use im_service::{ClientMsgId, Content, ConversationId, Credentials, ServiceError, UserId, Vendor};
use im_testkit::FaultyVendor;
use im_testkit::cases::{GateCall, GatedVendor};

fn config() -> ClientConfig {
    ClientConfig {
        heartbeat_interval: Duration::from_secs(30),
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
                jitter: Jitter::None,
            },
            deadline: None,
        },
        ..ClientConfig::default()
    }
}

struct World {
    vendor: MemoryVendor,
    bob: Credentials,
    conv: ConversationId,
}

fn world() -> World {
    let vendor = MemoryVendor::new(MemoryVendorConfig::default());
    let alice = vendor.register_user(&UserId::new("alice"));
    let bob = vendor.register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&alice.user, &bob.user);
    World { vendor, bob, conv }
}

/// A client for Bob on the plain vendor, subscribed and logged in.
async fn online(w: &World) -> (ImClient, Subscription) {
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
        .config(config())
        .build();
    let sub = client.subscribe();
    client.login().await.unwrap();
    (client, sub)
}

fn bodies(w: &World) -> Vec<String> {
    w.vendor
        .stored_messages(&w.conv)
        .into_iter()
        .map(|m| match m.content {
            Content::Text(t) => t,
            other => format!("{other:?}"),
        })
        .collect()
}

/// Waits (in paused time, overall deadline) until `id` reaches a status matching `done`.
async fn status_of(
    sub: &mut Subscription,
    id: &ClientMsgId,
    done: impl Fn(&SendStatus) -> bool,
) -> SendStatus {
    let ev = im_testkit::wait::wait_for(
        sub,
        Duration::from_secs(3600),
        &format!("{id} reaching the status"),
        |e| {
            matches!(e, ClientEvent::SendStatus { client_id, status: Some(s), .. }
                if client_id == id && done(s))
        },
    )
    .await;
    match ev {
        ClientEvent::SendStatus {
            status: Some(s), ..
        } => s,
        other => unreachable!("wait_for returned a non-matching {other:?}"),
    }
}

fn sent(s: &SendStatus) -> bool {
    matches!(s, SendStatus::Sent { .. })
}

#[tokio::test(start_paused = true)]
async fn a_failed_send_blocks_its_conversation_until_resent() {
    let w = world();
    let (client, mut sub) = online(&w).await;
    // A unknown server error three times: A exhausts its attempts (transient, recoverable).
    w.vendor.fail_next(
        VendorOp::Send,
        3,
        ServiceError::Server {
            code: 599,
            message: "?".into(),
        },
    );
    let a = client
        .send(w.conv.clone(), Content::text("A"))
        .await
        .unwrap();
    let b = client
        .send(w.conv.clone(), Content::text("B"))
        .await
        .unwrap();
    let c = client
        .send(w.conv.clone(), Content::text("C"))
        .await
        .unwrap();
    let failed = status_of(&mut sub, &a, |s| matches!(s, SendStatus::Failed { .. })).await;
    assert!(
        matches!(
            failed,
            SendStatus::Failed {
                recoverable: true,
                ..
            }
        ),
        "unknown errors are transient: {failed:?}"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(bodies(&w).is_empty(), "nothing overtook A");
    let queue = client.outbox().await.unwrap();
    assert_eq!(
        queue
            .iter()
            .map(|i| i.message.client_id.clone())
            .collect::<Vec<_>>(),
        [a.clone(), b.clone(), c.clone()]
    );
    // The failed head records its delivery round (cargo-mutants: `attempts += 1` →
    // `*= 1` survived); the ones behind it were never tried.
    assert_eq!(
        queue.iter().map(|i| i.attempts).collect::<Vec<_>>(),
        [1, 0, 0],
        "attempts per queued item"
    );

    client.resend(&a).await.unwrap();
    status_of(&mut sub, &c, sent).await;
    assert_eq!(bodies(&w), ["A", "B", "C"]);
    assert!(client.outbox().await.unwrap().is_empty());
    client.logout().await;
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_failed_send_releases_the_rest() {
    let w = world();
    let (client, mut sub) = online(&w).await;
    w.vendor.fail_next(
        VendorOp::Send,
        1,
        ServiceError::InvalidRequest("rejected".into()),
    );
    let a = client
        .send(w.conv.clone(), Content::text("A"))
        .await
        .unwrap();
    let b = client
        .send(w.conv.clone(), Content::text("B"))
        .await
        .unwrap();
    let failed = status_of(&mut sub, &a, |s| matches!(s, SendStatus::Failed { .. })).await;
    assert!(
        matches!(
            failed,
            SendStatus::Failed {
                recoverable: false,
                ..
            }
        ),
        "permanent errors park the item"
    );
    client.cancel(&a).await.unwrap();
    status_of(&mut sub, &b, sent).await;
    assert_eq!(bodies(&w), ["B"]);
    client.logout().await;
}

#[tokio::test(start_paused = true)]
async fn a_resend_after_a_lost_ack_counts_as_sent_and_stores_once() {
    let w = world();
    let faulty = Arc::new(FaultyVendor::new(Arc::new(w.vendor.client()), 9));
    faulty.lose_send_acks(1);
    let client = ImClient::builder(faulty, w.bob.clone())
        .config(config())
        .build();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    let id = client
        .send(w.conv.clone(), Content::text("once"))
        .await
        .unwrap();
    status_of(&mut sub, &id, sent).await;
    assert_eq!(bodies(&w), ["once"]);
    client.logout().await;
}

#[tokio::test(start_paused = true)]
async fn the_local_echo_is_reconciled_not_repeated() {
    let w = world();
    let alice = w.vendor.client();
    alice
        .login(&w.vendor.register_user(&UserId::new("alice")))
        .await
        .unwrap();
    let (client, mut sub) = online(&w).await;
    let id = client
        .send(w.conv.clone(), Content::text("mine"))
        .await
        .unwrap();
    let reply =
        im_service::OutgoingMessage::new(w.conv.clone(), Content::text("theirs"), w.vendor.now());
    // Alice answers after Bob's message is stored.
    let mut statuses = Vec::new();
    // One deadline for the whole wait, not one per event (heartbeats keep coming).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let ev = std::sync::Arc::unwrap_or_clone(
            tokio::time::timeout_at(deadline, sub.recv())
                .await
                .expect("the awaited event never came (overall deadline)")
                .unwrap(),
        );
        match ev {
            ClientEvent::SendStatus {
                client_id, status, ..
            } if client_id == id => {
                let done = matches!(status, Some(SendStatus::Sent { .. }));
                statuses.push(status);
                if done {
                    alice.send(&reply).await.unwrap();
                }
            }
            ClientEvent::Message(r) => {
                assert_ne!(
                    r.message.client_id, id,
                    "our own message is not delivered again"
                );
                assert_eq!(r.message.content, Content::text("theirs"));
                assert_eq!(r.message.seq, Some(im_service::Seq(2)));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(statuses.len(), 2, "Sending, then Sent: {statuses:?}");
    assert!(matches!(statuses[0], Some(SendStatus::Sending)));
    client.logout().await;
}

#[tokio::test(start_paused = true)]
async fn queued_sends_wait_for_authentication() {
    let w = world();
    w.vendor
        .fail_next(VendorOp::Login, 2, ServiceError::Unavailable("down".into()));
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
        .config(config())
        .build();
    let mut sub = client.subscribe();
    let id = client
        .send(w.conv.clone(), Content::text("early"))
        .await
        .unwrap();
    assert!(bodies(&w).is_empty());
    client.login().await.unwrap();
    assert_eq!(client.state(), ConnectionState::Online);
    status_of(&mut sub, &id, sent).await;
    assert_eq!(bodies(&w), ["early"]);
    client.logout().await;
}

/// Failure class 7: while the login is still pending (held at a gate), the queued send is
/// not attempted; the vendor sees `send` only after the login was accepted.
#[tokio::test(start_paused = true)]
async fn nothing_is_sent_while_the_login_is_pending() {
    let w = world();
    let gated = Arc::new(GatedVendor::new(Arc::new(w.vendor.client())));
    gated.close();
    let client = ImClient::builder(gated.clone(), w.bob.clone())
        .config(config())
        .build();
    let mut sub = client.subscribe();
    let id = client
        .send(w.conv.clone(), Content::text("early"))
        .await
        .unwrap();
    let login = client.login();
    tokio::pin!(login);
    tokio::select! {
        r = &mut login => panic!("the login passed a closed gate: {r:?}"),
        r = gated.wait_until(Duration::from_secs(3600), |c| c.contains(&GateCall::LoginStarted)) => {
            r.unwrap_or_else(|calls| panic!("the login never reached the vendor: {calls:?}"));
        }
    }
    // The login hangs at the vendor for a minute: the client is connecting, not
    // authenticated. A sender that does not wait for authentication sends now.
    tokio::select! {
        r = &mut login => panic!("the login passed a closed gate: {r:?}"),
        () = tokio::time::sleep(Duration::from_secs(60)) => {}
    }
    assert_eq!(
        gated.calls(),
        [GateCall::LoginStarted],
        "nothing is attempted before authentication completes"
    );
    assert!(bodies(&w).is_empty(), "nothing reached the vendor");
    gated.open();
    tokio::time::timeout(Duration::from_secs(3600), login)
        .await
        .expect("the login answers once the gate opens")
        .unwrap();
    status_of(&mut sub, &id, sent).await;
    let calls = gated.calls();
    let logged_in = calls.iter().position(|c| *c == GateCall::LoggedIn);
    let first_send = calls.iter().position(|c| *c == GateCall::Send);
    assert!(
        logged_in.is_some() && first_send > logged_in,
        "the first send comes after the accepted login: {calls:?}"
    );
    assert_eq!(bodies(&w), ["early"]);
    client.logout().await;
}

#[tokio::test(start_paused = true)]
async fn oversized_content_is_refused_and_nothing_is_queued() {
    let w = world();
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
        .config(config())
        .build();
    let max = w.vendor.capabilities().max_message_bytes;
    let err = client
        .send(w.conv.clone(), Content::text("x".repeat(max + 1)))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ArchError::Permanent {
            error: ServiceError::MessageTooLarge { .. },
            ..
        }
    ));
    assert!(client.outbox().await.unwrap().is_empty());
}

/// Failure classes 4 and 9: messages queued while the vendor is down survive a killed
/// process on the sled store and go out exactly once after the client is rebuilt.
#[tokio::test(start_paused = true)]
async fn queued_sends_survive_a_restart_and_go_out_once() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = Arc::new(im_arch::SledStore::open(dir.path()).unwrap());
        let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
            .config(config())
            .store(store.clone())
            .build();
        // The vendor is down: the client never gets online, the messages wait.
        let mut ids = Vec::new();
        for body in ["one", "two", "three"] {
            ids.push(
                client
                    .send(w.conv.clone(), Content::text(body))
                    .await
                    .unwrap(),
            );
        }
        // No flush here: `send` returning is the promise that the item is durable. (A real
        // SIGKILL is the crash harness's job: crates/im-testkit/tests/crash.rs.)
        drop(client); // stopped: no logout, no goodbye
        ids
    };
    assert!(bodies(&w).is_empty());
    let store = Arc::new(im_arch::SledStore::open(dir.path()).unwrap());
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
        .config(config())
        .store(store)
        .build();
    let queued: Vec<ClientMsgId> = client
        .outbox()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.message.client_id)
        .collect();
    assert_eq!(queued, ids, "the queue came back in order");
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    status_of(&mut sub, &ids[2], sent).await;
    assert_eq!(
        bodies(&w),
        ["one", "two", "three"],
        "sent exactly once, in order"
    );
    client.logout().await;
}

#[tokio::test(start_paused = true)]
async fn the_conversation_list_follows_received_sent_and_read_messages() {
    let w = world();
    let alice = w.vendor.client();
    alice
        .login(&w.vendor.register_user(&UserId::new("alice")))
        .await
        .unwrap();
    for body in ["hi", "are you there?"] {
        let m =
            im_service::OutgoingMessage::new(w.conv.clone(), Content::text(body), w.vendor.now());
        alice.send(&m).await.unwrap();
    }
    let (client, mut sub) = online(&w).await;
    let rows = client.conversations(0, 10);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].unread, 2);
    assert_eq!(client.total_unread(), 2);
    client.mark_read(&w.conv).await.unwrap();
    assert_eq!(client.total_unread(), 0);
    let id = client
        .send(w.conv.clone(), Content::text("yes"))
        .await
        .unwrap();
    status_of(&mut sub, &id, sent).await;
    // The row moves to the sent message once it is in the sequence.
    let ev = im_testkit::wait::wait_for(
        &mut sub,
        Duration::from_secs(3600),
        "the row moving to the sent message",
        |e| {
            matches!(e, ClientEvent::ConversationChanged(row)
                if row.last_message.as_ref().is_some_and(|m| m.client_id == id))
        },
    )
    .await;
    if let ClientEvent::ConversationChanged(row) = ev {
        assert_eq!(row.unread, 0);
    }
    client.logout().await;
}

/// A store whose outbox removals fail while `broken` is set (a full disk).
struct FullDisk {
    inner: im_arch::MemoryStore,
    broken: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl im_arch::Store for FullDisk {
    async fn put_messages(&self, m: &[im_service::Message]) -> Result<Vec<bool>, ArchError> {
        self.inner.put_messages(m).await
    }
    async fn message(
        &self,
        id: &im_service::ServerMsgId,
    ) -> Result<Option<im_service::Message>, ArchError> {
        self.inner.message(id).await
    }
    async fn latest(
        &self,
        c: &ConversationId,
        limit: usize,
    ) -> Result<Vec<im_service::Message>, ArchError> {
        self.inner.latest(c, limit).await
    }
    async fn cursor(&self, c: &ConversationId) -> Result<Option<im_arch::SyncCursor>, ArchError> {
        self.inner.cursor(c).await
    }
    async fn flush(&self) -> Result<(), ArchError> {
        self.inner.flush().await
    }
    async fn commit_delivery(
        &self,
        c: &[(ConversationId, im_arch::SyncCursor)],
        j: &[(im_service::ServerMsgId, im_service::Origin)],
    ) -> Result<u64, ArchError> {
        self.inner.commit_delivery(c, j).await
    }
    async fn journal_head(&self) -> Result<u64, ArchError> {
        self.inner.journal_head().await
    }
    async fn sync_mark(&self) -> Result<Option<im_service::Timestamp>, ArchError> {
        self.inner.sync_mark().await
    }
    async fn set_sync_mark(&self, mark: im_service::Timestamp) -> Result<(), ArchError> {
        self.inner.set_sync_mark(mark).await
    }
    async fn journal_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<im_arch::DurableEvent>, ArchError> {
        self.inner.journal_after(after, limit).await
    }
    async fn subscriptions(&self) -> Result<Vec<(String, u64)>, ArchError> {
        self.inner.subscriptions().await
    }
    async fn set_subscription(&self, name: &str, position: u64) -> Result<(), ArchError> {
        self.inner.set_subscription(name, position).await
    }
    async fn remove_subscription(&self, name: &str) -> Result<(), ArchError> {
        self.inner.remove_subscription(name).await
    }
    async fn cursors(&self) -> Result<Vec<(ConversationId, im_arch::SyncCursor)>, ArchError> {
        self.inner.cursors().await
    }
    async fn begin_delivery(&self, ids: &[im_service::ServerMsgId]) -> Result<(), ArchError> {
        self.inner.begin_delivery(ids).await
    }
    async fn in_flight(&self) -> Result<Vec<im_service::ServerMsgId>, ArchError> {
        self.inner.in_flight().await
    }
    async fn page_before(
        &self,
        c: &ConversationId,
        before: Option<&im_service::Message>,
        limit: usize,
    ) -> Result<Vec<im_service::Message>, ArchError> {
        self.inner.page_before(c, before, limit).await
    }
    async fn page_after(
        &self,
        c: &ConversationId,
        after: &im_service::Message,
        limit: usize,
    ) -> Result<Vec<im_service::Message>, ArchError> {
        self.inner.page_after(c, after, limit).await
    }
    async fn put_outbox(&self, item: &im_arch::OutboxItem) -> Result<(), ArchError> {
        self.inner.put_outbox(item).await
    }
    async fn remove_outbox(&self, id: &ClientMsgId) -> Result<(), ArchError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ArchError::Store("no space left on device".into()));
        }
        self.inner.remove_outbox(id).await
    }
    async fn outbox(&self) -> Result<Vec<im_arch::OutboxItem>, ArchError> {
        self.inner.outbox().await
    }
    async fn put_conversation_state(
        &self,
        state: &im_arch::ConversationState,
    ) -> Result<(), ArchError> {
        self.inner.put_conversation_state(state).await
    }
    async fn conversation_states(&self) -> Result<Vec<im_arch::ConversationState>, ArchError> {
        self.inner.conversation_states().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_store_write_is_reported_and_the_message_stays_queued() {
    let w = world();
    let store = Arc::new(FullDisk {
        inner: im_arch::MemoryStore::new(),
        broken: true.into(),
    });
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
        .config(config())
        .store(store.clone())
        .build();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    let id = client
        .send(w.conv.clone(), Content::text("keep me"))
        .await
        .unwrap();
    let ev = im_testkit::wait::wait_for(
        &mut sub,
        Duration::from_secs(3600),
        "the failed store write",
        |e| matches!(e, ClientEvent::StoreFailed { .. }),
    )
    .await;
    if let ClientEvent::StoreFailed { op, error } = ev {
        assert_eq!(op, "remove_outbox");
        assert!(matches!(error, ArchError::Store(_)));
    }
    let queued = client.outbox().await.unwrap();
    assert_eq!(queued.len(), 1, "the message stays in the outbox");
    assert_eq!(queued[0].message.client_id, id);
    store
        .broken
        .store(false, std::sync::atomic::Ordering::SeqCst);
    status_of(&mut sub, &id, sent).await;
    assert!(client.outbox().await.unwrap().is_empty());
    assert_eq!(
        bodies(&w),
        ["keep me"],
        "the retry was recognised as a duplicate: stored once"
    );
    client.logout().await;
}

/// The conversation list survives a restart on sled: pins, drafts and unread counts.
#[tokio::test(start_paused = true)]
async fn the_conversation_list_survives_a_restart() {
    let w = world();
    let alice = w.vendor.client();
    alice
        .login(&w.vendor.register_user(&UserId::new("alice")))
        .await
        .unwrap();
    let say = |body: &str| {
        im_service::OutgoingMessage::new(w.conv.clone(), Content::text(body), w.vendor.now())
    };
    alice.send(&say("one")).await.unwrap();
    alice.send(&say("two")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(im_arch::SledStore::open(dir.path()).unwrap());
        let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
            .config(config())
            .store(store.clone())
            .build();
        client.login().await.unwrap();
        client.mark_read(&w.conv).await.unwrap();
        client.set_pinned(&w.conv, true).await;
        client
            .set_draft(&w.conv, Some("half a thought".into()))
            .await;
        client.logout().await;
    }
    alice.send(&say("three")).await.unwrap();
    let store = Arc::new(im_arch::SledStore::open(dir.path()).unwrap());
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
        .config(config())
        .store(store)
        .build();
    client.login().await.unwrap();
    let rows = client.conversations(0, 10);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].pinned);
    assert_eq!(
        rows[0].draft.as_ref().map(|(d, _)| d.as_str()),
        Some("half a thought")
    );
    assert_eq!(
        rows[0].unread, 1,
        "only the message after the saved read position"
    );
    assert_eq!(client.total_unread(), 1);
    client.logout().await;
}

/// A send that finds the session gone (the connection dropped under it before the state
/// said so) is not a refusal: the message stays queued and goes out after the reconnect,
/// once, never reported as failed. (Found by the business demo: questions written during a
/// vendor outage were parked as permanently failed.)
#[tokio::test(start_paused = true)]
async fn a_send_interrupted_by_a_connection_loss_stays_queued_and_goes_out_once() {
    let w = world();
    let (client, mut sub) = online(&w).await;
    for error in [
        ServiceError::NotLoggedIn,
        ServiceError::ConnectionLost("reset".into()),
    ] {
        w.vendor.fail_next(VendorOp::Send, 1, error.clone());
        let id = client
            .send(w.conv.clone(), Content::text(format!("after {error:?}")))
            .await
            .unwrap();
        let status = status_of(&mut sub, &id, |s| !matches!(s, SendStatus::Sending)).await;
        assert!(sent(&status), "{error:?}: {status:?}");
    }
    // The connection really drops too: the queued message waits for the reconnect.
    w.vendor
        .fail_next(VendorOp::Send, 1, ServiceError::NotLoggedIn);
    w.vendor.disconnect(&w.bob.user);
    let id = client
        .send(w.conv.clone(), Content::text("during the drop"))
        .await
        .unwrap();
    let status = status_of(&mut sub, &id, |s| !matches!(s, SendStatus::Sending)).await;
    assert!(sent(&status), "{status:?}");
    assert_eq!(
        bodies(&w),
        [
            "after NotLoggedIn",
            "after ConnectionLost(\"reset\")",
            "during the drop"
        ],
        "each stored once, in order"
    );
    client.logout().await;
}

/// A message of exactly the vendor's maximum size is accepted (only larger ones are
/// refused). (cargo-mutants: `>` → `>=` survived.)
#[tokio::test(start_paused = true)]
async fn content_of_exactly_the_maximum_size_is_queued() {
    let w = world();
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
        .config(config())
        .build();
    let max = w.vendor.capabilities().max_message_bytes;
    client
        .send(w.conv.clone(), Content::text("x".repeat(max)))
        .await
        .expect("exactly the maximum is allowed");
    assert_eq!(client.outbox().await.unwrap().len(), 1);
}

/// Sends made after a restart queue behind the ones already waiting in the store: the
/// queue position continues after the last stored item (it never reuses one, which would
/// overwrite a waiting message). (cargo-mutants: `position + 1` → `- 1` / `* 1` survived.)
#[tokio::test(start_paused = true)]
async fn sends_after_a_restart_queue_behind_the_waiting_ones() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let client_on = |store: Arc<im_arch::SledStore>| {
        ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
            .config(config())
            .store(store)
            .build()
    };
    {
        let client = client_on(Arc::new(im_arch::SledStore::open(dir.path()).unwrap()));
        for body in ["one", "two"] {
            client
                .send(w.conv.clone(), Content::text(body))
                .await
                .unwrap();
        }
    }
    let client = client_on(Arc::new(im_arch::SledStore::open(dir.path()).unwrap()));
    let three = client
        .send(w.conv.clone(), Content::text("three"))
        .await
        .unwrap();
    let outbox = client.outbox().await.unwrap();
    let queued: Vec<(u64, String)> = outbox
        .iter()
        .map(|i| (i.position, format!("{:?}", i.message.content)))
        .collect();
    assert_eq!(queued.len(), 3, "nothing overwritten: {queued:?}");
    assert!(
        queued.windows(2).all(|p| p[0].0 < p[1].0),
        "each send has its own, later position: {queued:?}"
    );
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    status_of(&mut sub, &three, sent).await;
    assert_eq!(bodies(&w), ["one", "two", "three"], "in queue order, once");
    client.logout().await;
}

/// Pin, mute and draft are durable when the call returns: a crash right after (a store
/// that keeps none of its unflushed writes, as the `Store` contract allows) keeps them.
/// (cargo-mutants: `flush_state` → `()` and `set_muted` → `()` survived.)
#[tokio::test(start_paused = true)]
async fn conversation_settings_are_durable_when_the_call_returns() {
    use im_testkit::sim::CrashStore;
    let w = world();
    let store = Arc::new(CrashStore::new());
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
        .config(config())
        .store(store.clone())
        .build();
    client.login().await.unwrap();
    client.set_pinned(&w.conv, true).await;
    client.set_muted(&w.conv, true).await;
    client.set_draft(&w.conv, Some("later".into())).await;
    // The crash: the old instance is dead from here on; nothing was flushed for the test.
    let after = Arc::new(store.crash(0, false).await.unwrap());
    drop(client);
    let client = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone())
        .config(config())
        .store(after)
        .build();
    client.login().await.unwrap();
    let row = client
        .conversations(0, 10)
        .into_iter()
        .next()
        .expect("the row");
    assert!(row.pinned, "pin survives: {row:?}");
    assert!(row.muted, "mute survives: {row:?}");
    assert_eq!(
        row.draft.as_ref().map(|(d, _)| d.as_str()),
        Some("later"),
        "draft survives"
    );
    client.logout().await;
}

/// A vendor whose sends to one conversation wait until released; everything else passes
/// through.
struct HeldSends {
    inner: Arc<dyn Vendor>,
    /// The inner vendor's, or those without `OrderedSends` (a vendor that cannot promise
    /// the order of a conversation's sends).
    caps: im_service::Capabilities,
    held: ConversationId,
    open: tokio::sync::watch::Receiver<bool>,
    /// Sends (plain or pipelined) that reached the hold.
    entered: Arc<std::sync::atomic::AtomicUsize>,
}

impl HeldSends {
    fn new(
        inner: Arc<dyn Vendor>,
        held: ConversationId,
        open: tokio::sync::watch::Receiver<bool>,
        ordered: bool,
    ) -> Self {
        let mut caps = inner.capabilities().clone();
        if !ordered {
            caps = caps.without(im_service::Capability::OrderedSends);
        }
        Self {
            inner,
            caps,
            held,
            open,
            entered: Arc::default(),
        }
    }

    async fn hold(&self, m: &im_service::OutgoingMessage) {
        if m.conversation == self.held {
            self.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut open = self.open.clone();
            let _ = open.wait_for(|o| *o).await;
        }
    }
}

#[async_trait::async_trait]
impl Vendor for HeldSends {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> &im_service::Capabilities {
        &self.caps
    }
    fn take_events(&self) -> Option<im_service::EventStream> {
        self.inner.take_events()
    }
    async fn login(&self, c: &Credentials) -> im_service::Result<im_service::Session> {
        self.inner.login(c).await
    }
    async fn logout(&self) -> im_service::Result<()> {
        self.inner.logout().await
    }
    async fn send(
        &self,
        m: &im_service::OutgoingMessage,
    ) -> im_service::Result<im_service::SendReceipt> {
        self.hold(m).await;
        self.inner.send(m).await
    }
    async fn send_after(
        &self,
        m: &im_service::OutgoingMessage,
        after: &im_service::ClientMsgId,
    ) -> im_service::Result<im_service::SendReceipt> {
        self.hold(m).await;
        self.inner.send_after(m, after).await
    }
    async fn pull_offline(&self, max: u32) -> im_service::Result<im_service::OfflineBatch> {
        self.inner.pull_offline(max).await
    }
    async fn ack_offline(&self, ack: &im_service::OfflineAck) -> im_service::Result<()> {
        self.inner.ack_offline(ack).await
    }
    async fn go_online(&self) -> im_service::Result<()> {
        self.inner.go_online().await
    }
    async fn pull_history(
        &self,
        q: &im_service::HistoryQuery,
    ) -> im_service::Result<im_service::HistoryPage> {
        self.inner.pull_history(q).await
    }
    async fn ping(&self) -> im_service::Result<Duration> {
        self.inner.ping().await
    }
    async fn mark_read(
        &self,
        c: &ConversationId,
        up_to: &im_service::ServerMsgId,
    ) -> im_service::Result<()> {
        self.inner.mark_read(c, up_to).await
    }
}

/// Issue 22: the heads of different conversations go out together. A send that hangs in
/// one conversation holds up only the items behind it in that conversation, never another
/// conversation's (before, the queue sent one item at a time for the whole client).
#[tokio::test(start_paused = true)]
async fn a_hanging_send_holds_up_only_its_own_conversation() {
    let w = world();
    let carol = w.vendor.register_user(&UserId::new("carol"));
    let to_carol = ConversationId::direct(&w.bob.user, &carol.user);
    let (release, open) = tokio::sync::watch::channel(false);
    let vendor = HeldSends::new(Arc::new(w.vendor.client()), w.conv.clone(), open, true);
    let client = ImClient::builder(Arc::new(vendor), w.bob.clone())
        .config(config())
        .build();
    let mut sub = client.subscribe();
    // Queued before login: the held conversation's item is first in the queue.
    let held = client
        .send(w.conv.clone(), Content::text("held"))
        .await
        .unwrap();
    let behind = client
        .send(w.conv.clone(), Content::text("behind"))
        .await
        .unwrap();
    let other = client
        .send(to_carol.clone(), Content::text("to carol"))
        .await
        .unwrap();
    client.login().await.unwrap();
    status_of(&mut sub, &other, sent).await;
    assert!(bodies(&w).is_empty(), "the held conversation waits");
    let queued: Vec<ClientMsgId> = client
        .outbox()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.message.client_id)
        .collect();
    assert_eq!(
        queued,
        [held.clone(), behind.clone()],
        "still queued, in order"
    );
    release.send_replace(true);
    status_of(&mut sub, &behind, sent).await;
    assert_eq!(bodies(&w), ["held", "behind"], "in queue order, once");
    client.logout().await;
}

/// Issue 22: where the vendor keeps a conversation's sends in order (`OrderedSends`), they
/// are in flight together, each naming the one before it; where it cannot, one at a time.
/// Either way they are stored once each, in queue order.
#[tokio::test(start_paused = true)]
async fn a_conversations_sends_are_pipelined_only_where_the_vendor_keeps_them_in_order() {
    for ordered in [true, false] {
        let w = world();
        let (release, open) = tokio::sync::watch::channel(false);
        let vendor = HeldSends::new(Arc::new(w.vendor.client()), w.conv.clone(), open, ordered);
        let entered = vendor.entered.clone();
        let client = ImClient::builder(Arc::new(vendor), w.bob.clone())
            .config(config())
            .build();
        let mut sub = client.subscribe();
        client.login().await.unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                client
                    .send(w.conv.clone(), Content::text(format!("m{i}")))
                    .await
                    .unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            entered.load(std::sync::atomic::Ordering::SeqCst),
            if ordered { 5 } else { 1 },
            "sends of one conversation in flight at once (vendor keeps order: {ordered})"
        );
        release.send_replace(true);
        status_of(&mut sub, &ids[4], sent).await;
        assert_eq!(
            bodies(&w),
            ["m0", "m1", "m2", "m3", "m4"],
            "stored once each, in queue order (vendor keeps order: {ordered})"
        );
        client.logout().await;
    }
}

/// Class 3 with a window: the head is refused while the sends behind it are already on
/// their way. The vendor refuses each of them by name (their predecessor is not stored),
/// they stay queued as `Sending` behind the failed head, never stored before it, and go
/// out in order once it is cancelled.
#[tokio::test(start_paused = true)]
async fn pipelined_sends_never_overtake_a_refused_head() {
    let w = world();
    let (release, open) = tokio::sync::watch::channel(false);
    let vendor = HeldSends::new(Arc::new(w.vendor.client()), w.conv.clone(), open, true);
    let entered = vendor.entered.clone();
    let client = ImClient::builder(Arc::new(vendor), w.bob.clone())
        .config(config())
        .build();
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    w.vendor.fail_next(
        VendorOp::Send,
        1,
        ServiceError::InvalidRequest("rejected".into()),
    );
    let mut ids = Vec::new();
    for body in ["A", "B", "C"] {
        ids.push(
            client
                .send(w.conv.clone(), Content::text(body))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        entered.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "all three on their way before the head's answer"
    );
    release.send_replace(true);
    status_of(&mut sub, &ids[0], |s| {
        matches!(s, SendStatus::Failed { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(bodies(&w).is_empty(), "nothing overtook the refused head");
    let queue = client.outbox().await.unwrap();
    assert_eq!(
        queue
            .iter()
            .map(|i| (i.message.client_id.clone(), i.status == SendStatus::Sending))
            .collect::<Vec<_>>(),
        [
            (ids[0].clone(), false),
            (ids[1].clone(), true),
            (ids[2].clone(), true)
        ],
        "the head failed, the rest still queued behind it"
    );
    client.cancel(&ids[0]).await.unwrap();
    status_of(&mut sub, &ids[2], sent).await;
    assert_eq!(bodies(&w), ["B", "C"], "the rest in order, once");
    client.logout().await;
}
