//! The Matrix adapter against a real Synapse (`tests/synapse/synapse.sh`), including the
//! vendor contract suite every adapter runs. Skipped, with a message, when no Synapse
//! answers at `IM_SYNAPSE_URL` (default http://127.0.0.1:8008); `.ci/run` starts one and
//! sets `IM_REQUIRE_SYNAPSE`, which turns a skip into a failure. Users get a unique suffix
//! per test, so tests share the server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use im_service::matrix::{MatrixConfig, MatrixVendor};
use im_service::{
    Content, ConversationId, Credentials, HistoryQuery, OutgoingMessage, ServiceError, Timestamp,
    Vendor, VendorEvent,
};
use im_testkit::contract::next_event;
use im_testkit::harness::{MATRIX_SERVER_NAME, register_matrix_user, synapse_or_skip, synapse_url};

/// The vendor contract suite on Matrix: the same table as every adapter (and the case
/// library's `SVC-…` cases); what Synapse cannot run is skipped as not applicable.
mod contract {
    im_testkit::vendor_contract_tests!(im_testkit::cases::Target::Matrix);
}

/// Registers `name` (made unique) and returns its credentials.
async fn user(name: &str) -> Credentials {
    let user = format!("{name}-{:08x}", rand::random::<u32>());
    let password = format!("pw-{user}");
    register_matrix_user(&synapse_url(), &user, &password)
        .await
        .unwrap();
    Credentials::new(user, password)
}

fn vendor() -> MatrixVendor {
    MatrixVendor::new(MatrixConfig::new(synapse_url(), MATRIX_SERVER_NAME))
}

fn text(conversation: &ConversationId, body: &str) -> OutgoingMessage {
    OutgoingMessage::new(
        conversation.clone(),
        Content::text(body),
        Timestamp::from_millis(0),
    )
}

/// Idempotency survives a new login of the same device: the transaction id is the client
/// id, so a resend from a restarted handle (same device) returns the first event.
#[tokio::test]
async fn a_resend_after_a_restart_returns_the_first_event() {
    if !synapse_or_skip() {
        return;
    }
    let v = vendor();
    let (alice, bob) = (user("alice").await, user("bob").await);
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let msg = text(&conv, "once");
    let a = v.client();
    a.login(&alice).await.unwrap();
    let first = a.send(&msg).await.unwrap();
    a.logout().await.unwrap();
    let restarted = v.client();
    restarted.login(&alice).await.unwrap();
    let again = restarted.send(&msg).await.unwrap();
    assert_eq!(
        again.server_id, first.server_id,
        "the same device and transaction id give the first event"
    );
    let page = restarted
        .pull_history(&HistoryQuery::latest(conv, 10))
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1, "stored once: {:?}", page.messages);
}

/// Both sides create the direct room at once: each sends into its own room, and both
/// messages still land in the one conversation, for both sides.
#[tokio::test]
async fn a_direct_room_created_on_both_sides_at_once_is_one_conversation() {
    if !synapse_or_skip() {
        return;
    }
    let v = vendor();
    let (alice, bob) = (user("alice").await, user("bob").await);
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let (a, b) = (v.client(), v.client());
    a.login(&alice).await.unwrap();
    b.login(&bob).await.unwrap();
    let (ma, mb) = (text(&conv, "from a"), text(&conv, "from b"));
    let (ra, rb) = tokio::join!(a.send(&ma), b.send(&mb));
    ra.unwrap();
    rb.unwrap();
    for (c, other) in [(&a, "from b"), (&b, "from a")] {
        let batch = c.pull_offline(10).await.unwrap();
        let bodies: Vec<_> = batch.messages.iter().map(|m| m.content.clone()).collect();
        assert_eq!(bodies, [Content::text(other)]);
        assert!(batch.messages.iter().all(|m| m.conversation == conv));
    }
}

/// A dead homeserver is a typed, retryable error, never a hang.
#[tokio::test]
async fn an_unreachable_homeserver_is_unavailable() {
    let mut config = MatrixConfig::new("http://127.0.0.1:9", MATRIX_SERVER_NAME);
    config.request_timeout = Duration::from_secs(2);
    let c = MatrixVendor::new(config).client();
    let err = c.login(&Credentials::new("a", "b")).await.unwrap_err();
    assert!(
        matches!(err, ServiceError::Unavailable(_)),
        "unexpected {err:?}"
    );
    assert!(err.is_retryable());
}

