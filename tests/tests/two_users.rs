//! End to end on the public contract: two users exchange messages through the in-process
//! vendor, with the ACK-online sequence in between.

use futures::StreamExt;
use im_service::memory::MemoryVendor;
use im_service::{Content, ConversationId, OutgoingMessage, UserId, Vendor, VendorEvent};

#[tokio::test]
async fn offline_then_live_exchange() -> anyhow::Result<()> {
    let vendor = MemoryVendor::default();
    let a = vendor.register_user(&UserId::new("alice"));
    let b = vendor.register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&a.user, &b.user);
    let alice = vendor.client();
    alice.login(&a).await?;
    alice
        .send(&OutgoingMessage::new(
            conv.clone(),
            Content::text("while away"),
            vendor.now(),
        ))
        .await?;

    let bob = vendor.client();
    let mut events = bob.take_events().expect("events");
    bob.login(&b).await?;
    let batch = bob.pull_offline(50).await?;
    assert_eq!(batch.messages.len(), 1);
    bob.ack_offline(batch.ack.as_ref().expect("ack")).await?;
    bob.go_online().await?;

    alice
        .send(&OutgoingMessage::new(
            conv.clone(),
            Content::text("live"),
            vendor.now(),
        ))
        .await?;
    match events.next().await {
        Some(VendorEvent::MessagePushed(m)) => {
            assert_eq!(m.content, Content::text("live"));
            assert_eq!(m.seq, Some(im_service::Seq(2)));
        }
        other => panic!("expected the live message, got {other:?}"),
    }
    let reply = bob
        .send(&OutgoingMessage::new(
            conv,
            Content::text("ack"),
            vendor.now(),
        ))
        .await?;
    assert_eq!(reply.seq, Some(im_service::Seq(3)));
    Ok(())
}
