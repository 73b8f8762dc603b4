//! Behaviour of `MemoryVendor` beyond the shared contract: its administration API, fault
//! injection, slow consumers and retention of the offline queue.

use std::time::Duration;

use futures::StreamExt;
use im_service::memory::{MemoryVendor, MemoryVendorConfig, VendorOp};
use im_service::{
    Content, ConversationId, ErrorClass, HistoryQuery, KickReason, OutgoingMessage, ServiceError,
    Timestamp, UserId, Vendor, VendorEvent,
};
use im_testkit::contract::{next_event, text};

fn pair(
    vendor: &MemoryVendor,
) -> (
    im_service::Credentials,
    im_service::Credentials,
    ConversationId,
) {
    let a = vendor.register_user(&UserId::new("alice"));
    let b = vendor.register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&a.user, &b.user);
    (a, b, conv)
}

#[tokio::test]
async fn injected_failures_hit_the_next_calls_only() -> anyhow::Result<()> {
    let vendor = MemoryVendor::default();
    let (a, _, conv) = pair(&vendor);
    let client = vendor.client();
    client.login(&a).await?;
    vendor.fail_next(
        VendorOp::Send,
        2,
        ServiceError::Server {
            code: 500,
            message: "boom".into(),
        },
    );
    let msg = text(&conv, "retry me");
    for _ in 0..2 {
        let err = client.send(&msg).await.expect_err("injected failure");
        assert_eq!(
            err.class(),
            ErrorClass::Transient,
            "unknown server errors are transient"
        );
    }
    let receipt = client.send(&msg).await?;
    assert!(!receipt.duplicate, "failed attempts stored nothing");
    assert_eq!(vendor.stored_messages(&conv).len(), 1);
    Ok(())
}

#[tokio::test]
async fn disconnect_ends_the_session_with_an_event() -> anyhow::Result<()> {
    let vendor = MemoryVendor::default();
    let (a, _, _) = pair(&vendor);
    let client = vendor.client();
    let mut events = client.take_events().expect("first take");
    client.login(&a).await?;
    vendor.disconnect(&a.user);
    assert!(matches!(
        next_event(&mut events).await,
        VendorEvent::ConnectionLost { .. }
    ));
    assert!(matches!(
        client.ping().await,
        Err(ServiceError::ConnectionLost(_))
    ));
    // The same handle reconnects.
    client.login(&a).await?;
    client.ping().await?;
    Ok(())
}

#[tokio::test]
async fn slow_consumer_is_disconnected_and_loses_nothing() -> anyhow::Result<()> {
    let vendor = MemoryVendor::new(MemoryVendorConfig {
        event_buffer: 2,
        ..Default::default()
    });
    let (a, b, conv) = pair(&vendor);
    let sender = vendor.client();
    sender.login(&a).await?;
    let receiver = vendor.client();
    let _events = receiver.take_events(); // held but never read
    receiver.login(&b).await?;
    receiver.go_online().await?;
    for i in 0..5 {
        sender.send(&text(&conv, &format!("m{i}"))).await?;
    }
    assert!(
        !vendor.is_online(&b.user),
        "a full event queue drops the connection"
    );
    // Two were pushed before the queue filled; the rest wait offline.
    assert_eq!(vendor.offline_len(&b.user), 3);
    assert!(matches!(
        receiver.ping().await,
        Err(ServiceError::ConnectionLost(_))
    ));
    Ok(())
}

#[tokio::test]
async fn removed_account_is_kicked_and_cannot_log_in() -> anyhow::Result<()> {
    let vendor = MemoryVendor::default();
    let (a, _, _) = pair(&vendor);
    let client = vendor.client();
    let mut events = client.take_events().expect("first take");
    client.login(&a).await?;
    vendor.remove_user(&a.user);
    assert_eq!(
        next_event(&mut events).await,
        VendorEvent::Kicked(KickReason::AccountRemoved)
    );
    assert_eq!(
        client.ping().await,
        Err(ServiceError::Kicked(KickReason::AccountRemoved))
    );
    assert_eq!(
        vendor.client().login(&a).await.map(|_| ()),
        Err(ServiceError::UnknownUser(a.user.clone()))
    );
    Ok(())
}