/// Read receipts come back to the sender as events.
#[tokio::test]
async fn a_read_receipt_reaches_the_sender() {
    if !synapse_or_skip() {
        return;
    }
    let v = vendor();
    let (alice, bob) = (user("alice").await, user("bob").await);
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let (a, b) = (v.client(), v.client());
    let mut events = a.take_events().unwrap();
    a.login(&alice).await.unwrap();
    a.pull_offline(10).await.unwrap();
    a.go_online().await.unwrap();
    let sent = a.send(&text(&conv, "read me")).await.unwrap();
    b.login(&bob).await.unwrap();
    let batch = b.pull_offline(10).await.unwrap();
    assert_eq!(batch.messages.len(), 1);
    b.mark_read(&conv, &sent.server_id).await.unwrap();
    loop {
        match next_event(&mut events).await {
            VendorEvent::ReadReceipt(r) => {
                assert_eq!(r.reader, bob.user);
                assert_eq!(r.up_to, sent.server_id);
                assert_eq!(r.up_to_time, sent.server_time);
                break;
            }
            VendorEvent::MessagePushed(_) => continue,
            other => panic!("expected a ReadReceipt, got {other:?}"),
        }
    }
}

/// The offline position moves only once every batch is acknowledged: a batch pulled and
/// not acknowledged (the app died before storing it) comes again after a restart, and an
/// acknowledged pass does not.
#[tokio::test]
async fn an_unacknowledged_offline_batch_comes_again_after_a_restart() {
    if !synapse_or_skip() {
        return;
    }
    let v = vendor();
    let (alice, bob) = (user("alice").await, user("bob").await);
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = v.client();
    a.login(&alice).await.unwrap();
    for body in ["one", "two"] {
        a.send(&text(&conv, body)).await.unwrap();
    }
    let b = v.client();
    b.login(&bob).await.unwrap();
    assert_eq!(b.pull_offline(10).await.unwrap().messages.len(), 2);
    drop(b); // crashed before the ack
    let again = v.client();
    again.login(&bob).await.unwrap();
    let batch = again.pull_offline(10).await.unwrap();
    assert_eq!(
        batch.messages.len(),
        2,
        "an unacknowledged batch is offline still"
    );
    again.ack_offline(&batch.ack.unwrap()).await.unwrap();
    again.logout().await.unwrap();
    let last = v.client();
    last.login(&bob).await.unwrap();
    assert!(
        last.pull_offline(10).await.unwrap().messages.is_empty(),
        "an acknowledged pass is not offline any more"
    );
}

/// Sets `who`'s `m.direct` account data to `content` from a throwaway session (its own
/// device, so no session of the adapter's shared device ends).
async fn set_m_direct(who: &Credentials, content: serde_json::Value) {
    let http = reqwest::Client::new();
    let url = synapse_url();
    // The workspace's reqwest has no `json` feature: bodies are encoded by hand.
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let login = http
        .post(format!("{url}/_matrix/client/v3/login"))
        .body(json(serde_json::json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": who.user.as_str() },
            "password": who.token.expose(),
        })))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let login: serde_json::Value = serde_json::from_slice(&login).unwrap();
    let token = login["access_token"].as_str().unwrap();
    let mxid = format!("@{}:{MATRIX_SERVER_NAME}", who.user);
    let put = http
        .put(format!(
            "{url}/_matrix/client/v3/user/{mxid}/account_data/m.direct"
        ))
        .bearer_auth(token)
        .body(json(content))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "m.direct set: {}", put.status());
    let _ = http
        .post(format!("{url}/_matrix/client/v3/logout"))
        .bearer_auth(token)
        .body("{}")
        .send()
        .await;
}

/// A direct room I joined but that is not (yet) in my `m.direct`, as when my other device
/// has joined the peer's invite and not written `m.direct` yet, is still the
/// conversation's room: a read there is not `NotMember` (LIFE-010 raced into that on CI).
#[tokio::test]
async fn a_joined_direct_room_missing_from_m_direct_is_still_the_conversation() {
    if !synapse_or_skip() {
        return;
    }
    let v = vendor();
    let (alice, bob) = (user("alice").await, user("bob").await);
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = v.client();
    a.login(&alice).await.unwrap();
    let sent = a.send(&text(&conv, "read me")).await.unwrap();
    // Bob's first handle joins the invite (and lists the room in m.direct).
    let first = v.client();
    first.login(&bob).await.unwrap();
    let batch = first.pull_offline(10).await.unwrap();
    assert_eq!(batch.messages.len(), 1, "{batch:?}");
    first.logout().await.unwrap();
    set_m_direct(&bob, serde_json::json!({})).await;
    let second = v.client();
    second.login(&bob).await.unwrap();
    assert_eq!(
        second.mark_read(&conv, &sent.server_id).await,
        Ok(()),
        "the joined room is found by its members"
    );
    second.logout().await.unwrap();
    a.logout().await.unwrap();
}
