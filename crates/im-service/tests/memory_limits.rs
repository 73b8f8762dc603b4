//! `MemoryVendor` under load from strangers: a refused login costs only the credential
//! check (no sweep over every stored message under the one lock), and the cap on stored
//! messages drops the oldest as retention, reported through the history horizon.
#![cfg(feature = "memory")]
#![allow(clippy::expect_used, clippy::panic)]

use std::time::Duration;

use im_service::memory::{MemoryVendor, MemoryVendorConfig};
use im_service::{
    Content, ConversationId, Credentials, HistoryQuery, OutgoingMessage, ServiceError, Timestamp,
    Token, UserId, Vendor,
};

fn text(conv: &ConversationId, body: &str) -> OutgoingMessage {
    OutgoingMessage::new(conv.clone(), Content::text(body), Timestamp::from_millis(0))
}

#[tokio::test]
async fn a_refused_login_does_no_sweep() {
    let (vendor, clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig {
        retention: Some(Duration::from_secs(3600)),
        ..MemoryVendorConfig::default()
    });
    let alice = vendor.register_user(&UserId::new("alice"));
    let bob = vendor.register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = vendor.client();
    a.login(&alice).await.expect("alice logs in");
    a.send(&text(&conv, "queued for bob")).await.expect("send");
    drop(a);
    // Past retention, but nothing has swept yet.
    clock.advance(Duration::from_secs(7200));

    let c = vendor.client();
    let wrong = Credentials {
        user: bob.user.clone(),
        token: Token::new("wrong"),
    };
    assert!(matches!(
        c.login(&wrong).await,
        Err(ServiceError::AuthFailed(_))
    ));
    let ghost = Credentials {
        user: UserId::new("ghost"),
        token: bob.token.clone(),
    };
    assert!(matches!(
        c.login(&ghost).await,
        Err(ServiceError::UnknownUser(_))
    ));
    assert_eq!(
        vendor.stored_messages(&conv).len(),
        1,
        "a refused login swept the store: it did work before checking the credentials"
    );
    assert_eq!(vendor.offline_len(&bob.user), 1);

    // An accepted login still enforces retention at once.
    c.login(&bob).await.expect("bob logs in");
    assert!(
        vendor.stored_messages(&conv).is_empty(),
        "an accepted login sweeps"
    );
    assert_eq!(vendor.offline_len(&bob.user), 0);
}

#[tokio::test]
async fn the_cap_on_stored_messages_drops_the_oldest_as_retention() {
    let (vendor, clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig {
        retention: None,
        max_stored_messages: Some(3),
        ..MemoryVendorConfig::default()
    });
    let alice = vendor.register_user(&UserId::new("alice"));
    let bob = vendor.register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = vendor.client();
    a.login(&alice).await.expect("alice logs in");
    let mut times = Vec::new();
    for i in 0..5 {
        clock.advance(Duration::from_millis(10));
        let r = a.send(&text(&conv, &format!("m{i}"))).await.expect("send");
        times.push(r.server_time);
    }
    assert_eq!(vendor.stored_len(), 3, "the cap holds");
    assert_eq!(
        vendor.offline_len(&bob.user),
        3,
        "the dropped messages left the offline queue too"
    );
    assert_eq!(
        vendor.horizon(),
        Some(times[1].plus(Duration::from_millis(1))),
        "the horizon moved past the newest dropped message"
    );

    let b = vendor.client();
    b.login(&bob).await.expect("bob logs in");
    let page = b
        .pull_history(&HistoryQuery::latest(conv.clone(), 10))
        .await
        .expect("history");
    let bodies: Vec<Content> = page.messages.iter().map(|m| m.content.clone()).collect();
    assert_eq!(
        bodies,
        ["m4", "m3", "m2"].map(Content::text).to_vec(),
        "history keeps the newest three"
    );
    assert_eq!(
        page.horizon,
        Some(times[1].plus(Duration::from_millis(1))),
        "the page reports the gap as retention"
    );
    let offline = b.pull_offline(10).await.expect("offline");
    assert_eq!(offline.messages.len(), 3);
    // Later sends keep the store at the cap.
    a.send(&text(&conv, "m5")).await.expect("send");
    assert_eq!(vendor.stored_len(), 3);
}
