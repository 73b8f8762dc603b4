//! Helpers shared by the im-arch integration tests: a vendor world and summaries of what a
//! subscription delivered (waiting on one is `im_testkit::wait`).

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use im_arch::ClientEvent;
use im_service::memory::{MemoryClient, MemoryVendor, MemoryVendorConfig};
use im_service::{
    Content, ConversationId, Credentials, ManualClock, Origin, OutgoingMessage, Timestamp, UserId,
    Vendor,
};

/// (sequence, origin) of every delivered message, in delivery order.
pub fn messages(events: &[ClientEvent]) -> Vec<(u64, Origin)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(r) => Some((r.message.seq.map_or(0, |s| s.0), r.origin)),
            _ => None,
        })
        .collect()
}

/// Alice (logged in on the in-process vendor, manual clock) and Bob (credentials only) in
/// one direct conversation.
pub struct World {
    pub vendor: MemoryVendor,
    pub clock: ManualClock,
    pub alice: Arc<MemoryClient>,
    pub bob: Credentials,
    pub conv: ConversationId,
}

/// A fresh [`World`].
pub async fn world() -> World {
    let (vendor, clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig::default());
    let a = vendor.register_user(&UserId::new("alice"));
    let bob = vendor.register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&a.user, &bob.user);
    let alice = Arc::new(vendor.client());
    alice.login(&a).await.unwrap();
    World {
        vendor,
        clock,
        alice,
        bob,
        conv,
    }
}

impl World {
    /// Alice says `body` in the conversation.
    pub async fn say(&self, body: &str) -> im_service::SendReceipt {
        let msg = OutgoingMessage::new(
            self.conv.clone(),
            Content::text(body),
            Timestamp::from_millis(0),
        );
        self.alice.send(&msg).await.unwrap()
    }
}
