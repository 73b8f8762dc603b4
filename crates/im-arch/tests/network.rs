//! "Nothing is attempted while the network is known down" (`ImClient::set_network_available`),
//! on the in-process vendor with tokio time paused: no login while the network is marked
//! down however long it stays down, a prompt reconnect when it is back, and a fleet that
//! regains the network together spread over the jitter window rather than in one instant.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::{Backoff, ClientConfig, ClientEvent, ConnectionState, ImClient, Jitter};
use im_service::memory::{MemoryVendor, MemoryVendorConfig};
use im_service::{
    Content, ConversationId, Credentials, OutgoingMessage, Timestamp, UserId, Vendor,
};
use im_testkit::GatedVendor;
use tokio::time::Instant;

/// Reconnect backoff of these tests: full jitter, ceilings 1 s, 2 s, 4 s, 8 s.
const BASE: Duration = Duration::from_secs(1);

fn config(jitter: Jitter) -> ClientConfig {
    ClientConfig {
        heartbeat_interval: Duration::from_secs(5),
        heartbeat_timeout: Duration::from_secs(1),
        reconnect: Backoff {
            base: BASE,
            max: Duration::from_secs(8),
            jitter,
        },
        ..ClientConfig::default()
    }
}

/// Waits until the client's state matches `want`; fails, naming what it saw, if that takes
/// longer than `within` in all.
async fn state_within(
    client: &ImClient,
    within: Duration,
    what: &str,
    want: impl Fn(&ConnectionState) -> bool,
) {
    let deadline = Instant::now() + within;
    let mut watch = client.watch_state();
    let mut seen = Vec::new();
    loop {
        let now = watch.borrow_and_update().clone();
        if want(&now) {
            return;
        }
        seen.push(now);
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("client gone while waiting for {what}; states seen: {seen:?}"),
            Err(_) => panic!("not {what} within {within:?}; states seen: {seen:?}"),
        }
    }
}

/// A user with a counted connection and a client on it.
fn counted_client(
    vendor: &MemoryVendor,
    name: &str,
    jitter: Jitter,
) -> (Arc<GatedVendor>, ImClient, Credentials) {
    let creds = vendor.register_user(&UserId::new(name));
    let gated = Arc::new(GatedVendor::new(Arc::new(vendor.client())));
    let client = ImClient::builder(gated.clone(), creds.clone())
        .config(config(jitter))
        .build();
    (gated, client, creds)
}

#[tokio::test(start_paused = true)]
async fn no_connection_attempt_while_the_network_is_known_down() {
    let vendor = MemoryVendor::new(MemoryVendorConfig::default());
    // Without jitter the delays are exact: the one after the network is back is the first
    // retry's ceiling, not the grown backoff's (8 s), whatever the random draws.
    let (gated, alice, creds) = counted_client(&vendor, "alice", Jitter::None);
    let bob_creds = vendor.register_user(&UserId::new("bob"));
    let mut events = alice.subscribe();
    alice.login().await.unwrap();
    assert_eq!(gated.login_times().len(), 1);

    // Marking the network down does not drop a live connection: heartbeats decide.
    alice.set_network_available(false);
    assert!(!alice.network_available());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        alice.state().is_online(),
        "a live connection was dropped because the network was marked down: {:?}",
        alice.state()
    );
    alice.set_network_available(true);

    // The link dies and stays dead: attempts fail and the backoff grows (ceilings up to 8 s).
    gated.refuse_logins(true);
    vendor.disconnect(&creds.user);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let failed = gated.login_times().len() - 1;
    assert!(
        failed >= 3,
        "expected failing reconnect attempts before the network is marked down, saw {failed}"
    );

    // The app learns the network is down: from now on, nothing.
    alice.set_network_available(false);
    state_within(
        &alice,
        Duration::from_secs(10),
        "Disconnected (waiting for the network)",
        |s| *s == ConnectionState::Disconnected,
    )
    .await;
    let before = gated.login_times().len();
    alice.reconnect_now().await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        gated.login_times().len(),
        before,
        "login attempted while the network was known down (reconnect_now included)"
    );
    assert_eq!(alice.state(), ConnectionState::Disconnected);

    // A message for her while she is away.
    let bob = vendor.client();
    bob.login(&bob_creds).await.unwrap();
    let conv = ConversationId::direct(&bob_creds.user, &creds.user);
    let receipt = bob
        .send(&OutgoingMessage::new(
            conv,
            Content::text("while you were away"),
            Timestamp::from_millis(0),
        ))
        .await
        .unwrap();

    // Back up: one attempt within the first retry's ceiling (not the grown backoff), online.
    gated.refuse_logins(false);
    let up = Instant::now();
    alice.set_network_available(true);
    state_within(
        &alice,
        BASE + Duration::from_secs(1),
        "Online after the network came back",
        |s| *s == ConnectionState::Online,
    )
    .await;
    let after: Vec<Duration> = gated.login_times()[before..]
        .iter()
        .map(|t| t.duration_since(up))
        .collect();
    assert_eq!(
        after.len(),
        1,
        "expected one login after the network came back, saw {after:?}"
    );
    assert!(
        after[0] <= BASE,
        "the first attempt after the network came back waited {:?}, more than the first retry's ceiling {BASE:?}",
        after[0]
    );

    // What was sent while she was away arrives exactly once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut copies = 0;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(1), events.recv()).await {
        if let ClientEvent::Message(r) = &*ev
            && r.message.server_id == receipt.server_id
        {
            copies += 1;
        }
    }
    assert_eq!(
        copies, 1,
        "the message sent while away arrived {copies} times"
    );
    alice.logout().await;
}