#[tokio::test]
async fn offline_queue_is_cut_by_retention() -> anyhow::Result<()> {
    let (vendor, clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig::default());
    let (a, b, conv) = pair(&vendor);
    let client = vendor.client();
    client.login(&a).await?;
    client.send(&text(&conv, "stale")).await?;
    clock.advance(Duration::from_secs(6 * 24 * 3600));
    client.send(&text(&conv, "fresh")).await?;
    clock.advance(Duration::from_secs(2 * 24 * 3600));
    vendor.sweep();
    let bob = vendor.client();
    bob.login(&b).await?;
    let batch = bob.pull_offline(10).await?;
    assert_eq!(batch.messages.len(), 1);
    assert_eq!(batch.messages[0].content, Content::text("fresh"));
    Ok(())
}

#[tokio::test]
async fn vendor_clock_set_back_never_reorders_a_conversation() -> anyhow::Result<()> {
    let (vendor, clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig::default());
    let (a, _, conv) = pair(&vendor);
    let client = vendor.client();
    client.login(&a).await?;
    let first = client.send(&text(&conv, "first")).await?;
    clock.set(first.server_time.minus(Duration::from_secs(600)));
    let second = client.send(&text(&conv, "second")).await?;
    assert!(second.server_time >= first.server_time);
    assert!(second.seq > first.seq);
    let page = client.pull_history(&HistoryQuery::latest(conv, 10)).await?;
    assert_eq!(page.messages[0].content, Content::text("second"));
    Ok(())
}

#[tokio::test]
async fn client_clock_skew_does_not_change_server_order() -> anyhow::Result<()> {
    let vendor = MemoryVendor::default();
    let (a, b, conv) = pair(&vendor);
    let alice = vendor.client();
    alice.login(&a).await?;
    let bob = vendor.client();
    bob.login(&b).await?;
    // Alice's clock is 10 minutes fast; Bob answers after her.
    let fast = Timestamp::from_millis(vendor.now().as_millis() + 600_000);
    alice
        .send(&OutgoingMessage::new(
            conv.clone(),
            Content::text("q"),
            fast,
        ))
        .await?;
    bob.send(&OutgoingMessage::new(
        conv.clone(),
        Content::text("a"),
        vendor.now(),
    ))
    .await?;
    let page = bob.pull_history(&HistoryQuery::latest(conv, 10)).await?;
    let order: Vec<_> = page.messages.iter().map(|m| m.content.clone()).collect();
    assert_eq!(
        order,
        [Content::text("a"), Content::text("q")],
        "server order, newest first"
    );
    Ok(())
}

#[tokio::test]
async fn dropping_a_client_closes_its_session() -> anyhow::Result<()> {
    let vendor = MemoryVendor::default();
    let (a, b, conv) = pair(&vendor);
    {
        let bob = vendor.client();
        bob.login(&b).await?;
        bob.go_online().await?;
        assert!(vendor.is_online(&b.user));
    }
    assert!(!vendor.is_online(&b.user));
    let alice = vendor.client();
    alice.login(&a).await?;
    alice.send(&text(&conv, "after bob left")).await?;
    assert_eq!(
        vendor.offline_len(&b.user),
        1,
        "an absent user's message is queued, not pushed into the void"
    );
    Ok(())
}

#[tokio::test]
async fn events_stream_ends_only_with_the_client() -> anyhow::Result<()> {
    let vendor = MemoryVendor::default();
    let (a, _, _) = pair(&vendor);
    let client = vendor.client();
    let mut events = client.take_events().expect("first take");
    client.login(&a).await?;
    drop(client);
    assert!(events.next().await.is_none());
    Ok(())
}

#[tokio::test]
async fn history_past_retention_is_gone_for_every_query_kind() -> anyhow::Result<()> {
    let (vendor, clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig::default());
    let (a, b, conv) = pair(&vendor);
    let alice = vendor.client();
    alice.login(&a).await?;
    for body in ["one", "two", "three"] {
        alice.send(&text(&conv, body)).await?;
    }
    clock.advance(Duration::from_secs(8 * 24 * 3600));
    vendor.sweep();
    assert!(vendor.stored_messages(&conv).is_empty());
    let bob = vendor.client();
    bob.login(&b).await?;
    for range in [
        im_service::HistoryRange::Latest,
        im_service::HistoryRange::Seq {
            after: Some(im_service::Seq(2)),
            before: None,
        },
        im_service::HistoryRange::Time {
            from: Timestamp::from_millis(0),
            to: Timestamp::from_millis(i64::MAX),
        },
    ] {
        let page = bob
            .pull_history(&HistoryQuery::latest(conv.clone(), 10).range(range))
            .await?;
        assert!(
            page.messages.is_empty(),
            "{range:?} returned {:?}",
            page.messages
        );
    }
    Ok(())
}
