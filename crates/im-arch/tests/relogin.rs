//! Logging the same `ImClient` in again — after a kick, a logout, token expiry and a refused
//! login — and the typed errors `login()` answers with, on the in-process vendor with tokio
//! time paused.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{World, world};

use im_arch::{ArchError, ClientConfig, ClientEvent, ConnectionState, ImClient, Subscription};
use im_service::{Content, Credentials, Token, Vendor};

/// Every wait of a test ends by this (paused) deadline at the latest, as a named failure.
const DEADLINE: Duration = Duration::from_secs(3600);

/// A client of Bob's (or whoever `creds` name) on the world's vendor, quick heartbeats.
fn client_of(w: &World, creds: Credentials) -> ImClient {
    ImClient::builder(Arc::new(w.vendor.client()), creds)
        .config(ClientConfig {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_millis(500),
            ..ClientConfig::default()
        })
        .build()
}

/// Waits (overall deadline) until an event matches; `what` names the failure.
async fn wait_for(sub: &mut Subscription, what: &str, pred: impl FnMut(&ClientEvent) -> bool) {
    im_testkit::wait::wait_for(sub, DEADLINE, what, pred).await;
}

async fn receives(w: &World, sub: &mut Subscription, body: &str) {
    w.say(body).await;
    let want = Content::text(body);
    wait_for(
        sub,
        &format!("message {body:?}"),
        |e| matches!(e, ClientEvent::Message(r) if r.message.content == want),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_kicked_client_logs_in_again_and_receives() {
    let w = world().await;
    let client = client_of(&w, w.bob.clone());
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    receives(&w, &mut sub, "before the kick").await;

    let other_device = w.vendor.client();
    other_device.login(&w.bob).await.unwrap();
    wait_for(&mut sub, "the kick", |e| {
        matches!(e, ClientEvent::State(ConnectionState::Kicked(_)))
    })
    .await;
    // While kicked, a waiting login() would be told why (nothing reconnects by itself).
    assert!(!client.state().is_online());

    // "Log in here again": this device takes over.
    tokio::time::timeout(DEADLINE, client.login())
        .await
        .expect("login again")
        .expect("the same client logs in again after a kick");
    assert!(client.state().is_online());
    receives(&w, &mut sub, "after the kick").await;
    client.logout().await;
}

#[tokio::test(start_paused = true)]
async fn a_logged_out_client_logs_in_again_and_receives() {
    let w = world().await;
    let client = client_of(&w, w.bob.clone());
    let mut sub = client.subscribe();
    for round in 0..3 {
        tokio::time::timeout(DEADLINE, client.login())
            .await
            .expect("login")
            .unwrap_or_else(|e| panic!("login round {round}: {e}"));
        receives(&w, &mut sub, &format!("round {round}")).await;
        client.logout().await;
        assert_eq!(client.state(), ConnectionState::LoggedOut);
    }
    // What arrived while logged out comes as offline messages on the next login.
    w.say("while away").await;
    client.login().await.unwrap();
    wait_for(&mut sub, "the offline message", |e| {
        matches!(e, ClientEvent::Message(r) if r.message.content == Content::text("while away"))
    })
    .await;
    client.logout().await;
}

#[tokio::test(start_paused = true)]
async fn after_token_expiry_login_answers_token_expired_and_a_new_token_logs_in() {
    let w = world().await;
    let short = w
        .vendor
        .issue_token(&w.bob.user, Some(Duration::from_secs(600)))
        .unwrap();
    let client = client_of(
        &w,
        Credentials {
            user: w.bob.user.clone(),
            token: short,
        },
    );
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    w.clock.advance(Duration::from_secs(601));
    w.vendor.sweep();
    wait_for(&mut sub, "token expiry", |e| {
        matches!(e, ClientEvent::State(ConnectionState::TokenExpired))
    })
    .await;
    // The old token is dead: typed, not a string.
    let again = tokio::time::timeout(DEADLINE, client.login())
        .await
        .expect("login answers");
    assert!(
        matches!(again, Err(ArchError::TokenExpired)),
        "login with the expired token: {again:?}"
    );
    // The app renews the token and logs the same client in.
    let fresh = w
        .vendor
        .issue_token(&w.bob.user, Some(Duration::from_secs(3600)))
        .unwrap();
    client.set_token(fresh);
    tokio::time::timeout(DEADLINE, client.login())
        .await
        .expect("login")
        .expect("a refreshed token logs the same client in");
    receives(&w, &mut sub, "after the refresh").await;
    client.logout().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_login_is_typed_and_the_client_can_log_in_afterwards() {
    let w = world().await;
    let client = client_of(
        &w,
        Credentials {
            user: w.bob.user.clone(),
            token: Token::new("wrong"),
        },
    );
    let mut sub = client.subscribe();
    match tokio::time::timeout(DEADLINE, client.login())
        .await
        .expect("login answers")
    {
        Err(ArchError::AuthFailed(why)) => assert!(!why.is_empty()),
        other => panic!("a wrong token must be AuthFailed, got {other:?}"),
    }
    client.set_token(w.bob.token.clone());
    tokio::time::timeout(DEADLINE, client.login())
        .await
        .expect("login")
        .expect("the right token logs in after a refusal");
    receives(&w, &mut sub, "after the refusal").await;
    client.logout().await;
    // A logout is its own answer too.
    assert_eq!(client.state(), ConnectionState::LoggedOut);
}

/// A refused login followed at once by a login with the right token, many times, on a
/// multi-threaded runtime: the second `login()` must not find the refused supervisor still
/// on its way out and answer with its stale refusal (seen on Prosody as a flaky AUTH-002).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_right_after_a_refusal_never_gets_the_stale_refusal() {
    let w = world().await;
    for round in 0..200 {
        let client = client_of(
            &w,
            Credentials {
                user: w.bob.user.clone(),
                token: Token::new("wrong"),
            },
        );
        let refused = tokio::time::timeout(DEADLINE, client.login())
            .await
            .expect("login answers");
        assert!(
            matches!(refused, Err(ArchError::AuthFailed(_))),
            "round {round}: {refused:?}"
        );
        client.set_token(w.bob.token.clone());
        let again = tokio::time::timeout(DEADLINE, client.login())
            .await
            .expect("login answers");
        assert!(
            again.is_ok(),
            "round {round}: the right token got the previous refusal: {again:?}"
        );
        client.logout().await;
    }
}

/// `login()` and `logout()` are cancel-safe: an app that puts a timeout around them (or
/// drops the future) at any point loses nothing, and the next call finishes the job.
/// (Found by `cargo xtask sim`: a login dropped while it took back a kicked supervisor's
/// event stream lost the stream, and every later login answered `Stopped`.)
#[tokio::test(start_paused = true)]
async fn login_and_logout_survive_being_cancelled_at_any_point() {
    let w = world().await;
    let client = client_of(&w, w.bob.clone());
    let mut sub = client.subscribe();
    client.login().await.unwrap();
    let other_device = w.vendor.client();
    for round in 0..20u64 {
        // Kicked by another device, then a login given up after `round` polls' worth of
        // paused time (0 gives up at its first await, mid-reclaim).
        other_device.login(&w.bob).await.unwrap();
        wait_for(&mut sub, "the kick", |e| {
            matches!(e, ClientEvent::State(ConnectionState::Kicked(_)))
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_micros(round * 50), client.login()).await;
        // A logout given up half way as well, on odd rounds.
        if round % 2 == 1 {
            let _ = tokio::time::timeout(Duration::ZERO, client.logout()).await;
        }
        tokio::time::timeout(DEADLINE, client.login())
            .await
            .unwrap_or_else(|_| panic!("round {round}: login hung after a cancelled call"))
            .unwrap_or_else(|e| panic!("round {round}: login after a cancelled call: {e:?}"));
        assert!(client.state().is_online(), "round {round}");
        receives(&w, &mut sub, &format!("round {round}")).await;
    }
    client.logout().await;
}