#[tokio::test(start_paused = true)]
async fn login_while_the_network_is_down_waits_for_it() {
    let vendor = MemoryVendor::new(MemoryVendorConfig::default());
    let (gated, alice, _) = counted_client(&vendor, "alice", Jitter::Full);
    alice.set_network_available(false);
    let login = tokio::time::timeout(Duration::from_secs(600), alice.login()).await;
    assert!(
        login.is_err(),
        "login returned while the network was down: {login:?}"
    );
    assert!(
        gated.login_times().is_empty(),
        "the first login was attempted while the network was known down"
    );
    let up = Instant::now();
    alice.set_network_available(true);
    tokio::time::timeout(BASE + Duration::from_secs(1), alice.login())
        .await
        .expect("not online within the first retry's ceiling after the network came back")
        .unwrap();
    let logins = gated.login_times();
    assert_eq!(logins.len(), 1, "expected one login, saw {logins:?}");
    assert!(logins[0].duration_since(up) <= BASE);
    alice.logout().await;
}

/// 200 clients lose the network and the connection together and regain the network in the
/// same instant: their attempts are spread over the jitter window `[0, base]`, not a spike.
#[tokio::test(start_paused = true)]
async fn a_fleet_regaining_the_network_reconnects_spread_over_the_jitter_window() {
    const FLEET: usize = 200;
    let vendor = MemoryVendor::new(MemoryVendorConfig::default());
    let fleet: Vec<(Arc<GatedVendor>, ImClient, Credentials)> = (0..FLEET)
        .map(|i| counted_client(&vendor, &format!("user{i}"), Jitter::Full))
        .collect();
    for (_, client, _) in &fleet {
        client.login().await.unwrap();
    }
    for (_, client, creds) in &fleet {
        client.set_network_available(false);
        vendor.disconnect(&creds.user);
    }
    for (i, (_, client, _)) in fleet.iter().enumerate() {
        state_within(
            client,
            Duration::from_secs(10),
            &format!("client {i} Disconnected"),
            |s| *s == ConnectionState::Disconnected,
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
    let up = Instant::now();
    for (_, client, _) in &fleet {
        client.set_network_available(true);
    }
    for (i, (_, client, _)) in fleet.iter().enumerate() {
        state_within(
            client,
            BASE + Duration::from_secs(2),
            &format!("client {i} Online after the network came back"),
            |s| *s == ConnectionState::Online,
        )
        .await;
    }
    let mut offsets = Vec::new();
    for (i, (gated, _, _)) in fleet.iter().enumerate() {
        let logins = gated.login_times();
        assert_eq!(
            logins.len(),
            2,
            "client {i}: expected the first login and one after the network came back, saw {} (down for 600 s)",
            logins.len()
        );
        offsets.push(logins[1].duration_since(up));
    }
    let late: Vec<_> = offsets.iter().filter(|d| **d > BASE).collect();
    assert!(
        late.is_empty(),
        "attempts later than the first retry's ceiling {BASE:?}: {late:?}"
    );
    // Ten 100 ms buckets over [0, 1 s]: uniform puts 20 in each; a spike puts 200 in one.
    let mut buckets = [0usize; 10];
    for d in &offsets {
        buckets[((d.as_millis() / 100) as usize).min(9)] += 1;
    }
    let fullest = buckets.iter().copied().max().unwrap_or(0);
    assert!(
        fullest <= FLEET / 4,
        "reconnects not spread over the jitter window: {fullest} of {FLEET} in one 100 ms bucket; buckets {buckets:?}"
    );
    let early = offsets.iter().filter(|d| **d < BASE / 2).count();
    assert!(
        (FLEET * 3 / 10..=FLEET * 7 / 10).contains(&early),
        "jitter not uniform over [0, {BASE:?}]: {early} of {FLEET} in the first half; buckets {buckets:?}"
    );
    for (_, client, _) in &fleet {
        client.logout().await;
    }
}
