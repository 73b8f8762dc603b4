//! `MemoryVendor` under load from strangers: a refused login costs only the credential
//! check (no sweep over every stored message under the one lock), and the cap on stored
//! messages drops the oldest as retention, reported through the history horizon; a sweep
//! passes over the stored messages only when something in them is past the retention.
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

#[tokio::test]
async fn a_sweep_passes_over_the_stored_messages_only_when_something_is_past_retention() {
    let hour = Duration::from_secs(3600);
    let (vendor, clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig {
        retention: Some(hour),
        sweep_on_login: false,
        ..MemoryVendorConfig::default()
    });
    let alice = vendor.register_user(&UserId::new("alice"));
    let bob = vendor.register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = vendor.client();
    a.login(&alice).await.expect("alice logs in");
    for i in 0..100 {
        a.send(&text(&conv, &format!("queued {i}")))
            .await
            .expect("send");
    }
    // A server sweeps every second; within the retention there is nothing to drop.
    for _ in 0..10 {
        clock.advance(Duration::from_secs(60));
        vendor.sweep();
    }
    assert_eq!(
        vendor.retention_passes(),
        0,
        "a sweep with nothing past the retention passed over the stored messages"
    );
    assert_eq!(vendor.offline_len(&bob.user), 100);

    clock.advance(hour);
    vendor.sweep();
    assert_eq!(vendor.retention_passes(), 1, "one pass drops what expired");
    assert_eq!(vendor.stored_len(), 0);
    assert_eq!(vendor.offline_len(&bob.user), 0);
    vendor.sweep();
    assert_eq!(
        vendor.retention_passes(),
        1,
        "nothing stored: nothing to pass over"
    );

    // Two messages half a retention apart: the pass that drops the first keeps the second,
    // and the sweeps after it wait for the second to expire.
    a.send(&text(&conv, "first")).await.expect("send");
    clock.advance(hour / 2);
    a.send(&text(&conv, "second")).await.expect("send");
    clock.advance(hour / 2 + Duration::from_secs(1));
    vendor.sweep();
    assert_eq!(
        (vendor.retention_passes(), vendor.stored_len()),
        (2, 1),
        "a message stored after the last pass is dropped when it expires"
    );
    clock.advance(Duration::from_secs(10));
    vendor.sweep();
    assert_eq!(
        vendor.retention_passes(),
        2,
        "after a pass, sweeps wait for the oldest survivor to expire (not the pass's horizon)"
    );
    clock.advance(hour / 2);
    vendor.sweep();
    assert_eq!((vendor.retention_passes(), vendor.stored_len()), (3, 0));
    assert_eq!(vendor.offline_len(&bob.user), 0);
}
