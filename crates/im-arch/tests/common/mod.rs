//! Helpers shared by the im-arch integration tests: waiting on a subscription and
//! summarising what it delivered.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use std::sync::Arc;

use im_arch::{ClientEvent, Subscription};
use im_service::memory::{MemoryClient, MemoryVendor, MemoryVendorConfig};
use im_service::{
    Content, ConversationId, Credentials, ManualClock, Origin, OutgoingMessage, Timestamp, UserId,
    Vendor,
};

/// Events until `stop` matches (included); panics with what was seen if that takes longer
/// than `within` in all. An overall deadline, not one per event: with heartbeats flowing, a
/// per-event timeout would never fire and a regression would spin instead of failing.
pub async fn until_within(
    sub: &mut Subscription,
    within: Duration,
    mut stop: impl FnMut(&ClientEvent) -> bool,
) -> Vec<ClientEvent> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout_at(deadline, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out after {within:?} in all; saw {seen:#?}"))
            .expect("client gone");
        let ev = std::sync::Arc::unwrap_or_clone(ev);
        let done = stop(&ev);
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

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
